"""Similarity measures: gradient correlation (Penney et al. 1998) and NCC, with masks and scales."""

from __future__ import annotations

import numpy as np
import pytest

from spineplan.errors import InputError
from spineplan.fluoro.similarity import Similarity, gradient_correlation, ncc


def _blobs(shape=(64, 64), shift=(0.0, 0.0)):
    v, u = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for cu, cv, r, a in ((20, 22, 6, 1.0), (40, 35, 9, 0.7), (30, 50, 4, 1.3)):
        img += a * np.exp(-((u - cu - shift[1]) ** 2 + (v - cv - shift[0]) ** 2) / (2 * r * r))
    return img.astype(np.float32)


def test_ncc_matches_pearson_and_invariances():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 40)).astype(np.float32)
    b = (0.5 * a + rng.normal(size=(40, 40))).astype(np.float32)
    assert ncc(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], abs=1e-5)
    assert ncc(a, 4 * a - 7) == pytest.approx(1.0, abs=1e-6)
    assert ncc(a, -a) == pytest.approx(-1.0, abs=1e-6)
    assert ncc(a, np.ones_like(a)) == 0.0


def test_ncc_mask_ignores_invalid_pixels():
    a = _blobs()
    b = a.copy()
    b[:, :10] = 1000.0  # garbage outside the field of view
    m = np.ones_like(a, bool)
    m[:, :10] = False
    assert ncc(a, b) < 0.5
    assert ncc(a, b, mask=m) == pytest.approx(1.0, abs=1e-6)


def test_gc_ignores_smooth_intensity_differences():
    a = _blobs()
    v, u = np.mgrid[:64, :64]
    # a smooth ramp (like scatter / heel effect) added to a brighter version: NCC drops, GC barely changes
    b = 2.0 * a + 0.05 * u
    assert gradient_correlation(a, b) > 0.97
    assert ncc(a, b) < gradient_correlation(a, b)


def test_gc_peaks_at_alignment_and_multiscale_widens_capture():
    a = _blobs()
    shifts = [0.0, 1.0, 2.0, 4.0]
    gc = [gradient_correlation(a, _blobs(shift=(0.0, s))) for s in shifts]
    assert gc[0] == pytest.approx(1.0, abs=1e-6)
    assert gc[0] > gc[1] > gc[2] > gc[3]
    # at a 4-pixel shift the smoothed scale still correlates more than the sharp one
    far = _blobs(shift=(0.0, 4.0))
    assert gradient_correlation(a, far, sigmas=(3.0,)) > gradient_correlation(a, far, sigmas=(0.0,))


def test_gc_mask_and_object_agree_with_function():
    a = _blobs()
    b = _blobs(shift=(1.0, 0.5))
    m = np.zeros_like(a, bool)
    m[5:60, 8:58] = True
    s = Similarity(a, measure="gc", sigmas=(0.0, 1.5), mask=m)
    assert s(b) == pytest.approx(gradient_correlation(a, b, mask=m, sigmas=(0.0, 1.5)), abs=1e-9)
    # a second mask on the call restricts further: a corrupted strip outside it does not matter
    c = b.copy()
    c[:, 40:] = np.random.default_rng(0).normal(size=(64, 24))
    m2 = np.zeros_like(m)
    m2[:, :36] = True
    assert s(c, mask=m2) == pytest.approx(s(b, mask=m2), abs=1e-9)
    with pytest.raises(InputError, match="shape"):
        s(np.zeros((10, 10), np.float32))
    with pytest.raises(InputError, match="Unknown similarity"):
        Similarity(a, measure="mi")


def test_gc_of_unrelated_images_is_near_zero():
    rng = np.random.default_rng(3)
    a = _blobs()
    noise = rng.normal(size=a.shape).astype(np.float32)
    assert abs(gradient_correlation(a, noise)) < 0.1
