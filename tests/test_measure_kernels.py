"""The compiled hot loop of the measurement agrees with its numpy formulation."""

from __future__ import annotations

import numpy as np


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
