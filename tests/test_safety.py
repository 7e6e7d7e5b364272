"""Safety grading on analytic shapes with known breaches (no planner involved)."""

from __future__ import annotations

import numpy as np
import pytest

from spineplan.anatomy.model import VertebraFrame
from spineplan.plan.model import Plan, Screw
from spineplan.safety import check_plan, gr_grade, grade_screw
from spineplan.volume import Volume

H = 0.25  # mm voxels: the digital cylinder's staircase stays well inside the 0.2 mm tolerance
R_BONE = 6.0  # bone cylinder radius (mm), axis along z (world), centred at x = y = 0
FRAME = VertebraFrame([0.0, 0.0, 0.0], np.eye(3))


@pytest.fixture(scope="module")
def bone():
    n = (int(32 / H), int(32 / H), int(32 / H))
    aff = np.diag([H, H, H, 1.0])
    aff[:3, 3] = [-16.0 + H / 2, -16.0 + H / 2, -16.0 + H / 2]
    grid = Volume(np.zeros(n, np.int16), aff)
    ijk = np.indices(n).reshape(3, -1).T
    xyz = grid.index_to_world(ijk).reshape(*n, 3)
    mask = (xyz[..., 0] ** 2 + xyz[..., 1] ** 2 <= R_BONE**2) & (np.abs(xyz[..., 2]) <= 12.0)
    return grid, mask


def _screw(offset_x, side="left", diameter=4.0, z0=-9.0, z1=9.0):
    return Screw(level="L4", side=side, entry=[offset_x, 0.0, z0], tip=[offset_x, 0.0, z1],
                 diameter_mm=diameter, length_mm=z1 - z0)


@pytest.mark.parametrize("breach, grade", [(0.0, "A"), (0.5, "B"), (1.7, "B"), (2.3, "C"), (3.7, "C"),
                                           (4.3, "D"), (5.7, "D"), (6.4, "E")])
def test_medial_breach_distance_and_grade(bone, breach, grade):
    """A 4 mm screw whose surface sticks out of the bone cylinder by a known distance toward -x
    (medial for a left screw): breach within 0.2 mm, the right grade and direction."""
    grid, mask = bone
    r = 2.0
    centre = -(R_BONE - r + breach) if breach > 0 else -(R_BONE - r - 1.0)  # 1 mm margin when none
    res = grade_screw(_screw(centre), mask, grid, frame=FRAME, pad_mm=8.0)
    assert res.grade == grade
    assert res.breach_mm == pytest.approx(breach, abs=0.2)
    if breach > 0:
        assert res.breach_direction == "medial"
        assert res.min_margin_mm == pytest.approx(-breach, abs=0.2)
    else:
        assert res.breach_direction is None
        assert res.min_margin_mm == pytest.approx(1.0, abs=0.2)


def test_direction_names_follow_side_and_axis(bone):
    grid, mask = bone
    # the same displacement toward +x is lateral for a left screw, medial for a right one
    left = grade_screw(_screw(R_BONE - 2.0 + 3.0, side="left"), mask, grid, frame=FRAME, pad_mm=8.0)
    right = grade_screw(_screw(R_BONE - 2.0 + 3.0, side="right"), mask, grid, frame=FRAME, pad_mm=8.0)
    assert left.breach_direction == "lateral" and right.breach_direction == "medial"
    assert left.grade == right.grade == "C"
    # along +y (posterior) out of the cylinder
    s = Screw(level="L4", side="left", entry=[0, 5.0, -8], tip=[0, 5.0, 8], diameter_mm=4.0, length_mm=16.0)
    assert grade_screw(s, mask, grid, frame=FRAME, pad_mm=8.0).breach_direction == "posterior"


def test_tip_through_the_end_is_superior_and_entry_zone_is_excluded(bone):
    grid, mask = bone
    # axis along +z from inside the bone: the tip pokes 3 mm past the top (z = 12)
    s = Screw(level="L4", side="left", entry=[0, 0, -1.0], tip=[0, 0, 15.0], diameter_mm=4.0, length_mm=16.0)
    res = grade_screw(s, mask, grid, frame=FRAME, pad_mm=8.0)
    assert res.breach_direction == "superior"
    assert res.breach_mm == pytest.approx(3.0, abs=0.2)
    # the entry starts 3 mm below the bottom end (z = -12): inside the 5 mm entry zone -> not a breach
    s = Screw(level="L4", side="left", entry=[0, 0, -15.0], tip=[0, 0, 1.0], diameter_mm=4.0, length_mm=16.0)
    res = grade_screw(s, mask, grid, frame=FRAME, pad_mm=8.0)
    assert res.grade == "A" and res.entry_zone_mm == 5.0
    assert any("first 5 mm behind the entry point" in n for n in res.notes)
    # with no entry zone, the same screw breaches by 3 mm at its entry
    res0 = grade_screw(s, mask, grid, frame=FRAME, entry_zone_mm=0.0, pad_mm=8.0)
    assert res0.breach_mm == pytest.approx(3.0, abs=0.2) and res0.breach_direction == "inferior"


