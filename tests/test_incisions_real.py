"""Rods and incisions on the real lumbar CT (TotalSegmentator example) with its reference labels.

Screws are laid along the pedicle axes spineplan's anatomy measures (independent of the screw
planner), so this checks the skin surface, incisions and rod depth on real soft tissue.
"""

from __future__ import annotations

import numpy as np
import pytest

from spineplan.plan.incisions import MAX_INCISION_MM, plan_incisions
from spineplan.plan.model import Plan, Screw
from spineplan.plan.rods import plan_rods
from spineplan.plan.skin import BODY_THRESHOLD_HU, SkinSurface

ABD = "totalseg_example_abdomen"


@pytest.fixture(scope="module")
def real_plan(data_file):
    from spineplan.anatomy.pipeline import analyse
    from spineplan.io import read_ct, read_labels

    ct = read_ct(data_file(f"{ABD}/example_ct.nii.gz"))
    labels = read_labels(data_file(f"{ABD}/spine_report_totalseg.nii.gz"), ct)
    spine = analyse(ct, labels.volume)
    plan = Plan()
    for lv in ("L3", "L4", "L5"):
        for side in ("left", "right"):
            p = spine[lv].pedicles.get(side)
            if p is None:
                continue
            entry = p.isthmus_center - 15.0 * p.axis
            plan.screws.append(Screw(lv, side, entry.tolist(), (entry + 45.0 * p.axis).tolist(), 6.5, 45.0))
    skin = SkinSurface(ct)
    plan_rods(plan, skin=skin, spine=spine)
    plan_incisions(plan, skin, spine=spine)
    return ct, spine, plan


def test_real_skin_entries_are_on_the_skin(real_plan):
    ct, _, plan = real_plan
    assert len(plan.screws) >= 4
    h = float(ct.spacing.max())
    for s in plan.screws:
        p = np.asarray(s.extra["skin_entry"])
        d = s.direction()
        assert ct.sample((p + h * d)[None])[0] > BODY_THRESHOLD_HU > ct.sample((p - h * d)[None])[0]
        # lumbar skin-to-entry depth of an adult: several centimetres
        assert 30.0 < s.extra["skin_depth_mm"] < 150.0


def test_real_incisions_are_short_or_flagged(real_plan):
    _, _, plan = real_plan
    flagged = {w.message for w in plan.warnings if w.code == "incision-long"}
    for inc in plan.incisions:
        assert 15.0 <= inc.length_mm
        if inc.length_mm > MAX_INCISION_MM:
            flag = inc.extra["flag"]
            assert flag in flagged
            assert any(why in flag for why in ("joins the skin entries", "from perpendicular", "far lateral"))
        else:
            assert "flag" not in inc.extra
    assert plan.extra["incisions_total_mm"] == pytest.approx(sum(i.length_mm for i in plan.incisions), abs=0.1)


def test_real_rods_lie_under_the_skin(real_plan):
    _, _, plan = real_plan
    assert {r.side for r in plan.rods} == {"left", "right"}
    for r in plan.rods:
        assert r.extra["depth_check"] == "done"
        assert r.extra["min_skin_depth_mm"] > 20.0  # rod heads ~12 mm above bone, skin ~ 60-90 mm away
        assert r.length_mm >= r.extra["needed_length_mm"]
