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


def test_tube_normal_equations_match_numpy():
    from spineplan.anatomy import _pv

    rng = np.random.default_rng(2)
    dd = rng.uniform(-6, 6, size=(150, 12, 3))
    vals = rng.normal(200, 80, 150)
    u, w = np.array([0.8, 0.6, 0]), np.array([0, 0, 1.0])
    wts = rng.uniform(0.0, 1.0, 150)
    args = (dd, u, w, -0.4, 0.1, 4.0, 6.0, 3.0, 5.0, 0.5, vals)
    Ga, ra = _pv.normal_equations(*args, wts)
    Gb, rb = _pv._normal_numpy(*args, wts)
    np.testing.assert_allclose(Ga, Gb, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(ra, rb, rtol=1e-12, atol=1e-7)
    assert np.isclose(Ga[0, 0], wts.sum()) and np.allclose(Ga, Ga.T)
    # unit weights: the unweighted normal equations, X'X and X'v, from the fractions themselves
    inside, marrow = _pv._fractions_numpy(*args[:10])
    X = np.c_[np.ones(150), marrow, inside - marrow]
    G1, r1 = _pv.normal_equations(*args, np.ones(150))
    np.testing.assert_allclose(G1, X.T @ X, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(r1, X.T @ vals, rtol=1e-10, atol=1e-6)


def test_edge_model_residuals_match_numpy():
    """The compiled edge-model residuals agree with the numpy formulation on a blurred bone edge,
    and are least at the true edge (within one 0.05 mm trial step)."""
    from spineplan.anatomy import _pv
    from spineplan.anatomy.measure import _line_kernel

    x, pdf, cdf = _line_kernel(np.array([1.0, 1.0, 3.0]), np.array([0.0, 0.0, 1.0]))
    ss = np.arange(0.0, 9.0, 0.1)
    edge = 4.3
    # bone (interior 250 HU, 1 mm shell 700 HU more) to soft tissue (40 HU), blurred by the kernel
    fine = np.arange(-10, 20, 0.1)
    prof = 40.0 + 210.0 * (fine < edge) + 700.0 * ((fine < edge) & (fine >= edge - 1.0))
    vv = np.interp(ss, fine, np.convolve(prof, pdf * 0.1, mode="same"))
    es = edge + np.arange(-2.0, 2.0001, 0.05)
    a = _pv.edge_residuals(ss, vv, es, float(x[0]), float(x[1] - x[0]), pdf, cdf, 0.5)
    b = _pv._edge_residuals_numpy(ss, vv, es, float(x[0]), float(x[1] - x[0]), pdf, cdf, 0.5)
    fin = np.isfinite(b)
    assert (np.isfinite(a) == fin).all() and fin.sum() > 40
    np.testing.assert_allclose(a[fin], b[fin], rtol=1e-9, atol=1e-6 * float(vv @ vv))
    assert abs(es[int(np.argmin(b))] - edge) <= 0.1
