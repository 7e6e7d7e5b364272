"""Vertebroplasty/kyphoplasty needle access on phantoms with exact ground truth.

The truth (labels, vertebra frames, body depth) is independent of the planner: grades are
re-checked with :func:`spineplan.safety.check_plan` against the phantom's label map, and the
tip's place in the body is measured from the label mask along the truth frame.
"""

from __future__ import annotations

import numpy as np
import pytest

from _phantoms import get_phantom
from _planner import spine_from_truth
from spineplan.plan.access import MIDLINE_TOLERANCE_MM, fractured_levels, plan_access
from spineplan.plan.model import Plan

FRACTURE_KW = dict(levels="T11-L2", spacing=1.5, fracture=("T12", 2, "wedge"), fov="full")
NARROW_KW = dict(levels="T11-L1", spacing=1.5, pedicle_scale=0.55, fov="spine")


def _spine(ph, with_fracture=True):
    sp = spine_from_truth(ph)
    for v in sp.vertebrae:
        t = ph.truth["vertebrae"][v.name]
        if with_fracture:
            v.fracture = dict(t["fracture"])
        v.measurements = {"body_ap_depth_mm": t["body_ap_depth_mm"]}
    return sp


def _anterior_edge_y(ph, level):
    """Local y (truth frame) of the body's anterior edge, from the label mask: walk from the
    body centroid along -y in 0.1 mm steps until the label ends."""
    t = ph.truth["vertebrae"][level]
    c = np.asarray(t["body_centroid"], float)
    y = np.asarray(t["axes"]["y"], float)
    lab = ph.labels
    for s in np.arange(0.0, 60.0, 0.1):
        p = c - s * y
        ijk = np.rint(lab.world_to_index(p[None]))[0].astype(int)
        if lab.array[tuple(ijk)] != t["label"]:
            return -s
    raise AssertionError("no anterior edge")


def _local(ph, level, p):
    t = ph.truth["vertebrae"][level]
    ax = np.array([t["axes"][k] for k in "xyz"], float)
    return ax @ (np.asarray(p, float) - np.asarray(t["body_centroid"], float))


@pytest.fixture(scope="module")
def fracture_case():
    ph = get_phantom(**FRACTURE_KW)
    sp = _spine(ph)
    acc, warns = plan_access(ph.ct, sp)
    return ph, sp, acc, warns


def test_fractured_level_found_and_unipedicular_to_midline(fracture_case):
    ph, sp, acc, warns = fracture_case
    assert fractured_levels(sp) == ["T12"]
    assert [a.level for a in acc] == ["T12"]
    a = acc[0]
    assert a.extra["approach"] == "unipedicular" and a.gauge == 11 and a.procedure == "kyphoplasty"
    loc = _local(ph, "T12", a.target)
    assert abs(loc[0]) <= MIDLINE_TOLERANCE_MM + 0.1  # tip at the mid-sagittal plane
    y0 = _anterior_edge_y(ph, "T12")
    depth = ph.truth["vertebrae"]["T12"]["body_ap_depth_mm"]
    assert y0 - 0.5 <= loc[1] <= y0 + depth / 3.0 + 0.5  # anterior third (0.5 mm: voxel edge)
    assert not [w for w in warns if w.severity == "danger"]


def test_needles_graded_A_against_phantom_labels(fracture_case):
    from spineplan.safety import check_plan

    ph, sp, acc, _ = fracture_case
    res = check_plan(Plan(access=acc), ph.ct, ph.labels)
    assert len(res) == len(acc)
    for r in res:
        assert r.kind == "needle" and r.grade == "A" and r.vertebra_found == "T12"
        assert r.min_margin_mm >= 1.0 - 0.3  # planner margin 1 mm, surface-sampling tolerance


def test_skin_point_on_the_skin_and_on_the_path(fracture_case):
    ph, sp, acc, _ = fracture_case
    for a in acc:
        skin, entry, tip = (np.asarray(p, float) for p in (a.skin, a.entry, a.target))
        d = (tip - entry) / np.linalg.norm(tip - entry)
        # collinear: the skin lies on the needle line, behind the entry
        back = entry - skin
        assert np.linalg.norm(np.cross(back, d)) < 0.5 and back @ d > 20.0
        hu_out = ph.ct.sample((skin - 3.0 * d)[None], order=1, fill=-1000.0)[0]
        hu_in = ph.ct.sample((skin + 3.0 * d)[None], order=1, fill=-1000.0)[0]
        assert hu_out < -500.0 < hu_in  # air outside, tissue inside
        assert a.extra["skin_to_target_mm"] == pytest.approx(np.linalg.norm(tip - skin), abs=0.1)
        # cement: 16.2 % of a body volume of 10-60 mL
        assert 0.162 * 10 <= a.extra["cement_ml_level"] <= 0.162 * 60


