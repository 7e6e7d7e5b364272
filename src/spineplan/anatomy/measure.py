"""Per-vertebra measurements in the vertebra's own frame.

Public API:

- :func:`vertebra_frame` - origin at the body centroid, ``x`` the normal of the mid-sagittal
  (symmetry) plane, ``z`` the mean endplate normal, ``y = z x x`` (posterior).
- :func:`measure_vertebra` - a :class:`~spineplan.anatomy.model.Vertebra` with its frame,
  both pedicles, body/canal sizes, endplate planes, cancellous HU and volume.

How (sub-voxel where it matters):

1. The label mask gives the shape; it is resampled on a 1 mm grid aligned with the current
   frame estimate. The spinal canal is the hole of that grid's projection along ``z``; the body
   is the bone anterior to the canal. Endplate planes are least-squares fits to the top and
   bottom surfaces of the body's central columns; the mid-sagittal plane maximises the overlap
   of the (smoothed) mask with its mirror image. Three rounds refine the frame.
2. Lengths are read on the **CT**, not the mask: along a line (trilinear interpolation, 0.1 mm
   steps) a first edge is the half-maximum crossing between the cortical peak next to the mask
   border and the tissue beyond it; it is then refined by fitting a model of a bone surface
   (interior level, background, thin cortical shell) blurred by the line's voxel and
   interpolation kernel. A plain half-maximum puts the edge of a cortex thinner than the voxels
   too far out (+0.5-1 mm per side at 2-3 mm voxels); the model fit does not. The label only
   says roughly where the edge is, so a label a voxel too big or too small does not bias it.
   Body sizes and heights are medians over small bundles of parallel lines.
3. The pedicle is the bony bridge lateral to the canal: coronal sections of the resampled mask
   locate its narrowest part, tracked from the posterior body wall backwards and only within the
   height of the posterior body (so bone of a neighbour's articular process that an automatic
   segmentation gave this label cannot seed it); the first axis is the direction whose
   perpendicular mask sections are smallest; then cross-sections perpendicular to the axis are
   measured on the CT (where the label's rim gives no CT edge, the search starts from the rim of
   the label dilated by one voxel), the axis is re-fitted through the bone-intensity centroids
   of the sections of the pedicle proper (blur moves intensity, not its centre of mass; robust
   line fit), and the isthmus is the narrowest (smoothed) section. Sections are then fitted to
   the CT voxels by a partial-volume model (an elliptic tube with a cortical shell, each voxel
   box supersampled; :func:`_fit_section_pv`); the isthmus width, height and centre are a
   consensus of the narrowest. Below 1.5 mm voxels the final axis is a robust line through the
   centres of such sections every mm from 7 mm behind to 2 mm in front of the isthmus, those of
   the pedicle proper (two passes, :func:`_pv_axis`); from 1.5 mm on, the same line where the
   pedicle proper is long enough to carry its direction (:func:`_line_gate`), else the same model
   over +-5 mm of the tube fits the axis direction (blended in between). The frame's z axis comes from endplate planes
   placed by the bone mass along lines across each endplate (:func:`_mass_endplate`; free of the
   sub-voxel phase errors of profile edges) where that is precise, else fitted to sub-voxel CT
   edges (:func:`_edge_endplate_normals`).
   Conditioning: a pedicle a few voxels across is a weakly determined fit, and every hard choice
   (a point dropped from a line fit, one of two nearly equal optima, a result rejected at a
   tolerance) turned last-digit changes of the CT into different axes (up to 25 deg at 3 mm
   voxels). So the choices are continuous: the tube's voxel fractions are ramps, not counts
   (:mod:`._pv`); the direction fit runs from several starts and takes their soft minimum
   (a cost-weighted mean), with a Gaussian prior around the start axis; line fits weight points
   (Cauchy, and by a soft run of the pedicle proper) instead of dropping them; a result too far from the first estimate is drawn back to
   it continuously, not dropped; and the left/right checks blend a re-measured pedicle in over a
   ramp of their tolerances. ``benchmarks/bench_measure.py --stability`` measures what is left.
4. Checks (:func:`pedicle_implausible`, :func:`pedicles_disagree`): a pedicle outside the published
   ranges, or one of a left/right pair that disagree, is measured again from the mirror image of
   the other side; it is kept only if that confirms it, else left out with a sentence in
   ``Vertebra.warnings``. ``spine.build_spine`` also compares each pedicle with the adjacent levels.

Accuracy and speed are measured by ``benchmarks/bench_measure.py`` (phantoms with exact truth
at 0.8-3 mm voxels; the abdomen CT against TotalSegmentator's own heights).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from spineplan.anatomy.model import SIDES, Pedicle, Vertebra, VertebraFrame
from spineplan.errors import InputError
from spineplan.volume import Volume

#: Body heights are taken ~3 mm inside the anterior and posterior body edges, in the
#: mid-sagittal plane (definition shared with the phantom ground truth; the same convention as
#: the semi-quantitative reading of Genant et al., J Bone Miner Res 1993;8:1137-48, which
#: measures anterior/middle/posterior heights on the lateral view).
HEIGHT_EDGE_INSET_MM = 3.0
#: Each height is the median over 9 parallel lines, 1 mm ahead and behind and this far (mm) left
#: and right of the mid-sagittal plane: the anterior and posterior ones 3 mm off it (lines 1 mm
#: off it read the chest CT's T9 posterior height 21.6 -> 19.8 mm, reference labels, a false
#: grade 2; likely the basivertebral vein's foramen in the middle of the posterior wall), the
#: middle one 1 mm off it: a biconcave fracture's bowl is deepest in the plane, and lines
#: 3 mm off it read its middle height 0.4-0.55 mm too tall at grade 3 (phantoms, 0.8 mm voxels:
#: the median of 9 lines sat on the 6 off-plane ones), the height loss ~2 points too small.
HEIGHT_LINE_X_MM = {"anterior": 3.0, "middle": 1.0, "posterior": 3.0}

#: Likely osteoporosis when the mean cancellous attenuation is below this. Pickhardt PJ et al.,
#: "Opportunistic screening for osteoporosis using abdominal CT scans obtained for other
#: indications", Ann Intern Med 2013;158(8):588-595: an L1 trabecular attenuation threshold of
#: 110 HU was more than 90 % specific for DXA-defined osteoporosis (160 HU was 90 % sensitive).
OSTEOPOROSIS_HU = 110.0
#: Cancellous ROI: the body mask eroded by this depth (cortex ~1 mm plus partial volume), or by
#: 1.5 voxels when the voxels are coarser. Pickhardt et al. (2013) likewise place the ROI in the
#: trabecular bone, away from the cortex.
CANCELLOUS_DEPTH_MM = 3.0

#: Levels whose pedicle has no free isthmus to measure: the S1 pedicle runs into the sacral ala.
NO_ISTHMUS_LEVELS = ("S1",)

#: Plausible thoracolumbar pedicle isthmus dimensions (T11-L5). Zindrick MR et al., "Analysis of
#: the morphometric characteristics of the thoracic and lumbar pedicles", Spine 1987;12:160-166:
#: mean transverse widths from ~7-8 mm (T11-L1) to ~18 mm (L5), heights ~14-17 mm, transverse
#: angles from ~-5 deg (T12) to ~30 deg (L5). The ranges below are deliberately wider (dysplastic
#: and scoliotic pedicles, measurement noise): outside them a result is not a pedicle. The angle
#: bounds allow the axis noise of coarse (3 mm) clinical scans, where the real abdomen CT's L5 axes
#: measure 46-48 deg and its T12 sagittal angle -26 deg: rejecting those dropped pedicles whose
#: widths were right, and the planner searches the trajectory itself (it only uses the width).
PEDICLE_WIDTH_RANGE_MM = (3.0, 25.0)
#: The lower height bound is about half the smallest thoracolumbar mean isthmus height (~14 mm):
#: a "pedicle" lower than that is a lamina or a process the search latched onto where the label
#: missed the pedicle (tests/test_measure_ownseg.py erases one).
PEDICLE_HEIGHT_RANGE_MM = (7.5, 25.0)
PEDICLE_TRANSVERSE_RANGE_DEG = (-20.0, 55.0)
PEDICLE_SAGITTAL_MAX_DEG = 30.0
#: Left/right agreement within one vertebra: side-to-side isthmus width differences are about
#: 1 mm in normal spines and reach ~2-3 mm on the concave side of scoliotic curves (Liljenqvist
#: UR et al., Spine 1998;23:1662-1666 / J Bone Joint Surg Am 2002;84:359-368). Engineering
#: tolerances above those: larger differences mean one side is probably mis-measured.
LR_WIDTH_TOL_MM = 3.0
LR_WIDTH_TOL_FRAC = 0.3
LR_ANGLE_TOL_DEG = 10.0
#: A pedicle re-measured from the mirror image of the other one must be its mirror image within
#: these (engineering tolerances: about twice the measurement error at 1-1.5 mm voxels, see
#: benchmarks/bench_measure.py, plus the normal asymmetry above).
_MIRROR_CENTRE_TOL_MM = 4.0
_MIRROR_WIDTH_TOL_MM = 1.5
_MIRROR_WIDTH_TOL_FRAC = 0.15
_MIRROR_ANGLE_TOL_DEG = 6.0
#: Left/right pedicle sections (width x height) of one vertebra: a side is not replaced by the
#: mirror image of a smaller one (ramp, fraction of the mean section), and of two that still
#: disagree, one under this fraction of the other's section is rejected (engineering rules; paired
#: pedicle sizes differ by ~10-20 %, Zindrick et al. 1987 tables)
_LR_AREA_RAMP = 0.25
_LR_AREA_MIN_RATIO = 0.5
#: The left/right and mirror checks blend their results between 1 x and this multiple of their
#: tolerance (see _excess).
_SOFT_CHECK_RAMP = 2.5

#: Resolution (mm) of the frame-aligned resampling of the label mask.
_GRID_MM = 1.0
#: The pedicle is looked for in the anterior part of the canal's AP extent (from the posterior
#: body wall); farther back lie the laminae and the articular/transverse processes.
_PEDICLE_SEARCH_FRACTION = 0.6
#: Thickness of the cortical shell as clinical CT resolves it (~1 mm: the 0.2-0.5 mm shell of
#: micro-CT studies, Silva MJ et al., J Bone Miner Res 1994, is blurred to about 1 mm), used
#: by the edge model.
_CORTEX_MM = 1.0
#: Scanner blur (Gaussian sigma, mm) added to the voxel/interpolation kernel of the edge model;
#: the voxel box dominates at clinical slice thicknesses.
_PSF_SIGMA_MM = 0.0
#: Window of the edge-model fit: this far inside and outside the first edge estimate (mm).
_FIT_IN_MM, _FIT_OUT_MM = 4.0, 5.0
#: Sections used for the pedicle axis: width below a x isthmus width + b (mm), height below
#: c x isthmus height + d (engineering values: the pedicle proper before it flares into the body
#: or the lamina).
_AXIS_RUN_W = (1.15, 0.3)
_AXIS_RUN_H = (1.06, 0.3)
#: The frame's z axis is refined from the endplates measured on the CT (:func:`_mass_endplate`)
#: while their mean normal agrees with the mask's within this (deg), in _EP_ROUNDS rounds (the
#: lines follow the axis; always all rounds: a convergence threshold made the number of rounds,
#: and so the axis, switch with last-digit changes of the CT).
_CT_ENDPLATE_TOL_DEG = 8.0
_EP_ROUNDS = 3
#: The mass planes are used where the lengths' robust spread about the plane (mm) is below the
#: first value, blended into the edge planes up to the second (phantoms at 1-3 mm voxels with
#: 10 HU of noise: 0.25-0.6 mm; the real 3 mm abdomen CT, ~20 HU of noise over 100-150 HU of
#: bone contrast and irregular endplates: 1.7-5 mm, where its planes tilted by up to 20 deg).
_EP_SPREAD_MM = (1.1, 1.6)
#: The edge planes are used when both agree with the mask's within this (deg).
_EDGE_ENDPLATE_TOL_DEG = 5.0
#: ... and from this voxel size (mm) on the pedicles' frame from the edge planes alone (_fit_frame's
#: ``mass=False``): at 3 mm the mass planes' frames
#: were closer to the truth (phantoms: z tilt rms sagittal 1.71 -> 0.92, coronal 1.51 -> 0.71
#: deg) but the pedicle axis fit, whose line/tube gate is on a knife edge there, moved with
#: them (frame-free axis error p95 3.32 -> 3.82 deg, one pedicle 4.5 -> 9.8 deg; transverse p95
#: 2.37 -> 3.35 deg). So from this voxel size on the pedicles are fitted in the edge planes' frame
#: (their axes as before) and the vertebra's frame is then refitted with the mass planes, in which
#: their angles are given (measure_vertebra; 3 mm phantoms, bench_measure --pedicles: sagittal
#: p95/max 3.74/4.03 -> 2.85/3.75 deg, axes unchanged; the real CTs' mass planes are too noisy,
#: so their frames and angles are unchanged).
_EP_MASS_MAX_VOX_MM = 2.5
#: The endplate planes from bone mass (:func:`_mass_endplate`): the central part of the body
#: used (fraction of its half width and half depth: the rim is rounded and carries osteophytes),
#: lines per side of its grid (and the fewest usable lines), and the windows beyond a voxel (and
#: the cortex): this far inside and outside the mask's surface (mm).
_EP_REGION = 0.6
_EP_LINES = 9
_EP_MIN_LINES = 12
_EP_IN_MM, _EP_OUT_MM = 2.0, 3.0
#: ... a profile that rises past the surface by this fraction of the bone's contrast over the
#: background reaches the neighbour's endplate (across a thin disc); a ramp of this width
#: (fraction) blends the two windows.
_EP_RISE_FRAC, _EP_RISE_RAMP = 0.5, 0.2
#: The isthmus is measured by the partial-volume model fit of :func:`_fit_section_pv`: its slab
#: along the axis (half length, mm), its supersampling step (mm; each sub-sample covered by an
#: edge ramp, see _pv.py) and the HU above soft tissue from which a voxel outside the label is
#: another bone (faded out over _PV_OTHER_RAMP_HU).
_PV_HALF_LEN = 2.0
#: Positions (mm along the axis from the isthmus estimate) of the sections whose fits are combined,
#: and the softness of the combination (fraction of the least width + mm).
_PV_SECTION_OFFSETS = (-2.0, -1.0, 0.0, 1.0, 2.0)
_PV_SECTION_SOFT_FRAC, _PV_SECTION_SOFT_MM = 0.03, 0.1
#: Softness of the isthmus position among the sections of the pedicle proper (fraction of the least width).
_ISTHMUS_SOFT_FRAC = 0.08
_PV_SUBSTEP_MM = 1.0
_PV_OTHER_BONE_HU = 100.0
_PV_OTHER_RAMP_HU = 15.0
_PV_MARGIN_VOX = 0.5
#: Positions (mm along the axis from the isthmus estimate) of the sections whose centres give the
#: axis (:func:`_pv_axis`; they include _PV_SECTION_OFFSETS; mostly posterior: anteriorly the
#: pedicle soon joins the body), the number of passes, and the run of the pedicle proper among
#: them: width below a x least width + b (mm), height below c x least height + d (engineering
#: values, as _AXIS_RUN_W/_H; the pedicle's own flare is a few % over these +-7 mm).
_PV_LINE_OFFSETS = (-7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0)
_PV_LINE_PASSES = 2
_PV_LINE_RUN_W = (1.15, 0.3)
_PV_LINE_RUN_H = (1.06, 0.5)
#: ... each limit a ramp of this fraction of the least width/height + 0.1 mm; the line needs the
#: weight of this many sections (blended in from none).
_PV_LINE_RAMP = 0.03
_PV_LINE_MIN_SECTIONS = 5.0
#: Below this voxel size (mm) the pedicle axis is the line through the section centres
#: (:func:`_pv_axis`); from it on, that line where the pedicle proper carries its direction
#: (_PV_LINE_GATE_MM2), else the partial-volume model fitted over +-_PV_AXIS_HALF_LEN mm of the
#: tube (:func:`_fit_section_pv` with ``tilt``; drawn back to the centroid axis beyond
#: _PV_AXIS_MAX_DEG). (On the real 3 mm abdomen CT, whose pedicle proper is only 3-4 sections
#: long, the ungated line moved under +-0.5 HU of noise by 5-17 deg.)
_PV_AXIS_MIN_VOX_MM = 1.5
#: ... and from 1.5 mm on the line through the section centres is used when the sections of the
#: pedicle proper carry enough information about its direction: q = (their weight) x (weighted
#: variance of their positions along the axis), mm^2, from the line's first pass. The line's
#: direction error falls as 1 / sqrt(q) (least squares). Below the first value the tube fit
#: alone gives the axis, above the second the line alone, blended linearly between (engineering
#: values from the data: phantoms at 2-3 mm voxels q = 18-50, where the line's transverse errors
#: are a third of the tube fit's; the real 3 mm abdomen CT q <= 6 in its pedicles proper of 3-4
#: sections, where +-0.5 HU of noise moved the line 5-17 deg).
_PV_LINE_GATE_MM2 = (12.0, 18.0)
#: ... and the line also needs the weight of this many sections (ramp): a few sections at both ends
#: of the run give a large variance but no line (the chest CT's T6: 1.35 sections' weight, q 17;
#: phantoms at 2-3 mm: >= 3.5, the abdomen's pedicles <= 3.1 with q <= 5.3).
_PV_LINE_GATE_SECTIONS = (2.5, 3.5)
_PV_AXIS_HALF_LEN = 5.0
_PV_AXIS_MAX_DEG = 15.0
#: Standard deviation (deg) of the Gaussian prior on the fitted axis' tilt from the start axis;
#: the direction fit starts from the start axis and from it tilted by +-_PV_AXIS_START_DEG.
_PV_AXIS_PRIOR_DEG = 3.0
#: Standard deviation (voxels) of the prior on the fitted width and height around the start's.
_PV_SIZE_PRIOR_VOX = 1.0
_PV_AXIS_START_DEG = 5.0
#: Temperature (in units of the residual variance) of the soft minimum over the fits from
#: several starts (see _fit_section_pv.soft_fit).
_PV_SOFTMIN = 1.0
#: Softness of the least-section direction search: candidates weigh exp(-(area - least) / (this x least)).
_LSA_SOFT = 0.02
#: Unit of the tilt parameters of the direction fit (rad): Nelder-Mead's absolute tolerance
#: (0.02) is then 0.06 deg of direction, not 1 deg.
_TILT_UNIT = 0.05
#: Margin (mm) around the height of the posterior body within which a pedicle is looked for
#: (the pedicle joins the body between its endplates; its isthmus is 12-17 mm high in the
#: lumbar spine, Zindrick MR et al., Spine 1987;12:160-166, about half the body height).
_PEDICLE_Z_MARGIN_MM = 3.0
#: Rounds of pedicle cross-section sweeps (each re-fits the axis through the section centres).
_PEDICLE_ROUNDS = 3
#: The label is trusted to this many voxels for where an edge lies (its rim may be a voxel off
#: in an automatic segmentation; the CT decides the edge within the search window).
_MASK_TOLERANCE_VOX = 1
#: Step (mm) of the CT profiles used for half-maximum edges.
_STEP_MM = 0.1
#: Out-of-field CT values (padding) are below this.
_OUT_OF_FIELD_HU = -1500.0
#: An edge needs at least this contrast between the cortical peak and the tissue beyond it.
_MIN_EDGE_HU = 30.0


# --------------------------------------------------------------------------- helpers
@dataclass
class _Crop:
    """A CT/mask crop around one vertebra (as Volumes on the same sub-grid)."""

    ct: Volume
    mask: np.ndarray  # bool, crop grid
    smooth: np.ndarray  # float32, Gaussian-smoothed mask (for symmetry)
    touches_edge: bool
    points: np.ndarray  # (N, 3) LPS of the mask voxels (all)
    tolerant: np.ndarray  # bool, the mask dilated by _MASK_TOLERANCE_VOX
    others: np.ndarray | None = None  # bool, other vertebrae's labels on the crop grid (if known)

    @property
    def mask_f32(self) -> np.ndarray:
        """The mask as float32 (0/1), made once."""
        if getattr(self, "_mask_f32", None) is None:
            self._mask_f32 = self.mask.astype(np.float32)
        return self._mask_f32

    def others_at(self, xyz) -> np.ndarray:
        """Nearest-voxel test for another vertebra's label at LPS points (False when unknown)."""
        if self.others is None:
            return np.zeros(np.asarray(xyz).shape[:-1], bool)
        idx = np.rint(self.ct.world_to_index(np.asarray(xyz).reshape(-1, 3))).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < np.array(self.others.shape)), axis=1)
        out = np.zeros(len(idx), bool)
        out[ok] = self.others[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        return out.reshape(np.asarray(xyz).shape[:-1])

    def mask_at(self, xyz, tolerant: bool = False) -> np.ndarray:
        """Nearest-voxel mask value at LPS points (False outside the crop); ``tolerant``: of the
        mask dilated by ``_MASK_TOLERANCE_VOX`` (used when the label's own rim gives no CT edge:
        an automatic segmentation's rim may be a voxel too tight and hide the cortical peak)."""
        idx = np.rint(self.ct.world_to_index(np.asarray(xyz).reshape(-1, 3))).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < np.array(self.mask.shape)), axis=1)
        out = np.zeros(len(idx), bool)
        src = self.tolerant if tolerant else self.mask
        out[ok] = src[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        return out.reshape(np.asarray(xyz).shape[:-1])


def _bbox(mask: np.ndarray) -> tuple[slice, slice, slice]:
    sl = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(np.any(mask, axis=other))
        if nz.size == 0:
            raise InputError("The vertebra mask is empty: the label has no voxels on the CT grid.")
        sl.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(sl)  # type: ignore[return-value]


def _make_crop(ct: Volume, mask: np.ndarray, bbox=None, margin_mm: float = 20.0, label_map=None,
               label: int | None = None) -> _Crop:
    from scipy.ndimage import gaussian_filter

    mask = np.asarray(mask)
    boxed = bbox is not None and mask.shape != ct.shape
    if boxed and mask.shape != tuple(s.stop - s.start for s in bbox):
        raise InputError(f"The vertebra mask has shape {mask.shape}, neither the CT's {ct.shape} nor its "
                         f"box's; give the mask on the CT grid or on the box {bbox}.")
    if not boxed and mask.shape != ct.shape:
        raise InputError(f"The vertebra mask has shape {mask.shape} but the CT has {ct.shape}; "
                         "give the mask on the CT grid.")
    bb = bbox if bbox is not None else _bbox(mask)
    touches = any(s.start == 0 or s.stop == n for s, n in zip(bb, ct.shape))
    sp = ct.spacing
    lo = [max(0, s.start - int(np.ceil(margin_mm / d))) for s, d in zip(bb, sp)]
    hi = [min(n, s.stop + int(np.ceil(margin_mm / d))) for s, n, d in zip(bb, ct.shape, sp)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    arr = np.asarray(ct.array[sl], dtype=np.float32)
    if boxed:  # the mask covers the box only: place it in the crop
        m = np.zeros(arr.shape, bool)
        m[tuple(slice(s.start - a, s.stop - a) for s, a in zip(bb, lo))] = mask
    else:
        m = np.asarray(mask[sl]).astype(bool)
    if not m.any():
        raise InputError("The vertebra mask is empty: the label has no voxels on the CT grid.")
    sub = Volume(arr, ct.box_affine(lo), modality="CT")
    # out-of-field padding next to the vertebra also means the scan cuts it
    if not touches:
        from scipy.ndimage import binary_dilation

        near = binary_dilation(m, iterations=2) & ~m
        touches = bool(np.any(arr[near] < _OUT_OF_FIELD_HU))
    sigma = np.maximum(1.5 / sp, 0.5)
    smooth = gaussian_filter(m.astype(np.float32), sigma=sigma, mode="constant")
    pts = sub.index_to_world(np.argwhere(m))
    if _MASK_TOLERANCE_VOX > 0:
        from scipy.ndimage import binary_dilation

        tol = binary_dilation(m, iterations=_MASK_TOLERANCE_VOX)
    else:
        tol = m
    others = None
    if label_map is not None and label is not None:
        lm = np.asarray(label_map[sl])
        others = (lm > 0) & (lm != label) & ~m
    return _Crop(sub, m, smooth, touches, pts, tol, others)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _axes(x, z) -> np.ndarray:
    """Orthonormal rows x, y, z from a left-ish x and a superior-ish z (z kept, x made normal to z)."""
    z = _unit(z)
    x = _unit(np.asarray(x, float) - np.dot(x, z) * z)
    y = np.cross(z, x)
    return np.vstack([x, y, z])


class _Grid:
    """The mask resampled on a 1 mm grid aligned with a frame (index [ix, iy, iz])."""

    def __init__(self, crop: _Crop, origin, axes, res: float = _GRID_MM):
        from spineplan.anatomy._pv import trilinear

        local = (crop.points - origin) @ axes.T
        lo = np.floor(local.min(axis=0) - 3.0)
        hi = np.ceil(local.max(axis=0) + 3.0)
        self.res = res
        self.lo = lo
        self.origin = np.asarray(origin, float)
        self.axes = axes
        n = ((hi - lo) / res).astype(int) + 1
        gx, gy, gz = (lo[a] + res * np.arange(n[a]) for a in range(3))
        inv = np.linalg.inv(crop.ct.affine)
        A = inv[:3, :3]
        i0 = A @ self.origin + inv[:3, 3]
        ex, ey, ez = (A @ axes[a] for a in range(3))
        idx = (i0[:, None, None, None] + ex[:, None, None, None] * gx[None, :, None, None]
               + ey[:, None, None, None] * gy[None, None, :, None] + ez[:, None, None, None] * gz[None, None, None, :])
        # trilinear (compiled; map_coordinates(order=1, mode="constant") rounded to its float32 output)
        vals = trilinear(crop.mask_f32, np.ascontiguousarray(idx.reshape(3, -1)), 0.0).astype(np.float32)
        self.m = vals.reshape(tuple(n)) >= 0.5
        self.coords = (gx, gy, gz)

    def local(self, ix, iy, iz) -> np.ndarray:
        return self.lo + self.res * np.stack([ix, iy, iz], axis=-1)

    def ix(self, x: float) -> int:
        return int(round((x - self.lo[0]) / self.res))

    def iy(self, y: float) -> int:
        return int(round((y - self.lo[1]) / self.res))

    def iz(self, z: float) -> int:
        return int(round((z - self.lo[2]) / self.res))


@dataclass
class _Canal:
    found: bool
    front_y: float  # local y of the canal's anterior border (posterior body wall)
    back_y: float
    center: np.ndarray  # local (x, y)
    half_width: float


def _find_canal(g: _Grid) -> _Canal:
    """The spinal canal as the hole in the mask's projection along z (local coordinates)."""
    from scipy.ndimage import binary_closing, binary_fill_holes, label

    proj = g.m.any(axis=2)
    best = None
    for close_mm in (0.0, 2.0, 4.0):
        p = proj if close_mm == 0 else binary_closing(proj, iterations=int(round(close_mm / g.res)))
        holes = binary_fill_holes(p) & ~p
        lab, n = label(holes)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        k = int(np.argmax(sizes)) + 1
        if sizes[k - 1] * g.res ** 2 < 20.0:  # < 20 mm2 is not a canal
            continue
        best = lab == k
        break
    gx, gy, _ = g.coords
    if best is None:
        # fallback: the gap along y at the midline between body and posterior arch
        mid = g.ix(0.0)
        col = proj[max(mid - 2, 0):mid + 3].any(axis=0)
        on = np.flatnonzero(col)
        if on.size == 0:
            return _Canal(False, 0.0, 0.0, np.zeros(2), 0.0)
        gaps = np.flatnonzero(np.diff(on) > 1)
        if gaps.size == 0:
            y_end = gy[on[-1]]
            return _Canal(False, y_end, y_end, np.array([0.0, y_end]), 0.0)
        a, b = on[gaps[0]], on[gaps[0] + 1]
        return _Canal(False, gy[a] + 0.5 * g.res, gy[b] - 0.5 * g.res, np.array([0.0, 0.5 * (gy[a] + gy[b])]), 0.0)
    ii, jj = np.nonzero(best)
    cx, cy = gx[ii].mean(), gy[jj].mean()
    near = np.abs(gx[ii] - cx) <= 2.0
    front = gy[jj[near]].min() - 0.5 * g.res
    back = gy[jj[near]].max() + 0.5 * g.res
    hw = 0.5 * (gx[ii].max() - gx[ii].min() + g.res)
    return _Canal(True, float(front), float(back), np.array([cx, cy]), float(hw))


def _body_points(g: _Grid, canal: _Canal) -> np.ndarray:
    """Local coordinates of the grid's body voxels (anterior to the canal, not too lateral)."""
    ix, iy, iz = np.nonzero(g.m)
    loc = g.local(ix, iy, iz)
    sel = loc[:, 1] < canal.front_y - 1.0
    if canal.found and canal.half_width > 0:
        # the body lies in front of the canal; transverse processes/ribs lie behind its front
        sel &= np.abs(loc[:, 0] - canal.center[0]) < max(35.0, 3.0 * canal.half_width)
    body = loc[sel]
    if len(body) < 50:
        raise InputError("Could not find a vertebral body in front of the spinal canal in this label.")
    # keep the largest connected part (drops stray bits of processes)
    from scipy.ndimage import label

    sub = np.zeros_like(g.m)
    sub[ix[sel], iy[sel], iz[sel]] = True
    lab, n = label(sub)
    if n > 1:
        k = int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
        keep = lab[ix[sel], iy[sel], iz[sel]] == k
        body = body[keep]
    return body


def _fit_plane_z(pts: np.ndarray) -> np.ndarray:
    """Robust fit z = a x + b y + c (:func:`_plane_coef`); returns the unit normal (-a, -b, 1)/|.| (pointing +z)."""
    a, b, _ = _plane_coef(pts)
    return _unit([-a, -b, 1.0])


def _endplate_normals(body: np.ndarray, res: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Local normals and centre points of the superior and inferior body surfaces."""
    ij = np.rint(body[:, :2] / res).astype(np.int64)
    ij -= ij.min(axis=0)
    key = ij[:, 0] * (ij[:, 1].max() + 1) + ij[:, 1]
    uniq, inv = np.unique(key, return_inverse=True)
    top = np.full(len(uniq), -np.inf)
    bot = np.full(len(uniq), np.inf)
    np.maximum.at(top, inv, body[:, 2])
    np.minimum.at(bot, inv, body[:, 2])
    xy = np.zeros((len(uniq), 2))
    np.add.at(xy, inv, body[:, :2])
    xy /= np.bincount(inv)[:, None]
    # central columns only (the rim is rounded and carries osteophytes)
    cx, cy = np.median(xy, axis=0)
    hx = np.percentile(np.abs(xy[:, 0] - cx), 95)
    ylo, yhi = np.percentile(xy[:, 1], [3, 97])
    cy = 0.5 * (ylo + yhi)
    hy = 0.5 * (yhi - ylo)
    inner = (np.abs(xy[:, 0] - cx) < 0.6 * hx) & (np.abs(xy[:, 1] - cy) < 0.6 * hy)
    if inner.sum() < 10:
        inner = np.ones(len(xy), bool)
    sup = np.c_[xy[inner], top[inner]]
    inf = np.c_[xy[inner], bot[inner]]
    n_sup = _fit_plane_z(sup)
    n_inf = _fit_plane_z(inf)
    return n_sup, n_inf, sup.mean(axis=0), inf.mean(axis=0)


def _symmetry_x(crop: _Crop, z: np.ndarray, x0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Normal (perpendicular to z, near x0) of the plane that best mirrors the mask onto itself."""
    from spineplan.anatomy._pv import mirror_scores

    pts = crop.points
    if len(pts) > 3000:
        pts = pts[rng.choice(len(pts), 3000, replace=False)]
    c = pts.mean(axis=0)
    xp = _unit(x0 - np.dot(x0, z) * z)
    yp = np.cross(z, xp)
    inv = np.linalg.inv(crop.ct.affine)
    # in voxel index space the mirror image of p is idx(p) - 2 (dist - offset) (A n), A the
    # affine's inverse matrix (compiled: _pv.mirror_scores)
    ip = np.ascontiguousarray(pts @ inv[:3, :3].T + inv[:3, 3])
    dx, dy = np.ascontiguousarray((pts - c) @ xp), np.ascontiguousarray((pts - c) @ yp)
    ax, ay = inv[:3, :3] @ xp, inv[:3, :3] @ yp

    def scores(thetas, offsets):
        return mirror_scores(crop.smooth, ip, dx, dy, ax, ay, np.atleast_1d(np.asarray(thetas, float)),
                             np.atleast_1d(np.asarray(offsets, float)))

    th = np.radians(np.arange(-45.0, 45.1, 3.0))
    s = scores(th, [0.0])[:, 0]
    best = th[int(np.argmax(s))]
    offs = np.arange(-4.0, 4.01, 0.5)
    s = scores([best], offs)[0]
    d = offs[int(np.argmax(s))]
    th = best + np.radians(np.arange(-3.0, 3.01, 0.5))
    s = scores(th, [d])[:, 0]
    k = int(np.argmax(s))
    best = th[k]
    if 0 < k < len(th) - 1:  # parabolic refinement
        den = s[k - 1] - 2 * s[k] + s[k + 1]
        if den < 0:
            best = th[k] + 0.5 * (s[k - 1] - s[k + 1]) / den * (th[1] - th[0])
    n = np.cos(best) * xp + np.sin(best) * yp
    return n if n[0] >= 0 or np.dot(n, x0) >= 0 else -n


def _initial_z(centroid: np.ndarray, neighbours) -> np.ndarray:
    z = np.array([0.0, 0.0, 1.0])
    if neighbours is None:
        return z
    nb = [np.asarray(p, float).reshape(3) for p in neighbours if p is not None]
    if not nb:
        return z
    pts = np.vstack(nb + [centroid])
    order = np.argsort(pts[:, 2])
    d = pts[order[-1]] - pts[order[0]]
    if np.linalg.norm(d) < 5.0:
        return z
    d = _unit(d)
    # a vertebra is never tilted more than ~60 degrees from the scanner axis in a supine CT
    return d if d[2] > 0.5 else z


@dataclass
class _FrameFit:
    frame: VertebraFrame
    grid: _Grid
    canal: _Canal
    body_local: np.ndarray  # body voxels in frame coordinates
    n_sup: np.ndarray  # world
    n_inf: np.ndarray  # world
    sup_pt: np.ndarray  # world
    inf_pt: np.ndarray  # world


#: The sacrum's label has no inferior endplate of S1 (it runs on down to the coccyx, curving
#: forwards): its frame's z is the S1 superior endplate's normal alone (the plane of the sacral
#: slope, which the true AP / lateral of S1 are aligned with), fitted to the top of its body
#: columns, the body points within this distance (mm) below the label's top along z (an S1 body
#: is ~25-30 mm high; Zhou et al., Eur Spine J 2000). With the mean of a superior and an
#: "inferior" plane the S1 frames were 30-55 deg off on phantoms (benchmarks/bench_carm.py).
SACRUM_TOP_MM = 25.0
#: ... and within this distance (mm) of the vertebra above's centre, left-right (half an S1
#: body's width, ~45-50 mm; Zhou et al. 2000): a sacrum label that leaked through a sacro-iliac
#: joint into the ilium (the abdomen CT's own segmentation) must not tilt the plane.
SACRUM_HALF_WIDTH_MM = 25.0


def _sacrum_top(body: np.ndarray, above_x: float | None = None) -> np.ndarray:
    """The body points of a sacrum within SACRUM_TOP_MM of its top (local z) and, given the
    local x of the vertebra above (``above_x``), within SACRUM_HALF_WIDTH_MM of it."""
    pts = body
    if above_x is not None:
        near = np.abs(pts[:, 0] - above_x) < SACRUM_HALF_WIDTH_MM
        if near.sum() >= 50:
            pts = pts[near]
    top = float(np.percentile(pts[:, 2], 99))
    sel = pts[:, 2] > top - SACRUM_TOP_MM
    return pts[sel] if sel.sum() >= 50 else pts


#: The sacrum's canal is looked for in the label's top this far (mm, local z): the S1 arch (the
#: S1 body is ~25-30 mm high, Zhou et al. 2000, and its superior articular processes rise above
#: its endplate). Projected over the whole sacrum, the canal - which curves backwards with the
#: sacrum down to the hiatus - can be found off the midline (the abdomen CT's own label, the whole
#: sacrum: a 10 mm wide 'canal' 11 mm left of the midline; the body points then held posterior
#: elements and its S1 frame was 35 deg off the S1-only reference label's; bench_carm.py).
SACRUM_CANAL_MM = 30.0
#: The whole label's canal is kept while the top's agrees with it within this (mm: centre and
#: anterior border), as on the phantoms (their S1 frames unchanged).
SACRUM_CANAL_TOL_MM = 3.0


def _sacrum_canal(g: _Grid) -> _Canal:
    """The canal of a sacrum's resampled mask: :func:`_find_canal` of the whole label where it
    agrees with the one in the top :data:`SACRUM_CANAL_MM` (within :data:`SACRUM_CANAL_TOL_MM`),
    else the top's."""
    whole = _find_canal(g)
    gz = g.coords[2]
    on = np.flatnonzero(g.m.any(axis=(0, 1)))
    if on.size == 0:
        return whole
    top = copy.copy(g)
    top.m = g.m & (gz >= gz[on[-1]] - SACRUM_CANAL_MM)[None, None, :]
    upper = _find_canal(top)
    if not upper.found or (whole.found and np.all(np.abs(whole.center - upper.center) <= SACRUM_CANAL_TOL_MM)
                           and abs(whole.front_y - upper.front_y) <= SACRUM_CANAL_TOL_MM):
        return whole
    return upper


def _above_x(neighbours, origin, axes) -> float | None:
    """Local x (frame ``origin``/``axes``) of the highest neighbour centre above the origin."""
    nb = [np.asarray(p, float).reshape(3) for p in (neighbours or []) if p is not None]
    nb = [p for p in nb if (p - origin) @ axes[2] > 0]
    if not nb:
        return None
    return float((max(nb, key=lambda p: (p - origin) @ axes[2]) - origin) @ axes[0])


def _frame_endplates(body: np.ndarray, res: float, sacrum: bool, neighbours, origin, axes):
    """:func:`_endplate_normals` of the body points; for a sacrum the superior normal comes from
    its top only (:func:`_sacrum_top`)."""
    n_sup, n_inf, sup, inf = _endplate_normals(body, res)
    if sacrum:
        n_sup = _endplate_normals(_sacrum_top(body, _above_x(neighbours, origin, axes)), res)[0]
    return n_sup, n_inf, sup, inf


def _fit_frame(crop: _Crop, neighbours=None, rounds: int = 3, sacrum: bool = False,
               mass: bool | None = None, base: tuple | None = None) -> _FrameFit:
    """The vertebra's frame (see :mod:`spineplan.anatomy.model`) from its label crop; ``sacrum``:
    z from the superior endplate alone (:data:`SACRUM_TOP_MM`); ``mass``: the endplate planes from
    bone mass are tried (None: below _EP_MASS_MAX_VOX_MM voxels). ``base``: the frame from the mask
    alone, :func:`_mask_frame` of the same crop, when it is already at hand (it is the same for
    either ``mass``)."""
    if base is None:
        base = _mask_frame(crop, neighbours, rounds, sacrum)
    origin, axes, g, canal, body, n_sup, n_inf, sup_l, inf_l = base
    if sacrum:  # (the mask's top plane; the CT refinement below fits both endplates)
        frame = VertebraFrame(origin, axes)
        return _FrameFit(frame, g, canal, body, n_sup, n_inf, frame.to_world(sup_l), frame.to_world(inf_l))
    return _refine_frame(crop, origin, axes, g, canal, body, n_sup, n_inf, sup_l, inf_l, mass)


def _mask_frame(crop: _Crop, neighbours=None, rounds: int = 3, sacrum: bool = False) -> tuple:
    """The frame from the label mask alone: (origin, axes, grid, canal, body points, superior and
    inferior endplate normals (world), their points (frame))."""
    rng = np.random.default_rng(0)
    c = crop.points.mean(axis=0)
    z = _initial_z(c, neighbours)
    x = np.array([1.0, 0.0, 0.0])
    axes = _axes(x, z)
    origin = c
    for r in range(rounds):
        g = _Grid(crop, origin, axes)
        canal = _sacrum_canal(g) if sacrum else _find_canal(g)
        body = _body_points(g, canal)
        n_sup_l, n_inf_l, _, _ = _frame_endplates(body, g.res, sacrum, neighbours, origin, axes)
        z_new = _unit((n_sup_l if sacrum else n_sup_l + n_inf_l) @ axes)
        body_c = origin + body.mean(axis=0) @ axes
        x_new = _symmetry_x(crop, z_new, axes[0], rng)
        new_axes = _axes(x_new, z_new)
        change = np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", new_axes, axes).min(), -1, 1)))
        axes, origin = new_axes, body_c
        if r >= 1 and change < 0.2:
            break
    # final body/canal in the final frame
    g = _Grid(crop, origin, axes)
    canal = _sacrum_canal(g) if sacrum else _find_canal(g)
    body = _body_points(g, canal)
    origin = origin + body.mean(axis=0) @ axes
    g = _Grid(crop, origin, axes)
    canal = _sacrum_canal(g) if sacrum else _find_canal(g)
    body = _body_points(g, canal)
    n_sup_l, n_inf_l, sup_l, inf_l = _frame_endplates(body, g.res, sacrum, neighbours, origin, axes)
    return origin, axes, g, canal, body, n_sup_l @ axes, n_inf_l @ axes, sup_l, inf_l


def _refine_frame(crop: _Crop, origin, axes, g, canal, body, n_sup, n_inf, sup_l, inf_l,
                  mass: bool | None) -> _FrameFit:
    """The mask's frame (:func:`_mask_frame`) refined from the CT; ``mass`` as in :func:`_fit_frame`."""
    # Refined from the CT: each endplate from its bone mass (:func:`_mass_endplate`) where that is
    # precise (the lengths' spread about the plane below _EP_SPREAD_MM, blended out over it),
    # else from sub-voxel edges (:func:`_edge_endplate_normals`, kept when both planes agree with
    # the mask's within _EDGE_ENDPLATE_TOL_DEG; one round, as before); the mean axis is kept
    # while it agrees with the mask's within _CT_ENDPLATE_TOL_DEG (an endplate cut by the scan,
    # or lines that reached into the neighbour, tilt a plane more).
    n_mask = (n_sup, n_inf)
    z_mask = _unit(n_sup + n_inf)
    lo, hi = _EP_SPREAD_MM
    coarse = float(np.max(crop.ct.spacing)) >= _EP_MASS_MAX_VOX_MM if mass is None else not mass
    for r in range(_EP_ROUNDS):
        fr = VertebraFrame(origin, axes)
        fits = [None, None] if coarse else [_mass_endplate(crop, fr, body, top) for top in (True, False)]
        w = [0.0 if f is None else float(np.clip((hi - f[2]) / (hi - lo), 0.0, 1.0)) for f in fits]
        edge_only = max(w) == 0.0  # no precise mass plane: one round of edge planes at most
        if edge_only and r > 0:
            break  # (the mass planes of the previous round stand)
        edge = _edge_endplate_normals(crop, fr, g, body) if min(w) < 1.0 else None
        if edge is not None and not all(np.degrees(np.arccos(np.clip(np.dot(a, b), -1, 1))) < _EDGE_ENDPLATE_TOL_DEG
                                        for a, b in zip(edge, n_mask)):
            edge = None
        if edge_only and edge is None:
            break  # the mask's planes
        ns = []
        for k in range(2):
            alt = edge[k] if edge is not None else n_mask[k]
            ns.append(_unit(w[k] * (fits[k][0] @ axes) + (1.0 - w[k]) * alt) if w[k] > 0 else alt)
        z_new = _unit(ns[0] + ns[1])
        if np.degrees(np.arccos(np.clip(z_new @ z_mask, -1, 1))) >= _CT_ENDPLATE_TOL_DEG:
            break
        n_sup, n_inf = ns
        if edge_only and np.degrees(np.arccos(np.clip(z_new @ axes[2], -1, 1))) >= 10.0:
            break
        if r > 0:  # (the lines follow the axis and the fits swing about it by a few tenths: damped)
            z_new = _unit(z_new + axes[2])
        axes = _axes(axes[0], z_new)
        g = _Grid(crop, origin, axes)
        canal = _find_canal(g)
        body = _body_points(g, canal)
        _, _, sup_l, inf_l = _endplate_normals(body, g.res)
        if edge_only:
            break
    frame = VertebraFrame(origin, axes)
    return _FrameFit(frame, g, canal, body, n_sup, n_inf, frame.to_world(sup_l), frame.to_world(inf_l))


def _plane_coef(pts: np.ndarray) -> np.ndarray:
    """Robust least-squares coefficients (a, b, c) of z = a x + b y + c: three rounds, each
    dropping points beyond 3 x (median absolute residual + 0.5 mm)."""
    X = np.c_[pts[:, 0], pts[:, 1], np.ones(len(pts))]
    sel = np.ones(len(pts), bool)
    coef = np.zeros(3)
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(X[sel], pts[sel, 2], rcond=None)
        res = pts[:, 2] - X @ coef
        mad = np.median(np.abs(res[sel])) + 0.5
        new = np.abs(res) < 3.0 * mad
        if new.sum() < 10 or np.array_equal(new, sel):
            break
        sel = new
    return coef


def _soft_plane_coef(pts: np.ndarray, iters: int = 6) -> np.ndarray:
    """(a, b, c) of z = a x + b y + c by iteratively reweighted least squares with Cauchy
    weights (scale 2.5 x the weighted median absolute residual + 0.1 mm): no point is dropped
    at a threshold, so a last-digit change of the data does not switch the plane."""
    X = np.c_[pts[:, 0], pts[:, 1], np.ones(len(pts))]
    w = np.ones(len(pts))
    coef = np.zeros(3)
    for _ in range(iters):
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(X * sw[:, None], pts[:, 2] * sw, rcond=None)
        res = pts[:, 2] - X @ coef
        scale = 2.5 * 1.4826 * np.median(np.abs(res)) + 0.1
        w = 1.0 / (1.0 + (res / scale) ** 2)
    return coef


def _mass_endplate(crop: _Crop, frame: VertebraFrame, body: np.ndarray, top: bool, passes: int = 2):
    """One endplate plane (local frame) from the bone mass along lines across it: (unit normal
    pointing +z, point on the plane near the surface) or None.

    Lines parallel to the frame's z run through a grid of _EP_LINES x _EP_LINES points over the
    body's central part (the inner _EP_REGION of its width and depth: the rim is rounded and
    carries osteophytes), each over a window from inside the interior, across the cortex, to
    past the surface, centred on the mask's surface (a plane fit of its columns' ends). Along
    each, the integral of (CT - background) is (interior - background) x (the length of bone in
    the window) + the cortex's excess mass: the surface lies where that length ends. The
    interior level is the median over all lines; the background is each line's own (smoothed
    over the lines), see the comments; the cortex's excess mass, the same on every line, only
    shifts the plane and is left out. Where a line reaches the neighbour's endplate across a
    thin disc, it ends at the disc's least value. A robust (Cauchy) plane fit of the lengths
    gives the tilt; a second pass re-centres the windows on the surface.

    Why mass: blur and partial volume move bone intensity but keep its integral (a voxel's box
    average, summed over voxels, is the integral), so the length does not depend on where the
    surface lies between two voxel centres. Edges found on trilinearly interpolated profiles
    (half maximum, even a blurred-edge model) err by a function of that phase (+-0.5-1 mm at
    2-3 mm voxels); over an endplate a few degrees off the grid the phase changes steadily, and
    a plane through such edges tilted by 2-4 deg (phantoms at 2-3 mm voxels: the frame's z,
    and every sagittal pedicle angle and C-arm true AP with it). A model of the voxels' box
    average fitted to the voxels themselves has no interpolation error, but when the surface is
    nearly parallel to the grid all voxels sample the edge at about the same phase and the fit
    then depends on the exact shape of the edge (a Gaussian edge in place of the box moved the
    plane by 2 deg); the mass does not.
    """
    import warnings

    cx, cy = np.median(body[:, 0]), 0.5 * sum(np.percentile(body[:, 1], [3, 97]))
    hx = _EP_REGION * np.percentile(np.abs(body[:, 0] - cx), 95)
    hy = _EP_REGION * 0.5 * np.subtract(*np.percentile(body[:, 1], [97, 3]))
    sgn = 1.0 if top else -1.0
    # the mask's surface over the region (its columns' ends): the windows' centre
    ij = np.rint(body[:, :2]).astype(np.int64)
    key = (ij[:, 0] - ij[:, 0].min()) * (np.ptp(ij[:, 1]) + 1) + (ij[:, 1] - ij[:, 1].min())
    uniq, inv = np.unique(key, return_inverse=True)
    end = np.full(len(uniq), -np.inf)
    np.maximum.at(end, inv, sgn * body[:, 2])
    xy = np.zeros((len(uniq), 2))
    np.add.at(xy, inv, body[:, :2])
    xy /= np.bincount(inv)[:, None]
    inner = (np.abs(xy[:, 0] - cx) < hx) & (np.abs(xy[:, 1] - cy) < hy)
    if inner.sum() < 10:
        return None
    a, b, c = _plane_coef(np.c_[xy[inner, 0] - cx, xy[inner, 1] - cy, end[inner]])
    sp = float(np.max(crop.ct.spacing))
    g = np.linspace(-1.0, 1.0, _EP_LINES)
    u, v = (w.ravel() for w in np.meshgrid(g * hx, g * hy, indexing="ij"))
    w_in = _CORTEX_MM + 1.5 * sp + _EP_IN_MM  # inside: past the cortex and its blur
    w_out = sp + _EP_OUT_MM  # outside: past the surface's blur
    s = np.arange(-w_in, w_out + sp + 0.5 * _STEP_MM, _STEP_MM)  # (and a voxel further: is there a neighbour?)
    D = sgn * frame.axes[2]
    for _ in range(passes):
        P = frame.to_world(np.c_[u + cx, v + cy, sgn * (a * u + b * v + c)])
        pts = P[:, None, :] + s[None, :, None] * D[None, None, :]
        val = crop.ct.sample(pts, order=1, fill=2.0 * _OUT_OF_FIELD_HU)  # off the grid: out of field
        # out of the field of view: a line ends before it (past the surface), or is not used
        out = val <= _OUT_OF_FIELD_HU
        first_out = np.where(out.any(axis=1), s[np.argmax(out, axis=1)], np.inf)
        ok = first_out > 0.5 * sp
        val = np.where(out, np.nan, val)
        if ok.sum() < _EP_MIN_LINES:
            return None
        I = float(np.median(val[ok][:, s < -(_CORTEX_MM + 1.5 * sp)]))
        # Past the surface: where the profile rises again (the neighbour's endplate across a thin
        # disc), the window ends at its least value between the two, the disc's one clean voxel
        # (there this edge's blur has ended and the neighbour's not begun). The background is
        # the median of the lines' least values to find that rise, then of the disc's values on
        # the lines without a neighbour (their least value is biased low by the noise).
        beyond = s >= 0.5 * sp
        k_min = np.flatnonzero(beyond)[0] + np.argmin(np.where(np.isnan(val), np.inf, val)[:, beyond], axis=1)
        v_min = val[np.arange(len(val)), k_min]
        # (a line whose every sample past the surface is out of the field has no least value: its
        # NaN made the background NaN, which passed the contrast test below and crashed the plane
        # fit - the chest CT's own C7 at the top of the scan)
        ok &= np.isfinite(v_min)
        if ok.sum() < _EP_MIN_LINES:
            return None
        B = float(np.median(v_min[ok]))
        if I - B < _MIN_EDGE_HU:
            return None
        after = np.where(s[None, :] > s[k_min][:, None], np.nan_to_num(val, nan=-np.inf), -np.inf).max(axis=1)
        # (a ramp, not a threshold: a line near it must not jump between the two windows)
        rise = np.clip(((after - B) / (I - B) - _EP_RISE_FRAC) / _EP_RISE_RAMP + 0.5, 0.0, 1.0)
        end_full = np.minimum(w_out, first_out - _STEP_MM)
        end_cut = np.minimum(np.minimum(s[k_min], w_out), first_out - _STEP_MM)
        ok &= end_cut > 0.5 * sp
        if ok.sum() < _EP_MIN_LINES:
            return None
        end = rise * end_cut + (1.0 - rise) * end_full
        inwin = s[None, :] <= end[:, None]
        # each line's own background past the surface's blur (the disc's nucleus and annulus
        # differ by ~20 HU), or its least value where that part is short: the mass is taken over
        # one background B for all lines (a line's own, in the division, would make the cortex's
        # mass / (I - B) differ between lines) and corrected by the line's excess over it beyond
        # the surface, (B_line - B) x (window end - surface), with the surface at the window's
        # centre (a voxel's error there moves the length by ~(B_line - B) / (I - B) voxels).
        plateau = inwin & (s[None, :] > sp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            b_line = np.nanmedian(np.where(plateau, val, np.nan), axis=1)
        short = plateau.sum(axis=1) * _STEP_MM < 0.5 * sp
        b_line = np.where(short | np.isnan(b_line), v_min, b_line)
        # (smoothed over the lines by a robust quadratic in u, v: one voxel's noise moved a
        # line's length by ~0.4 mm at 3 mm voxels)
        Q = np.c_[np.ones(len(u)), u, v, u * u, v * v, u * v] / np.array([1.0, hx, hy, hx * hx, hy * hy, hx * hy])
        keep = ok.copy()
        for _ in range(3):
            q, *_ = np.linalg.lstsq(Q[keep], b_line[keep], rcond=None)
            res = b_line - Q @ q
            keep = ok & (np.abs(res) <= 3.0 * (1.4826 * np.median(np.abs(res[keep])) + 1.0))
        b_line = Q @ q
        B = float(np.median(b_line[ok]))
        if I - B < _MIN_EDGE_HU:
            return None
        # length of bone in the window (+ the cortex's excess mass / (I - B), the same on every line)
        excess = np.nan_to_num(val - B)
        mass_full = np.sum(np.where(s[None, :] <= end_full[:, None], excess, 0.0), axis=1)
        mass_cut = np.sum(np.where(s[None, :] <= end_cut[:, None], excess, 0.0), axis=1)
        mass = (rise * mass_cut + (1.0 - rise) * mass_full) * _STEP_MM
        ln = ((mass - (b_line - B) * end) / (I - B))[ok]
        e = ln - w_in
        # the windows of the next pass are centred on the surface: the median profile's
        # half-maximum crossing past its peak (a rough edge, only for where the windows lie)
        with warnings.catch_warnings():  # (the samples out of the field are NaN)
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(val[ok], axis=0)
        k_pk = int(np.argmax(np.where(s < sp, np.nan_to_num(med, nan=-np.inf), -np.inf)))
        below = np.flatnonzero(med[k_pk:] < 0.5 * (med[k_pk] + B))
        shift = float(np.clip(s[k_pk + below[0]], -sp, sp)) if below.size else 0.0
        a, b, c = _soft_plane_coef(np.c_[u[ok], v[ok], a * u[ok] + b * v[ok] + c + e - np.median(e)])
        c += shift
        spread = float(1.4826 * np.median(np.abs(e - np.median(e) - a * u[ok] - b * v[ok]
                                                 + np.median(a * u[ok] + b * v[ok]))))
    n = _unit([-a, -b, 1.0]) if top else _unit([a, b, 1.0])
    return n, np.array([cx, cy, sgn * c]), spread


def _edge_endplate_normals(crop: _Crop, frame: VertebraFrame, g: _Grid, body: np.ndarray):
    """Superior and inferior endplate normals (world) from sub-voxel CT edges (the frame's
    refinement where :func:`_mass_endplate` is too noisy; see _EP_SPREAD_MM): the top and
    bottom edges of the body along lines parallel to the current z axis through its central
    columns (the inner 60 % of its width and depth, where the rim's rounding and osteophytes do
    not reach), each a robust plane fit. The mask's staircase surfaces tilt a plane fit by
    1-3 deg at 1-3 mm voxels; the edges do not. None when too few lines give both edges."""
    cx, cy = np.median(body[:, 0]), 0.5 * sum(np.percentile(body[:, 1], [3, 97]))
    hx = np.percentile(np.abs(body[:, 0] - cx), 95)
    hy = 0.5 * np.subtract(*np.percentile(body[:, 1], [97, 3]))
    xs = cx + np.linspace(-0.6, 0.6, 7) * hx
    ys = cy + np.linspace(-0.6, 0.6, 7) * hy
    P = []
    for x in xs:
        for y in ys:
            ext = _column_extent(g, x, y)
            if ext is not None:
                P.append([x, y, 0.5 * (ext[0] + ext[1])])
    if len(P) < 12:
        return None
    P = np.asarray(P)
    Pw = frame.to_world(P)
    sp = float(np.max(crop.ct.spacing))
    E = _extents(crop, Pw, np.tile(frame.axes[2], (len(P), 1)), 40.0, sp, bounded=True)
    ok = np.all(np.isfinite(E), axis=1)
    if ok.sum() < 12:
        return None
    top = np.c_[P[ok, :2], P[ok, 2] + E[ok, 1]]
    bot = np.c_[P[ok, :2], P[ok, 2] + E[ok, 0]]
    return _fit_plane_z(top) @ frame.axes, _fit_plane_z(bot) @ frame.axes


def vertebra_frame(ct: Volume, mask: np.ndarray, *, neighbours=None) -> VertebraFrame:
    """The vertebra's own frame from its label mask on the CT grid.

    ``neighbours``: optional LPS points (e.g. centroids of the vertebrae above and below)
    used for the first guess of the superior axis; without them the scanner's z axis is used.
    """
    return _fit_frame(_make_crop(ct, mask), neighbours).frame


# --------------------------------------------------------------------------- CT profiles
def _pct(x: np.ndarray, q: float) -> float:
    """Cheap percentile (nearest rank) of a short array."""
    xs = np.sort(x)
    return float(xs[int(round(q / 100.0 * (len(xs) - 1)))])


def _edge_from_profile(s: np.ndarray, v: np.ndarray, inside: np.ndarray, sp: float,
                       max_out: float | None = None) -> tuple[float, float] | None:
    """Outer half-maximum edge along one half-line sampled at ``s`` (from a point inside bone).

    The mask border along the line gives the rough edge e; the cortical peak is the highest
    CT value within [e - max(3 mm, 1.5 voxels), e + 1 voxel]; the background is the 30th
    percentile over [e + 1 voxel, e + 1 voxel + 4 mm]; the edge is where the profile falls
    through their mean going outwards from the peak (linear interpolation between samples).
    ``max_out``: the peak is looked for, and the edge lies, at most this far beyond e: where the
    label abuts a neighbour's across a thin disc (2.5 mm slices of the thoracic chest CT), the
    cortical peak beyond the rim is the neighbour's endplate, and the edge found from it made T9
    27 mm high against its label's 21 mm (a false Genant grade 2). Returns (edge distance, threshold).
    """
    on = np.flatnonzero(inside)
    if on.size == 0:
        return None
    off = np.flatnonzero(~inside[on[0]:])
    if off.size == 0:
        return None
    e = s[on[0] + off[0]]  # the mask may start a little off the start point: first exit after entry
    win = max(3.0, 1.5 * sp)
    a, b = np.searchsorted(s, [max(e - win, 0.0), e + (sp if max_out is None else min(sp, max_out))])
    if b <= a:
        return None
    k = a + int(np.argmax(v[a:b]))
    c0, c1 = np.searchsorted(s, [e + sp, e + sp + 4.0])
    if c1 - c0 < 3:
        return None
    bg = _pct(v[c0:c1], 30)
    peak = float(v[k])
    if peak - bg < _MIN_EDGE_HU:  # no bone edge here
        return None
    thr = 0.5 * (peak + bg)
    below = np.flatnonzero(v[k:] < thr)
    if below.size == 0:
        return None
    j = k + int(below[0])
    v0, v1 = v[j - 1], v[j]
    f = (v0 - thr) / (v0 - v1) if v0 != v1 else 0.0
    edge = float(s[j - 1] + f * (s[j] - s[j - 1]))
    return (edge if max_out is None else min(edge, e + max_out)), thr


def _line_kernel(spacing: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CT's blur along the unit direction ``d``: per voxel axis, the voxel's box average and
    the tent of linear interpolation (box * box), widths ``spacing_i * |d_i|``; plus
    ``_PSF_SIGMA_MM`` of scanner blur. Returns (x, pdf, cdf) on a ``_STEP_MM`` grid."""
    k = np.array([1.0])
    for h in np.asarray(spacing, float) * np.abs(d):
        n = int(round(h / _STEP_MM))
        if n >= 2:
            box = np.ones(n) / n
            k = np.convolve(np.convolve(k, box), box)
    if _PSF_SIGMA_MM > 0:
        g = np.arange(-3 * _PSF_SIGMA_MM, 3 * _PSF_SIGMA_MM + 1e-9, _STEP_MM)
        k = np.convolve(k, np.exp(-0.5 * (g / _PSF_SIGMA_MM) ** 2))
    k /= k.sum()
    x = (np.arange(len(k)) - (len(k) - 1) / 2.0) * _STEP_MM
    return x, k / _STEP_MM, np.cumsum(k)


def _model_edge(s: np.ndarray, v: np.ndarray, e0: float, kern, thr: float, sp: float) -> float | None:
    """Edge position by fitting the blurred model of a bone surface to a profile.

    Model along the outward half-line: background B beyond the edge e, interior level
    B + D before it, and a thin cortical shell of mass A centred ``_CORTEX_MM / 2`` inside the
    edge, all blurred by the line's kernel. For each trial e the model is linear in (B, D, A)
    (least squares); e minimises the residual. Unlike a half-maximum, this is not biased
    outwards when the cortex is thinner than the voxels.
    """
    from spineplan.anatomy._pv import edge_residuals

    x, pdf, cdf = kern
    lo, hi = e0 - _FIT_IN_MM, e0 + _FIT_OUT_MM
    # stop before the next bone (e.g. the neighbour's endplate across a thin disc)
    again = np.flatnonzero((s > e0 + 0.5) & (v > thr))
    if again.size:
        hi = min(hi, s[again[0]] - 0.5 * sp)
    sel = (s >= max(lo, 0.0)) & (s <= hi)
    if sel.sum() < 20:
        return None
    ss, vv = s[sel], v[sel]
    es = e0 + np.arange(-2.0, 2.0001, 0.05)
    # residual of the model for every trial edge (compiled: one pass per trial, no matrices)
    res = edge_residuals(np.ascontiguousarray(ss, dtype=np.float64), np.ascontiguousarray(vv, dtype=np.float64),
                         es, float(x[0]), float(x[1] - x[0]) if len(x) > 1 else _STEP_MM,
                         pdf, cdf, 0.5 * _CORTEX_MM)
    i = int(np.argmin(res))
    if not np.isfinite(res[i]):
        return None
    off = 0.0
    if 0 < i < len(es) - 1:
        den = res[i - 1] - 2 * res[i] + res[i + 1]
        off = 0.5 * (res[i - 1] - res[i + 1]) / den if (den > 0 and np.isfinite(den)) else 0.0
    e = float(es[i] + np.clip(off, -1, 1) * (es[1] - es[0]))
    # the model corrects the half-maximum by a fraction of a voxel; more means it fitted
    # something else (a neighbouring structure): the correction is clamped to that (not
    # dropped, which would switch between the two edges for a last-digit change of the CT)
    lim = 0.6 * sp + 0.3
    return float(np.clip(e, e0 - lim, e0 + lim))


#: Pedicle sections on thick slices (anisotropic voxels, :func:`_pedicle_sections`): along the
#: width, the label counts where it is at least 2 x this (mm) high, when the part less high
#: reaches _SLAB_MIN_MM beyond: a pedicle is >= 7.5 mm high (:data:`PEDICLE_HEIGHT_RANGE_MM`);
#: the chest CT's own labels (2.5 mm slices) held slabs one or two slices (~5 mm) high running
#: 8-10 mm on beside the T8/T9 pedicles over the rib heads (T9 left read 12.1 mm). Where the
#: label is thick again further out (a transverse process joining), it is not a slab.
_SLAB_HALF_MM = 3.0
_SLAB_MIN_MM = 2.5


def _extents(crop: _Crop, P, D, max_mm: float, sp: float, tolerant: bool = False,
             bounded: bool = False, thick=None) -> np.ndarray:
    """Half-maximum edges along +-D from each point P: array (n, 2) of (negative, positive)
    distances, NaN where an edge is not found. One CT and one mask lookup for all lines.
    ``tolerant``: where the label's rim gives no edge, retry from the rim of the mask dilated
    by ``_MASK_TOLERANCE_VOX`` (pedicle sections; not body heights, where the dilated rim can
    reach across a thin disc). ``bounded``: an edge does not reach into another vertebra's label
    (body heights, where labels abut across thin discs: see :func:`_edge_from_profile`)."""
    P = np.atleast_2d(np.asarray(P, float))
    D = np.atleast_2d(np.asarray(D, float))
    s = np.arange(0.0, max_mm, _STEP_MM)
    ss = np.concatenate([-s[::-1], s[1:]])  # symmetric samples, s=0 once
    pts = P[:, None, :] + ss[None, :, None] * D[:, None, :]
    v = crop.ct.sample(pts, order=1)
    m = crop.mask_at(pts)
    mt = crop.mask_at(pts, tolerant=True) if tolerant else m
    mk = None
    if thick is not None and float(np.ptp(crop.ct.spacing)) > 0.0:
        # the mask where it is at least 2 x _SLAB_HALF_MM thick along ``thick`` (thick slices only:
        # at isotropic 3 mm voxels the test is as coarse as the slab and cut real pedicle rims)
        h = _SLAB_HALF_MM * np.asarray(thick, float)
        mk = m & crop.mask_at(pts + h) & crop.mask_at(pts - h)
    mo = crop.others_at(pts) if bounded and crop.others is not None else None
    n0 = len(s) - 1  # index of s=0
    out = np.full((len(P), 2), np.nan)
    kernels: dict = {}
    for i in range(len(P)):
        key = tuple(np.round(np.abs(D[i]), 2))
        if key not in kernels:
            kernels[key] = _line_kernel(crop.ct.spacing, D[i])
        kern = kernels[key]
        edges = []
        for half in (slice(n0, None, -1), slice(n0, None)):
            vv, mm, mmt = v[i, half], m[i, half], mt[i, half]
            if mk is not None:
                # a thin slab of the label running on beyond the section (a rib head's or a process's
                # sliver, one or two slices high, at the costovertebral joint): the label's border
                # is taken where the slab begins when the slab reaches _SLAB_MIN_MM beyond it
                mmk = mk[i, half]
                on_k = np.flatnonzero(mmk)
                on_m = np.flatnonzero(mm)
                if on_k.size and on_m.size:
                    off_k = np.flatnonzero(~mmk[on_k[0]:])
                    off_m = np.flatnonzero(~mm[on_m[0]:])
                    j_k = on_k[0] + off_k[0] if off_k.size else len(s) - 1
                    j_m = on_m[0] + off_m[0] if off_m.size else len(s) - 1
                    e_k, e_m = s[j_k], s[j_m]
                    if mmk[j_k:j_m].any():  # thick again further out (a process joining): no slab
                        e_k = e_m
                    if e_m - e_k > _SLAB_MIN_MM:
                        mm = mmk.copy()
                        mm[on_k[0] + (off_k[0] if off_k.size else len(mm)):] = False
                        mmt = mm
            max_out = None
            on = np.flatnonzero(mm)
            if mo is not None and on.size:  # another vertebra's label further along the line
                off = np.flatnonzero(~mm[on[0]:])
                if off.size:
                    j = on[0] + off[0]
                    nxt = np.flatnonzero(mo[i, half][j:])
                    if nxt.size:
                        max_out = float(s[j + nxt[0]] - s[j])
            r = _edge_from_profile(s, vv, mm, sp, max_out)
            if r is None and tolerant:  # the label's rim may be a voxel too tight: look further out
                r = _edge_from_profile(s, vv, mmt, sp)
            e = None
            if r is not None:
                e = r[0]
                e2 = _model_edge(s, vv, e, kern, r[1], sp)
                e = e2 if e2 is not None else e
                if max_out is not None:
                    e = min(e, s[on[0] + np.flatnonzero(~mm[on[0]:])[0]] + max_out)
            edges.append(e)
        if edges[0] is not None and edges[1] is not None:
            out[i] = (-edges[0], edges[1])
    return out


def _edge_inward_from_hole(ct: Volume, crop: _Crop, p0, d, max_mm: float, sp: float) -> float | None:
    """Distance from ``p0`` (inside the canal) along ``d`` to the half-maximum edge of the bone wall."""
    s = np.arange(0.0, max_mm, _STEP_MM)
    pts = np.asarray(p0)[None, :] + s[:, None] * np.asarray(d)[None, :]
    inside = crop.mask_at(pts)
    on = np.flatnonzero(inside)
    if on.size == 0:
        return None
    e = s[on[0]]
    v = ct.sample(pts, order=1)
    a, b = np.searchsorted(s, [max(e - sp, 0.0), e + max(3.0, 1.5 * sp)])
    k = a + int(np.argmax(v[a:b]))
    c1 = np.searchsorted(s, max(e - sp, 0.0))
    if c1 < 3:
        bg = float(np.percentile(v[: max(c1, 1)], 50))
    else:
        bg = float(np.percentile(v[:c1], 50))
    peak = float(v[k])
    if peak - bg < _MIN_EDGE_HU:
        return None
    thr = 0.5 * (peak + bg)
    above = np.flatnonzero(v[: k + 1] < thr)
    if above.size == 0:
        return None
    j = int(above[-1])  # last sample below thr before the peak
    v0, v1 = v[j], v[j + 1]
    f = (thr - v0) / (v1 - v0) if v1 != v0 else 0.0
    return float(s[j] + f * (s[j + 1] - s[j]))


# --------------------------------------------------------------------------- pedicles
def _pedicle_z_window(fit: "_FrameFit") -> tuple[float, float]:
    """Local z range in which the pedicles can lie: the height of the posterior part of the body
    (the pedicles join the body between its endplates), with a margin of ``_PEDICLE_Z_MARGIN_MM``.
    Bone of the mask above or below it (a neighbour's articular process given this label by an
    imperfect segmentation, or this vertebra's own facets) cannot seed the pedicle."""
    body = fit.body_local
    post = body[body[:, 1] > fit.canal.front_y - 10.0]
    if len(post) < 20:
        post = body
    zlo, zhi = np.percentile(post[:, 2], [2, 98])
    return float(zlo - _PEDICLE_Z_MARGIN_MM), float(zhi + _PEDICLE_Z_MARGIN_MM)


def _pedicle_seed(g: _Grid, canal: _Canal, side: str, zwin: tuple[float, float] | None = None):
    """Coarse isthmus centre (local) and axis from coronal sections of the resampled mask.

    The pedicle is tracked from the posterior body wall backwards: in the first section the
    component within the body's height (``zwin``) nearest the canal's lateral border; in each
    following section the component overlapping the previous one. Stray bone of the label that
    is not connected to the body that way (a neighbour's articular process) is ignored.
    """
    from scipy.ndimage import binary_dilation, label

    sgn = 1.0 if side == "left" else -1.0
    gx, gy, gz = g.coords
    cx = canal.center[0]
    lateral = sgn * (gx - cx) > 0.5
    if zwin is not None:
        inz = (gz >= zwin[0]) & (gz <= zwin[1])
        lateral = lateral[:, None] & inz[None, :]
    else:
        lateral = np.repeat(lateral[:, None], len(gz), axis=1)
    y0, y1 = canal.front_y, canal.back_y
    if y1 - y0 < 4.0:
        return None
    rows = []
    prev = None
    for y in np.arange(y0 + 0.5, y0 + _PEDICLE_SEARCH_FRACTION * (y1 - y0), g.res):
        iy = g.iy(y)
        sec = g.m[:, iy, :] & lateral
        if not sec.any():
            continue
        lab, n = label(sec)
        if n == 0:
            continue
        # ignoring slivers (< 12 mm2): the component overlapping the previous section's one,
        # else (first section, or the track was lost) the one nearest the canal's lateral border
        sizes = np.bincount(lab.ravel()) * g.res ** 2
        big = sizes >= 12.0
        big[0] = False
        comp = 0
        if prev is not None:
            ov = np.bincount(lab[binary_dilation(prev) & big[lab]], minlength=len(sizes))
            ov[0] = 0
            if ov.max() > 0:
                comp = int(np.argmax(ov))
        if comp == 0:
            ii, kk = np.nonzero(big[lab])
            if ii.size == 0:
                continue
            dist = np.abs(gx[ii] - cx)
            comp = lab[ii[np.argmin(dist)], kk[np.argmin(dist)]]
        prev = lab == comp
        ci, ck = np.nonzero(prev)
        w = gx[ci].max() - gx[ci].min() + g.res
        h = gz[ck].max() - gz[ck].min() + g.res
        rows.append((y, w, h, gx[ci].mean(), gz[ck].mean(), len(ci)))
    if len(rows) < 3:
        return None
    rows = np.array(rows)
    area = rows[:, 5]
    k = int(np.argmin(np.convolve(area, np.ones(3) / 3, mode="same")[1:-1])) + 1 if len(rows) > 3 else int(np.argmin(area))
    sel = (np.abs(rows[:, 0] - rows[k, 0]) <= 5.0) & (rows[:, 1] < 1.6 * rows[k, 1] + 1.0)
    cen = np.c_[rows[sel, 3], rows[sel, 0], rows[sel, 4]]
    centre = np.array([rows[k, 3], rows[k, 0], rows[k, 4]])
    if len(cen) >= 3:
        d = np.linalg.svd(cen - cen.mean(axis=0))[2][0]
        if d[1] > 0:
            d = -d
        med = np.degrees(np.arctan2(-sgn * d[0], -d[1]))
        cra = np.degrees(np.arcsin(np.clip(d[2], -1, 1)))
        if not (-25.0 < med < 50.0 and abs(cra) < 30.0):  # implausible: start straight anterior
            d = np.array([0.0, -1.0, 0.0])
    else:
        d = np.array([0.0, -1.0, 0.0])
    return centre, _unit(d), float(rows[k, 1])


def _line_gate(wt: np.ndarray, offs: np.ndarray) -> float:
    """Weight (0-1) of the section-centre line against the tube fit at 1.5 mm voxels and more
    (:data:`_PV_LINE_GATE_MM2`, :data:`_PV_LINE_GATE_SECTIONS`), from the sections' weights ``wt``
    at positions ``offs`` (mm)."""
    n = float(wt.sum())
    if n <= 0.0:
        return 0.0
    q = float(wt @ (offs - (wt @ offs) / n) ** 2)  # = weight x weighted variance of the positions
    lo, hi = _PV_LINE_GATE_MM2
    n_lo, n_hi = _PV_LINE_GATE_SECTIONS
    return float(np.clip((q - lo) / (hi - lo), 0.0, 1.0) * np.clip((n - n_lo) / (n_hi - n_lo), 0.0, 1.0))


def _pv_axis(crop: _Crop, frame: VertebraFrame, centre, axis, W: float, H: float, sp: float, gate=None):
    """The pedicle axis as a robust line through the centres of partial-volume section fits
    (:func:`_fit_section_pv`) at ``_PV_LINE_OFFSETS`` mm along the axis from the isthmus estimate,
    in ``_PV_LINE_PASSES`` passes (each through sections perpendicular to the previous line).

    A section's centre lies on the tube's axis even when the section is cut a few degrees off
    perpendicular, and the offsets span ~9 mm of pedicle: the bone-intensity centroids upstream
    are pulled caudally by the body below the pedicle's anterior end (sagittal -0.8 deg on
    average at 1 mm) and medially by the body's posterior wall. Only the pedicle proper counts:
    each section weighs by how clearly its height and width stay near the least ones (sections
    where the pedicle joins the body or the lamina are higher and wider and their centres are
    pulled off the axis), in soft contiguous runs (:func:`_soft_run`) around every section, mixed
    by how clearly each passes; with fewer than _PV_LINE_MIN_SECTIONS sections' weight the
    previous axis is blended back in. ``gate``: a function of the first pass's section weights and
    positions giving the line's weight b (:func:`_line_gate`); when it is 0 the start is returned
    at once. Returns (centre, axis, the last pass's fits at ``_PV_SECTION_OFFSETS``, b)."""
    offs = np.asarray(_PV_LINE_OFFSETS, float)
    fits: list = []
    b = 1.0 if gate is None else 0.0  # (with a gate: no line unless its first pass gets that far)
    for p in range(_PV_LINE_PASSES):
        fits = [_fit_section_pv(crop, frame, centre + t * axis, axis, W, H, sp) for t in offs]
        ok = np.array([f is not None for f in fits])
        if ok.sum() < 4:
            break
        ws = np.array([f[0] if f is not None else np.inf for f in fits])
        hs = np.array([f[1] if f is not None else np.inf for f in fits])
        w_ref, h_ref = float(np.min(ws)), float(np.min(hs))
        mw = np.where(ok, (_PV_LINE_RUN_W[0] * w_ref + _PV_LINE_RUN_W[1] - ws) / (_PV_LINE_RAMP * w_ref + 0.1), -50.0)
        mh = np.where(ok, (_PV_LINE_RUN_H[0] * h_ref + _PV_LINE_RUN_H[1] - hs) / (_PV_LINE_RAMP * h_ref + 0.1), -50.0)
        # the run of the pedicle proper around each section, mixed by how clearly that section passes
        # (no single anchor section: which one passes best may change with a last digit of the CT)
        passing = _logistic(mw) * _logistic(mh)
        if passing.sum() < 1e-6:
            break
        wt = (passing / passing.sum()) @ np.array([_soft_run(mw, mh, k) for k in range(len(fits))])
        if gate is not None and p == 0:
            b = gate(wt, offs)
        if b <= 0.0:
            return centre, axis, [], 0.0
        # too few sections of the pedicle proper: the previous axis, blended in continuously
        f_line = float(np.clip((wt.sum() - _PV_LINE_MIN_SECTIONS) / _PV_LINE_MIN_SECTIONS + 1.0, 0.0, 1.0))
        if f_line <= 0.0:
            break
        pts = np.array([f[2] if f is not None else centre for f in fits])
        c_line, d, _ = _robust_line(pts[wt > 1e-3], prior=wt[wt > 1e-3])
        d = d if np.dot(d, axis) >= 0 else -d
        d = _unit(f_line * d + (1.0 - f_line) * axis)
        ang = float(np.degrees(np.arccos(np.clip(np.dot(d, axis), -1.0, 1.0))))
        # a line far off the start (a fit that followed another bone) is drawn back to it continuously
        m = np.radians(_redescend(ang, 0.0, _PV_AXIS_MAX_DEG))
        if ang > 1e-9:
            perp = _unit(d - np.dot(d, axis) * axis)
            d = np.cos(m) * axis + np.sin(m) * perp
        axis = _unit(d)
        centre = centre + f_line * (c_line + np.dot(centre - c_line, axis) * axis - centre)
    sel = [fits[i] for i, t in enumerate(offs) if np.any(np.isclose(t, _PV_SECTION_OFFSETS))] if fits else []
    return centre, axis, sel, b


def _pedicle_sections(crop: _Crop, frame: VertebraFrame, C: np.ndarray, a: np.ndarray, sp: float) -> np.ndarray:
    """Width, height and sub-voxel centre of the cross-sections through the points ``C`` (n, 3)
    perpendicular to the axis ``a``: array (n, 5) = width, height, centre xyz (NaN: not found).

    Width is along u (in the transverse plane, perpendicular to the axis), height along
    w = a x u; the centre is re-centred between the edges after each of the three passes.
    """
    u = _unit(np.cross(frame.axes[2], a))  # transverse plane, perpendicular to the axis
    w = _unit(np.cross(a, u))  # cranio-caudal within the section
    n = len(C)
    ew = _extents(crop, C, np.tile(u, (n, 1)), 18.0, sp, tolerant=True, thick=w)
    c1 = C + 0.5 * (ew[:, :1] + ew[:, 1:]) * u
    eh = _extents(crop, np.nan_to_num(c1), np.tile(w, (n, 1)), 20.0, sp, tolerant=True)
    c2 = c1 + 0.5 * (eh[:, :1] + eh[:, 1:]) * w
    ew2 = _extents(crop, np.nan_to_num(c2), np.tile(u, (n, 1)), 18.0, sp, tolerant=True, thick=w)
    c3 = c2 + 0.5 * (ew2[:, :1] + ew2[:, 1:]) * u
    return np.c_[ew2[:, 1] - ew2[:, 0], eh[:, 1] - eh[:, 0], c3]


def _robust_line(pts: np.ndarray, tol_mm: float = 0.3, prior=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Line (point, unit direction) through ``pts`` by iteratively reweighted least squares:
    each point weighs 1 / (1 + (d / s)^2), d its distance from the previous line and
    s = max(``tol_mm``, 2 x the weighted median distance) (Cauchy weights, a fixed number of
    rounds). Unlike dropping points beyond a cut-off, the weights change smoothly with the
    data, so a last-digit change cannot drop a point and swing the line. ``prior``: weights the
    points carry beforehand (multiplied in). Also returns the weights."""
    w0 = np.ones(len(pts)) if prior is None else np.asarray(prior, float)
    wt = w0
    c = w0 @ pts / w0.sum()
    d = np.linalg.svd((pts - c) * np.sqrt(w0)[:, None])[2][0]
    for _ in range(6):
        r = pts - c
        dist = np.linalg.norm(r - np.outer(r @ d, d), axis=1)
        sc = max(tol_mm, 2.0 * float(np.median(dist)))
        wt = w0 / (1.0 + (dist / sc) ** 2)
        c = wt @ pts / wt.sum()
        q = (pts - c) * np.sqrt(wt)[:, None]
        d2 = np.linalg.svd(q)[2][0]
        d = d2 if np.dot(d2, d) >= 0 else -d2
    return c, d, wt


def _section_centroids(crop: _Crop, frame: VertebraFrame, C: np.ndarray, a: np.ndarray,
                       half_u, half_w, sp: float) -> np.ndarray:
    """Bone-intensity centroids (LPS, (n, 3)) of the cross-sections through ``C`` perpendicular
    to the axis ``a``: the CT above the local soft-tissue level, weighted over a window of
    +-``half_u`` (transverse) by +-``half_w`` (cranio-caudal) inside the label dilated by
    ``_MASK_TOLERANCE_VOX``. Blur moves intensity but not its centre of mass, so the centroid of a
    pedicle section is sub-voxel even where its edges are a voxel apart (NaN rows: no bone)."""
    u = _unit(np.cross(frame.axes[2], a))
    w = _unit(np.cross(a, u))
    st = min(0.5, 0.25 * sp)
    half_u = np.broadcast_to(np.asarray(half_u, float), (len(C),))
    half_w = np.broadcast_to(np.asarray(half_w, float), (len(C),))
    ext = 1.5 * sp + 2.0  # soft tissue is looked for this much beyond the window
    gu = np.arange(-half_u.max() - ext, half_u.max() + ext + 1e-9, st)
    gw = np.arange(-half_w.max() - ext, half_w.max() + ext + 1e-9, st)
    U, W = np.meshgrid(gu, gw, indexing="ij")
    off = U.ravel()[:, None] * u + W.ravel()[:, None] * w  # (m, 3)
    pts = C[:, None, :] + off[None, :, :]  # (n, m, 3)
    v = crop.ct.sample(pts, order=1)
    inside = crop.mask_at(pts, tolerant=True)
    out = np.full((len(C), 3), np.nan)
    for i in range(len(C)):
        win = (np.abs(U.ravel()) <= half_u[i]) & (np.abs(W.ravel()) <= half_w[i])
        big = (np.abs(U.ravel()) <= half_u[i] + ext) & (np.abs(W.ravel()) <= half_w[i] + ext)
        soft = v[i, big & ~inside[i]]
        if soft.size < 10 or not inside[i].any():
            continue
        bg = float(np.median(soft))
        wt = np.clip(v[i] - bg, 0.0, None) * (inside[i] & win)
        s = wt.sum()
        if s > 0:
            out[i] = C[i] + (wt @ off) / s
    return out


def _fit_section_pv(crop: _Crop, frame: VertebraFrame, C: np.ndarray, a: np.ndarray,
                    W0: float, H0: float, sp: float, half_len: float | None = None, tilt: bool = False):
    """Width, height and centre of the pedicle at its isthmus from the CT's voxel values.

    Partial-volume model: near the isthmus the pedicle is a straight tube of elliptic
    cross-section (outer width ``W`` along u, in the transverse plane, height ``H`` along w)
    with a thin cortical shell (``_CORTEX_MM``) brighter than its marrow. Each voxel's value is
    the background plus the marrow and shell levels times the fractions of the voxel box they
    fill (the box is supersampled). The levels are solved by least squares for each shape, the
    shape (W, H and the centre offsets) by Nelder-Mead. The voxels used lie within
    ``_PV_HALF_LEN`` of the isthmus along the axis and within 1.5 voxels + 1 mm of the first
    estimate's outline; voxels outside the label (dilated by one voxel) brighter than soft tissue
    (another bone) are left out. Unlike edges read on interpolated lines, this uses each voxel
    once, as the scanner averaged it, so it stays unbiased when the pedicle is only 2-3 voxels
    wide. ``tilt``: the axis direction is fitted too (over a longer slab, ``half_len``): the
    tube's straightness then carries the direction. Returns (W, H, centre, axis) or None."""
    from spineplan.anatomy._pv import fractions as pv_fractions
    from spineplan.anatomy._pv import nelder_mead_pv, pv_cost, pv_rss
    from spineplan.anatomy._pv import tilted as pv_tilted

    u = _unit(np.cross(frame.axes[2], a))
    w = _unit(np.cross(a, u))
    sp3 = crop.ct.spacing
    half_len = max(_PV_HALF_LEN if half_len is None else half_len, 0.5 * float(sp3.max()))
    mu, mw = 0.5 * W0 + 1.5 * sp + 1.5, 0.5 * H0 + 1.5 * sp + 1.5  # soft tissue is looked for here
    fu, fw = 0.5 * W0 + _PV_MARGIN_VOX * sp + 1.5, 0.5 * H0 + _PV_MARGIN_VOX * sp + 1.5  # fitted here
    # candidate voxels: the box around the section slab
    corners = np.array([C + su * mu * u + sw * mw * w + st * (half_len + sp) * a
                        for su in (-1, 1) for sw in (-1, 1) for st in (-1, 1)])
    ijk = crop.ct.world_to_index(corners)
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.array(crop.mask.shape))
    if np.any(hi - lo < 1):
        return None
    grid = np.stack(np.meshgrid(*[np.arange(l, h) for l, h in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    xyz = crop.ct.index_to_world(grid.astype(float))
    d = xyz - C
    qt, qu, qw = d @ a, d @ u, d @ w
    sel = (np.abs(qt) <= half_len + 0.5 * sp) & ((qu / mu) ** 2 + (qw / mw) ** 2 <= 1.0)
    if sel.sum() < 12:
        return None
    g = grid[sel]
    # the label must claim the section it measures (not bone it left out, e.g. a missed pedicle)
    core = ((qu[sel] / (0.5 * W0)) ** 2 + (qw[sel] / (0.5 * H0)) ** 2 <= 0.5) & (np.abs(qt[sel]) <= half_len)
    if core.sum() < 3 or crop.mask[g[core, 0], g[core, 1], g[core, 2]].mean() < 0.5:
        return None
    vals = crop.ct.array[g[:, 0], g[:, 1], g[:, 2]].astype(np.float64)
    inmask = crop.tolerant[g[:, 0], g[:, 1], g[:, 2]]
    soft = vals[~inmask]
    if soft.size < 5:
        return None
    bg = float(np.median(soft))
    # voxel weights, all ramps (a voxel's weight changes continuously with its value and with the
    # start's outline, so a last-digit change of the data cannot drop a voxel from the fit): the
    # fitted region's elliptic outline and the slab's ends taper over a voxel; voxels outside the
    # label brighter than soft tissue by _PV_OTHER_BONE_HU (another bone) fade out over _PV_OTHER_RAMP_HU
    rho = np.sqrt((qu[sel] / fu) ** 2 + (qw[sel] / fw) ** 2)
    wts = np.clip((1.0 - rho) * min(fu, fw) / sp + 0.5, 0.0, 1.0)
    wts *= np.clip((half_len - np.abs(qt[sel])) / sp + 0.5, 0.0, 1.0)
    wts *= np.where(inmask, 1.0, 1.0 - _logistic((vals - bg - _PV_OTHER_BONE_HU) / _PV_OTHER_RAMP_HU))
    keep = wts > 1e-3
    g, vals, wts = g[keep], vals[keep], wts[keep]
    if wts.sum() < 12:
        return None
    # supersample every voxel box
    ns = np.clip(np.ceil(sp3 / _PV_SUBSTEP_MM), 2, 8).astype(int)  # per axis (thick slices)
    o = [(np.arange(n) + 0.5) / n - 0.5 for n in ns]
    sub = np.stack(np.meshgrid(*o, indexing="ij"), -1).reshape(-1, 3)  # voxel units
    pts = crop.ct.index_to_world((g[:, None, :] + sub[None, :, :]).reshape(-1, 3))
    dd = np.ascontiguousarray((pts - C).reshape(len(g), -1, 3))
    # voxel centres and the sub-samples' largest distance from theirs (the compiled fit skips the
    # sub-samples of voxels wholly inside or outside the tube's edge ramps: _pv.normal_fast)
    dc = np.ascontiguousarray(dd.mean(axis=1))
    R = float(np.sqrt(((dd - dc[:, None, :]) ** 2).sum(axis=2).max())) * (1.0 + 1e-9) + 1e-9
    ramp = float(np.mean(sp3 / ns))  # sub-sample spacing: the width of each sub-sample's edge ramp
    ones = np.ones(len(vals))
    wv = [np.ascontiguousarray(wts, dtype=np.float64)]
    vv2 = [float(wts @ (vals * vals))]
    z = np.ascontiguousarray(frame.axes[2], dtype=np.float64)
    a = np.ascontiguousarray(a, dtype=np.float64)
    vals = np.ascontiguousarray(vals, dtype=np.float64)

    def tilted(tu, tw):  # in units of _TILT_UNIT rad (the search's tolerances are absolute)
        return pv_tilted(a, u, w, z, float(tu), float(tw), _TILT_UNIT)

    def design(p):
        W, H, cu, cw = p[:4]
        if W <= 2 * _CORTEX_MM or H <= 2 * _CORTEX_MM:
            return None
        u2, w2 = tilted(p[4], p[5])[1:] if tilt else (u, w)
        inside, marrow = pv_fractions(dd, u2, w2, float(cu), float(cw), 0.5 * W, 0.5 * H,
                                      0.5 * W - _CORTEX_MM, 0.5 * H - _CORTEX_MM, ramp)
        return np.c_[ones, marrow, inside - marrow]

    def rss(p):
        # least squares by the normal equations (3 unknowns; a tiny ridge keeps them solvable;
        # without the shell when it comes out darker than the marrow, or bone darker than soft
        # tissue); residual sum of squares = |v|^2 - 2 b.r + b.G.b (compiled, _pv.pv_rss)
        return pv_rss(np.asarray(p, dtype=np.float64), dd, dc, R, a, u, w, z, tilt, _TILT_UNIT, _CORTEX_MM, ramp,
                      vals, wv[0], vv2[0])

    # the residuals are counted in units of the start's residual variance; with the direction
    # free they are balanced against a Gaussian prior on the tilt from the start axis: a weakly
    # determined direction (a tube a few voxels long) stays near the start instead of wandering
    # along a flat valley of the cost
    s2 = [1.0]
    sig_t = np.tan(np.radians(_PV_AXIS_PRIOR_DEG)) / _TILT_UNIT
    # a weak Gaussian prior on the width and height around the sections' edge estimates: at
    # coarse voxels the voxel values fix the section's area better than its shape (a 7 x 20 mm
    # and a 9.5 x 14.5 mm ellipse fit one 3 mm pedicle nearly as well), and the prior keeps that
    # flat valley from deciding the result by a last digit of the data
    sig_s = _PV_SIZE_PRIOR_VOX * sp

    def cost(p):
        return pv_cost(np.asarray(p, dtype=np.float64), dd, dc, R, a, u, w, z, tilt, _TILT_UNIT, _CORTEX_MM, ramp,
                       vals, wv[0], vv2[0], s2[0], float(W0), float(H0), float(sig_s), float(sig_t))

    def fit(x0, step):
        """Nelder-Mead from the simplex of ``step`` around ``x0`` (compiled: _pv.nelder_mead_pv,
        the algorithm of scipy.optimize.minimize(method="Nelder-Mead"), absolute tolerance 0.02
        on the parameters and 1e-4 of the start's cost); returns (x, cost)."""
        steps = [step, step, 0.66 * step, 0.66 * step] + ([0.04 / _TILT_UNIT] * 2 if tilt else [])
        simplex = np.ascontiguousarray(x0 + np.vstack([np.zeros(len(steps)), np.diag(steps)]), dtype=np.float64)
        x, f, _ = nelder_mead_pv(simplex, 0.02, 1e-4 * cost(x0), 400, dd, dc, R, a, u, w, z, tilt, _TILT_UNIT,
                                 _CORTEX_MM, ramp, vals, wv[0], vv2[0], s2[0], float(W0), float(H0),
                                 float(sig_s), float(sig_t))
        return x, f

    def soft_fit(x0, step, several=True):
        """Nelder-Mead from ``x0`` or, for the direction fit (``several``), from a few starts
        around it, the results averaged with weights exp(-(cost - least cost) / _PV_SOFTMIN):
        where two fits are nearly as good, a last-digit change of the data shifts the weights a
        little instead of switching from one to the other. (The section fit alone has one basin
        on the phantoms; averaging two starts there made widths worse at 3 mm: 1.18 -> 1.41 mm p95.)"""
        starts = [x0]
        if several and tilt:  # three starts tilted by _PV_AXIS_START_DEG, 120 deg apart around x0
            r = np.tan(np.radians(_PV_AXIS_START_DEG)) / _TILT_UNIT
            starts = []
            for th in np.radians([90.0, 210.0, 330.0]):
                x = x0.copy()
                x[4:6] += r * np.array([np.cos(th), np.sin(th)])
                starts.append(x)

        rs = [fit(x, step) for x in starts]
        f = np.array([r[1] for r in rs])
        if not np.isfinite(f).any():
            return rs[0][0], np.inf
        x = _softmin_weights(f, _PV_SOFTMIN) @ np.array([r[0] for r in rs])  # (Nelder-Mead's x is finite)
        return x, cost(x)

    x0 = np.array([W0, H0, 0.0, 0.0] + ([0.0, 0.0] if tilt else []))
    s2[0] = max(rss(x0) / wts.sum(), 1.0)
    x, fun = soft_fit(x0, 0.6 * sp)
    # voxels the fitted section does not reach but as bright as bone belong to another bone
    # (a neighbour's articular process, a rib head, this vertebra's own processes): refit without
    X = design(x)
    if X is not None:
        other = (1.0 - np.clip((X[:, 2] + X[:, 1]) / 0.05, 0.0, 1.0)) \
            * _logistic((vals - bg - _PV_OTHER_BONE_HU) / _PV_OTHER_RAMP_HU)
        if other.max() > 1e-3 and (wts * (1.0 - other)).sum() >= 12:
            wv[0] = np.ascontiguousarray(wts * (1.0 - other))
            vv2[0] = float(wv[0] @ (vals * vals))
            s2[0] = max(rss(x) / wv[0].sum(), 1.0)
            x, fun = soft_fit(x, 0.3 * sp, several=False)  # from the (continuous) blend of the first fits
    if not np.isfinite(fun):
        return None
    # the model's width, height, centre and direction stay within a voxel or so (and _PV_AXIS_MAX_DEG)
    # of the sections': beyond, the result is drawn back to them continuously (_redescend), not
    # rejected (a rejection switches between two estimates for a last-digit change)
    # (the width is along u: with anisotropic voxels - thick slices - the voxel's extent along u,
    # not the largest spacing, is what the partial-volume fit may move the width by)
    sp_u = sp if float(np.ptp(sp3)) == 0.0 else min(sp, float(np.sqrt(np.sum((u * sp3) ** 2))))
    W = _redescend(float(x[0]), W0, max(1.5, sp_u))
    H = _redescend(float(x[1]), H0, max(2.5, 1.5 * sp))
    cu = _redescend(float(x[2]), 0.0, max(1.5, sp))
    cw = _redescend(float(x[3]), 0.0, max(1.5, sp))
    axis = tilted(*x[4:6])[0] if tilt else a
    ang = float(np.arccos(np.clip(np.dot(axis, a), -1, 1)))
    if ang > np.radians(_PV_AXIS_MAX_DEG):
        perp = _unit(axis - np.dot(axis, a) * a)
        m = _redescend(ang, 0.0, np.radians(_PV_AXIS_MAX_DEG))
        axis = np.cos(m) * a + np.sin(m) * perp
    return float(W), float(H), C + cu * u + cw * w, axis


def _redescend(x: float, x0: float, lim: float) -> float:
    """``x`` within ``lim`` of ``x0``; beyond, drawn back linearly to ``x0`` at 2 x ``lim`` and
    ``x0`` further out: a continuous form of 'reject a result too far from the first estimate'."""
    t = (x - x0) / lim
    a = abs(t)
    g = t if a <= 1.0 else (np.sign(t) * (2.0 - a) if a < 2.0 else 0.0)
    return float(x0 + lim * g)


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50.0, 50.0)))


def _softmin_weights(cost, scale) -> np.ndarray:
    """Weights exp(-(cost - least) / ``scale``) of the finite ``cost`` entries (0 for the others),
    summing to 1: the soft choice this module makes instead of taking the single least one (which
    switches between near-equal candidates for a last-digit change of the data). ``scale`` may be
    a function of the least cost."""
    c = np.asarray(cost, float)
    ok = np.isfinite(c)
    least = float(c[ok].min())
    tau = scale(least) if callable(scale) else float(scale)
    wt = np.where(ok, np.exp(-(np.where(ok, c, least) - least) / tau), 0.0)
    return wt / wt.sum()


def _soft_run(margin_w: np.ndarray, margin_h: np.ndarray, k: int) -> np.ndarray:
    """Soft 'contiguous run around index k': each section's pass weight (logistic of its
    margins below the width and height limits, in units of the ramp), times the pass weights of
    every section between it and ``k``."""
    s = _logistic(margin_w) * _logistic(margin_h)
    out = np.empty_like(s)
    out[k] = s[k]
    for i in range(k + 1, len(s)):
        out[i] = out[i - 1] * s[i]
    for i in range(k - 1, -1, -1):
        out[i] = out[i + 1] * s[i]
    return out


def _soft_isthmus(rows: np.ndarray, width: np.ndarray, part: np.ndarray):
    """Width, height and centre of the isthmus: the narrowest sections of the pedicle proper
    (``part``), averaged with weights exp(-(width - least) / (_ISTHMUS_SOFT_FRAC x least + 0.1 mm)) instead of
    taking the single narrowest one (which switches between neighbours for a last-digit change)."""
    wt = _softmin_weights(np.where(part, width, np.inf), lambda least: _ISTHMUS_SOFT_FRAC * least + 0.1)
    height = _smooth(rows[:, 2])
    return float(wt @ width), float(wt @ height), wt @ rows[:, 3:6]


def _smooth(v: np.ndarray) -> np.ndarray:
    """Running median of 3 then running mean of 3 (ends kept)."""
    if len(v) < 5:
        return v.copy()
    m = v.copy()
    m[1:-1] = np.median(np.c_[v[:-2], v[1:-1], v[2:]], axis=1)
    out = m.copy()
    out[1:-1] = (m[:-2] + m[1:-1] + m[2:]) / 3.0
    return out


def _local_axis(side: str, med_deg, cra_deg) -> np.ndarray:
    sgn = 1.0 if side == "left" else -1.0
    m, c = np.radians(med_deg), np.radians(cra_deg)
    return np.array([-sgn * np.sin(m) * np.cos(c), -np.cos(m) * np.cos(c), np.sin(c)])


def _least_section_axis(crop: _Crop, frame: VertebraFrame, centre, side: str) -> np.ndarray:
    """World axis through ``centre`` whose perpendicular mask sections are smallest.

    The pedicle's cross-section is least when cut perpendicular to its axis; candidates span
    medial angles -10..45 deg and cranial angles -20..20 deg, then a finer grid around the best.
    The section areas are soft (pixels of the smoothed mask count by how far they are above
    half, not as in or out) and the best direction is the average of the candidates weighted by
    exp(-(area - least area) / (``_LSA_SOFT`` x least area)): when two candidates are nearly as
    small, a last-digit change of the frame moves the result a little instead of switching.
    """
    from spineplan.anatomy._pv import section_areas

    inv = np.linalg.inv(crop.ct.affine)
    Ai = inv[:3, :3]
    g = np.arange(-12.0, 12.01, 1.0)
    mid = len(g) // 2
    ts = np.array([-3.0, 0.0, 3.0])
    c_idx = Ai @ np.asarray(centre, float) + inv[:3, 3]

    def areas(cands):
        # compiled (_pv.section_areas): per candidate, sections at ts sampled in voxel index space
        A = np.array([frame.axes.T @ _local_axis(side, m, c) for m, c in cands])  # (K, 3)
        U = np.cross(frame.axes[2], A)
        U /= np.linalg.norm(U, axis=1, keepdims=True)
        W = np.cross(A, U)
        base = c_idx[None, None, :] + ts[None, :, None] * (A @ Ai.T)[:, None, :]
        return section_areas(crop.smooth, np.ascontiguousarray(base), np.ascontiguousarray(U @ Ai.T),
                             np.ascontiguousarray(W @ Ai.T), g, 0.3, mid)

    def soft_best(cands):
        a = areas(cands)
        if not np.isfinite(a).any():
            return cands[0]
        return tuple(_softmin_weights(a, lambda least: _LSA_SOFT * least) @ np.asarray(cands, float))

    m0, c0 = soft_best([(m, c) for m in np.arange(-10.0, 45.1, 5.0) for c in np.arange(-20.0, 20.1, 5.0)])
    m1, c1 = soft_best([(m, c) for m in m0 + np.arange(-3.0, 3.1, 1.5) for c in c0 + np.arange(-3.0, 3.1, 1.5)])
    return frame.axes.T @ _local_axis(side, m1, c1)


def _measure_pedicle(ct, crop, fit: _FrameFit, side: str, sp: float, start=None) -> Pedicle | None:
    """One pedicle; ``start``: (world centre, world axis) to start from instead of the seed
    search (the mirror image of the other pedicle, see :func:`_checked_pedicles`)."""
    frame = fit.frame
    if start is None:
        seed = _pedicle_seed(fit.grid, fit.canal, side, _pedicle_z_window(fit))
        if seed is None:
            return None
        centre = frame.to_world(seed[0])
        axis = _least_section_axis(crop, frame, centre, side)
    else:
        centre, axis = (np.asarray(a, float) for a in start)
    best = None
    for it in range(_PEDICLE_ROUNDS):
        ts = np.arange(-9.0, 9.01, 0.5)
        sec = _pedicle_sections(crop, frame, centre + ts[:, None] * axis, axis, sp)
        rows = np.c_[ts, sec]
        rows = rows[np.all(np.isfinite(rows), axis=1)]
        if len(rows) < 5:
            return None
        # a section whose edge search latched onto noise or a thin process is implausibly narrow
        rows = rows[rows[:, 1] > 0.6 * np.median(rows[:, 1])]
        if len(rows) < 5:
            return None
        width = _smooth(rows[:, 1])
        # the isthmus is not the last section found at either end
        wmin = width[2:-2].min() if len(rows) >= 9 else width.min()
        # the pedicle proper: narrow, and not yet merged with the body or a process in height
        hc = np.median(rows[np.abs(rows[:, 0]) <= 3.0, 2]) if np.any(np.abs(rows[:, 0]) <= 3.0) else np.median(rows[:, 2])
        part = (width < 1.35 * wmin + 0.5) & (_smooth(rows[:, 2]) < 1.25 * hc + 0.5)
        if len(rows) >= 9:
            part[:2] = False
            part[-2:] = False
        if not part.any():
            return None
        k = int(np.argmin(np.where(part, width, np.inf)))
        if best is not None and abs(width[k] - best[1][best[2]]) > 0.2 * best[1][best[2]]:
            break  # the re-fitted axis left the pedicle: keep the previous round
        best = (rows, width, k, axis, part)
        if it == _PEDICLE_ROUNDS - 1:
            break
        # the axis is fitted through the sections of the pedicle proper: the run around the
        # isthmus that is still nearly as narrow and as low as the isthmus (sections where the
        # body, the lamina or a process joins pull their centres off the axis). The run is soft:
        # each section weighs by how clearly it passes both limits (logistic), times the weights
        # of the sections between it and the isthmus; a short run blends in the looser one
        hs = _smooth(rows[:, 2])
        wt_t = _soft_run((_AXIS_RUN_W[0] * width[k] + _AXIS_RUN_W[1] - width) / (0.05 * width[k] + 0.1),
                         (_AXIS_RUN_H[0] * hs[k] + _AXIS_RUN_H[1] - hs) / (0.05 * hs[k] + 0.1), k)
        wt_l = _soft_run((1.35 * wmin + 0.5 - width) / (0.05 * wmin + 0.1),
                         (1.25 * hc + 0.5 - hs) / (0.05 * hc + 0.1), k)
        need = max(5.0, 4.0 * sp)
        wt = np.maximum(wt_t, wt_l * float(np.clip(1.0 - (wt_t.sum() - need) / 2.0, 0.0, 1.0)))
        hm = float(np.sum(wt * rows[:, 2]) / wt.sum())
        wt = wt * _logistic((1.25 * hm + 0.5 - rows[:, 2]) / (0.05 * hm + 0.1))  # running into a process
        use = wt > 0.02
        pts = np.empty((0, 3))
        if use.sum() >= 4:  # through the sections' bone-intensity centroids (sub-voxel)
            run = rows[use]
            cen = _section_centroids(crop, frame, centre + run[:, 0:1] * axis, axis,
                                     0.5 * run[:, 1] + 0.75 * sp + 0.5, 0.5 * run[:, 2] + 0.75 * sp + 0.5, sp)
            okc = np.all(np.isfinite(cen), axis=1)
            pts, pw = cen[okc], wt[use][okc]
        if len(pts) >= 4:
            c_line, d, _ = _robust_line(pts, prior=pw)
            if np.dot(d, axis) < 0:
                d = -d
            if np.degrees(np.arccos(np.clip(np.dot(d, axis), -1, 1))) < 25.0:
                axis = _unit(d)
            centre = c_line + np.dot(_soft_isthmus(rows, width, part)[2] - c_line, axis) * axis
        else:
            centre = rows[k, 3:6]
    rows, width, k, axis, part = best
    W, H, centre = _soft_isthmus(rows, width, part)
    if sp >= _PV_AXIS_MIN_VOX_MM:
        # the line through the section centres where the pedicle proper is long enough to carry
        # its direction (_line_gate), the tube fit where it is not, blended in between
        c_l, a_l, fits, b = _pv_axis(crop, frame, centre, axis, W, H, sp, gate=_line_gate)
        if b < 1.0:
            pv = _fit_section_pv(crop, frame, centre, axis, W, H, sp, half_len=_PV_AXIS_HALF_LEN, tilt=True)
            if pv is not None:
                centre, axis = pv[2], pv[3]
            if b > 0.0:
                a_l = a_l if np.dot(a_l, axis) >= 0 else -a_l
                centre, axis = (1.0 - b) * centre + b * c_l, _unit((1.0 - b) * axis + b * a_l)
            fits = [_fit_section_pv(crop, frame, centre + t * axis, axis, W, H, sp) for t in _PV_SECTION_OFFSETS]
        else:
            centre, axis = c_l, a_l
    else:
        # the axis as a line through the centres of partial-volume section fits along the pedicle
        # proper (_pv_axis); the isthmus from the consensus of the sections around the estimate
        centre, axis, fits, _ = _pv_axis(crop, frame, centre, axis, W, H, sp)
    # the isthmus section from a consensus of sections: fitted at several positions along the
    # axis around the estimate, combined with weights exp(-(width - least) / tau) (the
    # narrowest sections count most), so a shift of the estimate along the axis - where the
    # width changes slowly - does not carry the width with it
    fits = [f for f in fits if f is not None]
    if fits:
        ws = np.array([f[0] for f in fits])
        wt = _softmin_weights(ws, lambda least: _PV_SECTION_SOFT_FRAC * least + _PV_SECTION_SOFT_MM)
        W = float(wt @ ws)
        H = float(wt @ np.array([f[1] for f in fits]))
        centre = wt @ np.array([f[2] for f in fits])
    med, cra = frame.angles_of(axis, side)
    return Pedicle(side=side, isthmus_center=centre, axis=axis,
                   isthmus_width_mm=W, isthmus_height_mm=H,
                   transverse_angle_deg=med, sagittal_angle_deg=cra)


def pedicle_implausible(p: Pedicle) -> str | None:
    """Why a measured pedicle cannot be a thoracolumbar pedicle isthmus (published ranges,
    generously widened), or None when it can."""
    lo, hi = PEDICLE_WIDTH_RANGE_MM
    if not lo <= p.isthmus_width_mm <= hi:
        return f"isthmus width {p.isthmus_width_mm:.1f} mm is outside {lo:g}-{hi:g} mm"
    lo, hi = PEDICLE_HEIGHT_RANGE_MM
    if not lo <= p.isthmus_height_mm <= hi:
        return f"isthmus height {p.isthmus_height_mm:.1f} mm is outside {lo:g}-{hi:g} mm"
    lo, hi = PEDICLE_TRANSVERSE_RANGE_DEG
    if not lo <= p.transverse_angle_deg <= hi:
        return f"transverse angle {p.transverse_angle_deg:.1f} deg is outside {lo:g}..{hi:g} deg"
    if abs(p.sagittal_angle_deg) > PEDICLE_SAGITTAL_MAX_DEG:
        return f"sagittal angle {p.sagittal_angle_deg:.1f} deg exceeds +-{PEDICLE_SAGITTAL_MAX_DEG:g} deg"
    return None


def pedicles_disagree(a: Pedicle, b: Pedicle) -> str | None:
    """Why the left and right pedicles of one vertebra are too different to both be right."""
    dw = abs(a.isthmus_width_mm - b.isthmus_width_mm)
    if dw > max(LR_WIDTH_TOL_MM, LR_WIDTH_TOL_FRAC * 0.5 * (a.isthmus_width_mm + b.isthmus_width_mm)):
        return f"isthmus widths differ by {dw:.1f} mm"
    da = abs(a.transverse_angle_deg - b.transverse_angle_deg)
    if da > LR_ANGLE_TOL_DEG:
        return f"transverse angles differ by {da:.1f} deg"
    return None


def _mirror_start(fit: _FrameFit, p: Pedicle):
    """(centre, axis) of the mirror image of pedicle ``p`` in the mid-sagittal plane (world)."""
    f = fit.frame
    c = f.to_local(p.isthmus_center) * [-1.0, 1.0, 1.0]
    a = f.direction_to_local(p.axis) * [-1.0, 1.0, 1.0]
    return f.to_world(c), _unit(a @ f.axes)


def _mirror_confirms(p2: Pedicle | None, start, ref: Pedicle) -> bool:
    """Whether a pedicle re-measured from the mirror image of ``ref`` is its mirror image: its
    isthmus is near the mirrored one and it is as wide and as angled (a re-measurement that
    drifted to where the label still has bone - e.g. the lamina - is not accepted)."""
    if p2 is None or pedicle_implausible(p2) is not None:
        return False
    return bool(np.linalg.norm(p2.isthmus_center - start[0]) <= _MIRROR_CENTRE_TOL_MM
                and abs(p2.isthmus_width_mm - ref.isthmus_width_mm)
                <= max(_MIRROR_WIDTH_TOL_MM, _MIRROR_WIDTH_TOL_FRAC * ref.isthmus_width_mm)
                and abs(p2.transverse_angle_deg - ref.transverse_angle_deg) <= _MIRROR_ANGLE_TOL_DEG)


def _excess(ratio: float) -> float:
    """0 up to a tolerance (``ratio`` <= 1), rising linearly to 1 at _SOFT_CHECK_RAMP x the tolerance: a
    check that blends results instead of switching between them at its tolerance."""
    return float(np.clip((ratio - 1.0) / (_SOFT_CHECK_RAMP - 1.0), 0.0, 1.0))


def _disagreement(a: Pedicle, b: Pedicle) -> float:
    """How far the left/right difference exceeds :func:`pedicles_disagree`'s tolerances (0: not)."""
    dw = abs(a.isthmus_width_mm - b.isthmus_width_mm)
    tw = max(LR_WIDTH_TOL_MM, LR_WIDTH_TOL_FRAC * 0.5 * (a.isthmus_width_mm + b.isthmus_width_mm))
    return _excess(max(dw / tw, abs(a.transverse_angle_deg - b.transverse_angle_deg) / LR_ANGLE_TOL_DEG))


def _mirror_score(p2: Pedicle | None, start, ref: Pedicle) -> float:
    """1 when a re-measured pedicle is the mirror image of ``ref`` within the
    :func:`_mirror_confirms` tolerances, falling to 0 at _SOFT_CHECK_RAMP x those."""
    if p2 is None or pedicle_implausible(p2) is not None:
        return 0.0
    r = max(np.linalg.norm(p2.isthmus_center - start[0]) / _MIRROR_CENTRE_TOL_MM,
            abs(p2.isthmus_width_mm - ref.isthmus_width_mm)
            / max(_MIRROR_WIDTH_TOL_MM, _MIRROR_WIDTH_TOL_FRAC * ref.isthmus_width_mm),
            abs(p2.transverse_angle_deg - ref.transverse_angle_deg) / _MIRROR_ANGLE_TOL_DEG)
    return 1.0 - _excess(r)


def _blend(frame: VertebraFrame, p: Pedicle, q: Pedicle, b: float) -> Pedicle:
    """(1 - b) x ``p`` + b x ``q`` (centre, axis, width, height; the angles recomputed)."""
    if b <= 0.0:
        return p
    if b >= 1.0:
        return q
    qa = q.axis if np.dot(q.axis, p.axis) >= 0 else -q.axis
    axis = _unit((1 - b) * p.axis + b * qa)
    med, cra = frame.angles_of(axis, p.side)
    return Pedicle(side=p.side, isthmus_center=(1 - b) * p.isthmus_center + b * q.isthmus_center, axis=axis,
                   isthmus_width_mm=(1 - b) * p.isthmus_width_mm + b * q.isthmus_width_mm,
                   isthmus_height_mm=(1 - b) * p.isthmus_height_mm + b * q.isthmus_height_mm,
                   transverse_angle_deg=med, sagittal_angle_deg=cra)


def _checked_pedicles(crop: _Crop, fit: _FrameFit, name: str, sp: float) -> tuple[dict, list[str]]:
    """Both pedicles, each checked against the published ranges and against the other side.

    A pedicle out of range, or one of a left/right pair that disagree, is measured again
    starting from the mirror image of the other side (the seed search may have latched onto
    a process or a neighbour's bone in an imperfect label). What stays implausible is left out
    and said in the warnings; a disagreement nothing resolves is kept and flagged."""
    def measure(side, start=None):
        try:
            return _measure_pedicle(crop.ct, crop, fit, side, sp, start)
        except (ValueError, IndexError, np.linalg.LinAlgError):
            return None

    warnings: list[str] = []
    found = {side: measure(side) for side in SIDES}
    why = {side: (pedicle_implausible(p) if p is not None else "no isthmus found") for side, p in found.items()}
    other = {"left": "right", "right": "left"}
    for side in SIDES:
        o = other[side]
        if why[side] is None or found[o] is None or why[o] is not None:
            continue
        start = _mirror_start(fit, found[o])
        p2 = measure(side, start)
        if _mirror_confirms(p2, start, found[o]):
            warnings.append(f"{name}: the {side} pedicle was re-measured from the mirror image of the {o} one "
                            f"(first result rejected: {why[side]}).")
            found[side], why[side] = p2, None
    ok = {s: found[s] for s in SIDES if why[s] is None}
    for side in SIDES:
        if why[side] is not None:
            if found[side] is None:
                warnings.append(f"{name}: the {side} pedicle could not be measured.")
            else:
                warnings.append(f"{name}: the {side} pedicle measurement was rejected ({why[side]}); "
                                "it is not reported.")
    if len(ok) == 2:
        d = pedicles_disagree(ok["left"], ok["right"])
        excess = _disagreement(ok["left"], ok["right"])
        if excess > 0.0:
            # each side is re-measured from the mirror image of the other; a side is replaced by its
            # re-measurement when that confirms it and the other side's does not. The checks are
            # ramps (_excess), and the result a blend: near a tolerance, a last-digit change of
            # the CT moves the result a little instead of switching between two pedicles
            alt, score = {}, {}
            for side in SIDES:
                start = _mirror_start(fit, ok[other[side]])
                alt[side] = measure(side, start)
                score[side] = _mirror_score(alt[side], start, ok[other[side]])
            new = dict(ok)
            # a pedicle is not replaced by the mirror image of a much smaller one (a label that
            # lost part of a pedicle gives a small section, whose mirror image 'confirms' itself
            # on the other side's lamina or process): 1 for equal or smaller sections, ramping
            # down to 0 as this side's section exceeds the other's
            area = {s: ok[s].isthmus_width_mm * ok[s].isthmus_height_mm for s in SIDES}
            mean_area = 0.5 * (area["left"] + area["right"])
            for side in SIDES:
                bigger = 2.0 * _logistic((area[other[side]] - area[side]) / (_LR_AREA_RAMP * mean_area))
                b = excess * score[side] * (1.0 - score[other[side]]) * min(1.0, bigger)
                if b > 0.0:
                    new[side] = _blend(fit.frame, ok[side], alt[side], b)
                    warnings.append(f"{name}: left and right pedicles disagreed ({d or 'near the tolerance'}); the "
                                    f"{side} one was re-measured from the mirror image of the {other[side]} one"
                                    + ("." if b >= 1.0 else f" (the two results blended {1 - b:.2f}:{b:.2f})."))
            ok = new
            small = min(SIDES, key=lambda s: area[s])
            if d is not None and pedicles_disagree(ok["left"], ok["right"]) is not None \
                    and area[small] < _LR_AREA_MIN_RATIO * area[other[small]]:
                # still disagreeing, one section less than half the other: that one lost its bone
                warnings.append(f"{name}: the {small} pedicle measurement was rejected (section {area[small]:.0f} "
                                f"mm2, under half the {other[small]} one's {area[other[small]]:.0f} mm2, and the two "
                                "disagree); it is not reported.")
                ok.pop(small)
            elif d is not None and all(new[s] is ok[s] for s in SIDES):
                warnings.append(f"{name}: left and right pedicles disagree ({d}); check them on the images.")
        elif d is not None:
            warnings.append(f"{name}: left and right pedicles disagree ({d}); check them on the images.")
    return ok, warnings


# --------------------------------------------------------------------------- body, canal
def _column_extent(g: _Grid, x: float, y: float):
    """(zmin, zmax) of the resampled mask in the column at local (x, y), or None."""
    ix, iy = g.ix(x), g.iy(y)
    if not (0 <= ix < g.m.shape[0] and 0 <= iy < g.m.shape[1]):
        return None
    col = np.flatnonzero(g.m[ix, iy, :])
    if col.size == 0:
        return None
    gz = g.coords[2]
    return float(gz[col[0]]), float(gz[col[-1]])


def _median_chord(crop: _Crop, frame: VertebraFrame, local_pts, axis: int, max_mm: float, sp: float):
    """Median bone chord along frame axis ``axis`` over several parallel lines (local start
    points); robust to one line hitting a vessel foramen, an osteophyte or noise.
    Returns (length, start point of the median line, (neg, pos) edges) or None."""
    P = frame.to_world(np.asarray(local_pts, float))
    d = frame.axes[axis]
    E = _extents(crop, P, np.tile(d, (len(P), 1)), max_mm, sp, bounded=axis == 2)
    ok = np.flatnonzero(np.isfinite(E[:, 0]))
    if len(ok) < max(1, (len(P) + 2) // 3):
        return None
    lens = E[ok, 1] - E[ok, 0]
    i = ok[np.argsort(lens)[len(lens) // 2]]
    return float(np.median(lens)), P[i], E[i]


def _body_measurements(ct, crop, fit: _FrameFit, sp: float) -> tuple[dict, dict]:
    """AP depth and width at mid-height, and anterior/middle/posterior heights in the
    mid-sagittal plane, each the median over a small bundle of parallel lines."""
    f = fit.frame
    Z = f.axes[2]
    out: dict[str, float] = {}
    endplates: dict = {}
    body = fit.body_local
    ymin, ymax = np.percentile(body[:, 1], [0.5, 99.5])
    ext = _column_extent(fit.grid, 0.0, 0.0)
    zc = 0.5 * (ext[0] + ext[1]) if ext else 0.0
    o = np.array([-2.0, 0.0, 2.0])
    # AP depth at mid-height in the mid-sagittal plane
    r = _median_chord(crop, f, [[x, 0.0, zc + dz] for x in o for dz in o], 1, 0.5 * (ymax - ymin) + 25.0, sp)
    if r is None:
        return out, endplates
    out["body_ap_depth_mm"] = r[0]
    y_ant, y_post = f.to_local(r[1])[1] + r[2][0], f.to_local(r[1])[1] + r[2][1]
    yc = 0.5 * (y_ant + y_post)
    # width at mid-height through the body centre
    r = _median_chord(crop, f, [[0.0, yc + dy, zc + dz] for dy in o for dz in o], 0, 60.0, sp)
    if r is not None:
        out["body_width_mm"] = r[0]
    # heights at the anterior edge (inset), centre and posterior edge (inset)
    ys = {"anterior": y_ant + HEIGHT_EDGE_INSET_MM, "middle": yc, "posterior": y_post - HEIGHT_EDGE_INSET_MM}
    for name, y0 in ys.items():
        pts = []
        for x in (-HEIGHT_LINE_X_MM[name], 0.0, HEIGHT_LINE_X_MM[name]):
            for dy in (-1.0, 0.0, 1.0):
                ext = _column_extent(fit.grid, x, y0 + dy)
                pts.append([x, y0 + dy, 0.5 * (ext[0] + ext[1]) if ext else zc])
        r = _median_chord(crop, f, pts, 2, 40.0, sp)
        if r is None:
            continue
        out[f"{name}_height_mm"] = r[0]
        if name == "middle":
            endplates["superior"] = {"point": r[1] + r[2][1] * Z, "normal": fit.n_sup}
            endplates["inferior"] = {"point": r[1] + r[2][0] * Z, "normal": fit.n_inf}
    return out, endplates


def _canal_measurements(ct, crop, fit: _FrameFit, ped: dict, sp: float) -> dict:
    f = fit.frame
    c = fit.canal
    if not c.found:
        return {}
    # at the level of the pedicles (where the ring is closed), else the canal's mid-height
    if ped:
        zl = float(np.mean([f.to_local(p.isthmus_center)[2] for p in ped.values()]))
    else:
        zl = 0.0
    p = f.to_world([c.center[0], c.center[1], zl])
    out = {}
    a = _edge_inward_from_hole(ct, crop, p, -f.axes[1], 30.0, sp)
    b = _edge_inward_from_hole(ct, crop, p, f.axes[1], 30.0, sp)
    if a is not None and b is not None:
        out["canal_ap_mm"] = a + b
        p = p + 0.5 * (b - a) * f.axes[1]
    a = _edge_inward_from_hole(ct, crop, p, -f.axes[0], 30.0, sp)
    b = _edge_inward_from_hole(ct, crop, p, f.axes[0], 30.0, sp)
    if a is not None and b is not None:
        out["canal_transverse_mm"] = a + b
    return out


def _cancellous_hu(crop: _Crop, fit: _FrameFit) -> float | None:
    from scipy.ndimage import distance_transform_edt

    sp = crop.ct.spacing
    idx = np.argwhere(crop.mask)
    loc = fit.frame.to_local(crop.points)
    body = loc[:, 1] < fit.canal.front_y - 1.0
    if fit.canal.found:
        body &= np.abs(loc[:, 0] - fit.canal.center[0]) < max(35.0, 3.0 * fit.canal.half_width)
    bi = idx[body]
    if len(bi) == 0:
        return None
    lo = np.maximum(bi.min(axis=0) - 2, 0)
    bm = np.zeros(tuple(bi.max(axis=0) - lo + 3), bool)
    bm[tuple((bi - lo).T)] = True
    dist = distance_transform_edt(bm, sampling=sp)
    depth = max(CANCELLOUS_DEPTH_MM, 1.5 * float(sp.max()))
    roi = dist > depth
    if roi.sum() < 5:
        roi = dist >= np.percentile(dist[bm], 75) if bm.any() else roi
    if not roi.any():
        return None
    sub = crop.ct.array[lo[0]:lo[0] + bm.shape[0], lo[1]:lo[1] + bm.shape[1], lo[2]:lo[2] + bm.shape[2]]
    return float(np.mean(sub[roi[:sub.shape[0], :sub.shape[1], :sub.shape[2]]]))


# --------------------------------------------------------------------------- public
def measure_vertebra(ct: Volume, mask: np.ndarray, name: str, label: int, *, neighbours=None,
                     bbox=None, label_map=None) -> Vertebra:
    """Frame, pedicles, body/canal measurements, endplates and completeness of one vertebra.

    ``mask`` is the vertebra's boolean mask on the CT grid, or only on the box ``bbox`` (a tuple of
    slices of the CT grid that holds every voxel of the vertebra). ``label_map``: optionally the
    whole label map (CT grid) the mask comes from; a body height then never reaches into another
    vertebra's label (labels that abut across a thin disc). A vertebra cut by the scan edge
    gets ``complete=False``; its body sizes and heights are left out (they would be wrong) and
    its volume is reported as ``volume_in_scan_ml``.
    """
    crop = _make_crop(ct, mask, bbox=bbox, label_map=label_map, label=label)
    sp = float(np.max(ct.spacing))
    n_vox = int(crop.mask.sum())
    vol_ml = n_vox * float(np.prod(ct.spacing)) / 1000.0
    warnings: list[str] = []
    try:
        base = _mask_frame(crop, neighbours, sacrum=name == "S1")
        fit = _fit_frame(crop, neighbours, sacrum=name == "S1", base=base)
    except InputError as exc:
        c = crop.points.mean(axis=0)
        frame = VertebraFrame(c, np.eye(3))
        return Vertebra(name=name, label=int(label), frame=frame, complete=not crop.touches_edge,
                        measurements={"volume_ml": vol_ml} if not crop.touches_edge else {"volume_in_scan_ml": vol_ml},
                        warnings=[f"{name}: could not fit the vertebra's frame ({exc}); only its volume is given."])
    sub = crop.ct
    # from _EP_MASS_MAX_VOX_MM on, the pedicles are fitted in the edge planes' frame, and the frame
    # (heights, endplates, the pedicles' angles) is the mass planes' where they are precise
    fit_ped = fit
    if sp >= _EP_MASS_MAX_VOX_MM and name != "S1":
        try:
            fit = _fit_frame(crop, neighbours, mass=True, base=base)
        except InputError:
            pass
    pedicles: dict[str, Pedicle] = {}
    if name not in NO_ISTHMUS_LEVELS:
        pedicles, w = _checked_pedicles(crop, fit_ped, name, sp)
        warnings.extend(w)
        if fit is not fit_ped:
            for side, p in pedicles.items():
                p.transverse_angle_deg, p.sagittal_angle_deg = fit.frame.angles_of(p.axis, side)
    if name in NO_ISTHMUS_LEVELS:
        warnings.append(f"{name}: its pedicles merge with the sacral ala (no free isthmus); they are not measured.")
    meas: dict[str, float] = {}
    body, endplates = _body_measurements(sub, crop, fit, sp)
    meas.update(body)
    meas.update(_canal_measurements(sub, crop, fit, pedicles, sp))
    hu = _cancellous_hu(crop, fit)
    if hu is not None:
        meas["cancellous_hu"] = hu
        meas["osteoporosis_suspected"] = bool(hu < OSTEOPOROSIS_HU)
    complete = not crop.touches_edge
    if complete:
        meas["volume_ml"] = vol_ml
    else:
        meas["volume_in_scan_ml"] = vol_ml
        for k in ("body_ap_depth_mm", "body_width_mm", "anterior_height_mm", "middle_height_mm",
                  "posterior_height_mm"):
            meas.pop(k, None)
        endplates = {}
        warnings.append(f"{name} is cut by the edge of the scan: its body sizes and heights are not reported.")
    return Vertebra(name=name, label=int(label), frame=fit.frame, complete=complete, pedicles=pedicles,
                    measurements=meas, endplates=endplates, warnings=warnings)
