"""A small analytic vertebra with exact ground truth, for the measurement tests and benchmark.

Independent of the measurement code: the shape is a union of signed-distance primitives in the
vertebra's own frame (x left, y posterior, z superior), posed in LPS by a rotation, rendered with
2x2x2 supersampling (partial volume), a 1 mm cortex, a Gaussian point-spread and noise.

Truth (exact by construction): body elliptic cylinder 48 x 34 mm (width x AP depth), height
``body_h``; pedicles are elliptic cylinders whose cross-section perpendicular to their axis has
the medio-lateral (in the transverse plane) diameter ``ped_w`` and the cranio-caudal diameter
``ped_h``; their axes have the given transverse (medial) and sagittal angles.
"""

from __future__ import annotations

import functools

import numpy as np

from spineplan.volume import Volume

BODY_RX, BODY_RY = 24.0, 17.0  # half width, half AP depth (mm)
SOFT_HU, CANCELLOUS_HU, CORTEX_HU = 30.0, 220.0, 900.0


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _capsule(p, a, b, r):
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0, 1)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1) - r


def pedicle_axis(side: str, trans_deg: float, sag_deg: float) -> np.ndarray:
    """Local unit axis (posterior -> anterior) of a pedicle converging by ``trans_deg``."""
    sgn = 1.0 if side == "left" else -1.0
    ta, sa = np.radians(trans_deg), np.radians(sag_deg)
    return np.array([-sgn * np.sin(ta) * np.cos(sa), -np.cos(ta) * np.cos(sa), np.sin(sa)])


def _sdf(p, body_h, ped_w, ped_h, trans_deg, sag_deg, ped_x, ped_z):
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    # body: elliptic cylinder (approximate distance inside; exact boundary)
    r = np.sqrt((x / BODY_RX) ** 2 + (y / BODY_RY) ** 2)
    d_body = np.maximum((r - 1.0) * min(BODY_RX, BODY_RY), np.abs(z) - body_h / 2)
    d = d_body
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        a = pedicle_axis(side, trans_deg, sag_deg)
        c = np.array([sgn * ped_x, BODY_RY + 7.0, ped_z])
        u = np.cross([0.0, 0.0, 1.0], a)
        u /= np.linalg.norm(u)
        w = np.cross(a, u)
        q = p - c
        t, pu, pw = q @ a, q @ u, q @ w
        e = np.sqrt((pu / (ped_w / 2)) ** 2 + (pw / (ped_h / 2)) ** 2)
        d_ped = np.maximum((e - 1.0) * min(ped_w, ped_h) / 2, np.abs(t) - 13.0)
        d = np.minimum(d, d_ped)
        back = c - 9.0 * a  # posterior end of the pedicle
        lam_end = np.array([0.0, BODY_RY + 24.0, ped_z - 3.0])
        d = np.minimum(d, _capsule(p, back, lam_end, 4.0))  # lamina
        d = np.minimum(d, _capsule(p, back, back + np.array([sgn * 22.0, 3.0, 0.0]), 3.5))  # transverse process
    d = np.minimum(d, _capsule(p, [0.0, BODY_RY + 24.0, ped_z - 3.0], [0.0, BODY_RY + 48.0, ped_z - 10.0], 4.0))
    return d


@functools.lru_cache(maxsize=32)
def synthetic_vertebra(spacing: float = 1.0, rot_deg: float = 0.0, lordosis_deg: float = 0.0,
                       scoliosis_deg: float = 0.0, ped_w: float = 9.0, ped_h: float = 14.0,
                       trans_deg: float = 12.0, sag_deg: float = 0.0, body_h: float = 27.0,
                       seed: int = 0, noise_hu: float = 10.0, psf_mm: float | None = None):
    """(ct Volume, mask, truth dict) of one posed vertebra on an LPS grid of ``spacing`` mm."""
    from scipy.ndimage import gaussian_filter

    R = _rot("z", rot_deg) @ _rot("y", scoliosis_deg) @ _rot("x", -lordosis_deg)  # local -> world
    centre = np.array([3.0, -5.0, -120.0])
    lo = centre + np.array([-56.0, -32.0, -32.0])  # covers the posed vertebra (+-20 deg)
    n = np.ceil(np.array([112.0, 110.0, 64.0]) / spacing).astype(int)
    sub = (np.array([0.25, 0.75]) - 0.5) * spacing
    occ_out = np.zeros(tuple(n), np.float32)
    occ_in = np.zeros(tuple(n), np.float32)
    ii = [lo[a] + spacing * (np.arange(n[a]) + 0.5) for a in range(3)]  # voxel centres
    ped_x, ped_z = 15.5, 3.0
    for ox in sub:
        for oy in sub:
            for oz in sub:
                X, Y, Z = np.meshgrid(ii[0] + ox, ii[1] + oy, ii[2] + oz, indexing="ij")
                pw = (np.stack([X, Y, Z], -1) - centre).astype(np.float32)
                pl = pw @ R.astype(np.float32)  # world -> local (R orthonormal)
                d = _sdf(pl, body_h, ped_w, ped_h, trans_deg, sag_deg, ped_x, ped_z)
                occ_out += d <= 0
                occ_in += d <= -1.0
    occ_out /= 8
    occ_in /= 8
    hu = SOFT_HU + occ_out * (CANCELLOUS_HU - SOFT_HU) + (occ_out - occ_in) * (CORTEX_HU - CANCELLOUS_HU)
    # scanner blur: in-plane ~0.5 mm, and about the voxel size on coarse grids (thick slices)
    psf = max(0.5, 0.4 * spacing) if psf_mm is None else psf_mm
    hu = gaussian_filter(hu, psf / spacing)
    hu += np.random.default_rng(seed).normal(0, noise_hu, hu.shape)
    aff = np.eye(4)
    aff[:3, :3] = np.eye(3) * spacing
    aff[:3, 3] = lo + 0.5 * spacing
    ct = Volume(hu.astype(np.float32), aff)
    mask = occ_out >= 0.5
    axes = R.T  # rows: local x, y, z in world
    peds = {}
    for side in ("left", "right"):
        a = R @ pedicle_axis(side, trans_deg, sag_deg)
        peds[side] = {"axis": a, "isthmus_width_mm": ped_w, "isthmus_height_mm": ped_h,
                      "transverse_angle_deg": trans_deg, "sagittal_angle_deg": sag_deg}
    truth = {"axes": axes, "body_centroid": centre, "body_width_mm": 2 * BODY_RX,
             "body_ap_depth_mm": 2 * BODY_RY, "height_mm": body_h, "pedicles": peds,
             "cancellous_hu": CANCELLOUS_HU, "canal_transverse_mm": None}
    return ct, mask, truth


