"""``spineplan plan`` end to end on a phantom: every output is written and consistent."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from _plan_outputs import phantom_files, run_cli
from spineplan.cli import main
from spineplan.plan.model import Plan


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    files = phantom_files(base / "phantom", levels="L2-L5", spacing=1.5)
    out = base / "plan"
    code, text = run_cli(["plan", files["ct"], "--labels", files["labels"], "--levels", "L3-L4", "-o", out,
                          "--no-progress"])
    return code, text, out, files


def test_exit_code_and_summary(run):
    code, text, out, _ = run
    assert code == 0
    plan = Plan.load(out / "plan.json")
    assert "SCREWS (%d)" % len(plan.screws) in text
    assert "not a certified medical device" in text
    if plan.warnings:  # warnings come first
        assert text.index("WARNINGS") < text.index("SCREWS")
    for s in plan.screws:
        assert f"{s.diameter_mm:g}x{s.length_mm:g}" in text


def test_outputs_are_complete_and_consistent(run):
    _, _, out, _ = run
    plan = Plan.load(out / "plan.json")
    assert plan.screws, "the planner placed no screw on the phantom"
    assert {s.level for s in plan.screws} <= {"L3", "L4"}
    lines = (out / "screws.csv").read_text().splitlines()
    rows = list(csv.DictReader([ln for ln in lines if not ln.startswith("#")]))
    assert [(r["level"], r["side"]) for r in rows] == [(s.level, s.side) for s in plan.screws]
    for s, r in zip(plan.screws, rows):
        assert float(r["mean_hu"]) == pytest.approx(s.extra["mean_hu"], abs=0.6)
        assert (out / "screws" / f"{s.level}_{s.side}.png").stat().st_size > 10_000
        m = json.loads((out / "slicer" / f"screw_{s.level}_{s.side}.mrk.json").read_text())["markups"][0]
        assert m["name"] == s.label
        assert np.allclose(m["controlPoints"][1]["position"], s.tip, atol=1e-3)
        assert (out / "slicer" / f"screw_{s.level}_{s.side}.stl").read_bytes()[:80].find(b"SPACE=LPS") >= 0
    assert (out / "slicer" / "vertebrae.seg.nrrd").stat().st_size > 0
    # every screw with a skin entry is in exactly one incision, and rods exist where a side has 2 screws
    in_inc = sorted(i for inc in plan.incisions for i in inc.screws)
    assert in_inc == sorted(k for k, s in enumerate(plan.screws) if "skin_depth_mm" in s.extra)
    for side in ("left", "right"):
        n = sum(s.side == side for s in plan.screws)
        assert sum(r.side == side for r in plan.rods) == (1 if n >= 2 else 0)
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".plan")] == []


def test_levels_are_required(capsys, run):
    _, _, _, files = run
    with pytest.raises(SystemExit) as e:
        main(["plan", str(files["ct"]), "-o", "x"])
    assert e.value.code == 2
    assert "--levels" in capsys.readouterr().err


def test_carm_plan(run):
    """carm.csv and plan.extra["carm"]: one true AP / true lateral per level, owl's eyes along the screws."""
    from spineplan.phantom import load_truth

    code, text, out, files = run
    plan = Plan.load(out / "plan.json")
    truth = load_truth(files["truth"])
    carm = plan.extra["carm"]
    assert [r["level"] for r in carm] == ["L3", "L4"]
    assert "C-ARM ANGLES" in text
    lines = (out / "carm.csv").read_text().splitlines()
    rows = list(csv.DictReader([ln for ln in lines if not ln.startswith("#")]))
    for r in carm:
        z = np.asarray(truth["vertebrae"][r["level"]]["axes"]["z"])
        x = np.asarray(truth["vertebrae"][r["level"]]["axes"]["x"])
        ap = np.asarray(r["true_ap"]["beam_direction_lps"])
        lat = np.asarray(r["true_lateral"]["beam_direction_lps"])
        # true AP and lateral: the superior endplate edge-on (beam in the endplate plane, within 3 deg)
        assert abs(ap @ z) < np.sin(np.radians(3)) and abs(lat @ z) < np.sin(np.radians(3))
        assert abs(lat @ x) > np.cos(np.radians(5))  # lateral: along the left-right axis
        for side in ("left", "right"):
            s = plan.screw(r["level"], side)
            owl = r[f"owl_{side}"]
            if s is not None:  # owl's eye: looking down the planned screw
                assert abs(np.asarray(owl["beam_direction_lps"]) @ s.direction()) > np.cos(np.radians(1))
        csv_ap = [row for row in rows if row["level"] == r["level"] and row["view"] == "true_ap"]
        assert len(csv_ap) == 1
        assert float(csv_ap[0]["orbital_deg"]) == pytest.approx(r["true_ap"]["orbital_deg"], abs=0.01)
        assert float(csv_ap[0]["angular_deg"]) == pytest.approx(r["true_ap"]["angular_deg"], abs=0.01)
        # the phantom's frames follow its smooth curve: no level is marked as out of line
        assert r["frame_suspect"] is False and csv_ap[0]["frame_suspect"] == "no"
