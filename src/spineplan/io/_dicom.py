"""DICOM series folder -> CT :class:`~spineplan.volume.Volume` (LPS, array ``[i, j, k]``).

What the reader does, in order:

1. Searches the folder **recursively**; files that are not DICOM, DICOMDIRs and DICOM objects
   without an image (reports, presentation states) are skipped.
2. Groups images by ``SeriesInstanceUID``. It keeps the CT series (``Modality == "CT"``); when
   there are several, it takes the one with the most images and says so in
   ``meta["warnings"]``. A folder with no CT series is refused and the modalities found are
   named (``allow_non_ct=True`` takes the largest series whatever its modality).
3. Sorts the slices by their position along the slice normal
   (``ImagePositionPatient . (row x column direction)``), never by file name or instance number.
4. Checks the slice spacing is uniform: a missing slice (a step that is a multiple of the usual
   one) is refused with the positions that are missing; any other irregular step is refused too.
5. **Gantry tilt** (slice origins that do not lie along the slice normal) is corrected by
   resampling: every slice is shifted in its own plane (linear interpolation) onto an
   orthogonal grid whose first slice is the original first slice. Voxels that were outside the
   scanned field of view become -1024 HU. The tilt angle and the largest shift are recorded in
   ``meta["gantry_tilt_deg"]`` and in a warning.
6. Decodes pixels with pydicom; compressed slices that pydicom cannot decode (missing codec
   plug-in) are read with SimpleITK (GDCM) instead; if that fails too, the error names the
   transfer syntax and how to decompress the files.
7. Applies each slice's ``RescaleSlope``/``RescaleIntercept`` (HU); the array is int16 when all
   values are whole HU that fit, float32 otherwise.

Only non-identifying facts go into ``meta`` (no names, IDs, dates, accession numbers or UIDs).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from spineplan._progress import progress
from spineplan.errors import InputError
from spineplan.volume import Volume

#: Media Storage Directory (DICOMDIR) SOP class: an index file, not an image.
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

#: Two slice origins closer than this along the normal (mm) are the same position.
SAME_POSITION_MM = 1e-3
#: A slice step may differ from the usual step by this fraction (or ``SPACING_TOL_MM``) before it
#: counts as irregular; DICOM positions are written with a few decimals, so exact equality is
#: not expected. Engineering tolerances, not clinical constants.
SPACING_TOL_FRACTION = 0.02
SPACING_TOL_MM = 0.02
#: Slice origins may deviate this much (mm) from a straight line before the stack is refused.
LINE_TOL_MM = 0.1
#: Below this total in-plane drift over the stack (fraction of a pixel) there is no tilt to fix.
TILT_NEGLIGIBLE_PIXELS = 0.05
#: |cos| between the row and column directions above which ImageOrientationPatient is corrupt.
ORTHOGONAL_TOL = 1e-3
#: Value given to voxels that a gantry-tilt correction moves in from outside the scanned field.
AIR_HU = -1024.0


def _float_list(value, n: int) -> list[float] | None:
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _text(ds, keyword: str) -> str:
    value = getattr(ds, keyword, None)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _describe(ds) -> str:
    desc = _text(ds, "SeriesDescription")
    return f"'{desc}'" if desc else "(no description)"


def _scan_headers(files: list[Path]):
    """Read the headers of ``files``; return (image headers, counts of skipped kinds)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    images: list[tuple[Path, Any]] = []
    skipped = {"not DICOM": 0, "DICOM without an image": 0}
    unreadable: list[tuple[Path, str]] = []
    for f in progress(files, "Reading DICOM headers", total=len(files)):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except InvalidDicomError:
            # Files without the 128-byte preamble (old exports) are still DICOM if forcing the
            # read gives a dataset with image attributes.
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
                if "Rows" not in ds or "SOPClassUID" not in ds:
                    raise InvalidDicomError("no image attributes")
            except Exception:
                skipped["not DICOM"] += 1
                continue
        except Exception as exc:  # truncated header, bad tag lengths, ...
            unreadable.append((f, f"{type(exc).__name__}: {exc}"))
            continue
        sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if sop_class == _DICOMDIR_SOP_CLASS or "Rows" not in ds:
            skipped["DICOM without an image"] += 1
            continue
        images.append((f, ds))
    return images, skipped, unreadable


def _series_summary(groups: dict[str, list]) -> str:
    parts = []
    for items in sorted(groups.values(), key=len, reverse=True):
        ds = items[0][1]
        parts.append(f"{_text(ds, 'Modality') or 'unknown modality'} {_describe(ds)} ({len(items)} images)")
    return "; ".join(parts)


