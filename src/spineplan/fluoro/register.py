"""2D/3D registration of an X-ray to the CT: where was the C-arm, relative to the CT, for this shot?

Method (intensity-based, single view):

1. **Similarity**: gradient correlation (Penney et al., IEEE TMI 1998) between the X-ray and a
   DRR (:func:`spineplan.fluoro.drr.render`) over the pixels whose rays cross the whole CT
   (rays leaving through the scan's cranial/caudal end would show a truncation edge a real
   X-ray does not have, so they are masked out).
2. **Pose parameters**: 6 rigid parameters about the view's isocentre, expressed in the C-arm
   frame: a rotation vector (degrees) and a translation (mm) of the CT, so the depth (along the
   beam) is one parameter, scaled by its own (larger) uncertainty.
3. **Multi-resolution**: the X-ray is binned to a ~256-pixel detector, then searched at 1/4
   (in-plane rotation x FFT shift search, then CMA-ES from the best few distinct candidates,
   global within +-2 prior ranges, intensity polarity free), 1/2 and full resolution (each: a
   scan of depth along the beam, CMA-ES, a narrower depth scan, CMA-ES with a smaller step),
   then a coordinate polish of the final score (see 4). The CT's attenuation is block-averaged to about the detector
   pixel size at the isocentre for each level, so each DRR costs little.
4. **Failure signal**: the registration reports ``success=False`` when (a) the final gradient
   correlation is below :data:`SCORE_MIN` (calibrated on simulated trials, see the constant), or
   (b) the result is not at a peak of the final score: along each of the 6 pose axes (depth along
   the beam included) a parabola is fitted to the score at 0, +-h, +-2h; an axis without a
   maximum, or vertices that together move the vertebrae more than :data:`CERT_RESIDUAL_MAX_MM`
   (mean 3-D), mean failure (after one coordinate polish towards the vertices).
   ``consistency_mm`` / ``meta["consistency_3d_mm"]`` are that residual in the projection / in
   3-D. It never reports success when either check fails. A wrong optimum that is a genuine
   local peak and scores above the threshold (e.g. the spine shifted by one level in a repetitive
   thoracic view) is NOT always caught: see the benchmark figures.
5. **Per-vertebra mode** (the spine moved between CT and surgery): starting from the global
   result, each vertebra in view is registered on its own: the DRR is the rest of the CT at the
   global pose plus that vertebra (its label mask, cropped) at a free rigid pose about its
   centroid, and the similarity is restricted to the vertebra's projected neighbourhood. It
   corrects the vertebra's *projection* (simulated 4 deg / 3 mm motion of L3: 3.5 mm -> 0.4 mm);
   the depth of a single vertebra along the beam stays poorly determined (several mm).

CMA-ES follows Hansen, "The CMA Evolution Strategy: A Tutorial" (arXiv:1604.00772, 2016).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from spineplan.errors import InputError, RegistrationError

# --------------------------------------------------------------------------- constants
#: Binned detector size (pixels along the longer side) of the finest registration level.
DETECTOR_TARGET_PX = 256
#: Resolution pyramid: binning factors relative to the finest level (1/4, 1/2, full).
PYRAMID = (4, 2, 1)
#: Prior pose uncertainty the search is scaled to (issue 5: starting poses within +-10 deg, +-20 mm
#: of the named view). Rotation (deg), in-plane translation (mm), depth translation (mm).
PRIOR_ROT_DEG = 10.0
PRIOR_TRANS_MM = 20.0
PRIOR_DEPTH_MM = 20.0
#: Gradient-correlation smoothing scales (pixels of each level) for the three levels.
LEVEL_SIGMAS = ((1.0, 2.0), (0.0, 1.0), (0.0, 1.0))
#: Scales of the final score (the one compared with SCORE_MIN), pixels of the finest level.
FINAL_SIGMAS = (0.0, 1.0)
#: CMA-ES step sizes (in prior units) and generation caps per level.
LEVEL_SIGMA0 = (0.2, 0.08, 0.03)
LEVEL_GENERATIONS = (20, 10, 8)
LEVEL_POPSIZE = (12, 8, 8)
#: Voxel size of each level's block-averaged attenuation volume, in detector pixels at the
#: isocentre (coarser volumes render faster; the finest level's DRR is still sharper than the
#: X-ray's blur).
LEVEL_VOXEL_PER_PIXEL = (1.0, 1.0, 2.0)
#: A pixel is valid when its ray's path through the CT box is at least this fraction of the
#: longest one (rays leaving through the scan's ends are truncated).
VALID_PATH_FRACTION = 0.9
#: Erosion of the valid-pixel mask (pixels of each level) as a margin for pose changes.
VALID_MARGIN_PX = 2
#: Ray-marching step of the registration's DRRs, as a fraction of the smallest voxel side of the
#: (block-averaged) volume of each level. The DRR is smoothed by the binning anyway.
RENDER_STEP_FRACTION = 0.8
#: Attenuation below this (1/mm) is air; the CT is cropped to the box of everything above it.
MU_AIR = 0.002
#: Final gradient correlation (scales FINAL_SIGMAS) below which a registration is reported as
#: failed. Calibrated on simulated trials (benchmarks/bench_register.py, noise + scatter + 80 keV
#: vs 60 keV): converged trials scored 0.32-0.40 on the 3 mm abdomen CT at 256 px (0.48 at the
#: tests' 128 px) and 0.65-0.74 on the chest CT; unrelated images (noise) score ~0, an upside-down
#: shot 0.18 and a start 70 mm cranial (beyond the search range) ended at 0.27 (tests, 128 px).
#: Non-converged results are caught by the optimality certificate (CERT_*), not by this threshold.
SCORE_MIN = 0.3
#: Local optimality certificate of the result (replaces a second CMA-ES run from a perturbed start,
#: which at the finest level alone often ended 2-6 mm off in depth even from good results and so
#: could not tell a good result from a bad one): the final score is sampled at +-h, +-2h along each
#: C-arm-frame pose axis (rotations about x, y, z in deg; translations x, y, z in mm, z = depth
#: along the beam, the weak one) and a parabola fitted per axis.
CERT_STEPS = (0.5, 0.5, 0.25, 0.5, 0.5, 1.5)
CERT_AXIS_NAMES = ("rotation about the image's horizontal axis", "rotation about the image's vertical axis",
                   "in-plane rotation", "horizontal shift", "vertical shift", "depth along the beam")
#: The axis vertices, applied as one pose step, may move the vertebrae by at most this much (mean
#: 3-D, mm) for a success. Half the 2 mm success bound of issue 5: the rest is left for what the
#: check cannot see (bias of the similarity's optimum itself).
CERT_RESIDUAL_MAX_MM = 1.0
#: Rounds of check + coordinate polish; a polish is tried when the step exceeds this (mm).
CERT_ROUNDS = 2
CERT_POLISH_MIN_MM = 0.3
#: Per-vertebra mode: prior motion of one vertebra relative to the global result.
VERTEBRA_ROT_DEG = 4.0
VERTEBRA_TRANS_MM = 5.0
#: Per-vertebra neighbourhood: projected footprint dilated by this many mm at the detector.
VERTEBRA_MARGIN_MM = 12.0
#: A vertebra is "in view" when its centroid projects at least this many pixels inside the image
#: and at least this fraction of its voxels project onto the detector.
IN_VIEW_MARGIN_PX = 4
IN_VIEW_FRACTION = 0.8


# --------------------------------------------------------------------------- results
@dataclass
class VertebraRegistration:
    """One vertebra's own pose (per-vertebra mode)."""

    level: str
    carm: Any
    score: float
    success: bool
    reason: str
    shift_mm: float  # how far the vertebra's centroid moved from the global result


