"""Skin surface and incisions on a synthetic torso with an analytic skin (tests/_plan_outputs.py)."""

from __future__ import annotations

import numpy as np
import pytest

from _plan_outputs import B_MM, FAT_MM, SPACING, ellipse_residual, torso
from spineplan.plan.incisions import MAX_INCISION_MM, plan_incisions, stab_length
from spineplan.plan.model import Plan, Screw
from spineplan.plan.skin import BODY_THRESHOLD_HU, SkinSurface


@pytest.fixture(scope="module")
def ct():
    return torso()


@pytest.fixture(scope="module")
def skin(ct):
    return SkinSurface(ct)


def _screw(level, side, entry, direction, length=45.0):
    d = np.asarray(direction, float)
    d /= np.linalg.norm(d)
    e = np.asarray(entry, float)
    return Screw(level, side, e.tolist(), (e + length * d).tolist(), 6.5, length, grade="A")


def test_exit_point_lies_on_the_skin(ct, skin):
    for entry, d in [((20, 20, 0), (0, -1, 0)), ((-25, 25, 10), (0.25, -1, 0.1)), ((30, 10, -20), (-0.4, -1, -0.2))]:
        hit = skin.exit_point(np.asarray(entry, float), -np.asarray(d, float))
        assert hit is not None
        p = hit.point
        # on the analytic ellipse within one voxel
        assert ellipse_residual(p) < SPACING
        # and the CT goes from tissue to air across it within ~1 voxel along the normal
        inner = ct.sample((p - SPACING * hit.normal)[None], order=0)[0]
        outer = ct.sample((p + SPACING * hit.normal)[None], order=0)[0]
        assert inner > BODY_THRESHOLD_HU > outer
        # the normal is outward: its y component is positive on the back
        assert hit.normal[1] > 0.5
        # depth is the distance travelled
        assert hit.depth_mm == pytest.approx(np.linalg.norm(p - np.asarray(entry, float)), abs=1e-6)


def test_fascia_found_under_the_fat_layer(skin):
    hit = skin.exit_point(np.array([0.0, 20.0, 0.0]), np.array([0.0, 1.0, 0.0]))
    # skin at y = 80, fat from 65 to 80: fascia 45 mm from the start (within ~1 voxel)
    assert hit.depth_mm == pytest.approx(B_MM - 20.0, abs=SPACING)
    assert hit.fascia_depth_mm == pytest.approx(B_MM - FAT_MM - 20.0, abs=1.5 * SPACING)


def test_ray_leaving_the_scan_gives_none(skin):
    assert skin.exit_point(np.array([0.0, 20.0, 0.0]), np.array([0.0, 0.0, 1.0])) is None


def test_stab_length_of_an_oblique_cylinder():
    # axis tilted 60 degrees from the normal in the cranio-caudal plane: footprint 16 / cos 60 = 32
    d = [0.0, -np.cos(np.radians(60)), np.sin(np.radians(60))]
    assert stab_length(d, [0, 1, 0], [0, 0, 1], diameter_mm=16, margin_mm=4) == pytest.approx(36.0, abs=1e-6)
    # tilted in the transverse plane only: the cranio-caudal extent stays the diameter
    d = [np.sin(np.radians(40)), -np.cos(np.radians(40)), 0.0]
    assert stab_length(d, [0, 1, 0], [0, 0, 1], diameter_mm=16, margin_mm=4) == pytest.approx(20.0, abs=1e-6)


def _pair_plan(spacing_mm):
    """Two levels x two sides, trajectories straight anterior, entries ``spacing_mm`` apart in z."""
    p = Plan()
    for lv, z in (("L4", spacing_mm / 2), ("L5", -spacing_mm / 2)):
        for side, x in (("left", 20.0), ("right", -20.0)):
            p.screws.append(_screw(lv, side, (x, 30.0, z), (0, -1, 0)))
    return p


