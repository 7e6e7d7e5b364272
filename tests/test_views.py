"""Named C-arm views on a hand-built tilted and rotated vertebra (frames and pedicles known exactly)."""

import numpy as np
import pytest

from spineplan.anatomy.model import Pedicle, Spine, Vertebra, VertebraFrame
from spineplan.errors import InputError, PlanningError
from spineplan.fluoro.geometry import Detector
from spineplan.fluoro.views import angles_table_text, carm_angles, named_view
from spineplan.volume import Volume

ORIGIN = np.array([8.0, 40.0, -180.0])
SUP_HALF_HEIGHT = 12.0  # superior endplate 12 mm above the body centroid


def _rx(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _vertebra(name, rot, origin=ORIGIN):
    """A vertebra whose local frame is ``rot`` (columns = x, y, z axes in LPS)."""
    frame = VertebraFrame(origin, rot.T)  # rows = axes
    to_w = frame.to_world
    med = np.radians(10.0)
    peds = {}
    for side, sx in (("left", 1.0), ("right", -1.0)):
        axis_local = np.array([-sx * np.sin(med), -np.cos(med), 0.0])  # posterior -> anterior, converging
        peds[side] = Pedicle(side, to_w([sx * 15.0, 20.0, 3.0]), frame.axes.T @ axis_local, 7.0, 14.0)
    ep = {"superior": {"point": to_w([0, 0, SUP_HALF_HEIGHT]).tolist(), "normal": rot[:, 2].tolist()}}
    return Vertebra(name, 23, frame, pedicles=peds, endplates=ep)


def _local_points(v):
    to_w = v.frame.to_world
    ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ring = np.stack([18 * np.cos(ang), 14 * np.sin(ang), np.full_like(ang, SUP_HALF_HEIGHT)], axis=1)
    return {"endplate": to_w(ring), "ped_l": to_w([15.0, 20.0, 3.0]), "ped_r": to_w([-15.0, 20.0, 3.0]),
            "spinous": to_w([0.0, 45.0, -5.0]), "body": v.frame.origin}


def _spine(*verts):
    return Spine(vertebrae=list(verts), labels=None)


def test_true_ap_of_lordotic_rotated_vertebra():
    # lordotic tilt 18 deg about the left-right axis, then 9 deg axial rotation
    v = _vertebra("L4", _rz(9.0) @ _rx(18.0))
    spine = _spine(v)
    carm, info = named_view("L4-AP", spine=spine)
    p = _local_points(v)
    ep = carm.project(p["endplate"])
    assert np.ptp(ep[:, 1]) < 1.0  # endplate edge-on: one horizontal line (v-spread < 1 px)
    assert np.ptp(ep[:, 0]) > 40.0  # ... and it is a line, not a point
    ul, ur, us = carm.project(p["ped_l"])[0], carm.project(p["ped_r"])[0], carm.project(p["spinous"])[0]
    assert abs(us - (ul + ur) / 2) < 0.5  # spinous process centred between the pedicles
    assert ur < us < ul  # patient's left on the image's right (AP, beam's-eye view)
    # C-arm angles: the beam is the frame's y axis here, so orbital = asin(y_z), angular = atan2(y_x, y_y)
    y = v.frame.axes[1]
    assert info["orbital_deg"] == pytest.approx(np.degrees(np.arcsin(y[2])), abs=0.01)
    assert info["angular_deg"] == pytest.approx(np.degrees(np.arctan2(y[0], y[1])), abs=0.01)
    # lordosis: the endplate faces anterior-superior, so the beam must run caudal-anterior to
    # cranial-posterior (a Ferguson-type cephalad tilt): detector towards the head
    assert info["orbital_deg"] > 10
    assert "cranial" in info["description"]
    # the plain AP does not show this vertebra edge-on nor centred: the test can fail
    carm0, _ = named_view("AP", spine=spine)
    ep0 = carm0.project(p["endplate"])
    assert np.ptp(ep0[:, 1]) > 5.0
    u0 = carm0.project(np.stack([p["ped_l"], p["ped_r"], p["spinous"]]))[:, 0]
    assert abs(u0[2] - (u0[0] + u0[1]) / 2) > 3.0


def test_true_ap_with_coronal_tilt_is_a_line():
    v = _vertebra("L2", _rz(-6.0) @ _ry(7.0) @ _rx(-10.0))
    carm, _ = named_view("L2-AP", spine=_spine(v))
    p = _local_points(v)
    ep = carm.project(p["endplate"])
    centred = ep - ep.mean(axis=0)
    thickness = np.linalg.svd(centred, compute_uv=False)[1] / np.sqrt(len(ep)) * 2
    assert thickness < 1.0  # a line (tilted by the coronal tilt, as on the monitor)
    # symmetric about the projected mid-sagittal plane (line through body and spinous process)
    a, b = carm.project(p["body"]), carm.project(p["spinous"])
    mid = (carm.project(p["ped_l"]) + carm.project(p["ped_r"])) / 2
    t = (b - a) / np.linalg.norm(b - a)
    dist = abs((mid - a)[0] * t[1] - (mid - a)[1] * t[0])
    assert dist < 0.5


def test_true_lateral_endplate_edge_on_and_pedicles_superimposed():
    v = _vertebra("L5", _rz(5.0) @ _rx(25.0))
    carm, info = named_view("L5-LAT", spine=_spine(v))
    p = _local_points(v)
    ep = carm.project(p["endplate"])
    centred = ep - ep.mean(axis=0)
    assert np.linalg.svd(centred, compute_uv=False)[1] / np.sqrt(len(ep)) * 2 < 1.0
    ul, ur = carm.project(p["ped_l"]), carm.project(p["ped_r"])
    # perspective: the pedicles are ~20 mm behind the isocentre and +-15 mm deep, so their
    # images differ by about 20 * 1000 * (1/585 - 1/615) / 1.17 = 1.4 px
    assert np.linalg.norm(ul - ur) < 2.0
    # detector on the left, following the axial rotation: x = (cos 5, sin 5, 0) -> atan2(cos 5, sin 5) = 85
    assert info["angular_deg"] == pytest.approx(85.0, abs=0.01)
    # anterior (body) on the image's right of the spinous process in this lateral
    assert carm.project(p["body"])[0] > carm.project(p["spinous"])[0]


def test_owl_eye_along_pedicle_and_planned_screw():
    v = _vertebra("L4", _rz(4.0) @ _rx(12.0))
    spine = _spine(v)
    carm, info = named_view("owl:L4-left", spine=spine)
    ped = v.pedicles["left"]
    pts = np.stack([ped.isthmus_center - 15 * ped.axis, ped.isthmus_center, ped.isthmus_center + 25 * ped.axis])
    uv = carm.project(pts)
    np.testing.assert_allclose(uv, np.tile(carm.detector.principal_point, (3, 1)), atol=0.05)
    assert "pedicle axis" in info["description"]
    assert info["angular_deg"] > 0  # left pedicle converges medially: detector swung to the left
    # a planned screw overrides the pedicle axis
    entry = ped.isthmus_center - 12 * ped.axis + [1.0, 0, 0]
    tip = entry + 45 * np.array([-0.30, -0.95, -0.05]) / np.linalg.norm([-0.30, -0.95, -0.05])
    plan = {"screws": [{"level": "L4", "side": "left", "entry": entry.tolist(), "tip": tip.tolist(),
                        "diameter_mm": 6.5, "length_mm": 45.0}]}
    carm2, info2 = named_view("owl:L4-left", spine=spine, plan=plan)
    uv2 = carm2.project(np.stack([entry, tip]))
    assert np.linalg.norm(uv2[0] - uv2[1]) < 0.05  # looking down the barrel: entry and tip coincide
    assert "screw" in info2["description"]


def test_generic_views_and_angle_table():
    v4 = _vertebra("L4", _rx(10.0))
    v5 = _vertebra("L5", _rx(20.0), origin=ORIGIN + [0, 5.0, -35.0])
    spine = _spine(v4, v5)
    for name, ang in [("AP", 0.0), ("lat", 90.0), ("OBL-L", 45.0), ("OBL-R", -45.0)]:
        carm, info = named_view(name, spine=spine, detector=Detector.square(128))
        assert info["angular_deg"] == pytest.approx(ang, abs=1e-6) and info["orbital_deg"] == pytest.approx(0, abs=1e-6)
        np.testing.assert_allclose(info["isocentre_lps"], (v4.frame.origin + v5.frame.origin) / 2, atol=0.01)
        assert carm.detector.width_px == 128
    rows = carm_angles(spine)
    assert [r["level"] for r in rows] == ["L4", "L5"]
    # true-AP tilt follows the lordosis: 10 deg and 20 deg endplate tilt -> orbital +10 and +20
    assert rows[0]["true_ap"]["orbital_deg"] == pytest.approx(10.0, abs=0.01)
    assert rows[1]["true_ap"]["orbital_deg"] == pytest.approx(20.0, abs=0.01)
    assert rows[0]["owl_left"]["angular_deg"] == pytest.approx(10.0, abs=0.5)
    assert rows[0]["owl_right"]["angular_deg"] == pytest.approx(-10.0, abs=0.5)
    text = angles_table_text(rows)
    assert "L4" in text and "+10.0" in text
    with pytest.raises(PlanningError):
        named_view("L1-AP", spine=spine)
    with pytest.raises(PlanningError):
        named_view("L4-AP")
    with pytest.raises(InputError):
        named_view("sideways", spine=spine)


def test_ap_centre_from_ct_bone():
    # a bone cylinder (the spine) at x = -10, y = +30 in a soft-tissue box
    arr = np.full((60, 60, 20), 40, np.int16)
    ii, jj = np.meshgrid(np.arange(60), np.arange(60), indexing="ij")
    aff = np.array([[2.0, 0, 0, -60], [0, 2.0, 0, -60], [0, 0, 3.0, -100], [0, 0, 0, 1]])
    x = aff[0, 0] * ii + aff[0, 3]
    y = aff[1, 1] * jj + aff[1, 3]
    arr[(x + 10) ** 2 + (y - 30) ** 2 < 15 ** 2] = 700
    ct = Volume(arr, aff)
    _, info = named_view("AP", ct)
    np.testing.assert_allclose(info["isocentre_lps"], [-10.0, 30.0, -100 + 3.0 * 19 / 2], atol=2.1)


def test_orientation_letters_and_overlay_names():
    from spineplan.fluoro.overlay import draw_overlay, orientation_letters

    v = _vertebra("L4", np.eye(3))
    spine = _spine(v)
    carm, info = named_view("AP", spine=spine, detector=Detector.square(200))
    assert orientation_letters(carm, ORIGIN) == {"right": "L", "left": "R", "bottom": "F", "top": "H"}
    lat, _ = named_view("LAT", spine=spine, detector=Detector.square(200))
    assert orientation_letters(lat, ORIGIN) == {"right": "A", "left": "P", "bottom": "F", "top": "H"}
    img = draw_overlay(np.full((200, 200), 128, np.uint8), carm, spine=spine, title="AP")
    u, vv = carm.project(v.frame.origin)
    dot = img[int(round(vv)), int(round(u))]
    assert dot[0] > 200 and dot[1] > 200 and dot[2] < 80  # yellow dot at the body centre
    assert img.shape == (200, 200, 3) and (img[:100] != 128).any()


def test_check_view_name_and_image_roll():
    from spineplan.fluoro.views import check_view_name

    assert check_view_name(" owl:l4-LEFT ") == "owl:L4-left"
    assert check_view_name("t12-lat") == "T12-LAT" and check_view_name("obl-r") == "OBL-R"
    with pytest.raises(InputError):
        check_view_name("L4-PA")
    # coronal tilt of 7 deg: the endplate line is tilted on the monitor by about that much
    v = _vertebra("L2", _ry(7.0))
    carm, info = named_view("L2-AP", spine=_spine(v))
    ep = carm.project(_local_points(v)["endplate"])
    slope = np.degrees(np.arctan2(*(np.polyfit(ep[:, 0], ep[:, 1], 1)[0], 1.0)))
    assert info["image_roll_deg"] == pytest.approx(slope, abs=0.5)
    assert abs(info["image_roll_deg"]) > 5


def test_spine_centre_from_real_ct_near_labelled_vertebrae(data_file):
    from spineplan.fluoro.views import spine_centre_from_ct
    from spineplan.io import read_ct, read_labels

    ct = read_ct(data_file("totalseg_example_abdomen/example_ct.nii.gz"))
    labels = read_labels(data_file("totalseg_example_abdomen/spine_report_totalseg.nii.gz"), ct)
    centroid = ct.index_to_world(np.argwhere(np.asarray(labels.volume.array) > 0).mean(axis=0))
    est = spine_centre_from_ct(ct)
    # left-right within 5 mm; antero-posterior within 15 mm (half a vertebral body's depth)
    assert abs(est[0] - centroid[0]) < 5.0
    assert abs(est[1] - centroid[1]) < 15.0
