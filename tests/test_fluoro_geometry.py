"""C-arm geometry: projections checked against hand-derived pinhole math (tolerance 0.1 px)."""

import numpy as np
import pytest

from spineplan.errors import InputError
from spineplan.fluoro.geometry import CArm, Detector, Pose, carm_angles_of_direction

SDD = 1000.0
SID = 600.0
PIX = 300.0 / 256
CENTRE = (255 / 2, 255 / 2)  # pixel centres at integers: (W - 1) / 2
ISO = np.array([12.0, -30.0, -210.0])


def _carm(orbital=0.0, angular=0.0, patient="prone"):
    return CArm(Detector(sdd_mm=SDD, width_px=256, height_px=256, pixel_mm=PIX),
                Pose.from_carm(ISO, orbital, angular, sid_mm=SID, patient=patient))


def test_ap_prone_hand_pinhole():
    carm = _carm()
    # source is anterior (tube under the table of a prone patient): at iso - 600 mm in y
    np.testing.assert_allclose(carm.source_lps(), ISO - [0, SID, 0], atol=1e-9)
    pts = np.array([
        ISO,                              # principal ray -> centre
        ISO + [15.0, 0, 0],               # 15 mm to the patient's left at s = 600
        ISO + [0, 100.0, 20.0],           # 20 mm superior at s = 700 (farther from the source)
        ISO + [-8.0, -200.0, -5.0],       # right and inferior at s = 400
    ])
    expected = np.array([
        CENTRE,
        (CENTRE[0] + 15 * SDD / 600 / PIX, CENTRE[1]),     # patient left -> image right
        (CENTRE[0], CENTRE[1] - 20 * SDD / 700 / PIX),     # head up
        (CENTRE[0] - 8 * SDD / 400 / PIX, CENTRE[1] + 5 * SDD / 400 / PIX),
    ])
    np.testing.assert_allclose(carm.project(pts), expected, atol=0.1)
    _, depth = carm.project(pts, return_depth=True)
    np.testing.assert_allclose(depth, [600, 600, 700, 400], atol=1e-9)


def test_lateral_and_oblique_hand_pinhole():
    lat = _carm(angular=90.0)  # detector on the patient's left, source on the right
    np.testing.assert_allclose(lat.source_lps(), ISO - [SID, 0, 0], atol=1e-9)
    pts = np.array([ISO + [0, -10.0, 0], ISO + [50.0, 0, 12.0]])
    expected = [(CENTRE[0] + 10 * SDD / 600 / PIX, CENTRE[1]),  # anterior -> image right
                (CENTRE[0], CENTRE[1] - 12 * SDD / 650 / PIX)]
    np.testing.assert_allclose(lat.project(pts), expected, atol=0.1)

    obl = _carm(angular=45.0)  # detector swung 45 deg towards the patient's left
    d = np.array([np.sin(np.radians(45)), np.cos(np.radians(45)), 0.0])
    np.testing.assert_allclose(obl.pose.beam_direction, d, atol=1e-12)
    # a point 30 mm along the horizontal image axis: (cos45, -sin45, 0) at s = 600 + 40
    x_img = np.array([np.cos(np.radians(45)), -np.sin(np.radians(45)), 0.0])
    p = ISO + 40 * d + 30 * x_img
    np.testing.assert_allclose(obl.project(p), (CENTRE[0] + 30 * SDD / 640 / PIX, CENTRE[1]), atol=0.1)


def test_orbital_tilt_moves_detector_towards_head():
    carm = _carm(orbital=20.0)
    o = np.radians(20)
    np.testing.assert_allclose(carm.pose.beam_direction, [0, np.cos(o), np.sin(o)], atol=1e-12)
    # image 'up' is the superior direction tilted with the beam: (0, -sin o, cos o)
    up = np.array([0, -np.sin(o), np.cos(o)])
    np.testing.assert_allclose(carm.project(ISO + 25 * up), (CENTRE[0], CENTRE[1] - 25 * SDD / SID / PIX), atol=0.1)
    assert carm_angles_of_direction(carm.pose.beam_direction) == pytest.approx((20.0, 0.0), abs=1e-9)


