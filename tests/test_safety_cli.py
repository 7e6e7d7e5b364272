"""``spineplan check``: the table, the entry-zone rule and the exit status on real files."""

from __future__ import annotations

import json

import numpy as np

from _phantoms import get_phantom
from _planner import spine_from_truth
from spineplan.cli import main
from spineplan.io import write_volume
from spineplan.plan.model import Screw
from spineplan.plan.screws import plan_screws


def _phantom_files_and_l4_plan(tmp_path):
    """An L2-L5 phantom written as CT and label files, and a plan of L4 on its true anatomy."""
    ph = get_phantom(fov="spine", levels="L2-L5", seed=0)
    ct_p, lab_p = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    write_volume(ph.ct, ct_p)
    write_volume(ph.labels, lab_p)
    return ph, ct_p, lab_p, plan_screws(ph.ct, spine_from_truth(ph), ["L4"])


def _move_left_l4_medially(plan, ph, mm: float) -> None:
    """Move the left L4 screw ``mm`` toward the midline along the vertebra's true x axis (-x local
    is toward the midline for a left screw), in place: a hand-edited medial breach."""
    frame = spine_from_truth(ph)["L4"].frame
    s = plan.screw("L4", "left")
    shift = -mm * frame.axes[0]
    plan.screws[plan.screws.index(s)] = Screw(level="L4", side="left", entry=list(np.add(s.entry, shift)),
                                              tip=list(np.add(s.tip, shift)), diameter_mm=s.diameter_mm,
                                              length_mm=s.length_mm)


def test_check_command_grades_a_plan_and_a_hand_edited_breach(tmp_path, capsys):
    ph, ct_p, lab_p, plan = _phantom_files_and_l4_plan(tmp_path)
    good = plan.save(tmp_path / "plan.json")
    code = main(["check", str(good), "--ct", str(ct_p), "--labels", str(lab_p), "--quick", "--json",
                 str(tmp_path / "check.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "L4    left" in out and "first 5 mm behind the entry point" in out and "not a certified" in out
    rep = json.loads((tmp_path / "check.json").read_text())
    assert [r["grade"] for r in rep["results"]] == ["A", "A"] and rep["exit_status"] == 0

    # move the left screw 6 mm toward the midline in the vertebra frame: a medial breach
    _move_left_l4_medially(plan, ph, 6.0)
    bad = plan.save(tmp_path / "edited.json")
    code = main(["check", str(bad), "--ct", str(ct_p), "--labels", str(lab_p), "--quick"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "L4    left" in line)
    assert code in (1, 3)
    assert "medial" in row
    breach = float(row.split()[6])
    # about 6 mm x cos(medial angle) minus the medial clearance the screw had (2-4 mm)
    assert 0.5 < breach < 5.0
    assert code == (3 if breach >= 2.0 else 1)


def test_check_command_missing_plan_is_a_clear_error(tmp_path, capsys):
    code = main(["check", str(tmp_path / "nope.json"), "--ct", str(tmp_path / "ct.nii.gz")])
    assert code == 2
    assert "no such plan file" in capsys.readouterr().err


def test_check_measures_only_the_plans_levels_and_grades_as_with_the_whole_spine(tmp_path, capsys):
    """Without --quick the command measures the plan's levels and the ones above (their frames
    name the breach direction and place the facet zone), not every vertebra; the grades, breach
    distances and directions equal those against the fully measured spine."""
    from spineplan.anatomy.spine import build_spine
    from spineplan.safety import check_plan

    ph, ct_p, lab_p, plan = _phantom_files_and_l4_plan(tmp_path)
    _move_left_l4_medially(plan, ph, 4.0)
    path = plan.save(tmp_path / "edited.json")
    part = build_spine(ph.ct, ph.labels, levels=["L2", "L3", "L4"])
    assert sorted(v.name for v in part.vertebrae) == ["L2", "L3", "L4"]
    full = check_plan(plan, ph.ct, build_spine(ph.ct, ph.labels))
    code = main(["check", str(path), "--ct", str(ct_p), "--labels", str(lab_p), "--json", str(tmp_path / "c.json")])
    capsys.readouterr()
    got = json.loads((tmp_path / "c.json").read_text())["results"]
    assert code in (1, 3)
    for r, g in zip(full, got):
        assert g["grade"] == r.grade and g["breach_direction"] == r.breach_direction
        # the JSON rounds to 0.01 mm
        assert abs(g["breach_mm"] - r.breach_mm) <= 0.006 or (r.breach_mm != r.breach_mm and g["breach_mm"] is None)
    assert any(g["breach_direction"] == "medial" for g in got)
