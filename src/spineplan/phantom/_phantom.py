"""make_phantom / write_phantom / load_truth: the synthetic spine CT and its ground truth."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from spineplan import levels as LV
from spineplan._atomic import write_text
from spineplan._progress import progress
from spineplan.errors import InputError
from spineplan.phantom import _anatomy as A
from spineplan.phantom import _morphometry as M
from spineplan.phantom._render import Grid, paint_bone, paint_soft, union_sdf
from spineplan.phantom._shapes import Frame, Tube, rot_x, rot_y, rot_z
from spineplan.typing import TypePath
from spineplan.volume import Volume

TRUTH_FORMAT = "spineplan.phantom-truth"
TRUTH_VERSION = 1
SUPPORTED = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "L6", "S1")
FRACTURE_TYPES = ("wedge", "biconcave", "crush")
#: Trunk cross-section semi-axes (x, y) in mm: an adult lower trunk ~330 x 240 mm.
TRUNK_SEMI_AXES = (165.0, 120.0)
#: Minimum vertical clearance between the laminae/pedicle ends of neighbouring vertebrae; a
#: strongly bent segment gets a taller disc rather than touching posterior elements.
MIN_POSTERIOR_CLEARANCE_MM = 3.0
#: Soft tissue between the spinous tips and the subcutaneous fat (supraspinous ligament).
SUPRASPINOUS_MM = 3.0


@dataclass
class Phantom:
    """A synthetic CT, its VerSe label map on the same grid and the ground truth (JSON-ready)."""

    ct: Volume
    labels: Volume
    truth: dict = field(repr=False)

    def __repr__(self) -> str:
        names = list(self.truth.get("vertebrae", {}))
        span = f"{names[0]}-{names[-1]}" if names else "no vertebrae"
        return f"Phantom({span}, ct={self.ct!r})"


# ----------------------------------------------------------------------------- parameters
def _parse_levels(levels, lumbar_count: int) -> list[str]:
    if lumbar_count not in (4, 5, 6):
        raise InputError(f"lumbar_count={lumbar_count} is not supported; use 5 (normal), 6 (an L6) or 4 (a "
                         "sacralised L5).")
    names = LV.level_range(levels) if isinstance(levels, str) else [str(x).upper() for x in levels]
    lumbar = [f"L{i}" for i in range(1, lumbar_count + 1)]
    if lumbar_count == 4:  # sacralised L5: L4 sits on the sacrum
        names = [n for n in names if n != "L5"]
    if lumbar_count == 6 and "L5" in names and "S1" in names and "L6" not in names:
        names.insert(names.index("S1"), "L6")
    chain = ["T10", "T11", "T12", *lumbar, "S1"]
    bad = [n for n in names if n not in chain]
    if bad:
        raise InputError(f"The phantom cannot draw level(s) {', '.join(bad)}; it models T10 to S1 "
                         f"(with lumbar_count={lumbar_count}). Use e.g. levels='T11-S1'.")
    idx = sorted(chain.index(n) for n in names)
    if idx != list(range(idx[0], idx[-1] + 1)):
        raise InputError(f"Phantom levels must be contiguous; got {names}.")
    return [chain[i] for i in idx]


def _parse_one_fracture(spec, names):
    parts = spec.split(":") if isinstance(spec, str) else list(spec)
    if len(parts) == 2:
        parts.append("wedge")
    if len(parts) != 3:
        raise InputError(f"fracture={spec!r}: give (level, Genant grade 1-3, wedge|biconcave|crush), "
                         "e.g. ('L1', 2, 'wedge') or 'L1:2:wedge'.")
    try:
        level, grade, kind = str(parts[0]).upper(), int(parts[1]), str(parts[2]).lower()
    except ValueError:
        raise InputError(f"fracture={spec!r}: the grade must be a number 1-3, e.g. 'L1:2:wedge'.") from None
    if level not in names or level == "S1":
        raise InputError(f"Fracture level {level} is not a drawn vertebra ({', '.join(n for n in names if n != 'S1')}).")
    if grade not in (1, 2, 3):
        raise InputError(f"Fracture grade {grade} is not a Genant grade; use 1, 2 or 3.")
    if kind not in FRACTURE_TYPES:
        raise InputError(f"Fracture type {kind!r} is unknown; use one of {', '.join(FRACTURE_TYPES)}.")
    return level, grade, kind


def _parse_fracture(fracture, names) -> list[tuple[str, int, str]]:
    """One fracture ("L1:2:wedge", ("L1", 2, "wedge")) or several (a list of those, or
    "T12:2,L2:1:biconcave") -> [(level, grade, type), ...]."""
    if fracture is None or fracture == "" or fracture is False:
        return []
    if isinstance(fracture, str):
        specs = [f for f in fracture.replace(" ", "").split(",") if f]
    elif len(fracture) and all(isinstance(f, (list, tuple)) or (isinstance(f, str) and ":" in f) for f in fracture):
        specs = list(fracture)
    else:
        specs = [fracture]
    out = [_parse_one_fracture(f, names) for f in specs]
    levels = [f[0] for f in out]
    if len(set(levels)) != len(levels):
        raise InputError(f"Each level can have one fracture; got {', '.join(levels)}.")
    return out


def genant_loss_pct(ant: float, mid: float, post: float, expected: float) -> float:
    """Genant height loss in % (contract definition)."""
    return 100.0 * (1.0 - min(ant, mid) / max(post, expected))


def _solve_fracture_loss(body: A.Body, kind: str, target_pct: float) -> float:
    """Height (mm) to take out of ``body`` so that the Genant loss equals ``target_pct``."""
    expected = body.heights(nominal=True)[2]
    body.fracture_type = kind
    lo, hi = 0.0, 0.95 * body.H
    for _ in range(60):
        body.loss = 0.5 * (lo + hi)
        if genant_loss_pct(*body.heights(), expected) < target_pct:
            lo = body.loss
        else:
            hi = body.loss
    body.loss = 0.5 * (lo + hi)
    return body.loss


# ----------------------------------------------------------------------------- measurement
def _first_change(sdf, p0, direction, inside: bool, max_len=80.0, step=0.05) -> float:
    """Distance from ``p0`` along ``direction`` to where the shape's inside/outside flips.

    Coarse samples every ``step`` mm, then a fine pass (``step``/200) in the bracketing step
    and linear interpolation of the distance values: far below 0.01 mm."""
    direction = np.asarray(direction, float) / np.linalg.norm(direction)
    p0 = np.asarray(p0, float)

    def first(t):
        d = sdf(p0[None, :] + t[:, None] * direction[None, :])
        hit = np.nonzero((d > 0) if inside else (d <= 0))[0]
        return (hit[0] if hit.size else None), d

    t = np.arange(0.0, max_len, step)
    k, _ = first(t)
    if k is None:
        return float("nan")
    if k == 0:
        return 0.0
    tf = np.linspace(t[k - 1], t[k], 201)
    kf, d = first(tf)
    if kf is None or kf == 0:
        return float(t[k])
    d0, d1 = d[kf - 1], d[kf]
    frac = 0.0 if d1 == d0 else float(np.clip(d0 / (d0 - d1), 0.0, 1.0))
    return float(tf[kf - 1] + frac * (tf[kf] - tf[kf - 1]))


def _chord(sdf, p0, direction) -> float:
    """Length of the bone chord through the inside point ``p0`` along ±direction."""
    return _first_change(sdf, p0, direction, True) + _first_change(sdf, p0, -np.asarray(direction), True)


def _gap(sdf, p0, direction) -> float:
    """Length of the bone-free gap through the outside point ``p0`` along ±direction."""
    return _first_change(sdf, p0, direction, False) + _first_change(sdf, p0, -np.asarray(direction), False)


def _angles(frame: Frame, direction, side: str) -> tuple[float, float]:
    """Medial and cranial angle of ``direction`` in the vertebra frame (convention of
    ``spineplan.anatomy.model.VertebraFrame.angles_of``)."""
    d = np.asarray(direction, float) @ frame.R
    d = d / np.linalg.norm(d)
    toward_mid = -d[0] if side == "left" else d[0]
    return (float(np.degrees(np.arctan2(toward_mid, np.hypot(d[1], d[2])))),
            float(np.degrees(np.arcsin(np.clip(d[2], -1, 1)))))


def _body_centroid(body: A.Body, step=0.5) -> np.ndarray:
    xs = np.arange(-body.a, body.a + step, step)
    ys = np.arange(-body.D / 2, body.D / 2 + 2 * body.e + step, step)
    zs = np.arange(-body.H / 2, body.H / 2 + step, step)
    X, Y, Z = np.meshgrid(xs, ys, zs, indexing="ij")
    inside = body.sdf_local(X, Y, Z) <= 0
    c = np.array([X[inside].mean(), Y[inside].mean(), Z[inside].mean()])
    return body.frame.to_world(c)


def _endplate(body: A.Body, which: str) -> dict:
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    x = body.a * np.sqrt(0.8) * np.cos(t)
    y = body.cy + body.b * np.sqrt(0.8) * np.sin(t)
    keep = body.d_xy(x, y) < -1.0
    x, y = x[keep], y[keep]
    z = body.top(x, y) if which == "superior" else body.bottom(x, y)
    P = np.stack([x, y, z], 1)
    c = P.mean(0)
    n = np.linalg.svd(P - c)[2][-1]
    if n[2] < 0:
        n = -n
    return {"point": _r(body.frame.to_world(c)), "normal": _r(body.frame.dir_to_world(n), 6)}


def _r(v, nd=3):
    return [round(float(x), nd) for x in np.ravel(v)]


def _vertebra_truth(v: A.VertebraModel, rib_bearing: bool, complete: bool = True) -> dict:
    u = v.union()
    sdf = u.sdf_points
    f, b, d = v.frame, v.body, v.dims
    ant, mid, post = b.heights()
    expected = b.heights(nominal=True)[2]
    zmid = 0.5 * (b.top(0.0, 0.0) + b.bottom(0.0, 0.0))
    X, Y, Z = f.R[:, 0], f.R[:, 1], f.R[:, 2]
    depth = _chord(sdf, f.to_world([0, 0, zmid]), Y)
    width = _chord(sdf, f.to_world([0, b.cy, zmid]), X)
    canal_ap = _gap(sdf, f.to_world([0, d.body_d / 2 + d.canal_d / 2, v.z_p]), Y)
    canal_tr = _gap(sdf, f.to_world([0, v.y_i, v.z_p]), X)
    peds = {}
    for side, p in v.pedicles.items():
        med, cran = _angles(f, p.axis, side)
        # along the axis: how far bone reaches anteriorly (body cortex) and where the axis
        # finally leaves the vertebra posteriorly (its anatomical entry through the cortex)
        ts = np.arange(0.0, 60.0, 0.05)
        back = sdf(p.center[None, :] - ts[:, None] * p.axis[None, :]) <= 0
        entry_t = float(ts[np.nonzero(back)[0][-1]])
        ant_len = _first_change(sdf, p.center, p.axis, True, max_len=90.0)
        peds[side] = {
            "isthmus_center": _r(p.center), "axis": _r(p.axis, 6),
            "isthmus_width_mm": round(_chord(sdf, p.center, p.e_side), 3),
            "isthmus_height_mm": round(_chord(sdf, p.center, p.e_up), 3),
            "transverse_angle_deg": round(med, 3), "sagittal_angle_deg": round(cran, 3),
            "design_width_mm": round(float(p.width), 3), "design_height_mm": round(float(p.height), 3),
            "isthmus_measurable": bool(p.measurable),
            "axis_entry_point": _r(p.center - entry_t * p.axis),
            "axis_bone_length_mm": round(entry_t + ant_len, 3),
        }
    loss = genant_loss_pct(ant, mid, post, expected)
    grade = 0
    for g, (lo_, _hi) in sorted(M.GENANT_BANDS.items()):
        if loss >= lo_:
            grade = g
    frac = {"grade": int(v.fracture.get("grade", 0)), "type": v.fracture.get("type", "none"),
            "height_loss_pct": round(loss, 3), "grade_from_heights": grade,
            "expected_height_mm": round(expected, 3)}
    return {
        "label": v.code, "complete": bool(complete), "rib_bearing": bool(rib_bearing), "sacrum": v.is_sacrum,
        "body_centroid": _r(_body_centroid(b)), "frame_origin": _r(f.origin),
        "axes": {"x": _r(X, 6), "y": _r(Y, 6), "z": _r(Z, 6)},
        "superior_endplate": _endplate(b, "superior"), "inferior_endplate": _endplate(b, "inferior"),
        "body_ap_depth_mm": round(depth, 3), "body_width_mm": round(width, 3),
        "anterior_height_mm": round(ant, 3), "middle_height_mm": round(mid, 3), "posterior_height_mm": round(post, 3),
        "heights_measurable": not v.is_sacrum,
        "canal_ap_mm": round(canal_ap, 3), "canal_transverse_mm": round(canal_tr, 3),
        "cancellous_hu": round(v.cancellous_hu, 2),
        "pedicles": peds,
        "spinous_tip": _r(v.spinous_tip),
        "fracture": frac,
    }


# ----------------------------------------------------------------------------- the phantom
#: What each truth quantity means (written into truth.json; the anatomy measurements follow it).
DEFINITIONS = {
    "isthmus": "outer width/height of the pedicle's narrowest cross-section perpendicular to its axis; "
               "width along the horizontal (vertebra transverse-plane) direction, height along the other",
    "heights": "vertical (frame z) outer heights in the mid-sagittal plane, 3 mm inside the anterior and "
               "posterior body edges and at the centre of the mid-sagittal AP line",
    "body_ap_depth": "mid-sagittal chord along frame y at mid-height through the frame origin",
    "body_width": "chord along frame x at mid-height through the body's widest AP position",
    "canal_ap": "mid-sagittal bone-free gap along frame y at the pedicle-axis height",
    "canal_transverse": "bone-free gap along frame x through the two isthmus centres",
    "axis_entry_point": "where the pedicle axis, followed posteriorly from the isthmus, last leaves the "
                        "vertebra's bone (within 60 mm); axis_bone_length_mm runs from there to where the "
                        "axis leaves the body anteriorly",
    "joint_spaces": "facet joints are 2 mm wide; at voxels above ~1.15 mm neighbours may touch diagonally",
    "endplate_normals": "both point cranially (towards +frame z); plane fitted to the endplate rim",
    "height_loss_pct": "100*(1-min(ant,mid)/max(post, expected)); expected = this level's unfractured "
                       "posterior height",
    "body_centroid": "volume centroid of the vertebral body alone; frame_origin is the centre of the body's "
                     "mid-sagittal depth at mid-height",
}


@dataclass
class _Anatomy:
    """Everything drawn, as implicit shapes, before rasterising."""

    names: list
    chain: list
    dims: dict
    tilts: tuple  # (alpha, beta, psi) per chain level, degrees
    models: dict
    rib_levels: list
    rib_shapes: dict
    ilium: list
    crest: dict
    discs: list
    tips: np.ndarray  # spinous tips sorted by z (world)
    skin_extra: float  # from the spinous tip line to the skin surface, mm

    def y_skin(self, z):
        """Posterior skin surface (LPS y) at the midline, per height z."""
        return np.interp(z, self.tips[:, 2], self.tips[:, 1]) + self.skin_extra

    def bone_shapes(self) -> list:
        return ([s for v in self.models.values() for _, s in v.parts] + self.ilium
                + [s for r in self.rib_shapes.values() for s in r])


def _chain_frames(chain, dims, alpha, beta, psi) -> dict[str, Frame]:
    """Vertebra frames chained from the sacrum upwards: each disc pivots on its posterior rim
    (lordosis opens the discs anteriorly); a strongly bent segment gets a taller disc rather
    than touching posterior elements."""
    frames: dict[str, Frame] = {}
    for i in range(len(chain) - 1, -1, -1):
        n = chain[i]
        R = rot_y(beta[n]) @ rot_x(alpha[n]) @ rot_z(psi[n])
        if i == len(chain) - 1:
            frames[n] = Frame(np.zeros(3), R)
            continue
        lower, dl, du = frames[chain[i + 1]], dims[chain[i + 1]], dims[n]
        pivot = lower.to_world([0, dl.body_d / 2, dl.body_h / 2])
        nmid = lower.R[:, 2] + R[:, 2]
        nmid /= np.linalg.norm(nmid)
        p_up = pivot + nmid * du.disc_post
        frames[n] = Frame(p_up - R @ np.array([0, du.body_d / 2, -du.body_h / 2]), R)
        top_pts = A.posterior_clearance_points(dl)[0]
        bot_pts = frames[n].to_world(A.posterior_clearance_points(du)[1])
        clear = float(np.min(lower.to_local_xyz(*bot_pts.T)[2]) - np.max(top_pts[:, 2]))
        if clear < MIN_POSTERIOR_CLEARANCE_MM:
            frames[n] = Frame(frames[n].origin + nmid * (MIN_POSTERIOR_CLEARANCE_MM - clear), R)
    return frames


def _build_anatomy(names, lumbar_count, lordosis_deg, scoliosis_deg, rotation_deg, frac, osteoporosis,
                   pedicle_scale, fat_mm, ribs, jitter, rng_dims) -> _Anatomy:
    chain = ["T10", "T11", "T12", *[f"L{i}" for i in range(1, lumbar_count + 1)], "S1"]
    alpha, beta, psi = A._tilt_tables(chain, lordosis_deg, scoliosis_deg, rotation_deg)
    jit = rng_dims.uniform(1 - jitter, 1 + jitter, size=(len(chain), 3)) if jitter > 0 else np.ones((len(chain), 3))
    dims = {}
    for i, n in enumerate(chain):
        d = M.scaled(M.dims_for(n, lumbar_count), body=jit[i, 0], posterior=jit[i, 1], pedicle=jit[i, 2])
        dims[n] = replace(d, ped_w=d.ped_w * pedicle_scale) if pedicle_scale != 1.0 else d
    frames = _chain_frames(chain, dims, alpha, beta, psi)
    shift = -np.mean([frames[n].origin for n in names], axis=0)
    for fr in frames.values():
        fr.origin = fr.origin + shift

    models: dict[str, A.VertebraModel] = {}
    for n in names:
        d = dims[n]
        canc = (M.CANCELLOUS_HU_OSTEOPOROTIC * d.cancellous / 220.0) if osteoporosis else d.cancellous
        f = {lv: (g, k) for lv, g, k in frac}.get(n)
        v = A.build_vertebra(n, LV.verse_code(n), frames[n], d, cancellous_hu=canc,
                             fracture=(f[1], 0.0) if f else None)
        if f:
            _solve_fracture_loss(v.body, f[1], M.GENANT_TARGET_LOSS[f[0]])
            v.fracture = {"grade": f[0], "type": f[1]}
        models[n] = v
    for i, n in enumerate(names):
        idx = chain.index(n)
        facet_above = dims[chain[idx - 1]].facet if idx > 0 else dims[n].facet
        A.add_sap(models[n], facet_above, models[names[i - 1]] if i > 0 else None)
        if i > 0:
            A.add_iap(models[names[i - 1]], models[n], dims[names[i - 1]].facet)

    if isinstance(ribs, (list, tuple)):  # an explicit rib-bearing pattern (transitional anatomy)
        rib_levels = [n for n in names if n in set(ribs)]
    else:
        rib_levels = [n for n in names if n.startswith("T")] if ribs else []
    ilium, crest = A.build_ilium(models["S1"]) if "S1" in names else ([], {})
    tips = np.array(sorted((v.spinous_tip for v in models.values()), key=lambda p: p[2]))
    return _Anatomy(
        names=names, chain=chain, dims=dims, tilts=(alpha, beta, psi), models=models, rib_levels=rib_levels,
        rib_shapes={n: A.build_ribs(models[n]) for n in rib_levels}, ilium=ilium, crest=crest,
        discs=[A.Disc(models[names[i + 1]].body, models[names[i]].body) for i in range(len(names) - 1)],
        tips=tips, skin_extra=SUPRASPINOUS_MM + fat_mm + M.SKIN_MM)


def _field_of_view(an: _Anatomy, fov: str, spacing, crop_top_mm: float = 0.0, crop_bottom_mm: float = 0.0) -> Grid:
    shapes = an.bone_shapes()
    lo = np.min([s.lo for s in shapes], axis=0)
    hi = np.max([s.hi for s in shapes], axis=0)
    if fov == "full":  # the posterior skin, some anterior soft tissue, at most 280 mm wide
        lo = np.array([max(lo[0] - 8.0, -140.0), lo[1] - 25.0, lo[2] - 6.0])
        hi = np.array([min(hi[0] + 8.0, 140.0), max(hi[1], an.tips[:, 1].max() + an.skin_extra) + 10.0, hi[2] + 6.0])
    else:
        lo, hi = lo - 6.0, hi + 6.0
    hi[2] -= crop_top_mm
    lo[2] += crop_bottom_mm
    if hi[2] - lo[2] < 20.0:
        raise InputError(f"crop_top_mm={crop_top_mm} and crop_bottom_mm={crop_bottom_mm} leave less than 20 mm "
                         "of the spine; crop less.")
    return Grid(lo, hi, spacing)


def _touches_border(lab: np.ndarray) -> set[int]:
    """Label codes present on any face of the grid (vertebrae the field of view cuts)."""
    faces = [lab[0], lab[-1], lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]]
    return set(int(c) for f in faces for c in np.unique(f)) - {0}


def _paint_trunk(ct: np.ndarray, grid: Grid, an: _Anatomy, fat_mm: float) -> None:
    """Skin, subcutaneous fat and muscle of an elliptic trunk whose back follows the spinous tips.

    The layers are offsets of one ellipse, so the tissue is a 1-D function of the distance to
    the skin: that profile (the same partial-volume blends as paint_soft) is built once as a
    look-up table. The trunk is wide and smooth, so per column the distance is the vertical
    distance to the boundary times the boundary normal's y component."""
    h = grid.h
    ax_, by_ = TRUNK_SEMI_AXES
    lut_step = h / 32.0
    dprof = np.arange(-(M.SKIN_MM + fat_mm + 2 * h), 2 * h, lut_step)
    prof = np.full(dprof.shape, M.AIR_HU)
    for da, hu in ((0.0, M.SKIN_HU), (M.SKIN_MM, M.FAT_HU), (M.SKIN_MM + fat_mm, M.MUSCLE_HU)):
        f = np.clip(0.5 - (dprof + da) / h, 0.0, 1.0)
        prof += f * (hu - prof)
    lut = np.concatenate([[M.MUSCLE_HU], prof, [M.AIR_HU]]).astype(np.float32)
    xs = grid.axes[0].astype(np.float64)
    ys = grid.axes[1][None, :]
    xr = np.clip(xs / ax_, -1.0, 1.0)
    half = by_ * np.sqrt(1.0 - xr * xr)  # boundary y offset from the centre, per column
    ny = (half / by_**2) / np.sqrt((xs / ax_**2) ** 2 + (half / by_**2) ** 2 + 1e-30)
    for k in progress(range(grid.shape[2]), "phantom: soft tissue"):
        yc = float(an.y_skin(grid.axes[2][k]) - by_)
        d_post = (ys - (yc + half)[:, None]) * ny[:, None]
        d_ant = ((yc - half)[:, None] - ys) * ny[:, None]
        dd = np.maximum(d_post, d_ant)
        idx = np.clip((dd - dprof[0]) / lut_step + 1.0, 0, len(lut) - 1).astype(np.int32)
        ct[:, :, k] = lut[idx]


