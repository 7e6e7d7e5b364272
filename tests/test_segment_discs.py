"""Disc detection along the spine's curve (spineplan.anatomy._discs) on synthetic core-HU profiles
with known disc positions: thin thoracic discs next to the dark, fatty middle of a body."""

from __future__ import annotations

import numpy as np
import pytest

from spineplan.anatomy import _discs


def _thoracic_profile(dark_hu: float) -> tuple[np.ndarray, list[float]]:
    """Core HU every 1 mm over five thoracic vertebrae (period 23 mm): marrow at 150 HU, each thin
    disc a bright endplate-disc-endplate band (peaks 3 mm either side of the disc, +150 HU, the
    disc itself +60 HU) and each body's middle a 6 mm fatty patch at ``dark_hu``."""
    s = np.arange(0.0, 140.0, 1.0)
    prof = np.full_like(s, 150.0)
    discs = [24.0, 47.0, 70.0, 93.0, 116.0]
    for c in discs:
        prof += 150.0 * np.exp(-0.5 * ((s - c + 3.0) / 1.2) ** 2) + 150.0 * np.exp(-0.5 * ((s - c - 3.0) / 1.2) ** 2)
        prof += 60.0 * np.exp(-0.5 * ((s - c) / 1.0) ** 2)
    for c in discs[:-1]:
        mid = c + 11.5
        prof[np.abs(s - mid) <= 3.0] = dark_hu
    return prof, discs


def test_fatty_body_middle_is_not_a_thin_disc():
    prof, discs = _thoracic_profile(dark_hu=90.0)
    period = np.full(len(prof), 23.0)
    score = _discs.disc_score(prof, period)
    # the dark middles (60 HU below the marrow, 15-20 mm from the bright bands' peaks) were scored
    # as resolved discs by their depth below the window's maximum (the bands' flanks)
    for c in discs[:-1]:
        mid = int(c + 11.5)
        assert score[mid - 2 : mid + 3].max() < _discs.DISC_MIN_SCORE, (mid, score[mid - 2 : mid + 3])
    width = np.full(len(prof), 23.0 / _discs.PERIOD_PER_WIDTH)
    found = _discs.find_discs(prof, width)
    assert len(found) == len(discs), found
    assert np.all(np.abs(np.sort(found) - np.array(discs)) <= 2.0), found


def test_lumbar_dip_next_to_bone_island_is_kept():
    """The flank rule is for thin (thoracic) discs only: a resolved lumbar disc (period 40 mm)
    with a bright bone island 10-20 mm above it keeps its score."""
    s = np.arange(0.0, 200.0, 1.0)
    prof = np.full_like(s, 150.0)
    for c in (40.0, 80.0, 120.0, 160.0):
        prof[np.abs(s - c) <= 4] = 85.0  # 9 mm discs
        prof[np.abs(np.abs(s - c) - 5.5) <= 1.0] = 260.0  # endplates
    prof[(s >= 126) & (s <= 135)] = 400.0  # bone island 6-15 mm above the disc at 120
    period = np.full(len(prof), 40.0)
    score = _discs.disc_score(prof, period)
    assert score[118:123].max() > 60.0, score[118:123]


def test_canal_track_outliers_dropped_and_gaps_filled():
    """A canal track (1.5 mm voxels and slices) running straight at x = 40, y = 60 with three
    dark-speckle detections 15-20 mm off and two missed slices: the outliers go, the gaps are
    interpolated, the slices outside the tracked range stay unknown."""
    from spineplan.anatomy import _canal

    n = 60
    track = np.column_stack([np.full(n, 40.0), np.linspace(58.0, 62.0, n)])
    truth = track.copy()
    track[[10, 25, 40]] += [[12.0, 0.0], [0.0, 10.0], [-8.0, 9.0]]  # 13-18 mm jumps
    track[[30, 31]] = np.nan
    track[:5] = np.nan
    out = _canal.clean_track(track, np.array([1.5, 1.5, 1.5]), (5, n))
    assert np.all(np.isnan(out[:5]))
    assert np.max(np.abs(out[5:] - truth[5:])) * 1.5 < 0.5, np.abs(out[5:] - truth[5:]).max()