def test_canal_intrusion_counts_even_in_the_entry_zone(bone):
    grid, mask = bone
    xyz = grid.index_to_world(np.indices(grid.shape).reshape(3, -1).T).reshape(*grid.shape, 3)
    canal = (np.abs(xyz[..., 0] + 1.0) <= 1.0) & (np.abs(xyz[..., 1]) <= 1.0) & (xyz[..., 2] < -10.0)
    s = Screw(level="L4", side="left", entry=[0, 0, -12.0], tip=[0, 0, 4.0], diameter_mm=4.0, length_mm=16.0)
    res = grade_screw(s, mask, grid, frame=FRAME, canal_mask=canal, pad_mm=8.0)
    assert res.grade != "A" and any("spinal canal" in n for n in res.notes)


def test_gr_thresholds():
    assert [gr_grade(x) for x in (0, 0.01, 1.99, 2.0, 3.99, 4.0, 5.99, 6.0, 20)] == \
        ["A", "B", "B", "C", "C", "D", "D", "E", "E"]


def test_check_plan_with_label_volume_names_the_vertebra(bone, tmp_path):
    grid, mask = bone
    labels = grid.with_array(np.where(mask, 23, 0).astype(np.uint8), modality="labels")  # VerSe 23 = L4
    plan = Plan(screws=[_screw(-(R_BONE - 2.0 + 2.5)), _screw(0.0, side="right")])
    plan.screws.append(Screw(level="L2", side="left", entry=[0, 0, -9], tip=[0, 0, 9], diameter_mm=4.0,
                             length_mm=18.0))
    p = tmp_path / "plan.json"
    plan.save(p)
    res = check_plan(Plan.load(p), grid, labels)
    assert [r.grade for r in res] == ["C", "A", "n/a"]
    assert res[0].breach_mm == pytest.approx(2.5, abs=0.2)
    assert res[0].vertebra_found is None  # its axis lies outside the bone
    assert res[1].vertebra_found == "L4" and res[1].min_margin_mm == pytest.approx(3.0, abs=0.2)  # the tip is 3 mm below the top
    assert res[0].facet_violation is None  # no vertebra above in these labels


def test_check_plan_grades_needles_as_thin_screws(bone):
    from spineplan.plan.model import Access

    grid, mask = bone
    labels = grid.with_array(np.where(mask, 23, 0).astype(np.uint8), modality="labels")
    # an 11 G needle (3.05 mm OD) along z, its surface 1.0 mm outside the bone toward +y
    off = R_BONE - 3.05 / 2 + 1.0
    plan = Plan(access=[Access(level="L4", procedure="kyphoplasty", side="left", skin=[0, off, -30.0],
                               entry=[0, off, -9.0], target=[0, off, 9.0], gauge=11)])
    (res,) = check_plan(plan, grid, labels)
    assert res.kind == "needle" and res.grade == "B"
    assert res.breach_mm == pytest.approx(1.0, abs=0.2) and res.breach_direction == "posterior"


# ----------------------------------------------------------------------------- per-line entry zone
def _oblique_rod(bone, tilt_deg: float, slot: tuple[float, float] | None = None):
    """The bone cylinder of ``bone`` with its lower end cut by a plane through (0, 0, -8) tilted by
    ``tilt_deg`` about y: bone where z >= -8 + x tan(tilt). A screw along +z entering on the axis at
    z = -8 has its surface line at x = +r entering r tan(tilt) mm later than the axis. ``slot``
    (z0, z1): bone removed for x > 1 mm between those heights (a gap the +x line crosses)."""
    grid, mask = bone
    xyz = grid.index_to_world(np.indices(grid.shape).reshape(3, -1).T).reshape(*grid.shape, 3)
    m = mask & (xyz[..., 2] >= -8.0 + xyz[..., 0] * np.tan(np.radians(tilt_deg)))
    if slot is not None:
        m &= ~((xyz[..., 0] > 1.0) & (xyz[..., 2] >= slot[0]) & (xyz[..., 2] <= slot[1]))
    return grid, m


