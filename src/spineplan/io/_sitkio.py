"""NRRD/NHDR and MHA/MHD via SimpleITK, and Volume <-> SimpleITK image conversion.

SimpleITK images are already in LPS. Their arrays are ``[k, j, i]``; a Volume's are ``[i, j, k]``,
so the readers transpose. The affine is ``direction @ diag(spacing)`` plus the origin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spineplan.errors import InputError
from spineplan.volume import Volume

#: File name endings read with SimpleITK.
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def sitk_affine(img) -> np.ndarray:
    """4x4 index->LPS affine of a 3-D SimpleITK image."""
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(img.GetSpacing())
    affine[:3, 3] = img.GetOrigin()
    return affine


def to_sitk(volume: Volume, array: np.ndarray | None = None):
    """A SimpleITK image with ``volume``'s grid (and its array, or ``array``)."""
    import SimpleITK as sitk

    arr = volume.array if array is None else array
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))))
    img.SetSpacing([float(s) for s in volume.spacing])
    img.SetOrigin([float(o) for o in volume.origin])
    img.SetDirection([float(d) for d in volume.direction.ravel()])
    return img


def read_sitk_file(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a NRRD/MHA-like file; return (array [i, j, k], affine, meta). Raises InputError."""
    import SimpleITK as sitk

    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()
        reason = next((ln for ln in first if "Exception" not in ln and ln.strip()), first[-1] if first else "")
        raise InputError(
            f"Cannot read {path}: the file is truncated, corrupt or not a NRRD/MHA image "
            f"(SimpleITK: {reason.strip()[:200]}). Check the file (and, for .nhdr/.mhd, its "
            "separate data file) is complete, or export the CT again."
        ) from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path} has {img.GetNumberOfComponentsPerPixel()} values per voxel (a colour or "
            "vector image), not a CT in Hounsfield units. Give the original greyscale CT."
        )
    dim = img.GetDimension()
    if dim == 2:
        size = img.GetSize()
        raise InputError(
            f"{path} is a 2-D image ({size[0]}x{size[1]}), not a 3-D CT volume. Give the whole "
            "CT series or a 3-D NIfTI/NRRD/MHA file."
        )
    if dim == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
        dim = 3
    if dim != 3:
        raise InputError(
            f"{path} is a {dim}-D image of size {img.GetSize()}; spineplan needs one 3-D CT "
            "volume. Extract the CT volume (e.g. one time point) into its own file."
        )
    arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    meta = {"source": path.name, "format": path.suffix.lower().lstrip(".")}
    return arr, sitk_affine(img), meta