def test_enclosed_pockets_join_their_vertebra():
    """A pocket enclosed by one label in 3-D joins it; a pocket open on one side (the canal, a
    foramen) stays unlabelled; another label's voxels are never relabelled."""
    from spineplan.anatomy.segment import fill_enclosed_holes

    lab = np.zeros((30, 30, 30), np.uint8)
    lab[5:15, 5:15, 5:15] = 20  # a body ...
    lab[8:12, 8:12, 8:12] = 0  # ... with a closed 4x4x4 pocket (64 voxels)
    lab[18:28, 5:15, 5:15] = 21
    lab[21:25, 8:12, 8:15] = 0  # a pocket open towards +z
    lab[20:26, 9:11, 15:17] = 0
    lab[10:12, 20:25, 20:25] = 22
    before = lab.copy()
    fill_enclosed_holes(lab)
    assert np.all(lab[8:12, 8:12, 8:12] == 20)
    assert np.all(lab[21:25, 8:12, 8:15] == 0)
    changed = lab != before
    assert changed.sum() == 64 and np.all(before[changed] == 0)


def test_partial_volume_layer_trimmed_on_the_outside_only():
    """A labelled bone block (400 HU) whose outer voxel layer is 150 HU on one face (less than
    half bone between 40 HU soft tissue and the bone) and 300 HU on the opposite face (mostly
    bone): the first goes, the second stays; the 60 HU marrow around a 20 HU pocket inside the
    block (unlabelled) is not trimmed."""
    from spineplan.anatomy.segment import trim_partial_volume

    hu = np.full((24, 24, 24), 40.0, np.float32)
    lab = np.zeros(hu.shape, np.uint8)
    lab[4:20, 4:20, 4:20] = 20
    hu[4:20, 4:20, 4:20] = 400.0
    hu[19, 5:19, 5:19] = 150.0  # +x face layer
    hu[4, 5:19, 5:19] = 300.0  # -x face layer
    hu[9:15, 9:15, 9:15] = 60.0  # fatty marrow ...
    hu[11:13, 11:13, 11:13] = 20.0
    lab[11:13, 11:13, 11:13] = 0  # ... around an unlabelled pocket
    trim_partial_volume(lab, hu)
    assert np.all(lab[19, 6:18, 6:18] == 0)
    assert np.all(lab[4, 6:18, 6:18] == 20)
    assert np.all(lab[9:15, 9:15, 9:15][hu[9:15, 9:15, 9:15] == 60.0] == 20)
    assert np.all(lab[5:19, 5:19, 5:19][hu[5:19, 5:19, 5:19] == 400.0] == 20)


def _band_profile() -> tuple[np.ndarray, float]:
    """Core HU every 1 mm through one lumbar-sized vertebra pair: marrow at 140 HU, one resolved
    disc (a 70 HU dip, 8 mm) at 60 mm and, 25 mm below it, a bright sclerotic endplate band
    (+60 HU over 5 mm) inside the lower body."""
    s = np.arange(0.0, 90.0, 1.0)
    prof = np.full_like(s, 140.0)
    prof[np.abs(s - 60.0) <= 4.0] = 70.0
    band = 35.0
    prof[np.abs(s - band) <= 2.0] = 200.0
    return prof, band


def test_bright_band_is_a_disc_only_at_coarse_slices():
    """A bright band is a thin disc merged with its endplates only when the slices are coarse
    (2.5 mm); at 2 mm slices a disc would show as a dip, so the band is bone and scores nothing,
    while the resolved dip keeps its score at both spacings."""
    prof, band = _band_profile()
    period = np.full(len(prof), 40.0)
    b = int(band)
    coarse = _discs.disc_score(prof, period, slice_mm=2.5)
    fine = _discs.disc_score(prof, period, slice_mm=2.0)
    assert coarse[b - 2 : b + 3].max() > _discs.DISC_MIN_SCORE  # the thin-disc reading exists
    assert fine[b - 2 : b + 3].max() < 1e-9
    assert fine[57:64].max() > 60.0 and coarse[57:64].max() > 60.0
    width = np.full(len(prof), 40.0 / _discs.PERIOD_PER_WIDTH)
    found = _discs.find_discs(prof, width, slice_mm=2.0)
    assert len(found) == 1 and abs(int(found[0]) - 60) <= 2, found


def test_tangent_resmoothing_follows_the_disc_spacing():
    """A straight vertical spine whose body path wobbles 4 mm left-right with a 24 mm period (as
    the slice-wise path did within each lumbar body): with discs every 40 mm the tangent is
    smoothed over ~10 mm above the lowest disc and tilts far less there; below the lowest disc it
    stays as built (5 mm smoothing)."""
    z = np.arange(0.0, 240.0, 3.0)
    x = 4.0 * np.sin(2.0 * np.pi * z / 24.0)
    body = np.column_stack([x, np.zeros_like(z), z])
    canal = body + np.array([0.0, 25.0, 0.0])
    curve = _discs.build_curve(body, canal)
    discs = np.array([np.argmin(np.abs(curve.points[:, 2] - zd)) for zd in (40.0, 80.0, 120.0, 160.0, 200.0)])
    new = _discs.resmooth_tangent(curve, discs)

    def tilt(c, sel):
        return np.degrees(np.arccos(np.clip(c.tangent[sel, 2], -1.0, 1.0))).max()

    above = (new.points[:, 2] > 90.0) & (new.points[:, 2] < 190.0)
    below = new.points[:, 2] < 35.0
    assert tilt(curve, above) > 8.0  # the wobble as built
    assert tilt(new, above) < 0.5 * tilt(curve, above)
    assert np.allclose(new.tangent[below], curve.tangent[below], atol=1e-6)
    # the frame stays orthonormal
    assert np.allclose(np.einsum("ij,ij->i", new.tangent, new.posterior), 0.0, atol=1e-9)
    assert np.allclose(np.linalg.norm(new.lateral, axis=1), 1.0)


