"""Adjacent vertebra frames out of line: a wrong endplate frame moves the C-arm angles, heights
and fracture grade measured in it, so build_spine reports a pair whose axes differ more than
normal spines allow, and stays quiet on strongly curved but correct spines."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from _phantoms import get_phantom
from spineplan.anatomy.model import VertebraFrame
from spineplan.anatomy.spine import SEGMENT_ANGLE_MAX_DEG, build_spine, frames_out_of_line


def _angle(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.degrees(np.arccos(np.clip(abs(a @ b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


@pytest.fixture(scope="module", params=[dict(lordosis_deg=60.0, seed=7), dict(scoliosis_deg=25.0, rotation_deg=15.0,
                                                                                seed=2)])
def curved(request):
    ph = get_phantom(fov="spine", levels="T12-L5", spacing=1.5, **request.param)
    return ph, build_spine(ph.ct, ph.labels)


def _tilted(spine, i: int = 2):
    """A copy of ``spine`` with vertebra ``i``'s frame tilted about its own x axis by 20 deg more
    than the limit (the true segmental angles of these phantoms are 2-15 deg)."""
    tilted = copy.deepcopy(spine)
    v = tilted.vertebrae[i]
    t = np.radians(SEGMENT_ANGLE_MAX_DEG + 20.0)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    v.frame = VertebraFrame(v.frame.origin, rot @ v.frame.axes)
    return tilted, v


def test_curved_spines_are_not_flagged(curved):
    ph, spine = curved
    truth = ph.truth["vertebrae"]
    names = [v.name for v in spine.vertebrae if v.name in truth]
    true_seg = [_angle(truth[a]["axes"]["z"], truth[b]["axes"]["z"]) for a, b in zip(names[:-1], names[1:])]
    assert max(true_seg) > 5.0  # the phantom really is curved (segmental angles of several degrees)
    assert not [w for w in spine.warnings if "cranio-caudal axes differ" in w]
    for v in spine.vertebrae:  # and its measured frames follow the truth
        assert _angle(v.frame.axes[2], truth[v.name]["axes"]["z"]) < 5.0, v.name


def test_a_tilted_frame_is_reported_with_both_levels(curved):
    _, spine = curved
    i = 2
    verts = _tilted(spine, i)[0].vertebrae
    out = frames_out_of_line(verts)
    assert len(out) == 2  # with the level above and the level below
    assert verts[i - 1].name in out[0] and verts[i].name in out[0] and verts[i + 1].name in out[1]
    verts[i].complete = False  # a vertebra cut by the scan has its own warning
    assert frames_out_of_line(verts) == []


def test_carm_table_marks_the_suspect_levels(curved):
    """The C-arm angles of a level whose frame is out of line are marked in the table the
    radiographer reads (and in plan.json's rows), not only in the warnings."""
    from spineplan.fluoro.views import SUSPECT_NOTE, angles_table_text, carm_angles
    from spineplan.report.surgeon import _carm_table

    _, spine = curved
    rows = carm_angles(spine)
    assert not any(r["frame_suspect"] for r in rows)
    assert SUSPECT_NOTE not in angles_table_text(rows)
    tilted, v = _tilted(spine)
    rows = carm_angles(tilted)
    marked = {r["level"] for r in rows if r["frame_suspect"]}
    assert marked == {tilted.vertebrae[i].name for i in (1, 2, 3)}
    text = angles_table_text(rows)
    assert SUSPECT_NOTE in text and f"{v.name}*" in text
    table = _carm_table(rows)
    assert f"{v.name}*" in [r[0] for r in table.rows] and SUSPECT_NOTE in table.caption


def test_carm_csv_carries_the_mark(curved, tmp_path):
    from spineplan.fluoro.views import carm_angles
    from spineplan.workflow import write_carm_csv

    _, spine = curved
    tilted, v = _tilted(spine)
    write_carm_csv(carm_angles(tilted), tmp_path / "carm.csv")
    import csv

    lines = (tmp_path / "carm.csv").read_text().splitlines()
    rows = list(csv.DictReader([ln for ln in lines if not ln.startswith("#")]))
    marked = {r["level"] for r in rows if r["frame_suspect"] == "yes"}
    assert marked == {tilted.vertebrae[i].name for i in (1, 2, 3)}
    assert {r["frame_suspect"] for r in rows} == {"yes", "no"}


def test_pairs_across_a_missing_transitional_level_are_checked(curved):
    """T12/L1 and L5/S1 are neighbours (T13 and L6 sit between them in the level list only):
    a frame tilted at L1 is reported with T12, not skipped."""
    from spineplan.levels import adjacent, level_above

    assert adjacent("T12", "L1") and adjacent("L5", "S1") and adjacent("L1", "L2")
    assert not adjacent("L4", "S1") and not adjacent("L1", "L1") and not adjacent("T11", "L1")
    # the level whose facet joint a screw must spare: the neighbour above, if it is present
    assert level_above("L1", ["L2", "T12", "T11"]) == "T12" and level_above("S1", ["L5", "S1"]) == "L5"
    assert level_above("L1", ["T11", "L1"]) is None and level_above("T11", ["T12"]) is None
    _, spine = curved
    i = [v.name for v in spine.vertebrae].index("L1")
    verts = _tilted(spine, i)[0].vertebrae
    out = frames_out_of_line(verts)
    assert any("T12 and L1" in w for w in out), out


def test_a_kyphotic_lumbosacral_segment_marks_l5_and_s1():
    """S1's endplate tilts forward more than L5's (lordosis, ~15-30 deg): not flagged. S1 measured
    18 deg tilted backwards against L5 (the abdomen CT's own sacrum label did) marks both frames
    suspect, with a warning; the same 18 deg as lordosis does not."""
    import numpy as np

    from spineplan.anatomy.model import Spine, Vertebra, VertebraFrame
    from spineplan.anatomy.spine import frames_out_of_line, frames_suspect, lumbosacral_kyphosis_deg
    from spineplan.levels import verse_code

    def tilted(deg):  # frame turned about x by deg: z leans posterior (+y, LPS) for deg > 0
        t = np.radians(deg)
        return np.array([[1.0, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])

    def spine(l5_deg, s1_deg):
        return Spine(vertebrae=[Vertebra(name=n, label=verse_code(n), frame=VertebraFrame(np.zeros(3), tilted(d)),
                                         complete=True) for n, d in (("L5", l5_deg), ("S1", s1_deg))], labels=None)

    lordotic, kyphotic = spine(-30.0, -48.0), spine(-30.0, -12.0)
    assert lumbosacral_kyphosis_deg(lordotic.vertebrae) == pytest.approx(-18.0, abs=0.01)
    assert lumbosacral_kyphosis_deg(kyphotic.vertebrae) == pytest.approx(18.0, abs=0.01)
    assert frames_suspect(lordotic) == set() and not frames_out_of_line(lordotic.vertebrae)
    assert frames_suspect(kyphotic) == {"L5", "S1"}
    assert any("18 deg kyphotic" in w for w in frames_out_of_line(kyphotic.vertebrae))
    assert frames_suspect(spine(-30.0, -22.0)) == set()  # 8 deg kyphotic: within the limit


def test_two_wrong_neighbours_do_not_keep_each_other_in_line():
    """The chest CT's own labels read T10 left 13.7 and T11 left 15.2 mm (rib heads in the label;
    their right sides lost to the left/right check) between T9 7.2 / 7.2 and T12 8.1 / 7.1 mm. With
    the mean of the adjacent levels T10's expectation was 9.9 mm (T11's 15.2 in it) and T10 left
    was reported. Both must be rejected; the in-line levels keep theirs."""
    from spineplan.anatomy.model import Pedicle, Vertebra
    from spineplan.anatomy.spine import _check_pedicles_against_neighbours
    from spineplan.levels import verse_code

    def vert(name, **widths):
        peds = {s: Pedicle(side=s, isthmus_center=np.zeros(3), axis=np.array([0.0, -1.0, 0.0]),
                           isthmus_width_mm=w, isthmus_height_mm=15.0, transverse_angle_deg=5.0,
                           sagittal_angle_deg=0.0) for s, w in widths.items()}
        return Vertebra(name=name, label=verse_code(name), frame=VertebraFrame(np.zeros(3), np.eye(3)),
                        complete=True, pedicles=peds)

    verts = [vert("T9", left=7.19, right=7.21), vert("T10", left=13.65), vert("T11", left=15.2),
             vert("T12", left=8.08, right=7.08)]
    _check_pedicles_against_neighbours(verts)
    got = {v.name: sorted(v.pedicles) for v in verts}
    assert got == {"T9": ["left", "right"], "T10": [], "T11": [], "T12": ["left", "right"]}, got
    assert any("T10: the left pedicle measurement was rejected" in w for w in verts[1].warnings)
