"""Put a label volume onto another volume's grid, exactly when possible, else nearest neighbour.

Three cases, in order:

- *same*: same shape and every corner voxel centre within a quarter voxel (nearest-neighbour
  resampling would return the array unchanged);
- *reoriented*: the label grid's voxel centres coincide with the reference grid's up to a
  permutation/flip of the axes and a whole-voxel shift (e.g. a LAS label map of an LPS DICOM
  series): exact re-indexing with numpy, no interpolation;
- *resampled*: anything else, nearest-neighbour resampling with SimpleITK.
"""

from __future__ import annotations

import numpy as np

from spineplan.volume import Volume

#: Voxel centres closer than this fraction of a voxel count as the same point.
SAME_POINT_VOXELS = 0.25


def _corners(shape) -> np.ndarray:
    return np.array([[a, b, c] for a in (0, shape[0] - 1) for b in (0, shape[1] - 1) for c in (0, shape[2] - 1)], float)


def onto_grid(src: Volume, ref: Volume, fill: int = 0) -> tuple[np.ndarray, str]:
    """``src``'s array on ``ref``'s grid and how it got there ("same", "reoriented", "resampled")."""
    if src.shape == ref.shape:
        c = _corners(ref.shape)
        dist = np.linalg.norm(src.index_to_world(c) - ref.index_to_world(c), axis=1).max()
        if dist < SAME_POINT_VOXELS * ref.spacing.min():
            return src.array, "same"
    m = np.linalg.inv(src.affine) @ ref.affine  # ref index -> src index
    rot, t = m[:3, :3], m[:3, 3]
    perm = np.rint(rot)
    exact = (
        np.allclose(rot, perm, atol=1e-3)
        and np.all(np.abs(perm).sum(axis=0) == 1)
        and np.all(np.abs(perm).sum(axis=1) == 1)
        and np.allclose(t, np.rint(t), atol=1e-2)
    )
    if exact:
        return _reindex(src.array, ref.shape, perm.astype(int), np.rint(t).astype(int), fill), "reoriented"
    return _resample_nearest(src, ref, fill), "resampled"


def _reindex(arr: np.ndarray, shape, perm: np.ndarray, t: np.ndarray, fill) -> np.ndarray:
    """out[r] = arr[perm @ r + t] where defined (perm a signed permutation), else ``fill``."""
    out = np.full(shape, fill, dtype=arr.dtype)
    src_axes = [int(np.nonzero(perm[:, a])[0][0]) for a in range(3)]  # src axis of each ref axis
    view = np.transpose(arr, src_axes)
    out_sl, src_sl = [], []
    for a in range(3):
        s = int(perm[src_axes[a], a])
        n_src = arr.shape[src_axes[a]]
        r = np.arange(shape[a])
        idx = s * r + t[src_axes[a]]
        ok = np.nonzero((idx >= 0) & (idx < n_src))[0]
        if ok.size == 0:
            return out
        r0, r1 = int(ok[0]), int(ok[-1])
        i0, i1 = int(idx[r0]), int(idx[r1])
        out_sl.append(slice(r0, r1 + 1))
        src_sl.append(slice(i0, i1 + 1) if s > 0 else slice(i0, (i1 - 1) if i1 > 0 else None, -1))
    out[tuple(out_sl)] = view[tuple(src_sl)]
    return out


def _resample_nearest(src: Volume, ref: Volume, fill) -> np.ndarray:
    import SimpleITK as sitk

    from spineplan.io._sitkio import to_sitk

    moving = to_sitk(src)
    reference = sitk.Image(list(ref.shape), sitk.sitkUInt8)
    reference.SetSpacing([float(s) for s in ref.spacing])
    reference.SetOrigin([float(o) for o in ref.origin])
    reference.SetDirection([float(d) for d in ref.direction.ravel()])
    out = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, float(fill), moving.GetPixelID())
    return np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))
