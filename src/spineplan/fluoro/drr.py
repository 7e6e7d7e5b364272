"""Digitally reconstructed radiographs (DRRs): what the C-arm would show.

Attenuation model
-----------------
A DRR pixel is the line integral ``L = sum(mu * path length)`` along the ray from the source
to the pixel (dimensionless; the detected intensity is ``I0 * exp(-L)``). CT numbers are
converted once to linear attenuation coefficients ``mu`` (1/mm) at a single **effective
energy** of the C-arm beam (default 60 keV, about the mean energy of a 70-80 kVp fluoroscopy
spectrum after patient filtration) with the usual bilinear (two-compartment) model:

* ``HU <= 0``: an air/water mixture, ``mu = mu_water(E) * (1 + HU / 1000)``;
* ``HU > 0``: a water/cortical-bone mixture with bone fraction ``f = HU / HU_bone``, where
  ``HU_bone`` is cortical bone's CT number at the CT scanner's effective energy (70 keV for
  120 kVp): ``mu = mu_water(E) + f * (mu_bone(E) - mu_water(E))``. Bone's photo-electric
  absorption rises faster than water's at low energy, so this slope is steeper than water's.
* air: voxels whose 3x3x3 neighbourhood mean is below :data:`AIR_HU` get ``mu = 0``. Air's true
  attenuation is ~0.1 % of water's; CT noise in air (sigma 20-50 HU) would otherwise leave a
  haze and defeat the renderer's empty-space skipping. Using the local mean keeps noisy lung
  parenchyma (mean about -850 HU) in; on the chest CT the rule changes line integrals by 0.3 %
  (mean absolute) against no rule.

Mass attenuation coefficients are the NIST tables (Hubbell & Seltzer, NIST Standard Reference
Database 126, "X-Ray Mass Attenuation Coefficients", Table 4: Water, Liquid and Bone, Cortical
(ICRU-44); Table 3: Ti Z=22, Fe Z=26), interpolated log-log in energy.

Renderers
---------
* ``mode="exact"``: Siddon-type ray-voxel traversal: the exact line integral of the
  piecewise-constant voxel field (reference; float64).
* ``mode="fast"``: fused numba ray marching (parallel over pixels, rays clipped to the box of
  non-zero attenuation by slab intersection and to their first/last non-empty 8^3 block,
  midpoint rule with a step of half the smallest voxel, nearest-voxel sampling by default from
  a uint16 copy of mu with fixed-point positions, or trilinear sampling). Nothing of size
  rays x samples is allocated. Caches (occupancy, uint16 copy) are built on first use: do not
  modify ``mu`` in place afterwards (use ``dataclasses.replace``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spineplan.errors import InputError
from spineplan.fluoro.geometry import CArm
from spineplan.volume import Volume

#: Photon energies (keV) of the tabulated mass attenuation coefficients below.
NIST_ENERGIES_KEV = np.array([30.0, 40.0, 50.0, 60.0, 80.0, 100.0])
#: mu/rho (cm^2/g) of liquid water, NIST SRD 126 Table 4 ("Water, Liquid").
NIST_WATER_MU_RHO = np.array([0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707])
#: mu/rho (cm^2/g) of cortical bone, NIST SRD 126 Table 4 ("Bone, Cortical (ICRU-44)").
NIST_BONE_MU_RHO = np.array([1.331, 0.6655, 0.4242, 0.3148, 0.2229, 0.1855])
#: mu/rho (cm^2/g) of titanium, NIST SRD 126 Table 3 (Z = 22).
NIST_TITANIUM_MU_RHO = np.array([4.972, 2.214, 1.213, 0.7661, 0.4052, 0.2721])
#: mu/rho (cm^2/g) of iron (stand-in for stainless steel), NIST SRD 126 Table 3 (Z = 26).
NIST_IRON_MU_RHO = np.array([8.176, 3.629, 1.958, 1.205, 0.5952, 0.3717])
#: Densities (g/cm^3): water 1.0; cortical bone 1.92 (ICRU Report 44, as in NIST SRD 126 Table 2);
#: Ti-6Al-4V screw alloy 4.43 (ASTM F136); 316L stainless steel 8.0 (ASTM F138).
DENSITY_WATER = 1.0
DENSITY_CORTICAL_BONE = 1.92
DENSITY_TI6AL4V = 4.43
DENSITY_STEEL_316L = 8.0
#: Effective energy of a 120 kVp CT beam, keV (about 60-70 keV; e.g. Bushberg et al., The
#: Essential Physics of Medical Imaging, 3rd ed., ch. 10). Used to map HU to bone fraction.
CT_EFFECTIVE_KEV = 70.0
#: Default effective energy of the C-arm beam, keV (70-80 kVp fluoroscopy with ~3-4 mm Al
#: filtration and patient hardening gives a mean energy near 55-65 keV).
DEFAULT_ENERGY_KEV = 60.0
#: Voxels whose 3x3x3 mean CT number is below this are air (or outside the field of view): mu = 0.
#: Lung parenchyma averages about -850 HU (e.g. Hoffman et al., Acad Radiol 2003: healthy lung
#: -850 +- 30 HU at full inspiration), so -950 keeps lung tissue.
AIR_HU = -950.0
#: Block size (voxels) of the occupancy grid the fast renderer uses to skip empty space at
#: both ends of each ray.
OCCUPANCY_BLOCK = 8
#: Rays of the fast renderer are clipped this far (voxels) inside the grid.
_INSET = 1e-3


def mass_attenuation(material: str, energy_kev: float) -> float:
    """mu/rho (cm^2/g) of ``"water"``, ``"bone"``, ``"titanium"`` or ``"steel"`` (log-log interp.)."""
    table = {"water": NIST_WATER_MU_RHO, "bone": NIST_BONE_MU_RHO,
             "titanium": NIST_TITANIUM_MU_RHO, "steel": NIST_IRON_MU_RHO}
    if material not in table:
        raise InputError(f"Unknown material {material!r}; use one of {sorted(table)}.")
    e = float(energy_kev)
    if not (NIST_ENERGIES_KEV[0] <= e <= NIST_ENERGIES_KEV[-1]):
        raise InputError(f"Effective energy must be within 30-100 keV for the DRR model; got {e}.")
    return float(np.exp(np.interp(np.log(e), np.log(NIST_ENERGIES_KEV), np.log(table[material]))))


def linear_attenuation(material: str, energy_kev: float) -> float:
    """Linear attenuation coefficient (1/mm) of a material at its reference density."""
    rho = {"water": DENSITY_WATER, "bone": DENSITY_CORTICAL_BONE,
           "titanium": DENSITY_TI6AL4V, "steel": DENSITY_STEEL_316L}[material]
    return mass_attenuation(material, energy_kev) * rho / 10.0  # cm^-1 -> mm^-1


def hu_bone_at_ct() -> float:
    """CT number of cortical bone at the CT's effective energy (about 1600 HU)."""
    mw = linear_attenuation("water", CT_EFFECTIVE_KEV)
    mb = linear_attenuation("bone", CT_EFFECTIVE_KEV)
    return 1000.0 * (mb / mw - 1.0)


