"""The spine's curve through the vertebral bodies and the discs found along it.

The body path (one point per axial slice) becomes an arc-length parametrised curve sampled
every ``STEP_MM``. Along it, the mean HU of a small disc of radius ``CORE_RADIUS_MM`` in the
plane normal to the curve gives a profile: bright over bodies (cancellous bone and endplates),
dark over intervertebral discs (70-110 HU). Discs are the profile's minima, regularised by the
vertebral period (one body plus one disc: ``PERIOD_MM``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Sampling step along the curve (mm).
STEP_MM = 1.0
#: Radius (mm) of the core sampled around the curve; inside every body from C3 to S1.
CORE_RADIUS_MM = 7.0
#: Vertebral period (body + disc height, mm): ~17-22 mm at T1-T4, 25-30 mm at T10-T12,
#: 35-52 mm in the lumbar spine (tall adults; Panjabi et al., Spine 1991, 1992; Zhou et al. 2000).
PERIOD_MM = (16.0, 56.0)


@dataclass
class Curve:
    points: np.ndarray  # (N, 3) LPS mm, cranial -> caudal order not assumed: index order = increasing z
    tangent: np.ndarray  # (N, 3) unit, pointing superior
    posterior: np.ndarray  # (N, 3) unit, perpendicular to the tangent, towards the canal
    lateral: np.ndarray  # (N, 3) unit, patient left = posterior x tangent
    s: np.ndarray  # (N,) arc length mm

    def frame_coords(self, xyz: np.ndarray, idx: np.ndarray | None = None):
        """(s, lateral, posterior, axial offset) of points (M, 3) relative to their nearest curve sample."""
        if idx is None:
            from scipy.spatial import cKDTree

            idx = cKDTree(self.points).query(xyz, workers=-1)[1]
        d = xyz - self.points[idx]
        ax = np.einsum("ij,ij->i", d, self.tangent[idx])
        lat = np.einsum("ij,ij->i", d, self.lateral[idx])
        post = np.einsum("ij,ij->i", d, self.posterior[idx])
        return self.s[idx] + ax, lat, post, idx


def _interp_rows(x, xp, fp) -> np.ndarray:
    """Linear interpolation of each column of ``fp`` (N, 3), ends held constant."""
    return np.column_stack([np.interp(x, xp, fp[:, c]) for c in range(fp.shape[1])])


#: Caudal stretch (mm of arc length) over which the canal's direction from the body is a running
#: median over this window: at the sacrum the track jumps between the sacral canal (45-50 mm
#: behind the body), the foramina and nothing, and single slices turned the curve's frame by
#: 47 deg on the example abdomen CT (its extrapolated "lateral" axis then ran through the right
#: acetabulum, and the S1 label took the ilium). Vertebral axial rotation changes by a few
#: degrees per level (Aaro & Dahlborn, Spine 1981), so one window holds one direction. Over the
#: whole curve it changed the naming of a six-lumbar phantom (the rib contacts at its top).
YAW_MEDIAN_MM = 30.0


def _running_median(a: np.ndarray, s: np.ndarray, window: float) -> np.ndarray:
    """Median of ``a`` over the samples within +-window/2 of each sample's ``s``."""
    lo = np.searchsorted(s, s - window / 2.0, side="left")
    hi = np.searchsorted(s, s + window / 2.0, side="right")
    return np.array([np.median(a[i:j]) for i, j in zip(lo, hi)])


def build_curve(body_pts: np.ndarray, canal_pts: np.ndarray) -> Curve:
    """Resample the body path (M, 3 LPS mm, increasing z) at ``STEP_MM``; posterior from the canal."""
    from scipy.ndimage import gaussian_filter1d

    seg = np.linalg.norm(np.diff(body_pts, axis=0), axis=1)
    s0 = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.arange(0.0, s0[-1] + 1e-6, STEP_MM)
    pts = _interp_rows(s, s0, body_pts)
    pts = gaussian_filter1d(pts, 2.0 / STEP_MM, axis=0, mode="nearest")
    tan = np.gradient(pts, axis=0)
    tan = gaussian_filter1d(tan, TANGENT_SIGMA_MM / STEP_MM, axis=0, mode="nearest")
    tan /= np.linalg.norm(tan, axis=1, keepdims=True)
    # posterior direction: from the body towards the canal where known, else +y
    post = np.tile(np.array([0.0, 1.0, 0.0]), (len(s), 1))
    ok = np.all(np.isfinite(canal_pts), axis=1)
    if ok.sum() >= 3:
        v = canal_pts[ok] - body_pts[ok]
        # the in-plane angle of the canal seen from the body; over the caudal YAW_MEDIAN_MM (the
        # sacrum, where the track jumps between the sacral canal, foramina and nothing) a running
        # median over that window
        yaw = np.arctan2(v[:, 0], v[:, 1])
        end = s0[ok] < s0[ok][0] + YAW_MEDIAN_MM
        yaw[end] = _running_median(yaw, s0[ok], YAW_MEDIAN_MM)[end]
        v = np.column_stack([np.sin(yaw), np.cos(yaw), np.zeros(len(yaw))])
        vi = _interp_rows(s, s0[ok], v)
        vi = gaussian_filter1d(vi, 10.0 / STEP_MM, axis=0, mode="nearest")
        post = vi
    return _curve(pts, tan, post, s)


def _curve(pts: np.ndarray, tan: np.ndarray, post: np.ndarray, s: np.ndarray) -> Curve:
    """A :class:`Curve` from its points, unit tangents and approximate posterior directions (made
    perpendicular to the tangent); lateral = posterior x tangent (+x, patient left)."""
    post = post - np.einsum("ij,ij->i", post, tan)[:, None] * tan
    post /= np.maximum(np.linalg.norm(post, axis=1, keepdims=True), 1e-6)
    return Curve(pts, tan, post, np.cross(post, tan), s)