def test_short_caudal_end_takes_the_direction_of_the_body_above():
    """A straight vertical spine cut by the scan 28 mm below its lowest disc (a vertebra cut by
    the scan's edge, no sacrum: the L3 crop's L4 piece), whose path drifts 8 mm to the left over
    that piece: the tangent at and below the lowest disc follows the body above (within 2 deg),
    not the drift (5 mm smoothing there followed it: 25 deg at the L3 crop's L3/L4 disc)."""
    z = np.arange(0.0, 200.0, 3.0)
    x = np.where(z < 28.0, 8.0 * (28.0 - z) / 28.0, 0.0)
    body = np.column_stack([x, np.zeros_like(z), z])
    curve = _discs.build_curve(body, body + np.array([0.0, 25.0, 0.0]))
    discs = np.array([np.argmin(np.abs(curve.points[:, 2] - zd)) for zd in (28.0, 68.0, 108.0, 148.0)])
    new = _discs.resmooth_tangent(curve, discs)

    def tilt(c, sel):
        return np.degrees(np.arccos(np.clip(c.tangent[sel, 2], -1.0, 1.0))).max()

    end = curve.s <= curve.s[discs[0]] + 2.0
    assert tilt(curve, end) > 8.0  # the drift as built
    assert tilt(new, end) < 2.0, tilt(new, end)


def _lumbar_profile(period_mm: float = 34.0, n_discs: int = 5) -> tuple[np.ndarray, list[float]]:
    """Core HU every 1 mm at fine slices: marrow 205 HU, resolved 9 mm discs at 70 HU every
    ``period_mm``, each edged by a 2 mm endplate at 420 HU, flat body middles."""
    s = np.arange(0.0, period_mm * (n_discs + 1), 1.0)
    prof = np.full_like(s, 205.0)
    discs = [period_mm * (k + 1) for k in range(n_discs)]
    for c in discs:
        prof[np.abs(s - c) <= 4.0] = 70.0
        prof[(np.abs(s - c) > 4.0) & (np.abs(s - c) <= 6.0)] = 420.0
    return prof, discs


def test_flat_body_middle_is_no_disc_when_the_period_is_overestimated():
    """Bodies 23 mm between their endplates (true period 34 mm) but a period of 42 mm expected
    from their width: both endplates of a body fall within the quarter-period window around its
    flat middle, which scored ~200 HU deep (a 1.5 mm L1-L5 phantom's L4 was split there). The
    middle lies between its own walls with the discs, darker by 135 HU, beyond them: no disc."""
    prof, discs = _lumbar_profile(34.0)
    period = np.full(len(prof), 42.0)
    score = _discs.disc_score(prof, period, slice_mm=1.5)
    for a, b in zip(discs[:-1], discs[1:]):
        mid = int(round(0.5 * (a + b)))
        assert score[mid - 3 : mid + 4].max() < _discs.DISC_MIN_SCORE, (mid, score[mid - 3 : mid + 4])
    for c in discs:  # the discs keep their depth (marrow beyond the endplates is brighter)
        assert score[int(c) - 1 : int(c) + 2].max() > 100.0, c
    width = np.full(len(prof), 42.0 / _discs.PERIOD_PER_WIDTH)
    found = _discs.find_discs(prof, width, slice_mm=1.5)
    assert len(found) == len(discs), found
    assert np.all(np.abs(np.sort(found) - np.array(discs)) <= 2.0), found


