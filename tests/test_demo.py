"""The README's first command, ``spineplan demo``, end to end on its built-in phantom.

The demo plans from spineplan's own segmentation (no labels given); this test grades the plan
it wrote against the phantom's ground-truth label map, read back from the files the demo wrote.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from spineplan.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", "-o", str(out)])
    return code, buf.getvalue(), out


def test_demo_plans_l1_l5_and_the_t12_fracture(demo):
    from spineplan.plan.model import Plan

    code, text, out = demo
    assert code == 0, text
    plan = Plan.load(out / "plan" / "plan.json")
    assert sorted((s.level, s.side) for s in plan.screws) == sorted(
        (lv, side) for lv in ("L1", "L2", "L3", "L4", "L5") for side in ("left", "right"))
    assert {a.level for a in plan.access} == {"T12"}, "the grade-2 T12 wedge fracture gets needle access"
    assert len(plan.rods) == 2
    for name in ("surgeon_report.pdf", "patient_report.pdf", "screws.csv", "carm.csv", "labels.nii.gz"):
        assert (out / "plan" / name).stat().st_size > 500, name
    assert "not a medical device" in text


def test_demo_plan_is_grade_a_against_the_true_labels(demo):
    """Every screw and needle lies inside its own true vertebra with no breach (Gertzbein-Robbins A)."""
    from spineplan.io import read_ct, read_labels
    from spineplan.plan.model import Plan
    from spineplan.safety import check_plan

    _, _, out = demo
    ct = read_ct(out / "phantom" / "ct.nii.gz")
    truth = read_labels(out / "phantom" / "labels.nii.gz", ct).volume
    plan = Plan.load(out / "plan" / "plan.json")
    results = check_plan(plan, ct, truth)
    assert len(results) == len(plan.screws) + len(plan.access)
    for r in results:
        assert r.grade == "A", (r.level, r.side, r.grade, r.breach_mm)
        assert r.vertebra_found == r.level
        assert np.isfinite(r.min_margin_mm) and r.min_margin_mm > 0.0
        assert r.facet_violation is not True, (r.level, r.side)