@dataclass
class RegistrationResult:
    """Outcome of :func:`register`. ``success`` is False whenever the checks say so."""

    carm: Any  # spineplan.fluoro.geometry.CArm (the X-ray's detector, registered pose)
    score: float
    success: bool
    reason: str
    iterations: int  # DRRs rendered
    seconds: float
    per_vertebra: dict[str, VertebraRegistration] | None = None
    polarity: int = 1  # +1: bone bright in the X-ray, -1: bone dark
    consistency_mm: float = float("nan")
    centre: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def carm_for(self, level: str | None = None):
        """The C-arm to use for ``level``: its own pose in per-vertebra mode when that succeeded."""
        if level and self.per_vertebra and level in self.per_vertebra and self.per_vertebra[level].success:
            return self.per_vertebra[level].carm
        return self.carm


# --------------------------------------------------------------------------- pose helpers
def _rotvec_deg(rv) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.radians(np.asarray(rv, float))).as_matrix()


def perturb_pose(pose, delta, centre):
    """``pose`` with the CT moved rigidly about ``centre`` (LPS) by ``delta`` in C-arm axes.

    ``delta = (rx, ry, rz, tx, ty, tz)``: a rotation vector in degrees and a translation in mm,
    both in the C-arm frame (x = image columns, y = rows, z = along the beam). The centre's
    image stays put under a pure rotation.
    """
    from spineplan.fluoro.geometry import Pose

    d = np.asarray(delta, dtype=np.float64).reshape(6)
    c = np.asarray(centre, dtype=np.float64).reshape(3)
    rd = _rotvec_deg(d[:3])
    rot = rd @ pose.rotation
    cc = pose.apply(c) + d[3:]  # C-arm position of the centre
    return Pose(rot, cc - rot @ c)


def pose_delta(pose, reference, centre) -> np.ndarray:
    """Inverse of :func:`perturb_pose`: the ``delta`` with ``perturb_pose(reference, delta) == pose``."""
    from scipy.spatial.transform import Rotation

    c = np.asarray(centre, dtype=np.float64)
    rd = pose.rotation @ reference.rotation.T
    rv = np.degrees(Rotation.from_matrix(rd).as_rotvec())
    return np.concatenate([rv, pose.apply(c) - reference.apply(c)])


def target_registration_error(pose_a, pose_b, points) -> np.ndarray:
    """3-D distance (mm) between where two poses put each LPS point in the C-arm frame."""
    pa = pose_a.pose if hasattr(pose_a, "pose") else pose_a
    pb = pose_b.pose if hasattr(pose_b, "pose") else pose_b
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return np.linalg.norm(pa.apply(pts) - pb.apply(pts), axis=1)


# --------------------------------------------------------------------------- vertebra masks
def vertebra_masks(spine, shape=None, *, convention: str = "auto") -> dict[str, np.ndarray]:
    """Level name -> boolean mask on the CT grid, from any of spineplan's spine descriptions.

    Accepts a :class:`spineplan.anatomy.model.Spine`, a mapping name -> mask, an object with
    ``names`` and ``mask(name)`` (e.g. ``spineplan.io.read_labels``), or a label-map
    :class:`~spineplan.volume.Volume` (``convention`` "verse", "ts-total" or "auto": TS-total
    when any label exceeds the largest VerSe code 28).
    """
    from spineplan.levels import TS_TOTAL_IDS, level_from_verse, sort_levels

    out: dict[str, np.ndarray] = {}
    if isinstance(spine, Mapping):
        out = {str(k): np.asarray(v, dtype=bool) for k, v in spine.items()}
    elif hasattr(spine, "names") and hasattr(spine, "mask"):
        out = {n: np.asarray(spine.mask(n), dtype=bool) for n in spine.names}
    elif hasattr(spine, "array") and hasattr(spine, "affine"):
        arr = np.asarray(spine.array)
        values = [int(v) for v in np.unique(arr) if v > 0]
        conv = convention
        if conv == "auto":
            conv = "ts-total" if values and max(values) > 28 else "verse"
        for v in values:
            if conv == "ts-total":
                name = TS_TOTAL_IDS.get(v)
            else:
                try:
                    name = level_from_verse(v)
                except KeyError:
                    name = None
            if name is None:
                continue
            m = arr == v
            out[name] = out[name] | m if name in out else m
    else:
        raise InputError(f"Cannot read vertebra masks from a {type(spine).__name__}; give a Spine, a label map "
                         "Volume or a mapping level -> mask.")
    if shape is not None:
        for name, m in out.items():
            if m.shape != tuple(shape):
                raise InputError(f"The {name} mask has shape {m.shape} but the CT has shape {tuple(shape)}; "
                                 "the labels must be on the CT grid.")
    out = {k: v for k, v in out.items() if v.any()}
    return {k: out[k] for k in sort_levels(out)}


