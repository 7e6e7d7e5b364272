"""read_labels / write_labels: conventions, auto-detection, grids, bad label maps (real files)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from spineplan.errors import LabelError
from spineplan.io import Labels, read_labels, write_labels
from spineplan.volume import Volume
from _iodata import write_nifti_lps

# A small CT grid: 1 mm voxels, LPS, 20 x 16 x 40 voxels; three "vertebrae" stacked along z
# (z = k mm): the most cranial at the top.
SHAPE = (20, 16, 40)
CT_AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
BOXES = {  # level -> k range (inclusive start, exclusive end), all at i 5..15, j 4..12
    "L3": (28, 38),
    "L4": (16, 26),
    "L5": (4, 14),
}
VERSE = {"L3": 22, "L4": 23, "L5": 24}
TS = {"L3": 29, "L4": 28, "L5": 27}


def _ct() -> Volume:
    return Volume(np.full(SHAPE, -1000, np.int16), CT_AFFINE)


def _box(level: str) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    k0, k1 = BOXES[level]
    m[5:15, 4:12, k0:k1] = True
    return m


def _label_array(codes: dict[str, int], dtype=np.uint8) -> np.ndarray:
    arr = np.zeros(SHAPE, dtype)
    for level, code in codes.items():
        arr[_box(level)] = code
    return arr


def test_verse_map_on_ct_grid(tmp_path):
    write_nifti_lps(_label_array(VERSE), CT_AFFINE, tmp_path / "seg.nii.gz")
    lab = read_labels(tmp_path / "seg.nii.gz", _ct())
    assert isinstance(lab, Labels) and lab.convention == "verse" and lab.source == "seg.nii.gz"
    assert lab.names == ["L3", "L4", "L5"]
    for level in BOXES:
        np.testing.assert_array_equal(lab.masks[level], _box(level))
    assert lab.counts["L4"] == 10 * 8 * 10
    assert lab.volume_ml("L4") == pytest.approx(0.8)  # 800 voxels of 1 mm^3
    assert lab.volume.array.dtype == np.uint8 and lab.volume.same_grid(_ct())
    assert lab.warnings == []


def test_float_verse_map_like_verse_release(tmp_path):
    write_nifti_lps(_label_array(VERSE, np.float64), CT_AFFINE, tmp_path / "seg.nii.gz")
    assert read_labels(tmp_path / "seg.nii.gz").names == ["L3", "L4", "L5"]


def test_ts_total_map_sacrum_and_s1_merge_and_organs_dropped(tmp_path):
    arr = _label_array(TS)
    arr[5:15, 4:12, 0:2] = 25  # sacrum
    arr[5:15, 4:12, 2:4] = 26  # S1
    arr[0:3, 0:3, 0:40] = 5  # an organ (liver), not a vertebra
    write_nifti_lps(arr, CT_AFFINE, tmp_path / "total.nii.gz")
    lab = read_labels(tmp_path / "total.nii.gz", _ct())
    assert lab.convention == "ts-total"
    assert lab.names == ["L3", "L4", "L5", "S1"]
    s1 = np.zeros(SHAPE, bool)
    s1[5:15, 4:12, 0:4] = True
    np.testing.assert_array_equal(lab.masks["S1"], s1)
    np.testing.assert_array_equal(lab.masks["L5"], _box("L5"))
    assert not np.any(lab.volume.array[0:3, 0:3, :])  # the organ is gone
    assert lab.volume.meta["convention_reason"] == "label 29 > 28"


def test_ts_total_detected_by_label_27_when_all_ids_are_low(tmp_path):
    # A pelvis crop: TS L4 (28), L5 (27) only; 28 would be T13 and 27 is unused in VerSe.
    write_nifti_lps(_label_array({"L4": 28, "L5": 27}), CT_AFFINE, tmp_path / "pelvis.nii.gz")
    lab = read_labels(tmp_path / "pelvis.nii.gz")
    assert lab.convention == "ts-total" and lab.names == ["L4", "L5"]


def test_ts_folder(tmp_path):
    folder = tmp_path / "segmentations"
    folder.mkdir()
    for level in BOXES:
        write_nifti_lps(_box(level).astype(np.uint8), CT_AFFINE, folder / f"vertebrae_{level}.nii.gz")
    sac = np.zeros(SHAPE, np.uint8)
    sac[5:15, 4:12, 0:3] = 1
    write_nifti_lps(sac, CT_AFFINE, folder / "sacrum.nii.gz")
    write_nifti_lps(np.ones(SHAPE, np.uint8), CT_AFFINE, folder / "liver.nii.gz")  # ignored
    write_nifti_lps(np.zeros(SHAPE, np.uint8), CT_AFFINE, folder / "vertebrae_T1.nii.gz")  # empty: absent
    lab = read_labels(folder, _ct())
    assert lab.convention == "ts-folder"
    assert lab.names == ["L3", "L4", "L5", "S1"]
    np.testing.assert_array_equal(lab.masks["S1"], sac.astype(bool))
    np.testing.assert_array_equal(lab.masks["L3"], _box("L3"))


def test_ts_folder_without_vertebra_files_refused(tmp_path):
    (tmp_path / "seg").mkdir()
    write_nifti_lps(np.ones(SHAPE, np.uint8), CT_AFFINE, tmp_path / "seg" / "liver.nii.gz")
    with pytest.raises(LabelError, match="no TotalSegmentator vertebra files"):
        read_labels(tmp_path / "seg")


def test_auto_refuses_unordered_low_labels_and_override_works(tmp_path):
    # ids 1..5 with the larger ids at the top: not VerSe order (VerSe codes grow caudally)
    arr = np.zeros(SHAPE, np.uint8)
    for code in range(1, 6):
        arr[2:18, 2:14, 8 * (code - 1) : 8 * code - 1] = code
    write_nifti_lps(arr, CT_AFFINE, tmp_path / "organs.nii.gz")
    with pytest.raises(LabelError, match="not stacked like VerSe vertebrae.*convention='ts-total'"):
        read_labels(tmp_path / "organs.nii.gz")
    with pytest.raises(LabelError, match="no vertebra labels"):
        read_labels(tmp_path / "organs.nii.gz", convention="ts-total")  # ids 1-5 are organs in TS
    assert read_labels(tmp_path / "organs.nii.gz", convention="verse").names == ["C1", "C2", "C3", "C4", "C5"]


def test_auto_refuses_subregion_map(tmp_path):
    arr = np.zeros(SHAPE, np.uint8)
    for n, code in enumerate((41, 42, 49, 50)):
        arr[n : n + 2, :, :] = code
    write_nifti_lps(arr, CT_AFFINE, tmp_path / "subreg.nii.gz")
    with pytest.raises(LabelError, match="subregion"):
        read_labels(tmp_path / "subreg.nii.gz")


def test_verse_override_drops_non_verse_codes_with_warning(tmp_path):
    arr = _label_array(VERSE)
    arr[0, 0, 0] = 60
    write_nifti_lps(arr, CT_AFFINE, tmp_path / "seg.nii.gz")
    lab = read_labels(tmp_path / "seg.nii.gz", convention="verse")
    assert lab.names == ["L3", "L4", "L5"] and "60" in lab.warnings[0]


def test_empty_map_refused(tmp_path):
    write_nifti_lps(np.zeros(SHAPE, np.uint8), CT_AFFINE, tmp_path / "empty.nii.gz")
    with pytest.raises(LabelError, match="empty"):
        read_labels(tmp_path / "empty.nii.gz")


def test_map_without_vertebrae_refused(tmp_path):
    arr = np.zeros(SHAPE, np.uint8)
    arr[:5] = 60  # TS-total: a muscle
    arr[5:10] = 90
    write_nifti_lps(arr, CT_AFFINE, tmp_path / "organs.nii.gz")
    with pytest.raises(LabelError, match="no vertebra labels under the ts-total convention"):
        read_labels(tmp_path / "organs.nii.gz")


def test_non_integer_or_ct_like_values_refused(tmp_path):
    write_nifti_lps(_label_array(VERSE, np.float64) + 0.3, CT_AFFINE, tmp_path / "prob.nii.gz")
    with pytest.raises(LabelError, match="non-integer"):
        read_labels(tmp_path / "prob.nii.gz")
    write_nifti_lps(np.full(SHAPE, -1000, np.int16), CT_AFFINE, tmp_path / "ct.nii.gz")
    with pytest.raises(LabelError, match="Is this the CT"):
        read_labels(tmp_path / "ct.nii.gz")


def test_missing_and_unknown_convention_refused(tmp_path):
    with pytest.raises(LabelError, match="does not exist"):
        read_labels(tmp_path / "none.nii.gz")
    write_nifti_lps(_label_array(VERSE), CT_AFFINE, tmp_path / "seg.nii.gz")
    with pytest.raises(LabelError, match="Unknown label convention"):
        read_labels(tmp_path / "seg.nii.gz", convention="nnunet")


def test_flipped_grid_is_reoriented_exactly(tmp_path):
    # Same voxel centres stored in RAS order (i and j flipped): exact re-indexing, no warning.
    arr = _label_array(VERSE)[::-1, ::-1, :]
    aff = CT_AFFINE.copy()
    aff[0, 0], aff[1, 1] = -1.0, -1.0
    aff[0, 3], aff[1, 3] = SHAPE[0] - 1, SHAPE[1] - 1
    write_nifti_lps(np.ascontiguousarray(arr), aff, tmp_path / "ras.nii.gz")
    lab = read_labels(tmp_path / "ras.nii.gz", _ct())
    assert lab.volume.meta["grid"] == "reoriented" and lab.warnings == []
    for level in BOXES:
        np.testing.assert_array_equal(lab.masks[level], _box(level))


def test_coarser_grid_is_resampled_nearest_neighbour(tmp_path):
    # Label grid: 2 mm voxels with centres at 0.5, 2.5, 4.5 ... mm (no ties with the 1 mm CT grid).
    rng = np.random.default_rng(3)
    coarse = rng.choice(np.array([0, 22, 23, 24], np.uint8), size=(10, 8, 20))
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = 0.5
    write_nifti_lps(coarse, aff, tmp_path / "coarse.nii.gz")
    lab = read_labels(tmp_path / "coarse.nii.gz", _ct())
    assert lab.volume.meta["grid"] == "resampled"
    assert any("nearest neighbour" in w for w in lab.warnings)
    # expected: the coarse voxel whose centre is nearest to each CT voxel centre (x = i mm)
    idx = [np.clip(np.rint((np.arange(n) - 0.5) / 2.0), 0, m - 1).astype(int) for n, m in zip(SHAPE, coarse.shape)]
    expected = coarse[np.ix_(*idx)]
    np.testing.assert_array_equal(lab.volume.array, expected)


def test_non_overlapping_map_refused_and_partial_overlap_warned(tmp_path):
    far = CT_AFFINE.copy()
    far[2, 3] = 500.0
    write_nifti_lps(_label_array(VERSE), far, tmp_path / "far.nii.gz")
    with pytest.raises(LabelError, match="does not overlap the CT"):
        read_labels(tmp_path / "far.nii.gz", _ct())
    half = CT_AFFINE.copy()
    half[2, 3] = 12.0  # shifted up 12 mm: L3 (k 28-37 -> z 40-49) leaves the CT (z 0-39)
    write_nifti_lps(_label_array(VERSE), half, tmp_path / "half.nii.gz")
    lab = read_labels(tmp_path / "half.nii.gz", _ct())
    assert lab.names == ["L4", "L5"]
    assert lab.volume.meta["grid"] == "reoriented"
    assert any("lies inside the CT" in w for w in lab.warnings)


def test_cut_by_edge(tmp_path):
    arr = _label_array(VERSE)
    arr[5:15, 4:12, 38:40] = 22  # L3 reaches the top slice
    arr[0:3, 4:12, 16:26] = 23  # L4 reaches the i = 0 face: patient right in LPS
    write_nifti_lps(arr, CT_AFFINE, tmp_path / "seg.nii.gz")
    cut = read_labels(tmp_path / "seg.nii.gz", _ct()).cut_by_edge()
    assert cut == {"L3": ["superior"], "L4": ["right"]}


@pytest.mark.parametrize("name", ["out.nii.gz", "out.nrrd"])
def test_write_labels_roundtrip_uint8(tmp_path, name):
    write_nifti_lps(_label_array(VERSE), CT_AFFINE, tmp_path / "seg.nii.gz")
    lab = read_labels(tmp_path / "seg.nii.gz", _ct())
    out = write_labels(lab, tmp_path / "o" / name)
    if name.endswith(".nii.gz"):
        assert nib.load(str(out)).get_data_dtype() == np.uint8
    back = read_labels(out, _ct())
    np.testing.assert_array_equal(back.volume.array, lab.volume.array)
    assert [p.name for p in (tmp_path / "o").iterdir()] == [name]


def test_write_labels_refuses_non_label_values(tmp_path):
    vol = Volume(np.full(SHAPE, 300, np.int16), CT_AFFINE)
    with pytest.raises(LabelError):
        write_labels(vol, tmp_path / "bad.nii.gz")
    assert not (tmp_path / "bad.nii.gz").exists()


def _nearest_oracle(src_arr, src_aff, ref_shape, ref_aff):
    """For each reference voxel: the source voxel whose centre is nearest (plain numpy)."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in ref_shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = idx @ ref_aff[:3, :3].T + ref_aff[:3, 3]
    inv = np.linalg.inv(src_aff)
    src_idx = np.rint(world @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    ok = np.all((src_idx >= 0) & (src_idx < np.array(src_arr.shape)), axis=1)
    out = np.zeros(len(idx), src_arr.dtype)
    out[ok] = src_arr[tuple(src_idx[ok].T)]
    return out.reshape(ref_shape)


def test_flipped_and_shifted_grid_partial_overlap_is_exact(tmp_path):
    rng = np.random.default_rng(5)
    src = rng.choice(np.array([0, 20, 21, 22], np.uint8), size=(12, 9, 30))
    aff = np.array([[0, 0, -1.0, 25.0], [-1.0, 0, 0, 10.0], [0, 1.0, 0, 7.0], [0, 0, 0, 1]])  # permuted + flipped
    write_nifti_lps(src, aff, tmp_path / "perm.nii.gz")
    lab = read_labels(tmp_path / "perm.nii.gz", _ct(), convention="verse")
    assert lab.volume.meta["grid"] == "reoriented"
    np.testing.assert_array_equal(lab.volume.array, _nearest_oracle(src, aff, SHAPE, CT_AFFINE))


def test_rotated_grid_is_resampled_like_the_oracle(tmp_path):
    rng = np.random.default_rng(6)
    src = rng.choice(np.array([0, 20, 21, 22], np.uint8), size=(14, 14, 30))
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([1.5, 1.5, 1.5])
    aff[:3, 3] = (3.3, -2.1, 0.7)
    write_nifti_lps(src, aff, tmp_path / "rot.nii.gz")
    lab = read_labels(tmp_path / "rot.nii.gz", _ct(), convention="verse")
    assert lab.volume.meta["grid"] == "resampled"
    expected = _nearest_oracle(src, aff, SHAPE, CT_AFFINE)
    # nearest-neighbour ties (points exactly half-way) may round either way: allow 0.5 %
    assert (lab.volume.array == expected).mean() > 0.995


def test_labels_from_volume_in_memory(tmp_path):
    from spineplan.io import labels_from_volume

    ts = Volume(_label_array(TS).astype(np.int32), CT_AFFINE)
    lab = labels_from_volume(ts, _ct(), source="segmenter output")
    assert lab.convention == "ts-total" and lab.names == ["L3", "L4", "L5"]
    np.testing.assert_array_equal(lab.masks["L4"], _box("L4"))
    with pytest.raises(LabelError, match="segmenter output is empty"):
        labels_from_volume(Volume(np.zeros(SHAPE, np.uint8), CT_AFFINE), source="segmenter output")
