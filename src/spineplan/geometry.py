"""Shared geometric helpers: signed distance fields of masks, trilinear sampling, screw surfaces.

All points are patient LPS millimetres. A :class:`DistanceField` is the signed Euclidean
distance (mm) to the boundary of a mask, **negative inside, positive outside**, computed once
with scipy's exact EDT in a padded bounding box of the mask (voxel spacing honoured) and
sampled sub-voxel by trilinear interpolation. The zero level lies half a voxel outside the
outermost mask voxel centres, i.e. on the faces of the mask's voxels.

>>> import numpy as np
>>> from spineplan.volume import Volume
>>> m = np.zeros((21, 21, 21), bool); m[5:16, 5:16, 5:16] = True     # an 11 mm cube
>>> f = DistanceField.of_mask(m, Volume(m, np.eye(4)), pad_mm=3)
>>> [round(float(v), 2) for v in f.sample(np.array([[10.0, 10, 10], [10, 10, 15.5], [10, 10, 17.5]]))]
[-5.5, 0.0, 2.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spineplan.volume import Volume

try:  # numba is a core dependency; the pure-numpy path keeps the module importable without it
    from numba import njit
except ImportError:  # pragma: no cover
    njit = None


def _trilinear_py(arr, idx, cval):
    from scipy.ndimage import map_coordinates

    return map_coordinates(arr, idx.T, order=1, mode="constant", cval=cval, prefilter=False)


if njit is not None:

    @njit(cache=True, fastmath=True)
    def _trilinear_nb(arr, idx, cval):  # pragma: no cover - compiled
        n = idx.shape[0]
        ni, nj, nk = arr.shape
        out = np.empty(n, np.float32)
        for p in range(n):
            x, y, z = idx[p, 0], idx[p, 1], idx[p, 2]
            if not (x >= 0.0 and y >= 0.0 and z >= 0.0 and x <= ni - 1 and y <= nj - 1 and z <= nk - 1):
                out[p] = cval
                continue
            i0 = min(int(x), ni - 2) if ni > 1 else 0
            j0 = min(int(y), nj - 2) if nj > 1 else 0
            k0 = min(int(z), nk - 2) if nk > 1 else 0
            fx, fy, fz = x - i0, y - j0, z - k0
            i1, j1, k1 = min(i0 + 1, ni - 1), min(j0 + 1, nj - 1), min(k0 + 1, nk - 1)
            c00 = arr[i0, j0, k0] * (1 - fx) + arr[i1, j0, k0] * fx
            c10 = arr[i0, j1, k0] * (1 - fx) + arr[i1, j1, k0] * fx
            c01 = arr[i0, j0, k1] * (1 - fx) + arr[i1, j0, k1] * fx
            c11 = arr[i0, j1, k1] * (1 - fx) + arr[i1, j1, k1] * fx
            c0 = c00 * (1 - fy) + c10 * fy
            c1 = c01 * (1 - fy) + c11 * fy
            out[p] = c0 * (1 - fz) + c1 * fz
        return out


if njit is not None:

    @njit(cache=True, fastmath=True)
    def _rays_nb(arr, o, d, ts, cval):  # pragma: no cover - compiled
        n, nt = o.shape[0], ts.shape[0]
        idx = np.empty((n * nt, 3))
        for p in range(n):
            for q in range(nt):
                for c in range(3):
                    idx[p * nt + q, c] = o[p, c] + ts[q] * d[p, c]
        return _trilinear_nb(arr, idx, cval).reshape(n, nt)


if njit is not None:

    @njit(cache=True, fastmath=True, inline="always")
    def _tri1(arr, x, y, z, cval):  # pragma: no cover - compiled
        ni, nj, nk = arr.shape
        if not (x >= 0.0 and y >= 0.0 and z >= 0.0 and x <= ni - 1 and y <= nj - 1 and z <= nk - 1):
            return cval
        i0 = min(int(x), ni - 2)
        j0 = min(int(y), nj - 2)
        k0 = min(int(z), nk - 2)
        fx, fy, fz = x - i0, y - j0, z - k0
        c00 = arr[i0, j0, k0] * (1 - fx) + arr[i0 + 1, j0, k0] * fx
        c10 = arr[i0, j0 + 1, k0] * (1 - fx) + arr[i0 + 1, j0 + 1, k0] * fx
        c01 = arr[i0, j0, k0 + 1] * (1 - fx) + arr[i0 + 1, j0, k0 + 1] * fx
        c11 = arr[i0, j0 + 1, k0 + 1] * (1 - fx) + arr[i0 + 1, j0 + 1, k0 + 1] * fx
        return (c00 * (1 - fy) + c10 * fy) * (1 - fz) + (c01 * (1 - fy) + c11 * fy) * fz

    @njit(cache=True, fastmath=True)
    def march_axes(sdf, cval, p, d, step, n_back, n_fwd, ez, iso_n, needs):  # pragma: no cover - compiled
        """For axes through index points ``p`` with index-space directions ``d`` (per mm):
        walk back to the entry (first exit from the mask), then forward from the entry.
        Returns te (mm behind p; NaN = no entry), exit_s (first s >= ez*step outside),
        fail_s[:, k] (first s >= ez*step where the running inscribed radius < needs[k]),
        iso (smallest inscribed radius over [ez, ez + iso_n) samples), iso_s (where),
        run (N, n_fwd) running inscribed radius (inf before ez)."""
        n = p.shape[0]
        nk = needs.shape[0]
        te = np.full(n, np.nan)
        exit_s = np.full(n, n_fwd * step)
        fail_s = np.full((n, nk), n_fwd * step)
        iso = np.full(n, -np.inf)
        iso_s = np.zeros(n)
        run = np.full((n, n_fwd), np.inf, dtype=np.float32)
        for a in range(n):
            v = _tri1(sdf, p[a, 0], p[a, 1], p[a, 2], cval)
            if v >= 0:
                continue
            prev = v
            t_e = -1.0
            for q in range(1, n_back + 1):
                t = q * step
                v = _tri1(sdf, p[a, 0] - t * d[a, 0], p[a, 1] - t * d[a, 1], p[a, 2] - t * d[a, 2], cval)
                if v > 0:
                    t_e = t - step + step * (-prev) / max(v - prev, 1e-6)
                    break
                prev = v
            if t_e < 0:
                continue
            te[a] = t_e
            e0, e1, e2 = p[a, 0] - t_e * d[a, 0], p[a, 1] - t_e * d[a, 1], p[a, 2] - t_e * d[a, 2]
            rmin = np.inf
            imin = np.inf
            for q in range(ez, n_fwd):
                s = q * step
                v = _tri1(sdf, e0 + s * d[a, 0], e1 + s * d[a, 1], e2 + s * d[a, 2], cval)
                if v >= 0:
                    exit_s[a] = s
                    if q < ez + iso_n and -v < imin:  # leaves the bone inside the window
                        imin = -v
                        iso_s[a] = s
                    for k in range(nk):
                        if fail_s[a, k] > s:
                            fail_s[a, k] = s
                    break
                if -v < rmin:
                    rmin = -v
                run[a, q] = rmin
                for k in range(nk):
                    if rmin < needs[k] and fail_s[a, k] > s:
                        fail_s[a, k] = s
                if q < ez + iso_n and -v < imin:
                    imin = -v
                    iso_s[a] = s
            iso[a] = imin if imin < np.inf else -1.0
        return te, exit_s, fail_s, iso, iso_s, run


def affine_apply(m: np.ndarray, xyz: np.ndarray, linear_only: bool = False) -> np.ndarray:
    """``xyz @ m[:3, :3].T + m[:3, 3]`` for (N, 3) points, without BLAS (whose thread start-up
    dominates for tall thin matrices on a shared machine)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    out = xyz[:, 0:1] * m[:3, 0] + xyz[:, 1:2] * m[:3, 1] + xyz[:, 2:3] * m[:3, 2]
    if not linear_only:
        out += m[:3, 3]
    return out


