"""Level check: which vertebra is under a marked pixel (e.g. the needle tip) of a registered X-ray.

After :func:`spineplan.fluoro.register.register`, every vertebra's label mask is projected
onto the X-ray with the registered C-arm (its own pose in per-vertebra mode). The projection of
a mask is rendered with the DRR renderer as the **path length (mm) of each pixel's ray through
the vertebra**, for the whole vertebra and for its body.

Body: the part of the vertebra's mask anterior to the mask's centroid (LPS ``y`` smaller than
the centroid's). The centroid of a whole vertebra lies at about the posterior wall of the body,
so this keeps the body and drops the arch, the pedicles' posterior half and the processes,
whose projections overlap the neighbouring levels (thoracic spinous processes project over the
body below). It assumes the CT was taken with the spine roughly along the scanner axis, as
clinical spine CTs are.

Decision at a pixel: the level whose body the ray crosses longest; if no body is crossed, the
level whose whole vertebra is crossed longest; if none, no level.

Confidence (0..1): the registration's positional uncertainty ``sigma`` (pixels, from its
consistency check, at least :data:`MIN_SIGMA_MM`) against the pixel's distance ``d`` to the
edge of the chosen body's footprint: ``Phi(d / sigma)`` (the chance that the pixel is still in
that footprint when the projection is off by a Gaussian error), times the share of the chosen
level's path among the two longest. It is 0 when the registration failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from spineplan.errors import InputError

#: Smallest registration uncertainty assumed (mm at the isocentre): the spread of successful
#: simulated registrations (benchmarks/bench_register.py) is of this order.
MIN_SIGMA_MM = 1.0
#: Below this path length (mm) a ray is taken not to cross a vertebra (partial-volume edge).
MIN_PATH_MM = 1.0


@dataclass
class LevelCheck:
    """Answer of :func:`levelcheck`."""

    level: str | None
    confidence: float
    #: Distance (pixels) from the marked pixel to each vertebra's projected body (0 inside).
    distances_px: dict[str, float]
    #: Path length (mm) of the marked pixel's ray through each vertebra's body.
    body_path_mm: dict[str, float] = field(default_factory=dict)
    pixel: tuple[float, float] = (float("nan"), float("nan"))
    sigma_px: float = float("nan")
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "confidence": round(float(self.confidence), 4),
                "pixel": [float(self.pixel[0]), float(self.pixel[1])], "sigma_px": round(float(self.sigma_px), 3),
                "distances_px": {k: round(float(v), 2) for k, v in self.distances_px.items()},
                "body_path_mm": {k: round(float(v), 2) for k, v in self.body_path_mm.items()},
                "message": self.message}


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _mask_att(mask: np.ndarray, affine):
    """A cropped attenuation volume of 1/mm inside ``mask``: its DRR is the path length in mm."""
    from spineplan.fluoro.drr import AttenuationVolume
    from spineplan.fluoro.register import _scaled_affine

    ijk = np.argwhere(mask)
    lo = np.maximum(ijk.min(axis=0) - 1, 0)
    hi = np.minimum(ijk.max(axis=0) + 2, mask.shape)
    sub = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32)
    return AttenuationVolume.from_mu(np.ascontiguousarray(sub), _scaled_affine(np.asarray(affine, float), (1, 1, 1), lo))


def body_masks(masks: Mapping[str, np.ndarray], affine) -> dict[str, np.ndarray]:
    """Each vertebra's body: the voxels of its mask anterior to the mask's centroid (see the module doc)."""
    aff = np.asarray(affine, float)
    out = {}
    for name, m in masks.items():
        ijk = np.argwhere(m)
        y = ijk @ aff[1, :3] + aff[1, 3]
        keep = ijk[y < y.mean()]
        b = np.zeros_like(m, dtype=bool)
        b[tuple(keep.T)] = True
        out[name] = b
    return out


def project_vertebrae(carm, masks: Mapping[str, np.ndarray], affine, *, carms: Mapping[str, Any] | None = None
                      ) -> dict[str, np.ndarray]:
    """Path-length images (mm, shape of the detector) of each mask seen by ``carm``
    (or by ``carms[name]`` when given, e.g. per-vertebra poses)."""
    from spineplan.fluoro.drr import render

    out = {}
    for name, m in masks.items():
        if not m.any():
            continue
        c = carms.get(name, carm) if carms else carm
        out[name] = np.asarray(render(_mask_att(m, affine), c, mode="fast"), dtype=np.float32)
    return out


def _bilinear(img: np.ndarray, u: float, v: float) -> float:
    h, w = img.shape
    if not (0 <= u <= w - 1 and 0 <= v <= h - 1):
        return 0.0
    i0, j0 = int(min(v, h - 2)), int(min(u, w - 2))
    fv, fu = v - i0, u - j0
    return float(img[i0, j0] * (1 - fv) * (1 - fu) + img[i0, j0 + 1] * (1 - fv) * fu
                 + img[i0 + 1, j0] * fv * (1 - fu) + img[i0 + 1, j0 + 1] * fv * fu)


def _distance_maps(foot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance outside to the footprint, distance inside to its edge), pixels."""
    from scipy.ndimage import distance_transform_edt

    if not foot.any():
        return np.full(foot.shape, np.inf), np.zeros(foot.shape)
    return distance_transform_edt(~foot), distance_transform_edt(foot)


