"""Reading X-ray files: DICOM DX/CR/XA/RF written with pydicom, PNG/TIFF written with Pillow."""

from __future__ import annotations

import numpy as np
import pytest

from spineplan.errors import InputError
from spineplan.fluoro.xray import read_xray

pydicom = pytest.importorskip("pydicom")
Image = pytest.importorskip("PIL.Image")

SECRET_NAME = "Doe^Jane"
SECRET_ID = "PID-123456"


def _write_dicom(path, frames: np.ndarray, *, modality="DX", photometric="MONOCHROME2", imager_spacing=(0.2, 0.2),
                 pixel_spacing=None, sdd=1020.0, sid=None, slope=None, intercept=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = {"DX": "1.2.840.10008.5.1.4.1.1.1.1", "CR": "1.2.840.10008.5.1.4.1.1.1",
                 "XA": "1.2.840.10008.5.1.4.1.1.12.1", "RF": "1.2.840.10008.5.1.4.1.1.12.2"}[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.PatientBirthDate = "19500101"
    ds.Modality = modality
    frames = np.asarray(frames, dtype=np.uint16)
    if frames.ndim == 3:
        ds.NumberOfFrames = frames.shape[0]
        rows, cols = frames.shape[1:]
    else:
        rows, cols = frames.shape
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_spacing)
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if sdd is not None:
        ds.DistanceSourceToDetector = sdd
    if sid is not None:
        ds.DistanceSourceToPatient = sid
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    ds.PositionerPrimaryAngle = 5.0
    ds.PixelData = frames.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _ramp(rows=40, cols=48, scale=10):
    v, u = np.mgrid[:rows, :cols]
    return (scale * (u + 2 * v) + 100).astype(np.uint16)


def test_dicom_dx_geometry_and_no_identifiers(tmp_path):
    img = _ramp()
    p = _write_dicom(tmp_path / "dx.dcm", img, imager_spacing=(0.15, 0.15), pixel_spacing=(0.12, 0.12), sdd=1020.0,
                     sid=650.0)
    xr = read_xray(p)
    assert xr.image.dtype == np.float32 and xr.image.shape == (40, 48)
    np.testing.assert_array_equal(xr.image, img.astype(np.float32))
    # ImagerPixelSpacing (detector plane) wins over PixelSpacing (possibly patient plane)
    assert xr.pixel_mm == pytest.approx(0.15) and xr.meta["pixel_spacing_source"] == "ImagerPixelSpacing"
    assert xr.sdd_mm == pytest.approx(1020.0) and xr.meta["sid_mm"] == pytest.approx(650.0)
    assert xr.meta["Modality"] == "DX" and xr.meta["PositionerPrimaryAngle"] == pytest.approx(5.0)
    text = repr(xr.meta)
    for secret in (SECRET_NAME, "Doe", SECRET_ID, "19500101"):
        assert secret not in text
    det = xr.detector()  # the C-arm detector that took it: columns x rows, detector-plane pitch
    assert (det.width_px, det.height_px) == (48, 40) and det.pixel_mm == pytest.approx(0.15)
    assert det.sdd_mm == pytest.approx(1020.0)


def test_dicom_cr_monochrome1_is_inverted_and_rescaled(tmp_path):
    img = _ramp()
    p = _write_dicom(tmp_path / "cr.dcm", img, modality="CR", photometric="MONOCHROME1", imager_spacing=None,
                     pixel_spacing=(0.1, 0.1), slope=2.0, intercept=-50.0)
    xr = read_xray(p)
    expected = img.astype(np.float32) * 2 - 50
    # inverted: the brightest stored value becomes the darkest and vice versa, order reversed
    np.testing.assert_allclose(xr.image, expected.max() + expected.min() - expected)
    assert xr.image[0, 0] > xr.image[-1, -1]
    assert xr.pixel_mm == pytest.approx(0.1) and xr.meta["pixel_spacing_source"] == "PixelSpacing"


def test_dicom_multiframe_xa_frame_choice(tmp_path):
    frames = np.stack([np.full((32, 32), 100 * (k + 1), np.uint16) for k in range(4)])
    p = _write_dicom(tmp_path / "xa.dcm", frames, modality="XA", imager_spacing=(0.3, 0.3), sdd=980.0)
    last = read_xray(p)
    assert last.meta["n_frames"] == 4 and last.meta["frame"] == 3 and float(last.image[5, 5]) == 400.0
    second = read_xray(p, frame=1)
    assert second.meta["frame"] == 1 and float(second.image[5, 5]) == 200.0
    with pytest.raises(InputError, match="frame 7 does not exist"):
        read_xray(p, frame=7)


def test_dicom_rf_missing_sdd_needs_user_value(tmp_path):
    p = _write_dicom(tmp_path / "rf.dcm", _ramp(), modality="RF", imager_spacing=(0.25, 0.25), sdd=None)
    with pytest.raises(InputError, match="source-to-detector distance"):
        read_xray(p)
    xr = read_xray(p, sdd_mm=1000.0)
    assert xr.sdd_mm == 1000.0 and xr.meta["sdd_mm_from"] == "user" and xr.pixel_mm == pytest.approx(0.25)


def test_dicom_anisotropic_pixels_are_resampled_square(tmp_path):
    img = _ramp(rows=20, cols=30)
    p = _write_dicom(tmp_path / "aniso.dcm", img, imager_spacing=(0.2, 0.4))
    xr = read_xray(p)
    # 30 columns of 0.4 mm = 12 mm -> 60 columns of 0.2 mm
    assert xr.image.shape == (20, 60) and xr.pixel_mm == pytest.approx(0.2)
    # the ramp is linear in u: the new column c sits at old column (c + 0.5) / 2 - 0.5
    c = np.arange(5, 55)
    np.testing.assert_allclose(xr.image[0, c], 100 + 10 * ((c + 0.5) / 2 - 0.5), atol=1e-3)


def test_dicom_ct_is_rejected(tmp_path):
    p = _write_dicom(tmp_path / "dx.dcm", _ramp())
    ds = pydicom.dcmread(str(p))
    ds.Modality = "CT"
    ds.save_as(str(tmp_path / "ct.dcm"))
    with pytest.raises(InputError, match="not a projection X-ray"):
        read_xray(tmp_path / "ct.dcm")


def test_png_16bit_and_tiff_float_with_user_geometry(tmp_path):
    img16 = (np.arange(50 * 60).reshape(50, 60) * 7 % 65535).astype(np.uint16)
    Image.fromarray(img16).save(tmp_path / "shot.png")
    xr = read_xray(tmp_path / "shot.png", pixel_mm=0.3, sdd_mm=1000)
    np.testing.assert_array_equal(xr.image, img16.astype(np.float32))
    assert xr.pixel_mm == 0.3 and xr.sdd_mm == 1000.0 and xr.meta["format"] == "png"

    f = np.linspace(-1.5, 2.5, 40 * 30, dtype=np.float32).reshape(40, 30)
    Image.fromarray(f, mode="F").save(tmp_path / "shot.tif")
    xt = read_xray(tmp_path / "shot.tif", pixel_mm=0.5, sdd_mm=1100.0)
    np.testing.assert_allclose(xt.image, f)

    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    xc = read_xray(tmp_path / "rgb.png", pixel_mm=1, sdd_mm=1000)
    assert xc.image.shape == (20, 20) and 100 < float(xc.image.mean()) < 200  # luminance of pure green


def test_png_without_geometry_is_a_clear_error(tmp_path):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match=r"records no projection geometry.*--pixel-mm.*--sdd-mm"):
        read_xray(tmp_path / "a.png")
    with pytest.raises(InputError, match="missing: --sdd-mm"):
        read_xray(tmp_path / "a.png", pixel_mm=0.3)
    with pytest.raises(InputError, match="does not exist"):
        read_xray(tmp_path / "nope.png", pixel_mm=0.3, sdd_mm=1000)