#: Core, ring and shell (_discs.shell_profile) HU every 1 mm along the curve, and the body width
#: (mm), of a 3 mm L2-L4 phantom
#: (make_phantom(levels="L2-L4", spacing=3.0, seed=867, lordosis_deg=45.3, rotation_deg=15.0)),
#: caudal -> cranial: below L4, L4, the L3/L4 disc (dip at ~56), L3, the L2/L3 disc (~98), L2, whose
#: superior endplate is the blurred bright band at ~130-144 with soft tissue past it.
PHANTOM_3MM_CORE = [
    45, 45, 46, 48, 47, 48, 48, 51, 60, 118, 197, 291, 344, 336, 323, 303, 288, 268, 267, 270, 266, 291, 261,
    211, 206, 207, 209, 211, 207, 203, 201, 201, 205, 207, 205, 203, 201, 204, 206, 207, 207, 208, 214, 237,
    273, 298, 302, 305, 302, 309, 313, 249, 161, 99, 68, 66, 66, 67, 69, 92, 158, 228, 295, 309, 313, 335,
    295, 240, 213, 211, 212, 213, 211, 209, 207, 208, 211, 212, 212, 211, 207, 206, 207, 210, 210, 212, 213,
    228, 278, 329, 338, 331, 324, 269, 187, 106, 74, 73, 73, 75, 105, 165, 225, 282, 290, 291, 290, 291, 298,
    301, 276, 234, 211, 212, 214, 218, 217, 216, 216, 217, 219, 218, 214, 210, 211, 212, 214, 217, 239, 285,
    304, 307, 289, 279, 280, 279, 277, 267, 259, 267, 271, 269, 225, 184, 139, 84, 48, 47, 47, 49, 50, 49,
    50, 49]
PHANTOM_3MM_RING = [
    48, 48, 49, 50, 50, 51, 52, 53, 54, 55, 54, 67, 117, 209, 218, 220, 222, 218, 205, 205, 203, 201, 203,
    204, 204, 205, 207, 208, 205, 202, 202, 203, 205, 206, 206, 206, 208, 207, 204, 205, 204, 208, 212, 212,
    215, 212, 216, 226, 240, 257, 256, 237, 166, 96, 83, 87, 84, 83, 105, 114, 149, 198, 210, 211, 211, 214,
    232, 248, 250, 221, 217, 210, 211, 211, 212, 211, 211, 211, 211, 212, 211, 210, 212, 213, 214, 215, 217,
    215, 213, 209, 209, 209, 212, 214, 209, 180, 96, 94, 93, 87, 89, 93, 131, 181, 211, 221, 220, 216, 215,
    219, 222, 223, 222, 220, 214, 213, 213, 213, 214, 214, 213, 214, 214, 214, 215, 219, 223, 222, 223, 219,
    219, 215, 215, 216, 216, 216, 214, 214, 215, 209, 205, 160, 94, 57, 56, 59, 58, 53, 54, 48, 45, 45, 46,
    47]
PHANTOM_3MM_SHELL = [
    56, 55, 55, 57, 57, 58, 58, 61, 59, 58, 57, 88, 186, 282, 342, 317, 293, 335, 364, 346, 369, 336, 341,
    359, 364, 338, 362, 382, 345, 330, 378, 359, 351, 352, 340, 346, 348, 343, 342, 341, 338, 341, 329, 339, 335, 315,
    336, 327, 332, 293, 302, 291, 237, 161, 150, 227, 313, 317, 360, 375, 368, 362, 343, 315, 302, 290, 311, 323, 382,
    367, 335, 299, 296, 311, 316, 321, 333, 349, 347, 338, 347, 340, 333, 347, 362, 380, 370, 361, 355, 363, 368, 369,
    345, 376, 388, 346, 317, 243, 220, 190, 265, 319, 360, 354, 372, 340, 336, 343, 352, 348, 350, 355, 363, 360, 345,
    335, 329, 324, 323, 332, 347, 369, 377, 365, 367, 356, 363, 369, 340, 316, 308, 287, 279, 280, 271, 267, 278, 301,
    298, 271, 248, 225, 194, 153, 111, 73, 65, 62, 66, 64, 60, 59, 59, 59]
PHANTOM_3MM_WIDTH = [12, 13, 18, 20, 21, 23, 27, 29, 31, 34, 39, 41, 42, 43, 45, 46, 47, 48] + [49] * 6 + [50] * 10 \
    + [51] + [52] * 12 + [53] * 2 + [54] * 14 + [53] * 12 + [52] * 30 + [51] * 2 + [50] * 2 + [49] * 10 \
    + [48] * 2 + [47] * 4 + [46] * 4 + [45] * 5 + [44, 39, 34, 32, 32] + [30] * 4 + [29, 29, 28, 27, 26, 24, 23,
                                                                                     21, 20, 18, 17]


