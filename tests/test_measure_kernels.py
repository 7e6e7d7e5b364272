"""The compiled hot loops of the measurement agree with their numpy formulations."""

from __future__ import annotations

import numpy as np
import pytest


def test_edge_residuals_match_numpy():
    from spineplan.anatomy._edge_kernel import edge_residuals
    from spineplan.anatomy.measure import _edge_residuals_numpy, _line_kernel

    if edge_residuals is None:
        pytest.skip("numba not installed: only the numpy path exists")
    rng = np.random.default_rng(0)
    kern = _line_kernel(np.array([0.7, 0.7, 2.5]), np.array([0.3, 0.2, 0.93]) / np.linalg.norm([0.3, 0.2, 0.93]))
    x, pdf, cdf = kern
    ss = np.arange(0.0, 9.0, 0.1)
    # a blurred step (bone 400 HU -> soft tissue 40 HU at 4 mm) with a bright cortex and noise
    vv = 40 + 360 * np.interp(4.0 - ss, x, cdf, left=0, right=1) + 300 * np.interp(ss - 3.5, x, pdf, left=0, right=0)
    vv += rng.normal(0, 15, ss.shape)
    es = 4.0 + np.arange(-2.0, 2.0001, 0.05)
    a = edge_residuals(ss, vv, es, float(x[0]), float(x[1] - x[0]), pdf, cdf, 0.5, 1e-6)
    b = _edge_residuals_numpy(ss, vv, es, x, pdf, cdf)
    fin = np.isfinite(b)
    assert np.array_equal(np.isfinite(a), fin) and fin.sum() > 40
    np.testing.assert_allclose(a[fin], b[fin], rtol=1e-6, atol=1e-3 * float(vv @ vv) * 1e-6)
    assert abs(es[int(np.argmin(a))] - 4.0) <= 0.3  # and the fit finds the edge


def test_tube_fractions_match_numpy():
    from spineplan.anatomy import _pv

    rng = np.random.default_rng(1)
    dd = rng.uniform(-6, 6, size=(200, 27, 3))
    u, w = np.array([1.0, 0, 0]), np.array([0, 0.6, 0.8])
    args = (dd, u, w, 0.3, -0.2, 4.0, 5.0, 3.0, 4.0)
    ia, ma = _pv.fractions(*args)
    ib, mb = _pv._fractions_numpy(*args)
    np.testing.assert_allclose(ia, ib, atol=1e-12)
    np.testing.assert_allclose(ma, mb, atol=1e-12)
    assert 0.05 < ia.mean() < 0.6 and (ma <= ia).all()
