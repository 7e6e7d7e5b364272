"""The pedicle measurement is well-conditioned: perturbations that should not matter (the grid
shifted by 0.01 voxel, +-0.5 HU of noise) move no pedicle axis by more than 1 deg and no isthmus
width by more than 0.3 mm (height: 0.3 mm, 0.6 mm at 3 mm voxels); on the real 3 mm CT, noise
moves no axis by more than 2 deg and no width by more than 0.5 mm. Before the measurement was made continuous (soft choices
among near-equal fits, ramped fractions in the partial-volume fit, weighted line fits), such
perturbations moved the real abdomen CT's 3 mm pedicle axes by up to 25 deg."""

from __future__ import annotations

import numpy as np
import pytest

from _measure import measured_synthetic, pedicle_changes, perturbed
from spineplan.anatomy.measure import _robust_line, measure_vertebra

AXIS_TOL_DEG = 1.0
SIZE_TOL_MM = 0.3


def _measure_levels(ct, labels, codes):
    from scipy.ndimage import find_objects

    lab = np.asarray(labels.array).astype(np.int32)
    boxes = find_objects(lab)
    return [measure_vertebra(ct, lab[boxes[c - 1]] == c, name, c, bbox=boxes[c - 1]) for name, c in codes]


@pytest.fixture(scope="module")
def abdomen(data_file):
    from spineplan.io import read_ct, read_labels

    ct = read_ct(data_file("totalseg_example_abdomen/example_ct.nii.gz"))
    labels = read_labels(data_file("totalseg_example_abdomen/spine_report_totalseg.nii.gz"), ct).volume
    return ct, labels


#: The real CT's levels measured by the tests below (reference labels, each cropped by its box).
ABDOMEN_CODES = [("L1", 20), ("L2", 21)]


@pytest.fixture(scope="module")
def abdomen_ref(abdomen):
    """The unperturbed measurement every perturbation is compared with (measured once)."""
    ct, labels = abdomen
    ref = _measure_levels(ct, labels, ABDOMEN_CODES)
    assert sum(len(v.pedicles) for v in ref) >= 3
    return ref


def test_grid_shift_does_not_move_real_3mm_pedicles(abdomen, abdomen_ref):
    ct, labels = abdomen
    ch = pedicle_changes(abdomen_ref, _measure_levels(*perturbed(ct, labels, "shift"), ABDOMEN_CODES))
    assert not ch["flipped"], ch
    assert ch["axis_deg"] < AXIS_TOL_DEG, ch
    assert ch["width_mm"] < SIZE_TOL_MM and ch["height_mm"] < SIZE_TOL_MM, ch
    assert ch["centre_mm"] < 0.2, ch  # the shift itself is 0.03 mm per axis


#: Tolerances of the real-CT noise test (the goal for a surgeon's plan: 0.5 HU of noise must not
#: change it; the real 3 mm CT's own noise is some 20 HU, so these are not its accuracy).
NOISE_AXIS_TOL_DEG = 2.0
NOISE_WIDTH_TOL_MM = 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_half_hu_noise_does_not_move_real_3mm_pedicles(abdomen, abdomen_ref, seed):
    """+-0.5 HU of uniform noise on the real 3 mm abdomen CT (reference labels, L1-L2 cropped
    by their boxes): before the choices upstream of the fits were made soft (least-section
    direction, axis run, isthmus position, voxel weights, a consensus of sections), it moved
    the L1 right axis by 9-13 deg and its width by 3-4 mm."""
    ct, labels = abdomen
    ch = pedicle_changes(abdomen_ref, _measure_levels(*perturbed(ct, labels, "noise", seed), ABDOMEN_CODES))
    assert not ch["flipped"], ch
    assert ch["axis_deg"] < NOISE_AXIS_TOL_DEG, ch
    assert ch["width_mm"] < NOISE_WIDTH_TOL_MM, ch


#: Poses (rotation, lordosis, scoliosis, deg) per voxel size: at 1 and 2 mm those of test_measure.POSES
#: (the unperturbed vertebrae are measured once per session, tests/_measure.measured_synthetic).
NOISE_POSES = {1.0: (15.0, 10.0, 0.0), 2.0: (-10.0, -8.0, 6.0), 3.0: (8.0, 6.0, -5.0)}


@pytest.mark.parametrize("sp", sorted(NOISE_POSES))
def test_half_hu_noise_does_not_move_phantom_pedicles(sp):
    ct, mask, truth, ref = measured_synthetic(sp, *NOISE_POSES[sp], ped_w=8.0, ped_h=14.0, trans_deg=14.0)
    assert set(ref.pedicles) == {"left", "right"}
    labels = ct.with_array(mask.astype(np.uint8))
    c2, _ = perturbed(ct, labels, "noise", 0)
    ch = pedicle_changes([ref], [measure_vertebra(c2, mask, "L3", 22)])
    assert not ch["flipped"], (sp, ch)
    assert ch["axis_deg"] < AXIS_TOL_DEG, (sp, ch)
    assert ch["width_mm"] < SIZE_TOL_MM, (sp, ch)
    # the isthmus height of a 14 mm pedicle spans under 5 voxels at 3 mm: its fit is flatter
    assert ch["height_mm"] < (SIZE_TOL_MM if sp <= 2.0 else 0.6), (sp, ch)


def test_line_fit_has_no_cut_off():
    """A point moved across what used to be the outlier cut-off (3 x the median distance) turns
    the fitted line by a fraction of a degree, not by dropping the point."""
    rng = np.random.default_rng(3)
    t = np.linspace(-6, 6, 12)
    base = np.c_[t, 0.2 * t, np.zeros_like(t)] + rng.normal(0, 0.15, (12, 3))
    dirs = []
    for off in np.linspace(0.6, 1.4, 17):  # the last point pulled sideways
        pts = base.copy()
        pts[-1, 2] += off
        dirs.append(_robust_line(pts)[1])
    steps = [np.degrees(np.arccos(min(1.0, abs(float(a @ b))))) for a, b in zip(dirs, dirs[1:])]
    assert max(steps) < 0.3, steps