def test_separate_stab_incisions_when_entries_are_far(skin):
    plan = _pair_plan(40.0)
    inc = plan_incisions(plan, skin)
    assert len(inc) == 4
    for i in inc:
        assert len(i.screws) == 1
        # straight trajectory through a skin parallel to z: extender 16 + margin 4
        assert i.length_mm == pytest.approx(20.0, abs=0.5)
        s = plan.screws[i.screws[0]]
        # the skin entry is straight behind the bony entry, on the skin
        assert s.extra["skin_entry"][0] == pytest.approx(s.entry[0], abs=1e-3)
        assert ellipse_residual(s.extra["skin_entry"]) < SPACING
        assert i.extra["distance_from_midline_mm"] == pytest.approx(20.0, abs=0.1)
        assert s.extra["skin_depth_mm"] == pytest.approx(B_MM * np.sqrt(1 - (20 / 110) ** 2) - 30, abs=SPACING)
        # oriented cranio-caudally
        v = np.subtract(i.end, i.start)
        assert abs(v[2]) / np.linalg.norm(v) > 0.99
    assert plan.extra["incisions_total_mm"] == pytest.approx(80.0, abs=2.0)
    assert not [w for w in plan.warnings if w.code == "incision-long"]


def test_narrow_bridge_keeps_stabs_separate_when_one_incision_would_be_long(skin):
    plan = _pair_plan(25.0)  # stabs of 20 mm 25 mm apart: skin bridge 5 mm < 10 mm, one incision 45 mm
    inc = plan_incisions(plan, skin)
    assert len(inc) == 4 and not any(i.extra["merged"] for i in inc)
    assert all(i.length_mm <= MAX_INCISION_MM for i in inc)
    notes = [w for w in plan.warnings if w.code == "narrow-skin-bridge"]
    assert len(notes) == 2 and all("bridge of only 5 mm" in w.message for w in notes)
    assert not [w for w in plan.warnings if w.code == "incision-long"]


def test_overlapping_stabs_are_merged_and_flagged_when_long(skin):
    plan = _pair_plan(15.0)  # stabs of 20 mm 15 mm apart overlap: one incision of 15 + 20 = 35 mm
    inc = plan_incisions(plan, skin)
    assert len(inc) == 2
    for i in inc:
        assert sorted(i.screws) == sorted(k for k, s in enumerate(plan.screws) if s.side == i.side)
        assert i.extra["merged"]
        assert i.length_mm == pytest.approx(15.0 + 20.0, abs=1.0)
        assert "joins the skin entries of L4/L5" in i.extra["flag"] and "overlap" in i.extra["flag"]
    flags = [w for w in plan.warnings if w.code == "incision-long"]
    assert len(flags) == 2 and all("15 mm apart" in w.message for w in flags)


def test_close_entries_share_one_short_incision(skin):
    plan = _pair_plan(8.0)  # one incision of 8 + 20 = 28 mm serves both screws, within 30 mm
    inc = plan_incisions(plan, skin)
    assert len(inc) == 2 and all(i.extra["merged"] for i in inc)
    assert all(i.length_mm == pytest.approx(28.0, abs=1.0) for i in inc)
    assert not [w for w in plan.warnings if w.code == "incision-long"]


def test_threshold_between_merge_and_not(skin):
    # 31 mm apart -> bridge 11 mm: separate; 21 mm -> bridge 1 mm, merged 41 mm: still separate;
    # 19 mm -> stabs overlap by 1 mm: merged
    assert len(plan_incisions(_pair_plan(31.0), skin)) == 4
    assert len(plan_incisions(_pair_plan(21.0), skin)) == 4
    assert len(plan_incisions(_pair_plan(19.0), skin)) == 2


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory):
    from _plan_outputs import phantom_files
    from spineplan.io import read_ct
    from spineplan.phantom import load_truth

    files = phantom_files(tmp_path_factory.mktemp("ph"), levels="L2-L5", spacing=1.5)
    return read_ct(files["ct"]), load_truth(files["truth"])


