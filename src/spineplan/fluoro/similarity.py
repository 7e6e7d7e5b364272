"""Image similarity for 2D/3D registration: normalised cross-correlation and gradient correlation.

- :func:`ncc`: normalised cross-correlation of two images over the valid pixels, in [-1, 1].
- :func:`gradient_correlation`: the gradient correlation of Penney et al. (IEEE TMI 17(4),
  586-595, 1998): the mean of the NCCs of the horizontal and of the vertical image gradients
  (Sobel). It ignores the low-frequency intensity differences between a DRR and a real X-ray
  (scatter, heel effect, different effective energy) and responds to edges, i.e. to bone.
- Multi-scale: ``sigmas=(0, 1.5)`` averages the measure over Gaussian-smoothed copies (sigma in
  pixels), which widens the capture range of the sharp measure.

Masks mark the valid pixels (``True``). Gradients are only used where the whole Sobel
neighbourhood is valid (the mask is eroded by one pixel), so collimator edges and
out-of-field pixels do not create false edges.

The same computation is available as a function and as an object that precomputes the fixed
image once (:class:`Similarity`), which the optimiser calls thousands of times.

>>> import numpy as np
>>> a = np.outer(np.hanning(32), np.hanning(32)).astype(np.float32)
>>> round(gradient_correlation(a, 3 * a + 1), 6), round(gradient_correlation(a, -a), 6)
(1.0, -1.0)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from spineplan.errors import InputError

#: Pixels with less than this many valid samples give no meaningful correlation.
MIN_VALID_PIXELS = 16

MEASURES = ("gc", "ncc")


def _as_mask(mask, shape) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask, dtype=bool)
    if m.shape != tuple(shape):
        raise InputError(f"The similarity mask has shape {m.shape} but the images have shape {tuple(shape)}.")
    return m


def _zero_mean_unit(x: np.ndarray, m: np.ndarray) -> np.ndarray | None:
    """Values of x at mask m, centred and scaled to unit norm (None when x is constant there)."""
    v = x[m].astype(np.float64)
    if v.size < MIN_VALID_PIXELS:
        return None
    v = v - v.mean()
    n = float(np.sqrt(np.einsum("i,i->", v, v)))  # einsum, not BLAS: no thread start-up on small vectors
    if n <= 1e-12 * max(1.0, float(np.abs(v).max(initial=0.0))) or n == 0.0:
        return None
    return v / n


def _gradients(img: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import gaussian_filter, sobel

    x = img.astype(np.float32, copy=False)
    if sigma > 0:
        x = gaussian_filter(x, sigma, mode="nearest")
    return sobel(x, axis=1, mode="nearest"), sobel(x, axis=0, mode="nearest")


def _eroded(m: np.ndarray, r: int) -> np.ndarray:
    if r <= 0 or m.all():
        # still drop the image border, where the Sobel filter sees replicated pixels
        out = m.copy()
    else:
        from scipy.ndimage import binary_erosion

        out = binary_erosion(m, iterations=r, border_value=0)
    out[:1, :] = False
    out[-1:, :] = False
    out[:, :1] = False
    out[:, -1:] = False
    return out


class Similarity:
    """A similarity measure against one fixed image, precomputed for repeated calls.

    ``measure`` is ``"gc"`` (gradient correlation) or ``"ncc"``; ``sigmas`` lists the Gaussian
    scales (pixels) averaged over; ``mask`` marks the fixed image's valid pixels. Calling the
    object with a moving image (same shape) returns the similarity in [-1, 1]; ``mask=`` on the
    call further restricts the pixels (e.g. the moving image's field of view).
    """

    def __init__(self, fixed: np.ndarray, *, measure: str = "gc", sigmas: Sequence[float] = (0.0,), mask=None):
        fixed = np.asarray(fixed, dtype=np.float32)
        if fixed.ndim != 2:
            raise InputError(f"The fixed image must be 2-D; got shape {fixed.shape}.")
        if measure not in MEASURES:
            raise InputError(f"Unknown similarity measure {measure!r}; use one of {', '.join(MEASURES)}.")
        self.measure = measure
        self.sigmas = tuple(float(s) for s in sigmas) or (0.0,)
        self.shape = fixed.shape
        self.mask = _as_mask(mask, fixed.shape)
        self._pad = 1 + int(np.ceil(2 * max(self.sigmas)))
        self._base_mask = _eroded(self.mask, self._pad) if measure == "gc" else self.mask
        self._fixed = fixed
        self._feat = [self._features(fixed, s) for s in self.sigmas]
        self._fixed_vecs = self._vectors(self._feat, self._base_mask)

    def _vectors(self, feats, m) -> list:
        return [[_zero_mean_unit(f, m) for f in ff] for ff in feats]

    def _features(self, img: np.ndarray, sigma: float) -> list[np.ndarray]:
        if self.measure == "gc":
            return list(_gradients(img, sigma))
        if sigma > 0:
            from scipy.ndimage import gaussian_filter

            img = gaussian_filter(img.astype(np.float32), sigma, mode="nearest")
        return [img]

    def _valid(self, mask) -> np.ndarray:
        if mask is None:
            return self._base_mask
        m = _as_mask(mask, self.shape)
        if self.measure == "gc":
            m = _eroded(m, self._pad)
        return m & self._base_mask

    def __call__(self, moving: np.ndarray, mask=None) -> float:
        moving = np.asarray(moving, dtype=np.float32)
        if moving.shape != self.shape:
            raise InputError(f"The moving image has shape {moving.shape}; the fixed image has {self.shape}.")
        m = self._valid(mask)
        fixed_vecs = self._fixed_vecs if mask is None else self._vectors(self._feat, m)
        total = 0.0
        count = 0
        for sigma, fvecs in zip(self.sigmas, fixed_vecs):
            for fv, g in zip(fvecs, self._features(moving, sigma)):
                gv = _zero_mean_unit(g, m)
                count += 1
                if fv is None or gv is None:
                    continue  # a featureless image correlates with nothing: contributes 0
                total += float(np.einsum("i,i->", fv, gv))
        return total / max(count, 1)


def ncc(a: np.ndarray, b: np.ndarray, mask=None) -> float:
    """Normalised cross-correlation of ``a`` and ``b`` over ``mask`` (0 when either is constant)."""
    return Similarity(a, measure="ncc", mask=mask)(b)


def gradient_correlation(a: np.ndarray, b: np.ndarray, mask=None, sigmas: Sequence[float] = (0.0,)) -> float:
    """Gradient correlation (Penney et al. 1998) of ``a`` and ``b`` over ``mask``, optionally multi-scale."""
    return Similarity(a, measure="gc", sigmas=sigmas, mask=mask)(b)