def test_top_endplate_band_before_soft_tissue_is_no_disc():
    """At 3 mm slices the top body's superior endplate is a blurred bright band with soft tissue
    (50 HU) past it, where the curve runs on beyond the spine: bright on both sides of its centre,
    it was scored as a thin disc merged with its endplates and the top vertebra's upper 10 mm
    became a vertebra of its own, every name below shifted by one (L2-L4 phantoms at 2.5 and
    3 mm, an L3-S1 at 3 mm). A real merged band has a vertebra's cortical shell on both sides
    (past this one: 59-66 HU); the two discs stay."""
    prof = np.asarray(PHANTOM_3MM_CORE, float)
    ring = np.asarray(PHANTOM_3MM_RING, float)
    width = np.asarray(PHANTOM_3MM_WIDTH, float)
    shell = np.asarray(PHANTOM_3MM_SHELL, float)
    assert len(prof) == len(ring) == len(width) == len(shell)
    found = _discs.find_discs(prof, width, ring=ring, slice_mm=3.0, shell=shell)
    # the two dark dips of the profile (read off the data above: 66-69 HU at 54-58, 73-75 at 96-99)
    assert len(found) == 2, found
    assert abs(int(found[0]) - 56) <= 3 and abs(int(found[1]) - 98) <= 3, found


def test_complete_top_vertebra_before_a_soft_tissue_tail_is_kept():
    """The curve runs on past the top body over soft tissue (a 0.8 mm T10-L2 phantom: 20 mm of T10's
    body core, then 20-30 mm of 50 HU). The segment's median core was soft and the complete top
    vertebra got no label; a piece beyond the last body with a few mm of endplate blur is still
    dropped (it holds the articular processes of the vertebra below)."""
    from types import SimpleNamespace

    from spineplan.anatomy import _instances
    from spineplan.anatomy.segment import _drop_bodyless_ends

    s = np.arange(0.0, 200.0, 1.0)
    discs = [40, 75, 110, 145]

    def run(body_top: float) -> int:
        prof = np.full_like(s, 220.0)
        for c in discs:
            prof[np.abs(s - c) <= 4.0] = 70.0
        prof[s > body_top] = 50.0
        curve = SimpleNamespace(s=s)
        segs = _drop_bodyless_ends(_instances.segments_from_discs(curve, np.asarray(discs)), curve, prof)
        assert [sg.label for sg in segs] == list(range(1, len(segs) + 1))
        return len(segs)

    assert run(172.0) == 5  # four discs: five segments, the top one a whole vertebra + 28 mm tail
    assert run(152.0) == 4  # 3 mm of bone past the last disc: no vertebra


def test_fill_holes_equals_scipy():
    """_bone.fill_holes (one labelling of the background) gives scipy's binary_fill_holes result
    for the per-slice, 6- and 26-connected structures on random 3-D masks, incl. one-voxel-thick
    and empty arrays."""
    from scipy import ndimage as ndi

    from spineplan.anatomy import _bone

    rng = np.random.default_rng(7)
    shapes = [tuple(int(x) for x in rng.integers(1, 20, 3)) for _ in range(25)] + [(1, 5, 5), (5, 1, 1), (0, 4, 4)]
    for shape in shapes:
        m = rng.random(shape) < rng.uniform(0.3, 0.8)
        for st in (None, _bone._PLANE, ndi.generate_binary_structure(3, 3)):
            assert np.array_equal(_bone.fill_holes(m, structure=st), ndi.binary_fill_holes(m, structure=st)), shape


def _straight_curve(z0: float = -40.0, z1: float = 40.0) -> _discs.Curve:
    """A curve along +z through x = y = 0 every 1 mm, posterior +y (lateral then +x)."""
    z = np.arange(z0, z1 + 0.5, 1.0)
    pts = np.column_stack([np.zeros_like(z), np.zeros_like(z), z])
    tan = np.tile([0.0, 0.0, 1.0], (len(z), 1))
    post = np.tile([0.0, 1.0, 0.0], (len(z), 1))
    return _discs._curve(pts, tan, post, z - z0)


#: The tilted disc of the synthetic column: its mid-plane is z = TILT_A x + TILT_B y.
TILT_A, TILT_B = 0.2, 0.1


def _tilted_disc_hu(p: np.ndarray) -> np.ndarray:
    """HU at LPS points (M, 3) of a column of bodies (marrow 250 HU) with a thin disc (90 HU, 4 mm)
    and its endplates (500 HU, 1.5 mm) tilted about 12.6 deg against the axial plane, and two
    flat discs at z = -25 and +25 mm."""
    v = np.full(len(p), 250.0)
    for d in (p[:, 2] - (TILT_A * p[:, 0] + TILT_B * p[:, 1]), p[:, 2] - 25.0, p[:, 2] + 25.0):
        v[np.abs(d) < 3.5] = 500.0
        v[np.abs(d) < 2.0] = 90.0
    return v


