"""Level check after registration: simulated needle-tip pixels inside each projected vertebral body."""

from __future__ import annotations

import numpy as np
import pytest

from _register import abdomen, body_core_pixels, start_carm
from spineplan.fluoro.levelcheck import body_masks, decide, levelcheck, project_vertebrae, projections_for
from spineplan.fluoro.register import RegistrationResult, mask_centroids, perturb_pose, register, simulate_xray


@pytest.fixture(scope="session")
def case(data_file):
    return abdomen(data_file)


@pytest.fixture(scope="session")
def shot(case):
    carm0 = start_carm(case)
    cents = mask_centroids(case["masks"], case["ct"].affine)
    centre = np.mean([cents[n] for n in ("L1", "L2", "L3", "L4")], axis=0)
    true = carm0.with_pose(perturb_pose(carm0.pose, [-3.0, 5.0, 4.0, -8.0, 12.0, 6.0], centre))
    xr = simulate_xray(case["att_sim"], true, rng=np.random.default_rng(11))
    res = register(xr, case["att"], carm0, spine=case["labels"], seed=5, threads=1)
    return true, xr, res


def test_levelcheck_names_the_level_under_simulated_needle_tips(case, shot):
    true, xr, res = shot
    assert res.success, res.reason
    pix = body_core_pixels(case, true, np.random.default_rng(0), per_level=6)
    levels = {lv for lv, _ in pix}
    assert len(levels) >= 3 and {"L2", "L3"} <= levels
    proj = projections_for(xr, case["labels"], res, affine=case["ct"].affine, shape=case["ct"].shape)
    # the one-call form (no precomputed projections) gives the same answer
    first = levelcheck(xr, case["labels"], res, pix[0][1], shape=case["ct"].shape)
    assert first.level == pix[0][0]
    for lv, uv in pix:
        chk = levelcheck(xr, case["labels"], res, uv, projections=proj)
        assert chk.level == lv, (lv, uv, chk.to_dict())
        assert chk.distances_px[lv] == 0.0
        assert 0.0 < chk.confidence <= 1.0


def test_levelcheck_decision_rule_on_exact_footprints(case):
    """With the true pose, the rule itself: body centre pixels -> their level with high confidence;
    a pixel far from every vertebra -> no level; a failed registration -> confidence 0."""
    carm = start_carm(case)
    aff = case["ct"].affine
    names = ["L2", "L3"]
    sub = {n: case["masks"][n] for n in names}
    bodies = project_vertebrae(carm, body_masks(sub, aff), aff)
    wholes = project_vertebrae(carm, sub, aff)
    ok = RegistrationResult(carm, 0.9, True, "test", 0, 0.0, consistency_mm=0.5,
                            centre=np.mean(list(mask_centroids(sub, aff).values()), axis=0))
    for n in names:
        vv, uu = np.nonzero(bodies[n] >= 0.9 * bodies[n].max())
        uv = (float(np.median(uu)), float(np.median(vv)))
        chk = decide(bodies, wholes, uv, ok, carm)
        assert chk.level == n and chk.confidence > 0.8
    corner = decide(bodies, wholes, (1.0, 1.0), ok, carm)
    assert corner.level is None and corner.confidence == 0.0 and min(corner.distances_px.values()) > 10
    failed = RegistrationResult(carm, 0.1, False, "score too low", 0, 0.0, centre=ok.centre)
    vv, uu = np.nonzero(bodies["L3"] >= 0.9 * bodies["L3"].max())
    chk = decide(bodies, wholes, (float(np.median(uu)), float(np.median(vv))), failed, carm)
    assert chk.level == "L3" and chk.confidence == 0.0 and "failed" in chk.message


def test_levelcheck_cli_on_png(case, shot, tmp_path, data_file, capsys):
    from PIL import Image

    from spineplan.cli import main

    true, xr, _res = shot
    png = tmp_path / "shot.png"
    Image.fromarray(np.clip(xr.image, 0, 255).astype(np.uint8)).save(png)
    lv, uv = body_core_pixels(case, true, np.random.default_rng(3), per_level=1)[1]
    out = tmp_path / "overlay.png"
    code = main(["levelcheck", str(png), str(data_file("totalseg_example_abdomen/example_ct.nii.gz")),
                 "--labels", str(data_file("totalseg_example_abdomen/spine_report_totalseg.nii.gz")),
                 "--pixel", f"{uv[0]:.1f},{uv[1]:.1f}", "--pixel-mm", str(xr.pixel_mm), "--sdd-mm", "1000",
                 "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert f"Level: {lv} " in text
    with Image.open(out) as im:
        assert im.size[0] > 200 and im.format == "PNG"


def test_register_cli_on_png_writes_the_true_pose(case, shot, tmp_path, data_file):
    """``spineplan register`` on the simulated shot saved as a PNG: the pose it writes puts the
    in-view vertebra centroids within 2 mm (mean 3-D) of where the true pose puts them."""
    import json

    from PIL import Image

    from spineplan.cli import main
    from spineplan.fluoro.geometry import Pose
    from spineplan.fluoro.register import in_view, target_registration_error

    true, xr, _res = shot
    png = tmp_path / "shot.png"
    Image.fromarray(np.clip(xr.image, 0, 255).astype(np.uint8)).save(png)
    out = tmp_path / "reg"
    code = main(["register", str(png), str(data_file("totalseg_example_abdomen/example_ct.nii.gz")),
                 "--labels", str(data_file("totalseg_example_abdomen/spine_report_totalseg.nii.gz")),
                 "--pixel-mm", str(xr.pixel_mm), "--sdd-mm", "1000", "--seed", "5", "-o", str(out)])
    res = json.loads((out / "registration.json").read_text())
    assert code == 0 and res["success"] is True, res["reason"]
    pose = Pose(np.array(res["pose_world_to_carm"]["rotation"]), np.array(res["pose_world_to_carm"]["translation"]))
    cents = mask_centroids(case["masks"], case["ct"].affine)
    names = in_view(true, case["masks"], case["ct"].affine)
    assert len(names) >= 3
    tre = target_registration_error(pose, true.pose, [cents[n] for n in names])
    assert tre.mean() < 2.0, tre
    assert 0.0 <= res["optimality_residual_3d_mm"] <= 1.0
    for name in ("drr.png", "overlay.png"):
        assert (out / name).stat().st_size > 1000
