"""The compiled hot loop of the measurement agrees with its numpy formulation, and the tube's
covered fractions are continuous in its parameters (no staircase for the fit to stop on)."""

from __future__ import annotations

import numpy as np


def test_tube_fractions_match_numpy():
    from spineplan.anatomy import _pv

    rng = np.random.default_rng(1)
    dd = rng.uniform(-6, 6, size=(200, 27, 3))
    u, w = np.array([1.0, 0, 0]), np.array([0, 0.6, 0.8])
    for h in (0.35, 1.0):
        args = (dd, u, w, 0.3, -0.2, 4.0, 5.0, 3.0, 4.0, h)
        ia, ma = _pv.fractions(*args)
        ib, mb = _pv._fractions_numpy(*args)
        np.testing.assert_allclose(ia, ib, atol=1e-12)
        np.testing.assert_allclose(ma, mb, atol=1e-12)
        assert 0.05 < ia.mean() < 0.6 and (ma <= ia + 1e-12).all()


def test_tube_area_exact_and_continuous():
    """Over a fine grid the covered fraction integrates to the ellipse's area (pi a b) within 1 %,
    and widening the tube by 0.01 mm changes a boundary voxel's fraction by a small amount (a
    counted-in-or-out sub-sample would jump by 1/S or not move at all)."""
    from spineplan.anatomy import _pv

    step = 1.0
    g = np.arange(-12.0, 12.0, step) + 0.5 * step
    X, Y = np.meshgrid(g, g, indexing="ij")
    dd = np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], -1)[None]
    ex, ey = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    inside, marrow = _pv.fractions(dd, ex, ey, 0.13, -0.21, 4.5, 7.0, 3.5, 6.0, step)
    assert abs(inside[0] * dd.shape[1] * step ** 2 / (np.pi * 4.5 * 7.0) - 1) < 0.01
    assert abs(marrow[0] * dd.shape[1] * step ** 2 / (np.pi * 3.5 * 6.0) - 1) < 0.01
    # one voxel of 3x3 sub-samples on the tube's edge
    sub = (np.arange(3) + 0.5) / 3 - 0.5
    SX, SY = np.meshgrid(sub, sub, indexing="ij")
    vox = np.stack([4.4 + SX.ravel(), SY.ravel(), np.zeros(9)], -1)[None]
    f = [_pv.fractions(vox, ex, ey, 0.0, 0.0, a, 7.0, a - 1.0, 6.0, 1.0 / 3)[0][0] for a in np.arange(4.2, 4.6, 0.01)]
    steps = np.abs(np.diff(f))
    assert steps.max() < 0.05 and steps.min() > 0.0
