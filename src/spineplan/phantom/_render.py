"""Rasterising implicit shapes onto an axis-aligned LPS grid, each only inside its own box.

Partial volume: a voxel of size ``h`` whose centre lies at signed distance ``d`` from a surface
is treated as the 1-D slab ``[d - h/2, d + h/2]`` across it, so a thin cortex still shows
(blurred) at 3 mm and is sharp at 0.5 mm. Labels use the voxel centre (``d <= 0``).
"""

from __future__ import annotations

import numpy as np


class Grid:
    """Axis-aligned grid: index (i, j, k) -> LPS ``origin + (i, j, k) * spacing``."""

    def __init__(self, lo, hi, spacing):
        self.spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
        self.origin = np.asarray(lo, dtype=np.float64)
        self.shape = tuple(int(np.floor((h - l) / s)) + 1 for l, h, s in zip(lo, hi, self.spacing))
        self.axes = [(self.origin[a] + np.arange(self.shape[a]) * self.spacing[a]).astype(np.float32)
                     for a in range(3)]
        self.h = float(np.mean(self.spacing))

    @property
    def affine(self) -> np.ndarray:
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = self.origin
        return aff

    def box(self, lo, hi, margin: float = 0.0):
        """Index slices and broadcastable coordinate arrays covering [lo, hi] (+ margin)."""
        sl, co = [], []
        for a in range(3):
            i0 = int(np.floor((lo[a] - margin - self.origin[a]) / self.spacing[a]))
            i1 = int(np.ceil((hi[a] + margin - self.origin[a]) / self.spacing[a])) + 1
            i0, i1 = max(i0, 0), min(i1, self.shape[a])
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
            co.append(self.axes[a][i0:i1])
        X = co[0][:, None, None]
        Y = co[1][None, :, None]
        Z = co[2][None, None, :]
        return tuple(sl), (X, Y, Z)


def union_sdf(grid: Grid, shapes, margin: float):
    """Min of the shapes' distances over the union of their boxes: (slices, d) or None."""
    lo = np.min([s.lo for s in shapes], axis=0)
    hi = np.max([s.hi for s in shapes], axis=0)
    outer = grid.box(lo, hi, margin)
    if outer is None:
        return None
    sl, _ = outer
    d = np.full(tuple(s.stop - s.start for s in sl), np.inf, dtype=np.float32)
    for shp in shapes:
        inner = grid.box(shp.lo, shp.hi, margin)
        if inner is None:
            continue
        isl, (X, Y, Z) = inner
        rel = tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(isl, sl))
        np.minimum(d[rel], np.asarray(shp.sdf(X, Y, Z), dtype=np.float32), out=d[rel])
    return sl, d


def paint_soft(ct: np.ndarray, sl, d: np.ndarray, hu, h: float) -> None:
    """Blend a soft tissue of value ``hu`` (scalar or array like ``d``) inside ``d <= 0``."""
    f = np.clip(0.5 - d / h, 0.0, 1.0)
    sub = ct[sl]
    sub += f * (np.asarray(hu, dtype=np.float32) - sub)


def paint_bone(ct: np.ndarray, sl, d: np.ndarray, cortex_hu: float, cancellous_hu: float, cortex_mm: float,
               h: float) -> None:
    """Bone with a cortical shell ``cortex_mm`` thick, with 1-D partial volume across the surface."""
    f_out = np.clip(d / h + 0.5, 0.0, 1.0)
    f_canc = np.clip((0.5 * h - cortex_mm - d) / h, 0.0, 1.0)
    f_cort = 1.0 - f_out - f_canc
    sub = ct[sl]
    ct[sl] = f_out * sub + f_cort * np.float32(cortex_hu) + f_canc * np.float32(cancellous_hu)