def _paint_canal_and_discs(ct: np.ndarray, grid: Grid, an: _Anatomy) -> None:
    """Epidural fat and the CSF-filled thecal sac along the canal centres, then the discs."""
    h, names, models, dims = grid.h, an.names, an.models, an.dims
    cc = [models[n].frame.to_world([0, dims[n].body_d / 2 + dims[n].canal_d / 2, models[n].z_p]) for n in names]
    cc = [cc[0] + models[names[0]].frame.R[:, 2] * 25.0, *cc]
    if "S1" in names:
        cc.append(models["S1"].frame.to_world([0, dims["S1"].body_d / 2 + 6.0, -30.0]))
    else:
        cc.append(cc[-1] - models[names[-1]].frame.R[:, 2] * 25.0)
    epi, sac = [], []
    for i in range(len(cc) - 1):
        n = names[min(max(i - 1, 0), len(names) - 1)]
        d = dims[n]
        ref = models[n].frame.R[:, 0]
        epi.append(Tube(cc[i], cc[i + 1], ref=ref, r_up=d.canal_w / 2 + 1.0, r_side=d.canal_d / 2 + 1.0))
        sac.append(Tube(cc[i], cc[i + 1], ref=ref, r_up=0.38 * d.canal_w, r_side=0.36 * d.canal_d))
    for shapes, hu in ((epi, M.EPIDURAL_FAT_HU), (sac, M.CSF_HU)):
        res = union_sdf(grid, shapes, 2 * h)
        if res is not None:
            paint_soft(ct, res[0], res[1], hu, h)
    for disc in an.discs:
        box = grid.box(disc.lo, disc.hi, 2 * h)
        if box is None:
            continue
        sl, (X, Y, Z) = box
        dd = np.asarray(disc.sdf(X, Y, Z), np.float32)
        hu = np.where(disc.nucleus(X, Y, Z), np.float32(M.NUCLEUS_HU), np.float32(M.ANNULUS_HU))
        paint_soft(ct, sl, dd, np.broadcast_to(hu, dd.shape), h)


