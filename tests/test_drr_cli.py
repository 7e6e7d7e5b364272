"""`spineplan drr` and `spineplan views` on the real abdomen CT with a plan written in the test."""

import json

import numpy as np
import pytest

from spineplan.cli import main


@pytest.fixture(scope="module")
def case(data_file, tmp_path_factory):
    """CT path, a label map with L4 only (fast to measure), the spine, and a plan with an L4
    left screw along the measured pedicle axis."""
    from spineplan.anatomy.spine import build_spine
    from spineplan.io import read_ct, read_labels, write_labels
    from spineplan.levels import VERSE_CODES
    from spineplan.plan.model import Plan, Screw

    tmp = tmp_path_factory.mktemp("drr_cli")
    ct_path = data_file("totalseg_example_abdomen/example_ct.nii.gz")
    ct = read_ct(ct_path)
    labels = read_labels(data_file("totalseg_example_abdomen/spine_report_totalseg.nii.gz"), ct)
    keep = [VERSE_CODES[n] for n in ("L4",)]
    arr = np.where(np.isin(labels.volume.array, keep), labels.volume.array, 0).astype(np.uint8)
    lab_path = tmp / "labels.nii.gz"
    write_labels(labels.volume.with_array(arr), lab_path)
    spine = build_spine(ct, labels.volume.with_array(arr))
    ped = spine["L4"].pedicles["left"]
    entry = ped.isthmus_center - 15.0 * ped.axis
    tip = entry + 45.0 * ped.axis
    plan = Plan(screws=[Screw("L4", "left", entry.tolist(), tip.tolist(), 6.5, 45.0)])
    plan_path = tmp / "plan.json"
    plan.save(plan_path)
    return {"ct": str(ct_path), "labels": str(lab_path), "plan": str(plan_path), "tmp": tmp, "spine": spine,
            "entry": entry, "tip": tip}


def _png(path):
    from PIL import Image

    return np.asarray(Image.open(path))


def test_drr_owl_eye_looks_down_the_screw(case, capsys):
    out = case["tmp"] / "owl.png"
    js = case["tmp"] / "owl.json"
    rc = main(["drr", case["ct"], "--labels", case["labels"], "--plan", case["plan"], "--view", "owl:L4-left",
               "--size", "128", "--no-overlay", "--enhance", "0", "-o", str(out), "--json", str(js)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "orbital" in text and "angular" in text and "not a certified medical device" in text
    img = _png(out)
    assert img.shape == (128, 128)
    # down the barrel: the 45 mm titanium screw is a black disc at the image centre
    assert img[62:66, 62:66].max() < 10
    assert np.median(img) > 60
    info = json.loads(js.read_text())
    beam = np.asarray(info["beam_direction_lps"])
    axis = (case["entry"] - case["tip"]) / np.linalg.norm(case["entry"] - case["tip"])
    np.testing.assert_allclose(beam, axis, atol=1e-4)
    assert "planned screw" in info["description"]


def test_drr_true_ap_with_overlay(case, capsys):
    from spineplan.fluoro.geometry import Detector
    from spineplan.fluoro.views import named_view

    out = case["tmp"] / "l4ap.png"
    rc = main(["drr", case["ct"], "--labels", case["labels"], "--plan", case["plan"], "--view", "L4-AP",
               "--size", "160", "-o", str(out)])
    assert rc == 0
    img = _png(out)
    assert img.shape == (160, 160, 3)
    # the vertebra names are drawn in yellow at the projected body centres
    carm, _ = named_view("L4-AP", spine=case["spine"], detector=Detector.square(160))
    u, v = carm.project(case["spine"]["L4"].frame.origin)
    patch = img[int(v) - 3:int(v) + 4, int(u) - 3:int(u) + 4].reshape(-1, 3).astype(int)
    yellow = (patch[:, 0] > 200) & (patch[:, 1] > 200) & (patch[:, 2] < 80)
    assert yellow.any()
    assert "L4-AP" in capsys.readouterr().out


def test_drr_level_view_needs_labels(case, capsys):
    rc = main(["drr", case["ct"], "--view", "L4-AP", "-o", str(case["tmp"] / "x.png")])
    assert rc != 0
    assert "--labels" in capsys.readouterr().err
    assert not (case["tmp"] / "x.png").exists()


def test_views_table(case, capsys):
    out = case["tmp"] / "views.json"
    pics = case["tmp"] / "pics"
    rc = main(["views", case["ct"], "--labels", case["labels"], "--plan", case["plan"], "--levels", "L4",
               "-o", str(out), "--pictures", str(pics), "--size", "96"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert [r["level"] for r in doc["levels"]] == ["L4"]
    assert out.with_suffix(".txt").read_text().startswith("level")
    row = {r["level"]: r for r in doc["levels"]}["L4"]
    # the true AP beam lies in the measured superior endplate plane
    n = np.asarray(case["spine"]["L4"].endplates["superior"]["normal"], float)
    beam = np.asarray(row["true_ap"]["beam_direction_lps"])
    assert abs(float(beam @ n)) < 1e-3
    assert "planned screw" in row["owl_left"]["description"]
    assert "L4" in capsys.readouterr().out
    names = sorted(p.name for p in pics.iterdir())
    assert "L4-AP.png" in names and "L4-LAT.png" in names and "L4-owl-left.png" in names
    assert _png(pics / "L4-AP.png").shape == (96, 96, 3)