def test_incisions_on_the_phantom_skin(phantom_case):
    """Screws along the phantom's true pedicle axes; each skin entry is on its skin surface."""
    ct, truth = phantom_case
    plan = Plan()
    for lv in ("L3", "L4", "L5"):
        for side in ("left", "right"):
            p = truth["vertebrae"][lv]["pedicles"][side]
            axis = np.asarray(p["axis"], float)
            entry = np.asarray(p["isthmus_center"], float) - 12.0 * axis
            plan.screws.append(_screw(lv, side, entry, axis, 45.0))
    skin = SkinSurface(ct)
    inc = plan_incisions(plan, skin)
    assert sum(len(i.screws) for i in inc) == 6
    h = float(ct.spacing.max())
    for s in plan.screws:
        p = np.asarray(s.extra["skin_entry"])
        d = s.direction()
        # along the trajectory: tissue one voxel inside, air one voxel outside
        assert ct.sample((p + h * d)[None], order=1)[0] > BODY_THRESHOLD_HU
        assert ct.sample((p - h * d)[None], order=1)[0] < BODY_THRESHOLD_HU
        # and the skin point is straight behind the entry along the axis
        v = p - np.asarray(s.entry)
        assert np.linalg.norm(np.cross(v, -d)) < 0.01 and v @ -d > 0  # (stored to 0.001 mm)
    # the phantom's posterior skin: y of the skin at the midline is given in truth["skin"]
    zy = np.asarray(truth["skin"]["posterior_midline_y_at_z"], float)
    for i in inc:
        c = np.asarray(i.extra["centre"])
        y_mid = np.interp(c[2], zy[:, 0], zy[:, 1])
        assert c[1] <= y_mid + h  # never behind the midline skin (the back is convex)
        assert 0 < i.extra["distance_from_midline_mm"] < 80


def test_ct_table_attached_by_thin_pads_is_not_skin():
    """A 4 mm table top (+300 HU) 4 mm behind the back, joined to it by 2 mm pads, is not skin."""
    ct = torso()
    arr = np.array(ct.array)
    xyz = ct.index_to_world(np.moveaxis(np.indices(ct.shape), 0, -1))
    x, y = xyz[..., 0], xyz[..., 1]
    plate = (y >= B_MM + 4.0) & (y <= B_MM + 8.0) & (np.abs(x) < 100)  # inside the 89 mm field of view
    pads = (y > B_MM - 4.0) & (y < B_MM + 5.0) & np.isin(np.round(x), [-19.0, 1.0, 21.0])  # one voxel wide (grid x = ..., -1, 1, ...)
    arr[(plate | pads) & (arr < -300)] = 300.0
    ct_table = ct.with_array(arr)
    start, up = np.array([1.0, 20.0, 0.0]), np.array([0.0, 1.0, 0.0])  # through the middle pad
    hit = SkinSurface(ct_table).exit_point(start, up)
    # the skin, not the table; a stub of the pad at most one voxel long may stay on the skin
    assert hit.point[1] == pytest.approx(B_MM, abs=1.5 * SPACING)
    # without the opening the table would be part of the body
    raw = SkinSurface(ct_table, mask=ct_table.array > BODY_THRESHOLD_HU)
    assert raw.exit_point(start, up).point[1] > B_MM + 6


def test_fine_ct_body_outline_keeps_full_resolution():
    """On a 0.7 mm CT the body's connectivity is worked out on a coarser grid; the skin found
    must still be within one fine voxel of the true outline."""
    from spineplan.plan.skin import body_mask

    fine = torso(shape=(330, 260, 6), spacing=0.7)
    mask = body_mask(fine)
    raw = np.asarray(fine.array) > BODY_THRESHOLD_HU
    assert np.array_equal(mask, raw)  # a convex torso: the thresholded outline, exactly
    skin = SkinSurface(fine, mask=mask)
    for d in ((0.0, 1.0, 0.0), (0.5, 1.0, 0.0), (-0.8, 1.0, 0.0)):
        hit = skin.exit_point(np.array([0.0, 10.0, 0.0]), np.asarray(d))
        assert ellipse_residual(hit.point) < 0.7