def test_margin_starts_past_each_surface_lines_own_entry(bone):
    """Entry face tilted 50 deg: the 4 mm screw's +x line enters 2 tan 50 = 2.38 mm after the axis.
    The margin is each line's depth 5 mm past its own entry, 5 cos 50 = 3.21 mm (the rod's wall is
    4 mm away); judged 5 mm along the axis for every line (before session 7) it was
    (5 - 2.38) cos 50 = 1.68 mm. The grade is A either way."""
    grid, mask = _oblique_rod(bone, 50.0)
    s = Screw(level="L4", side="left", entry=[0, 0, -8.0], tip=[0, 0, 6.0], diameter_mm=4.0, length_mm=14.0)
    res = grade_screw(s, mask, grid, frame=FRAME, pad_mm=8.0)  # wall 4 mm, top end 6 mm away
    assert res.grade == "A" and res.breach_mm == 0.0
    assert res.min_margin_mm == pytest.approx(5.0 * np.cos(np.radians(50.0)), abs=0.2)
    assert any("own entry into the bone" in n for n in res.notes)


def test_line_lag_is_capped_and_a_line_outside_the_bone_past_the_axis_zone_is_a_breach(bone):
    """Entry face tilted 75 deg: the +x line of a 4 mm screw would enter 2 tan 75 = 7.46 mm after the
    axis; 5 mm along the axis it still lies (7.46 - 5) cos 75 = 0.64 mm outside the bone: a breach
    (grade B), whatever its own entry zone. Its margin zone is capped at r tan 60 deg = 3.46 mm past
    the axis's, so the per-line rule cannot reach the pedicle."""
    from spineplan.geometry import cylinder_surface
    from spineplan.safety import line_zone_ends

    grid, mask = _oblique_rod(bone, 75.0)
    s = Screw(level="L4", side="left", entry=[0, 0, -8.0], tip=[0, 0, 10.0], diameter_mm=4.0, length_mm=18.0)
    res = grade_screw(s, mask, grid, frame=FRAME, pad_mm=8.0)
    assert res.grade == "B"
    assert res.breach_mm == pytest.approx((2.0 * np.tan(np.radians(75.0)) - 5.0) * np.cos(np.radians(75.0)), abs=0.2)
    assert res.min_margin_mm == pytest.approx(-res.breach_mm, abs=1e-6)
    # the zone ends per line: 5 mm for lines entering at or before the axis, at most 5 + 3.46 mm
    surf = cylinder_surface([0, 0, -8.0], [0, 0, 10.0], 2.0, step_mm=0.4)
    sdf = np.where(surf.points[:, 2] >= -8.0 + surf.points[:, 0] * np.tan(np.radians(75.0)), -1.0, 1.0)
    ends = line_zone_ends(surf.t_mm, surf.on_cap, sdf, 2.0, 5.0)
    assert ends.min() == pytest.approx(5.0) and ends.max() == pytest.approx(5.0 + 2.0 * np.tan(np.radians(60.0)), abs=1e-6)


def test_a_gap_inside_a_lines_own_entry_zone_is_still_a_breach(bone):
    """Entry face tilted 50 deg (the +x line enters 2.38 mm after the axis, its margin judged from
    7.38 mm) with a 1 mm slot cut from x = 1 mm outward 5.5-6.5 mm along the axis: the +x line
    crosses the slot 0.5 mm from its walls, inside its own margin zone but past the axis's 5 mm, so
    it is a breach (~0.5 mm, grade B) exactly as before the per-line rule."""
    grid, mask = _oblique_rod(bone, 50.0, slot=(-8.0 + 5.5, -8.0 + 6.5))
    s = Screw(level="L4", side="left", entry=[0, 0, -8.0], tip=[0, 0, 10.0], diameter_mm=4.0, length_mm=18.0)
    res = grade_screw(s, mask, grid, frame=FRAME, pad_mm=8.0)
    assert res.grade == "B" and res.breach_mm == pytest.approx(0.5, abs=0.2)
    assert res.min_margin_mm < 0


def test_a_screw_running_beside_the_rod_is_graded_by_its_breach_under_the_per_line_rule(bone):
    """A 4 mm screw 2.5 mm lateral of the rod's wall (its +x lines never enter the bone) behind an
    oblique (50 deg) entry: graded C with the lateral breach, as with the axis-only zone; and the
    same screw pushed medially (-x) is a medial breach."""
    grid, mask = _oblique_rod(bone, 50.0)
    x0 = R_BONE - 2.0 + 2.5
    s = Screw(level="L4", side="left", entry=[x0, 0, 0.0], tip=[x0, 0, 10.0], diameter_mm=4.0, length_mm=10.0)
    res = grade_screw(s, mask, grid, frame=FRAME, pad_mm=8.0)
    assert res.grade == "C" and res.breach_direction == "lateral"
    assert res.breach_mm == pytest.approx(2.5, abs=0.2)
    s = Screw(level="L4", side="left", entry=[-x0, 0, 0.0], tip=[-x0, 0, 10.0], diameter_mm=4.0, length_mm=10.0)
    res = grade_screw(s, mask, grid, frame=FRAME, pad_mm=8.0)
    assert res.grade == "C" and res.breach_direction == "medial" and res.breach_mm == pytest.approx(2.5, abs=0.2)