def hu_to_mu(hu, energy_kev: float = DEFAULT_ENERGY_KEV) -> np.ndarray:
    """The bilinear HU -> mu (1/mm) model of the module docstring, voxel by voxel (float32;
    the air rule here is on each value, not on the 3x3x3 mean used by :meth:`AttenuationVolume.from_ct`)."""
    hu = np.asarray(hu, dtype=np.float32)
    mw = np.float32(linear_attenuation("water", energy_kev))
    mb = np.float32(linear_attenuation("bone", energy_kev))
    bone_slope = np.float32((mb - mw) / hu_bone_at_ct())
    mu = np.where(hu <= 0, mw * (np.float32(1.0) + hu / np.float32(1000.0)), mw + bone_slope * hu)
    mu = np.where(hu < AIR_HU, np.float32(0.0), mu)
    return np.maximum(mu, np.float32(0.0)).astype(np.float32)


@dataclass
class AttenuationVolume:
    """A CT converted once to attenuation: ``mu`` (1/mm, float32, C-contiguous) and its index->LPS affine."""

    mu: np.ndarray
    affine: np.ndarray
    energy_kev: float = DEFAULT_ENERGY_KEV
    meta: dict[str, Any] = field(default_factory=dict)
    #: Index-space box (lo, hi), each (3,), enclosing every voxel with mu > 0 (computed, so
    #: ``dataclasses.replace(att, mu=...)`` stays consistent).
    box: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mu = np.ascontiguousarray(self.mu, dtype=np.float32)
        if mu.ndim != 3:
            raise InputError(f"Attenuation volume must be 3-D; got shape {mu.shape}.")
        self.mu = mu
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise InputError("Attenuation volume needs a 4x4 index-to-LPS affine.")
        self.box = _nonzero_box(mu)
        self._occ = None
        self._quant = None

    @classmethod
    def from_ct(cls, ct: Volume, *, energy_kev: float = DEFAULT_ENERGY_KEV) -> "AttenuationVolume":
        """Convert a CT (HU) with the model of the module docstring."""
        if ct.modality.upper() not in ("CT", ""):
            raise InputError(f"A DRR needs a CT in Hounsfield units; got a {ct.modality} volume.")
        from spineplan.fluoro._kernels import hu_to_mu_volume

        mw = linear_attenuation("water", energy_kev)
        mb = linear_attenuation("bone", energy_kev)
        mu = hu_to_mu_volume(np.asarray(ct.array), mw, (mb - mw) / hu_bone_at_ct(), AIR_HU)
        return cls(mu, ct.affine, energy_kev=float(energy_kev))

    @classmethod
    def from_mu(cls, mu: np.ndarray, affine) -> "AttenuationVolume":
        """Wrap an attenuation array (1/mm) directly (phantoms, tests)."""
        return cls(np.asarray(mu, np.float32), np.asarray(affine, float))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.mu.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def world_to_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(M, b) with ``index = M @ xyz + b``."""
        inv = np.linalg.inv(self.affine)
        return np.ascontiguousarray(inv[:3, :3]), np.ascontiguousarray(inv[:3, 3])

    def occupancy(self) -> np.ndarray:
        """Block occupancy grid (blocks of :data:`OCCUPANCY_BLOCK` voxels), computed once."""
        if self._occ is None:
            from spineplan.fluoro._kernels import block_occupancy

            self._occ = block_occupancy(self.mu, OCCUPANCY_BLOCK)
        return self._occ

    def quantized(self) -> tuple[np.ndarray, float]:
        """(uint16 array, scale) with ``mu ~= q * scale`` (relative step 1/65535 of the largest mu),
        computed once; the fast nearest-voxel renderer reads it (half the memory traffic)."""
        if self._quant is None:
            top = float(self.mu.max()) if self.mu.size else 0.0
            scale = top / 65535.0 if top > 0 else 1.0
            q = np.empty(self.mu.shape, np.uint16)
            np.rint(self.mu / np.float32(scale), out=q, casting="unsafe")
            self._quant = (q, scale)
        return self._quant

    def centre_lps(self) -> np.ndarray:
        """LPS centre of the non-zero box."""
        lo, hi = self.box
        c = (lo + hi) / 2.0
        return self.affine[:3, :3] @ c + self.affine[:3, 3]


def _nonzero_box(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index-space box [first - 0.5, last + 0.5] of the voxels with mu > 0 (whole grid if none)."""
    lo = np.zeros(3)
    hi = np.array(mu.shape, float) - 1.0
    nz = mu > 0
    if nz.any():
        for ax in range(3):
            other = tuple(a for a in range(3) if a != ax)
            prof = np.flatnonzero(nz.any(axis=other))
            lo[ax], hi[ax] = prof[0], prof[-1]
    return lo - 0.5, hi + 0.5