def read_dicom_series(path: Path, *, allow_non_ct: bool = False, only_series_of: Path | None = None) -> Volume:
    """Read the CT series in folder ``path`` (see the module docstring for the rules).

    ``only_series_of``: a DICOM file inside ``path``; only its series is read.
    """
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(
            f"The folder {path} is empty (no files in it or its subfolders). Point spineplan at the "
            "folder that holds the CT's DICOM files, or at a NIfTI/NRRD/MHA file."
        )
    images, skipped, unreadable = _scan_headers(files)
    if not images:
        what = ", ".join(f"{n} {kind}" for kind, n in skipped.items() if n)
        bad = f"; {len(unreadable)} could not be read (e.g. {unreadable[0][0].name}: {unreadable[0][1]})" if unreadable else ""
        raise InputError(
            f"No DICOM images in {path}: of {len(files)} files, {what or 'none are DICOM images'}{bad}. "
            "Point spineplan at the folder that holds the CT slices (it searches subfolders), or "
            "give a NIfTI (.nii.gz), NRRD or MHA file."
        )

    groups: dict[str, list] = defaultdict(list)
    for f, ds in images:
        groups[str(getattr(ds, "SeriesInstanceUID", "unknown"))].append((f, ds))
    if only_series_of is not None:
        uid = next((u for u, items in groups.items() if any(f == only_series_of for f, _ in items)), None)
        if uid is not None:
            groups = {uid: groups[uid]}

    warnings: list[str] = []
    ct_groups = {u: g for u, g in groups.items() if _text(g[0][1], "Modality").upper() == "CT"}
    if not ct_groups:
        if not allow_non_ct:
            mods = sorted({_text(g[0][1], "Modality") or "unknown" for g in groups.values()})
            raise InputError(
                f"{path} holds no CT series: it has {_series_summary(groups)} (modality "
                f"{', '.join(mods)}). spineplan plans on CT images in Hounsfield units; export the "
                "CT series of this study (Modality CT) and point spineplan at it."
            )
        ct_groups = groups
    chosen_uid = max(ct_groups, key=lambda u: len(ct_groups[u]))
    if len(groups) > 1:
        others = {u: g for u, g in groups.items() if u != chosen_uid}
        warnings.append(
            f"{path.name} holds {len(groups)} series; using the largest CT series "
            f"{_describe(ct_groups[chosen_uid][0][1])} ({len(ct_groups[chosen_uid])} images) and "
            f"ignoring {_series_summary(others)}. Put one series per folder to choose another."
        )
    series = ct_groups[chosen_uid]
    if unreadable:
        warnings.append(
            f"{len(unreadable)} file(s) in {path.name} could not be read as DICOM and were skipped "
            f"(e.g. {unreadable[0][0].name})."
        )
    return _series_to_volume(path, series, warnings, n_series=len(groups))