def _paint_bones(ct: np.ndarray, lab: np.ndarray, grid: Grid, an: _Anatomy, osteoporosis: bool) -> int:
    """Ilium and ribs (unlabelled), then the vertebrae (labelled); returns overlapping voxels."""
    h = grid.h
    cort_hu, cort_mm = _cortex(osteoporosis)
    ilium_canc = M.CANCELLOUS_HU_OSTEOPOROTIC if osteoporosis else M.ILIUM_CANCELLOUS_HU
    rib_canc = M.CANCELLOUS_HU_OSTEOPOROTIC if osteoporosis else M.RIB_CANCELLOUS_HU
    for shapes, canc in ((an.ilium, ilium_canc), *[(r, rib_canc) for r in an.rib_shapes.values()]):
        if shapes:
            res = union_sdf(grid, shapes, 2 * h + cort_mm)
            if res is not None:
                paint_bone(ct, res[0], res[1], cort_hu, canc, cort_mm, h)
    overlaps = 0
    for n in progress(an.names, "phantom: vertebrae"):
        v = an.models[n]
        res = union_sdf(grid, [s for _, s in v.parts], 2 * h + cort_mm)
        if res is None:
            continue
        sl, dd = res
        paint_bone(ct, sl, dd, cort_hu, v.cancellous_hu, cort_mm, h)
        sub = lab[sl]
        inside = dd <= 0
        overlaps += int(np.count_nonzero(sub[inside]))  # voxels already claimed by another vertebra
        sub[inside] = v.code
    return overlaps


