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

The whole Nelder-Mead search of that fit (:func:`nelder_mead_pv`, scipy's non-adaptive
algorithm step for step, with a stable ordering of the simplex) and the trilinear sampling of a
crop (:func:`trilinear`, ``scipy.ndimage.map_coordinates(order=1, mode="constant")``) are
compiled too: the search's Python overhead was ~30 % of its time, and the generic scipy sampler
~200 ns per point.
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


def _normal_fast_numpy(dd, dc, R, u, w, cu, cw, au, aw, bu, bw, h, vals, wts):
    return _normal_numpy(dd, u, w, cu, cw, au, aw, bu, bw, h, vals, wts)


def _normal_numpy(dd, u, w, cu, cw, au, aw, bu, bw, h, vals, wts):
    inside, marrow = _fractions_numpy(dd, u, w, cu, cw, au, aw, bu, bw, h)
    X = np.stack([np.ones(len(vals)), marrow, inside - marrow], axis=1)
    return X.T @ (X * wts[:, None]), X.T @ (wts * vals)



def _py_normal_fast(dd, dc, R, u, w, cu, cw, au, aw, bu, bw, h, vals, wts):
    """:func:`normal_equations`, skipping the sub-samples of voxels wholly inside or outside an
    ellipse's ramp: ``dc`` (N, 3) are the voxels' centres (mean of their sub-samples) and ``R``
    bounds every sub-sample's distance from its centre. The ellipse norm e(p) = |(p_u / a, p_w / b)|
    obeys |e(p + d) - e(p)| <= |d| / min(a, b), so when e(centre) <= 1 - (h/2 + R) / min(a, b) every
    sub-sample is covered (1), when >= 1 + (h/2 + R) / min(a, b) none is (0): the same values
    as the sub-sample loop gives."""
    n, s = dd.shape[0], dd.shape[1]
    ma, mb = min(au, aw), min(bu, bw)
    ina = 1.0 - (0.5 * h + R) / ma
    inb = 1.0 - (0.5 * h + R) / mb
    ina2 = ina * ina if ina > 0.0 else -1.0
    inb2 = inb * inb if inb > 0.0 else -1.0
    outa2 = (1.0 + (0.5 * h + R) / ma) ** 2
    outb2 = (1.0 + (0.5 * h + R) / mb) ** 2
    lo_a, hi_a = _bounds(au, aw, h)
    lo_b, hi_b = _bounds(bu, bw, h)
    G = np.zeros((3, 3))
    r = np.zeros(3)
    for i in range(n):
        pu = dc[i, 0] * u[0] + dc[i, 1] * u[1] + dc[i, 2] * u[2] - cu
        pw = dc[i, 0] * w[0] + dc[i, 1] * w[1] + dc[i, 2] * w[2] - cw
        ea = pu * pu / (au * au) + pw * pw / (aw * aw)
        eb = pu * pu / (bu * bu) + pw * pw / (bw * bw)
        ci = 1.0 if ea <= ina2 else (0.0 if ea >= outa2 else -1.0)
        cm = 1.0 if eb <= inb2 else (0.0 if eb >= outb2 else -1.0)
        if ci < 0.0 or cm < 0.0:
            si = 0.0
            sm = 0.0
            for j in range(s):
                x, y, z = dd[i, j, 0], dd[i, j, 1], dd[i, j, 2]
                qu = x * u[0] + y * u[1] + z * u[2] - cu
                qw = x * w[0] + y * w[1] + z * w[2] - cw
                if ci < 0.0:
                    si += _cover(qu, qw, au, aw, h, lo_a, hi_a)
                if cm < 0.0:
                    sm += _cover(qu, qw, bu, bw, h, lo_b, hi_b)
            if ci < 0.0:
                ci = si / s
            if cm < 0.0:
                cm = sm / s
        _add_normal(G, r, wts[i], cm, ci - cm, vals[i])
    G[1, 0], G[2, 0], G[2, 1] = G[0, 1], G[0, 2], G[1, 2]
    return G, r


