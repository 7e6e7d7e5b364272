"""Test helpers for the IO tests: synthetic CT DICOM series and label maps written as real files.

The synthetic CTs hold a linear HU ramp of the LPS position, ``HU = RAMP . (x, y, z)``: a
volume read in the wrong frame (swapped, flipped or shifted axes, wrong slice order, missing
rescale) disagrees with the ramp almost everywhere, so tests compare each voxel with the ramp
at the voxel's LPS position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: HU per mm along LPS x, y, z.
RAMP = np.array([2.0, 3.0, 5.0])

#: Identifiers written into every synthetic file; they must never reach Volume.meta.
PATIENT_NAME = "Secret^Person"
PATIENT_ID = "PID-778899"
BIRTH_DATE = "19610203"
ACCESSION = "ACC-55443"


def ramp(xyz) -> np.ndarray:
    return np.asarray(xyz, dtype=float) @ RAMP


def write_dicom_slice(
    path: Path,
    stored: np.ndarray,
    ipp,
    iop,
    pixel_spacing,
    *,
    series_uid: str,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = -1024.0,
    thickness: float = 2.5,
    description: str = "Synthetic",
    instance: int = 1,
) -> Path:
    """Write one uncompressed single-frame DICOM image (``stored`` is [row, column] int16)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.Modality = modality
    ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, "1.2.826.0.1.3680043.99.1"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber = PATIENT_NAME, PATIENT_ID, BIRTH_DATE, ACCESSION
    ds.StudyDate = ds.SeriesDate = "20240102"
    ds.Manufacturer, ds.ManufacturerModelName, ds.ConvolutionKernel = "TestVendor", "Model-X", "B30f"
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.SliceThickness = thickness
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [float(s) for s in pixel_spacing]
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct_series(
    folder: Path,
    *,
    n_cols: int = 12,
    n_rows: int = 10,
    n_slices: int = 6,
    pixel_spacing=(0.9, 0.8),  # (between rows, between columns) as in DICOM
    origin=(-5.0, -4.0, -7.0),
    row_dir=(1.0, 0.0, 0.0),
    col_dir=(0.0, 1.0, 0.0),
    stack_dir=None,  # direction from one slice origin to the next; default: the slice normal
    step: float = 2.5,
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    series_uid: str | None = None,
    skip=(),
    order=None,  # file-name order: a permutation of range(n_slices); default reversed
    description: str = "Synthetic",
    value=ramp,
) -> list[Path]:
    """Write a synthetic series whose stored pixels encode ``value(LPS position)`` in HU."""
    from pydicom.uid import generate_uid

    series_uid = series_uid or generate_uid()
    r, c = np.asarray(row_dir, float), np.asarray(col_dir, float)
    r, c = r / np.linalg.norm(r), c / np.linalg.norm(c)
    n = np.cross(r, c)
    d = n if stack_dir is None else np.asarray(stack_dir, float) / np.linalg.norm(stack_dir)
    if order is None:
        order = list(range(n_slices))[::-1]
    jj, ii = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")  # [row, column]
    paths = []
    for k in range(n_slices):
        if k in skip:
            continue
        ipp = np.asarray(origin, float) + k * step * d
        pos = ipp + ii[..., None] * pixel_spacing[1] * r + jj[..., None] * pixel_spacing[0] * c
        hu = value(pos)
        stored = np.rint((hu - intercept) / slope).astype(np.int16)
        # names sort in a different order from the positions, and half go in a subfolder
        sub = "sub" if k % 2 else ""
        name = folder / sub / f"IM{order[k]:04d}"
        paths.append(
            write_dicom_slice(
                name, stored, ipp, (*r, *c), pixel_spacing, series_uid=series_uid, modality=modality,
                slope=slope, intercept=intercept, description=description, instance=k + 1,
            )
        )
    return paths


def lps_grid(vol) -> np.ndarray:
    """LPS position of every voxel centre, shape (I, J, K, 3)."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in vol.shape], indexing="ij"), axis=-1)
    return vol.index_to_world(idx)


def write_nifti_lps(array: np.ndarray, affine_lps: np.ndarray, path: Path) -> Path:
    """Write ``array`` with an index->LPS affine as NIfTI using nibabel directly (RAS on disk)."""
    import nibabel as nib

    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    img = nib.Nifti1Image(array, ras)
    img.set_qform(ras, code=1)
    img.set_sform(ras, code=1)
    nib.save(img, str(path))
    return path
