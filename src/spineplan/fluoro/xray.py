"""Reading real X-ray images (DICOM DX/CR/XA/RF, PNG, TIFF) into one :class:`XRay` object.

The image is returned as float32 ``(rows, columns)`` with the row/column order of the file
(``u`` = column, ``v`` = row, as in :meth:`spineplan.fluoro.geometry.CArm.project`).
Intensities are the stored values after the modality rescale, with ``MONOCHROME1`` images
inverted so that larger values always display brighter. Whether bone is bright (radiographs,
DX/CR) or dark (fluoroscopy, XA/RF) is not changed here; registration detects the polarity.

Geometry:

- ``pixel_mm`` is the pixel pitch **at the detector plane**. DICOM ``ImagerPixelSpacing``
  (0018,1164) is used first; ``PixelSpacing`` (0028,0030) is used only when the former is
  absent, and ``meta["pixel_spacing_source"]`` says which one it was (``PixelSpacing`` of a
  DX image may be calibrated to the patient plane, i.e. divided by the magnification).
- ``sdd_mm`` is ``DistanceSourceToDetector`` (0018,1110); ``DistanceSourceToPatient``
  (0018,1111), when present, goes to ``meta["sid_mm"]``.
- Values given by the caller (``pixel_mm=``, ``sdd_mm=``) override those in the file.
- PNG and TIFF files carry no projection geometry, so both values must be given.

No patient or study identifiers are copied into ``meta``: only the geometry and pixel-format
facts listed in :data:`_META_KEYWORDS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spineplan._optional import optional_import
from spineplan.errors import InputError
from spineplan.typing import TypePath

#: DICOM modalities that are projection X-rays.
XRAY_MODALITIES = ("DX", "CR", "XA", "RF", "RG", "MG", "PX")

#: The only DICOM keywords copied into ``XRay.meta`` (geometry and pixel format; none identifies anyone).
_META_KEYWORDS = (
    "Modality",
    "PhotometricInterpretation",
    "BitsStored",
    "PixelIntensityRelationship",
    "PixelIntensityRelationshipSign",
    "PositionerPrimaryAngle",
    "PositionerSecondaryAngle",
    "ViewPosition",
    "KVP",
    "EstimatedRadiographicMagnificationFactor",
    "ImagerPixelSpacing",
    "PixelSpacing",
    "DistanceSourceToDetector",
    "DistanceSourceToPatient",
)

#: Relative difference of row and column pixel pitch above which the image is resampled square.
_ANISOTROPY_TOL = 0.01

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass
class XRay:
    """One projection X-ray: image (float32, rows x columns), detector pixel pitch and SDD in mm."""

    image: np.ndarray
    pixel_mm: float
    sdd_mm: float
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        img = np.asarray(self.image, dtype=np.float32)
        if img.ndim != 2 or min(img.shape) < 8:
            raise InputError(f"An X-ray image must be a 2-D array of at least 8x8 pixels; got shape {img.shape}.")
        if not (np.isfinite(self.pixel_mm) and self.pixel_mm > 0):
            raise InputError(f"The X-ray pixel size must be a positive number of mm; got {self.pixel_mm!r}.")
        if not (np.isfinite(self.sdd_mm) and self.sdd_mm > 0):
            raise InputError(f"The source-to-detector distance must be a positive number of mm; got {self.sdd_mm!r}.")
        self.image = np.ascontiguousarray(img)
        self.pixel_mm = float(self.pixel_mm)
        self.sdd_mm = float(self.sdd_mm)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def detector(self):
        """The :class:`spineplan.fluoro.geometry.Detector` that took this image."""
        from spineplan.fluoro.geometry import Detector

        return Detector(sdd_mm=self.sdd_mm, width_px=self.shape[1], height_px=self.shape[0], pixel_mm=self.pixel_mm)


def read_xray(
    path: TypePath,
    *,
    pixel_mm: float | None = None,
    sdd_mm: float | None = None,
    frame: int | None = None,
) -> XRay:
    """Read a DICOM (DX, CR, XA, RF), PNG or TIFF X-ray.

    ``frame`` chooses the frame of a multi-frame (cine / fluoroscopy run) DICOM; the default
    is the last frame, which is what a C-arm shows as its last-image-hold. Raises
    :class:`~spineplan.errors.InputError` with what to do when the file cannot be used or its
    geometry is unknown.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"X-ray file {path} does not exist; give the path of a DICOM, PNG or TIFF image.")
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        return _read_bitmap(path, pixel_mm, sdd_mm)
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom", ""):
        return _read_dicom(path, pixel_mm, sdd_mm, frame)
    # Unknown suffix: let Pillow try.
    return _read_bitmap(path, pixel_mm, sdd_mm)