def _py_add_normal(G, r, q, x1, x2, v):
    """Add one voxel (weight ``q``, columns 1, ``x1``, ``x2``, value ``v``) to the upper triangle of the
    normal equations G = X'WX and to r = X'W vals."""
    G[0, 0] += q
    G[0, 1] += q * x1
    G[0, 2] += q * x2
    G[1, 1] += q * x1 * x1
    G[1, 2] += q * x1 * x2
    G[2, 2] += q * x2 * x2
    r[0] += q * v
    r[1] += q * x1 * v
    r[2] += q * x2 * v


def _py_tilted(a, u, w, z, tu, tw, unit):
    """Axis ``a`` tilted by (``tu``, ``tw``) x ``unit`` rad towards ``u`` and ``w``, and its section
    axes (u' = z x a' normalised, w' = a' x u')."""
    a2 = a + unit * (tu * u + tw * w)
    a2 = a2 / np.sqrt(a2[0] * a2[0] + a2[1] * a2[1] + a2[2] * a2[2])
    u2 = np.array([z[1] * a2[2] - z[2] * a2[1], z[2] * a2[0] - z[0] * a2[2], z[0] * a2[1] - z[1] * a2[0]])
    u2 = u2 / np.sqrt(u2[0] * u2[0] + u2[1] * u2[1] + u2[2] * u2[2])
    w2 = np.array([a2[1] * u2[2] - a2[2] * u2[1], a2[2] * u2[0] - a2[0] * u2[2], a2[0] * u2[1] - a2[1] * u2[0]])
    return a2, u2, w2


def _py_pv_rss(p, dd, dc, R, a, u, w, z, tilt, unit, cortex, ramp, vals, wts, vv2):
    """Residual sum of squares of the tube model with parameters ``p`` = (W, H, cu, cw[, tu, tw])
    (levels solved by weighted least squares; without the shell when it would come out darker than
    the marrow, or bone darker than soft tissue); inf for a tube thinner than its shell."""
    W, H, cu, cw = p[0], p[1], p[2], p[3]
    if W <= 2 * cortex or H <= 2 * cortex:
        return np.inf
    u2, w2 = u, w
    if tilt:
        _, u2, w2 = tilted(a, u, w, z, p[4], p[5], unit)
    G, r = normal_fast(dd, dc, R, u2, w2, cu, cw, 0.5 * W, 0.5 * H, 0.5 * W - cortex, 0.5 * H - cortex,
                       ramp, vals, wts)
    for k in range(3):
        G[k, k] += 1e-9
    beta = np.linalg.solve(G, r)
    if beta[2] < 0 or beta[1] + beta[2] <= 0:
        G2 = np.ascontiguousarray(G[:2, :2])
        r2 = np.ascontiguousarray(r[:2])
        b2 = np.linalg.solve(G2, r2)
        res = vv2 - 2.0 * (b2[0] * r2[0] + b2[1] * r2[1]) \
            + (b2[0] * (G2[0, 0] * b2[0] + G2[0, 1] * b2[1]) + b2[1] * (G2[1, 0] * b2[0] + G2[1, 1] * b2[1]))
    else:
        bGb = 0.0
        for i in range(3):
            for j in range(3):
                bGb += beta[i] * G[i, j] * beta[j]
        res = vv2 - 2.0 * (beta[0] * r[0] + beta[1] * r[1] + beta[2] * r[2]) + bGb
    return res if res > 0.0 else 0.0


def _py_pv_cost(p, dd, dc, R, a, u, w, z, tilt, unit, cortex, ramp, vals, wts, vv2, s2, W0, H0, sig_s, sig_t):
    """The fit's cost: residuals in units of ``s2``, plus Gaussian priors on the width and height
    (``sig_s`` around ``W0``, ``H0``) and, with ``tilt``, on the tilt (``sig_t``)."""
    c = pv_rss(p, dd, dc, R, a, u, w, z, tilt, unit, cortex, ramp, vals, wts, vv2) / s2 \
        + ((p[0] - W0) ** 2 + (p[1] - H0) ** 2) / sig_s ** 2
    if tilt:
        c += (p[4] ** 2 + p[5] ** 2) / sig_t ** 2
    return c