def _series_to_volume(path: Path, series: list, warnings: list[str], n_series: int) -> Volume:
    first = series[0][1]
    where = f"the DICOM series {_describe(first)} in {path}"
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for _, ds in series):
        raise InputError(
            f"{where} is stored as multi-frame (enhanced) DICOM, which spineplan does not read. "
            "Convert it to NIfTI (e.g. `dcm2niix -z y FOLDER`) and give spineplan the .nii.gz file."
        )
    if int(getattr(first, "SamplesPerPixel", 1) or 1) != 1:
        raise InputError(f"{where} holds colour images (SamplesPerPixel > 1), not a CT in Hounsfield units. Export the original CT series.")

    # --- geometry: one orientation and size (the largest group if a series mixes them)
    geo_groups: dict[tuple, list] = defaultdict(list)
    for f, ds in series:
        iop = _float_list(getattr(ds, "ImageOrientationPatient", None), 6)
        ipp = _float_list(getattr(ds, "ImagePositionPatient", None), 3)
        ps = _float_list(getattr(ds, "PixelSpacing", None), 2)
        if iop is None or ipp is None or ps is None:
            raise InputError(
                f"{where}: the image {f.name} has no ImagePositionPatient, ImageOrientationPatient "
                "or PixelSpacing, so its position in the patient is unknown (a localizer or "
                "secondary capture?). Export the original axial CT series."
            )
        key = (tuple(np.round(iop, 4)), int(ds.Rows), int(ds.Columns), tuple(np.round(ps, 5)))
        geo_groups[key].append((f, ds, np.array(ipp)))
    key = max(geo_groups, key=lambda k: len(geo_groups[k]))
    if len(geo_groups) > 1:
        warnings.append(
            f"The series mixes {len(geo_groups)} image orientations or sizes; using the "
            f"{len(geo_groups[key])} images that share the most common one."
        )
    stack = geo_groups[key]
    if len(stack) < 2:
        raise InputError(
            f"{where} has a single slice, so it is not a 3-D CT. Export the whole series "
            "(all slices) or give a NIfTI/NRRD/MHA volume."
        )
    iop = np.array(key[0], dtype=float)
    row_dir, col_dir = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    if abs(row_dir @ col_dir) > ORTHOGONAL_TOL:
        raise InputError(
            f"{where}: its ImageOrientationPatient row and column directions are not perpendicular "
            f"(cosine {row_dir @ col_dir:.3f}), so the header is corrupt. Export the series again."
        )
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    ps_row, ps_col = key[3]  # PixelSpacing = (between rows, between columns)

    ipp = np.array([s[2] for s in stack])
    dist = ipp @ normal
    order = np.argsort(dist, kind="stable")
    stack = [stack[i] for i in order]
    ipp, dist = ipp[order], dist[order]

    steps = np.diff(dist)
    if np.any(steps < SAME_POSITION_MM):
        n_dup = int(np.sum(steps < SAME_POSITION_MM))
        raise InputError(
            f"{where}: {n_dup} slice(s) share a position with another slice, so the series holds "
            "more than one volume (several acquisitions, phases or reconstructions). Export each "
            "volume as its own series and give spineplan one of them."
        )
    step = float(np.median(steps))
    tol = max(SPACING_TOL_MM, SPACING_TOL_FRACTION * step)
    multiples = np.rint(steps / step)
    off = np.abs(steps - multiples * step)
    if np.any(off > tol * np.maximum(multiples, 1)) or np.any(multiples < 1):
        found = ", ".join(f"{s:.3f}" for s in sorted(set(np.round(steps, 3)))[:8])
        raise InputError(
            f"{where} has irregular slice spacing (steps of {found} mm along the slice normal), "
            "so it cannot be one evenly spaced volume. Reconstruct or export the series with a "
            "constant slice increment."
        )
    if np.any(multiples > 1):
        missing = [float(dist[g] + m * step) for g in np.nonzero(multiples > 1)[0] for m in range(1, int(multiples[g]))]
        axis_name = "z" if abs(normal[2]) > 0.9 else "position along the slice normal"
        shown = ", ".join(f"{m:.2f}" for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise InputError(
            f"{where} has {len(missing)} missing slice(s): the slices are {step:.3f} mm apart but "
            f"none is at {axis_name} = {shown} mm. A volume with gaps would put anatomy in the "
            "wrong place. Re-export the complete series (all files) from the scanner or PACS."
        )

    # --- gantry tilt: slice origins drift within the slice plane as we move along the normal
    rel = ipp - ipp[0]
    along = dist - dist[0]
    lateral = rel - np.outer(along, normal)
    drift, *_ = np.linalg.lstsq(along[:, None], lateral, rcond=None)  # mm in-plane per mm along
    drift = drift[0]
    resid = np.abs(lateral - np.outer(along, drift)).max()
    if resid > LINE_TOL_MM:
        raise InputError(
            f"{where}: the slice origins do not lie on a straight line (off by up to {resid:.2f} mm), "
            "so the slices cannot be stacked into one volume. Export the original, unmodified series."
        )
    shifts_mm = np.outer(along, drift)  # in-plane offset of each slice origin, LPS mm
    tilt_deg = float(np.degrees(np.arctan(np.linalg.norm(drift))))
    tilted = np.linalg.norm(shifts_mm[-1]) > TILT_NEGLIGIBLE_PIXELS * min(ps_row, ps_col)

    pixels, decoder = _read_pixels(where, stack)
    if tilted:
        pixels = _untilt(pixels, shifts_mm, row_dir, col_dir, ps_col, ps_row)
        warnings.append(
            f"Gantry tilt of {tilt_deg:.2f} degrees: the slices were shifted in-plane by up to "
            f"{np.linalg.norm(shifts_mm[-1]):.1f} mm (linear interpolation) onto an orthogonal grid; "
            f"voxels outside the scanned field were set to {AIR_HU:.0f} HU."
        )

    affine = np.eye(4)
    affine[:3, 0] = row_dir * ps_col  # i: along a row (increasing column index)
    affine[:3, 1] = col_dir * ps_row  # j: down a column (increasing row index)
    affine[:3, 2] = normal * step
    affine[:3, 3] = ipp[0]
    ds = stack[0][1]
    thickness = getattr(ds, "SliceThickness", None)
    meta: dict[str, Any] = {
        "source": path.name,
        "format": "dicom",
        "modality": _text(ds, "Modality"),
        "manufacturer": _text(ds, "Manufacturer"),
        "model": _text(ds, "ManufacturerModelName"),
        "kernel": _text(ds, "ConvolutionKernel"),
        "slice_thickness_mm": float(thickness) if thickness not in (None, "") else None,
        "slice_spacing_mm": step,
        "series_description": _text(ds, "SeriesDescription"),
        "n_files": len(stack),
        "n_series_in_folder": n_series,
        "gantry_tilt_deg": tilt_deg if tilted else 0.0,
        "decoder": decoder,
        "warnings": warnings,
    }
    return Volume(pixels, affine, modality=meta["modality"] or "CT", meta=meta)


def _read_pixels(where: str, stack: list) -> tuple[np.ndarray, str]:
    """Decode and rescale every slice; return the array [i, j, k] and the decoder(s) used."""
    import pydicom

    first = stack[0][1]
    rows, cols = int(first.Rows), int(first.Columns)
    slopes = np.array([float(getattr(ds, "RescaleSlope", 1) or 1) for _, ds, _ in stack])
    inters = np.array([float(getattr(ds, "RescaleIntercept", 0) or 0) for _, ds, _ in stack])
    whole = np.all(slopes == np.rint(slopes)) and np.all(inters == np.rint(inters))
    out = np.empty((len(stack), rows, cols), dtype=np.int16 if whole else np.float32)
    used: set[str] = set()
    for k, (f, _, _) in enumerate(progress(stack, "Reading DICOM slices", total=len(stack))):
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:
            raise InputError(
                f"{where}: the file {f.name} is truncated or corrupt ({type(exc).__name__}: {exc}). "
                "Copy the series again from the scanner or PACS."
            ) from exc
        hu = None
        try:
            raw = ds.pixel_array
            if raw.shape != (rows, cols):
                raise ValueError(f"pixel array of shape {raw.shape}, expected {(rows, cols)}")
            hu = raw.astype(np.float64) * slopes[k] + inters[k]
            used.add("pydicom")
        except Exception as exc:
            hu = _read_slice_sitk(f, rows, cols)
            if hu is None:
                ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
                ts_name = getattr(ts, "name", str(ts))
                compressed = bool(getattr(ts, "is_compressed", False))
                hint = (
                    f"Its pixel data are compressed ({ts_name}) and neither pydicom nor SimpleITK "
                    "could decode them. Decompress the series (e.g. `gdcmconv --raw IN OUT` or "
                    "`dcmdjpeg IN OUT`) or install a pydicom codec (`pip install pylibjpeg "
                    "pylibjpeg-libjpeg pylibjpeg-openjpeg`)."
                    if compressed
                    else "Its pixel data are truncated or corrupt. Copy the series again from the scanner or PACS."
                )
                raise InputError(f"{where}: cannot decode the image in {f.name} ({type(exc).__name__}: {exc}). {hint}") from exc
            used.add("SimpleITK")
        if out.dtype == np.int16:
            if hu.min() < -32768 or hu.max() > 32767:
                out = out.astype(np.float32)
        out[k] = hu
    return np.transpose(out, (2, 1, 0)), "+".join(sorted(used))


def _read_slice_sitk(f: Path, rows: int, cols: int) -> np.ndarray | None:
    """One slice in HU via SimpleITK/GDCM (which applies the rescale itself), or None."""
    try:
        import SimpleITK as sitk

        img = sitk.ReadImage(str(f))
        arr = sitk.GetArrayFromImage(img).astype(np.float64)
    except Exception:
        return None
    arr = arr.reshape(-1, *arr.shape[-2:]) if arr.ndim >= 2 else arr
    if arr.ndim != 3 or arr.shape != (1, rows, cols):
        return None
    return arr[0]


def _untilt(pixels: np.ndarray, shifts_mm: np.ndarray, row_dir, col_dir, sp_i: float, sp_j: float) -> np.ndarray:
    """Shift each slice k in-plane by -shifts_mm[k] so the stack becomes orthogonal.

    New voxel (i, j, k) sits at origin0 + i*sp_i*row + j*sp_j*col + k*step*normal; in the tilted
    slice k that point has in-plane index (i - s_i, j - s_j) with s = shift of slice k's origin.
    """
    from scipy.ndimage import shift

    out = np.empty(pixels.shape, dtype=np.float32 if pixels.dtype != np.int16 else np.int16)
    for k in range(pixels.shape[2]):
        s_i = float(shifts_mm[k] @ row_dir) / sp_i
        s_j = float(shifts_mm[k] @ col_dir) / sp_j
        sl = shift(pixels[:, :, k].astype(np.float32), (s_i, s_j), order=1, mode="constant", cval=AIR_HU)
        out[:, :, k] = np.rint(sl) if out.dtype == np.int16 else sl
    return out
