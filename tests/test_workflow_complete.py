"""The whole minimally invasive plan in one run: screws, rods, incisions, fracture access, reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _plan_outputs import run_cli
from spineplan.cli import main


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from spineplan.phantom import make_phantom, write_phantom

    base = tmp_path_factory.mktemp("complete")
    ph = make_phantom(levels="T12-L3", spacing=1.5, fracture=("T12", 2, "wedge"), seed=3)
    files = write_phantom(ph, base / "phantom")
    out = base / "plan"
    code, text = run_cli(["plan", files["ct"], "--labels", files["labels"], "--levels", "L1-L2", "-o", out,
                          "--no-progress"])
    return code, text, out, ph


def test_fractured_level_gets_graded_needle_access_automatically(case):
    code, text, out, ph = case
    assert code == 0
    plan = json.loads((out / "plan.json").read_text())
    levels = {a["level"] for a in plan["access"]}
    assert levels == {"T12"}, "the Genant-graded T12 fracture (and only it) gets augmentation access"
    t12 = ph.truth["vertebrae"]["T12"]
    frame = np.array([t12["axes"]["x"], t12["axes"]["y"], t12["axes"]["z"]])
    for a in plan["access"]:
        assert a["gauge"] == 11 and a["procedure"] == "kyphoplasty"
        assert a["grade"] == "A"
        # the needle tip lies inside the body, in front of its centre (anterior half at least)
        local = frame @ (np.array(a["target"]) - np.array(t12["body_centroid"]))
        assert local[1] < 0, f"tip {local} is not anterior to the body centroid"
        assert abs(local[2]) < t12["posterior_height_mm"] / 2
    assert "NEEDLE ACCESS (" in text and "T12" in text


def test_reports_are_written_and_name_the_levels(case):
    from pypdf import PdfReader

    _, _, out, _ = case
    for name in ("surgeon_report.pdf", "patient_report.pdf", "surgeon_report.html", "patient_report.html"):
        assert (out / name).stat().st_size > 5_000, name
    surgeon = " ".join(p.extract_text() for p in PdfReader(out / "surgeon_report.pdf").pages)
    for word in ("L1", "L2", "T12", "kyphoplasty", "not a certified medical device"):
        assert word in surgeon, word
    patient = " ".join(p.extract_text() for p in PdfReader(out / "patient_report.pdf").pages)
    assert "not a medical device" in patient and "infection" in patient.lower()


def test_access_none_plans_no_needles(tmp_path, case):
    _, _, out, _ = case
    phantom = out.parent / "phantom"
    code = main(["plan", str(phantom / "ct.nii.gz"), "--labels", str(phantom / "labels.nii.gz"), "--levels", "L2",
                 "--sides", "left", "--access", "none", "--no-reports", "-o", str(tmp_path / "p"), "--no-progress"])
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert code == 0 and plan["access"] == [] and len(plan["screws"]) == 1
    assert not (tmp_path / "p" / "surgeon_report.pdf").exists()


def test_auto_access_leaves_a_distant_fracture_to_the_surgeon(tmp_path, case):
    """Instrumenting L3 alone: the T12 fracture is three levels away, so 'auto' plans no needle there
    but warns about it (augmenting a level far from the construct is a decision of its own)."""
    _, _, out, _ = case
    phantom = out.parent / "phantom"
    code = main(["plan", str(phantom / "ct.nii.gz"), "--labels", str(phantom / "labels.nii.gz"), "--levels", "L3",
                 "--sides", "left", "--no-reports", "-o", str(tmp_path / "p"), "--no-progress"])
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert code == 0 and plan["access"] == []
    warned = [w for w in plan["warnings"] if w["code"] == "fracture-not-planned"]
    assert [w["level"] for w in warned] == ["T12"]
    assert "--access T12" in warned[0]["message"] and "Genant 2 " in warned[0]["message"]
    # the warning carries the grade's own uncertainty, as the tables do (not a bare "grade 2")
    spine_t12 = json.loads((tmp_path / "p" / "spine.json").read_text())["vertebrae"]["T12"]["fracture"]
    lo, hi = spine_t12["grade_range"]
    assert ("within the measurement error" in warned[0]["message"]) == (lo != hi)
    assert f"{spine_t12['height_loss_pct']:.0f} % height loss" in warned[0]["message"]


def test_check_regrades_the_written_plan_against_its_labels(case):
    """``spineplan check`` on the plan folder finds labels.nii.gz beside plan.json and agrees: all A."""
    _, _, out, _ = case
    phantom = out.parent / "phantom"
    assert (out / "labels.nii.gz").is_file()
    spine = json.loads((out / "spine.json").read_text())
    assert spine["format"] == "spineplan.spine"
    code, text = run_cli(["check", out / "plan.json", "--ct", phantom / "ct.nii.gz"])
    assert code == 0, text
    assert text.count(" A ") + text.count(" A\n") >= 1


def test_plan_says_which_labels_it_was_graded_against(case):
    _, _, out, _ = case
    plan = json.loads((out / "plan.json").read_text())
    assert plan["labels_source"].startswith("given: labels.nii.gz")
    assert plan["naming"]["levels"][:2] == ["T12", "L1"]
    assert not [w for w in plan["warnings"] if w["code"] == "labels-automatic"]
