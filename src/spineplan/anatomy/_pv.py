"""Compiled kernels of the measurement: partial-volume fractions of an elliptic tube with a
cortical shell, per supersampled voxel, and the edge model's residuals along a profile.

The hot loop of the pedicle isthmus fit (:func:`spineplan.anatomy.measure._fit_section_pv`):
called some 20 000 times per spine by the Nelder-Mead search, so it is fused (numba, no
temporaries) when numba is installed, with the same arithmetic in numpy otherwise.

Each sub-sample is not counted as in or out (that makes the fit's cost a staircase of the tube's
parameters, on which the search stops at a different step for a last-digit change of the data)
but covered by a linear ramp of width ``h`` (the sub-sample spacing) across the ellipse's edge,
along the ray from the tube centre: the fractions, and so the cost, are continuous functions
of the width, height, centre and direction.
"""

from __future__ import annotations

import numpy as np


def _cover_numpy(pu, pw, a, b, h):
    r = np.hypot(pu, pw)
    e = np.sqrt((pu / a) ** 2 + (pw / b) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(e > 1e-12, r - r / np.where(e > 1e-12, e, 1.0), -min(a, b))
    return np.clip(0.5 - d / h, 0.0, 1.0)


def _fractions_numpy(dd, u, w, cu, cw, au, aw, bu, bw, h):
    pu, pw = dd @ u - cu, dd @ w - cw
    inside = _cover_numpy(pu, pw, au, aw, h).mean(axis=1)
    marrow = _cover_numpy(pu, pw, bu, bw, h).mean(axis=1)
    return inside, marrow


def _edge_residuals_numpy(ss, vv, es, x0, dx, pdf, cdf, half_cortex):
    x = x0 + dx * np.arange(len(cdf))
    F = np.interp(es[:, None] - ss[None, :], x, cdf, left=0.0, right=1.0)  # 1 inside, 0 outside
    K = np.interp(ss[None, :] - (es[:, None] - half_cortex), x, pdf, left=0.0, right=0.0)
    n = float(len(ss))
    sF, sK = F.sum(1), K.sum(1)
    sFF, sKK, sFK = (F * F).sum(1), (K * K).sum(1), (F * K).sum(1)
    G = np.empty((len(es), 3, 3))
    G[:, 0, 0], G[:, 0, 1], G[:, 0, 2] = n, sF, sK
    G[:, 1, 0], G[:, 1, 1], G[:, 1, 2] = sF, sFF, sFK
    G[:, 2, 0], G[:, 2, 1], G[:, 2, 2] = sK, sFK, sKK
    G += 1e-6 * np.eye(3)
    r = np.stack([np.full(len(es), vv.sum()), F @ vv, K @ vv], axis=1)
    beta = np.linalg.solve(G, r[..., None])[..., 0]
    res = float(vv @ vv) - 2 * np.sum(beta * r, axis=1) + np.einsum("ek,ekl,el->e", beta, G, beta)
    res[(beta[:, 1] <= 0) | (beta[:, 2] < 0)] = np.inf  # bone must be brighter, cortex not negative
    return res


def _normal_numpy(dd, u, w, cu, cw, au, aw, bu, bw, h, vals, wts):
    inside, marrow = _fractions_numpy(dd, u, w, cu, cw, au, aw, bu, bw, h)
    X = np.stack([np.ones(len(vals)), marrow, inside - marrow], axis=1)
    return X.T @ (X * wts[:, None]), X.T @ (wts * vals)


try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is in the 'anatomy' extra
    fractions = _fractions_numpy
    normal_equations = _normal_numpy
    edge_residuals = _edge_residuals_numpy
else:
    @njit(cache=True, nogil=True, fastmath=True)
    def _cover(pu, pw, a, b, h, lo2, hi2):  # pragma: no cover - compiled
        e2 = pu * pu / (a * a) + pw * pw / (b * b)
        if e2 <= lo2:  # at least h/2 inside the edge along the ray (the ray radius is >= min(a, b))
            return 1.0
        if e2 >= hi2:  # at least h/2 outside
            return 0.0
        e = np.sqrt(e2)
        r = np.sqrt(pu * pu + pw * pw)
        d = r - r / e if e > 1e-12 else -min(a, b)
        c = 0.5 - d / h
        return 0.0 if c < 0.0 else (1.0 if c > 1.0 else c)

    @njit(cache=True, nogil=True, fastmath=True)
    def _bounds(a, b, h):  # pragma: no cover - compiled
        m = 0.5 * h / min(a, b)
        lo = 1.0 - m
        return (lo * lo if lo > 0.0 else -1.0), (1.0 + m) * (1.0 + m)

    @njit(cache=True, nogil=True, fastmath=True)
    def fractions(dd, u, w, cu, cw, au, aw, bu, bw, h):  # pragma: no cover - compiled
        """Covered fraction of each voxel's sub-samples (``dd``: (N, S, 3) offsets from the tube
        centre) by the outer ellipse (half-axes ``au`` along ``u``, ``aw`` along ``w``, centred at
        (``cu``, ``cw``)) and by the marrow ellipse (``bu``, ``bw``), each sub-sample covered by a
        ramp of width ``h`` across the edge. Returns (inside, marrow)."""
        n, s = dd.shape[0], dd.shape[1]
        inside = np.empty(n)
        marrow = np.empty(n)
        lo_a, hi_a = _bounds(au, aw, h)
        lo_b, hi_b = _bounds(bu, bw, h)
        for i in range(n):
            ci = 0.0
            cm = 0.0
            for j in range(s):
                x, y, z = dd[i, j, 0], dd[i, j, 1], dd[i, j, 2]
                pu = x * u[0] + y * u[1] + z * u[2] - cu
                pw = x * w[0] + y * w[1] + z * w[2] - cw
                ci += _cover(pu, pw, au, aw, h, lo_a, hi_a)
                cm += _cover(pu, pw, bu, bw, h, lo_b, hi_b)
            inside[i] = ci / s
            marrow[i] = cm / s
        return inside, marrow

    @njit(cache=True, nogil=True, fastmath=True)
    def normal_equations(dd, u, w, cu, cw, au, aw, bu, bw, h, vals, wts):  # pragma: no cover - compiled
        """The weighted least-squares normal equations (G = X'WX, r = X'W vals; W = diag(``wts``))
        of the voxel values on the columns (1, marrow fraction, shell fraction = inside - marrow),
        without forming X."""
        inside, marrow = fractions(dd, u, w, cu, cw, au, aw, bu, bw, h)
        G = np.zeros((3, 3))
        r = np.zeros(3)
        for i in range(len(vals)):
            x1, x2, q = marrow[i], inside[i] - marrow[i], wts[i]
            G[0, 0] += q
            G[0, 1] += q * x1
            G[0, 2] += q * x2
            G[1, 1] += q * x1 * x1
            G[1, 2] += q * x1 * x2
            G[2, 2] += q * x2 * x2
            r[0] += q * vals[i]
            r[1] += q * x1 * vals[i]
            r[2] += q * x2 * vals[i]
        G[1, 0], G[2, 0], G[2, 1] = G[0, 1], G[0, 2], G[1, 2]
        return G, r

    @njit(cache=True, nogil=True)
    def _interp_uniform(q, x0, dx, y, left, right):  # pragma: no cover - compiled
        t = (q - x0) / dx
        if t < 0.0:
            return left
        n = len(y)
        if t > n - 1:
            return right
        j = int(t)
        if j >= n - 1:
            return y[n - 1]
        f = t - j
        return y[j] + f * (y[j + 1] - y[j])

    @njit(cache=True, nogil=True)
    def edge_residuals(ss, vv, es, x0, dx, pdf, cdf, half_cortex):  # pragma: no cover - compiled
        """Residual sum of squares of the edge model (background, interior step F, cortical shell
        K; see ``measure._model_edge``) for every trial edge in ``es``, in one pass per trial
        without the (trials x samples) matrices; inf where the fitted levels are not bone-like."""
        m = len(ss)
        out = np.empty(len(es))
        vsum = 0.0
        vv2 = 0.0
        for j in range(m):
            vsum += vv[j]
            vv2 += vv[j] * vv[j]
        G = np.empty((3, 3))
        r = np.empty(3)
        for k in range(len(es)):
            e = es[k]
            sF = sK = sFF = sKK = sFK = Fv = Kv = 0.0
            for j in range(m):
                F = _interp_uniform(e - ss[j], x0, dx, cdf, 0.0, 1.0)
                K = _interp_uniform(ss[j] - (e - half_cortex), x0, dx, pdf, 0.0, 0.0)
                sF += F
                sK += K
                sFF += F * F
                sKK += K * K
                sFK += F * K
                Fv += F * vv[j]
                Kv += K * vv[j]
            G[0, 0], G[0, 1], G[0, 2] = m + 1e-6, sF, sK
            G[1, 0], G[1, 1], G[1, 2] = sF, sFF + 1e-6, sFK
            G[2, 0], G[2, 1], G[2, 2] = sK, sFK, sKK + 1e-6
            r[0], r[1], r[2] = vsum, Fv, Kv
            b = np.linalg.solve(G, r)
            if b[1] <= 0.0 or b[2] < 0.0:  # bone must be brighter, cortex not negative
                out[k] = np.inf
                continue
            bGb = 0.0
            for a in range(3):
                for c in range(3):
                    bGb += b[a] * G[a, c] * b[c]
            out[k] = vv2 - 2.0 * (b[0] * r[0] + b[1] * r[1] + b[2] * r[2]) + bGb
        return out