def test_skin_outside_the_scan_is_said_not_guessed():
    """A scan cut 6 mm behind the spinous processes shows no skin: the needle's skin point must not
    be the scan's edge; it is marked as estimated, with a warning, and no skin-to-target distance."""
    ph = get_phantom(**{**FRACTURE_KW, "fov": "spine"})
    acc, warns = plan_access(ph.ct, _spine(ph))
    assert acc
    outside = {(w.level, w.code) for w in warns if w.code == "skin-outside-scan"}
    for a in acc:
        assert (a.level, "skin-outside-scan") in outside
        assert a.extra["skin_to_target_mm"] is None
        skin = np.asarray(a.skin, float)
        # the estimated point is outside the scan (the scan's edge is not the skin)
        ijk = ph.ct.world_to_index(skin[None])[0]
        assert np.any(ijk < 0) or np.any(ijk > np.array(ph.ct.shape) - 1)


def test_user_levels_and_thin_needle():
    ph = get_phantom(**FRACTURE_KW)
    sp = _spine(ph)
    acc, warns = plan_access(ph.ct, sp, ["L1", "L6"], procedure="vertebroplasty", gauge=13)
    assert [a.level for a in acc] == ["L1"] and acc[0].extra["needle_od_mm"] == pytest.approx(2.41)
    codes = {(w.code, w.level) for w in warns}
    assert ("level-missing", "L6") in codes and ("not-fractured", "L1") in codes


def test_narrow_thoracic_pedicle_goes_extrapedicular():
    from spineplan.safety import check_plan

    ph = get_phantom(**NARROW_KW)
    sp = _spine(ph, with_fracture=False)
    w = ph.truth["vertebrae"]["T12"]["pedicles"]["left"]["isthmus_width_mm"]
    assert w < 3.05 + 2.0  # narrower than an 11 G needle plus 1 mm margins
    acc, warns = plan_access(ph.ct, sp, ["T12"])
    assert sorted(a.side for a in acc) == ["left", "right"]
    assert all(a.extra["approach"] == "extrapedicular" for a in acc)
    assert sum(x.code == "access-extrapedicular" for x in warns) == 2
    lab = np.asarray(ph.labels.array)
    for a, r in zip(acc, check_plan(Plan(access=acc), ph.ct, ph.labels)):
        assert r.grade == "A"
        # from the skin to 3 mm before the entry the needle meets no vertebra (not the pedicle)
        skin, entry = np.asarray(a.skin), np.asarray(a.entry)
        d = (entry - skin) / np.linalg.norm(entry - skin)
        ts = np.arange(0.0, np.linalg.norm(entry - skin) - 3.0, 0.5)
        ijk = np.rint(ph.labels.world_to_index(skin + ts[:, None] * d)).astype(int)
        ok = np.all((ijk >= 0) & (ijk < lab.shape), axis=1)
        assert not lab[tuple(ijk[ok].T)].any()
        # the tip lies in the anterior third of the body
        loc = _local(ph, "T12", a.target)
        y0 = _anterior_edge_y(ph, "T12")
        assert loc[1] <= y0 + ph.truth["vertebrae"]["T12"]["body_ap_depth_mm"] / 3.0 + 0.5


def test_bad_inputs():
    from spineplan.errors import PlanningError

    ph = get_phantom(**FRACTURE_KW)
    sp = _spine(ph)
    with pytest.raises(PlanningError, match="procedure"):
        plan_access(ph.ct, sp, ["T12"], procedure="fusion")
    with pytest.raises(PlanningError, match="gauge"):
        plan_access(ph.ct, sp, ["T12"], gauge=7)


def test_bipedicular_on_request_each_tip_in_its_half():
    from spineplan.safety import check_plan

    ph = get_phantom(**FRACTURE_KW)
    sp = _spine(ph)
    acc, warns = plan_access(ph.ct, sp, ["T12"], approach="bipedicular")
    assert sorted(a.side for a in acc) == ["left", "right"]
    assert all(a.extra["approach"] == "bipedicular" for a in acc)
    y0 = _anterior_edge_y(ph, "T12")
    depth = ph.truth["vertebrae"]["T12"]["body_ap_depth_mm"]
    for a, r in zip(acc, check_plan(Plan(access=acc), ph.ct, ph.labels)):
        assert r.grade == "A"
        loc = _local(ph, "T12", a.target)
        assert (loc[0] > -1.0) if a.side == "left" else (loc[0] < 1.0)  # own half (1 mm slack)
        assert y0 - 0.5 <= loc[1] <= y0 + depth / 3.0 + 0.5
    # the level's cement estimate is shared between the two needles
    assert acc[0].extra["cement_ml"] + acc[1].extra["cement_ml"] == pytest.approx(acc[0].extra["cement_ml_level"], abs=0.11)
    with pytest.raises(Exception, match="approach"):
        plan_access(ph.ct, sp, ["T12"], approach="sideways")