def _cortex(osteoporosis: bool) -> tuple[float, float]:
    return ((M.CORTICAL_HU_OSTEOPOROTIC, M.CORTEX_MM_OSTEOPOROTIC) if osteoporosis
            else (M.CORTICAL_HU, M.CORTEX_MM))


def _to_int16(ct: np.ndarray, noise_hu: float, rng) -> np.ndarray:
    """Add Gaussian noise and convert to int16, slab by slab (no full-size temporaries)."""
    out = np.empty(ct.shape, dtype=np.int16)
    step = max(1, int(4_000_000 // (ct.shape[0] * ct.shape[1])))
    for k0 in range(0, ct.shape[2], step):
        slab = ct[:, :, k0:k0 + step]
        if noise_hu > 0:
            slab += rng.standard_normal(slab.shape, dtype=np.float32) * np.float32(noise_hu)
        np.rint(slab, out=slab)
        np.clip(slab, -1024, 3071, out=slab)
        out[:, :, k0:k0 + step] = slab
    return out


def _truth(an: _Anatomy, grid: Grid, params: dict, osteoporosis: bool, fat_mm: float, overlaps: int,
           cut: set[int] = frozenset()) -> dict:
    names, dims = an.names, an.dims
    alpha, beta, psi = an.tilts
    cort_hu, cort_mm = _cortex(osteoporosis)
    zs = np.arange(grid.axes[2][0], grid.axes[2][-1] + 1e-6, 5.0)
    return {
        "format": TRUTH_FORMAT, "version": TRUTH_VERSION, "frame": "LPS", "units": "mm",
        "params": params,
        "grid": {"shape": list(grid.shape), "spacing_mm": _r(grid.spacing, 4), "origin": _r(grid.origin, 4)},
        "tissue_hu": {"cortical": cort_hu, "cortex_mm": cort_mm, "disc_annulus": M.ANNULUS_HU,
                      "disc_nucleus": M.NUCLEUS_HU, "csf": M.CSF_HU, "epidural_fat": M.EPIDURAL_FAT_HU,
                      "muscle": M.MUSCLE_HU, "fat": M.FAT_HU, "skin": M.SKIN_HU, "air": M.AIR_HU},
        "vertebrae": {n: _vertebra_truth(an.models[n], n in an.rib_levels, an.models[n].code not in cut)
                      for n in names},
        "discs": {f"{names[i]}-{names[i + 1]}": {
            "posterior_height_mm": round(dims[names[i]].disc_post, 3),
            "segmental_lordosis_deg": round(alpha[names[i + 1]] - alpha[names[i]], 3)} for i in range(len(names) - 1)},
        "spine": {"scoliosis_end_vertebrae": list(A.scoliosis_end_vertebrae(an.chain)),
                  "lordosis_L1_S1_deg": round(alpha["S1"] - alpha["L1"], 3) if "L1" in alpha else None,
                  "tilt_sagittal_deg": {n: round(alpha[n], 3) for n in names},
                  "tilt_coronal_deg": {n: round(beta[n], 3) for n in names},
                  "axial_rotation_deg": {n: round(psi[n], 3) for n in names}},
        "ribs": {n: True for n in an.rib_levels},
        "label_overlap_voxels": overlaps,
        "iliac_crest": an.crest,
        "skin": {"posterior_midline_y_at_z": [[round(float(z), 2), round(float(an.y_skin(z)), 3)] for z in zs],
                 "fat_mm": float(fat_mm)},
        "definitions": DEFINITIONS,
        "disclaimer": "Synthetic research phantom; not patient data and not a certified medical device.",
    }


def make_phantom(*, levels="T11-S1", spacing=1.0, lordosis_deg=40.0, scoliosis_deg=0.0, rotation_deg=0.0,
                 fracture=None, osteoporosis=False, pedicle_scale=1.0, fat_mm=25.0, noise_hu=10.0, seed=0,
                 lumbar_count=5, ribs=True, jitter=0.03, fov="full", blur_mm=0.0, crop_top_mm=0.0,
                 crop_bottom_mm=0.0) -> Phantom:
    """Build a synthetic lower thoracic/lumbar/sacral spine CT with exact ground truth.

    Parameters (all keyword-only):
        levels: level range ("T11-S1") or list of names; T10 to S1 are modelled.
        spacing: isotropic voxel size in mm (0.5-3), or three sizes (x, y, z).
        lordosis_deg: L1 to S1 Cobb angle (superior endplates), distributed over the discs.
        scoliosis_deg: coronal Cobb angle of one lumbar curve (T12 to the last lumbar but one);
            positive = convex to the patient's left (apex displaced to +x).
        rotation_deg: axial rotation of the apical vertebra about its own z; positive turns the
            anterior body towards the patient's left. Falls off to 0 at the end vertebrae.
        fracture: (level, Genant grade 1-3, "wedge"|"biconcave"|"crush") or "L1:2:wedge"; several
            as a list of those or "T12:2,L2:1:biconcave".
        osteoporosis: cancellous bone ~80 HU, thinner (0.6 mm) and fainter cortex.
        pedicle_scale: multiplies every pedicle's isthmus width (narrow pedicles < 1).
        fat_mm: subcutaneous fat thickness over the posterior midline.
        noise_hu: standard deviation of the Gaussian image noise.
        seed: the random seed; it jitters dimensions by up to ``jitter`` (fraction) and draws noise.
        lumbar_count: 5, or 6 for a transitional L6 (VerSe code 25), or 4 for a sacralised L5
            (four mobile lumbar vertebrae, L4 on the sacrum; ``levels`` may still say "-S1").
        ribs: draw the floating ribs on the thoracic levels (T11, T12 by default); or a list of
            the rib-bearing levels, for transitional anatomy: ``["T11"]`` (11 rib pairs: T12
            without ribs), ``["T11", "T12", "L1"]`` (13 rib pairs: a lumbar rib on L1). The
            labels keep the true names (VerSe codes), whatever the ribs.
        jitter: largest relative change of each level's dimensions drawn from ``seed`` (0 = table values).
        fov: "full" (bones, posterior skin and some anterior soft tissue; the default) or "spine"
            (a tight box around the drawn bones: small and fast, for tests).
        blur_mm: standard deviation (mm) of a Gaussian scanner blur applied before the noise
            (0 = none). The labels and the truth are unaffected.
        crop_top_mm, crop_bottom_mm: move the top/bottom of the field of view inwards, cutting
            the end vertebrae as scans often do; a vertebra whose label reaches the edge of the
            grid gets ``"complete": false`` (its shape truth still describes the whole bone).
    """
    names = _parse_levels(levels, lumbar_count)
    frac = _parse_fracture(fracture, names)
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    if np.any(sp < 0.2) or np.any(sp > 5.0):
        raise InputError(f"Voxel spacing {spacing} mm is outside 0.2-5 mm; use e.g. 0.5-3 mm.")
    if not 0.0 < pedicle_scale <= 2.0:
        raise InputError(f"pedicle_scale={pedicle_scale} must be in (0, 2].")
    if fov not in ("full", "spine"):
        raise InputError(f"fov={fov!r} is unknown; use 'full' or 'spine'.")
    if fat_mm < 0 or noise_hu < 0 or blur_mm < 0:
        raise InputError("fat_mm, noise_hu and blur_mm must not be negative.")
    params = dict(levels=names, spacing=[float(s) for s in sp], lordosis_deg=float(lordosis_deg),
                  scoliosis_deg=float(scoliosis_deg), rotation_deg=float(rotation_deg),
                  fracture=(list(frac[0]) if len(frac) == 1 else [list(f) for f in frac]) if frac else None,
                  fractures=[list(f) for f in frac], osteoporosis=bool(osteoporosis),
                  pedicle_scale=float(pedicle_scale), fat_mm=float(fat_mm), noise_hu=float(noise_hu), seed=int(seed),
                  lumbar_count=int(lumbar_count), ribs=[str(r).upper() for r in ribs] if isinstance(ribs, (list, tuple)) else bool(ribs), jitter=float(jitter), fov=fov,
                  blur_mm=float(blur_mm), crop_top_mm=float(crop_top_mm), crop_bottom_mm=float(crop_bottom_mm))
    rng_dims, rng_noise = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))

    an = _build_anatomy(names, lumbar_count, lordosis_deg, scoliosis_deg, rotation_deg, frac, osteoporosis,
                        pedicle_scale, fat_mm, ribs, jitter, rng_dims)
    grid = _field_of_view(an, fov, sp, crop_top_mm, crop_bottom_mm)
    ct = np.full(grid.shape, M.AIR_HU, dtype=np.float32)
    lab = np.zeros(grid.shape, dtype=np.uint8)
    _paint_trunk(ct, grid, an, fat_mm)
    _paint_canal_and_discs(ct, grid, an)
    overlaps = _paint_bones(ct, lab, grid, an, osteoporosis)
    if blur_mm > 0:
        from scipy.ndimage import gaussian_filter

        gaussian_filter(ct, sigma=[blur_mm / s for s in grid.spacing], output=ct, mode="nearest")
    ct_i16 = _to_int16(ct, noise_hu, rng_noise)
    del ct
    truth = _truth(an, grid, params, osteoporosis, fat_mm, overlaps, _touches_border(lab))
    meta = {"source": "spineplan phantom", "synthetic": True}
    ct_vol = Volume(ct_i16, grid.affine, modality="CT", meta=dict(meta))
    lab_vol = Volume(lab, grid.affine, modality="SEG", meta=dict(meta, convention="verse"))
    return Phantom(ct=ct_vol, labels=lab_vol, truth=truth)