def _camera_args(att: AttenuationVolume, carm: CArm):
    m, b = att.world_to_index()
    src = np.ascontiguousarray(carm.pose.source_lps)
    rt = np.ascontiguousarray(carm.pose.rotation.T)
    cu, cv = (float(x) for x in carm.detector.principal_point)
    return m, b, src, rt, cu, cv, float(carm.detector.focal_px)


def render(att: AttenuationVolume, carm: CArm, *, mode: str = "fast", metal=None, noise=None, rng=None,
           step_mm: float | None = None, sampling: str = "nearest") -> np.ndarray:
    """Line-integral image (H, W) float32 of ``att`` seen by ``carm``.

    ``mode``: ``"fast"`` (numba ray marching, step ``step_mm``, default half the smallest voxel;
    ``sampling`` ``"nearest"`` or ``"linear"``) or ``"exact"`` (Siddon ray-voxel traversal).
    ``metal``: implants to add (a :class:`spineplan.fluoro.metal.Metal`, a plan, or lists of
    screw/rod/needle dicts; see :func:`spineplan.fluoro.metal.as_metal`), drawn at true size
    with the attenuation of their alloy at ``att.energy_kev``.
    ``noise``: None, or see :func:`add_noise`.
    """
    from spineplan.fluoro import _kernels as K

    h, w = carm.detector.shape
    out = np.zeros((h, w), dtype=np.float32 if mode == "fast" else np.float64)
    m, b, src, rt, cu, cv, f = _camera_args(att, carm)
    if mode == "fast":
        if step_mm is None:
            step_mm = 0.5 * float(att.spacing.min())
        if step_mm <= 0:
            raise InputError(f"step_mm must be positive; got {step_mm}.")
        if sampling not in ("nearest", "linear"):
            raise InputError(f"sampling must be 'nearest' or 'linear'; got {sampling!r}.")
        lo, hi = att.box
        # stay a hair inside the grid so that nearest-voxel indices never need clamping
        lo = np.maximum(np.asarray(lo, np.float64), -0.5 + _INSET)
        hi = np.minimum(np.asarray(hi, np.float64), np.array(att.shape, np.float64) - 0.5 - _INSET)
        linear = sampling == "linear"
        q, q_scale = att.quantized() if not linear else (np.zeros((1, 1, 1), np.uint16), 1.0)
        K.render_fast(att.mu, q, float(q_scale), m, b, src, rt, cu, cv, f, lo, hi, float(step_mm), linear,
                      att.occupancy(), OCCUPANCY_BLOCK, out)
    elif mode == "exact":
        K.render_siddon(att.mu, m, b, src, rt, cu, cv, f, out)
    else:
        raise InputError(f"DRR mode must be 'fast' or 'exact'; got {mode!r}.")
    if metal is not None:
        _add_metal(out, carm, metal, att.energy_kev)
    out = out.astype(np.float32, copy=False)
    if noise is not None:
        out = add_noise(out, noise, rng=rng)
    return out


