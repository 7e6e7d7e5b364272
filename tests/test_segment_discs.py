"""Disc detection along the spine's curve (spineplan.anatomy._discs) on synthetic core-HU profiles
with known disc positions: thin thoracic discs next to the dark, fatty middle of a body."""

from __future__ import annotations

import numpy as np

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