def test_disc_plane_fit_recovers_a_tilted_disc():
    curve = _straight_curve()
    discs = np.array([15, 40, 65])  # z = -25, 0, +25: period 25 mm (thoracic)
    width = np.full(len(curve.s), 30.0)
    planes = _discs.fit_disc_planes(_tilted_disc_hu, curve, discs, width, 0.85, max_period=35.0)
    c, a, b = planes[1]
    # lateral (x) and posterior (y) slopes of the disc's mid-plane within 0.03 (1.7 deg), centre 0.5 mm
    assert abs(a - TILT_A) < 0.03 and abs(b - TILT_B) < 0.03 and abs(c) < 0.5, planes[1]
    assert np.all(np.abs(planes[[0, 2]]) < [0.5, 0.03, 0.03]), planes
    # lumbar spacing: no plane is fitted (the flooding's cut stays)
    none = _discs.fit_disc_planes(_tilted_disc_hu, curve, discs, width, 0.85, max_period=20.0)
    assert not none.any(), none


def _shallow_disc_hu(p: np.ndarray) -> np.ndarray:
    """HU at LPS points (M, 3): a thin flat disc at z = 0 (190 HU, 2 mm) between endplates (300 HU,
    1.5 mm) that is brighter than the textured marrow of the body below it (110 +- 60 HU, 4 mm
    wavelength, its phase varying across the body: dark spots at every level), as at 2.5 mm slices
    in the upper thoracic spine; marrow above 250 HU; two more discs at z = +-26 mm."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    v = np.full(len(p), 250.0)
    lo = z < -2.5
    v[lo] = 110.0 + 60.0 * np.cos(2.0 * np.pi * z[lo] / 4.0 + 0.7 * x[lo] + 1.3 * y[lo])
    v[(np.abs(z) >= 1.0) & (np.abs(z) < 2.5)] = 300.0
    v[np.abs(z) < 1.0] = 190.0
    for zz in (-26.0, 26.0):
        v[np.abs(z - zz) < 3.5] = 500.0
        v[np.abs(z - zz) < 2.0] = 90.0
    return v


@pytest.mark.parametrize("pick_z, period", [(1.5, 28.0), (2.5, 30.0)])
def test_disc_plane_fit_finds_a_disc_brighter_than_the_marrow_beside_it(pick_z, period):
    """The disc pick sits on the upper endplate and the plane window reaches into the darker
    marrow below: each column's deepest dip between bright walls is the disc, not the darkest
    marrow spot (the fit through the darkest minima put the plane 4.3-4.4 mm into the marrow)."""
    curve = _straight_curve()
    z = curve.points[:, 2]
    discs = np.array([int(np.argmin(np.abs(z - (pick_z + d)))) for d in (-period, 0.0, period)])
    width = np.full(len(curve.s), 30.0)
    c, a, b = _discs.fit_disc_planes(_shallow_disc_hu, curve, discs, width, 0.85, max_period=35.0)[1]
    # the plane at z = 0 within 0.5 mm (a fifth of a 2.5 mm slice), flat within 0.03 (1.7 deg)
    assert abs(z[discs[1]] + c) < 0.5 and abs(a) < 0.03 and abs(b) < 0.03, (c, a, b)


def test_body_cut_follows_the_disc_plane_posterior_elements_keep_theirs():
    from spineplan.anatomy import _instances

    curve = _straight_curve()
    discs = np.array([15, 40, 65])
    # a 1 mm grid x, y in [-30, 30], z in [-20, 20]; two vertebrae cut flat at z = 0 (the flooding's cut)
    ax = np.arange(-30.0, 30.5, 1.0)
    az = np.arange(-20.0, 20.5, 1.0)
    X, Y, Z = np.meshgrid(ax, ax, az, indexing="ij")
    inst = np.where(Z > 0, 1, 2).astype(np.int32)
    nz = np.nonzero(np.ones(inst.shape, bool))
    xyz = np.column_stack([X[nz], Y[nz], Z[nz]])
    segs = [_instances.Segment(40.0, 65.0, label=1), _instances.Segment(15.0, 40.0, label=2)]
    planes = np.array([[0.0, 0.0, 0.0], [0.0, TILT_A, TILT_B], [0.0, 0.0, 0.0]])
    half = np.full(len(curve.s), 15.0)
    _instances.cut_at_disc_planes(inst, nz, xyz, segs, curve, discs, planes, half)
    plane_z = TILT_A * X + TILT_B * Y
    body = (np.abs(X) < 15.0) & (Y < _instances.DEPTH_PER_WIDTH * 15.0)
    off = np.abs(Z - plane_z) > 0.01
    want = np.where(Z > plane_z, 1, 2)
    assert np.array_equal(inst[body & off], want[body & off])
    # behind the body's posterior wall and lateral of it the flooding's cut (z = 0) stays
    assert np.array_equal(inst[~body], np.where(Z > 0, 1, 2)[~body])


def test_body_pocket_open_in_axial_slices_is_filled_in_sagittal_ones():
    from spineplan.anatomy import segment

    # one body (code 20, 1 mm voxels, L,P,S axes) with a 10 x 10 x 10 mm dark pocket that opens
    # through the left wall by a 4 mm high channel: open in every axial slice it spans, and in
    # coronal ones, enclosed in sagittal ones; behind the body (y >= 30) a second one, in the canal
    lab = np.zeros((40, 50, 30), np.uint8)
    lab[5:35, 5:45, 5:25] = 20
    hu = np.full(lab.shape, 300.0)
    pocket = (slice(15, 25), slice(10, 20), slice(10, 20))
    channel = (slice(25, 40), slice(12, 18), slice(13, 17))
    canal = (slice(15, 25), slice(32, 42), slice(10, 20))
    canal_ch = (slice(25, 40), slice(34, 40), slice(13, 17))
    for sl in (pocket, channel, canal, canal_ch):
        lab[sl] = 0
    hu[pocket] = 60.0  # fatty marrow
    hu[canal] = 60.0
    old = lab.copy()
    segment.fill_enclosed_holes(old)
    segment.fill_slice_pockets(old, np.zeros(lab.shape, bool), (1.0, 1.0, 1.0))
    assert not old[pocket].any()  # the 3-D and axial fills leave it open
    in_body = lambda idx: idx[:, 1] < 30  # noqa: E731 - in front of the posterior wall
    a = lab.copy()
    segment.fill_body_pockets(a, hu, in_body)
    assert (a[pocket] == 20).all()
    assert not a[canal].any()  # behind the posterior wall
    assert not a[35:40, 12:18, 13:17].any()  # the channel outside the body stays open
    # a CSF-dark pocket (below POCKET_MIN_HU) stays open
    b = lab.copy()
    hu[pocket] = 10.0
    segment.fill_body_pockets(b, hu, in_body)
    assert not b[pocket].any()


def _osteoporotic_profile(weak_peak: float, weak_at=(100, 140), extra_dip=None):
    """A 0.8 mm-like core profile (1 mm steps): osteoporotic marrow 77 HU, discs 70 HU over 9 mm
    with thin endplate peaks 6 mm either side; one disc with dense endplates (250 HU) at 58,
    weak ones (endplates ``weak_peak`` HU) at ``weak_at``; soft tissue (50 HU) past both ends."""
    n = 190
    p = np.full(n, 77.0)
    p[:8] = p[182:] = 50.0

    def disc(c, peak):
        p[c - 4 : c + 5] = 70.0
        for e in (c - 6, c + 6):
            p[e - 1 : e + 2] = [0.6 * peak + 0.4 * 77, peak, 0.6 * peak + 0.4 * 77]

    disc(58, 250.0)
    for c in weak_at:
        disc(c, weak_peak)
    if extra_dip is not None:
        disc(extra_dip, weak_peak)
    return p, np.full(n, 45.0)  # body width 45 mm: period ~38 mm


def test_weak_discs_fill_a_stretch_longer_than_the_period():
    p, w = _osteoporotic_profile(95.0)
    period = np.clip(_discs.capped_width(w) * _discs.PERIOD_PER_WIDTH, *_discs.PERIOD_MM)
    d = _discs.disc_score(p, period, slice_mm=0.8)
    # the weak dips score below the chain's bar on their own (else this test tests nothing)
    assert 0.5 * _discs.DISC_MIN_SCORE < d[100] < _discs.DISC_MIN_SCORE
    found = _discs.find_discs(p, w, slice_mm=0.8)
    # 58 -> 100 -> 140 -> end: gaps 42, 40, 42 mm against a 38 mm period; 1 mm tolerance
    assert len(found) == 3 and np.all(np.abs(found - [58, 100, 140]) <= 1), found


def test_weak_dip_not_added_where_the_spacing_is_already_complete():
    # dense discs every 40 mm with no missing one; a weak dip in a body's middle (20 mm from both
    # neighbours, half a period) must not become a disc
    n = 200
    p = np.full(n, 77.0)
    p[:6] = p[194:] = 50.0
    for c in (20, 60, 100, 140, 180):
        p[c - 4 : c + 5] = 70.0
        for e in (c - 6, c + 6):
            p[e - 1 : e + 2] = [180.0, 250.0, 180.0]
    p[116:125] = 70.0
    p[113:116] = p[125:128] = [83.0, 95.0, 83.0]
    w = np.full(n, 47.0)  # period 40 mm
    found = _discs.find_discs(p, w, slice_mm=0.8)
    assert np.all(np.abs(found - [20, 60, 100, 140, 180]) <= 1) and len(found) == 5, found


def _osteoporotic_sacrum_profile(sacral_shell_hu: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Core HU every 1 mm, caudal (index 0) -> cranial, of an osteoporotic L3-S1 at 0.8 mm, like the
    bench_naming phantoms (seeds 34 / 385): soft tissue, a sacrum whose marrow (69 HU) is as dark
    as the L5/S1 disc (70 HU) with the sacral endplate dim in the core (100 HU: oblique to the curve
    at the lumbosacral bend), L5, L4 and L3 with 73-77 HU marrow and bright endplates. Returns
    (profile, body width, shell profile); the shell over the sacrum is ``sacral_shell_hu``."""
    n = 215
    p = np.full(n, 75.0)
    shell = np.full(n, 250.0)
    p[:12] = p[205:] = 50.0  # soft tissue past both ends
    shell[:12] = shell[205:] = 55.0
    p[12:76] = 69.0  # sacrum
    shell[12:76] = sacral_shell_hu
    p[76:79] = [85.0, 100.0, 85.0]  # S1's superior endplate, dim in the core
    p[79:87] = 70.0  # L5/S1 disc
    p[87:90] = [150.0, 210.0, 150.0]  # L5's inferior endplate
    for c in (125, 165):  # L4/L5, L3/L4 discs with bright endplates
        p[c - 4 : c + 5] = 70.0
        for e in (c - 6, c + 6):
            p[e - 1 : e + 2] = [180.0, 280.0, 180.0]
    p[200:203] = [180.0, 280.0, 180.0]  # L3's superior endplate
    return p, np.full(n, 48.0), shell  # body width 48 mm: period ~41 mm


