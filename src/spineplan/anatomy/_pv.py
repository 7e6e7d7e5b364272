"""Partial-volume fractions of an elliptic tube with a cortical shell, per supersampled voxel.

The hot loop of the pedicle isthmus fit (:func:`spineplan.anatomy.measure._fit_section_pv`):
called some 20 000 times per spine by the Nelder-Mead search, so it is fused (numba, no
temporaries) when numba is installed, with the same arithmetic in numpy otherwise.
"""

from __future__ import annotations

import numpy as np


def _fractions_numpy(dd, u, w, cu, cw, au, aw, bu, bw):
    pu, pw = dd @ u - cu, dd @ w - cw
    inside = ((pu / au) ** 2 + (pw / aw) ** 2 <= 1.0).mean(axis=1)
    marrow = ((pu / bu) ** 2 + (pw / bw) ** 2 <= 1.0).mean(axis=1)
    return inside, marrow


try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is in the 'anatomy' extra
    fractions = _fractions_numpy
else:
    @njit(cache=True, nogil=True)
    def fractions(dd, u, w, cu, cw, au, aw, bu, bw):  # pragma: no cover - compiled
        """Fraction of each voxel's sub-samples (``dd``: (N, S, 3) offsets from the tube centre)
        inside the outer ellipse (half-axes ``au`` along ``u``, ``aw`` along ``w``, centred at
        (``cu``, ``cw``)) and inside the marrow ellipse (``bu``, ``bw``). Returns (inside, marrow)."""
        n, s = dd.shape[0], dd.shape[1]
        inside = np.empty(n)
        marrow = np.empty(n)
        ia2, iw2, ib2, ibw2 = 1.0 / (au * au), 1.0 / (aw * aw), 1.0 / (bu * bu), 1.0 / (bw * bw)
        for i in range(n):
            ci = 0
            cm = 0
            for j in range(s):
                x, y, z = dd[i, j, 0], dd[i, j, 1], dd[i, j, 2]
                pu = x * u[0] + y * u[1] + z * u[2] - cu
                pw = x * w[0] + y * w[1] + z * w[2] - cw
                pu2, pw2 = pu * pu, pw * pw
                if pu2 * ia2 + pw2 * iw2 <= 1.0:
                    ci += 1
                if pu2 * ib2 + pw2 * ibw2 <= 1.0:
                    cm += 1
            inside[i] = ci / s
            marrow[i] = cm / s
        return inside, marrow