def _add_metal(out: np.ndarray, carm: CArm, metal, energy_kev: float) -> None:
    from spineplan.fluoro import _kernels as K
    from spineplan.fluoro.metal import as_metal

    met = as_metal(metal)
    if len(met):
        p0, p1, radius, mu_lin = met.arrays(energy_kev)
        src = np.ascontiguousarray(carm.pose.source_lps)
        rt = np.ascontiguousarray(carm.pose.rotation.T)
        cu, cv = (float(x) for x in carm.detector.principal_point)
        K.cylinders_chord(p0, p1, radius, mu_lin, src, rt, cu, cv, float(carm.detector.focal_px), out)


def metal_image(carm: CArm, metal, energy_kev: float = DEFAULT_ENERGY_KEV) -> np.ndarray:
    """Line integrals (H, W) float32 of the implants alone (see :func:`render`'s ``metal``)."""
    out = np.zeros(carm.detector.shape, np.float64)
    _add_metal(out, carm, metal, energy_kev)
    return out.astype(np.float32)


def add_noise(line_integral: np.ndarray, noise, *, rng=None) -> np.ndarray:
    """Quantum (Poisson) and/or electronic (Gaussian) noise on a line-integral image.

    ``noise``: a number = unattenuated photons per pixel ``I0`` (Poisson: ``I ~ Poisson(I0 e^-L)``,
    returned as ``-log(max(I, 0.5) / I0)``); or a dict ``{"photons": I0, "gaussian": sigma}``
    where ``sigma`` is added to the line integral. ``rng``: numpy Generator or seed."""
    rng = np.random.default_rng(rng)
    if isinstance(noise, (int, float)):
        noise = {"photons": float(noise)}
    if not isinstance(noise, dict) or not set(noise) <= {"photons", "gaussian"}:
        raise InputError("noise must be a photon count or a dict with 'photons' and/or 'gaussian'.")
    out = np.asarray(line_integral, dtype=np.float64)
    i0 = noise.get("photons")
    if i0:
        counts = rng.poisson(i0 * np.exp(-out))
        out = -np.log(np.maximum(counts, 0.5) / i0)
    sigma = noise.get("gaussian")
    if sigma:
        out = out + rng.normal(0.0, float(sigma), size=out.shape)
    return out.astype(np.float32)


