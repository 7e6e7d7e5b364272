"""Numba kernels of the DRR renderer (private; see :mod:`spineplan.fluoro.drr`).

All kernels work in the volume's *continuous index space*: voxel ``(i, j, k)`` is the cube
``[i - 0.5, i + 0.5] x [j - 0.5, j + 0.5] x [k - 0.5, k + 0.5]``. A ray ``x(t) = src + t * dir``
with a unit world direction maps to ``p(t) = s + t * d`` in index space (``s = M @ src + b``,
``d = M @ dir``), so the parameter ``t`` stays a world length in mm even for anisotropic or
oblique grids. Nothing of size rays x samples is ever allocated: every pixel is one loop.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_EPS = 1e-12


@njit(cache=True, inline="always")
def _pixel_ray(u, v, cu, cv, f, rt, m, b, src):
    """Index-space origin s and direction d of the ray through pixel (u, v)."""
    x = u - cu
    y = v - cv
    n = math.sqrt(x * x + y * y + f * f)
    cx = x / n
    cy = y / n
    cz = f / n
    # world direction = R^T @ c
    wx = rt[0, 0] * cx + rt[0, 1] * cy + rt[0, 2] * cz
    wy = rt[1, 0] * cx + rt[1, 1] * cy + rt[1, 2] * cz
    wz = rt[2, 0] * cx + rt[2, 1] * cy + rt[2, 2] * cz
    dx = m[0, 0] * wx + m[0, 1] * wy + m[0, 2] * wz
    dy = m[1, 0] * wx + m[1, 1] * wy + m[1, 2] * wz
    dz = m[2, 0] * wx + m[2, 1] * wy + m[2, 2] * wz
    sx = m[0, 0] * src[0] + m[0, 1] * src[1] + m[0, 2] * src[2] + b[0]
    sy = m[1, 0] * src[0] + m[1, 1] * src[1] + m[1, 2] * src[2] + b[1]
    sz = m[2, 0] * src[0] + m[2, 1] * src[1] + m[2, 2] * src[2] + b[2]
    return sx, sy, sz, dx, dy, dz


@njit(cache=True, inline="always")
def _slab(s, d, lo, hi, t0, t1):
    """Clip [t0, t1] to the slab lo <= s + t d <= hi; returns (t0, t1) (empty if t0 >= t1)."""
    if abs(d) < _EPS:
        if s < lo or s > hi:
            return 1.0, 0.0
        return t0, t1
    ta = (lo - s) / d
    tb = (hi - s) / d
    if ta > tb:
        ta, tb = tb, ta
    if ta > t0:
        t0 = ta
    if tb < t1:
        t1 = tb
    return t0, t1


@njit(cache=True, inline="always")
def _clip_box(sx, sy, sz, dx, dy, dz, lo, hi):
    t0 = 0.0
    t1 = 1e30
    t0, t1 = _slab(sx, dx, lo[0], hi[0], t0, t1)
    t0, t1 = _slab(sy, dy, lo[1], hi[1], t0, t1)
    t0, t1 = _slab(sz, dz, lo[2], hi[2], t0, t1)
    return t0, t1


@njit(cache=True, parallel=True)
def block_occupancy(mu, bsize):
    """uint8 grid: 1 where a bsize^3 block of ``mu`` holds any value > 0."""
    ni, nj, nk = mu.shape
    bi = (ni + bsize - 1) // bsize
    bj = (nj + bsize - 1) // bsize
    bk = (nk + bsize - 1) // bsize
    occ = np.zeros((bi, bj, bk), np.uint8)
    for a in prange(bi):
        for i in range(a * bsize, min((a + 1) * bsize, ni)):
            for j in range(nj):
                b = j // bsize
                for k in range(nk):
                    if mu[i, j, k] > 0:
                        occ[a, b, k // bsize] = 1
    return occ


@njit(cache=True)
def _occupied_range(occ, bsize, sx, sy, sz, dx, dy, dz, t0, t1):
    """Trim [t0, t1] to the first and last occupied block the ray crosses (block DDA)."""
    na, nb, nc = occ.shape
    inv = 1.0 / bsize
    qx = (sx + 0.5) * inv
    qy = (sy + 0.5) * inv
    qz = (sz + 0.5) * inv
    ex = dx * inv
    ey = dy * inv
    ez = dz * inv
    te = t0 + 1e-9 * max(1.0, t1 - t0)
    a = min(max(int(math.floor(qx + te * ex)), 0), na - 1)
    b = min(max(int(math.floor(qy + te * ey)), 0), nb - 1)
    c = min(max(int(math.floor(qz + te * ez)), 0), nc - 1)
    inf = 1e300
    if ex > _EPS:
        sa, tna, tda = 1, (a + 1 - qx) / ex, 1.0 / ex
    elif ex < -_EPS:
        sa, tna, tda = -1, (a - qx) / ex, -1.0 / ex
    else:
        sa, tna, tda = 0, inf, inf
    if ey > _EPS:
        sb, tnb, tdb = 1, (b + 1 - qy) / ey, 1.0 / ey
    elif ey < -_EPS:
        sb, tnb, tdb = -1, (b - qy) / ey, -1.0 / ey
    else:
        sb, tnb, tdb = 0, inf, inf
    if ez > _EPS:
        sc, tnc, tdc = 1, (c + 1 - qz) / ez, 1.0 / ez
    elif ez < -_EPS:
        sc, tnc, tdc = -1, (c - qz) / ez, -1.0 / ez
    else:
        sc, tnc, tdc = 0, inf, inf
    first = -1.0
    last = -1.0
    tc = t0
    while tc < t1:
        tn = min(tna, min(tnb, tnc))
        if occ[a, b, c]:
            if first < 0.0:
                first = tc
            last = min(tn, t1)
        tc = tn
        if tn == tna:
            a += sa
            tna += tda
            if a < 0 or a >= na:
                break
        elif tn == tnb:
            b += sb
            tnb += tdb
            if b < 0 or b >= nb:
                break
        else:
            c += sc
            tnc += tdc
            if c < 0 or c >= nc:
                break
    if first < 0.0:
        return 1.0, 0.0
    return max(first, t0), min(last, t1)


#: Fixed-point scale of the nearest-voxel marcher's positions (index units * 2^24).
_FIX_BITS = 24


@njit(cache=True, parallel=True, fastmath=True)
def render_fast(mu, q, q_scale, m, b, src, rt, cu, cv, f, lo, hi, step_mm, linear, occ, bsize, out):
    """Fused ray marching: midpoint rule with ``step_mm`` (shortened to fit the chord exactly),
    nearest-voxel (``linear=False``) or trilinear (``linear=True``) sampling.

    ``out[v, u]`` receives the line integral (sum mu * dt) of the ray through pixel (u, v).
    ``lo``/``hi``: index-space box to clip rays to (the box of non-zero mu); ``occ``: block
    occupancy (:func:`block_occupancy`, blocks of ``bsize`` voxels) used to trim each ray to
    its first and last non-empty block (pass a (1, 1, 1) array of ones to disable).
    Nearest sampling reads ``q`` (``mu`` quantised to uint16, ``mu = q * q_scale``) with
    fixed-point positions and an integer accumulator: half the memory traffic, no float->int
    conversions; trilinear sampling reads ``mu``."""
    h, w = out.shape
    ni, nj, nk = mu.shape
    fix = float(1 << _FIX_BITS)
    for u in prange(w):
        for v in range(h):
            sx, sy, sz, dx, dy, dz = _pixel_ray(u, v, cu, cv, f, rt, m, b, src)
            t0, t1 = _clip_box(sx, sy, sz, dx, dy, dz, lo, hi)
            if t1 <= t0:
                out[v, u] = 0.0
                continue
            if occ.size > 1:
                t0, t1 = _occupied_range(occ, bsize, sx, sy, sz, dx, dy, dz, t0, t1)
                if t1 <= t0:
                    out[v, u] = 0.0
                    continue
            n = int(math.ceil((t1 - t0) / step_mm))
            if n < 1:
                n = 1
            dt = (t1 - t0) / n
            tm = t0 + 0.5 * dt
            if not linear:
                # the clip box lies strictly inside [-0.5, n - 0.5], so p + 0.5 is in (0, n) and
                # truncation gives a valid index without clamping
                flat = q.ravel()
                si = nj * nk
                ix = np.int64((sx + tm * dx + 0.5) * fix)
                iy = np.int64((sy + tm * dy + 0.5) * fix)
                iz = np.int64((sz + tm * dz + 0.5) * fix)
                jx = np.int64(dx * dt * fix)
                jy = np.int64(dy * dt * fix)
                jz = np.int64(dz * dt * fix)
                acc = 0
                for _ in range(n):
                    acc += flat[(ix >> _FIX_BITS) * si + (iy >> _FIX_BITS) * nk + (iz >> _FIX_BITS)]
                    ix += jx
                    iy += jy
                    iz += jz
                out[v, u] = acc * q_scale * dt
                continue
            px = np.float32(sx + tm * dx)
            py = np.float32(sy + tm * dy)
            pz = np.float32(sz + tm * dz)
            qx = np.float32(dx * dt)
            qy = np.float32(dy * dt)
            qz = np.float32(dz * dt)
            acc_f = np.float32(0.0)
            for _ in range(n):
                x = min(max(px, np.float32(0.0)), np.float32(ni - 1))
                y = min(max(py, np.float32(0.0)), np.float32(nj - 1))
                z = min(max(pz, np.float32(0.0)), np.float32(nk - 1))
                i = min(int(x), ni - 2) if ni > 1 else 0
                j = min(int(y), nj - 2) if nj > 1 else 0
                k = min(int(z), nk - 2) if nk > 1 else 0
                fx = x - i
                fy = y - j
                fz = z - k
                i1 = min(i + 1, ni - 1)
                j1 = min(j + 1, nj - 1)
                k1 = min(k + 1, nk - 1)
                c00 = mu[i, j, k] * (1 - fz) + mu[i, j, k1] * fz
                c01 = mu[i, j1, k] * (1 - fz) + mu[i, j1, k1] * fz
                c10 = mu[i1, j, k] * (1 - fz) + mu[i1, j, k1] * fz
                c11 = mu[i1, j1, k] * (1 - fz) + mu[i1, j1, k1] * fz
                c0 = c00 * (1 - fy) + c01 * fy
                c1 = c10 * (1 - fy) + c11 * fy
                acc_f += c0 * (1 - fx) + c1 * fx
                px += qx
                py += qy
                pz += qz
            out[v, u] = acc_f * dt


@njit(cache=True, inline="always")
def _siddon_ray(mu, sx, sy, sz, dx, dy, dz):
    """Exact line integral of the piecewise-constant voxel field along one ray (Siddon 1985,
    in the incremental form of Jacobs et al. 1998 / Amanatides & Woo 1987), float64."""
    ni, nj, nk = mu.shape
    t0 = 0.0
    t1 = 1e30
    t0, t1 = _slab(sx, dx, -0.5, ni - 0.5, t0, t1)
    t0, t1 = _slab(sy, dy, -0.5, nj - 0.5, t0, t1)
    t0, t1 = _slab(sz, dz, -0.5, nk - 0.5, t0, t1)
    if t1 <= t0:
        return 0.0
    # voxel containing the chord's midpoint side of the entry point
    te = t0 + 1e-9 * max(1.0, t1 - t0)
    i = int(math.floor(sx + te * dx + 0.5))
    j = int(math.floor(sy + te * dy + 0.5))
    k = int(math.floor(sz + te * dz + 0.5))
    i = min(max(i, 0), ni - 1)
    j = min(max(j, 0), nj - 1)
    k = min(max(k, 0), nk - 1)
    inf = 1e300
    if dx > _EPS:
        si, tni, tdi = 1, (i + 0.5 - sx) / dx, 1.0 / dx
    elif dx < -_EPS:
        si, tni, tdi = -1, (i - 0.5 - sx) / dx, -1.0 / dx
    else:
        si, tni, tdi = 0, inf, inf
    if dy > _EPS:
        sj, tnj, tdj = 1, (j + 0.5 - sy) / dy, 1.0 / dy
    elif dy < -_EPS:
        sj, tnj, tdj = -1, (j - 0.5 - sy) / dy, -1.0 / dy
    else:
        sj, tnj, tdj = 0, inf, inf
    if dz > _EPS:
        sk, tnk, tdk = 1, (k + 0.5 - sz) / dz, 1.0 / dz
    elif dz < -_EPS:
        sk, tnk, tdk = -1, (k - 0.5 - sz) / dz, -1.0 / dz
    else:
        sk, tnk, tdk = 0, inf, inf
    acc = 0.0
    tc = t0
    while tc < t1:
        if tni <= tnj and tni <= tnk:
            tn = tni
        elif tnj <= tnk:
            tn = tnj
        else:
            tn = tnk
        te = min(tn, t1)
        if te > tc:
            acc += mu[i, j, k] * (te - tc)
            tc = te
        if tn >= t1:
            break
        if tn == tni:
            i += si
            tni += tdi
            if i < 0 or i >= ni:
                break
        elif tn == tnj:
            j += sj
            tnj += tdj
            if j < 0 or j >= nj:
                break
        else:
            k += sk
            tnk += tdk
            if k < 0 or k >= nk:
                break
    return acc


@njit(cache=True, parallel=True)
def render_siddon(mu, m, b, src, rt, cu, cv, f, out):
    """Exact (Siddon-type) ray-voxel line integrals into ``out[v, u]``."""
    h, w = out.shape
    for u in prange(w):
        for v in range(h):
            sx, sy, sz, dx, dy, dz = _pixel_ray(u, v, cu, cv, f, rt, m, b, src)
            out[v, u] = _siddon_ray(mu, sx, sy, sz, dx, dy, dz)


@njit(cache=True, parallel=True)
def cylinders_chord(p0, p1, radius, mu_lin, src, rt, cu, cv, f, out):
    """Add sum_c mu_c * (chord of the pixel's ray through capped cylinder c) to ``out[v, u]``.

    Cylinder c has axis p0[c] -> p1[c] (world mm) and radius[c]; the chord is computed
    analytically (infinite-cylinder quadratic intersected with the two cap slabs)."""
    h, w = out.shape
    nc = p0.shape[0]
    ident = np.eye(3)
    zero = np.zeros(3)
    for u in prange(w):
        for v in range(h):
            sx, sy, sz, dx, dy, dz = _pixel_ray(u, v, cu, cv, f, rt, ident, zero, src)
            add = 0.0
            for c in range(nc):
                ax = p1[c, 0] - p0[c, 0]
                ay = p1[c, 1] - p0[c, 1]
                az = p1[c, 2] - p0[c, 2]
                ln = math.sqrt(ax * ax + ay * ay + az * az)
                if ln <= 0.0:
                    continue
                ax /= ln
                ay /= ln
                az /= ln
                # source relative to p0
                ox = sx - p0[c, 0]
                oy = sy - p0[c, 1]
                oz = sz - p0[c, 2]
                dd = dx * ax + dy * ay + dz * az
                od = ox * ax + oy * ay + oz * az
                # components perpendicular to the axis
                qx = dx - dd * ax
                qy = dy - dd * ay
                qz = dz - dd * az
                rx = ox - od * ax
                ry = oy - od * ay
                rz = oz - od * az
                a = qx * qx + qy * qy + qz * qz
                r = radius[c]
                if a < 1e-14:
                    # ray parallel to the axis: inside the tube or not
                    if rx * rx + ry * ry + rz * rz > r * r:
                        continue
                    ta, tb = -1e30, 1e30
                else:
                    bq = 2.0 * (qx * rx + qy * ry + qz * rz)
                    cq = rx * rx + ry * ry + rz * rz - r * r
                    disc = bq * bq - 4.0 * a * cq
                    if disc <= 0.0:
                        continue
                    sq = math.sqrt(disc)
                    ta = (-bq - sq) / (2.0 * a)
                    tb = (-bq + sq) / (2.0 * a)
                # caps: 0 <= od + t * dd < ln (half-open, so polyline joints count once)
                if abs(dd) < _EPS:
                    if od < 0.0 or od >= ln:
                        continue
                else:
                    ta, tb = _slab(od, dd, 0.0, ln, ta, tb)
                if ta < 0.0:
                    ta = 0.0
                if tb > ta:
                    add += mu_lin[c] * (tb - ta)
            out[v, u] += add


@njit(cache=True, parallel=True)
def _box3_along_k(a, out):
    ni, nj, nk = a.shape
    for i in prange(ni):
        for j in range(nj):
            for k in range(nk):
                s = a[i, j, k]
                c = 1
                if k > 0:
                    s += a[i, j, k - 1]
                    c += 1
                if k < nk - 1:
                    s += a[i, j, k + 1]
                    c += 1
                out[i, j, k] = s / c


@njit(cache=True, parallel=True)
def _box3_along_j(a, out):
    ni, nj, nk = a.shape
    for i in prange(ni):
        for j in range(nj):
            j0 = max(j - 1, 0)
            j1 = min(j + 1, nj - 1)
            c = j1 - j0 + 1
            for k in range(nk):
                s = 0.0
                for jj in range(j0, j1 + 1):
                    s += a[i, jj, k]
                out[i, j, k] = s / c


@njit(cache=True, parallel=True)
def _hu_to_mu_core(hu, mean_j, mu_w, bone_slope, air_hu, out):
    """mu from HU (bilinear model) with air where the 3x3x3 mean (i-pass done here) < air_hu."""
    ni, nj, nk = hu.shape
    for i in prange(ni):
        i0 = max(i - 1, 0)
        i1 = min(i + 1, ni - 1)
        c = i1 - i0 + 1
        for j in range(nj):
            for k in range(nk):
                s = 0.0
                for ii in range(i0, i1 + 1):
                    s += mean_j[ii, j, k]
                h = hu[i, j, k]
                if s / c < air_hu:
                    out[i, j, k] = 0.0
                elif h <= 0.0:
                    v = mu_w * (1.0 + h / 1000.0)
                    out[i, j, k] = v if v > 0.0 else 0.0
                else:
                    out[i, j, k] = mu_w + bone_slope * h


def hu_to_mu_volume(hu, mu_w, bone_slope, air_hu):
    """float32 mu of a 3-D HU array (any numeric dtype), air rule on the 3x3x3 local mean."""
    hu = np.ascontiguousarray(hu)
    tmp = np.empty(hu.shape, np.float32)
    tmp2 = np.empty(hu.shape, np.float32)
    _box3_along_k(hu, tmp)
    _box3_along_j(tmp, tmp2)
    out = tmp  # reuse
    _hu_to_mu_core(hu, tmp2, np.float32(mu_w), np.float32(bone_slope), np.float32(air_hu), out)
    return out