def write_phantom(ph: Phantom, out_dir: TypePath) -> dict[str, Path]:
    """Write ``ct.nii.gz``, ``labels.nii.gz`` and ``truth.json`` into ``out_dir`` (atomically)."""
    from spineplan.io import write_volume

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"ct": out / "ct.nii.gz", "labels": out / "labels.nii.gz", "truth": out / "truth.json"}
    write_volume(ph.ct, paths["ct"])
    write_volume(ph.labels, paths["labels"])
    write_text(paths["truth"], json.dumps(ph.truth, indent=1) + "\n")
    return paths


def load_truth(path: TypePath) -> dict:
    """Read a phantom ``truth.json`` (a file, or a folder holding one) and check its format."""
    p = Path(path)
    if p.is_dir():
        p = p / "truth.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"No phantom truth file at {p}; run 'spineplan phantom -o DIR' first.") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot read {p} as phantom truth JSON ({exc}).") from exc
    if not isinstance(data, dict) or data.get("format") != TRUTH_FORMAT:
        raise InputError(f"{p} is not a spineplan phantom truth file (format must be {TRUTH_FORMAT!r}).")
    if data.get("version") != TRUTH_VERSION:
        raise InputError(f"{p} has truth version {data.get('version')}; this spineplan reads version {TRUTH_VERSION}.")
    return data