#: The tangent (which sets each voxel's level along the spine: its arc-length coordinate is
#: taken along the nearest sample's tangent) is smoothed over this fraction of the local
#: vertebral period (distance between neighbouring discs): the body path steps from slice to
#: slice, and a 5 mm smoothing left the abdomen CT's lumbar tangent swinging by 20-50 deg within
#: each vertebra (abdomen L1-L4 Dice +0.006-0.017, chest T9-L1 +0.003-0.012). The caudal end
#: keeps TANGENT_SIGMA_MM up to the caudal-most disc and ramps over TANGENT_RAMP_MM (about one
#: lumbar vertebra) above it: at the sacrum the lumbosacral angle is a real bend (a 20 mm ramp
#: cost the abdomen's L5 0.007 Dice, none 0.012, a 10 mm smoothing there 0.02-0.05). Only if
#: the curve runs on at least TANGENT_RAMP_MM below that disc (else no sacrum's bend is in the
#: scan: a vertebra cut by its edge, whose few slices of path wander; there the tangent is the
#: mean direction of the complete body above): L3 crop Dice 0.798 -> 0.850 (its L4 piece is
#: 28 mm long; the abdomen's sacral end 42 mm, phantoms' ~100 mm). The same hold at the cranial
#: end cost the abdomen's T12/L1 (nearly complete T12 in the thoracolumbar bend) 0.03/0.04: not done.
TANGENT_PERIOD_FRACTION = 0.25
TANGENT_SIGMA_MM = 5.0
TANGENT_RAMP_MM = 35.0


def resmooth_tangent(curve: Curve, discs: np.ndarray) -> Curve:
    """``curve`` with its tangent smoothed over TANGENT_PERIOD_FRACTION of the local disc spacing
    (never less than TANGENT_SIGMA_MM, and only that up to the caudal-most disc if the curve runs
    on TANGENT_RAMP_MM below it; else held at the body above's mean direction below that disc);
    its posterior and lateral axes follow."""
    from scipy.ndimage import gaussian_filter1d

    if len(discs) < 2:
        return curve
    ds = np.sort(curve.s[np.asarray(discs)])
    mid = 0.5 * (ds[1:] + ds[:-1])
    sig = np.clip(TANGENT_PERIOD_FRACTION * np.interp(curve.s, mid, np.diff(ds)), TANGENT_SIGMA_MM, None)
    # ... ramped in over TANGENT_RAMP_MM above the caudal-most disc (the lumbosacral bend), if the
    # curve runs on that far below it
    sacral_end = ds[0] - curve.s[0] >= TANGENT_RAMP_MM
    if sacral_end:
        sig = TANGENT_SIGMA_MM + (sig - TANGENT_SIGMA_MM) * np.clip((curve.s - ds[0]) / TANGENT_RAMP_MM, 0.0, 1.0)
    raw = np.gradient(curve.points, axis=0)
    if not sacral_end:
        # a vertebra cut by the scan's caudal edge: its few slices of path wander (the L3 crop's
        # tangent at L3/L4 was 25 deg off its bodies' axis); the curve's direction there is the
        # mean direction of the complete body above
        above = (curve.s > ds[0]) & (curve.s < ds[1])
        raw[curve.s < ds[0]] = raw[above].mean(axis=0)
    levels = np.unique(np.round(np.concatenate([[TANGENT_SIGMA_MM], sig]), 0))
    sm = {lv: gaussian_filter1d(raw, lv / STEP_MM, axis=0, mode="nearest") for lv in levels}
    tan = np.stack([sm[lv][i] for i, lv in enumerate(np.round(sig, 0))])
    tan /= np.linalg.norm(tan, axis=1, keepdims=True)
    return _curve(curve.points, tan, curve.posterior, curve.s)


def core_profile(sample, curve: Curve, radius: float = CORE_RADIUS_MM, inner: float = 0.0) -> np.ndarray:
    """Median HU over a disc of ``radius`` (a ring from ``inner``) in the normal plane at each curve sample.

    ``sample(xyz)`` returns HU at LPS points (M, 3).
    """
    rr, aa = np.meshgrid(np.linspace(inner, radius, 4), np.linspace(0, 2 * np.pi, 12, endpoint=False))
    u = (rr * np.cos(aa)).ravel()
    v = (rr * np.sin(aa)).ravel()
    pts = (curve.points[:, None, :] + u[None, :, None] * curve.lateral[:, None, :]
           + v[None, :, None] * curve.posterior[:, None, :])
    vals = sample(pts.reshape(-1, 3)).reshape(len(curve.s), -1)
    return np.median(vals, axis=1)


#: Radii (mm) of the rays along which :func:`shell_profile` looks for cortex around the curve:
#: from inside the body (C3-L5 bodies are >= 15 mm deep, 17-50 mm wide; Panjabi et al., Spine
#: 1991, 1992) out past its cortical shell.
SHELL_MM = (8.0, 22.0)


def shell_profile(sample, curve: Curve, n_dirs: int = 12) -> np.ndarray:
    """Median over ``n_dirs`` directions in the normal plane of the brightest HU along each ray
    from ``SHELL_MM[0]`` to ``SHELL_MM[1]`` (every 1 mm), at each curve sample: high wherever a
    vertebra's cortex (or its posterior elements) surrounds the curve, however dark its marrow;
    soft-tissue level past the ends of the spine (a vessel or rib in one or two directions does
    not move the median)."""
    r = np.arange(SHELL_MM[0], SHELL_MM[1] + 0.1, 1.0)
    a = np.linspace(0.0, 2.0 * np.pi, n_dirs, endpoint=False)
    u = (r[None, :] * np.cos(a)[:, None]).ravel()
    v = (r[None, :] * np.sin(a)[:, None]).ravel()
    pts = (curve.points[:, None, :] + u[None, :, None] * curve.lateral[:, None, :]
           + v[None, :, None] * curve.posterior[:, None, :])
    vals = sample(pts.reshape(-1, 3)).reshape(len(curve.s), n_dirs, len(r))
    return np.median(vals.max(axis=2), axis=1)