def _py_nelder_mead_pv(sim, xatol, fatol, maxiter, dd, dc, R, a, u, w, z, tilt, unit, cortex, ramp, vals, wts, vv2,
                       s2, W0, H0, sig_s, sig_t):
    """Nelder-Mead (scipy.optimize.minimize(method="Nelder-Mead"), non-adaptive: reflection 1,
    expansion 2, contraction 0.5, shrink 0.5; the same steps, tests and stopping rule) on
    :func:`pv_cost` from the initial simplex ``sim`` ((n+1, n), modified). The simplex is kept
    ordered by a stable insertion sort (numpy's sort of arrays this short is one). Returns
    (best point, its cost, function evaluations)."""
    n = sim.shape[1]
    fsim = np.empty(n + 1)
    for k in range(n + 1):
        fsim[k] = pv_cost(sim[k], dd, dc, R, a, u, w, z, tilt, unit, cortex, ramp, vals, wts, vv2, s2, W0, H0, sig_s, sig_t)
    nfev = n + 1
    _sort_simplex(sim, fsim)
    it = 1
    while it < maxiter:
        dx = 0.0
        df = 0.0
        for k in range(1, n + 1):
            for j in range(n):
                d = abs(sim[k, j] - sim[0, j])
                if d > dx:
                    dx = d
            d = abs(fsim[0] - fsim[k])
            if d > df or np.isnan(d):
                df = d
        if dx <= xatol and df <= fatol:
            break
        xbar = np.zeros(n)
        for k in range(n):
            xbar += sim[k]
        xbar /= n
        xr = 2.0 * xbar - sim[n]
        fxr = pv_cost(xr, dd, dc, R, a, u, w, z, tilt, unit, cortex, ramp, vals, wts, vv2, s2, W0, H0, sig_s, sig_t)
        nfev += 1
        shrink = False
        if fxr < fsim[0]:
            xe = 3.0 * xbar - 2.0 * sim[n]
            fxe = pv_cost(xe, dd, dc, R, a, u, w, z, tilt, unit, cortex, ramp, vals, wts, vv2, s2, W0, H0, sig_s, sig_t)
            nfev += 1
            if fxe < fxr:
                sim[n] = xe
                fsim[n] = fxe
            else:
                sim[n] = xr
                fsim[n] = fxr
        elif fxr < fsim[n - 1]:
            sim[n] = xr
            fsim[n] = fxr
        elif fxr < fsim[n]:
            xc = 1.5 * xbar - 0.5 * sim[n]
            fxc = pv_cost(xc, dd, dc, R, a, u, w, z, tilt, unit, cortex, ramp, vals, wts, vv2, s2, W0, H0, sig_s, sig_t)
            nfev += 1
            if fxc <= fxr:
                sim[n] = xc
                fsim[n] = fxc
            else:
                shrink = True
        else:
            xcc = 0.5 * xbar + 0.5 * sim[n]
            fxcc = pv_cost(xcc, dd, dc, R, a, u, w, z, tilt, unit, cortex, ramp, vals, wts, vv2, s2, W0, H0, sig_s, sig_t)
            nfev += 1
            if fxcc < fsim[n]:
                sim[n] = xcc
                fsim[n] = fxcc
            else:
                shrink = True
        if shrink:
            for k in range(1, n + 1):
                sim[k] = sim[0] + 0.5 * (sim[k] - sim[0])
                fsim[k] = pv_cost(sim[k], dd, dc, R, a, u, w, z, tilt, unit, cortex, ramp, vals, wts, vv2, s2, W0, H0,
                                  sig_s, sig_t)
                nfev += 1
        it += 1
        _sort_simplex(sim, fsim)
    best = fsim[0]
    for k in range(1, n + 1):
        if fsim[k] < best:
            best = fsim[k]
    return sim[0].copy(), best, nfev


