"""Pedicle angles and isthmus widths against the phantom's exact truth at 1 mm voxels (issue #3
targets: widths within 0.5 mm, pedicle angles within 2 deg; here a tighter 1 deg on the angles).

The phantoms carry lordosis, scoliosis and axial rotation; the labels are the phantom's own, so
what is tested is the measurement (frame from the endplates, pedicle axis, isthmus). Before the
axis came from a line through partial-volume section centres (measure._pv_axis), these phantoms
measured up to 0.82 deg (transverse) and 1.80 deg (sagittal) off at 1 mm: the bone-intensity
centroids of the sections are pulled caudally by the body below the pedicle's anterior end
(benchmarks/bench_measure.py --pedicles).

At 2 mm voxels the same line is used where the pedicle proper is long enough to carry its
direction (measure._line_gate); before, the tube fit alone gave the axis there and this phantom's
T12 right axis was 3.8 deg off (transverse 3.9 deg). The sagittal angle at 2-3 mm is still up to
~3.4 deg off, from the endplate frame (bench_measure.py --frames), and is not asserted there."""

from __future__ import annotations

import numpy as np
import pytest

from _measure import measured_phantom

WIDTH_TOL_MM = 0.5  # issue #3 target
ANGLE_TOL_DEG = 2.0  # issue #3 target
#: At 1 mm the measured p95 error is ~0.4 deg (bench_measure.py --pedicles): a tighter guard.
ANGLE_TOL_1MM_DEG = 1.0

#: (one phantom: 1 mm volumes are the slow ones; the other poses are in bench_measure.py --pedicles)
CASES = {"1mm-lordosis": (1.0, dict(levels="L1-L3", seed=10, lordosis_deg=40.0)),
         "2mm-lordosis-rotation": (2.0, dict(levels="T12-L2", seed=12, lordosis_deg=55.0, rotation_deg=-8.0))}
#: At 2 mm: the axis (frame-free) and the transverse angle; measured max 1.2 and 0.94 deg.
AXIS_TOL_2MM_DEG = 1.5


@pytest.fixture(scope="session", params=sorted(CASES))
def measured(request):
    sp, kw = CASES[request.param]
    # (noise_hu: make_phantom's default; the 2 mm case is test_measure_endplates.CASE, measured once)
    ph, spine = measured_phantom(spacing=sp, fov="spine", noise_hu=10.0, **kw)
    return sp, ph.truth, spine


def _pedicles(truth, spine):
    out = []
    for name, tv in truth["vertebrae"].items():
        if not tv["complete"] or name == "S1" or tv["fracture"]["grade"]:
            continue
        for side in ("left", "right"):
            out.append((name, side, spine[name].pedicles.get(side), tv["pedicles"][side]))
    return out


def test_every_pedicle_is_found(measured):
    _, truth, spine = measured
    peds = _pedicles(truth, spine)
    assert len(peds) >= 6
    assert all(p is not None for _, _, p, _ in peds), [(n, s) for n, s, p, _ in peds if p is None]


def test_isthmus_widths_within_target(measured):
    _, truth, spine = measured
    for name, side, p, t in _pedicles(truth, spine):
        assert p.isthmus_width_mm == pytest.approx(t["isthmus_width_mm"], abs=WIDTH_TOL_MM), (name, side)


def test_pedicle_angles_within_target(measured):
    sp, truth, spine = measured
    tol = ANGLE_TOL_1MM_DEG if sp <= 1.0 else AXIS_TOL_2MM_DEG
    for name, side, p, t in _pedicles(truth, spine):
        assert p.transverse_angle_deg == pytest.approx(t["transverse_angle_deg"], abs=tol), (name, side)
        if sp <= 1.0:  # (at 2 mm the frame's sagittal tilt dominates; see the module docstring)
            assert p.sagittal_angle_deg == pytest.approx(t["sagittal_angle_deg"], abs=tol), (name, side)
        # the axis itself (frame-free), and its isthmus centre on the true axis
        assert np.degrees(np.arccos(np.clip(p.axis @ np.asarray(t["axis"]), -1, 1))) < tol, (name, side)
        off = p.isthmus_center - np.asarray(t["isthmus_center"])
        assert np.linalg.norm(off - (off @ np.asarray(t["axis"])) * np.asarray(t["axis"])) < 0.5 * sp, (name, side)


def test_line_gate_needs_information_and_sections():
    """The line through the section centres is used (weight 1) for a run of >= 4 sections spread
    over >= 6 mm, not for the 3-4 mm runs of the real 3 mm abdomen CT, and not for two lone
    sections at the ends of the run (large spread, no line: the chest CT's T6 had 1.35 sections'
    weight at q = 17 mm^2)."""
    from spineplan.anatomy.measure import _line_gate

    offs = np.arange(-7.0, 2.01, 1.0)
    long_run = np.where((offs >= -5) & (offs <= 1), 1.0, 0.0)  # 7 sections over 6 mm: q = 28
    short_run = np.where((offs >= -1) & (offs <= 1), 1.0, 0.0)  # 3 sections over 2 mm: q = 2
    ends = np.zeros_like(offs)
    ends[[0, -1]] = 0.7  # two sections' halves 9 mm apart: q = 28, weight 1.4
    assert _line_gate(long_run, offs) == 1.0
    assert _line_gate(short_run, offs) == 0.0
    assert _line_gate(ends, offs) == 0.0
    assert _line_gate(np.zeros_like(offs), offs) == 0.0
