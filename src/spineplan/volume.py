"""The one volume model every part of spineplan works on.

A :class:`Volume` is a 3-D array plus a 4x4 affine from voxel index to world coordinates in
**patient LPS millimetres** (+x patient left, +y posterior, +z superior; DICOM/ITK).

Index order: ``array[i, j, k]`` where ``(i, j, k, 1) @ affine.T`` gives ``(x, y, z, 1)``.
Readers convert to this once (NIfTI is RAS: negate the first two rows; SimpleITK arrays are
``[k, j, i]``: transpose). The scan's origin is never moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from spineplan.errors import InputError


def _apply(affine: np.ndarray, pts) -> np.ndarray:
    """Apply a 4x4 affine to points (..., 3); column sums avoid a slow threaded matmul on (N, 3)."""
    p = np.asarray(pts, dtype=np.float64)
    a = affine
    out = np.empty(p.shape, dtype=np.float64)
    for r in range(3):
        out[..., r] = p[..., 0] * a[r, 0] + p[..., 1] * a[r, 1] + p[..., 2] * a[r, 2] + a[r, 3]
    return out


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT (HU, float32 or int16) or a label map (integers) with its index->LPS affine."""

    array: np.ndarray
    affine: np.ndarray
    modality: str = "CT"
    #: Non-identifying facts about the source (file name, series description, kernel, ...).
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        aff = np.asarray(self.affine, dtype=np.float64)
        if arr.ndim != 3:
            raise InputError(f"A volume must be 3-D; got an array of shape {arr.shape}.")
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise InputError("A volume needs a finite 4x4 index-to-LPS affine.")
        if abs(np.linalg.det(aff[:3, :3])) < 1e-9:
            raise InputError("The volume's affine is singular (zero voxel spacing or collinear axes).")
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "affine", aff)

    # ----------------------------------------------------------------- geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit LPS directions of the i, j, k axes."""
        return self.affine[:3, :3] / self.spacing

    @property
    def origin(self) -> np.ndarray:
        """LPS position of voxel (0, 0, 0)'s centre."""
        return self.affine[:3, 3].copy()

    def orientation(self) -> str:
        """Three letters naming where each array axis points, e.g. ``'LPS'`` or ``'RAS'``.

        >>> Volume(np.zeros((2, 2, 2)), np.diag([-1.0, -1, 1, 1])).orientation()
        'RAS'
        """
        letters = (("L", "R"), ("P", "A"), ("S", "I"))
        out = ""
        for col in self.direction.T:
            ax = int(np.argmax(np.abs(col)))
            out += letters[ax][0] if col[ax] > 0 else letters[ax][1]
        return out

    def index_to_world(self, ijk) -> np.ndarray:
        """Voxel indices (..., 3) to LPS mm (..., 3)."""
        return _apply(self.affine, ijk)

    def box_affine(self, start) -> np.ndarray:
        """Index -> LPS affine of a sub-box of this grid whose first voxel is ``start`` (i, j, k)."""
        aff = self.affine.copy()
        aff[:3, 3] = self.index_to_world(np.asarray(start, float))
        return aff

    def world_to_index(self, xyz) -> np.ndarray:
        """LPS mm (..., 3) to continuous voxel indices (..., 3)."""
        return _apply(np.linalg.inv(self.affine), xyz)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS bounding box (min, max) of the voxel centres."""
        corners = np.array([[a, b, c] for a in (0, self.shape[0] - 1) for b in (0, self.shape[1] - 1)
                            for c in (0, self.shape[2] - 1)], dtype=float)
        w = self.index_to_world(corners)
        return w.min(axis=0), w.max(axis=0)

    def sample(self, xyz, order: int = 1, fill: float = -1024.0) -> np.ndarray:
        """Values at LPS points (..., 3): trilinear (``order=1``) or nearest (``order=0``)."""
        from scipy.ndimage import map_coordinates

        xyz = np.asarray(xyz, dtype=np.float64)
        idx = self.world_to_index(xyz.reshape(-1, 3)).T
        vals = map_coordinates(self.array, idx, order=order, mode="constant", cval=fill, prefilter=False)
        return vals.reshape(xyz.shape[:-1])

    def with_array(self, array: np.ndarray, **changes: Any) -> "Volume":
        """A volume on the same grid with another array (e.g. a mask)."""
        return replace(self, array=array, **changes)

    def same_grid(self, other: "Volume", tol_mm: float = 1e-3) -> bool:
        """True when ``other`` has the same shape and affine (within ``tol_mm``)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=tol_mm))

    def __repr__(self) -> str:
        sp = "x".join(f"{s:.3g}" for s in self.spacing)
        return f"Volume({self.modality}, shape={self.shape}, spacing={sp} mm, {self.orientation()})"
