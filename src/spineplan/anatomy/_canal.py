"""The spine's two centrelines: through the vertebral bodies and through the spinal canal.

Body path: per axial slice of the working grid, a score map rewards a solid bone blob the
size of a vertebral body (and its cortex) with a low-density tube (the canal) behind it and
bone behind that (the neural arch). Dynamic programming over the slices picks the smooth path
of highest total score, so contrast-filled vessels (no cortex, no canal behind them), ribs and
the sternum lose against the column. The canal is then tracked slice by slice behind the path
as the darkest point enclosed by bone on the left, right and posterior sides.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from spineplan.anatomy._bone import BONE_HU, CORTEX_HU, NOISE_MAX_HU, noise_hu

#: Distance (mm) from the body centre to the canal centre: half a body depth (lumbar 30-38 mm,
#: thoracic 22-30 mm; Panjabi et al., Spine 1991/1992) plus half a canal depth (14-18 mm).
CANAL_OFFSET_MM = (16.0, 32.0)
#: Distance (mm) from the body centre to the lamina / spinous process base.
ARCH_OFFSET_MM = 45.0
#: Largest slope (mm of in-plane shift per mm of z) the body path may take between slices:
#: antero-posterior, the sacral promontory tilts ~40-50 degrees (tan ~ 1.0-1.2); left-right,
#: even a 60-degree Cobb scoliosis rarely exceeds ~30 degrees of local tilt (tan ~ 0.6).
MAX_SLOPE = 1.3
MAX_SLOPE_LR = 0.6
#: Bone threshold (HU) for the path search: above muscle (40-60 HU) and discs (70-110 HU),
#: below osteoporotic cancellous bone at 3 mm voxels (~110-150 HU).
PATH_BONE_HU = 120.0
#: Coarse DP grid step (mm).
DP_STEP_MM = 3.0


def _g2(a: np.ndarray, sigma_mm: float, spacing) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(a.astype(np.float32), sigma=(sigma_mm / spacing[0], sigma_mm / spacing[1], 0))


def _shift_y(a: np.ndarray, n: int) -> np.ndarray:
    """out[:, y] = a[:, y + n] (value found n voxels posterior); zeros past the edge."""
    out = np.zeros_like(a)
    if n <= 0:
        return a.copy()
    if n < a.shape[1]:
        out[:, :-n] = a[:, n:]
    return out


def thickness(fbone: np.ndarray, spacing) -> np.ndarray:
    """In-plane distance (mm) from each bone voxel to the nearest non-bone voxel, per slice."""
    from scipy.ndimage import distance_transform_edt

    out = np.zeros(fbone.shape, np.float32)
    for k in range(fbone.shape[2]):
        if fbone[:, :, k].any():
            out[:, :, k] = distance_transform_edt(fbone[:, :, k], sampling=spacing[:2])
    return out


#: Inscribed radius (mm) of a vertebral body in an axial slice (half its depth, >= ~12 mm from
#: C3 down; Panjabi et al.): bone this thick scores fully as "body".
BODY_RADIUS_MM = 12.0
#: Below this body score (min(thickness / BODY_RADIUS_MM, 1), smoothed: bone < ~1 mm thick in
#: the whole 8 mm window, i.e. a disc or an endplate gap at the filled-bone threshold) the body
#: path keeps its coarse point instead of refining it to the score's argmax. (The argmax's tie
#: on a lumbar body's saturated plateau also takes the plateau's first voxel; refining to the
#: plateau's centre moved the example chest CT's Dice from 0.823 to 0.817 mean, so it is left.)
REFINE_MIN_SCORE = 0.1
#: ... on slices at least this thick (mm), where a disc is 2-4 slices and each corner point
#: weighs in the path's smoothing (9 mm median, 4 mm Gaussian); on a 0.8 mm L3-S1 phantom the
#: same rule lowered the naming confidence (the ilium then looked like a last rib,
#: tests/test_naming_transitional.py), so finer slices keep the argmax. At 1.5 mm (2.0 before)
#: an osteoporotic L1-L5 phantom's grade-3 biconcave L4 (bench_fracture --seed 2, seed 339)
#: has slices through its bowl with no body bone: the path took the window's corner, 15-20 mm
#: behind the body centre, the body's front fell beyond the "other bone" limit in front of the
#: curve and 0.30 of it was left unlabelled (L4 Dice 0.836 -> 0.922 with the rule).
REFINE_MIN_SLICE_MM = 1.2


def score_maps(hu: np.ndarray, spacing, body: np.ndarray, fbone: np.ndarray) -> dict[str, np.ndarray]:
    """Per-slice maps used by the path search (all on the working grid)."""
    thick = thickness(fbone, spacing)
    sb = _g2(np.minimum(thick / BODY_RADIUS_MM, 1.0), 3.0, spacing)
    sc = _g2(hu > CORTEX_HU, 4.0, spacing)
    soft = (hu > -150) & (hu < 100) & body
    low = _g2(soft, 3.0, spacing)
    canal = np.zeros_like(low)
    for d in np.arange(CANAL_OFFSET_MM[0], CANAL_OFFSET_MM[1] + 0.1, 4.0):
        canal = np.maximum(canal, _shift_y(low, int(round(d / spacing[1]))))
    arch = _shift_y(_g2(hu > BONE_HU, 5.0, spacing), int(round(ARCH_OFFSET_MM / spacing[1])))
    score = 1.5 * sb + 0.3 * np.minimum(sc * 3.0, 1.0) + 0.6 * canal * np.minimum(sb * 2, 1) + 0.2 * arch
    # prior towards the body's left-right midline (a scoliotic apex 40 mm off costs 0.4)
    xs = np.arange(hu.shape[0], dtype=np.float32)
    for k in range(hu.shape[2]):
        cnt = body[:, :, k].sum()
        if cnt:
            cx = (body[:, :, k].sum(axis=1) * xs).sum() / cnt
            score[:, :, k] -= (0.6 * np.minimum((np.abs(xs - cx) * spacing[0] / 50.0) ** 2, 3.0))[:, None]
    score[~body] = 0.0
    return {"score": score, "bone": sb, "canal": canal, "thick": thick}


def body_path(hu: np.ndarray, spacing, body: np.ndarray, fbone: np.ndarray):
    """Body path per slice: (N, 2) in-plane indices, bone thickness there (mm), canal score."""
    maps = score_maps(hu, spacing, body, fbone)
    score = maps["score"]
    nx, ny, nz = score.shape
    st = max(1, int(round(DP_STEP_MM / spacing[0]))), max(1, int(round(DP_STEP_MM / spacing[1])))
    cs = score[:: st[0], :: st[1], :]
    cx, cy = cs.shape[:2]
    step_mm = np.array([st[0] * spacing[0], st[1] * spacing[1]])
    r = [int(np.ceil(sl * spacing[2] / step_mm[a])) for a, sl in enumerate((MAX_SLOPE_LR, MAX_SLOPE))]
    alpha = 0.15 / (DP_STEP_MM**2)  # penalty per mm^2 of shift
    # the allowed in-plane shifts between slices and their penalties (float32, as the scores)
    shifts = [(dx, dy, alpha * ((dx * step_mm[0]) ** 2 + (dy * step_mm[1]) ** 2))
              for dx in range(-r[0], r[0] + 1) for dy in range(-r[1], r[1] + 1)
              if not (abs(dx * step_mm[0]) > MAX_SLOPE_LR * spacing[2] + step_mm[0]
                      or abs(dy * step_mm[1]) > MAX_SLOPE * spacing[2] + step_mm[1])]
    sh = np.array([(dx, dy) for dx, dy, _ in shifts], np.int64).reshape(-1, 2)
    pen = np.array([pe for _, _, pe in shifts], np.float32)
    V, back = _dp_path(np.ascontiguousarray(cs, dtype=np.float32), sh, pen)
    p = np.unravel_index(int(np.argmax(V)), V.shape)
    path = np.zeros((nz, 2), np.int64)
    path[nz - 1] = p
    for k in range(nz - 1, 0, -1):
        d = back[k, path[k][0], path[k][1]]
        path[k - 1] = path[k] + d
    fine = path * np.array(st)
    # refine: argmax of the bone blob score within 8 mm of the coarse point, except where the
    # window holds no body bone (a disc: the score is ~0 there and its argmax, the first of equal
    # values, was the window's corner, 8-11 mm off the column; on the example abdomen CT this
    # pulled the curve 10 mm to the right at L4/L5 and turned its frame by up to 30 deg, so the
    # L5 pedicle seed reached the level of L4's inferior articular processes)
    out = np.zeros((nz, 2))
    sb = maps["bone"]
    rr = [int(round(8.0 / spacing[a])) for a in range(2)]
    coarse_z = spacing[2] >= REFINE_MIN_SLICE_MM
    for k in range(nz):
        x0, y0 = fine[k]
        xa, xb = max(0, x0 - rr[0]), min(nx, x0 + rr[0] + 1)
        ya, yb = max(0, y0 - rr[1]), min(ny, y0 + rr[1] + 1)
        sub = sb[xa:xb, ya:yb, k]
        if coarse_z and float(sub.max()) < REFINE_MIN_SCORE:
            out[k] = (x0, y0)
            continue
        i, j = np.unravel_index(int(np.argmax(sub)), sub.shape)
        out[k] = (xa + i, ya + j)
    from scipy.ndimage import maximum_filter

    th = maximum_filter(maps["thick"], size=(3, 3, 1))
    bone_at = th[out[:, 0].astype(int), out[:, 1].astype(int), np.arange(nz)]
    canal_at = maps["canal"][out[:, 0].astype(int), out[:, 1].astype(int), np.arange(nz)]
    return out, bone_at, canal_at


@njit(cache=True)
def _dp_path(cs, shifts, pen):
    """The body path's dynamic programme over the slices (axis 2) of the coarse score ``cs``
    (compiled): V[x, y] after the last slice and, per slice, the in-plane shift (dx, dy) from the
    previous slice's best predecessor (ties: the first shift in ``shifts``)."""
    cx, cy, nz = cs.shape
    ns = shifts.shape[0]
    V = cs[:, :, 0].copy()
    back = np.zeros((nz, cx, cy, 2), np.int8)
    best = np.empty((cx, cy), np.float32)
    for k in range(1, nz):
        best[:, :] = -np.inf
        for s in range(ns):
            dx = shifts[s, 0]
            dy = shifts[s, 1]
            pe = pen[s]
            for x in range(max(0, -dx), cx + min(0, -dx)):
                for y in range(max(0, -dy), cy + min(0, -dy)):
                    v = V[x + dx, y + dy] - pe
                    if v > best[x, y]:
                        best[x, y] = v
                        back[k, x, y, 0] = dx
                        back[k, x, y, 1] = dy
        for x in range(cx):
            for y in range(cy):
                V[x, y] = best[x, y] + cs[x, y, k]
    return V, back