def trilinear(arr: np.ndarray, idx: np.ndarray, cval: float) -> np.ndarray:
    """Trilinear samples of a 3-D float array at continuous indices ``idx`` (N, 3); ``cval`` outside."""
    idx = np.ascontiguousarray(idx, dtype=np.float64).reshape(-1, 3)
    if njit is None:
        return _trilinear_py(arr, idx, cval)
    return _trilinear_nb(arr, idx, np.float32(cval))


@dataclass
class DistanceField:
    """Signed distance (mm; < 0 inside the mask) on a box of a volume's grid. Any other float
    field on a box (e.g. HU) can be wrapped the same way for fast trilinear sampling."""

    sdf: np.ndarray  # float32, box shape
    affine: np.ndarray  # box index -> LPS
    outside_value: float  # value returned outside the box (a lower bound of the true distance)

    @classmethod
    def of_mask(cls, mask: np.ndarray, grid: Volume, *, pad_mm: float = 10.0, box=None,
                exact_outside: bool = True) -> "DistanceField":
        """Signed distance field of ``mask`` (bool, on ``grid``) in its bounding box padded by ``pad_mm``.

        ``box`` = ((i0, i1), (j0, j1), (k0, k1)) overrides the bounding box. An empty mask gives a
        field that is ``+pad_mm`` everywhere (every point outside). With ``exact_outside=False``
        only the inside distance is computed (one EDT instead of two): every outside voxel gets
        +half a voxel, so the zero level and all inside values are unchanged but distances
        outside the mask are not (use it when only inside margins and the sign matter).
        """
        from scipy.ndimage import distance_transform_edt

        mask = np.asarray(mask, bool)
        sp = grid.spacing
        if box is None:
            box = mask_box(mask, grid, pad_mm)
        (i0, i1), (j0, j1), (k0, k1) = box
        sub = mask[i0:i1, j0:j1, k0:k1]
        aff = grid.box_affine([i0, j0, k0])
        if not sub.any():
            return cls(np.full(sub.shape, pad_mm, np.float32), aff, float(pad_mm))
        half = 0.5 * float(np.min(sp))
        d_in = distance_transform_edt(sub, sampling=sp).astype(np.float32)
        if exact_outside:
            d_out = distance_transform_edt(~sub, sampling=sp).astype(np.float32)
            sdf = np.where(sub, half - d_in, d_out - half)
        else:
            sdf = np.where(sub, half - d_in, np.float32(half))
        # Outside the box every point is at least as far out as the padding (the mask is inside it).
        return cls(sdf.astype(np.float32), aff, float(max(pad_mm, half)))

    @property
    def inv(self) -> np.ndarray:
        if not hasattr(self, "_inv"):
            self._inv = np.linalg.inv(self.affine)
        return self._inv

    def to_index(self, xyz: np.ndarray) -> np.ndarray:
        return affine_apply(self.inv, np.asarray(xyz, dtype=np.float64).reshape(-1, 3))

    def march(self, origins: np.ndarray, dirs: np.ndarray, *, step: float, back_mm: float, ahead_mm: float,
              skip_mm: float, iso_mm: float, needs) -> dict:
        """Entry and clearance profiles along many axes (see :func:`march_axes`); world units."""
        o = np.ascontiguousarray(self.to_index(origins))
        d = np.ascontiguousarray(affine_apply(self.inv, dirs, linear_only=True))
        out = march_axes(self.sdf, np.float32(self.outside_value), o, d, float(step), int(round(back_mm / step)),
                         int(round(ahead_mm / step)) + 1, int(np.ceil(skip_mm / step)), int(round(iso_mm / step)),
                         np.asarray(needs, np.float64))
        return dict(zip(("te", "exit_s", "fail_s", "iso", "iso_s", "run"), out))

    def sample_rays(self, origins: np.ndarray, dirs: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Signed distance at ``origins + t * dirs`` for every ray and every ``t``: (N, T)."""
        o = self.to_index(origins)
        d = affine_apply(self.inv, dirs, linear_only=True)
        ts = np.asarray(ts, np.float64)
        if njit is None:
            idx = (o[:, None, :] + ts[None, :, None] * d[:, None, :]).reshape(-1, 3)
            return _trilinear_py(self.sdf, idx, self.outside_value).reshape(len(o), len(ts))
        return _rays_nb(self.sdf, np.ascontiguousarray(o), np.ascontiguousarray(d), ts, np.float32(self.outside_value))

    def sample(self, xyz: np.ndarray) -> np.ndarray:
        """Signed distance (mm) at LPS points (..., 3), trilinear; ``outside_value`` outside the box."""
        xyz = np.asarray(xyz, dtype=np.float64)
        vals = trilinear(self.sdf, self.to_index(xyz.reshape(-1, 3)), self.outside_value)
        return vals.reshape(xyz.shape[:-1])


def mask_box(mask: np.ndarray, grid: Volume, pad_mm: float) -> tuple[tuple[int, int], ...]:
    """Index bounding box (half-open) of a mask, padded by ``pad_mm`` and clipped to the grid
    (the whole grid for an empty mask)."""
    tight = tight_box(mask)
    if tight is None:
        return tuple((0, n) for n in mask.shape)
    return pad_box(tight, mask.shape, grid.spacing, pad_mm)


def tight_box(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """Inclusive index bounds ((lo, hi), ...) of a mask's voxels, or None when it is empty."""
    nz = [np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    if any(n.size == 0 for n in nz):
        return None
    return tuple((int(n[0]), int(n[-1])) for n in nz)


def pad_box(tight, shape, spacing, pad_mm: float) -> tuple[tuple[int, int], ...]:
    """The half-open box of :func:`mask_box` from a mask's inclusive bounds ``tight``
    (:func:`tight_box`): padded by ``pad_mm`` (and a voxel) and clipped to ``shape``."""
    out = []
    for ax, (lo, hi) in enumerate(tight):
        padv = int(np.ceil(pad_mm / spacing[ax])) + 1
        out.append((max(lo - padv, 0), min(hi + 1 + padv, shape[ax])))
    return tuple(out)


def orthonormal_basis(direction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit ``d`` and two unit vectors ``u, v`` perpendicular to it (right-handed u, v, d)."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    helper = np.array([1.0, 0, 0]) if abs(d[0]) < 0.9 else np.array([0, 1.0, 0])
    u = np.cross(d, helper)
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    return d, u, v


@dataclass
class CylinderSamples:
    """Points on a screw's surface with where they are on the screw."""

    points: np.ndarray  # (N, 3) LPS
    t_mm: np.ndarray  # (N,) distance from the entry along the axis
    radial: np.ndarray  # (N, 3) unit outward direction from the axis (the axis direction on the tip cap)
    on_cap: np.ndarray  # (N,) bool, True for the flat tip cap


def cylinder_surface(entry, tip, radius_mm: float, *, step_mm: float = 0.5, n_around: int | None = None,
                     cap: bool = True) -> CylinderSamples:
    """Sample the lateral surface of the cylinder ``entry``->``tip`` (rings every ``step_mm``,
    points at most ``step_mm`` apart around) and, with ``cap``, its flat distal cap."""
    entry = np.asarray(entry, np.float64)
    tip = np.asarray(tip, np.float64)
    length = float(np.linalg.norm(tip - entry))
    d, u, v = orthonormal_basis(tip - entry)
    if n_around is None:
        n_around = max(12, int(np.ceil(2 * np.pi * radius_mm / step_mm)))
    ang = np.linspace(0, 2 * np.pi, n_around, endpoint=False)
    ring = np.outer(np.cos(ang), u) + np.outer(np.sin(ang), v)  # (A, 3)
    ts = np.linspace(0.0, length, max(2, int(np.ceil(length / step_mm)) + 1))
    pts = entry + ts[:, None, None] * d + radius_mm * ring[None, :, :]
    t_all = np.repeat(ts, n_around)
    radial = np.tile(ring, (len(ts), 1))
    points = pts.reshape(-1, 3)
    on_cap = np.zeros(len(points), bool)
    if cap and radius_mm > 0:
        rr = np.arange(step_mm, radius_mm, step_mm)
        cps = [tip[None, :]] + [tip + r * ring for r in rr]
        cp = np.concatenate(cps)
        points = np.concatenate([points, cp])
        t_all = np.concatenate([t_all, np.full(len(cp), length)])
        radial = np.concatenate([radial, np.tile(d, (len(cp), 1))])
        on_cap = np.concatenate([on_cap, np.ones(len(cp), bool)])
    return CylinderSamples(points, t_all, radial, on_cap)


def cylinder_volume_points(entry, tip, radius_mm: float, *, step_mm: float = 1.0) -> np.ndarray:
    """Points filling the cylinder ``entry``->``tip`` about uniformly (for integrals over the screw)."""
    entry = np.asarray(entry, np.float64)
    tip = np.asarray(tip, np.float64)
    length = float(np.linalg.norm(tip - entry))
    d, u, v = orthonormal_basis(tip - entry)
    g = np.arange(-radius_mm, radius_mm + 1e-9, step_mm)
    a, b = np.meshgrid(g, g, indexing="ij")
    keep = a**2 + b**2 <= radius_mm**2
    disc = a[keep][:, None] * u + b[keep][:, None] * v
    ts = np.arange(0.5 * step_mm, length, step_mm)
    return (entry + ts[:, None, None] * d + disc[None]).reshape(-1, 3)


def points_along(origin, direction, t: np.ndarray) -> np.ndarray:
    """``origin + t * direction`` for many ``t`` (broadcast over leading axes of origin/direction)."""
    return np.asarray(origin)[..., None, :] + np.asarray(t)[..., :, None] * np.asarray(direction)[..., None, :]


@dataclass
class BoxMask:
    """A boolean mask on a box of a grid (index -> LPS ``affine``), queried at LPS points."""

    array: np.ndarray
    affine: np.ndarray

    def contains(self, xyz: np.ndarray) -> np.ndarray:
        """True where the nearest voxel of a point is set (False outside the box)."""
        xyz = np.asarray(xyz, dtype=np.float64)
        idx = np.rint(affine_apply(np.linalg.inv(self.affine), xyz.reshape(-1, 3))).astype(np.int64)
        shp = np.array(self.array.shape)
        ok = np.all((idx >= 0) & (idx < shp), axis=1)
        out = np.zeros(len(idx), bool)
        out[ok] = self.array[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        return out.reshape(xyz.shape[:-1])

    def any(self) -> bool:
        return bool(self.array.any())