def test_supine_ap_beam_posterior_to_anterior():
    carm = _carm(patient="supine")
    np.testing.assert_allclose(carm.pose.beam_direction, [0, -1, 0], atol=1e-12)
    # viewed from behind: patient's left is on the image's LEFT
    assert carm.project(ISO + [10.0, 0, 0])[0] == pytest.approx(CENTRE[0] - 10 * SDD / SID / PIX, abs=0.1)


def test_rays_and_backprojection_roundtrip():
    carm = _carm(orbital=-12.0, angular=33.0)
    uv = np.array([[0.0, 0.0], [255.0, 17.5], [100.25, 200.75]])
    o, d = carm.rays(uv)
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(o, np.broadcast_to(carm.source_lps(), o.shape))
    for t in (100.0, 750.0):
        np.testing.assert_allclose(carm.project(o + t * d), uv, atol=1e-6)
    p = carm.backproject(uv, np.array([550.0, 600.0, 640.0]))
    uv2, depth = carm.project(p, return_depth=True)
    np.testing.assert_allclose(uv2, uv, atol=1e-6)
    np.testing.assert_allclose(depth, [550, 600, 640], atol=1e-9)
    o_all, d_all = carm.rays()
    assert d_all.shape == (256, 256, 3)
    np.testing.assert_allclose(d_all[17, 200], carm.rays(np.array([200.0, 17.0]))[1], atol=1e-12)


def test_pose_params_compose_inverse():
    rng = np.random.default_rng(0)
    pose = Pose.from_carm(ISO, 17.0, -28.0)
    centre = ISO + [5, -3, 2]
    p6 = pose.params(centre)
    np.testing.assert_allclose(Pose.from_params(p6, centre).matrix(), pose.matrix(), atol=1e-9)
    # translation part is the C-arm position of the centre
    np.testing.assert_allclose(p6[3:], pose.apply(centre), atol=1e-9)
    # rotation vector (0, 0, 10 deg) = 10 deg about z; the centre lands at (1, 2, 3)
    q = Pose.from_params([0, 0, 10.0, 1.0, 2.0, 3.0], centre)
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    np.testing.assert_allclose(q.rotation, [[c, -s, 0], [s, c, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(q.apply(centre), [1, 2, 3], atol=1e-9)
    np.testing.assert_allclose(q.apply(centre + [1.0, 0, 0]), [1 + c, 2 + s, 3], atol=1e-9)
    pts = rng.normal(size=(5, 3)) * 50
    np.testing.assert_allclose(pose.inverse().apply(pose.apply(pts)), pts, atol=1e-9)
    motion = Pose.from_params([3.0, -2.0, 1.0, 4.0, 5.0, -6.0], [0, 0, 0])
    np.testing.assert_allclose(pose.compose(motion).apply(pts), pose.apply(motion.apply(pts)), atol=1e-9)
    with pytest.raises(InputError):
        Pose(np.diag([1.0, 1.0, -1.0]), np.zeros(3))


def test_carm_angles_invert_from_carm():
    for o, a in [(0, 0), (25, -40), (-15, 90), (10, 135), (-30, -100)]:
        pose = Pose.from_carm(ISO, o, a)
        assert carm_angles_of_direction(pose.beam_direction) == pytest.approx((o, a), abs=1e-9)
        # the formula of the module docstring
        d = [np.sin(np.radians(a)) * np.cos(np.radians(o)), np.cos(np.radians(a)) * np.cos(np.radians(o)),
             np.sin(np.radians(o))]
        np.testing.assert_allclose(pose.beam_direction, d, atol=1e-12)


def test_downsampled_detector_is_binning():
    carm = _carm(orbital=5, angular=10)
    small = carm.downsampled(4)
    assert small.detector.shape == (64, 64) and small.detector.pixel_mm == pytest.approx(4 * PIX)
    pts = ISO + np.array([[10.0, 5, -20], [-30, 0, 40]])
    # pixel centre u of the full grid lies at (u + 0.5) / 4 - 0.5 in the binned grid
    np.testing.assert_allclose(small.project(pts), (carm.project(pts) + 0.5) / 4 - 0.5, atol=1e-9)


def test_bad_inputs_raise():
    with pytest.raises(InputError):
        Detector(sdd_mm=-1)
    with pytest.raises(InputError):
        Pose.from_carm(ISO, 0, 0, patient="standing")
    with pytest.raises(InputError):
        Pose.from_beam(ISO, [0, 0, 1.0], up_lps=[0, 0, 1.0])