def smooth_path(path: np.ndarray, z_mm: float, sigma_mm: float = 4.0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d, median_filter

    m = median_filter(path, size=(max(3, int(round(9.0 / z_mm)) | 1), 1), mode="nearest")
    return gaussian_filter1d(m, sigma=sigma_mm / z_mm, axis=0, mode="nearest")


#: In-plane smoothing (mm, Gaussian sigma) before the darkest enclosed point is sought: the
#: canal is a 15-25 mm wide pool of CSF and epidural fat; narrow fat strips between the spinous
#: process and the muscles, and fatty marrow between trabeculae, are averaged with their
#: surroundings. On a noisy CT (``_bone.NOISE_MAX_HU``) the larger sigma is used: 1.5 mm let
#: the noisy 1.5 mm L3 crop's track land 14 mm behind the canal (Dice 0.731 -> 0.748 with 3 mm);
#: on the routine chest CT 3 mm cost 0.004 mean Dice and 4 mm lost the canal at T1-T9.
CANAL_SMOOTH_MM = 1.5
CANAL_SMOOTH_NOISY_MM = 3.0


#: Area (mm^2) of the darkest candidate pixels tried per slice as the canal's centre: the 60
#: darkest 2 mm pixels (240 mm^2, a little less than the smallest canal cross-section, ~130 mm^2
#: in the thorax... 300 mm^2 lumbar; Panjabi et al., Spine 1991/1992, plus epidural fat beside it).
CANAL_CANDIDATE_AREA_MM2 = 120.0


def track_canal(hu: np.ndarray, spacing, path: np.ndarray, k_range) -> np.ndarray:
    """Canal centre (x, y) working indices per slice in ``k_range`` (NaN where not found)."""
    from scipy.ndimage import gaussian_filter

    nx, ny, nz = hu.shape
    out = np.full((nz, 2), np.nan)
    bone = hu > BONE_HU
    sx, sy = spacing[0], spacing[1]
    smooth_mm = CANAL_SMOOTH_NOISY_MM if noise_hu(hu) > NOISE_MAX_HU else CANAL_SMOOTH_MM
    # the darkest candidates are tried first, as many as cover CANAL_CANDIDATE_AREA_MM2 in the slice
    # (a fixed count covered 4x less area at 1 mm than at 2 mm pixels)
    _CANDIDATES = max(60, int(round(CANAL_CANDIDATE_AREA_MM2 / (sx * sy))))
    for k in range(*k_range):
        x0, y0 = path[k]
        xa, xb = int(max(0, x0 - 20 / sx)), int(min(nx, x0 + 20 / sx + 1))
        ya, yb = int(max(0, y0 + 8 / sy)), int(min(ny, y0 + 50 / sy + 1))
        if xb - xa < 3 or yb - ya < 3:
            continue
        sub = gaussian_filter(hu[xa:xb, ya:yb, k].astype(np.float32), smooth_mm / sx)
        bsub = bone[:, :, k]
        # candidates: dark points within 12 mm of the midline of the body
        xs = np.arange(xa, xb)
        cand = (np.abs(xs - x0) * sx < 12.0)[:, None] & (sub < 150) & (sub > -300)
        if not cand.any():
            continue
        ii, jj = np.nonzero(cand)
        vals = sub[ii, jj]
        order = np.argsort(vals)
        for t in order[:_CANDIDATES]:
            x, y = xa + ii[t], ya + jj[t]
            # enclosed: bone within 18 mm to the left, right and behind
            L = bsub[x : int(min(nx, x + 18 / sx)), y].any()
            R = bsub[int(max(0, x - 18 / sx)) : x + 1, y].any()
            P = bsub[x, y : int(min(ny, y + 25 / sy))].any()
            if L and R and P:
                out[k] = (x, y)
                break
    return out


#: The canal runs smoothly along the spine: over this window (mm along z) its centre moves a few
#: millimetres at most (lordosis, scoliosis). A detection farther than CANAL_JUMP_MM from the
#: running median of its neighbours is noise (a dark speckle between the trabeculae of a noisy
#: thin-slice CT: on the 1.5 mm L3 crop the raw track jumped by up to 20 mm between slices and
#: the canal was filled as marrow); the canal's radius is 7-12 mm (Panjabi et al., Spine 1992).
CANAL_MEDIAN_MM = 15.0
CANAL_JUMP_MM = 6.0


def clean_track(canal: np.ndarray, spacing, k_range) -> np.ndarray:
    """``canal`` (per-slice centre, NaN where not found) with outliers dropped and the gaps between
    found slices in ``k_range`` filled by linear interpolation (slices beyond stay NaN)."""
    out = canal.copy()
    k0, k1 = k_range
    ks = np.arange(k0, k1)
    ok = np.all(np.isfinite(canal[k0:k1]), axis=1)
    if ok.sum() < 3:
        return out
    half = max(1, int(round(0.5 * CANAL_MEDIAN_MM / spacing[2])))
    pts = canal[k0:k1]
    keep = ok.copy()
    for n in np.nonzero(ok)[0]:
        a, b = max(0, n - half), min(len(ks), n + half + 1)
        med = np.median(pts[a:b][ok[a:b]], axis=0)
        if np.hypot(*((pts[n] - med) * np.asarray(spacing[:2]))) > CANAL_JUMP_MM:
            keep[n] = False
    if keep.sum() < 3:
        return out
    good = ks[keep]
    inside = (ks >= good[0]) & (ks <= good[-1])
    for c in range(2):
        vals = np.full(len(ks), np.nan)
        vals[inside] = np.interp(ks[inside], good, pts[keep, c])
        out[k0:k1, c] = vals
    return out