def _mask_voxels(m: np.ndarray, stride: int = 1) -> np.ndarray:
    """(N, 3) voxel indices of a boolean mask (every ``stride``-th along each axis, on the full
    grid's lattice), found in the mask's bounding box: one pass over the full grid instead of
    ``np.argwhere`` on it (a 512x512x133 CT has 35 M voxels per mask)."""
    a01 = m.any(axis=2)
    ii = np.flatnonzero(a01.any(axis=1))
    jj = np.flatnonzero(a01.any(axis=0))
    if len(ii) == 0:
        return np.zeros((0, 3), np.int64)
    lo = [int(ii[0]), int(jj[0])]
    hi = [int(ii[-1]) + 1, int(jj[-1]) + 1]
    if stride > 1:
        lo = [-(-v // stride) * stride for v in lo]
    block = m[lo[0]:hi[0]:stride, lo[1]:hi[1]:stride, ::stride]
    return np.argwhere(block) * stride + np.array([lo[0], lo[1], 0])


def mask_centroids(masks: Mapping[str, np.ndarray], affine) -> dict[str, np.ndarray]:
    """LPS centroid of each mask."""
    aff = np.asarray(affine, float)
    out = {}
    for name, m in masks.items():
        ijk = _mask_voxels(np.asarray(m, bool)).mean(axis=0)
        out[name] = ijk @ aff[:3, :3].T + aff[:3, 3]
    return out


def in_view(carm, masks: Mapping[str, np.ndarray], affine, *, margin_px: float = IN_VIEW_MARGIN_PX,
            fraction: float = IN_VIEW_FRACTION, stride: int = 3) -> list[str]:
    """Levels whose centroid projects inside the image and most of whose voxels do."""
    aff = np.asarray(affine, float)
    det = carm.detector
    out = []
    for name, m in masks.items():
        ijk = _mask_voxels(np.asarray(m, bool), stride)
        if len(ijk) == 0:
            continue
        xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
        uv = carm.project(xyz)
        inside = ((uv[:, 0] >= 0) & (uv[:, 0] <= det.width_px - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= det.height_px - 1))
        c = carm.project(xyz.mean(axis=0))
        c_ok = margin_px <= c[0] <= det.width_px - 1 - margin_px and margin_px <= c[1] <= det.height_px - 1 - margin_px
        if c_ok and inside.mean() >= fraction:
            out.append(name)
    return out


# --------------------------------------------------------------------------- pyramids
def _block_mean_2d(img: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return img.astype(np.float32, copy=False)
    h, w = img.shape[0] // f, img.shape[1] // f
    return img[: h * f, : w * f].reshape(h, f, w, f).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def _block_mean_3d(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    if f == (1, 1, 1):
        return a
    s = [n // k for n, k in zip(a.shape, f)]
    a = a[: s[0] * f[0], : s[1] * f[1], : s[2] * f[2]]
    return np.ascontiguousarray(a.reshape(s[0], f[0], s[1], f[1], s[2], f[2]).mean(axis=(1, 3, 5), dtype=np.float32))


def _scaled_affine(affine: np.ndarray, f, offset=(0, 0, 0)) -> np.ndarray:
    """Affine of a grid whose voxel i' covers old voxels offset + f*i' ... offset + f*i' + f - 1."""
    s = np.eye(4)
    for ax in range(3):
        s[ax, ax] = f[ax]
        s[ax, 3] = offset[ax] + (f[ax] - 1) / 2.0
    return np.asarray(affine, float) @ s


def _crop_att(att, lo, hi):
    mu = np.ascontiguousarray(att.mu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    return replace(att, mu=mu, affine=_scaled_affine(att.affine, (1, 1, 1), lo))


def _downsample_att(att, voxel_mm: float):
    sp = np.linalg.norm(np.asarray(att.affine)[:3, :3], axis=0)
    f = tuple(int(max(1, np.floor(voxel_mm / s + 1e-6))) for s in sp)
    if f == (1, 1, 1):
        return att
    return replace(att, mu=_block_mean_3d(np.asarray(att.mu, np.float32), f), affine=_scaled_affine(att.affine, f))


def _render(att, carm, step_fraction: float = RENDER_STEP_FRACTION) -> np.ndarray:
    from spineplan.fluoro.drr import render

    step = step_fraction * float(np.linalg.norm(np.asarray(att.affine)[:3, :3], axis=0).min())
    return np.asarray(render(att, carm, mode="fast", step_mm=step), dtype=np.float32)


@dataclass
class _Level:
    factor: int
    image: np.ndarray
    carm: Any  # detector of this level, initial pose
    att: Any
    sigmas: tuple


def prepare_image(xray, max_px: int = DETECTOR_TARGET_PX, multiple: int = max(PYRAMID)):
    """Bin the X-ray to at most ~``max_px`` pixels; return (image, Detector) of the finest level.

    The image is cropped symmetrically to a multiple of the binning so that the principal point
    stays at the image centre (an odd remainder leaves a half-pixel shift, recorded nowhere:
    below 0.5 original pixels).
    """
    from spineplan.fluoro.geometry import Detector

    img = np.asarray(xray.image, dtype=np.float32)
    h, w = img.shape
    b = max(1, int(round(max(h, w) / max_px)))
    step = b * multiple
    h2, w2 = (h // step) * step, (w // step) * step
    if h2 < 4 * multiple or w2 < 4 * multiple:
        raise InputError(f"The X-ray ({w}x{h} pixels) is too small to register; it needs at least "
                         f"{4 * step} pixels on each side.")
    r0, c0 = (h - h2) // 2, (w - w2) // 2
    img = _block_mean_2d(img[r0:r0 + h2, c0:c0 + w2], b)
    det = Detector(sdd_mm=xray.sdd_mm, width_px=img.shape[1], height_px=img.shape[0], pixel_mm=xray.pixel_mm * b)
    return img, det


def _valid_mask(att_box, carm) -> np.ndarray:
    """Pixels whose ray crosses the CT box over at least VALID_PATH_FRACTION of the longest path."""
    from scipy.ndimage import binary_erosion

    length = _render(att_box, carm)
    valid = length >= VALID_PATH_FRACTION * float(length.max())
    if VALID_MARGIN_PX > 0:
        valid = binary_erosion(valid, iterations=VALID_MARGIN_PX, border_value=0)
    return valid


def _box_att(att):
    """A volume of ones on a coarse version of att's box (to measure path lengths through it)."""
    shape = np.asarray(att.mu.shape)
    f = tuple(int(max(1, s // 24)) for s in shape)
    small = tuple(int(s // k) for s, k in zip(shape, f))
    return replace(att, mu=np.ones(small, np.float32), affine=_scaled_affine(att.affine, f))



# --------------------------------------------------------------------------- 2-D initialisation
#: Depth scans before the CMA-ES runs of the half (two) and full (one) resolution levels: (half
#: range, step) in mm along the beam. The first covers the prior; the others polish (parabolic peak).
DEPTH_SCANS = ((24.0, 3.0), (9.0, 1.5), (6.0, 1.5), (3.0, 1.0))
#: Depth scans (indices into DEPTH_SCANS), each followed by a CMA-ES run, at each level >= 1.
#: The full-resolution level gets a second, narrower round: a single CMA-ES run from a start
#: 1 deg / 2-3 mm off left depth errors of 2-7 mm (benchmark, consistency re-runs).
LEVEL_DEPTH_SCANS = {1: (0, 1), 2: (2, 3)}
#: In-plane rotations (deg about the beam) tried by the initial 2-D search (covers the prior range).
INIT_ANGLES_DEG = tuple(np.arange(-12.0, 12.01, 3.0))
#: Rotations about the image's vertical axis (deg) tried by the initial search with each in-plane
#: angle: the two failures in 50 abdomen trials (both flagged) had 8-9.5 deg there, near the
#: prior's edge, and the coarse CMA-ES (2 deg steps) ended one level or more off.
INIT_TILTS_DEG = (-6.0, 0.0, 6.0)
#: Initial candidates closer than this (mm, in-plane at the isocentre) count as one.
INIT_DISTINCT_MM = 8.0
#: Number of initial candidates refined by CMA-ES at the coarse level (the best one wins).
INIT_STARTS = 3


def _gradient_fields(img: np.ndarray, mask: np.ndarray, sigma: float = 1.0) -> list[np.ndarray]:
    from spineplan.fluoro.similarity import _gradients

    out = []
    for g in _gradients(img, sigma):
        g = np.where(mask, g, 0.0)
        g = np.where(mask, g - g[mask].mean(), 0.0) if mask.any() else g
        n = np.linalg.norm(g)
        out.append(g / n if n > 0 else g)
    return out


def _best_shift(fixed: np.ndarray, moving: np.ndarray, mask: np.ndarray, max_shift: int, polarity) -> tuple[np.ndarray, float]:
    """Integer shift s (du, dv) maximising the gradient correlation of fixed(x) and moving(x - s),
    computed for all shifts at once by FFT (normalisation over the whole mask: an approximation
    that is good for shifts small against the image)."""
    h, w = fixed.shape
    ff = _gradient_fields(fixed, mask)
    mm = _gradient_fields(moving, mask)
    H, W = 2 * h, 2 * w
    corr = np.zeros((H, W))
    for a, b in zip(ff, mm):
        corr += np.fft.irfft2(np.fft.rfft2(a, (H, W)) * np.conj(np.fft.rfft2(b, (H, W))), (H, W))
    corr /= 2.0
    if polarity is None:
        corr = np.abs(corr)
    else:
        corr = polarity * corr
    dv = np.fft.fftfreq(H, 1.0 / H).astype(int)
    du = np.fft.fftfreq(W, 1.0 / W).astype(int)
    ok = (np.abs(dv)[:, None] <= max_shift) & (np.abs(du)[None, :] <= max_shift)
    corr = np.where(ok, corr, -np.inf)
    iv, iu = np.unravel_index(int(np.argmax(corr)), corr.shape)
    return np.array([du[iu], dv[iv]], float), float(corr[iv, iu])


def _initial_search(problem: "_Problem", polarity, n_best: int = 3) -> tuple[list[np.ndarray], int]:
    """In-plane rotation (a few angles, each one DRR) x shift (FFT) at the coarse level: starts
    for CMA-ES inside the capture range even at the corners of the prior box. Returns the
    ``n_best`` best distinct candidates (repetitive anatomy such as the thoracic spine has
    near-equal optima one level apart)."""
    lv = problem.level
    det = lv.carm.detector
    depth = float(problem.base_pose.apply(problem.centre)[2])
    mm_per_px = det.pixel_mm * depth / det.sdd_mm
    max_shift = int(np.ceil(2.0 * PRIOR_TRANS_MM / mm_per_px))
    cands = []
    for tilt in INIT_TILTS_DEG:
        for ang in INIT_ANGLES_DEG:
            x = np.zeros(6)
            x[1] = tilt / problem.scales[1]
            x[2] = ang / problem.scales[2]
            drr = problem.drr(x)
            shift, val = _best_shift(lv.image, drr, problem.sim.mask, max_shift, polarity)
            x[3] = shift[0] * mm_per_px / problem.scales[3]
            x[4] = shift[1] * mm_per_px / problem.scales[4]
            cands.append((val, x))
    cands.sort(key=lambda t: -t[0])
    chosen: list[np.ndarray] = []
    for _, x in cands:
        if all(np.linalg.norm((x - y)[3:5] * problem.scales[3:5]) > INIT_DISTINCT_MM for y in chosen):
            chosen.append(x)
        if len(chosen) == n_best:
            break
    return chosen, len(INIT_ANGLES_DEG) * len(INIT_TILTS_DEG)


# --------------------------------------------------------------------------- CMA-ES
@dataclass
class _CMAResult:
    x: np.ndarray
    f: float
    evaluations: int


def _cmaes(f: Callable[[np.ndarray], float], x0, sigma0: float, *, popsize: int, max_generations: int,
           bounds: float, rng: np.random.Generator, tol_sigma: float = 2e-3) -> _CMAResult:
    """Minimise ``f`` by CMA-ES (Hansen 2016 tutorial defaults); returns the best point seen."""
    m = np.asarray(x0, dtype=np.float64).copy()
    n = m.size
    lam = int(popsize)
    mu = lam // 2
    w = np.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
    w /= w.sum()
    mueff = 1.0 / np.sum(w ** 2)
    cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
    cs = (mueff + 2) / (n + mueff + 5)
    c1 = 2 / ((n + 1.3) ** 2 + mueff)
    cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
    damps = 1 + 2 * max(0.0, np.sqrt((mueff - 1) / (n + 1)) - 1) + cs
    chin = np.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
    pc, ps = np.zeros(n), np.zeros(n)
    B, D, C = np.eye(n), np.ones(n), np.eye(n)
    sigma = float(sigma0)
    best_x, best_f = m.copy(), float(f(m))
    evals = 1
    for gen in range(1, max_generations + 1):
        z = rng.standard_normal((lam, n))
        y = (z * D) @ B.T
        x = np.clip(m + sigma * y, -bounds, bounds)
        y = (x - m) / sigma
        fx = np.array([f(xi) for xi in x])
        evals += lam
        order = np.argsort(fx)
        if fx[order[0]] < best_f:
            best_f, best_x = float(fx[order[0]]), x[order[0]].copy()
        ysel = y[order[:mu]]
        yw = w @ ysel
        m = m + sigma * yw
        invsqrt = (B / D) @ B.T
        ps = (1 - cs) * ps + np.sqrt(cs * (2 - cs) * mueff) * (invsqrt @ yw)
        hsig = float(np.linalg.norm(ps) / np.sqrt(1 - (1 - cs) ** (2 * gen)) / chin < 1.4 + 2 / (n + 1))
        pc = (1 - cc) * pc + hsig * np.sqrt(cc * (2 - cc) * mueff) * yw
        C = ((1 - c1 - cmu) * C + c1 * (np.outer(pc, pc) + (1 - hsig) * cc * (2 - cc) * C)
             + cmu * (ysel.T * w) @ ysel)
        sigma *= float(np.exp((cs / damps) * (np.linalg.norm(ps) / chin - 1)))
        C = (C + C.T) / 2
        ev, B = np.linalg.eigh(C)
        D = np.sqrt(np.maximum(ev, 1e-20))
        if sigma * D.max() < tol_sigma:
            break
    # the mean is usually better than any single sample at the end
    fm = float(f(np.clip(m, -bounds, bounds)))
    evals += 1
    if fm < best_f:
        best_f, best_x = fm, np.clip(m, -bounds, bounds)
    return _CMAResult(best_x, best_f, evals)


# --------------------------------------------------------------------------- registration
class _Problem:
    """Rendering + similarity for one resolution level and one set of movable voxels."""

    def __init__(self, level: _Level, base_pose, centre, scales, *, mask=None, background=None, att=None):
        from spineplan.fluoro.similarity import Similarity

        self.level = level
        self.base_pose = base_pose
        self.centre = centre
        self.scales = np.asarray(scales, float)
        self.att = level.att if att is None else att
        self.background = background
        self.sim = Similarity(level.image, measure="gc", sigmas=level.sigmas, mask=mask)
        self.count = 0

    def pose(self, x):
        return perturb_pose(self.base_pose, np.asarray(x) * self.scales, self.centre)

    def drr(self, x) -> np.ndarray:
        self.count += 1
        img = _render(self.att, self.level.carm.with_pose(self.pose(x)))
        return img if self.background is None else img + self.background

    def score(self, x) -> float:
        return float(self.sim(self.drr(x)))


def _search(problem: _Problem, x0, sigma0, generations, popsize, rng, polarity: int | None) -> tuple[np.ndarray, float, int]:
    """CMA-ES on one level. polarity None: maximise |GC| (and report the sign via the score)."""
    if polarity is None:
        fun = lambda x: -abs(problem.score(x))  # noqa: E731
    else:
        fun = lambda x: -polarity * problem.score(x)  # noqa: E731
    res = _cmaes(fun, x0, sigma0, popsize=popsize, max_generations=generations, bounds=2.5, rng=rng)
    return res.x, -res.f, res.evaluations


def _build_levels(xray, att, initial, centre) -> list[_Level]:
    img, det = prepare_image(xray)
    sid = float(initial.pose.apply(centre)[2])
    levels = []
    for k, f in enumerate(PYRAMID):
        d = det.downsampled(f)
        pix_iso = d.pixel_mm * sid / d.sdd_mm
        levels.append(_Level(f, _block_mean_2d(img, f), initial.__class__(d, initial.pose),
                             _downsample_att(att, pix_iso * LEVEL_VOXEL_PER_PIXEL[k]), LEVEL_SIGMAS[k]))
    return levels


def _crop_to_body(att):
    mu = np.asarray(att.mu)
    # coarse bounding box of non-air voxels
    nz = [np.nonzero((mu > MU_AIR).any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    if any(len(n) == 0 for n in nz):
        raise RegistrationError("The CT holds no attenuating voxels (all air); nothing to register to.")
    lo = [int(n[0]) for n in nz]
    hi = [int(n[-1]) + 1 for n in nz]
    return _crop_att(att, lo, hi)


def _default_centre(att, initial, targets) -> np.ndarray:
    """The view's isocentre: the point on the principal ray at the depth of the targets/bone."""
    if targets is not None and len(targets):
        pts = np.asarray(targets, float)
    else:
        mu = np.asarray(att.mu)
        thr = np.percentile(mu[mu > MU_AIR], 90) if (mu > MU_AIR).any() else 0
        ijk = np.argwhere(mu[::2, ::2, ::2] >= thr) * 2
        pts = ijk @ np.asarray(att.affine)[:3, :3].T + np.asarray(att.affine)[:3, 3]
    depth = float(np.mean(initial.pose.apply(pts)[:, 2]))
    return initial.pose.inverse().apply(np.array([0.0, 0.0, depth]))


def register(
    xray,
    ct_att,
    initial,
    *,
    mode: str = "rigid",
    spine=None,
    centre=None,
    mask=None,
    polarity: int | None = None,
    seed: int = 0,
    check_consistency: bool = True,
    threads: int | None = None,
) -> RegistrationResult:
    """Register ``xray`` (:class:`~spineplan.fluoro.xray.XRay`) to the CT attenuation ``ct_att``.

    ``initial`` is the C-arm of the named view the shot was meant to be (its detector is
    replaced by the X-ray's own). ``mode`` "rigid" (one pose) or "per-vertebra" (then ``spine``
    — a Spine, label Volume or mapping level -> mask on the CT grid — is required). ``mask``
    marks valid X-ray pixels (e.g. inside the image intensifier's circle). ``polarity`` +1 (bone
    bright) / -1 (bone dark) / None (detected). The result's ``success`` is False whenever the
    score or the consistency check fails; it is never True on a score below :data:`SCORE_MIN`.
    ``threads``: numba threads for the DRRs during the call (None: unchanged). Small renders run
    faster on one thread when the machine is busy.
    """
    import numba

    old_threads = numba.get_num_threads()
    if threads:
        numba.set_num_threads(int(threads))
    try:
        return _register(xray, ct_att, initial, mode=mode, spine=spine, centre=centre, mask=mask, polarity=polarity,
                         seed=seed, check_consistency=check_consistency)
    finally:
        numba.set_num_threads(old_threads)


def _register(xray, ct_att, initial, *, mode, spine, centre, mask, polarity, seed, check_consistency):
    from spineplan.fluoro.geometry import CArm

    t0 = time.perf_counter()
    if mode not in ("rigid", "per-vertebra"):
        raise InputError(f"Unknown registration mode {mode!r}; use 'rigid' or 'per-vertebra'.")
    if mode == "per-vertebra" and spine is None:
        raise InputError("Per-vertebra registration needs the vertebra labels (spine=...).")
    rng = np.random.default_rng(seed)
    masks = vertebra_masks(spine, shape=np.asarray(ct_att.mu).shape) if spine is not None else {}
    cents = mask_centroids(masks, ct_att.affine) if masks else {}
    initial = CArm(initial.detector, initial.pose) if not isinstance(initial, CArm) else initial

    att = _crop_to_body(ct_att)
    img0, det0 = prepare_image(xray)
    start = initial.with_pose(initial.pose).__class__(det0, initial.pose)
    names_in_view = in_view(start, masks, ct_att.affine) if masks else []
    targets = np.array([cents[n] for n in names_in_view]) if names_in_view else None
    c = np.asarray(centre, float) if centre is not None else _default_centre(att, start, targets)
    if targets is None:
        targets = c + 30.0 * np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)

    levels = _build_levels(xray, att, start, c)
    user_mask = None
    if mask is not None:
        user_mask = np.asarray(mask, bool)
        if user_mask.shape != np.asarray(xray.image).shape:
            raise InputError(f"The X-ray mask has shape {user_mask.shape}; the X-ray is {np.asarray(xray.image).shape}.")
    box = _box_att(att)
    scales = np.array([PRIOR_ROT_DEG] * 3 + [PRIOR_TRANS_MM] * 2 + [PRIOR_DEPTH_MM])

    def level_mask(lv: _Level, pose) -> np.ndarray:
        m = _valid_mask(box, lv.carm.with_pose(pose))
        if user_mask is not None:
            um = _user_mask_at(user_mask, xray, lv)
            m &= um
        return m

    evals = 0
    pose = start.pose
    x = np.zeros(6)
    pol = polarity
    coarse = levels[0]
    prob = _Problem(coarse, start.pose, c, scales, mask=level_mask(coarse, start.pose))
    starts, n = _initial_search(prob, pol, INIT_STARTS)
    evals += n
    best = (-np.inf, None)
    for x0 in starts:
        xs, sc, n = _search(prob, x0, LEVEL_SIGMA0[0], LEVEL_GENERATIONS[0], LEVEL_POPSIZE[0], rng, pol)
        evals += n
        if sc > best[0]:
            best = (sc, xs)
    x = best[1]
    if pol is None:
        pol = 1 if prob.score(x) >= 0 else -1
        evals += 1
    pose = prob.pose(x)
    stages = [pose]
    t_stage = [time.perf_counter() - t0]

    def depth_scan(lv, p, k: int) -> tuple[Any, int]:
        """Depth (magnification) is the weakest direction of a single view: scan it."""
        pr = _Problem(lv, p, c, scales, mask=level_mask(lv, p))
        half, step = DEPTH_SCANS[k]
        offs = np.arange(-half, half + 1e-6, step)
        vals = []
        for dz in offs:
            xz = np.zeros(6)
            xz[5] = dz / scales[5]
            vals.append(pol * pr.score(xz))
        i = int(np.argmax(vals))
        dz = offs[i]
        if 0 < i < len(offs) - 1:  # parabola through the best three
            a, b, cc_ = vals[i - 1], vals[i], vals[i + 1]
            den = a - 2 * b + cc_
            if den < 0:
                dz += 0.5 * step * (a - cc_) / den
        xz = np.zeros(6)
        xz[5] = dz / scales[5]
        return pr.pose(xz), len(offs)

    def cma(lv, p, k, sigma0, generations, rng_) -> tuple[Any, float, int]:
        pr = _Problem(lv, p, c, scales, mask=level_mask(lv, p))
        xk, s_, nk = _search(pr, np.zeros(6), sigma0, generations, LEVEL_POPSIZE[k], rng_, pol)
        return pr.pose(xk), s_, nk

    def refine(pose_start, rng_, record=None, first_level: int = 1, sigma_scale: float = 1.0) -> tuple[Any, float, int]:
        """Half resolution: depth scan, CMA-ES, narrower depth scan, CMA-ES; full resolution: depth polish, CMA-ES."""
        n_tot = 0
        p = pose_start
        s_ = float("nan")
        for k in range(first_level, len(levels)):
            lv = levels[k]
            scans = LEVEL_DEPTH_SCANS[k]
            for j, scan in enumerate(scans):
                p, n = depth_scan(lv, p, scan)
                n_tot += n
                p, s_, n = cma(lv, p, k, sigma_scale * LEVEL_SIGMA0[k] / (1 + j), LEVEL_GENERATIONS[k], rng_)
                n_tot += n
            if record is not None:
                record.append(p)
                t_stage.append(time.perf_counter() - t0)
        return p, s_, n_tot

    pose, score, n = refine(pose, rng, stages)
    evals += n
    # final score: plain (single-scale) GC at the finest level, signed by the polarity
    fine = levels[-1]
    final_prob = _Problem(replace(fine, sigmas=FINAL_SIGMAS), pose, c, scales, mask=level_mask(fine, pose))
    score = pol * final_prob.score(np.zeros(6))
    evals += 1

    consistency = consistency_3d = float("nan")
    cert: dict[str, Any] = {}
    if check_consistency:
        # local optimality certificate: is the result at a peak of the final score along each of
        # the 6 pose axes? One coordinate-Newton polish when it is not, then the check again.
        for round_ in range(CERT_ROUNDS):
            cert = _certificate(final_prob, pose, pol, score, c, targets, det0)
            evals += cert["evals"]
            if round_ == CERT_ROUNDS - 1 or not cert["peaks"] or cert["residual_3d_mm"] <= CERT_POLISH_MIN_MM:
                break
            moved = False
            for frac in (1.0, 0.5):
                p_new = perturb_pose(pose, frac * cert["step"], c)
                fp = _Problem(replace(fine, sigmas=FINAL_SIGMAS), p_new, c, scales, mask=level_mask(fine, p_new))
                s_new = pol * fp.score(np.zeros(6))
                evals += 1
                if s_new > score:
                    pose, score, final_prob, moved = p_new, s_new, fp, True
                    break
            if not moved:
                break
        consistency = cert["residual_proj_mm"]
        consistency_3d = cert["residual_3d_mm"]
        stages.append(pose)

    success = True
    reason = ("converged: similarity above threshold and the result is at a peak of it along every pose axis "
              "(depth along the beam included)")
    if not np.isfinite(score) or score < SCORE_MIN:
        success = False
        reason = (f"gradient correlation {score:.3f} is below {SCORE_MIN} (the threshold calibrated on simulated "
                  "trials): the X-ray does not match the CT at any pose found")
    elif check_consistency and not cert["peaks"]:
        success = False
        reason = ("not at an optimum: the similarity does not peak along "
                  + ", ".join(CERT_AXIS_NAMES[i] for i in cert["not_peak"]) + " about the result")
    elif check_consistency and not consistency_3d <= CERT_RESIDUAL_MAX_MM:
        success = False
        reason = (f"not converged: the similarity's peak along the pose axes lies {consistency_3d:.1f} mm "
                  f"(at the vertebrae, 3-D; {consistency:.1f} mm in the projection) from the result "
                  f"(limit {CERT_RESIDUAL_MAX_MM} mm)")

    result = RegistrationResult(
        carm=CArm(xray.detector(), pose), score=float(score), success=success, reason=reason, iterations=int(evals),
        seconds=0.0, polarity=int(pol), consistency_mm=consistency, centre=c,
        meta={"stage_poses": stages, "stage_seconds": t_stage, "levels_in_view": names_in_view, "pyramid": list(PYRAMID), "detector_px": [det0.width_px, det0.height_px],
              "binned_detector": det0,
              "consistency_3d_mm": consistency_3d,
              "certificate": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in cert.items()}},
    )
    if mode == "per-vertebra":
        result.per_vertebra = _per_vertebra(levels, att, ct_att, result, masks, cents, names_in_view, rng, level_mask)
        result.iterations += sum(getattr(v, "_evals", 0) for v in result.per_vertebra.values())
    result.seconds = time.perf_counter() - t0
    return result


def _reprojection_mm(carm_a, carm_b, points) -> float:
    """Mean distance (mm, scaled to the points' depth) between two projections of ``points``."""
    pts = np.asarray(points, float)
    uv_a = carm_a.project(pts)
    uv_b = carm_b.project(pts)
    depth = carm_a.pose.apply(pts)[:, 2]
    det = carm_a.detector
    mm = np.linalg.norm(uv_a - uv_b, axis=1) * det.pixel_mm * depth / det.sdd_mm
    return float(mm.mean())


def _certificate(prob: "_Problem", pose, pol: int, score: float, centre, targets, det) -> dict[str, Any]:
    """Local optimality check of ``pose`` on ``prob`` (the final score): along each pose axis
    (C-arm frame), a parabola through the score at 0, +-h, +-2h (:data:`CERT_STEPS`).

    Returns ``peaks`` (every axis has a maximum), ``not_peak`` (axes without one), ``step`` (the
    6 offsets, C-arm frame, to each axis' vertex, clipped to +-2h), ``curvature`` (score per unit
    squared) and the step's effect at the targets: ``residual_3d_mm`` (mean 3-D) and
    ``residual_proj_mm`` (mean in the projection, at the targets' depth).
    """
    from spineplan.fluoro.geometry import CArm

    sub = _Problem(prob.level, pose, centre, np.ones(6), mask=prob.sim.mask)
    steps = np.asarray(CERT_STEPS, float)
    offs = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    step = np.zeros(6)
    curv = np.zeros(6)
    not_peak = []
    n = 0
    for i in range(6):
        vals = []
        for o in offs:
            if o == 0:
                vals.append(score)
                continue
            x = np.zeros(6)
            x[i] = o * steps[i]
            vals.append(pol * sub.score(x))
            n += 1
        a, b, _ = np.polyfit(offs * steps[i], vals, 2)
        curv[i] = -2.0 * a
        if a < 0:
            step[i] = float(np.clip(-b / (2 * a), -2 * steps[i], 2 * steps[i]))
        else:
            not_peak.append(i)
            step[i] = float(offs[int(np.argmax(vals))] * steps[i])
    moved = perturb_pose(pose, step, centre)
    return {"peaks": not not_peak, "not_peak": not_peak, "step": step, "curvature": curv, "evals": n,
            "residual_3d_mm": float(target_registration_error(pose, moved, targets).mean()),
            "residual_proj_mm": _reprojection_mm(CArm(det, pose), CArm(det, moved), targets)}


def _user_mask_at(user_mask: np.ndarray, xray, lv: _Level) -> np.ndarray:
    """The user's valid-pixel mask cropped and binned like the level's image (valid only if all
    its sub-pixels are)."""
    h, w = user_mask.shape
    img_h, img_w = lv.image.shape
    step = max(1, int(round(max(h, w) / max(img_h, img_w))))
    h2, w2 = img_h * step, img_w * step
    r0, c0 = (h - h2) // 2, (w - w2) // 2
    crop = user_mask[r0:r0 + h2, c0:c0 + w2].astype(np.float32)
    return _block_mean_2d(crop, step) > 0.999


def _per_vertebra(levels, att, ct_att, result, masks, cents, names, rng, level_mask) -> dict[str, VertebraRegistration]:
    from scipy.ndimage import binary_dilation

    from spineplan.fluoro.geometry import CArm

    out: dict[str, VertebraRegistration] = {}
    scales = np.array([VERTEBRA_ROT_DEG] * 3 + [VERTEBRA_TRANS_MM] * 3)
    mu_full = np.asarray(ct_att.mu, np.float32)
    for name in names:
        m = masks[name]
        ijk = np.argwhere(m)
        lo = np.maximum(ijk.min(axis=0) - 1, 0)
        hi = np.minimum(ijk.max(axis=0) + 2, m.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        sub = np.where(m[sl], mu_full[sl], 0.0).astype(np.float32)
        v_att = replace(ct_att, mu=np.ascontiguousarray(sub), affine=_scaled_affine(ct_att.affine, (1, 1, 1), lo))
        rest_mu = mu_full.copy()
        rest_mu[sl] = np.where(m[sl], 0.0, rest_mu[sl])
        rest_att = replace(ct_att, mu=rest_mu)
        footprint_att = replace(v_att, mu=np.ascontiguousarray(m[sl].astype(np.float32)))
        pose = result.carm.pose
        score = float("nan")
        evals = 0
        for k in (1, 2):
            lv = levels[k]
            carm_k = lv.carm.with_pose(pose)
            rest_lv = _downsample_att(_crop_to_body(rest_att), lv.carm.detector.pixel_mm * float(result.carm.pose.apply(cents[name])[2]) / lv.carm.detector.sdd_mm)
            background = _render(rest_lv, lv.carm.with_pose(result.carm.pose))
            foot = _render(footprint_att, carm_k) > 0
            r = int(np.ceil(VERTEBRA_MARGIN_MM / lv.carm.detector.pixel_mm))
            roi = binary_dilation(foot, iterations=max(r, 1)) & level_mask(lv, pose)
            v_lv = _downsample_att(v_att, lv.carm.detector.pixel_mm * float(pose.apply(cents[name])[2]) / lv.carm.detector.sdd_mm)
            pr = _Problem(replace(lv, sigmas=LEVEL_SIGMAS[k]), pose, cents[name], scales, mask=roi, background=background,
                          att=v_lv)
            xk, score, nk = _search(pr, np.zeros(6), 1.0 if k == 1 else 0.15, LEVEL_GENERATIONS[k], LEVEL_POPSIZE[k],
                                    rng, result.polarity)
            evals += nk
            pose = pr.pose(xk)
        shift = float(target_registration_error(pose, result.carm.pose, cents[name][None])[0])
        ok = bool(np.isfinite(score) and score >= SCORE_MIN)
        reason = "converged" if ok else f"gradient correlation {score:.3f} below {SCORE_MIN} in this vertebra's region"
        vr = VertebraRegistration(name, CArm(result.carm.detector, pose), float(score), ok, reason, shift)
        vr._evals = evals  # type: ignore[attr-defined]
        out[name] = vr
    return out


# --------------------------------------------------------------------------- simulation
#: Simulated X-rays (tests, benchmarks): scatter-to-primary ratio of a lumbar AP/lateral without a
#: grid is about 1-5 (Boone & Seibert, Med Phys 1988); with the C-arm's grid ~0.3-1. We add 0.5.
SIM_SCATTER_TO_PRIMARY = 0.5
#: Scatter is a broad blur of the primary: Gaussian sigma in mm at the detector (Boone & Seibert 1988:
#: scatter point-spread functions have widths of several cm).
SIM_SCATTER_SIGMA_MM = 30.0
#: Photons per pixel in the open field (quantum noise of a low-dose fluoroscopy frame, binned).
SIM_PHOTONS = 4000.0
#: Display gamma of the simulated monitor image.
SIM_GAMMA = 0.7


def random_pose_delta(rng: np.random.Generator, rot_deg: float = PRIOR_ROT_DEG, trans_mm: float = PRIOR_TRANS_MM):
    """A uniform random pose error: each rotation component within +-rot_deg, translation +-trans_mm."""
    return np.concatenate([rng.uniform(-rot_deg, rot_deg, 3), rng.uniform(-trans_mm, trans_mm, 3)])


def simulate_xray(att, carm, *, rng: np.random.Generator | None = None, pixel_mm=None,
                  scatter: float = SIM_SCATTER_TO_PRIMARY, photons: float = SIM_PHOTONS, gamma: float = SIM_GAMMA,
                  bone_dark: bool = True, extra_att=None):
    """A fluoroscopy-like X-ray (:class:`~spineplan.fluoro.xray.XRay`) of ``att`` seen by ``carm``.

    Line integrals -> transmitted primary ``exp(-L)`` + broad scatter -> Poisson noise ->
    ``-log`` -> gamma -> 8-bit-like display with bone dark (as on a C-arm monitor). Used with a
    CT converted at another effective energy than the one registered to, this gives an image
    whose intensities differ from the registration's DRRs in the ways real images do.
    ``extra_att``: more volumes (e.g. a moved vertebra) added to the line integrals, as
    ``[(att, carm), ...]``.
    """
    from scipy.ndimage import gaussian_filter

    from spineplan.fluoro.xray import XRay

    rng = np.random.default_rng(0) if rng is None else rng
    line = _render(att, carm).astype(np.float64)
    for a2, c2 in extra_att or ():
        line += _render(a2, c2)
    primary = np.exp(-line)
    det = carm.detector
    if scatter > 0:
        primary = primary + scatter * gaussian_filter(primary, SIM_SCATTER_SIGMA_MM / det.pixel_mm, mode="nearest")
    if photons > 0:
        primary = rng.poisson(primary * photons) / photons
    logimg = -np.log(np.maximum(primary, 0.5 / photons if photons > 0 else 1e-12))
    lo, hi = np.percentile(logimg, [0.5, 99.5])
    disp = np.clip((logimg - lo) / max(hi - lo, 1e-6), 0, 1) ** gamma
    if bone_dark:
        disp = 1.0 - disp
    img = np.round(disp * 255).astype(np.float32)
    return XRay(img, det.pixel_mm, det.sdd_mm, {"source": "simulated", "bone_dark": bone_dark})
