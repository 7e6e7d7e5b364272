"""Per-vertebra measurements against an analytic vertebra with exact truth, and the real abdomen CT."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _measure import CANCELLOUS_HU, measured_synthetic, synthetic_vertebra
from spineplan.anatomy.measure import OSTEOPOROSIS_HU, measure_vertebra, vertebra_frame


def _angle(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(abs(np.dot(a, b)), -1, 1))))


# pose per spacing: (spacing, rotation, lordosis, scoliosis)
POSES = {1.0: (1.0, 15.0, 10.0, 0.0), 2.0: (2.0, -10.0, -8.0, 6.0)}


@pytest.fixture(scope="session", params=sorted(POSES))
def case(request):
    sp, rot, lord, sco = POSES[request.param]
    # (measured once per session: test_measure_stability perturbs the same vertebrae)
    return (sp, *measured_synthetic(sp, rot, lord, sco, ped_w=8.0, ped_h=14.0, trans_deg=14.0))


def test_frame_matches_the_pose(case):
    sp, ct, mask, truth, v = case
    for i in range(3):
        assert _angle(v.frame.axes[i], truth["axes"][i]) < 1.5, "axis %d off" % i
    # the frame is right-handed: z = x cross y
    np.testing.assert_allclose(np.cross(v.frame.axes[0], v.frame.axes[1]), v.frame.axes[2], atol=1e-9)
    assert np.linalg.norm(v.frame.origin - truth["body_centroid"]) < 1.0
    assert v.frame.axes[0][0] > 0.8 and v.frame.axes[1][1] > 0.8  # x patient-left, y posterior


def test_pedicle_isthmus_and_angles(case):
    sp, ct, mask, truth, v = case
    assert set(v.pedicles) == {"left", "right"}
    for side, p in v.pedicles.items():
        t = truth["pedicles"][side]
        # 0.5 mm at 1 mm voxels (the target); the half-maximum edge of a thin cortex drifts
        # outwards on coarser grids (~+0.9 mm at 2 mm voxels, see benchmarks/bench_measure.py)
        assert p.isthmus_width_mm == pytest.approx(t["isthmus_width_mm"], abs=0.5 if sp <= 1.0 else 1.1)
        assert p.isthmus_height_mm == pytest.approx(t["isthmus_height_mm"], abs=1.0)
        # target 2 deg at 1 mm; at 2 mm only a guard against gross errors (the axis drifts by up
        # to ~9 deg with voxel aliasing; error vs spacing in benchmarks/bench_measure.py)
        tol = 2.0 if sp <= 1.0 else 10.0
        assert p.transverse_angle_deg == pytest.approx(t["transverse_angle_deg"], abs=tol)
        assert p.sagittal_angle_deg == pytest.approx(t["sagittal_angle_deg"], abs=tol)
        assert p.axis @ t["axis"] > 0  # posterior -> anterior
        # the isthmus centre lies inside the pedicle, lateral to the midline on its own side
        x_local = v.frame.to_local(p.isthmus_center)[0]
        assert (x_local > 8.0) if side == "left" else (x_local < -8.0)


def test_body_sizes_heights_and_density(case):
    sp, ct, mask, truth, v = case
    m = v.measurements
    assert m["body_width_mm"] == pytest.approx(truth["body_width_mm"], abs=1.0 if sp <= 1.0 else 1.5)
    assert m["body_ap_depth_mm"] == pytest.approx(truth["body_ap_depth_mm"], abs=1.5 if sp <= 1.0 else 2.0)
    for k in ("anterior_height_mm", "middle_height_mm", "posterior_height_mm"):
        # thin endplate cortex: the half-maximum edge drifts outwards on coarse grids
        assert m[k] == pytest.approx(truth["height_mm"], abs=1.2 if sp <= 1.0 else 2.0), k
    assert m["cancellous_hu"] == pytest.approx(CANCELLOUS_HU, abs=8.0)
    assert m["osteoporosis_suspected"] is (CANCELLOUS_HU < OSTEOPOROSIS_HU)
    assert 15.0 < m["canal_transverse_mm"] < 30.0 and 12.0 < m["canal_ap_mm"] < 28.0
    assert v.complete and m["volume_ml"] > 20.0
    sup, inf = v.endplates["superior"], v.endplates["inferior"]
    assert _angle(sup["normal"], truth["axes"][2]) < 2.0 and _angle(inf["normal"], truth["axes"][2]) < 2.0
    gap = np.dot(np.subtract(sup["point"], inf["point"]), v.frame.axes[2])
    assert gap == pytest.approx(truth["height_mm"], abs=1.2 if sp <= 1.0 else 2.0)


def test_vertebra_cut_by_the_scan_is_flagged():
    ct, mask, truth = synthetic_vertebra(2.0, 0.0, 0.0, 0.0)
    # cut the top 10 mm of the vertebra off the scan
    zi = int(np.flatnonzero(mask.any(axis=(0, 1)))[-1]) - 5
    sub = ct.with_array(np.ascontiguousarray(ct.array[:, :, :zi]))
    v = measure_vertebra(sub, np.ascontiguousarray(mask[:, :, :zi]), "L3", 22)
    assert v.complete is False
    assert "anterior_height_mm" not in v.measurements and "volume_ml" not in v.measurements
    assert v.measurements["volume_in_scan_ml"] > 0
    assert any("cut by the edge" in w for w in v.warnings)


def test_frame_on_a_tilted_vertebra_with_neighbour_hint():
    ct, mask, truth = synthetic_vertebra(2.0, 0.0, 25.0, 0.0)
    c = truth["body_centroid"]
    z = truth["axes"][2]
    f = vertebra_frame(ct, mask, neighbours=[c + 35 * z, c - 35 * z])
    assert _angle(f.axes[2], z) < 1.5 and _angle(f.axes[0], truth["axes"][0]) < 1.5


@pytest.fixture(scope="session")
def abdomen(data_file):
    from spineplan.anatomy.spine import build_spine
    from spineplan.io import read_ct, read_labels

    ct = read_ct(data_file("totalseg_example_abdomen/example_ct.nii.gz"))
    labels = read_labels(data_file("totalseg_example_abdomen/spine_report_totalseg.nii.gz"), ct)
    ref = json.loads(data_file("totalseg_example_abdomen/spine_report.json").read_text())["results"]
    return build_spine(ct, labels.volume), ref


def test_real_abdomen_heights_against_totalsegmentator(abdomen):
    spine, ref = abdomen
    assert spine.names[-7:] == ["T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    assert not spine["T12"].complete  # touches the top of the scan
    diffs = []
    for lv in ("L1", "L2", "L3", "L4", "L5"):
        v = spine[lv]
        assert v.complete
        for k in ("anterior", "middle", "posterior"):
            d = v.measurements[f"{k}_height_mm"] - ref[f"vertebrae_{lv}_height_{k}_mm"]
            diffs.append(d)
            # 3 mm voxels; TotalSegmentator reads heights off its mask in 1.5 mm steps
            assert abs(d) < 7.0, (lv, k, d)
        assert 80.0 < v.measurements["cancellous_hu"] < 200.0
        assert v.frame.axes[2][2] > 0.8
    assert np.mean(np.abs(diffs)) < 3.5


def test_osteoporotic_phantom_is_flagged_and_normal_one_is_not():
    from _phantoms import get_phantom

    for osteo in (False, True):
        ph = get_phantom(levels="L2-L3", spacing=2.0, osteoporosis=osteo, fov="spine")
        truth = ph.truth["vertebrae"]["L2"]
        v = measure_vertebra(ph.ct, np.asarray(ph.labels.array) == 21, "L2", 21)
        assert v.measurements["cancellous_hu"] == pytest.approx(truth["cancellous_hu"], abs=15.0)
        assert v.measurements["osteoporosis_suspected"] is (truth["cancellous_hu"] < OSTEOPOROSIS_HU)
        assert v.measurements["osteoporosis_suspected"] is osteo
