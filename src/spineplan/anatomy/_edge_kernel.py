"""Residuals of the blurred bone-surface model along one CT profile, for many trial edges at once.

The inner loop of :func:`spineplan.anatomy.measure._model_edge` (some 20 000 calls per spine),
fused with numba when it is installed; ``None`` otherwise (the caller then uses numpy).
For each trial edge ``e`` the model ``B + D * F(e - s) + A * K(s - e + cortex / 2)`` (F: the
line kernel's CDF, K: its PDF) is linear in (B, D, A); its least-squares residual is returned,
``inf`` where the fit is not a bone surface (D <= 0 or A < 0).
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is in the 'anatomy' extra
    edge_residuals = None
else:
    @njit(cache=True, nogil=True)
    def _interp(q, x0, dx, fp, left, right):  # pragma: no cover - compiled
        t = (q - x0) / dx
        n = fp.shape[0]
        if t < 0.0:
            return left
        if t > n - 1:
            return right
        i = int(t)
        if i >= n - 1:
            return fp[n - 1]
        w = t - i
        return fp[i] * (1.0 - w) + fp[i + 1] * w

    @njit(cache=True, nogil=True)
    def edge_residuals(ss, vv, es, x0, dx, pdf, cdf, half_cortex, ridge):  # pragma: no cover - compiled
        """Residual sum of squares for each trial edge ``es`` (samples ``vv`` at positions ``ss``;
        kernel on the uniform grid ``x0 + dx * k``)."""
        n = ss.shape[0]
        vsum = 0.0
        vv2 = 0.0
        for j in range(n):
            vsum += vv[j]
            vv2 += vv[j] * vv[j]
        out = np.empty(es.shape[0])
        G = np.empty((3, 3))
        r = np.empty(3)
        for i in range(es.shape[0]):
            sF = 0.0
            sK = 0.0
            sFF = 0.0
            sKK = 0.0
            sFK = 0.0
            rF = 0.0
            rK = 0.0
            for j in range(n):
                f = _interp(es[i] - ss[j], x0, dx, cdf, 0.0, 1.0)
                k = _interp(ss[j] - (es[i] - half_cortex), x0, dx, pdf, 0.0, 0.0)
                sF += f
                sK += k
                sFF += f * f
                sKK += k * k
                sFK += f * k
                rF += f * vv[j]
                rK += k * vv[j]
            G[0, 0], G[0, 1], G[0, 2] = n + ridge, sF, sK
            G[1, 0], G[1, 1], G[1, 2] = sF, sFF + ridge, sFK
            G[2, 0], G[2, 1], G[2, 2] = sK, sFK, sKK + ridge
            r[0], r[1], r[2] = vsum, rF, rK
            b = np.linalg.solve(G, r)
            if b[1] <= 0.0 or b[2] < 0.0:
                out[i] = np.inf
                continue
            bGb = 0.0
            for a in range(3):
                for c in range(3):
                    bGb += b[a] * G[a, c] * b[c]
            out[i] = vv2 - 2.0 * (b[0] * r[0] + b[1] * r[1] + b[2] * r[2]) + bGb
        return out