#: Lateral rays for the body width reach this far (mm) from the curve.
WIDTH_RAY_MM = 40.0
#: Along a lateral ray the body ends where soft tissue starts (three samples below SOFT_HU:
#: muscle 40-60 HU, fat < 0; even osteoporotic marrow stays above it) and its edge is the last
#: cortex (above CORTEX_EDGE_HU) before that.
SOFT_HU = 50.0
CORTEX_EDGE_HU = 150.0
#: Expected vertebral period per mm of body width: lumbar bodies 45-50 mm wide repeat every
#: 40-50 mm, mid-thoracic ones 28-32 mm wide every 22-26 mm (Panjabi et al., Spine 1991/1992).
PERIOD_PER_WIDTH = 0.85


def body_width(sample, curve: Curve) -> np.ndarray:
    """Body width (mm) along the curve: where lateral rays leave bone, robustly smoothed."""
    from scipy.ndimage import median_filter, percentile_filter

    r = np.arange(3.0, WIDTH_RAY_MM + 0.1, 1.0)
    out = []
    for sgn in (-1.0, 1.0):
        pts = curve.points[:, None, :] + sgn * r[None, :, None] * curve.lateral[:, None, :]
        v = sample(pts.reshape(-1, 3)).reshape(len(curve.s), len(r))
        soft = v < SOFT_HU
        run = soft[:, :-2] & soft[:, 1:-1] & soft[:, 2:]
        first = np.where(run.any(axis=1), np.argmax(run, axis=1), len(r) - 1)
        inside = np.arange(len(r))[None, :] < first[:, None]
        cort = (v > CORTEX_EDGE_HU) & inside
        last = np.where(cort.any(axis=1), len(r) - 1 - np.argmax(cort[:, ::-1], axis=1), 0)
        out.append(r[last])
    w = out[0] + out[1]
    w = percentile_filter(w, 75, size=max(3, int(round(30.0 / STEP_MM))) | 1, mode="nearest")
    return median_filter(w, size=max(3, int(round(20.0 / STEP_MM))) | 1, mode="nearest")


#: A thick disc (lumbar, 8-14 mm; Pooni et al., Spine 1986) is resolved as a dark band whose
#: bright endplates lie within this distance (mm) of its centre ...
THICK_DISC_WINDOW_MM = 10.0
#: ... a thin one (thoracic, 4-6 mm) merges with its endplates into one bright band at 2-3 mm
#: slices, bright within this distance (mm) on both sides of its centre. The middle of a body,
#: 9-20 mm from either endplate, satisfies neither.
THIN_DISC_WINDOW_MM = 6.0
#: A thin disc's bright band spans the whole endplate, so it is also bright on a ring this far
#: (mm) from the curve; a focal bone island or sclerotic spot inside a body (typically < 10 mm;
#: Greenspan, Skeletal Radiol 1995) is bright in the core only. Inside every body from T1 down
#: (T1 bodies are ~25 mm wide, 17 mm deep; Panjabi et al., Spine 1991).
RING_MM = (7.0, 10.0)
#: ... at least this fraction of the core's excess brightness (partial volume at 2-3 mm slices
#: and the endplates' concavity dim the ring's band).
RING_FRACTION = 0.25
#: Only bands brighter than this above the baseline (HU) are checked on the ring: a merged
#: disc band is at most ~150 HU above its bodies, a dense bone island (> 600 HU; Greenspan
#: 1995) much more; at the scan's ends the ring may leave the bone, so dimmer bands are kept.
RING_CHECK_HU = 100.0
#: Where the vertebral period is below FLANK_MAX_PERIOD_MM (mid and upper thoracic spine: thin
#: 4-6 mm discs whose endplate peaks lie within ~3-5 mm of the disc centre, well inside the
#: quarter-period window; Pooni et al., Spine 1986), a dip whose window maximum sits at the
#: window's edge and is topped by more than FLANK_HU further out lies on the flank of a bright
#: endplate band: it is the fatty middle of a body (the example chest CT's T2, whose dark middle
#: was taken for the T2/T3 disc, 9 mm off), not a disc. Lumbar discs are left alone: a bright
#: bone island within a period of a disc (the abdomen CT's L1) would otherwise hide it.
FLANK_MAX_PERIOD_MM = 30.0
FLANK_HU = 20.0
#: A disc merges with its endplates into one bright band only when the slices are coarse against
#: its height: the thinnest discs (upper and mid thoracic, 4-6 mm; Pooni et al., Spine 1986)
#: still have a slice centred inside them, mostly disc, at a spacing up to half that height.
#: At or below this slice spacing (mm) every disc is a resolved dark dip and a bright band is
#: bone: an endplate, or a sclerotic band next to one (the 2 mm T11/T12 DICOM slab's T12
#: inferior endplate band was taken for a disc, splitting T12 in two).
MERGED_BAND_MIN_SLICE_MM = 2.0
#: Baseline window (mm): about one vertebral period.
BASELINE_MM = 40.0
#: A resolved disc is the darkest stretch between two bodies: past each of its bright walls (the
#: endplates) lies the neighbouring body's marrow. A dip with, within BEYOND_PERIODS of a period
#: past both walls, something darker than itself by BEYOND_DARKER_HU is the middle of a body
#: whose walls are its own endplates and whose darker surroundings are the discs: when the
#: period (from the body width) is overestimated, both endplates of a body fall inside the
#: quarter-period window (a 1.5 mm L1-L5 phantom: L4 split in its flat 205 HU middle, endplates
#: 11 mm away, period 42 mm from the width against 34 mm true). Disc (70-110 HU) against marrow
#: (150-250; osteoporotic 80-110) is the contrast: an osteoporotic body's middle is not darker
#: than its discs by that much and keeps its (old) score.
BEYOND_PERIODS = 0.5
BEYOND_DARKER_HU = 50.0
#: A thin disc's merged band lies between two vertebrae: from one to three band half-widths past
#: its centre, on both sides, a cortical shell surrounds the curve (:func:`shell_profile`, median
#: over that stretch at least BAND_SHELL_HU: thin cortex at 2.5-3 mm voxels 250-600 HU, soft
#: tissue 0-60, marrow 60-250 - the core alone cannot tell dark fatty marrow, 57-87 HU in the
#: example chest CT's L3, from the muscle past the spine's end). The superior endplate of the
#: top body, with soft tissue past it, is bright on both sides of its centre and was taken for a
#: disc at 2.5-3 mm slices (three L2-L4 / L3-S1 phantoms: an extra "vertebra" made of the top
#: one's upper 3-10 mm, every name below shifted by one).
BAND_SHELL_HU = 150.0