def levelcheck(xray, spine, result, pixel, *, affine=None, shape=None, projections=None) -> LevelCheck:
    """The level under ``pixel`` = (u, v) (column, row of the X-ray image) with a confidence.

    ``spine``: vertebra labels on the CT grid (a Spine, ``spineplan.io.Labels``, a label Volume,
    or a mapping level -> mask with ``affine=`` the CT's index->LPS affine). ``result``: the
    :class:`~spineplan.fluoro.register.RegistrationResult` for this X-ray. ``projections``: the
    output of :func:`projections_for` to reuse for many pixels of the same shot.
    """
    u, v = (float(pixel[0]), float(pixel[1]))
    h, w = np.asarray(xray.image).shape
    if not (0 <= u <= w - 1 and 0 <= v <= h - 1):
        raise InputError(f"Pixel ({u:g}, {v:g}) is outside the X-ray ({w} columns x {h} rows); give U,V as "
                         "column,row counted from 0 at the top left.")
    if projections is None:
        projections = projections_for(xray, spine, result, affine=affine, shape=shape)
    bodies, wholes, carm = projections
    return decide(bodies, wholes, (u, v), result, carm)


def projections_for(xray, spine, result, *, affine=None, shape=None):
    """(bodies, wholes, carm): every vertebra's projected body and whole-vertebra path images on
    the X-ray's detector with the registered pose(s)."""
    from spineplan.fluoro.register import vertebra_masks

    masks = vertebra_masks(spine, shape=shape)
    if not masks:
        raise InputError("The labels contain no vertebrae; the level check needs vertebra labels on the CT grid.")
    if affine is None:
        holder = getattr(spine, "volume", None) or getattr(spine, "labels", None) or spine
        affine = getattr(holder, "affine", None)
    if affine is None:
        raise InputError("The vertebra masks need the CT's index->LPS affine (affine=...).")
    carm = _carm_on_xray(result, xray)
    carms = {n: _carm_on_xray(result, xray, n) for n in masks} if result.per_vertebra else None
    bodies = project_vertebrae(carm, body_masks(masks, affine), affine, carms=carms)
    wholes = project_vertebrae(carm, masks, affine, carms=carms)
    return bodies, wholes, carm


def _carm_on_xray(result, xray, level: str | None = None):
    """The registered C-arm with the X-ray's own (unbinned) detector."""
    c = result.carm_for(level)
    return c.with_pose(c.pose).__class__(xray.detector(), c.pose)


