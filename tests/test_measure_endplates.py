"""Endplate planes (and so each vertebra's z axis, its sagittal pedicle angles and its C-arm true
AP) on coarse voxels, against the phantom's exact frames.

Edges found on interpolated CT profiles err by a function of where the surface lies between two
voxel centres (+-0.5-1 mm at 2 mm voxels); over an endplate a few degrees off the grid that error
changes steadily and tilted the fitted planes by 2-3.5 deg (this phantom at 2 mm: L2 3.3 deg,
sagittal pedicle angles of L2 up to 3.4 deg off). The planes from bone mass do not depend on it."""

from __future__ import annotations

import numpy as np
import pytest

from _measure import measured_phantom

#: Lordotic, rotated T12-L2 (PEDICLE_CASES seed 12 of benchmarks/bench_measure.py), 2 mm voxels.
#: (The same phantom as test_measure_pedicle_axes' 2 mm case, measured once per session.)
CASE = dict(spacing=2.0, fov="spine", noise_hu=10.0, levels="T12-L2", seed=12, lordosis_deg=55.0, rotation_deg=-8.0)


def _tilt(truth_axes: dict, z) -> tuple[float, float]:
    """Sagittal and coronal tilt (deg) of ``z`` in the truth frame."""
    T = np.array([truth_axes[k] for k in "xyz"])
    q = T @ np.asarray(z, float)
    return float(np.degrees(np.arctan2(q[1], q[2]))), float(np.degrees(np.arctan2(q[0], q[2])))


@pytest.fixture(scope="module")
def coarse():
    return measured_phantom(**CASE)


def test_frames_follow_the_endplates_at_2mm(coarse):
    ph, spine = coarse
    for name, tv in ph.truth["vertebrae"].items():
        sag, cor = _tilt(tv["axes"], spine[name].frame.axes[2])
        # the target is 2 deg for the pedicle angles measured in this frame; the frame itself
        # within 1.2 deg (measured <= 1.0 on the six benchmark phantoms at 2 mm)
        assert abs(sag) < 1.2 and abs(cor) < 1.2, (name, sag, cor)


def test_sagittal_pedicle_angles_within_target_at_2mm(coarse):
    ph, spine = coarse
    for name, tv in ph.truth["vertebrae"].items():
        for side, p in spine[name].pedicles.items():
            t = tv["pedicles"][side]
            assert p.sagittal_angle_deg == pytest.approx(t["sagittal_angle_deg"], abs=2.0), (name, side)
            assert p.transverse_angle_deg == pytest.approx(t["transverse_angle_deg"], abs=2.0), (name, side)


def test_superior_endplate_normal_for_the_carm(coarse):
    """The C-arm's true AP is set from the measured superior endplate: its normal is within
    2 deg of the truth's (the truth's rim plane; the measured plane is the central part's,
    whose concavity tilts it by ~1-1.5 deg in this phantom)."""
    ph, spine = coarse
    for name, tv in ph.truth["vertebrae"].items():
        n = np.asarray(spine[name].endplates["superior"]["normal"], float)
        t = np.asarray(tv["superior_endplate"]["normal"], float)
        ang = float(np.degrees(np.arccos(np.clip(abs(n @ t) / np.linalg.norm(n), -1, 1))))
        assert ang < 2.0, (name, ang)