def test_weak_lumbosacral_disc_found_before_an_osteoporotic_sacrum():
    """The L5/S1 dip (true centre 83) scores below the chain's bar and the sacrum beyond it is no
    brighter than the disc: only the sacrum's cortical shell says a body lies there. Without the
    disc, L5 became part of the sacrum's label and every name above it shifted by one."""
    p, w, shell = _osteoporotic_sacrum_profile(250.0)
    period = np.clip(_discs.capped_width(w) * _discs.PERIOD_PER_WIDTH, *_discs.PERIOD_MM)
    d = _discs.disc_score(p, period, slice_mm=0.8)
    assert 0.5 * _discs.DISC_MIN_SCORE < d[80:86].max() < _discs.DISC_MIN_SCORE, d[80:86]
    found = _discs.find_discs(p, w, slice_mm=0.8, shell=shell)
    # discs at 83, 125, 165; 2 mm tolerance (the L5/S1 dip is a flat 8 mm stretch)
    assert len(found) == 3 and np.all(np.abs(found - [83, 125, 165]) <= 2), found


def test_weak_dip_before_soft_tissue_is_no_disc():
    """The same profile with soft tissue's shell (no cortex) around the dark stretch below the
    dip: no body lies beyond it, so the dip is not added (only the two bright discs)."""
    p, w, shell = _osteoporotic_sacrum_profile(60.0)
    found = _discs.find_discs(p, w, slice_mm=0.8, shell=shell)
    assert len(found) == 2 and np.all(np.abs(found - [125, 165]) <= 2), found


