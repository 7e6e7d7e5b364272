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
#: 35-42 mm in the lumbar spine (Panjabi et al., Spine 1991, 1992; Zhou et al. 2000).
PERIOD_MM = (16.0, 45.0)


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

            idx = cKDTree(self.points).query(xyz)[1]
        d = xyz - self.points[idx]
        ax = np.einsum("ij,ij->i", d, self.tangent[idx])
        lat = np.einsum("ij,ij->i", d, self.lateral[idx])
        post = np.einsum("ij,ij->i", d, self.posterior[idx])
        return self.s[idx] + ax, lat, post, idx


def build_curve(body_pts: np.ndarray, canal_pts: np.ndarray) -> Curve:
    """Resample the body path (M, 3 LPS mm, increasing z) at ``STEP_MM``; posterior from the canal."""
    from scipy.interpolate import interp1d
    from scipy.ndimage import gaussian_filter1d

    seg = np.linalg.norm(np.diff(body_pts, axis=0), axis=1)
    s0 = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.arange(0.0, s0[-1] + 1e-6, STEP_MM)
    pts = interp1d(s0, body_pts, axis=0)(s)
    pts = gaussian_filter1d(pts, 2.0 / STEP_MM, axis=0, mode="nearest")
    tan = np.gradient(pts, axis=0)
    tan = gaussian_filter1d(tan, 5.0 / STEP_MM, axis=0, mode="nearest")
    tan /= np.linalg.norm(tan, axis=1, keepdims=True)
    # posterior direction: from the body towards the canal where known, else +y
    post = np.tile(np.array([0.0, 1.0, 0.0]), (len(s), 1))
    ok = np.all(np.isfinite(canal_pts), axis=1)
    if ok.sum() >= 3:
        v = canal_pts[ok] - body_pts[ok]
        v[:, 2] = 0
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)
        vi = interp1d(s0[ok], v, axis=0, bounds_error=False, fill_value=(v[0], v[-1]))(s)
        vi = gaussian_filter1d(vi, 10.0 / STEP_MM, axis=0, mode="nearest")
        post = vi
    post = post - np.einsum("ij,ij->i", post, tan)[:, None] * tan
    post /= np.maximum(np.linalg.norm(post, axis=1, keepdims=True), 1e-6)
    lat = np.cross(post, tan)  # y x z = x (left)
    return Curve(pts, tan, post, lat, s)


def core_profile(sample, curve: Curve, radius: float = CORE_RADIUS_MM) -> np.ndarray:
    """Mean HU over a disc of ``radius`` in the normal plane at each curve sample.

    ``sample(xyz)`` returns HU at LPS points (M, 3).
    """
    rr, aa = np.meshgrid(np.linspace(0, radius, 4), np.linspace(0, 2 * np.pi, 12, endpoint=False))
    u = (rr * np.cos(aa)).ravel()
    v = (rr * np.sin(aa)).ravel()
    pts = (curve.points[:, None, :] + u[None, :, None] * curve.lateral[:, None, :]
           + v[None, :, None] * curve.posterior[:, None, :])
    vals = sample(pts.reshape(-1, 3)).reshape(len(curve.s), -1)
    return np.median(vals, axis=1)


def find_discs(profile: np.ndarray, step: float = STEP_MM) -> np.ndarray:
    """Indices of disc centres (profile minima) along the curve, regularised by ``PERIOD_MM``."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    p = gaussian_filter1d(profile.astype(float), 1.5 / step, mode="nearest")
    span = np.percentile(p, 90) - np.percentile(p, 10)
    prom = max(15.0, 0.12 * span)
    idx, props = find_peaks(-p, distance=int(PERIOD_MM[0] * 0.8 / step), prominence=prom)
    idx = list(idx)
    if len(idx) >= 2:
        # fill gaps longer than 1.7 periods with the deepest minimum near the middle
        changed = True
        while changed:
            changed = False
            gaps = np.diff(idx)
            med = float(np.median(gaps)) if len(gaps) else PERIOD_MM[1]
            for n, gap in enumerate(gaps):
                if gap * step > max(1.7 * med * step, PERIOD_MM[1] * 1.15):
                    a, b = idx[n], idx[n + 1]
                    lo, hi = int(a + 0.3 * gap), int(b - 0.3 * gap)
                    if hi > lo:
                        m = lo + int(np.argmin(p[lo:hi]))
                        idx.insert(n + 1, m)
                        changed = True
                        break
    return np.asarray(sorted(idx), dtype=int)