def to_display(line_integral, *, invert: bool = True, window=None, gamma: float = 1.0,
               enhance: float = 0.0, reference=None) -> np.ndarray:
    """uint8 image like a fluoroscopy shot.

    Like a C-arm's automatic brightness control, the log-domain line integral is windowed to the
    0.5th-99.5th percentile of the attenuating pixels in the **central region** (middle half of
    each side; or ``window=(lo, hi)``); more attenuation is darker with ``invert=True`` (the
    default: bone and metal dark, air bright, as on a C-arm monitor). ``reference``: an image to
    take the window (and the enhancement background) from instead, e.g. the tissue-only DRR so
    that implants (far more attenuating) do not wash the anatomy out; they then saturate black,
    as they do on a real monitor. ``enhance`` (0-1) subtracts that fraction of a smooth
    (sigma = 1/12 of the image) background, like the unsharp-mask edge enhancement of
    fluoroscopy imaging chains; 0 leaves the physics untouched.
    """
    li = np.asarray(line_integral, dtype=np.float64)
    ref = li if reference is None else np.asarray(reference, dtype=np.float64)
    if ref.shape != li.shape:
        raise InputError(f"reference image shape {ref.shape} differs from the image's {li.shape}.")
    hit = ref > 1e-3
    if enhance:
        from scipy.ndimage import gaussian_filter

        if not 0.0 <= enhance <= 1.0:
            raise InputError(f"enhance must be within 0-1; got {enhance}.")
        low = enhance * gaussian_filter(ref, max(li.shape) / 12.0, mode="nearest")
        shift = float((ref - low)[hit].min()) if hit.any() else 0.0
        li = np.where(hit | (li > 1e-3), li - low - shift + 1e-2, 0.0)
        ref = np.where(hit, ref - low - shift + 1e-2, 0.0)
    if window is None:
        h, w = ref.shape
        centre = np.zeros_like(hit)
        centre[h // 4: h - h // 4, w // 4: w - w // 4] = True
        vals = ref[hit & centre]
        if vals.size < 16:
            vals = ref[hit]
        if vals.size == 0:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = np.percentile(vals, [0.5, 99.5])
            lo -= 0.05 * (hi - lo)  # keep the thinnest tissue just below air's white
    else:
        lo, hi = (float(x) for x in window)
    if hi <= lo:
        hi = lo + 1.0
    x = np.clip((li - lo) / (hi - lo), 0.0, 1.0)
    if gamma != 1.0:
        x = x ** gamma
    if invert:
        x = 1.0 - x
    return np.round(x * 255.0).astype(np.uint8)
