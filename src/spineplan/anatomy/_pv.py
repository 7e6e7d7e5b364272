"""Partial-volume fractions of an elliptic tube with a cortical shell, per supersampled voxel.

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


try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is in the 'anatomy' extra
    fractions = _fractions_numpy
else:
    @njit(cache=True, nogil=True)
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

    @njit(cache=True, nogil=True)
    def _bounds(a, b, h):  # pragma: no cover - compiled
        m = 0.5 * h / min(a, b)
        lo = 1.0 - m
        return (lo * lo if lo > 0.0 else -1.0), (1.0 + m) * (1.0 + m)

    @njit(cache=True, nogil=True)
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
