"""The body outline (skin surface) of a CT and rays from bone to skin.

The body is the largest connected region with HU above :data:`BODY_THRESHOLD_HU`, separated
from the CT table by a thin-structure opening, its internal air (bowel gas, lungs) filled slice
by slice (:func:`body_mask`). A trajectory is extended to the skin by
marching from a point inside the body along a direction until the body ends; the crossing is
refined to sub-voxel precision on the trilinearly interpolated body mask (its 0.5 level), so a
returned skin point lies within a fraction of a voxel of the air/tissue transition.

The thoracolumbar fascia is not visible as such on CT; we take it as the outermost boundary
between muscle and subcutaneous fat along the ray (:func:`fascia_depth`). Muscle is
~+10..+70 HU and fat ~-190..-30 HU (Kvist et al., Am J Clin Nutr 1988; Aubrey et al., Acta
Physiol 2014), so the boundary is taken at :data:`FAT_MUSCLE_THRESHOLD_HU`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spineplan.volume import Volume

#: Air/tissue boundary of the body outline. Air is about -1000 HU, fat about -100 HU; -300 HU
#: lies well between them and is the usual body-outline threshold (e.g. TotalSegmentator's
#: "body" post-processing and most radiotherapy external-contour tools use -300 to -500 HU).
BODY_THRESHOLD_HU = -300.0
#: Radius of the per-slice opening that separates the patient from the CT table and other thin
#: attachments (table tops are ~5-10 mm thick shells; a 4 mm radius removes anything thinner
#: than 8 mm while the trunk, > 15 cm across, is untouched). Engineering default.
TABLE_OPENING_MM = 4.0
#: In-plane pixel size of the grid the body's connectivity is worked out on (speed only).
_COARSE_MM = 1.5
#: Fat/muscle boundary (fat -190..-30 HU, muscle +10..+70 HU; Aubrey et al. 2014).
FAT_MUSCLE_THRESHOLD_HU = -30.0
#: Skin (epidermis + dermis) thickness over the back, ~2-3 mm (Laurent et al., Skin Res
#: Technol 2007); ignored when looking for the fat under it.
SKIN_THICKNESS_MM = 2.5
#: Ray-marching step as a fraction of the smallest voxel size.
_STEP_FRACTION = 0.25
#: Give up marching after this distance (no adult's skin is further from the spine).
MAX_RAY_MM = 400.0


@dataclass(frozen=True)
class SkinHit:
    """Where a ray leaves the body."""

    point: np.ndarray  # LPS mm, on the skin surface
    depth_mm: float  # distance from the ray's start to the skin
    normal: np.ndarray  # outward unit normal of the skin at ``point``
    fascia_depth_mm: float | None = None  # start -> outermost muscle/fat boundary, if found


def body_mask(ct: Volume, threshold_hu: float = BODY_THRESHOLD_HU, *, opening_mm: float = TABLE_OPENING_MM) -> np.ndarray:
    """Boolean body mask: the patient without the table, internal air filled.

    HU > threshold; per axial slice an opening with a disk of radius ``opening_mm`` cuts thin
    attachments (table top, thin pads, cables touching a supine patient's back); the largest
    3-D component is kept and the holes of each axial slice are filled (bowel gas, lungs). An
    opening leaves a convex outline such as the back unchanged; only structures narrower than
    the disk (and sharp skin folds) are removed.

    For speed the opening, labelling and hole filling run on a grid of about
    :data:`_COARSE_MM` in-plane; the outline is then taken from the full-resolution threshold
    within one coarse pixel of the coarse body, so the skin keeps the CT's own resolution.
    """
    from scipy import ndimage

    arr = np.asarray(ct.array)
    zax = int(np.argmax(np.abs(ct.direction[2])))
    raw = np.moveaxis(arr > threshold_hu, zax, 0)  # [slice, a, b]
    inplane = np.array([ct.spacing[a] for a in range(3) if a != zax])
    f = np.maximum(1, np.floor(_COARSE_MM / inplane)).astype(int)
    coarse = raw[:, :: f[0], :: f[1]]
    sampling = inplane * f
    opened = np.zeros_like(coarse)
    for s in range(coarse.shape[0]):
        m = coarse[s]
        if not m.any():
            continue
        # opening by a disk via distance transforms: erode (inside distance > r), then dilate
        core = ndimage.distance_transform_edt(m, sampling=sampling) > opening_mm
        if core.any():
            opened[s] = ndimage.distance_transform_edt(~core, sampling=sampling) <= opening_mm
    lab, n = ndimage.label(opened)
    if n == 0:
        lab, n = ndimage.label(coarse)  # a very small field of view: no opening
        if n == 0:
            return np.moveaxis(raw, 0, zax)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body_c = lab == int(np.argmax(sizes))
    for s in range(body_c.shape[0]):
        if body_c[s].any():
            body_c[s] = ndimage.binary_fill_holes(body_c[s])
    if f.max() == 1:
        return np.moveaxis(body_c, 0, zax)
    plus = np.ones((1, 3, 3), bool)

    def up(m):
        return np.repeat(np.repeat(m, f[0], axis=1), f[1], axis=2)[:, : raw.shape[1], : raw.shape[2]]

    near = up(ndimage.binary_dilation(body_c, structure=plus))
    inner = up(ndimage.binary_erosion(body_c, structure=plus))
    return np.moveaxis((raw & near) | inner, 0, zax)


class SkinSurface:
    """The body outline of one CT, with ray queries. Build once per CT (cost: one labelling)."""

    def __init__(self, ct: Volume, threshold_hu: float = BODY_THRESHOLD_HU, mask: np.ndarray | None = None):
        self.ct = ct
        self.threshold_hu = threshold_hu
        m = body_mask(ct, threshold_hu) if mask is None else np.asarray(mask, bool)
        self.mask = m
        self._maskvol = ct.with_array(m.astype(np.float32), modality="mask")
        self.step_mm = float(ct.spacing.min()) * _STEP_FRACTION

    def inside(self, xyz) -> np.ndarray:
        """Interpolated body-mask value (0 outside .. 1 inside) at LPS points."""
        return self._maskvol.sample(xyz, order=1, fill=0.0)

    def normal(self, point) -> np.ndarray:
        """Outward unit skin normal at a point: minus the least-squares gradient of the
        interpolated body mask over a 5x5x5 neighbourhood (~2 voxels each way), which smooths
        the staircase of the voxel mask."""
        h = max(float(self.ct.spacing.max()), 1.0)
        g1 = np.arange(-2, 3) * h
        off = np.stack(np.meshgrid(g1, g1, g1, indexing="ij"), -1).reshape(-1, 3)
        vals = self.inside(np.asarray(point, float) + off)
        A = np.column_stack([off, np.ones(len(off))])
        coef, *_ = np.linalg.lstsq(A, vals, rcond=None)
        n = -coef[:3]
        norm = np.linalg.norm(n)
        return n / norm if norm > 1e-12 else n

    def exit_point(self, start, direction, *, max_mm: float = MAX_RAY_MM) -> SkinHit | None:
        """First point where the ray ``start + t * direction`` (t >= 0) leaves the body.

        ``start`` should be inside the body (e.g. a screw's bony entry). Returns ``None`` when
        the ray leaves the scan before it leaves the body (the skin is outside the field of view).
        """
        p0 = np.asarray(start, float)
        d = np.asarray(direction, float)
        d = d / np.linalg.norm(d)
        t = np.arange(0.0, max_mm, self.step_mm)
        pts = p0 + t[:, None] * d
        vals = self.inside(pts)
        idx = self.ct.world_to_index(pts)
        # a transition beyond the outermost voxel centres is the edge of the scan, not the skin
        in_fov = np.all((idx >= -1e-6) & (idx <= np.asarray(self.ct.shape) - 1 + 1e-6), axis=1)
        outside = np.nonzero(vals < 0.5)[0]
        if outside.size == 0:
            return None
        k = int(outside[0])
        if not in_fov[k] or k == 0:
            return None if not in_fov[k] else SkinHit(p0, 0.0, self.normal(p0))
        # refine the 0.5 crossing between samples k-1 (inside) and k (outside) by bisection
        lo, hi = t[k - 1], t[k]
        for _ in range(20):
            mid = 0.5 * (lo + hi)
            if self.inside(p0 + mid * d) >= 0.5:
                lo = mid
            else:
                hi = mid
        tc = 0.5 * (lo + hi)
        point = p0 + tc * d
        fascia = fascia_depth(self.ct, p0, d, tc)
        return SkinHit(point=point, depth_mm=float(tc), normal=self.normal(point), fascia_depth_mm=fascia)

    def snap(self, point, direction=None) -> np.ndarray:
        """Move a point near the skin onto it, along ``direction`` (default: the local normal)."""
        p = np.asarray(point, float)
        d = self.normal(p) if direction is None else np.asarray(direction, float) / np.linalg.norm(direction)
        if not np.any(d):
            return p
        back = 30.0
        hit = self.exit_point(p - back * d, d, max_mm=2 * back)
        return p if hit is None else hit.point


def fascia_depth(ct: Volume, start, direction, skin_depth_mm: float, *, min_fat_mm: float = 2.0) -> float | None:
    """Distance along the ray from ``start`` to the outermost muscle -> fat transition.

    The samples are classified fat/not fat (HU below :data:`FAT_MUSCLE_THRESHOLD_HU`), the skin
    itself (:data:`SKIN_THICKNESS_MM` plus one voxel of partial volume) is ignored and fibrous septa
    shorter than ~2 mm inside the fat are closed. The deep end of the fat run under the skin
    marks the thoracolumbar fascia. Returns ``None`` when there is no subcutaneous fat run at
    least ``min_fat_mm`` long (a very thin patient) or the whole ray is fat.
    """
    from scipy.ndimage import binary_closing

    d = np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    step = float(ct.spacing.min()) * _STEP_FRACTION
    stop = skin_depth_mm - SKIN_THICKNESS_MM - float(ct.spacing.max())
    t = np.arange(0.0, max(stop, 0.0), step)
    if t.size < 3:
        return None
    hu = ct.sample(np.asarray(start, float) + t[:, None] * d, order=1)
    fat = hu < FAT_MUSCLE_THRESHOLD_HU
    k = max(1, int(round(2.0 / step)))
    fat = binary_closing(np.pad(fat, k, mode="edge"), structure=np.ones(k))[k:-k]
    need = max(1, int(np.ceil(min_fat_mm / step)))
    if not fat[-1]:
        return None
    not_fat = np.nonzero(~fat)[0]
    if not_fat.size == 0:
        return None
    i = int(not_fat[-1])
    if t.size - 1 - i < need:
        return None
    return float(t[i + 1])