# --------------------------------------------------------------------------- DICOM
def _read_dicom(path: Path, pixel_mm, sdd_mm, frame) -> XRay:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad files
        raise InputError(
            f"Cannot read {path} as a DICOM image ({type(exc).__name__}: {exc}). Check that the file is a "
            "complete DICOM X-ray; compressed transfer syntaxes may need pylibjpeg or GDCM installed."
        ) from exc
    modality = str(getattr(ds, "Modality", "") or "")
    if modality and modality not in XRAY_MODALITIES:
        raise InputError(
            f"{path} is a DICOM {modality} image, not a projection X-ray (expected one of "
            f"{', '.join(XRAY_MODALITIES)}). Give a fluoroscopy or radiograph file."
        )
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise InputError(f"{path} is a colour DICOM ({samples} samples per pixel); an X-ray must be greyscale.")
    if n_frames > 1:
        idx = n_frames - 1 if frame is None else int(frame)
        if not -n_frames <= idx < n_frames:
            raise InputError(f"{path} has {n_frames} frames; frame {frame} does not exist (use 0..{n_frames - 1}).")
        arr = arr[idx]
        frame_used = idx % n_frames
    else:
        if frame not in (None, 0, -1):
            raise InputError(f"{path} has a single frame; frame {frame} does not exist.")
        frame_used = 0
    img = arr.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    img = img * slope + intercept
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "MONOCHROME1":
        # Larger stored values display darker: invert so larger always means brighter.
        img = (img.max() + img.min()) - img

    meta: dict[str, Any] = {"source": path.name, "format": "dicom", "n_frames": n_frames, "frame": frame_used}
    for kw in _META_KEYWORDS:
        val = getattr(ds, kw, None)
        if val is None or val == "":
            continue
        if isinstance(val, (list, tuple)) or type(val).__name__ == "MultiValue":
            meta[kw] = [float(x) for x in val]
        elif kw in ("Modality", "PhotometricInterpretation", "PixelIntensityRelationship", "ViewPosition"):
            meta[kw] = str(val)
        else:
            try:
                meta[kw] = float(val)
            except (TypeError, ValueError):
                continue

    spacing = None
    for kw in ("ImagerPixelSpacing", "PixelSpacing"):
        val = getattr(ds, kw, None)
        if val is not None and len(val) == 2 and float(val[0]) > 0 and float(val[1]) > 0:
            spacing = (float(val[0]), float(val[1]))  # (row pitch, column pitch)
            meta["pixel_spacing_source"] = kw
            break
    if spacing is not None:
        row_mm, col_mm = spacing
        if abs(row_mm - col_mm) > _ANISOTROPY_TOL * max(row_mm, col_mm):
            img = _resample_square(img, row_mm, col_mm)
            meta["resampled_to_square_pixels"] = True
            spacing = (row_mm, row_mm)
        file_pixel = spacing[0]
    else:
        file_pixel = None
    file_sdd = meta.get("DistanceSourceToDetector")
    if "DistanceSourceToPatient" in meta:
        meta["sid_mm"] = meta["DistanceSourceToPatient"]

    px = pixel_mm if pixel_mm is not None else file_pixel
    sdd = sdd_mm if sdd_mm is not None else file_sdd
    missing = [name for name, v in (("pixel size (--pixel-mm)", px), ("source-to-detector distance (--sdd-mm)", sdd))
               if v is None]
    if missing:
        raise InputError(
            f"{path} does not record the {' or the '.join(missing)}. Give "
            f"{' and '.join(missing)} from the C-arm's specification (a typical mobile C-arm has "
            "an SDD of about 1000 mm)."
        )
    meta["pixel_mm_from"] = "user" if pixel_mm is not None else meta["pixel_spacing_source"]
    meta["sdd_mm_from"] = "user" if sdd_mm is not None else "DistanceSourceToDetector"
    return XRay(img, float(px), float(sdd), meta)


def _resample_square(img: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """Resample columns so that the column pitch equals the row pitch."""
    from scipy.ndimage import zoom

    return zoom(img, (1.0, col_mm / row_mm), order=1, mode="nearest", grid_mode=True).astype(np.float32)


# --------------------------------------------------------------------------- PNG / TIFF
def _read_bitmap(path: Path, pixel_mm, sdd_mm) -> XRay:
    pil = optional_import("PIL.Image", "images", "reading PNG/TIFF X-rays")
    try:
        with pil.open(str(path)) as im:
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                arr = np.asarray(im.convert("L"), dtype=np.float32)
            else:  # "L", "I", "I;16", "F", "1"
                arr = np.asarray(im, dtype=np.float32)
    except Exception as exc:
        raise InputError(
            f"Cannot read {path} as an image ({type(exc).__name__}: {exc}). Give a PNG, TIFF or DICOM X-ray."
        ) from exc
    missing = [flag for flag, v in (("--pixel-mm", pixel_mm), ("--sdd-mm", sdd_mm)) if v is None]
    if missing:
        raise InputError(
            f"{path.name} is a {path.suffix.lstrip('.').upper() or 'bitmap'} image, which records no projection "
            f"geometry. Give the detector pixel size in mm (pixel_mm / --pixel-mm) and the source-to-detector "
            f"distance in mm (sdd_mm / --sdd-mm) from the C-arm's specification; missing: {', '.join(missing)}."
        )
    if arr.ndim != 2:
        raise InputError(f"{path} is not a greyscale image (shape {arr.shape}).")
    meta = {"source": path.name, "format": path.suffix.lstrip(".").lower(), "mode": mode,
            "pixel_mm_from": "user", "sdd_mm_from": "user"}
    return XRay(arr, float(pixel_mm), float(sdd_mm), meta)