def _side_max(p: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """max(p[i-w..i]) and max(p[i..i+w]) for every i (edges padded with the end values)."""
    pad = np.concatenate([np.full(w, p[0]), p, np.full(w, p[-1])])
    win = np.lib.stride_tricks.sliding_window_view(pad, w + 1)  # win[m] = pad[m : m + w + 1]
    return win[: len(p)].max(axis=1), win[w : w + len(p)].max(axis=1)


def _side_peaks(p: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of the maximum of p[i-w..i] and of p[i..i+w] for every i (clipped to the profile)."""
    n = len(p)
    pad = np.concatenate([np.full(w, -np.inf), p, np.full(w, -np.inf)])
    win = np.lib.stride_tricks.sliding_window_view(pad, w + 1)
    i = np.arange(n)
    left = i - w + np.argmax(win[:n], axis=1)
    right = i + np.argmax(win[w : w + n], axis=1)
    return np.clip(left, 0, n - 1), np.clip(right, 0, n - 1)


def _beyond(p: np.ndarray, lo: np.ndarray, hi: np.ndarray, fn) -> np.ndarray:
    """``fn`` (np.min / np.median) of p[lo[i]..hi[i]] for every i, the indices clipped to the
    profile (a window past an end holds that end's value)."""
    n = len(p)
    lo = np.clip(lo, 0, n - 1)
    hi = np.clip(hi, 0, n - 1)
    return np.array([fn(p[min(a, b) : max(a, b) + 1]) for a, b in zip(lo, hi)])


def disc_score(profile: np.ndarray, period: np.ndarray, step: float = STEP_MM,
               ring: np.ndarray | None = None, slice_mm: float | None = None,
               shell: np.ndarray | None = None) -> np.ndarray:
    """How strongly each point looks like a disc (HU >= 0), given the expected local period.

    Thick (resolved) discs: depth of the core below the brighter endplates found on *both*
    sides within a quarter period. Thin discs (endplates merged into one bright band at 2-3 mm
    slices): brightness on both sides within a fifth of a period above the local median; such
    bands next to a resolved disc are its endplates and are ignored. The middle of a body, dark
    or not (osteoporosis, basivertebral veins), has its endplates ~0.35-0.4 periods away.
    With ``ring`` (the profile on a ring around the core, :data:`RING_MM`), a thin disc must be
    bright there too (an endplate spans the body; a bone island does not). With ``slice_mm``
    (the CT's slice spacing) at or below :data:`MERGED_BAND_MIN_SLICE_MM`, discs are resolved
    and only the thick score counts. With ``shell`` (:func:`shell_profile`), a thin disc needs a
    vertebra's shell on both sides (:data:`BAND_SHELL_HU`).
    """
    from scipy.ndimage import gaussian_filter1d, maximum_filter1d, median_filter

    p = gaussian_filter1d(profile.astype(float), 1.0 / step, mode="nearest")
    base = median_filter(p, size=max(3, int(round(BASELINE_MM / step))) | 1, mode="nearest")
    if ring is not None:
        q = gaussian_filter1d(ring.astype(float), 1.0 / step, mode="nearest")
        qbase = median_filter(q, size=max(3, int(round(BASELINE_MM / step))) | 1, mode="nearest")
    thick = np.zeros_like(p)
    thin = np.zeros_like(p)
    near = np.zeros_like(p)
    for w_mm in np.unique(np.round(np.clip(period, *PERIOD_MM) * 0.25)):
        sel = np.round(np.clip(period, *PERIOD_MM) * 0.25) == w_mm
        w = max(2, int(round(w_mm / step)))
        lt, rt = _side_max(p, w)
        tk = np.minimum(lt, rt) - p
        if 4.0 * w_mm < FLANK_MAX_PERIOD_MM:
            # a side whose maximum is the window's edge, with a brighter band further out, is the
            # flank of an endplate band, not an endplate: the dip is a body's (fatty) middle
            l2, r2 = _side_max(p, 2 * w)
            pad = np.concatenate([np.full(w, p[0]), p, np.full(w, p[-1])])
            flank = ((l2 > lt + FLANK_HU) & (pad[: len(p)] >= lt)) | ((r2 > rt + FLANK_HU) & (pad[2 * w :] >= rt))
            tk = np.where(flank, 0.0, tk)
        # a dip brighter than what lies beyond BOTH of its bright walls is a body between two
        # discs (its endplates are the walls), not a disc between two bodies
        cand = np.nonzero(tk > 0.5 * DISC_MIN_SCORE)[0]
        if len(cand):
            pl, pr = _side_peaks(p, w)
            reach = max(2, int(round(BEYOND_PERIODS * 4.0 * w_mm / step)))
            bl = _beyond(p, pl[cand] - reach, pl[cand], np.min)
            br = _beyond(p, pr[cand], pr[cand] + reach, np.min)
            body = (bl < p[cand] - BEYOND_DARKER_HU) & (br < p[cand] - BEYOND_DARKER_HU)
            tk[cand[body]] = 0.0
        thick[sel] = tk[sel]
        wn = max(2, int(round(0.8 * w_mm / step)))
        ln, rn = _side_max(p, wn)
        th = np.minimum(ln, rn) - base
        # a merged band has a vertebra on both sides: beyond an end of the spine (the top
        # endplate of the last body, with soft tissue past it) a bright band is no disc
        cand = np.nonzero(th > 0.5 * DISC_MIN_SCORE)[0] if shell is not None else []
        if len(cand):
            ml = _beyond(shell, cand - 3 * wn, cand - wn, np.median)
            mr = _beyond(shell, cand + wn, cand + 3 * wn, np.median)
            th[cand[np.minimum(ml, mr) < BAND_SHELL_HU]] = 0.0
        if ring is not None:
            lq, rq = _side_max(q, wn)
            pk = maximum_filter1d(th, size=2 * wn + 1)  # the band's peak excess
            th = np.where((pk > RING_CHECK_HU) & (np.minimum(lq, rq) - qbase < RING_FRACTION * pk), 0.0, th)
        thin[sel] = th[sel]
        nt = maximum_filter1d(np.clip(tk, 0, None), size=2 * w + 3)
        near[sel] = nt[sel]
    # a bright endplate next to a resolved (dark) disc is not a thin disc itself
    thin = np.where(near > 0.6 * thin, 0.0, thin)
    if slice_mm is not None and slice_mm <= MERGED_BAND_MIN_SLICE_MM:
        thin[:] = 0.0
    return np.clip(np.maximum(thick, thin), 0.0, None)


#: Weights of the periodic disc selection: the cost of a change of period between two
#: neighbouring vertebrae (per log-ratio squared; heights change by < 10 % per level,
#: Panjabi et al.) and the score (HU) a dip needs before it is worth being a disc at all.
PERIOD_CHANGE_COST = 100.0
#: Allowed distance between consecutive discs, as a fraction of the expected period.
GAP_RANGE = (0.5, 1.35)
DISC_MIN_SCORE = 25.0


def _local_maxima(d: np.ndarray, height: float) -> np.ndarray:
    """Indices of plateau-centred local maxima of ``d`` above ``height``."""
    if len(d) < 3:
        return np.zeros(0, int)
    out = []
    i = 1
    n = len(d)
    while i < n - 1:
        if d[i] > d[i - 1]:
            j = i
            while j + 1 < n and d[j + 1] == d[i]:
                j += 1
            if j + 1 < n and d[j + 1] < d[i] and d[i] >= height:
                out.append((i + j) // 2)
            i = j + 1
        else:
            i += 1
    return np.asarray(out, dtype=int)


#: Vertebral bodies narrow from L5 up to T3-T4 and widen by at most ~10 % from there to T1
#: (Panjabi et al., Spine 1991: T1 ~27 mm, T4 ~25 mm). Along the curve (caudal -> cranial) the
#: width used for the period is capped at this factor of the narrowest width seen caudally:
#: at the upper thoracic levels the lateral rays run on into the rib heads and the first ribs
#: (measured 36-43 mm at T1-T3 on the example chest CT), and the too-long period made the
#: dark middles of T1-T3 look like discs there.
WIDTH_CAP_FACTOR = 1.1


def capped_width(width: np.ndarray) -> np.ndarray:
    """``width`` (caudal -> cranial) capped at WIDTH_CAP_FACTOR x its running minimum, counted
    from the widest point (the lumbosacral junction when it is in the scan) cranially."""
    w = np.asarray(width, dtype=float).copy()
    if len(w) == 0:
        return w
    i = int(np.argmax(w))
    w[i:] = np.minimum(w[i:], WIDTH_CAP_FACTOR * np.minimum.accumulate(w[i:]))
    return w


def find_discs(profile: np.ndarray, width: np.ndarray, step: float = STEP_MM,
               ring: np.ndarray | None = None, slice_mm: float | None = None,
               shell: np.ndarray | None = None) -> np.ndarray:
    """Indices of disc centres along the curve: the most periodic set of deep dips.

    Candidates are the local maxima of :func:`disc_score`; dynamic programming over pairs of
    consecutive picks maximises sum(score - DISC_MIN_SCORE) - PERIOD_CHANGE_COST *
    sum(log(gap ratio)^2), with every gap within ``PERIOD_MM``.
    """
    period = np.clip(capped_width(width) * PERIOD_PER_WIDTH, *PERIOD_MM)
    d = disc_score(profile, period, step, ring, slice_mm, shell)
    cand = _local_maxima(d, DISC_MIN_SCORE * 0.5)
    n = len(cand)
    if n == 0:
        return np.zeros(0, int)
    sc = d[cand] - DISC_MIN_SCORE
    pos = cand * step
    per = period[cand]
    best_single = int(np.argmax(sc))
    # V[i, j]: best value of a chain ending with picks i < j (gap within the period range)
    V = np.full((n, n), -np.inf)
    back = np.full((n, n), -1, int)
    for i in range(n):
        for j in range(i + 1, n):
            g = pos[j] - pos[i]
            pm = 0.5 * (per[i] + per[j])
            if GAP_RANGE[0] * pm <= g <= GAP_RANGE[1] * pm:
                V[i, j] = sc[i] + sc[j]
    for j in range(n):
        for k in range(j + 1, n):
            g2 = pos[k] - pos[j]
            pm = 0.5 * (per[j] + per[k])
            if not (GAP_RANGE[0] * pm <= g2 <= GAP_RANGE[1] * pm):
                continue
            for i in range(j):
                if not np.isfinite(V[i, j]):
                    continue
                g1 = pos[j] - pos[i]
                v = V[i, j] + sc[k] - PERIOD_CHANGE_COST * np.log(g2 / g1) ** 2
                if v > V[j, k]:
                    V[j, k] = v
                    back[j, k] = i
    if not np.isfinite(V).any() or V.max() < sc[best_single]:
        if sc[best_single] <= 0:
            return np.zeros(0, int)
        picks = fill_long_gaps([int(cand[best_single])], cand, d, period, step, profile, slice_mm, shell)
        return refine_to_dip(profile, np.asarray(picks, dtype=int), step) if len(picks) > 1 else np.asarray(picks)
    j, k = np.unravel_index(int(np.argmax(V)), V.shape)
    chain = [k, j]
    while back[j, k] >= 0:
        i = back[j, k]
        chain.append(i)
        j, k = i, j
    picks = fill_long_gaps(sorted(int(cand[c]) for c in chain), cand, d, period, step, profile, slice_mm,
                           shell)
    picks = drop_split_picks(picks, d, period, step)
    return refine_to_dip(profile, np.asarray(picks, dtype=int), step)


def drop_split_picks(picks: list[int], score: np.ndarray, period: np.ndarray, step: float = STEP_MM) -> list[int]:
    """``picks`` (sorted curve indices) without the chain picks that the selection's own objective
    (score - DISC_MIN_SCORE, less PERIOD_CHANGE_COST x log(gap ratio)^2 over consecutive gaps)
    rejects once every pick is in: a pick with a neighbour on both sides (scoring at least
    DISC_MIN_SCORE: a weak dip added by :func:`fill_long_gaps` stays) goes when the gaps without
    it cost less than its score brings, and their joined gap stays within ``GAP_RANGE[1]`` periods.

    The chain ends at its last strong pick, so the change of period back from a short gap past
    it was never charged: the 20 mm middle of a biconcave-fractured osteoporotic L3 (1 mm, its
    dark middle between its own endplates 10 mm either side scored 115, marrow as dark as the
    discs) ended a chain 197-218-238 and the L1/L2 disc at 278 came in afterwards; L3 was split
    into two labels (an extra vertebra, L3 not graded)."""
    picks = sorted(int(p) for p in picks)

    def cost(seq: list[int]) -> float:
        g = np.diff(np.asarray(seq, float)) * step
        return PERIOD_CHANGE_COST * float(np.sum(np.log(g[1:] / g[:-1]) ** 2)) if len(g) > 1 else 0.0

    changed = True
    while changed and len(picks) >= 3:
        changed = False
        best, gain = None, 0.0
        for n in range(1, len(picks) - 1):
            c = picks[n]
            if score[c] < DISC_MIN_SCORE:
                continue
            a, b = picks[n - 1], picks[n + 1]
            pm = 0.5 * (float(period[a]) + float(period[b]))
            if (b - a) * step > GAP_RANGE[1] * pm:
                continue
            loc = picks[max(0, n - 2) : n + 3]
            without = [p for p in loc if p != c]
            g = cost(loc) - cost(without) - (float(score[c]) - DISC_MIN_SCORE)
            if g > gain:
                best, gain = n, g
        if best is not None:
            del picks[best]
            changed = True
    return picks


#: Towards a curve's end (past the last body lie soft tissue, 0-60 HU, or the top endplate's band)
#: a weak dip is a disc only with a body beyond it: over at least ``GAP_RANGE[0]`` periods the
#: (lightly smoothed) core there is brighter than the dip by this much (HU; osteoporotic marrow
#: 77-81 HU against the disc's 70 in the phantoms).
#: ... or, where the marrow beyond is as dark as the disc (an osteoporotic sacrum: 68-70 HU
#: against the disc's 70 in the phantoms), a vertebra's cortical shell surrounds the curve there
#: (:func:`shell_profile` at least ``BAND_SHELL_HU``) over that length while its core is no soft
#: tissue (at least ``SOFT_HU``; the soft tissue past the top body has neither). Without it the
#: L5/S1 disc of 0.8 mm osteoporotic L3-S1 phantoms (its dip scored 19-53: the sacral endplate
#: is oblique to the curve at the lumbosacral bend) was never added, and L5 (with L3-L4 above it
#: counted from the sacrum: a wrong name with confidence 0.8) became part of the sacrum's label.
BODY_BEYOND_HU = 5.0
#: Largest gap (in periods) from an added weak dip to its neighbouring pick. Above the chain's
#: GAP_RANGE[1]: the period comes from the body width and ran 38 mm against 51 mm between the
#: L1/L2 dip and the T12/L1 disc of a 1 mm osteoporotic T10-L2 phantom (lordosis lengthens the
#: curve through the lumbar bodies), whose L1 and L2 stayed one label at 1.35.
RESCUE_GAP_MAX = 1.5


def fill_long_gaps(picks: list[int], cand: np.ndarray, score: np.ndarray, period: np.ndarray,
                   step: float, profile: np.ndarray, slice_mm: float | None = None,
                   shell: np.ndarray | None = None) -> list[int]:
    """``picks`` (sorted curve indices) with weak candidate dips added where a stretch between two
    picks, or from a pick to the curve's end, is longer than ``GAP_RANGE[1]`` periods: a disc is
    missing there. The best-scoring candidate (of ``cand``, local maxima of ``score`` above half
    ``DISC_MIN_SCORE``) that leaves every gap at or above ``GAP_RANGE[0]`` periods and, towards
    a pick, at most ``RESCUE_GAP_MAX`` periods (towards a curve end: with a body beyond it,
    ``BODY_BEYOND_HU``, or with ``shell``, the :func:`shell_profile`, a shell around a core that is
    no soft tissue there) is added, until no stretch is too long or no candidate fits. ``profile``:
    the core HU profile the scores come from. Stretches to a curve end only at slices finer than
    ``MERGED_BAND_MIN_SLICE_MM`` (``slice_mm``): coarser, the top endplate merges into a bright
    band whose flanks dip and whose brightness passes for a body beyond (a 2 mm osteoporotic
    L3-S1 phantom got an "L2" made of L3's top).

    Osteoporotic marrow is as dark as a disc (70-80 HU against the disc's 70 in the phantoms):
    a disc's dip is then only as deep as its thin endplates are bright, and next to a collapsed
    body (0.8 mm osteoporotic L1-L4 phantoms with a crushed L2) two discs scored 18-20 against
    DISC_MIN_SCORE's 25; the chain left them out and L1-L3 became one label."""
    from scipy.ndimage import gaussian_filter1d

    picks = list(picks)
    lo_f, hi_f = GAP_RANGE
    n = len(profile)
    p = gaussian_filter1d(profile.astype(float), 1.0 / step, mode="nearest")

    def body_beyond(c: int, end: int) -> bool:
        part = slice(c + 1, None) if end > c else slice(0, c)
        seg = p[part]
        body = seg > p[c] + BODY_BEYOND_HU
        if shell is not None:
            body |= (shell[part] >= BAND_SHELL_HU) & (seg >= SOFT_HU)
        return body.sum() * step >= lo_f * float(period[c])

    for _ in range(len(cand)):
        bounds = [None] + picks + [None]
        best = None
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a is None and b is None:
                continue
            if (a is None or b is None) and (slice_mm is None or slice_mm >= MERGED_BAND_MIN_SLICE_MM):
                continue
            a_pos = 0 if a is None else a
            b_pos = n - 1 if b is None else b
            per = float(period[(a_pos + b_pos) // 2])
            if (b_pos - a_pos) * step <= hi_f * per:
                continue
            for c in cand:
                if not a_pos < c < b_pos or c in picks:
                    continue
                ok = True
                for q in (a, b):
                    if q is None:
                        continue
                    g = abs(c - q) * step
                    pm = 0.5 * (float(period[c]) + float(period[q]))
                    ok &= lo_f * pm <= g <= RESCUE_GAP_MAX * pm
                # towards a curve end only the gap to the pick is bounded, and a body lies beyond
                if ok and (a is None or b is None):
                    ok = body_beyond(int(c), 0 if a is None else n - 1)
                if ok and (best is None or score[c] > score[best]):
                    best = int(c)
        if best is None:
            break
        picks = sorted(picks + [best])
    return picks


#: A thin disc merged with its endplates into one bright band (2-3 mm slices) still shows as a
#: shallow dip between the two endplate peaks; the pick moves to a local minimum of the profile
#: within this distance (mm), which is about half a thoracic disc plus its endplates
#: (4-6 mm discs; Pooni et al., Spine 1986). On the example chest CT the band picks lay 2-5 mm
#: cranial of the reference (TotalSegmentator) cut between the vertebrae.
DIP_SEARCH_MM = 4.0


def refine_to_dip(profile: np.ndarray, discs: np.ndarray, step: float = STEP_MM) -> np.ndarray:
    """Move each disc pick to the nearest strict local minimum of the (lightly smoothed)
    profile within ``DIP_SEARCH_MM``; a pick with no such minimum stays."""
    from scipy.ndimage import gaussian_filter1d

    p = gaussian_filter1d(profile.astype(float), 1.0 / step, mode="nearest")
    r = max(1, int(round(DIP_SEARCH_MM / step)))
    out = []
    for d in discs:
        best = int(d)
        bd = np.inf
        for j in range(max(1, d - r), min(len(p) - 1, d + r + 1)):
            if p[j] < p[j - 1] and p[j] <= p[j + 1] and abs(j - d) < bd:
                best, bd = j, abs(j - d)
        out.append(best)
    return np.asarray(sorted(set(out)), dtype=int)


#: Disc planes. A disc is rarely normal to the curve's smoothed tangent (the tangent averages a
#: quarter period; fitted planes of the example chest CT tilt against it by 3-15 deg),
#: so its mid-plane is fitted to the disc itself: in columns parallel to the tangent across the
#: body (every PLANE_GRID_MM, out to PLANE_EXTENT of the half width left/right and of the half
#: depth front/back), the HU profile along the tangent within PLANE_WINDOW of the local period
#: of the disc centre (beyond that lies the marrow of the bodies), lightly smoothed, has its
#: deepest dip at the disc (between the two endplates); a plane through those dips, refitted
#: without residuals above PLANE_OUTLIER_MM, is the disc's mid-plane. The first fit takes the
#: largest cluster of dips within PLANE_OUTLIER_MM of one another, not all of them. (Before, the
#: darkest minimum and a first fit through all: where a thin disc at 2.5 mm slices is brighter
#: than the marrow next to it (example chest CT, T3/T4 and T4/T5: disc 150-195 HU, T4/T5 marrow
#: 100-135 HU), the columns' minima split between the disc and the marrow, and the fit failed
#: (T4/T5: the cut stayed on T4's lower endplate, 2.5 mm cranial of the reference's) or tilted
#: 22 deg sideways (T3/T4). Against the TotalSegmentator reference cut: T4/T5 -2.5 -> +0.3 mm,
#: T3/T4 -1.8 -> +0.3 mm, the other thoracic planes within 0.3 mm of before; Dice T3/T4/T5
#: .800/.746/.770 -> .819/.795/.793.)
PLANE_GRID_MM = 2.0
PLANE_EXTENT = 0.7
PLANE_WINDOW = 0.25
PLANE_STEP_MM = 0.5
PLANE_OUTLIER_MM = 2.0
#: A fit needs minima in at least this many columns, and a tilt against the curve's normal plane
#: of at most PLANE_MAX_TILT_DEG (intervertebral angles against a quarter-period tangent stay
#: well inside it), else the disc keeps the normal plane.
PLANE_MIN_COLUMNS = 12
PLANE_MAX_TILT_DEG = 25.0


def fit_disc_planes(sample, curve: Curve, discs: np.ndarray, width: np.ndarray,
                    depth_per_width: float, max_period: float = np.inf) -> np.ndarray:
    """Per disc (curve index in ``discs``), the disc's mid-plane as (c, a, b): the plane holds the
    points at arc length ``s[disc] + c + a * lat + b * post`` (mm, in the curve's frame at the disc).
    (0, 0, 0) where no plane could be fitted or the distance to the nearest other disc (the
    local period) is ``max_period`` or more. ``depth_per_width``: body depth / width."""
    from scipy.ndimage import gaussian_filter1d

    discs = np.asarray(discs, dtype=int)
    out = np.zeros((len(discs), 3))
    if len(discs) == 0:
        return out
    ds = curve.s[discs]
    half = 0.5 * capped_width(width)
    for n, di in enumerate(discs):
        gaps = np.abs(np.delete(ds, n) - ds[n])
        period = float(gaps.min()) if len(gaps) else 2.0 * float(half[di])
        if period >= max_period:
            continue
        win = PLANE_WINDOW * period
        hw = float(half[di])
        lat = np.arange(-PLANE_EXTENT * hw, PLANE_EXTENT * hw + 1e-6, PLANE_GRID_MM)
        post = np.arange(-PLANE_EXTENT * depth_per_width * hw, PLANE_EXTENT * depth_per_width * hw + 1e-6,
                         PLANE_GRID_MM)
        t = np.arange(-win, win + 1e-6, PLANE_STEP_MM)
        if len(t) < 5 or len(lat) < 2 or len(post) < 2:
            continue
        L, P = (g.ravel() for g in np.meshgrid(lat, post, indexing="ij"))
        pts = (curve.points[di] + L[:, None, None] * curve.lateral[di] + P[:, None, None] * curve.posterior[di]
               + t[None, :, None] * curve.tangent[di])
        v = sample(pts.reshape(-1, 3)).reshape(len(L), len(t))
        v = gaussian_filter1d(v.astype(float), 1.0 / PLANE_STEP_MM, axis=1, mode="nearest")
        inner = (v[:, 1:-1] < v[:, :-2]) & (v[:, 1:-1] <= v[:, 2:])
        # each column's deepest dip: the interior minimum farthest below the lower of the highest
        # values on either side of it in the window (the endplates around a disc)
        left = np.maximum.accumulate(v, axis=1)[:, :-2]
        right = np.maximum.accumulate(v[:, ::-1], axis=1)[:, ::-1][:, 2:]
        vm = np.where(inner, v[:, 1:-1] - np.minimum(left, right), np.inf)
        j = np.argmin(vm, axis=1)
        ok = np.isfinite(vm[np.arange(len(L)), j])
        if ok.sum() < PLANE_MIN_COLUMNS:
            continue
        A = np.column_stack([np.ones(len(L)), L, P])[ok]
        y = t[1:-1][j[ok]]
        # the fit starts from the largest cluster of dips within PLANE_OUTLIER_MM of one another
        near = np.abs(y[:, None] - y[None, :]) <= PLANE_OUTLIER_MM
        coef = _refit_plane(A, y, near[np.argmax(near.sum(axis=1))])
        if coef is None:
            continue
        if np.degrees(np.arctan(np.hypot(coef[1], coef[2]))) > PLANE_MAX_TILT_DEG or abs(coef[0]) > win:
            continue
        out[n] = coef
    return out


def _refit_plane(A: np.ndarray, y: np.ndarray, keep: np.ndarray):
    """Least-squares plane ``y ~ A @ coef`` refitted three times without the points farther than
    ``PLANE_OUTLIER_MM`` from it, starting from the points ``keep``; None when fewer than
    ``PLANE_MIN_COLUMNS`` stay."""
    for _ in range(3):
        if keep.sum() < PLANE_MIN_COLUMNS:
            return None
        coef = np.linalg.lstsq(A[keep], y[keep], rcond=None)[0]
        keep = np.abs(A @ coef - y) <= PLANE_OUTLIER_MM
    if keep.sum() < PLANE_MIN_COLUMNS:
        return None
    return np.linalg.lstsq(A[keep], y[keep], rcond=None)[0]


#: Columns in which :func:`label_cut_offset` compares a disc plane with a label map's cut: out to
#: this fraction of the body's half width (left/right) and half depth (front/back), every
#: ``PLANE_GRID_MM``, and along the tangent up to ``LABEL_CUT_REACH_MM`` either side (more than a
#: thoracic disc's half period).
LABEL_CUT_EXTENT = 0.6
LABEL_CUT_REACH_MM = 15.0


def label_cut_offset(sample_labels, curve: Curve, di: int, plane, half_width: float,
                     depth_per_width: float, min_columns: int = 10) -> tuple[int, int, float] | None:
    """Where a label map (another segmenter's, or a reference) cuts two vertebrae at the disc with
    curve index ``di``, against its fitted ``plane`` (c, a, b) (:func:`fit_disc_planes`).

    ``sample_labels(xyz)`` gives the integer label at LPS points (M, 3). In columns parallel to the
    tangent across the body's middle (``LABEL_CUT_EXTENT``), the label cut is midway between the
    cranial label's lowest and the caudal label's highest point, the two labels being the most
    frequent ones there. Returns (cranial label, caudal label, mean of cut minus plane along the
    tangent in mm), or None with fewer than ``min_columns`` columns holding both."""
    c, a, b = (float(x) for x in plane)
    g = np.arange(-LABEL_CUT_EXTENT, LABEL_CUT_EXTENT + 1e-9, PLANE_GRID_MM / max(half_width, 1e-6)) * half_width
    L, P = (m.ravel() for m in np.meshgrid(g, depth_per_width * g, indexing="ij"))
    t = np.arange(-LABEL_CUT_REACH_MM, LABEL_CUT_REACH_MM + 1e-9, PLANE_STEP_MM)
    pts = (curve.points[di] + L[:, None, None] * curve.lateral[di] + P[:, None, None] * curve.posterior[di]
           + t[None, :, None] * curve.tangent[di])
    v = np.asarray(sample_labels(pts.reshape(-1, 3))).reshape(len(L), len(t))
    codes, cnt = np.unique(v[v > 0], return_counts=True)
    if len(codes) < 2:
        return None
    two = codes[np.argsort(-cnt)[:2]]
    # the label of the cranial one lies at larger t (the tangent points cranially)
    mean_t = [float(t[np.nonzero(v == k)[1]].mean()) for k in two]
    up, lo = (int(two[0]), int(two[1])) if mean_t[0] > mean_t[1] else (int(two[1]), int(two[0]))
    off = []
    for r in range(len(L)):
        iu, il = np.nonzero(v[r] == up)[0], np.nonzero(v[r] == lo)[0]
        if len(iu) and len(il):
            off.append(0.5 * (t[iu.min()] + t[il.max()]) - (c + a * L[r] + b * P[r]))
    if len(off) < min_columns:
        return None
    return up, lo, float(np.mean(off))