def _py_sort_simplex(sim, fsim):
    """Stable insertion sort of the simplex rows by cost (NaN last, like numpy's sort)."""
    m = len(fsim)
    for i in range(1, m):
        f = fsim[i]
        row = sim[i].copy()
        j = i - 1
        while j >= 0 and (fsim[j] > f or (np.isnan(fsim[j]) and not np.isnan(f))):
            fsim[j + 1] = fsim[j]
            sim[j + 1] = sim[j]
            j -= 1
        fsim[j + 1] = f
        sim[j + 1] = row


def _py_tri1(arr, x, y, zz, cval):
    """Trilinear value of the 3-D ``arr`` at index (x, y, zz); ``cval`` outside [0, size - 1]."""
    nx, ny, nz = arr.shape
    if not (x >= 0.0 and y >= 0.0 and zz >= 0.0 and x <= nx - 1 and y <= ny - 1 and zz <= nz - 1):
        return cval
    i0 = min(int(x), nx - 2) if nx > 1 else 0
    j0 = min(int(y), ny - 2) if ny > 1 else 0
    k0 = min(int(zz), nz - 2) if nz > 1 else 0
    fx, fy, fz = x - i0, y - j0, zz - k0
    i1, j1, k1 = min(i0 + 1, nx - 1), min(j0 + 1, ny - 1), min(k0 + 1, nz - 1)
    c00 = arr[i0, j0, k0] * (1.0 - fz) + arr[i0, j0, k1] * fz
    c01 = arr[i0, j1, k0] * (1.0 - fz) + arr[i0, j1, k1] * fz
    c10 = arr[i1, j0, k0] * (1.0 - fz) + arr[i1, j0, k1] * fz
    c11 = arr[i1, j1, k0] * (1.0 - fz) + arr[i1, j1, k1] * fz
    return (c00 * (1.0 - fy) + c01 * fy) * (1.0 - fx) + (c10 * (1.0 - fy) + c11 * fy) * fx


def _py_trilinear(arr, idx, cval):
    """``scipy.ndimage.map_coordinates(arr, idx, order=1, mode="constant", cval=cval)`` for a 3-D
    ``arr`` and index coordinates ``idx`` (3, n), in float64: linear interpolation inside
    [0, size - 1] on every axis, ``cval`` outside."""
    n = idx.shape[1]
    out = np.empty(n)
    for q in range(n):
        out[q] = tri1(arr, idx[0, q], idx[1, q], idx[2, q], cval)
    return out


def _py_mirror_scores(vol, ip, dx, dy, ax, ay, thetas, offs):
    """Mean of ``vol`` (trilinear, 0 outside) at the mirror images of points in the planes with
    normals n = cos(theta) x' + sin(theta) y' at signed offsets ``offs`` from the points' centre
    (:func:`spineplan.anatomy.measure._symmetry_x`). ``ip``: the points' voxel indices (P, 3);
    ``dx``, ``dy``: their offsets from the centre along x' and y' (mm); ``ax``, ``ay``: x' and y'
    in voxel index units. Returns (len(thetas), len(offs))."""
    P = ip.shape[0]
    out = np.empty((len(thetas), len(offs)))
    for t in range(len(thetas)):
        c, s = np.cos(thetas[t]), np.sin(thetas[t])
        n0, n1, n2 = c * ax[0] + s * ay[0], c * ax[1] + s * ay[1], c * ax[2] + s * ay[2]
        for o in range(len(offs)):
            acc = 0.0
            for q in range(P):
                d = 2.0 * (c * dx[q] + s * dy[q] - offs[o])
                acc += tri1(vol, ip[q, 0] - d * n0, ip[q, 1] - d * n1, ip[q, 2] - d * n2, 0.0)
            out[t, o] = acc / P
    return out