# --------------------------------------------------------------------------- stability
#: Perturbations that must not change a measurement (they change only the last digits of the
#: arithmetic): uniform +-0.5 HU noise, the whole grid shifted by 0.01 voxel (affine origin, the
#: CT and the labels together) and the CT handed over as float64 instead of its stored type.
PERTURBATIONS = ("noise", "shift", "float64")


def perturbed(ct: Volume, labels: Volume, kind: str, seed: int = 0) -> tuple[Volume, Volume]:
    """(ct, labels) after one of :data:`PERTURBATIONS`."""
    if kind == "noise":
        rng = np.random.default_rng(seed)
        arr = np.asarray(ct.array, np.float32) + rng.uniform(-0.5, 0.5, ct.shape).astype(np.float32)
        return ct.with_array(arr), labels
    if kind == "shift":
        aff = ct.affine.copy()
        aff[:3, 3] += 0.01 * (aff[:3, :3] @ np.ones(3))  # 0.01 voxel along every grid axis
        return (Volume(ct.array, aff, modality=ct.modality, meta=ct.meta),
                Volume(labels.array, aff, modality=labels.modality, meta=labels.meta))
    if kind == "float64":
        return ct.with_array(np.asarray(ct.array, np.float64)), labels
    raise ValueError(kind)


def pedicle_changes(ref, other) -> dict:
    """Largest changes of the pedicles between two measured Spines (or lists of Vertebra) of the
    same CT: axis angle
    (deg), isthmus width and height (mm), isthmus centre (mm), and the pedicles measured in one
    and not the other. Returns dict(axis_deg, width_mm, height_mm, centre_mm, flipped, worst)."""
    out = {"axis_deg": 0.0, "width_mm": 0.0, "height_mm": 0.0, "centre_mm": 0.0, "flipped": [], "worst": ""}
    others = {v.name: v for v in getattr(other, "vertebrae", other)}
    for v in getattr(ref, "vertebrae", ref):
        if v.name not in others:
            continue
        o = others[v.name]
        for side in ("left", "right"):
            p, q = v.pedicles.get(side), o.pedicles.get(side)
            if (p is None) != (q is None):
                out["flipped"].append(f"{v.name} {side}")
                continue
            if p is None:
                continue
            ang = float(np.degrees(np.arccos(np.clip(np.dot(p.axis, q.axis), -1.0, 1.0))))
            if ang > out["axis_deg"]:
                out["worst"] = f"{v.name} {side}"
            out["axis_deg"] = max(out["axis_deg"], ang)
            out["width_mm"] = max(out["width_mm"], abs(p.isthmus_width_mm - q.isthmus_width_mm))
            out["height_mm"] = max(out["height_mm"], abs(p.isthmus_height_mm - q.isthmus_height_mm))
            out["centre_mm"] = max(out["centre_mm"], float(np.linalg.norm(p.isthmus_center - q.isthmus_center)))
    return out


# --------------------------------------------------------------------------- shared phantoms
_SPINES: dict = {}


def measured_phantom(**kwargs):
    """(phantom, build_spine of it with its own labels) for ``make_phantom(**kwargs)``, memoised
    per session (tests/_phantoms.get_phantom): several measurement test modules measure the same
    phantom (e.g. the 2 mm T12-L2 of test_measure_pedicle_axes and test_measure_endplates).
    Treat both as read-only."""
    from _phantoms import _key, get_phantom
    from spineplan.anatomy.spine import build_spine

    key = _key(kwargs)
    if key not in _SPINES:
        ph = get_phantom(**kwargs)
        _SPINES[key] = (ph, build_spine(ph.ct, ph.labels))
    return _SPINES[key]


_VERTEBRAE: dict = {}


def measured_synthetic(*args, **kwargs):
    """(ct, mask, truth, measure_vertebra of it as "L3") for ``synthetic_vertebra(*args, **kwargs)``,
    memoised per session (test_measure and test_measure_stability measure the same poses). Read-only."""
    from spineplan.anatomy.measure import measure_vertebra

    key = (args, tuple(sorted(kwargs.items())))
    if key not in _VERTEBRAE:
        ct, mask, truth = synthetic_vertebra(*args, **kwargs)
        _VERTEBRAE[key] = (ct, mask, truth, measure_vertebra(ct, mask, "L3", 22))
    return _VERTEBRAE[key]