def test_label_cut_offset_measures_a_known_cut():
    """A label map with vertebra 10 above z = 1.5 + 0.1 x and 11 below z = -0.5 + 0.1 x (a 2 mm
    unlabelled disc between, mid-plane z = 0.5 + 0.1 x) against the plane (c, a, b) = (0, 0.1, 0)
    at z = 0 on a straight curve: the cut lies 0.5 mm cranial of the plane (within the 0.5 mm
    sampling step); with a = 0 the tilt's offsets cancel over the symmetric columns (0.5 again),
    and a map holding one label only has no cut."""
    curve = _straight_curve()
    di = int(np.argmin(np.abs(curve.points[:, 2])))

    def labels(p):
        z = p[:, 2] - 0.1 * p[:, 0]
        return np.where(z > 1.5, 10, np.where(z < -0.5, 11, 0))

    up, lo, off = _discs.label_cut_offset(labels, curve, di, (0.0, 0.1, 0.0), 15.0, 0.85)
    assert (up, lo) == (10, 11) and abs(off - 0.5) <= 0.25, (up, lo, off)
    assert abs(_discs.label_cut_offset(labels, curve, di, (0.0, 0.0, 0.0), 15.0, 0.85)[2] - 0.5) <= 0.25
    assert _discs.label_cut_offset(lambda p: np.full(len(p), 10), curve, di, (0.0, 0.0, 0.0), 15.0, 0.85) is None
