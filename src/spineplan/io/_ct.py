"""``read_ct``: any supported CT input -> one checked CT :class:`~spineplan.volume.Volume`.

Formats: a DICOM series folder (or one DICOM file: its series is read from its folder),
NIfTI (``.nii``, ``.nii.gz``), NRRD/NHDR and MHA/MHD. Every reader returns LPS and ``[i, j, k]``.

After reading, the volume is checked (``InputError`` with one paragraph saying which input,
what is wrong and what to do):

- 3-D with at least 2 voxels along every axis (a 2-D image or single slice is refused);
- voxel spacing between :data:`MIN_SPACING_MM` and :data:`MAX_SPACING_MM`;
- no NaN or infinite voxels;
- values that can be Hounsfield units: not a narrow range such as 0..1 (a normalised image),
  and not all >= 0 (an MR image, a label map, or CT pixels without the rescale intercept).
  ``allow_non_ct=True`` skips the modality and value checks (for other uses of the reader).

The array is stored as int16 when every value is a whole number that fits (the usual CT case;
a quarter of float64's memory), otherwise as float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spineplan.errors import InputError
from spineplan.io._nifti import load_nifti_array
from spineplan.io._sitkio import SITK_SUFFIXES, read_sitk_file
from spineplan.typing import TypePath
from spineplan.volume import Volume

# Plausibility limits (engineering choices, not clinical constants). Clinical CT voxels range
# from ~0.2 mm (high-resolution bone kernels) to ~10 mm (thick reformats); micro-CT goes to
# ~0.01 mm but is not a patient scan. Values outside these limits signal a broken header
# (e.g. spacing in metres or microns).
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
#: A CT in HU spans air (-1000) to bone (> +300); an image spanning less than this is no CT.
MIN_HU_RANGE = 20.0
#: Below this maximum no voxel is bone (cancellous bone is ~150-300 HU; Schreiber et al.,
#: J Bone Joint Surg Am 2011;93:1057-63): warn that the spine may not be visible.
BONE_HU = 150.0

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in NIFTI_SUFFIXES + SITK_SUFFIXES + (".dcm", ".ima"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_ct(path: TypePath, *, allow_non_ct: bool = False) -> Volume:
    """Read a CT from a DICOM folder, NIfTI, NRRD or MHA file into a checked ``Volume`` (LPS).

    ``volume.meta`` holds only non-identifying facts (source name, format, modality, scanner
    make/model, kernel, slice thickness, series description, number of files) and
    ``meta["warnings"]``: a list of sentences to show the user (e.g. which of several series
    was chosen, gantry-tilt correction).
    """
    path = Path(path)
    if not path.exists():
        parent = path.parent if str(path.parent) not in ("", ".") else Path.cwd()
        hint = "" if parent.exists() else f" (the folder {parent} does not exist either)"
        raise InputError(
            f"The CT input {path} does not exist{hint}. Check the path: give a DICOM series "
            "folder, or a .nii.gz, .nii, .nrrd or .mha file."
        )
    if path.is_dir():
        from spineplan.io._dicom import read_dicom_series

        vol = read_dicom_series(path, allow_non_ct=allow_non_ct)
        return _check(vol, path, allow_non_ct)

    suffix = _suffix(path)
    if path.stat().st_size == 0:
        raise InputError(f"The CT file {path} is empty (0 bytes). Copy it again or export the CT again.")
    if suffix in NIFTI_SUFFIXES:
        arr, affine, meta = load_nifti_array(path)
        meta["modality"] = "CT (assumed: NIfTI does not record the modality)"
    elif suffix in SITK_SUFFIXES:
        arr, affine, meta = read_sitk_file(path)
        meta["modality"] = "CT (assumed: the file does not record the modality)"
    elif suffix in (".dcm", ".ima") or _is_dicom_file(path):
        from spineplan.io._dicom import read_dicom_series

        vol = read_dicom_series(path.parent, allow_non_ct=allow_non_ct, only_series_of=path)
        return _check(vol, path, allow_non_ct)
    else:
        raise InputError(
            f"{path} is not a CT image spineplan can read (unknown file type '{suffix or path.name}', "
            "and it is not a DICOM file). Give a DICOM series folder or a .nii.gz, .nii, .nrrd, "
            ".nhdr, .mha or .mhd file."
        )
    _check_shape(arr, path)
    vol = Volume(arr, affine, modality="CT", meta=meta)
    return _check(vol, path, allow_non_ct)


def _check_shape(arr: np.ndarray, path: Path) -> None:
    if arr.ndim == 2 or (arr.ndim == 3 and min(arr.shape) < 2):
        raise InputError(
            f"{path} is a 2-D image (shape {arr.shape}), not a 3-D CT volume. Give the whole "
            "CT series (all slices) or a 3-D NIfTI/NRRD/MHA file."
        )
    if arr.ndim != 3:
        raise InputError(
            f"{path} holds a {arr.ndim}-D image of shape {arr.shape}, not one 3-D CT volume. "
            "Extract the CT volume (e.g. one time point or channel) into its own file."
        )


def _check(vol: Volume, path: Path, allow_non_ct: bool) -> Volume:
    """Check geometry and values of a freshly read CT; store it compactly; return it."""
    meta = dict(vol.meta)
    warnings = list(meta.get("warnings", []))
    if min(vol.shape) < 2:
        _check_shape(vol.array, path)
    sp = vol.spacing
    if np.any(sp < MIN_SPACING_MM) or np.any(sp > MAX_SPACING_MM):
        raise InputError(
            f"{path} has an implausible voxel spacing of {' x '.join(f'{s:.4g}' for s in sp)} mm "
            f"(a patient CT has {MIN_SPACING_MM}-{MAX_SPACING_MM} mm). The header is probably wrong "
            "(units in metres or microns?). Fix the spacing in the header or export the CT again."
        )
    arr = vol.array
    if arr.dtype.kind not in "iuf" and arr.dtype != bool:
        raise InputError(f"{path} has voxels of type {arr.dtype}, not numbers. Give a greyscale CT image.")
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise InputError(
            f"{path} contains {n_nan} NaN and {n_inf} infinite voxel(s), so it is not a valid CT "
            "(a failed conversion or resampling?). Export the CT again from the original images."
        )
    if not allow_non_ct:
        if hi - lo < MIN_HU_RANGE:
            raise InputError(
                f"{path} has values only from {lo:.4g} to {hi:.4g}, which cannot be Hounsfield units "
                "(a CT spans air at -1000 HU to bone above +300 HU). It is probably a normalised "
                "or processed image; give the original CT in HU."
            )
        if lo >= 0:
            raise InputError(
                f"{path} has no negative values (range {lo:.4g} to {hi:.4g}), so it is not a CT in "
                "Hounsfield units, where air and fat are negative. It looks like an MR image, a "
                "label map, or CT pixels stored without their rescale intercept; give the CT in HU."
            )
        if hi < BONE_HU:
            warnings.append(
                f"No voxel reaches {BONE_HU:.0f} HU (maximum {hi:.0f} HU): no bone is visible; "
                "check that this is the right CT."
            )
    arr = _compact(arr, lo, hi)
    meta["warnings"] = warnings
    return vol.with_array(arr, meta=meta)


def _compact(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """int16 when every value is a whole number in int16 range, else float32."""
    if arr.dtype == np.int16:
        return arr
    if -32768 <= lo and hi <= 32767:
        small = arr.astype(np.int16)
        if arr.dtype.kind in "iub" or not np.any(small != arr):
            return small
    return arr if arr.dtype == np.float32 else arr.astype(np.float32)