def _py_section_areas(vol, base, U, W, g, lo, mid):
    """Soft areas of mask sections (:func:`spineplan.anatomy.measure._least_section_axis`): for
    every candidate k and position t, the plane through voxel index ``base[k, t]`` spanned by
    ``U[k]`` and ``W[k]`` (voxel index units per mm) is sampled at offsets ``g`` x ``g`` (mm) on
    the smoothed mask ``vol`` (trilinear, 0 outside, rounded to float32 like scipy's output);
    the 4-connected component of pixels >= ``lo`` holding pixel (``mid``, ``mid``) - or the
    nearest such pixel, first in row order - counts each pixel by clip((v - 0.5) / 0.4 + 0.5, 0, 1).
    Returns the sum over t per candidate (inf when a section has no pixel >= ``lo``)."""
    K, T = base.shape[0], base.shape[1]
    G = len(g)
    tot = np.zeros(K)
    vals = np.empty((G, G), dtype=np.float32)
    seen = np.zeros((G, G), dtype=np.uint8)
    stack = np.empty((G * G, 2), dtype=np.int64)
    for k in range(K):
        for t in range(T):
            for i in range(G):
                for j in range(G):
                    vals[i, j] = np.float32(tri1(vol, base[k, t, 0] + g[i] * U[k, 0] + g[j] * W[k, 0],
                                                 base[k, t, 1] + g[i] * U[k, 1] + g[j] * W[k, 1],
                                                 base[k, t, 2] + g[i] * U[k, 2] + g[j] * W[k, 2], 0.0))
            si, sj = mid, mid
            if not vals[mid, mid] >= lo:
                best = -1
                for i in range(G):
                    for j in range(G):
                        if vals[i, j] >= lo:
                            dd = (i - mid) * (i - mid) + (j - mid) * (j - mid)
                            if best < 0 or dd < best:
                                best, si, sj = dd, i, j
                if best < 0:
                    tot[k] = np.inf
                    continue
            seen[:, :] = 0
            seen[si, sj] = 1
            stack[0, 0], stack[0, 1] = si, sj
            top = 1
            acc = 0.0
            while top > 0:
                top -= 1
                i, j = stack[top, 0], stack[top, 1]
                v = np.float32((vals[i, j] - np.float32(0.5)) / np.float32(0.4) + np.float32(0.5))
                acc += 0.0 if v < 0.0 else (1.0 if v > 1.0 else v)
                for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    a, b = i + di, j + dj
                    if 0 <= a < G and 0 <= b < G and seen[a, b] == 0 and vals[a, b] >= lo:
                        seen[a, b] = 1
                        stack[top, 0], stack[top, 1] = a, b
                        top += 1
            tot[k] += acc
    return tot


try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is in the 'anatomy' extra
    fractions = _fractions_numpy
    normal_equations = _normal_numpy
    edge_residuals = _edge_residuals_numpy
    tilted, pv_rss, pv_cost = _py_tilted, _py_pv_rss, _py_pv_cost
    normal_fast = _normal_fast_numpy
    nelder_mead_pv, _sort_simplex, trilinear = _py_nelder_mead_pv, _py_sort_simplex, _py_trilinear
    tri1, mirror_scores, section_areas = _py_tri1, _py_mirror_scores, _py_section_areas
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
            _add_normal(G, r, wts[i], marrow[i], inside[i] - marrow[i], vals[i])
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

    _add_normal = njit(cache=True, nogil=True, fastmath=True, inline="always")(_py_add_normal)
    normal_fast = njit(cache=True, nogil=True, fastmath=True)(_py_normal_fast)
    tilted = njit(cache=True, nogil=True)(_py_tilted)
    pv_rss = njit(cache=True, nogil=True)(_py_pv_rss)
    pv_cost = njit(cache=True, nogil=True)(_py_pv_cost)
    _sort_simplex = njit(cache=True, nogil=True)(_py_sort_simplex)
    nelder_mead_pv = njit(cache=True, nogil=True)(_py_nelder_mead_pv)
    tri1 = njit(cache=True, nogil=True, inline="always")(_py_tri1)
    trilinear = njit(cache=True, nogil=True)(_py_trilinear)
    mirror_scores = njit(cache=True, nogil=True)(_py_mirror_scores)
    section_areas = njit(cache=True, nogil=True)(_py_section_areas)
