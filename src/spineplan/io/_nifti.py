"""NIfTI (RAS on disk) <-> Volume (LPS), and writing volumes atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spineplan._atomic import atomic_path
from spineplan.errors import InputError
from spineplan.typing import TypePath
from spineplan.volume import Volume

#: Flip between RAS and LPS (the same matrix both ways).
RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_nifti_array(path: TypePath) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a NIfTI file; return (array [i, j, k] as stored, index->LPS affine, meta).

    The data are scaled by ``scl_slope``/``scl_inter`` when the header sets them (nibabel).
    A trailing singleton 4th dimension is dropped; other shapes are returned as they are.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path), mmap=False)  # an in-memory, writable array (no memmap)
        proxy = img.dataobj
        if float(getattr(proxy, "slope", 1.0)) == 1.0 and float(getattr(proxy, "inter", 0.0)) == 0.0:
            data = proxy.get_unscaled()  # no scaling: skip nibabel's copy (~1 s on a 35 M-voxel CT)
        else:
            data = np.asanyarray(proxy)
    except Exception as exc:  # nibabel/gzip/zlib raise many types for bad files
        raise InputError(
            f"Cannot read {path} as NIfTI: the file is truncated, corrupt or not a NIfTI image "
            f"({type(exc).__name__}: {str(exc)[:200]}). Check that the file is complete (copy it "
            "again) and is a .nii or .nii.gz image."
        ) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    meta: dict = {"source": path.name, "format": "nifti"}
    hdr = img.header
    if int(hdr["sform_code"]) == 0 and int(hdr["qform_code"]) == 0:
        meta["warnings"] = [
            f"{path.name} has no orientation in its header (qform and sform codes are 0); "
            "its voxels were placed with the voxel sizes only (RAS axes), so left/right and "
            "the position in the patient may be wrong."
        ]
    return data, RAS_LPS @ img.affine, meta


def read_nifti(path: TypePath, modality: str = "CT") -> Volume:
    """Read a .nii/.nii.gz file into a Volume (array [i, j, k], affine index->LPS)."""
    path = Path(path)
    data, affine, meta = load_nifti_array(path)
    if data.ndim != 3:
        raise InputError(
            f"{path} holds a {data.ndim}-D image of shape {data.shape}, not one 3-D volume. "
            "Give a 3-D CT or label map (extract one volume from a time series first)."
        )
    return Volume(data, affine, modality=modality, meta=meta)


def write_volume(volume: Volume, path: TypePath, dtype=None) -> Path:
    """Write ``volume`` to ``path`` (.nii, .nii.gz, .nrrd, .mha) atomically; return the path."""
    path = Path(path)
    arr = volume.array if dtype is None else volume.array.astype(dtype)
    name = path.name.lower()
    with atomic_path(path) as tmp:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.Nifti1Image(arr, RAS_LPS @ volume.affine)
            img.header.set_xyzt_units("mm")
            img.set_qform(img.affine, code=1)
            img.set_sform(img.affine, code=1)
            nib.save(img, str(tmp))
        elif name.endswith((".nrrd", ".mha", ".mhd")):
            import SimpleITK as sitk

            img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))))
            img.SetSpacing([float(s) for s in volume.spacing])
            img.SetOrigin([float(o) for o in volume.origin])
            img.SetDirection([float(d) for d in volume.direction.ravel()])
            sitk.WriteImage(img, str(tmp), useCompression=True)
        else:
            raise InputError(f"Cannot write {path}: use a .nii.gz, .nii, .nrrd or .mha file name.")
    return path