def decide(bodies: Mapping[str, np.ndarray], wholes: Mapping[str, np.ndarray], pixel, result, carm) -> LevelCheck:
    """The decision rule and confidence of the module docstring, from projected path images."""
    u, v = float(pixel[0]), float(pixel[1])
    body_path = {n: _bilinear(img, u, v) for n, img in bodies.items()}
    whole_path = {n: _bilinear(img, u, v) for n, img in wholes.items()}
    iu, iv = int(round(u)), int(round(v))
    dists: dict[str, float] = {}
    inside: dict[str, float] = {}
    for n, img in bodies.items():
        out_d, in_d = _distance_maps(img >= MIN_PATH_MM)
        dists[n] = float(out_d[iv, iu])
        inside[n] = float(in_d[iv, iu])
    # registration uncertainty in pixels at the vertebrae's depth
    det = carm.detector
    centre = result.centre if result.centre is not None else carm.pose.inverse().apply([0, 0, 600.0])
    depth = float(carm.pose.apply(centre)[2])
    mm_iso = MIN_SIGMA_MM
    if np.isfinite(result.consistency_mm):
        mm_iso = max(mm_iso, float(result.consistency_mm))
    sigma_px = mm_iso * det.sdd_mm / depth / det.pixel_mm

    ranked = sorted(body_path, key=lambda n: -body_path[n])
    source = body_path
    if not ranked or body_path[ranked[0]] < MIN_PATH_MM:
        ranked = sorted(whole_path, key=lambda n: -whole_path[n])
        source = whole_path
    if not ranked or source[ranked[0]] < MIN_PATH_MM:
        nearest = min(dists, key=dists.get) if dists else None
        return LevelCheck(None, 0.0, dists, body_path, (u, v), sigma_px,
                          "No vertebra lies under this pixel" + (f"; the nearest body is {nearest}, "
                                                                 f"{dists[nearest]:.0f} pixels away." if nearest else "."))
    level = ranked[0]
    p1 = source[level]
    p2 = source[ranked[1]] if len(ranked) > 1 else 0.0
    share = p1 / (p1 + p2) if p1 + p2 > 0 else 0.0
    d_edge = inside.get(level, 0.0) if source is body_path else 0.0
    conf = _phi(d_edge / max(sigma_px, 1e-6)) * share
    msg = f"{level} (confidence {conf:.2f})"
    if not result.success:
        conf = 0.0
        msg = f"{level} at the registered pose, but the registration failed ({result.reason}); do not rely on it."
    elif source is not body_path:
        msg += "; the pixel is over the posterior elements, not a vertebral body."
    return LevelCheck(level, float(conf), dists, body_path, (u, v), float(sigma_px), msg)


def overlay_png(xray, result, masks: Mapping[str, np.ndarray], affine, path, *, check: LevelCheck | None = None,
                title: str | None = None):
    """Write the X-ray with each projected vertebral body outlined and named (and the marked
    pixel with its level) as a PNG, atomically. Returns the path."""
    from spineplan import DISCLAIMER
    from spineplan._atomic import atomic_path
    from spineplan._optional import optional_import

    matplotlib = optional_import("matplotlib", "images", "overlay pictures")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    carm = _carm_on_xray(result, xray)
    carms = {n: _carm_on_xray(result, xray, n) for n in masks} if result.per_vertebra else None
    bodies = project_vertebrae(carm, body_masks(masks, affine), affine, carms=carms)
    img = np.asarray(xray.image, dtype=np.float32)
    h, w = img.shape
    fig, ax = plt.subplots(figsize=(6, 6 * h / w + 0.6), dpi=120)
    lo, hi = np.percentile(img, [1, 99])
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    colours = plt.get_cmap("tab10")
    for k, (name, foot) in enumerate(bodies.items()):
        fm = foot >= MIN_PATH_MM
        if fm.sum() < 4:
            continue
        col = colours(k % 10)
        ax.contour(fm.astype(float), levels=[0.5], colors=[col], linewidths=1.0)
        vv, uu = np.nonzero(fm)
        ax.text(float(uu.max()) + 3, float(vv.mean()), name, color=col, fontsize=8, va="center",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "edgecolor": "none"})
    if check is not None:
        ax.plot([check.pixel[0]], [check.pixel[1]], marker="+", color="yellow", markersize=14, mew=2)
        ax.set_title(f"Level under the mark: {check.level or 'none'} (confidence {check.confidence:.2f})", fontsize=9)
    elif title:
        ax.set_title(title, fontsize=9)
    status = "registration OK" if result.success else f"REGISTRATION FAILED: {result.reason}"
    fig.text(0.01, 0.01, f"{status} (GC {result.score:.2f}). {DISCLAIMER}", fontsize=5, wrap=True)
    ax.set_axis_off()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
