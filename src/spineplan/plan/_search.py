"""Vectorised trajectory search for one pedicle (implementation of :mod:`spineplan.plan.screws`).

Method (per vertebra, then per side):

1. The vertebra's bone mask gets a signed distance field (SDF, mm,
   negative inside) once, in its padded bounding box (:class:`spineplan.geometry.DistanceField`).
2. Candidate axes pass through a grid of points around the pedicle isthmus centre, with
   directions in a cone around the expected pedicle direction (thousands of axes).
3. For every axis, the SDF is sampled along it (sub-voxel, trilinear): backwards from the
   isthmus to find the **entry** (where the axis enters bone coming from the skin), and forwards
   from the entry. A screw of radius r fits with margin m where every point of its surface lies
   at least m inside the bone (``SDF <= -m``, the rule :mod:`spineplan.safety` grades), sampled in
   rings along the axis (:func:`_surface_fail`). Where ``SDF(axis) <= -(r + m)`` (the ball of
   radius r + m around the axis point is inside the bone, the "inscribed ball" test) the ring
   there is inside too and is not sampled; the ball alone is stricter than the surface wherever
   the wall is inclined to the screw. The margin m is ``margin_mm``
   along the **pedicle** (after the entry zone, until the whole screw cross-section lies
   anterior to the posterior wall of the vertebral body, found per vertebra by
   :func:`posterior_wall_y`) and the smaller ``body_margin_mm`` in the **body** (never 0: the
   body cortex is never breached). The canal and the roots only border the pedicle segment. The
   ball shortcut starts r + m after the entry zone: nearer, a ball would reach back into the entry
   zone, which the rule exempts (see
   :func:`evaluate`). The tip must also be ``anterior_cortex_clearance_mm`` inside bone along the
   axis. Endplates are the mask's cranial and caudal boundaries, so a screw that keeps its margin
   never crosses an endplate.
4. Each axis gets its largest admissible diameters (<= 80 % of the isthmus width; the largest and
   the next :data:`SIZE_VARIANTS` - 1 smaller ones, so a later rule refusing the larger screw on an
   axis tries a thinner one there) with their longest catalogue lengths, and their purchase (mean
   positive HU over the screw's volume x volume: a thicker screw holds more, as pullout strength
   grows with the thread's diameter and engagement, Chapman JR et al., J Biomech Eng
   1996;118:391-398; Zindrick MR et al., Clin Orthop 1986;203:99-112).
5. The best candidates (purchase, discounted for a medial angle away from the level's anatomical
   mean, ``off_prior_penalty_per_deg``, and for a cranial/caudal angle,
   ``off_axis_cranial_penalty_per_deg``) are checked for the remaining rules in order: entry lateral
   to the superior articular process and at the pedicle's height (:data:`ENTRY_DEFAULT_HALF_HEIGHT_MM`), through
   the pedicle (a measured isthmus is not bypassed inside the exempt entry zone, rule ``pedicle-bypass``,
   :func:`_bypasses_isthmus`), no facet-joint violation of the level above (zone at least
   one voxel wide, :func:`spineplan.safety.facet_zone`), a bone-free percutaneous corridor from the entry back
   to the skin (the screw's outline may graze its own vertebra's posterior elements within
   ``dock_zone_mm`` of the entry, where the surgeon docks), skin entry near enough to the midline;
   then graded with the independent surface-sampling grader of :mod:`spineplan.safety` (grade A,
   no facet violation) and their surface margins re-checked per segment (pedicle, body).
6. The chosen screw states why it is not larger (:func:`size_limit`, on demand): what stops the next catalogue
   diameter on the same axis (80 % of the isthmus, the catalogue, the pedicle or body margin at a
   distance from the entry, the tip clearance, a later rule, or the ranking) and the next length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spineplan.geometry import BoxMask, DistanceField, mask_box, orthonormal_basis, pad_box, tight_box
from spineplan.levels import region
from spineplan.plan.settings import PlannerSettings
from spineplan.safety._grade import FACET_ZONE_PAD_MM, line_entries, line_lag_max
from spineplan.volume import Volume

#: Default medial (transverse) angles of the pedicle axis by region, used to centre the search
#: cone when the Spine has no pedicle measurement: thoracic ~10 deg, lumbar ~15 deg (L1 ~10 to
#: L5 ~30), S1 ~25 deg (Zindrick et al., Spine 1987;12:160-166; Zindrick et al., Clin Orthop
#: 1986;203:99-112). The search cone (+/- search_cone_deg) covers the anatomical spread.
DEFAULT_MEDIAL_DEG = {"cervical": 30.0, "thoracic": 10.0, "lumbar": 15.0, "sacral": 25.0}
#: Per-level mean lumbar pedicle transverse angles (Zindrick et al., Spine 1987;12:160-166:
#: L1 ~11, L2 ~12, L3 ~14, L4 ~18, L5 ~30 deg) and T12 ~7 deg; a third candidate cone is
#: centred on them so a wrongly measured pedicle direction cannot hide the anatomical corridor.
LEVEL_MEDIAL_DEG = {"T12": 7.0, "L1": 11.0, "L2": 12.0, "L3": 14.0, "L4": 18.0, "L5": 30.0, "L6": 30.0,
                    "S1": 25.0}
#: Coarse recentring pass: through-point grid half-width and step (mm), cone half-angle and step (deg).
RECENTRE_HALFWIDTH_MM, RECENTRE_STEP_MM = 7.5, 1.5
RECENTRE_CONE_DEG, RECENTRE_ASTEP_DEG = 20.0, 4.0
#: The surface-sampling verification may find a margin this much below the inscribed-ball
#: estimate (sampling and interpolation differences) before a candidate is rejected.
VERIFY_TOLERANCE_MM = 0.25
#: Box padding around the vertebra for its distance field (mm; inside distances are exact with
#: any padding of at least one voxel, and only they are used).
BOX_PAD_MM = 4.0
#: Extra slack (mm) on the inscribed-ball test for the SDF varying between profile samples.
PROFILE_SLACK_MM = 0.1
#: How far behind the isthmus point the entry is searched for, and how far ahead of the entry
#: the profile runs (mm).
BACK_MM = 40.0
AHEAD_MM = 72.0
#: Window after the entry zone in which the pedicle's narrowest point is looked for (mm).
ISO_MM = 25.0
#: The posterior wall of the vertebral body is looked for along lines parallel to the frame's
#: posterior axis (y) from the body centroid, at these lateral and cranial offsets (mm, frame),
#: up to WALL_SEARCH_MM behind the centroid; the median of the walls found is used (the
#: basivertebral notch only moves a line's wall anteriorly, i.e. lengthens the pedicle segment).
WALL_OFFSETS_MM = (-3.0, 0.0, 3.0)
WALL_SEARCH_MM = 60.0

#: Entry height: the Weinstein entry lies at the junction of the transverse process and the
#: superior articular process (Weinstein et al. 1988), i.e. at the pedicle's own height; an entry
#: above the pedicle's roof lies on the facet joint and the inferior articular process of the level
#: above (measured: the one grade-B screw planned from spineplan's own abdomen labels, L4 right at
#: -15 deg, entered 7.6 mm above the reference pedicle's centre, 15 mm high, through L3's inferior
#: articular process that the automatic L4 label holds). The entry's cranio-caudal coordinate
#: (vertebra frame) must lie within half the isthmus height of the pedicle's centre; this default
#: half-height is used when the pedicle is unmeasured (lumbar isthmus heights ~14-16 mm, thoracic
#: ~12-15 mm, Zindrick et al. 1987: 6 mm is about the smallest half-height).
ENTRY_DEFAULT_HALF_HEIGHT_MM = 6.0

#: Transpedicular path: with a measured pedicle, a screw is refused when its axis passes beside the
#: pedicle's isthmus (farther from the isthmus centre than half the isthmus width) while that
#: centre lies before the end of the entry zone (within ``entry_zone_mm`` of the entry, or behind
#: it): such a screw enters the side of the pedicle or the body next to it, with the pedicle's
#: narrowest part in the zone the margin rule exempts - it is not a pedicle screw (the entry belongs
#: behind the pedicle, on the posterior elements: Weinstein et al. 1988; the isthmus is the
#: narrowest part of the path, Zindrick et al., Spine 1987;12:160-166; Misenhimer et al. 1989).
#: Measured before this rule on the half-width-pedicle phantom (make_phantom(levels="L1-L5",
#: pedicle_scale=0.5, seed=3)): L3 left got a 4 x 35 mm screw, graded A, whose axis passed 5.4 mm
#: from the isthmus centre (half-width 2.55 mm) with the centre 0.7 mm from the entry; the true
#: pedicle's inscribed diameter there is 3.5 mm, too narrow for 4 mm + 2 x 1 mm. Either condition
#: alone would also refuse good screws planned from spineplan's own abdomen labels, whose measured
#: isthmus centres are off by a few mm (centre 2.9-3.1 mm from the entry with the axis 2-3 mm from
#: it; or 6.4 mm from the axis 5.4 mm in): those screws enter 15-17 mm / 9 mm behind the body's
#: posterior wall and are grade A against the reference labels. A measured pedicle too narrow for the
#: smallest catalogue screw with its margins is refused, with the numbers, never bypassed.
#: The zone here is the axis's (``entry_zone_mm``), where the breach is exempt: the per-line entry
#: zone of the margin (session 7, ENTRY_ZONE_RULE) only lowers a late-entering line's margin to the
#: body margin, never past the measured isthmus centre (:func:`isthmus_along`), so it needs no
#: change here.
RULES = ("bone-corridor", "margin", "isthmus-80", "length", "ct-bone", "sap-entry", "pedicle-bypass", "facet",
         "corridor-bone", "skin-offset", "verified-grade")
RULE_TEXT = {
    "bone-corridor": "no axis through the pedicle stays in bone",
    "margin": "no catalogue diameter fits the pedicle with the required bone margin",
    "isthmus-80": "every screw that fits exceeds 80 % of the isthmus width",
    "length": "no catalogue length fits (tip clearance from the anterior cortex)",
    "ct-bone": "in the CT, every screw that fits the bone mask would lie partly in fat or fluid "
              "(the segmentation may be wrong here)",
    "sap-entry": "no entry lateral to the superior articular process at the pedicle's height",
    "pedicle-bypass": "every remaining trajectory passes beside the pedicle's isthmus, not through it "
                      "(the pedicle is too narrow for the screw with its margin)",
    "facet": "every remaining trajectory enters the facet joint of the level above",
    "corridor-bone": "every remaining trajectory meets other bone (iliac crest, transverse process, "
                     "rib) on its way back to the skin",
    "skin-offset": "every remaining skin entry is too far from the midline",
    "verified-grade": "the surface check found a margin below the requirement for every remaining screw",
}


@dataclass
class Option:
    """One admissible screw for one pedicle."""

    entry: np.ndarray
    tip: np.ndarray
    direction: np.ndarray
    diameter_mm: float
    length_mm: float
    purchase: float  # mean positive HU x volume (HU.mL)
    mean_hu: float
    min_clearance_mm: float  # smallest SDF depth of the axis minus the radius (inscribed-ball margin)
    skin: np.ndarray | None = None
    skin_offset_mm: float | None = None
    entry_sap_mm: float | None = None  # entry lateral coordinate minus the SAP's lateral border
    head: np.ndarray | None = None  # rod seat (tulip) position
    safety: Any = None  # ScrewSafety from the verification
    #: distance from the entry (along the axis) at which the body segment starts (inf: no body segment found)
    body_start_mm: float = float("inf")
    pedicle_margin_mm: float | None = None  # surface margin measured along the pedicle segment
    #: fraction of the CT surface samples after the entry zone below soft_tissue_hu (the CT
    #: cross-check of the mask, rule "ct-bone")
    ct_soft_fraction: float | None = None
    body_margin_mm: float | None = None  # surface margin measured in the body segment
    #: the ranking value: purchase discounted for medial and cranial angles away from the
    #: anatomical ones (``off_prior_penalty_per_deg``, ``off_axis_cranial_penalty_per_deg``); the
    #: options are ordered by it and the rod-alignment trade is bounded in it
    score: float | None = None
    #: index of the candidate in the search (internal)
    candidate: int = -1
    #: set when this thicker screw was preferred over the best ranked one (:func:`prefer_thicker`)
    diameter_trade: dict | None = None


@dataclass
class PedicleResult:
    options: list[Option]
    isthmus_width_mm: float  # used for the 80 % rule
    #: Diameter of the widest straight cylinder through the pedicle from the entry zone on
    #: (2 x the largest inscribed radius over the candidate axes, first 25 mm after the entry
    #: zone): the corridor the screw must fit in. It is <= the isthmus width and is used for the
    #: 80 % rule when the Spine has no pedicle measurement (conservative).
    isthmus_width_sdf_mm: float
    #: where the 80 % rule's width comes from: "spine" (the measured isthmus), "corridor" (the
    #: straight corridor through the measured isthmus, when wider: ISTHMUS_WIDTH_FROM_CORRIDOR) or
    #: "distance-field" (no measurement)
    width_source: str
    counts: dict[str, int] = field(default_factory=dict)  # survivors after each rule
    failed_rule: str | None = None
    seed_source: str = ""
    #: why an option of this result is not larger (:func:`size_limit`), computed on demand (only
    #: the screw finally chosen needs it): option -> {"diameter": {...}, "length": {...}}
    size_limit_of: Any = None
    #: the refusal in words when more specific than RULE_TEXT[failed_rule]
    detail: str | None = None


@dataclass
class VertebraContext:
    name: str
    frame: Any  # VertebraFrame
    mask: np.ndarray  # full-grid bool
    field: DistanceField
    hu: np.ndarray  # float32 CT in the same box
    ct: Volume
    labels: np.ndarray | None  # full-grid integer labels (any vertebra != 0)
    label: int | None
    facet: BoxMask | None
    pedicles: dict[str, Any]
    endplates: dict
    cache: dict = field(default_factory=dict)

    @property
    def hu_affine(self) -> np.ndarray:
        """Index -> LPS of ``hu`` (the planning mask's box, ``cache["box"]``; the distance field may
        be on a finer grid)."""
        return self.ct.box_affine([b[0] for b in self.cache["box"]])


def make_context(ct: Volume, vertebra, mask: np.ndarray, labels: np.ndarray | None, above_mask: np.ndarray | None,
                 settings: PlannerSettings) -> VertebraContext:
    from spineplan.safety import facet_zone

    raw = np.asarray(mask, bool)
    # the label's bounding box once (a full-volume pass costs ~15 ms per axis on a 512 x 512 x 300
    # CT): the planning mask, its distance-field box and the facet zone's box all derive from it
    tight = tight_box(raw)
    pm_box = None if tight is None else pad_box(tight, raw.shape, ct.spacing, _planning_box_pad_mm(ct))
    mask, cleaning = planning_mask(ct, raw, vertebra.frame, settings, labels, box=pm_box)
    box = mask_box(mask, ct, BOX_PAD_MM) if pm_box is None else _box_within(mask, pm_box, ct.spacing, BOX_PAD_MM)
    sl = tuple(slice(a, b) for a, b in box)
    hu = np.asarray(ct.array[sl], dtype=np.float32)
    # Inside distances only: the rules need margins inside bone and the sign outside. (A
    # sub-voxel partial-volume boundary was tried here, session 4: each outer voxel of 40-140 HU
    # losing (1 - bone fraction) of its size on its outside faces, on a 1 mm grid. Placed / 10,
    # all grade A against the reference labels, whole-voxel vs partial-volume: abdomen own labels
    # 4 vs 3-4, reference 9 vs 7-9; chest own 8 vs 8, reference 8 vs 6-8: the extra room moved
    # the entries outward and the refusals to the corridor and facet rules. Not used.)
    fld = DistanceField.of_mask(mask, ct, pad_mm=BOX_PAD_MM, box=box, exact_outside=False)
    fz = facet_zone(raw, above_mask, ct, vertebra.frame, zone_mm=settings.facet_zone_mm,
                    box=None if tight is None else pad_box(tight, raw.shape, ct.spacing, FACET_ZONE_PAD_MM)) \
        if above_mask is not None else None
    ctx = VertebraContext(name=vertebra.name, frame=vertebra.frame, mask=mask, field=fld, hu=hu, ct=ct,
                          labels=labels, label=getattr(vertebra, "label", None), facet=fz,
                          pedicles=dict(getattr(vertebra, "pedicles", {}) or {}),
                          endplates=dict(getattr(vertebra, "endplates", {}) or {}))
    ctx.cache["mask-cleaning"] = cleaning
    ctx.cache["box"] = box
    return ctx


def _box_within(mask: np.ndarray, within, spacing, pad_mm: float) -> tuple[tuple[int, int], ...]:
    """:func:`spineplan.geometry.mask_box` of ``mask`` when it has no voxel outside the box
    ``within`` (half-open): only that box is scanned."""
    sl = tuple(slice(a, b) for a, b in within)
    t = tight_box(mask[sl])
    if t is None:
        return tuple((0, n) for n in mask.shape)
    return pad_box(tuple((lo + w[0], hi + w[0]) for (lo, hi), w in zip(t, within)), mask.shape, spacing, pad_mm)


def _planning_box_pad_mm(ct: Volume) -> float:
    """Padding (mm) of the box :func:`planning_mask` works in: two of the largest voxels."""
    return 2.0 * float(np.max(ct.spacing))


# --------------------------------------------------------------------------- planning mask
#: Cavities fully enclosed by the vertebra's label (3-D, so the spinal canal, open at both
#: ends, is never one) lie inside its outer cortex: marrow darker than the label's threshold
#: (osteoporotic or fatty marrow; automatic labels leave such holes at 2.5-3 mm voxels) or the
#: basivertebral vein. They are bone for the screw as long as the CT does not show fat, CSF or
#: air there: a cavity whose mean HU is below ``PlannerSettings.soft_tissue_hu`` stays outside.
#: Cavities larger than this fraction of the vertebra's volume are not filled (a label that is
#: only a shell is not trusted to be a whole vertebra).
MAX_CAVITY_FRACTION = 0.25


#: Cracks one voxel wide inside an automatic label (voxels of low-HU marrow left out, seams
#: between labels) are closed (3x3x3 closing; only voxels that are not on the closed label's
#: outer surface, so the label never grows outwards) where the CT is at least CLOSE_MIN_HU and no
#: other vertebra's label lies: above muscle (40-60 HU) and below osteoporotic cancellous bone
#: (L1 trabecular bone < 110 HU flags osteoporosis, Pickhardt et al., Ann Intern Med 2013).
CLOSE_MIN_HU: float | None = 70.0
#: Endplate slice: in the vertebral body (anterior to its posterior wall) the planning mask loses
#: its outermost voxel along the grid axis nearest the vertebra's cranio-caudal axis, i.e. the
#: body's endplates move in by one slice. An automatic label cannot tell the endplate slice from
#: the disc slice next to it (both partial-volume averaged in a 2.5-3 mm slice); measured on the
#: chest CT: spineplan's own T12/L1 labels ran 1-2 slices past the reference endplates and every
#: B/C screw planned from them breached superiorly by one slice (2.4-3.0 mm). The pedicle keeps
#: its full height (its margin is margin_mm).
ENDPLATE_ERODE = True
ENDPLATE_ERODE_FROM_WALL_MM = 8.0


#: Over-segmentation: when more than this fraction of a label's outer voxel layer is below
#: OUTER_LAYER_MIN_HU, the label lies about a voxel outside the bone all round (its outer layer
#: is the partial-volume rim of soft tissue), and the whole layer is removed before the other
#: steps (the bright rim voxels next to the cortex would otherwise pass the outer-layer test and
#: let a screw out by up to a voxel). Measured on the abdomen CT (3 mm voxels), L1-L5: reference
#: labels 6-11 % of the outer layer below 140 HU, spineplan's own labels 20-33 %, the reference
#: labels grown by one voxel 91-96 %.
OVERSEG_SOFT_FRACTION: float | None = 0.45
#: ... and the layer removed is every voxel with any of its 26 neighbours in unlabelled tissue
#: (plus, as before, every voxel with a face neighbour outside): a label grown by one voxel all
#: round (26-connected) then loses what it gained also on oblique walls, where a 6-neighbour layer
#: leaves the diagonal staircase voxels of the growth in place. Where the label touches another
#: vertebra's label it could not have grown, and only the face layer goes. Measured with the
#: reference labels grown by one voxel (bench_planner's stress test), graded against the true
#: labels: abdomen (3 mm) 6-neighbour layer 10 screws = 5 A + 5 B (L4 1.5 mm inferior twice, L2
#: right 0.7 mm lateral, L5 left 0.6 mm medial, L5 right 0.1 mm; outside surface 10-17 mm from the
#: entry on the pedicles' oblique walls) -> 9 = 8 A + 1 B (L4 right 0.57 mm inferior); chest
#: (0.7 x 0.7 x 2.5 mm) 8 A -> 6 A (a 26-neighbour layer also against touching labels: 8 = 7 A +
#: 1 B and 5 A). Only labels judged over-segmented are peeled, so spineplan's own labels (20-33 %
#: soft) and reference labels (6-11 %) are unaffected.
OVERSEG_PEEL_26 = True


#: Pedicle cores: an automatic label often holds the pedicle's cortical ring but not its
#: cancellous core (darker marrow), a hole that is open along the pedicle's axis, so no 3-D
#: cavity. In the grid planes nearest the vertebra's coronal plane (across the pedicles) holes of
#: the label up to this area (mm^2, a 10 mm disc) are filled where the CT is at least
#: CLOSE_MIN_HU and no other vertebra's label lies. The core is smaller than the pedicle's
#: cross-section (lumbar isthmus ~8-16 mm wide and ~14-16 mm high, Zindrick et al., Spine
#: 1987;12:160-166). The spinal canal is never such a hole (in a coronal plane it is open
#: cranially and caudally beyond one vertebra's label), and its CSF (0-15 HU) and fat are below
#: CLOSE_MIN_HU anyway.
PEDICLE_CORE_MAX_MM2: float | None = 80.0


#: The label's outer voxel layer (voxels with a 6-neighbour outside it) is kept only where the
#: CT shows bone: HU >= OUTER_LAYER_MIN_HU. Trabecular bone starts around 100-150 HU and the
#: cortex of the outer layer is brighter still, while muscle (40-60 HU), disc and partial-volume
#: soft tissue are below (Pickhardt et al., Ann Intern Med 2013). Measured on the abdomen CT
#: (3 mm voxels): 55-67 % of the outer voxels spineplan's own labels have beyond the reference
#: labels are below 160 HU (median 128-148 HU), against 13-32 % of the outer voxels both labels
#: share (median 199-262 HU). 140 HU keeps every screw planned on the two real CTs grade A
#: against the reference labels with the fewest refusals of the thresholds tried (120/140/160
#: HU; a sub-voxel variant, trilinear HU on a 1 mm grid, moved the entries off the bone surface
#: and made the screw heads meet the facet zone: not used). The label only shrinks, never grows.
OUTER_LAYER_MIN_HU: float | None = 140.0


def _wall_y(frame, inside_at, step_mm: float, start_mm: float = 0.0) -> float | None:
    """Frame y of the body's posterior wall: where lines from the body centroid along +y, at
    :data:`WALL_OFFSETS_MM`, first leave the bone (``inside_at``: world points -> bool); the median,
    or None when fewer than half of the lines start in bone and leave it. With ``start_mm`` < 0 a
    line may start that far anterior of the centroid, from its first point in bone."""
    ys = np.arange(start_mm, WALL_SEARCH_MM, step_mm)
    walls, lines = [], [(dx, dz) for dx in WALL_OFFSETS_MM for dz in WALL_OFFSETS_MM]
    for dx, dz in lines:
        loc = np.stack([np.full_like(ys, dx), ys, np.full_like(ys, dz)], axis=1)
        inside = inside_at(frame.to_world(loc))
        first = int(np.argmax(inside)) if start_mm < 0 else 0
        if not inside[first] or (start_mm < 0 and ys[first] > 0):
            continue
        out = np.flatnonzero(~inside[first:])
        if len(out):
            walls.append(float(ys[first + out[0]]))
    return float(np.median(walls)) if 2 * len(walls) >= len(lines) else None


def _wall_from_mask(ct: Volume, sl, sub: np.ndarray, frame) -> float | None:
    """:func:`_wall_y` in the box ``sl`` of the mask ``sub`` (nearest voxel)."""
    inv = np.linalg.inv(ct.affine)
    off = np.array([s_.start for s_ in sl])

    def inside_at(pts):
        idx = np.rint(pts @ inv[:3, :3].T + inv[:3, 3]).astype(int) - off
        ok = np.all((idx >= 0) & (idx < np.array(sub.shape)), axis=1)
        inside = np.zeros(len(pts), bool)
        inside[ok] = sub[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        return inside

    return _wall_y(frame, inside_at, 0.5)


def _local_y(ct: Volume, sl, shape, frame) -> np.ndarray:
    """Frame y (mm) of every voxel of the box ``sl`` of the CT grid (y is affine in the indices)."""
    origin = ct.index_to_world([s_.start for s_ in sl])
    m = np.asarray(frame.axes, float)[1] @ ct.affine[:3, :3]
    y0 = float(np.asarray(frame.axes, float)[1] @ (origin - np.asarray(frame.origin, float)))
    return (y0 + m[0] * np.arange(shape[0])[:, None, None] + m[1] * np.arange(shape[1])[None, :, None]
            + m[2] * np.arange(shape[2])[None, None, :])


def _coronal_axis(ct: Volume, frame) -> int:
    """The grid axis nearest the vertebra's antero-posterior axis (its planes are the coronal
    planes across the pedicles)."""
    return int(np.argmax(np.abs((ct.affine[:3, :3] / ct.spacing).T @ np.asarray(frame.axes, float)[1])))


def _in_plane(ax: int, square: bool = False) -> np.ndarray:
    """3 x 3 x 3 structuring element acting only in the plane normal to grid axis ``ax``:
    4-connected (a cross), or ``square`` (3 x 3)."""
    from scipy import ndimage as ndi

    st = np.zeros((3, 3, 3), bool)
    cut = [slice(None)] * 3
    cut[ax] = 1
    st[tuple(cut)] = True if square else ndi.generate_binary_structure(2, 1)
    return st


def _small_in_plane_parts(cand: np.ndarray, ax: int, spacing: np.ndarray, max_mm2: float) -> np.ndarray:
    """The 4-connected in-plane parts of ``cand`` (planes normal to grid axis ``ax``) of at most
    ``max_mm2``."""
    from scipy import ndimage as ndi

    if not cand.any():
        return cand
    lab, _ = ndi.label(cand, structure=_in_plane(ax))
    area = np.bincount(lab.ravel()) * float(np.prod(spacing) / spacing[ax])
    keep = area <= max_mm2
    keep[0] = False
    return keep[lab]


def _plane_holes(mask: np.ndarray, ax: int, spacing: np.ndarray, max_mm2: float) -> np.ndarray:
    """Holes of ``mask`` in the planes normal to grid axis ``ax`` (4-connected, 2-D), each at
    most ``max_mm2`` in area."""
    from scipy import ndimage as ndi

    holes = ndi.binary_fill_holes(mask, structure=_in_plane(ax)) & ~mask
    return _small_in_plane_parts(holes, ax, spacing, max_mm2)


#: Soft tissue's HU in the partial-volume model of a rim voxel (muscle 40-60 HU; trabecular bone
#: from ~100-150 HU, Pickhardt et al., Ann Intern Med 2013).
PV_SOFT_HU: float = 40.0
#: The outer-layer threshold follows the vertebra's own bone where that is dark: a rim voxel is
#: dropped when its HU is below OUTER_LAYER_MIN_HU and below the half-bone point between soft
#: tissue (PV_SOFT_HU) and the mean HU of the label's inner voxels within
#: OUTER_LAYER_LOCAL_MM (a cube), i.e. when it is less than half bone by the partial-volume model.
#: In a bright vertebra (inner mean >= 240 HU) the threshold is OUTER_LAYER_MIN_HU as before; in a
#: dark (osteoporotic or thin) one it is lower. Measured on the abdomen CT (3 mm): around the
#: L1 right pedicle 52 of 62 voxels both labels hold within 2.5 mm of a grade-A screw are below
#: 140 HU, and the fixed threshold dropped rim voxels of 117-137 HU that both labels call bone
#: (the pedicle then had no room). In the vertebral body (more than ENDPLATE_ERODE_FROM_WALL_MM
#: anterior to its posterior wall) the fixed OUTER_LAYER_MIN_HU is kept: there the rim borders
#: the disc (70-100 HU), which a dark body's half-bone point would keep (measured on the
#: reference labels grown by one voxel: an L1 screw 0.01 mm medial, grade B, without this). With
#: it (and the seed grid of :func:`search_pedicle`): own labels abdomen 5 -> 6 of 10 screws, all
#: grade A against the reference labels; reference labels and the chest CT unchanged.
#: None: the fixed OUTER_LAYER_MIN_HU everywhere.
OUTER_LAYER_LOCAL_MM: float | None = 15.0


def outer_layer_threshold(sub: np.ndarray, hu: np.ndarray, spacing) -> np.ndarray | float:
    """Per-voxel HU below which a rim voxel of the label ``sub`` is dropped (see
    :data:`OUTER_LAYER_LOCAL_MM`)."""
    if OUTER_LAYER_LOCAL_MM is None:
        return OUTER_LAYER_MIN_HU
    from scipy import ndimage as ndi

    inner = ndi.binary_erosion(sub).astype(np.float32)
    size = np.maximum(1, np.round(OUTER_LAYER_LOCAL_MM / np.asarray(spacing, float))).astype(int) | 1
    num = ndi.uniform_filter(np.asarray(hu, np.float32) * inner, size=tuple(size), mode="constant")
    den = ndi.uniform_filter(inner, size=tuple(size), mode="constant")
    local = np.where(den > 1e-3, num / np.maximum(den, 1e-6), np.inf)
    return np.minimum(OUTER_LAYER_MIN_HU, PV_SOFT_HU + 0.5 * (local - PV_SOFT_HU))


def planning_mask(ct: Volume, mask: np.ndarray, frame, st: PlannerSettings,
                  labels: np.ndarray | None = None, *, box=None) -> tuple[np.ndarray, dict]:
    """The vertebra mask the planner plans in: ``mask`` with enclosed non-soft-tissue cavities
    filled and one-voxel cracks closed where the CT shows bone (never into another vertebra's
    label in ``labels``, the label map of the CT), its outer voxel layer kept only where the CT shows bone, the body's
    endplate slices removed, and reduced to its largest connected part.

    The planner must not trust an automatic label blindly: a partial-volume voxel of muscle or
    disc in its outer layer lets a screw out of the bone, a label with holes refuses good
    pedicles, an island of it can hold a screw outside the vertebra. (A label that runs past the
    endplate into the disc and the next vertebra is NOT corrected here: at 2.5-3 mm slices the
    CT often shows no endplate cortex to trim at; see the benchmark notes.) Returns the mask and a
    report (voxels filled, dropped). ``box``: ``mask_box(mask, ct, _planning_box_pad_mm(ct))`` when
    already known (it is not computed again)."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, bool)
    if box is None:
        if not mask.any():
            return mask, {"peeled": 0, "closed": 0, "filled": 0, "pedicle_cores": 0, "outer_not_bone": 0,
                          "endplate_eroded": 0, "dropped": 0}
        box = mask_box(mask, ct, _planning_box_pad_mm(ct))
    sl = tuple(slice(a, b) for a, b in box)
    sub = mask[sl].copy()
    hu = np.asarray(ct.array[sl], dtype=np.float32)
    n0 = int(sub.sum())
    # 0. a label lying a voxel outside the bone all round (its outer layer mostly soft tissue)
    # loses that layer first (OVERSEG_SOFT_FRACTION)
    peeled = 0
    if OVERSEG_SOFT_FRACTION is not None and OUTER_LAYER_MIN_HU is not None:
        outer = sub & ~ndi.binary_erosion(sub)
        if outer.any() and float(np.mean(hu[outer] < OUTER_LAYER_MIN_HU)) > OVERSEG_SOFT_FRACTION:
            # every voxel touching the outside, also by an edge or a corner (OVERSEG_PEEL_26)
            shell = outer
            if OVERSEG_PEEL_26:
                free = ~sub if labels is None else ~sub & (np.asarray(labels[sl]) == 0)
                shell = outer | (sub & ndi.binary_dilation(np.pad(free, 1, constant_values=True),
                                                           structure=np.ones((3, 3, 3), bool))[1:-1, 1:-1, 1:-1])
            peeled = int(shell.sum())
            sub &= ~shell
            n0 = int(sub.sum())
    # 1. one-voxel cracks and notches (closing) where the CT shows bone or marrow, then enclosed
    # cavities that the CT shows to be no fat / fluid / air
    closed = 0
    if CLOSE_MIN_HU is not None:
        cl = ndi.binary_closing(np.pad(sub, 1), structure=np.ones((3, 3, 3), bool))[1:-1, 1:-1, 1:-1]
        # only cracks inside the closed label: nothing is added on its outer surface
        add = cl & ~sub & ndi.binary_erosion(cl) & (hu >= CLOSE_MIN_HU)
        if labels is not None:  # never into another vertebra's label
            add &= ~((np.asarray(labels[sl]) != 0) & ~sub)
        closed = int(add.sum())
        sub |= add
    holes = ndi.binary_fill_holes(sub) & ~sub
    filled = 0
    if holes.any():
        lab, n = ndi.label(holes)
        size = np.bincount(lab.ravel())
        mean = np.bincount(lab.ravel(), weights=hu.ravel().astype(np.float64)) / np.maximum(size, 1)
        keep = (mean >= st.soft_tissue_hu) & (size <= MAX_CAVITY_FRACTION * n0)
        keep[0] = False
        add = keep[lab]
        filled = int(add.sum())
        sub |= add
    # 1b. pedicle cores: small holes of the planes across the pedicles (PEDICLE_CORE_MAX_MM2)
    cores = 0
    if PEDICLE_CORE_MAX_MM2:
        add = _plane_holes(sub, _coronal_axis(ct, frame), np.asarray(ct.spacing, float), PEDICLE_CORE_MAX_MM2)
        if CLOSE_MIN_HU is not None:
            add &= hu >= CLOSE_MIN_HU
        if labels is not None:
            add &= np.asarray(labels[sl]) == 0
        cores = int(add.sum())
        sub |= add
    # 2. the label's outer voxel layer must be bone in the CT (OUTER_LAYER_MIN_HU)
    shell_cut = 0
    if OUTER_LAYER_MIN_HU is not None:
        thr = np.broadcast_to(outer_layer_threshold(sub, hu, ct.spacing), sub.shape).copy()
        wall = _wall_from_mask(ct, sl, sub, frame)
        if wall is not None:  # the body (endplates next to the disc) keeps the fixed threshold
            thr[_local_y(ct, sl, sub.shape, frame) < wall - ENDPLATE_ERODE_FROM_WALL_MM] = OUTER_LAYER_MIN_HU
        cut = sub & ~ndi.binary_erosion(sub) & (hu < thr)
        sub &= ~cut
        shell_cut = int(cut.sum())
    # 3. endplate slice: the body loses one voxel at each cranial / caudal end (see ENDPLATE_ERODE)
    eroded = 0
    if ENDPLATE_ERODE:
        axes = ct.affine[:3, :3] / ct.spacing
        ax = int(np.argmax(np.abs(np.asarray(frame.axes, float)[2] @ axes)))
        wall = _wall_from_mask(ct, sl, sub, frame)
        if wall is not None:
            body = _local_y(ct, sl, sub.shape, frame) < wall - ENDPLATE_ERODE_FROM_WALL_MM
            up = np.zeros_like(sub)
            dn = np.zeros_like(sub)
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[ax], hi[ax] = slice(0, -1), slice(1, None)
            up[tuple(lo)] = sub[tuple(hi)]
            dn[tuple(hi)] = sub[tuple(lo)]
            ecut = body & sub & ~(up & dn)
            eroded = int(ecut.sum())
            sub &= ~ecut
    # 4. the largest connected part (26-connectivity): detached islands are not this vertebra's
    lab, n = ndi.label(sub, structure=np.ones((3, 3, 3), bool))
    dropped = 0
    if n > 1:
        size = np.bincount(lab.ravel())
        size[0] = 0
        big = int(np.argmax(size))
        dropped = int(sub.sum() - size[big])
        sub = lab == big
    out = np.zeros_like(mask)
    out[sl] = sub
    return out, {"peeled": peeled, "closed": closed, "filled": filled, "pedicle_cores": cores, "outer_not_bone": shell_cut, "endplate_eroded": eroded, "dropped": dropped}


# --------------------------------------------------------------------------- pedicle / body junction
def posterior_wall_y(ctx: VertebraContext) -> float | None:
    """Frame y coordinate (mm, posterior positive) of the vertebral body's posterior wall next to
    the midline: where lines from the body centroid along +y first leave the bone (into the
    spinal canal), median over :data:`WALL_OFFSETS_MM`; None when fewer than half the lines
    start in bone and leave it (then the whole screw keeps the pedicle margin)."""
    key = "posterior-wall"
    if key in ctx.cache:
        return ctx.cache[key]
    y = _wall_y(ctx.frame, lambda pts: ctx.field.sample(pts) < 0, 0.25)
    ctx.cache[key] = y
    return y


def body_start(ctx: VertebraContext, entry: np.ndarray, dirs: np.ndarray, radius, min_start=0.0) -> np.ndarray:
    """Distance from each entry along its axis (mm) after which the whole screw cross-section of
    ``radius`` lies anterior to the posterior body wall (frame y <= wall - radius), and not before
    ``min_start`` (per axis: the axis's point at the pedicle isthmus, so the isthmus always keeps
    the pedicle margin even when a coarse mask puts the entry beside the body); inf when no wall
    was found or the axis does not run anteriorly."""
    wall = posterior_wall_y(ctx)
    n = len(entry)
    if wall is None or n == 0:
        return np.full(n, np.inf)
    y0 = ctx.frame.to_local(entry)[:, 1]
    dy = np.asarray(dirs, float) @ np.asarray(ctx.frame.axes, float)[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        sb = (y0 - (wall - np.asarray(radius, float))) / -dy
    return np.where(dy < -1e-3, np.maximum(sb, min_start), np.inf)


def zone_margins(ctx: VertebraContext, entry, tip, diameter_mm: float, start_body: float,
                 entry_zone_mm: float, end_cap: float = float("inf")) -> tuple[float, float, float]:
    """Smallest surface margin (mm, SDF sampled on the screw surface like :mod:`spineplan.safety`)
    along the pedicle segment [entry zone, ``start_body``) and in the body segment (from
    ``start_body``, tip cap included), each surface line judged from its own entry zone
    (:func:`spineplan.safety.line_zone_ends`, ended at ``end_cap`` mm: the isthmus), and the
    smallest margin of the lines still inside their own entry zone after the axis's; inf for an
    empty segment."""
    from spineplan.geometry import cylinder_surface
    from spineplan.safety._grade import SURFACE_STEP_MM, line_zone_ends

    r = 0.5 * diameter_mm
    s = cylinder_surface(entry, tip, r, step_mm=SURFACE_STEP_MM)
    sdf = ctx.field.sample(s.points)
    judged = s.t_mm >= entry_zone_mm
    own = s.t_mm >= line_zone_ends(s.t_mm, s.on_cap, sdf, r, entry_zone_mm, max_end_mm=end_cap) - 1e-9
    ped = judged & own & (s.t_mm < start_body)
    body = judged & own & (s.t_mm >= start_body)
    ext = judged & ~own
    mp = float(-sdf[ped].max()) if ped.any() else float("inf")
    mb = float(-sdf[body].max()) if body.any() else float("inf")
    me = float(-sdf[ext].max()) if ext.any() else float("inf")
    return mp, mb, me


# --------------------------------------------------------------------------- seeds
def _side_sign(side: str) -> float:
    return 1.0 if side == "left" else -1.0


def _local_direction(medial_deg, cranial_deg, side: str) -> np.ndarray:
    a = np.radians(np.asarray(medial_deg, float))
    b = np.radians(np.asarray(cranial_deg, float))
    s = _side_sign(side)
    return np.stack([-s * np.sin(a) * np.cos(b), -np.cos(a) * np.cos(b), np.sin(b)], axis=-1)


#: Mask seed when the Spine has no pedicle measurement: the pedicle is this vertebra's bone on
#: one side in the slab from PEDICLE_SLAB_MM[0] to PEDICLE_SLAB_MM[1] behind the posterior wall of
#: the body (frame y), within PEDICLE_SLAB_HALF_HEIGHT_MM of the body's centroid height and more
#: than PEDICLE_MIN_LATERAL_MM from the midline; its centre is the median of those voxels. The
#: pedicle joins the body's posterior wall and is ~10-20 mm long to the transverse process
#: (thoracic and lumbar chord lengths, Zindrick et al. 1987), so the slab just behind the wall
#: holds the pedicle and not the lamina, transverse process or spinous process. Half a lumbar
#: body's height (~25-30 mm) bounds the height; the canal's half-width (>= 7 mm) the lateral limit.
PEDICLE_SLAB_MM = (1.0, 8.0)
PEDICLE_SLAB_HALF_HEIGHT_MM = 12.0
PEDICLE_MIN_LATERAL_MM = 5.0
#: For that seed, the wall's search lines may start up to this far anterior of the centroid.
WALL_FALLBACK_START_MM = 15.0
#: A measured pedicle whose isthmus centre lies more than this (frame x, mm) from the mask seed's
#: is not used (measured on spineplan's own chest labels: a T11 "pedicle" 26 mm from the midline
#: at 30 deg, on the rib's neck; the mask seed was 1 mm from the reference labels' pedicle). Half
#: a thoracic or lumbar isthmus width is ~3-8 mm (Zindrick et al. 1987).
SEED_LATERAL_DISAGREE_MM = 6.0


def _mask_local(ctx: VertebraContext) -> np.ndarray:
    """Frame coordinates (N, 3) of the planning mask's voxels (cached)."""
    if "mask-local" not in ctx.cache:
        b = ctx.cache.get("box") or mask_box(ctx.mask, ctx.ct, 0.0)
        idx = np.argwhere(ctx.mask[b[0][0]:b[0][1], b[1][0]:b[1][1], b[2][0]:b[2][1]]) + [b[0][0], b[1][0], b[2][0]]
        ctx.cache["mask-local"] = ctx.frame.to_local(ctx.ct.index_to_world(idx)) if len(idx) else np.zeros((0, 3))
    return ctx.cache["mask-local"]


def _fallback_seed(ctx: VertebraContext, side: str) -> tuple[np.ndarray, float] | None:
    """Isthmus centre (LPS) and lateral extent (mm) from the mask: see :data:`PEDICLE_SLAB_MM`;
    without a posterior wall, the slab of least bone on this side between the body and the arch."""
    loc = _mask_local(ctx)
    if len(loc) < 50:
        return None
    s = _side_sign(side)
    lat = s * loc[:, 0]
    wall = posterior_wall_y(ctx)
    if wall is None:  # the centroid of a coarse automatic label may lie off the body's bone
        wall = _wall_y(ctx.frame, lambda pts: ctx.field.sample(pts) < 0, 0.5, start_mm=-WALL_FALLBACK_START_MM)
    if wall is not None:
        sel = ((loc[:, 1] >= wall + PEDICLE_SLAB_MM[0]) & (loc[:, 1] <= wall + PEDICLE_SLAB_MM[1])
               & (np.abs(loc[:, 2]) < PEDICLE_SLAB_HALF_HEIGHT_MM) & (lat > PEDICLE_MIN_LATERAL_MM))
        if sel.sum() >= 10:
            c_local = np.median(loc[sel], axis=0)
            c_local[1] = wall + 0.5 * (PEDICLE_SLAB_MM[0] + PEDICLE_SLAB_MM[1])
            return ctx.frame.to_world(c_local), float(np.ptp(loc[sel, 0]))
    sel = (lat > 3.0) & (np.abs(loc[:, 2]) < 15.0)
    loc = loc[sel]
    if len(loc) < 30:
        return None
    ymax = loc[:, 1].max()
    bins = np.arange(3.0, max(4.0, 0.7 * ymax), 1.0)
    if len(bins) < 3:
        return None
    counts = np.array([np.sum(np.abs(loc[:, 1] - y) < 0.5) for y in bins], float)
    ok = counts > 0
    if not ok.any():
        return None
    k = int(np.argmin(np.where(ok, counts, np.inf)))
    slab = loc[np.abs(loc[:, 1] - bins[k]) < 1.0]
    c_local = slab.mean(axis=0)
    return ctx.frame.to_world(c_local), float(np.ptp(slab[:, 0]))


def pedicle_seed(ctx: VertebraContext, side: str) -> tuple[np.ndarray, float, float, str]:
    """(isthmus centre LPS, medial angle deg, cranial angle deg, source) for the search."""
    reg = region(ctx.name)
    ped = ctx.pedicles.get(side)
    fb = _fallback_seed(ctx, side)
    if ped is not None:
        c = np.asarray(ped.isthmus_center, float)
        lat = lambda p_: float(ctx.frame.to_local(np.asarray(p_, float)[None])[0, 0])  # noqa: E731
        far = fb is not None and abs(lat(c) - lat(fb[0])) > SEED_LATERAL_DISAGREE_MM
        if ctx.field.sample(c[None])[0] < 0 and not far:
            med = float(ped.transverse_angle_deg)
            if not np.isfinite(med):
                med = LEVEL_MEDIAL_DEG.get(ctx.name, DEFAULT_MEDIAL_DEG[reg])
            return c, float(np.clip(med, -5.0, 35.0)), 0.0, "spine"
    med = LEVEL_MEDIAL_DEG.get(ctx.name, DEFAULT_MEDIAL_DEG[reg])
    if fb is None:
        return None, med, 0.0, "none"
    return fb[0], med, 0.0, "mask"


# --------------------------------------------------------------------------- candidates
def candidate_axes(ctx: VertebraContext, side: str, centre: np.ndarray, medial0: float, cranial0: float,
                   st: PlannerSettings, *, halfwidth=None, step=None, cone=None, astep=None):
    hw = st.search_halfwidth_mm if halfwidth is None else halfwidth
    stp = st.search_step_mm if step is None else step
    cn = st.search_cone_deg if cone is None else cone
    ast = st.search_angle_step_deg if astep is None else astep
    angs = np.arange(-cn, cn + 1e-9, ast)
    med, cra = np.meshgrid(medial0 + angs, cranial0 + angs, indexing="ij")
    lo = st.min_medial_angle_deg
    if region(ctx.name) in ("lumbar", "sacral"):
        lo = max(lo, st.min_medial_angle_lumbar_deg)
        if ctx.name in LEVEL_MEDIAL_DEG:
            lo = max(lo, LEVEL_MEDIAL_DEG[ctx.name] - st.lumbar_medial_band_deg)
    hi = min(st.max_medial_angle_deg, LEVEL_MEDIAL_DEG.get(ctx.name, DEFAULT_MEDIAL_DEG[region(ctx.name)])
             + st.max_medial_above_mean_deg)
    keep = ((med >= lo) & (med <= hi)
            & (np.abs(cra) <= st.max_cranial_angle_deg)).ravel()
    if not keep.any():
        return np.zeros((0, 3)), np.zeros((0, 3))
    d_local = _local_direction(med.ravel()[keep], cra.ravel()[keep], side)
    dirs = ctx.frame.axes.T @ d_local.T  # (3, D)
    dirs = (dirs / np.linalg.norm(dirs, axis=0)).T
    d0 = ctx.frame.axes.T @ _local_direction(medial0, cranial0, side)
    _, u, v = orthonormal_basis(d0)
    g = np.arange(-hw, hw + 1e-9, stp)
    a, b = np.meshgrid(g, g, indexing="ij")
    pts = centre + a.ravel()[:, None] * u + b.ravel()[:, None] * v  # (P, 3)
    P, D = len(pts), len(dirs)
    return np.repeat(pts, D, axis=0), np.tile(dirs, (P, 1))


def recentre(ctx: VertebraContext, side: str, centre, med0: float, cra0: float, st: PlannerSettings):
    """Coarse wide pass: the axis with the largest inscribed radius at its narrowest point in the
    25 mm after the entry zone is the pedicle's centre line; return its point nearest the seed
    and its angles.
    This corrects a seed that is off by several mm or degrees (e.g. from a coarse CT)."""
    pts, dirs = candidate_axes(ctx, side, centre, med0, cra0, st, halfwidth=RECENTRE_HALFWIDTH_MM,
                               step=RECENTRE_STEP_MM, cone=RECENTRE_CONE_DEG, astep=RECENTRE_ASTEP_DEG)
    m = ctx.field.march(pts, dirs, step=st.profile_step_mm, back_mm=BACK_MM, ahead_mm=st.entry_zone_mm + ISO_MM,
                        skip_mm=st.entry_zone_mm, iso_mm=ISO_MM, needs=[0.0])
    ok = np.isfinite(m["te"])
    if not ok.any():
        return centre, med0, cra0
    best = int(np.argmax(np.where(ok, m["iso"], -np.inf)))
    # pivot: the point of the best axis nearest the seed (the isthmus), so that turning the
    # direction in the fine pass swings the entry across the posterior elements
    d = dirs[best]
    c = pts[best] + float(np.dot(np.asarray(centre) - pts[best], d)) * d
    med, cra = ctx.frame.angles_of(d, side)
    return c, float(med), float(cra)


#: Points per ring of :func:`_surface_fail` (about every 1.5 mm around a 7.5 mm screw).
RING_POINTS = 16


def isthmus_along(ctx: VertebraContext, side: str, entry: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Distance (mm) from each entry along its axis to the measured pedicle isthmus centre's
    projection (N,): where a surface line's own entry zone must end at the latest, so the isthmus
    always keeps the full margin; inf when the pedicle is not measured."""
    ped = ctx.pedicles.get(side)
    c = None if ped is None else np.asarray(getattr(ped, "isthmus_center", None), float)
    if c is None or c.shape != (3,) or not np.all(np.isfinite(c)):
        return np.full(len(entry), np.inf)
    return np.einsum("ij,ij->i", c[None, :] - np.asarray(entry, float), np.asarray(dirs, float))


#: Relief (deg) of the inscribed-ball test along the pedicle in :func:`_surface_fail`: besides its
#: surface keeping the margin, a screw fits only where the ball of radius r + margin -
#: r (1 - cos BALL_RELIEF_DEG) around its axis lies in bone (the ball with its full radius in the
#: body). For a wall inclined by b to the screw the surface keeps r (1 - cos b) more than the plain
#: ball, so the relief admits walls inclined by up to BALL_RELIEF_DEG and stays stricter than the
#: surface rule beyond. The surface rule alone (90 deg) is what the grader judges, but it lets the
#: planner follow a wrong automatic label to its last millimetre. Measured on the abdomen CT
#: (session 7, diameters of the 10 screws from the reference labels / own-segmentation plans
#: graded against the reference labels): 0 deg (plain ball, before) median 6.0 [4.5-6.5] mm /
#: 7 of 10 placed, all A; 35 deg 6.0 [4.5-7.5] with L3-L4 at 7.5 mm / 8 of 10, all A; 90 deg 6.0
#: [4.5-7.5] / 9 of 10 with L5 right 4 x 55 mm grade C, 2.4 mm medial (the own L5 label holds L4's
#: inferior articular process; the plain ball was 0.65 mm short on that screw, the 35 deg relief
#: lowers a 4 mm screw's ball by 0.36 mm).
BALL_RELIEF_DEG = 35.0
#: The surface fit of :func:`_surface_fail` runs compiled (numba) when available; the numpy
#: version is the reference.
SURFACE_COMPILED = True


def _surface_fail(ctx: VertebraContext, st: PlannerSettings, entry, dirs, te, prof, ss, dmm: float, stop,
                  end_cap=None, skip_below: float = 0.0):
    """Where a screw of diameter ``dmm`` stops fitting each axis: the first profile distance ``ss``
    (mm from the entry, from the end of the entry zone on, up to ``stop`` per axis; inf: none) at
    which the screw's surface, sampled as a ring of :data:`RING_POINTS` points, comes nearer than
    ``margin_mm`` (pedicle segment) or the body margin (body segment, from :func:`body_start`) to
    the bone boundary (+ :data:`PROFILE_SLACK_MM`): the rule of :mod:`spineplan.safety`, which
    samples the same distance field on the screw surface. Also returns the body start per axis.

    Entry zone per surface line (:data:`spineplan.safety.ENTRY_ZONE_RULE`): a ring point whose
    surface line entered the bone later than the axis (by at most r tan 60 deg and the entry zone's
    length, :func:`spineplan.safety.line_zone_ends`) keeps only the body margin until the entry zone
    has passed on its own line; ``end_cap`` (per axis, mm from the entry; the measured isthmus
    centre) ends that exemption early, so the pedicle isthmus always keeps the full margin.
    ``skip_below``: an axis whose relief-ball test already fails before this distance gets that
    distance without sampling its rings (the search only needs to know the screw is too short).

    The inscribed-ball test is used as a shortcut: where the ball of radius
    r + margin around the axis point lies in bone (from ``s_ball`` = entry zone + r + margin on,
    so that it does not reach back into the exempt entry zone), the ring there does too, and only
    where the ball fails is the ring sampled. Where the ball with the relief of
    :data:`BALL_RELIEF_DEG` fails (from ``s_ball`` + the largest per-line lag on, so that it does
    not reach into any line's own entry zone) the screw does not fit. The ball alone is stricter than the surface rule
    wherever the wall is not parallel to the screw (a wall inclined by b to the axis: the surface
    keeps r (1 - cos b) more than the ball; the trilinear field on a coarse grid adds to it).
    Measured before this change on the abdomen CT's reference labels (3 mm voxels, session 7): the
    next catalogue diameter on 6 of the 10 chosen axes (L3-L5) failed the ball 10-13 mm from the
    entry with a surface margin of 1.07-1.37 mm (L3 left 7.0 mm: ball margin 0.94 mm at 11 mm,
    surface 1.32 mm); on the 1 mm phantom (seed 0) the ball was 0.25-0.4 mm stricter (L1 5.5 mm:
    ball 0.74, surface 1.09 mm)."""
    r = 0.5 * dmm
    n = len(entry)
    sb = body_start(ctx, entry, dirs, r, te)
    if n == 0:
        return np.zeros(0), sb
    s_ball = st.entry_zone_mm + r + st.margin_mm
    need_p, need_b = r + st.margin_mm + PROFILE_SLACK_MM, r + st.body_margin + PROFILE_SLACK_MM
    lim_p, lim_b = -(st.margin_mm + PROFILE_SLACK_MM), -(st.body_margin + PROFILE_SLACK_MM)
    relief = r * (1.0 - np.cos(np.radians(BALL_RELIEF_DEG)))
    lag = line_lag_max(r, st.entry_zone_mm)
    lim_e = -(st.body_margin + PROFILE_SLACK_MM)  # a surface line inside its own entry zone
    stop = np.broadcast_to(np.asarray(stop, np.float64), (n,))
    cap = np.full(n, np.inf) if end_cap is None else np.broadcast_to(np.asarray(end_cap, np.float64), (n,))
    cap = np.ascontiguousarray(np.maximum(cap, st.entry_zone_mm))
    fld = ctx.field
    helper = np.where(np.abs(dirs[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    u = np.cross(dirs, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(dirs, u)
    ang = np.linspace(0, 2 * np.pi, RING_POINTS, endpoint=False)
    if _surface_fail_nb is not None and SURFACE_COMPILED:
        from spineplan.geometry import affine_apply

        return _surface_fail_nb(fld.sdf, np.float32(fld.outside_value), np.ascontiguousarray(fld.to_index(entry)),
                                np.ascontiguousarray(affine_apply(fld.inv, dirs, linear_only=True)),
                                np.ascontiguousarray(affine_apply(fld.inv, r * u, linear_only=True)),
                                np.ascontiguousarray(affine_apply(fld.inv, r * v, linear_only=True)),
                                np.cos(ang), np.sin(ang), np.ascontiguousarray(prof, np.float64),
                                np.asarray(ss, np.float64), np.ascontiguousarray(sb, np.float64),
                                np.ascontiguousarray(stop), need_p, need_b, lim_p, lim_b,
                                float(st.entry_zone_mm), s_ball - 1e-9, relief, lag, lim_e, cap,
                                float(skip_below)), sb
    # numpy reference: every ring from the entry zone on, each ring point with its line's own zone
    ez = float(st.entry_zone_mm)
    body = ss[None, :] >= sb[:, None]
    lim = np.where(body, lim_b, lim_p)
    ring_bad = np.zeros((n, len(ss)), bool)
    for a in ang:
        val = fld.sample_rays(entry + r * (np.cos(a) * u + np.sin(a) * v), dirs, ss)
        end = np.minimum(ez + np.clip(line_entries(ss, val.T, ez, lag), 0.0, lag), cap)
        ring_bad |= val > np.where(ss[None, :] < end[:, None], lim_e, lim)
    need = np.where(body, need_b, need_p)
    after = ss[None, :] >= s_ball - 1e-9
    in_range = (ss[None, :] >= ez - 1e-9) & (ss[None, :] <= stop[:, None])
    ball_bad = in_range & (ss[None, :] >= s_ball + lag - 1e-9) & (prof < need - np.where(body, 0.0, relief))
    bad = ball_bad | (in_range & ~(after & (prof >= need)) & ring_bad)
    first = np.where(bad.any(axis=1), ss[np.argmax(bad, axis=1)], np.inf)
    ball_first = np.where(ball_bad.any(axis=1), ss[np.argmax(ball_bad, axis=1)], np.inf)
    return np.where(ball_first < skip_below, ball_first, first), sb


def evaluate(ctx: VertebraContext, side: str, pts: np.ndarray, dirs: np.ndarray, st: PlannerSettings,
             sizes: list[tuple[float, float]], width_for_rule: float | None):
    """Entries, best size and purchase for every candidate axis. Returns a dict of arrays and counts.

    The fit of a diameter along an axis: from the end of the entry zone ``ez`` the screw surface
    keeps ``margin_mm`` (pedicle) or the body margin (body) from the bone boundary, tested on the
    screw surface as :mod:`spineplan.safety` grades it (:func:`_surface_fail`; the inscribed-ball
    test on the axis profile only as a shortcut where it passes). (Measured on the abdomen CT's reference labels, session 5: with the ball test from ``ez`` on,
    the widest admissible corridor of L1-L5 was limited at the entry zone's end in 6 of 10
    pedicles, and the screws were 4.0-6.5 mm in isthmuses of 6-20 mm.)"""
    step = st.profile_step_mm
    counts: dict[str, int] = {}
    diam = np.array(sorted({d for d, _ in sizes}))
    pts, dirs, te, s_exit, iso, entry, ss, prof = _axis_profiles(ctx, side, pts, dirs, st)
    counts["bone-corridor"] = int(np.sum(s_exit - st.entry_zone_mm >= min(l for _, l in sizes) * 0.5))
    n = len(entry)
    fits_any = np.zeros(n, bool)
    fits_rule = np.zeros(n, bool)
    nfit = np.zeros(n, int)
    lmin = min(l for _, l in sizes)
    fit_l = np.zeros((n, len(diam)))  # longest catalogue length per diameter (0: none)
    tipmax = s_exit - st.anterior_cortex_clearance_mm
    end_cap = isthmus_along(ctx, side, entry, dirs)
    for kd in range(len(diam) - 1, -1, -1):
        dmm = float(diam[kd])
        lens = np.sort(np.array([l_ for d_, l_ in sizes if abs(d_ - dmm) < 1e-6]))
        # only axes that could hold this diameter's shortest screw and still need sizes
        test = (tipmax - step >= lens.min()) & (nfit < SIZE_VARIANTS)
        fail = np.full(n, -np.inf)
        if test.any():
            fail[test] = _surface_fail(ctx, st, entry[test], dirs[test], te[test], prof[test], ss, dmm,
                                       np.minimum(tipmax[test], lens.max()), end_cap[test],
                                       skip_below=float(lens.min()) + step)[0]
        lmax = np.minimum(fail - step, tipmax - step)
        test &= lmax >= lens.min()
        fits_any |= test & (lmax >= lmin)
        if width_for_rule is not None and dmm > st.max_diameter_fraction * width_for_rule + 1e-6:
            continue
        li = np.searchsorted(lens, lmax, side="right") - 1  # longest catalogue length <= lmax
        l_ok = test & (li >= 0)
        fit_l[l_ok, kd] = lens[li[l_ok]]
        fits_rule |= l_ok
        nfit += l_ok
    isth = 2.0 * float(np.max(iso)) if len(iso) else float("nan")
    counts["margin"] = int(fits_any.sum())
    counts["isthmus-80"] = int(fits_rule.sum())
    counts["length"] = int(fits_rule.sum())
    # size variants: each axis with its largest fitting diameters (SIZE_VARIANTS of them), so a
    # later rule that refuses the largest screw on an axis tries the next smaller one there
    fit_rank = np.cumsum((fit_l > 0)[:, ::-1], axis=1)[:, ::-1]  # 1 = the largest fitting diameter
    ax_idx, kd_idx = np.nonzero((fit_l > 0) & (fit_rank <= SIZE_VARIANTS))
    d_p = diam[kd_idx]
    l_p = fit_l[ax_idx, kd_idx]
    e_p, dir_p = entry[ax_idx], dirs[ax_idx]
    # inscribed-ball margin over [entry zone + r + margin, L] (a lower bound of the surface margin)
    s_b = st.entry_zone_mm + 0.5 * d_p + st.margin_mm
    win = (ss[None, :] >= s_b[:, None] - 1e-9) & (ss[None, :] <= l_p[:, None])
    clear = np.where(win, prof[ax_idx], np.inf).min(axis=1) - 0.5 * d_p
    pur, mhu = _purchase(ctx, e_p, dir_p, d_p, l_p)
    return dict(entry=e_p, dirs=dir_p, d=d_p, L=l_p, purchase=pur, mean_hu=mhu, clear=clear, counts=counts,
                isthmus=isth, body_start=body_start(ctx, e_p, dir_p, 0.5 * d_p, te[ax_idx]), axis=ax_idx,
                kd=kd_idx, fit_l=fit_l, diameters=diam, axis_entry=entry, axis_dirs=dirs, axis_te=te,
                largest=fit_rank[ax_idx, kd_idx] == 1)


def _axis_profiles(ctx: VertebraContext, side: str, pts: np.ndarray, dirs: np.ndarray, st: PlannerSettings):
    """Per candidate axis that enters bone: its through-point and direction, the distance ``te``
    from its entry to the through-point, where it leaves the bone (``s_exit``), its narrowest
    inscribed radius after the entry zone (``iso``), its entry, the profile distances ``ss`` and the
    inscribed radius at each (``prof``; inf in the entry zone). Independent of the screw sizes, so
    it is kept per side for the same candidate set: the size search below the catalogue
    (:func:`spineplan.plan.screws._smaller_option`) and the second pass of :func:`search_pedicle`
    (80 % rule from the distance field) reuse it instead of marching the same axes again."""
    key = ("axis-profiles", side)
    hit = ctx.cache.get(key)
    if (hit is not None and hit[0] == (st.profile_step_mm, st.entry_zone_mm) and hit[1].shape == pts.shape
            and np.array_equal(hit[1], pts) and np.array_equal(hit[2], dirs)):
        return hit[3]
    step = st.profile_step_mm
    m = ctx.field.march(pts, dirs, step=step, back_mm=BACK_MM, ahead_mm=AHEAD_MM, skip_mm=st.entry_zone_mm,
                        iso_mm=ISO_MM, needs=np.zeros(1))
    ok = np.isfinite(m["te"])
    p_ok, d_ok = pts[ok], dirs[ok]
    te, s_exit, iso, run = m["te"][ok], m["exit_s"][ok], m["iso"][ok], m["run"][ok]
    entry = p_ok - te[:, None] * d_ok
    ss = np.arange(run.shape[1]) * step
    ez = int(np.ceil(st.entry_zone_mm / step - 1e-9))
    prof = -ctx.field.sample_rays(entry, d_ok, ss)  # inscribed radius along each axis
    prof[:, :ez] = np.inf
    out = (p_ok, d_ok, te, s_exit, iso, entry, ss, prof)
    ctx.cache[key] = ((st.profile_step_mm, st.entry_zone_mm), pts.copy(), dirs.copy(), out)
    return out


#: Diameters tried per candidate axis: its largest fitting one and the next smaller ones (a later
#: rule, e.g. the facet or corridor check, can refuse the larger screw on an otherwise good axis).
SIZE_VARIANTS = 3


def _purchase(ctx: VertebraContext, entry, dirs, dmm, lmm):
    if len(entry) == 0:
        return np.zeros(0), np.zeros(0)
    nmax = int(np.ceil(lmm.max()))
    ts = np.arange(0.5, nmax, 1.0)
    ang = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    tot = np.zeros(len(entry))
    cnt = np.zeros(len(entry))
    # perpendicular basis per axis
    helper = np.where(np.abs(dirs[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    u = np.cross(dirs, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(dirs, u)
    offs = [np.zeros_like(u)] + [0.6 * 0.5 * dmm[:, None] * (np.cos(a) * u + np.sin(a) * v) for a in ang]
    valid = ts[None, :] < lmm[:, None]  # (N, T)
    hu_field = DistanceField(ctx.hu, ctx.hu_affine, -1000.0)
    for off in offs:
        hu = hu_field.sample_rays(entry + off, dirs, ts)
        tot += np.where(valid, np.maximum(hu, 0.0), 0.0).sum(axis=1)
        cnt += valid.sum(axis=1)
    mean = tot / np.maximum(cnt, 1)
    vol_ml = np.pi * (0.5 * dmm) ** 2 * lmm / 1000.0
    return mean * vol_ml, mean


# --------------------------------------------------------------------------- later rules
#: The superior articular process sits on the pedicle-lamina junction, its lateral border about
#: over the pedicle's lateral wall, where the transverse process (and, in the thoracic spine, the
#: rib's tubercle at the costotransverse joint) begins (Weinstein et al. 1988; the thoracic
#: transverse processes arise at the SAP's height). Bone above the pedicle's roof lying more than
#: this far (mm, frame x) lateral of the pedicle's lateral wall (search centre + half the measured
#: isthmus width) is transverse process or rib, not SAP, and is left out of :func:`sap_border`.
#: Measured on the chest CT's own labels (session 8, code at 3f6400a): T9 left's label holds
#: costotransverse bone up to ~35 mm from the midline, the SAP estimate was 23.6 mm lateral
#: (reference label's SAP: 9.6 mm, pedicle centre 10.9 mm) and every entry was refused as medial
#: to the SAP; with the cap a 4 x 35 mm screw, grade A against the reference labels. 3 mm is an
#: engineering allowance (about the SAP's lateral overhang); no other screw of the benchmark changed
#: grade.
SAP_MAX_BEYOND_PEDICLE_MM = 3.0


def sap_border(ctx: VertebraContext, side: str, centre: np.ndarray) -> float | None:
    """Lateral coordinate (vertebra frame, positive = this side) of the superior articular
    process (SAP): the median lateral coordinate of the bone above the pedicle's roof (cranial
    to the isthmus centre by half the isthmus height + 2 mm, or 8 mm when unmeasured) and behind
    the isthmus centre, on this side, and (with a measured width) no farther than
    :data:`SAP_MAX_BEYOND_PEDICLE_MM` lateral of the pedicle's lateral wall. The transverse process
    lies at the pedicle's height in the lumbar spine, so it is excluded; the median keeps the
    estimate on the SAP's body (its lateral half starts here)."""
    loc = _mask_local(ctx)
    c = ctx.frame.to_local(centre)
    ped = ctx.pedicles.get(side)
    h = float(ped.isthmus_height_mm) if ped is not None and np.isfinite(ped.isthmus_height_mm) else 12.0
    s = _side_sign(side)
    lat = s * loc[:, 0]
    sel = (lat > 2.0) & (loc[:, 2] > c[2] + 0.5 * min(max(h, 8.0), 20.0) + 2.0) & (loc[:, 1] > c[1])
    w = float(ped.isthmus_width_mm) if ped is not None and np.isfinite(ped.isthmus_width_mm) else np.nan
    if np.isfinite(w):
        sel &= lat <= s * c[0] + 0.5 * w + SAP_MAX_BEYOND_PEDICLE_MM
    if sel.sum() < 10:
        return None
    return float(np.median(lat[sel]))


def _ring_offsets(dirs: np.ndarray, radius: np.ndarray, n: int = 4) -> list[np.ndarray]:
    """Axis plus ``n`` points around it at ``radius`` (per axis), as offsets (N, 3)."""
    helper = np.where(np.abs(dirs[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    u = np.cross(dirs, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(dirs, u)
    r = np.asarray(radius, float).reshape(-1, 1)
    return [np.zeros_like(u)] + [r * (np.cos(a) * u + np.sin(a) * v)
                                 for a in np.linspace(0, 2 * np.pi, n, endpoint=False)]


def _in_grid(shape, inv: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Whether LPS points (..., 3) fall on a grid of ``shape`` (nearest voxel)."""
    from spineplan.geometry import affine_apply

    idx = np.rint(affine_apply(inv, pts.reshape(-1, 3))).astype(np.int64)
    return np.all((idx >= 0) & (idx < np.array(shape)), axis=1).reshape(pts.shape[:-1])


@dataclass
class Corridor:
    """The CT and labels the percutaneous corridor is checked in, looked up per point (nearest
    voxel): an obstacle is bone by HU (> ``corridor_bone_hu``) or any vertebra label, air is
    HU < ``skin_hu`` (outside the body). Nothing is computed over the whole volume."""

    hu: np.ndarray
    labels: np.ndarray | None
    inv: np.ndarray
    spacing: float
    bone_hu: float
    air_hu: float

    @classmethod
    def of(cls, ct: Volume, labels: np.ndarray | None, st: PlannerSettings) -> "Corridor":
        return cls(np.asarray(ct.array), None if labels is None else np.asarray(labels), np.linalg.inv(ct.affine),
                   float(np.max(ct.spacing)), st.corridor_bone_hu, st.skin_hu)

    def _values(self, arr: np.ndarray, pts: np.ndarray):
        from spineplan.geometry import affine_apply

        idx = np.rint(affine_apply(self.inv, pts.reshape(-1, 3))).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < np.array(arr.shape)), axis=1)
        return arr[idx[ok, 0], idx[ok, 1], idx[ok, 2]], ok

    def obstacle_at(self, pts: np.ndarray) -> np.ndarray:
        """Whether each point (..., 3) is bone or labelled vertebra (False off the grid)."""
        out = np.zeros(pts.shape[:-1], bool).reshape(-1)
        v, ok = self._values(self.hu, pts)
        hit = v > self.bone_hu
        if self.labels is not None:
            lab, _ = self._values(self.labels, pts)
            hit |= lab != 0
        out[ok] = hit
        return out.reshape(pts.shape[:-1])

    def air_at(self, pts: np.ndarray) -> np.ndarray:
        """Whether each point (..., 3) is air (True off the grid)."""
        out = np.ones(pts.shape[:-1], bool).reshape(-1)
        v, ok = self._values(self.hu, pts)
        out[ok] = v < self.air_hu
        return out.reshape(pts.shape[:-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return self.hu.shape


def skin_and_corridor(cor: Corridor, entries: np.ndarray, dirs: np.ndarray, radii: np.ndarray,
                      st: PlannerSettings, *, fov_edge_is_skin: bool = True, edge: bool = False,
                      own: BoxMask | None = None):
    """Skin points (N, 3) and whether each back-extension from the entry to the skin meets bone (N,).

    The skin is the last tissue sample before 3 mm of air. A trajectory that leaves the scan
    before reaching air: with ``fov_edge_is_skin`` (the default, kept for
    :mod:`spineplan.plan.access`) its last tissue sample inside the field of view is returned
    as the skin; without it (the screw planner) its skin point is NaN, since the true skin entry
    is unknown. Either way its corridor is checked for bone only inside the field of view, and
    a trajectory that never finds air within ``max_skin_depth_mm`` has a NaN skin point. With
    ``edge``, also returns the last point checked (N, 3): the skin, or the last tissue sample
    inside the field of view.

    ``own``: the vertebra's own bone and label (:func:`own_bone`). Within
    ``PlannerSettings.dock_zone_mm`` behind the entry, the screw's outline (not its axis) may
    graze it: the entry lies in the notch between the transverse process and the superior
    articular process, where the surgeon docks the needle (Weinstein et al. 1988). The axis itself
    meeting it means the screw would have to pass through more of this vertebra's bone before
    its entry (the entry is not on the outer surface): blocked.
    """
    start = max(st.corridor_start_mm, cor.spacing + 1.0)
    ts = np.arange(start, st.max_skin_depth_mm, 1.0)
    entries = np.asarray(entries, np.float64).reshape(-1, 3)
    dirs = np.asarray(dirs, np.float64).reshape(-1, 3)
    offs = np.ascontiguousarray(np.stack(_ring_offsets(dirs, radii), axis=1))  # (N, 5, 3): axis + ring
    walk = _corridor_walk_nb if _corridor_walk_nb is not None and CORRIDOR_COMPILED else _corridor_walk_np
    k, has, blocked = walk(cor, entries, dirs, offs, ts, st.dock_zone_mm, own)
    n = len(entries)
    last = entries - ts[np.maximum(k - 1, 0)][:, None] * dirs
    skin = last.copy()
    if fov_edge_is_skin:
        skin[~has] = np.nan
    else:  # real air only: the first air run must start inside the field of view
        at_k = entries - ts[k][:, None] * dirs
        skin[~(has & _in_grid(cor.shape, cor.inv, at_k))] = np.nan
    if edge:
        return skin, blocked, last
    return skin, blocked[:n]


#: The corridor walk runs compiled (numba) when available; the numpy version is the reference.
CORRIDOR_COMPILED = True


def _corridor_walk_np(cor: Corridor, entries, dirs, offs, ts, dock_mm: float, own: BoxMask | None):
    """Per trajectory: index of the first 3-sample air run behind the entry (the skin; the last
    index when none), whether one was found, and whether any obstacle sample (axis or outline;
    the outline may graze ``own`` within ``dock_mm``) lies before it. Numpy reference of
    :func:`_corridor_walk_nb`."""
    line = entries[:, None, :] - ts[None, :, None] * dirs[:, None, :]  # (N, T, 3)
    air = cor.air_at(line)
    run = air[:, :-2] & air[:, 1:-1] & air[:, 2:]  # 3 mm of air (off the scan counts as air)
    has = run.any(axis=1)
    k = np.where(has, np.argmax(run, axis=1), len(ts) - 1)
    before = np.arange(len(ts))[None, :] < k[:, None]
    blocked = np.zeros(len(entries), bool)
    dock = ts < dock_mm
    for j in range(offs.shape[1]):
        pts = line + offs[:, j][:, None, :]
        hit = cor.obstacle_at(pts)
        if own is not None and j > 0:
            hit &= ~(own.contains(pts) & dock[None, :])
        blocked |= np.any(hit & before, axis=1)
    return k, has, blocked


def _corridor_walk_nb(cor: Corridor, entries, dirs, offs, ts, dock_mm: float, own: BoxMask | None):
    """Compiled :func:`_corridor_walk_np`: each trajectory is walked only up to its skin."""
    labels = cor.labels if cor.labels is not None else np.zeros((1, 1, 1), np.uint8)
    if own is not None:
        own_arr, own_inv = np.ascontiguousarray(own.array), np.linalg.inv(own.affine)
    else:
        own_arr, own_inv = np.zeros((1, 1, 1), bool), np.eye(4)
    return _walk_kernel(cor.hu, labels, cor.labels is not None, own_arr, own is not None, cor.inv, own_inv,
                        entries, dirs, offs, np.asarray(ts, np.float64), float(cor.bone_hu), float(cor.air_hu),
                        float(dock_mm))


try:  # numba is a core dependency; without it the numpy walk is used
    from numba import njit as _njit
except ImportError:  # pragma: no cover
    _njit = None
    _corridor_walk_nb = None  # noqa: F811

if _njit is not None:

    @_njit(cache=True)
    def _nearest(inv, x, y, z, shape):  # pragma: no cover - compiled
        i = int(np.floor(inv[0, 0] * x + inv[0, 1] * y + inv[0, 2] * z + inv[0, 3] + 0.5))
        j = int(np.floor(inv[1, 0] * x + inv[1, 1] * y + inv[1, 2] * z + inv[1, 3] + 0.5))
        k = int(np.floor(inv[2, 0] * x + inv[2, 1] * y + inv[2, 2] * z + inv[2, 3] + 0.5))
        ok = 0 <= i < shape[0] and 0 <= j < shape[1] and 0 <= k < shape[2]
        return i, j, k, ok

    @_njit(cache=True)
    def _walk_kernel(hu, labels, has_labels, own, has_own, inv, own_inv, entries, dirs, offs, ts, bone_hu, air_hu,
                     dock_mm):  # pragma: no cover - compiled
        n, nt, nj = entries.shape[0], ts.shape[0], offs.shape[1]
        kk = np.full(n, nt - 1, np.int64)
        has = np.zeros(n, np.bool_)
        blocked = np.zeros(n, np.bool_)
        for a in range(n):
            run = 0
            first_obs = nt + 10
            for q in range(nt):
                t = ts[q]
                x = entries[a, 0] - t * dirs[a, 0]
                y = entries[a, 1] - t * dirs[a, 1]
                z = entries[a, 2] - t * dirs[a, 2]
                i, j, k, ok = _nearest(inv, x, y, z, hu.shape)
                air = (not ok) or hu[i, j, k] < air_hu
                run = run + 1 if air else 0
                if first_obs > nt:
                    for jj in range(nj):
                        px, py, pz = x + offs[a, jj, 0], y + offs[a, jj, 1], z + offs[a, jj, 2]
                        i, j, k, ok = _nearest(inv, px, py, pz, hu.shape)
                        if not ok:
                            continue
                        hit = hu[i, j, k] > bone_hu or (has_labels and labels[i, j, k] != 0)
                        if hit and jj > 0 and has_own and t < dock_mm:
                            oi, oj, ok_, inb = _nearest(own_inv, px, py, pz, own.shape)
                            if inb and own[oi, oj, ok_]:
                                hit = False
                        if hit:
                            first_obs = q
                            break
                if run == 3:
                    kk[a] = q - 2
                    has[a] = True
                    break
            blocked[a] = first_obs < kk[a]
        return kk, has, blocked


#: The facet check runs compiled (numba) when available; the numpy loop in :func:`_facet_hits` is the reference.
FACET_COMPILED = True

if _njit is not None:

    @_njit(cache=True)
    def _facet_kernel(fz, inv, entries, dirs, shaft, head, ts, lengths, th):  # pragma: no cover - compiled
        """Compiled :func:`_facet_hits`: stops at a screw's first sample in the facet zone."""
        n = entries.shape[0]
        out = np.zeros(n, np.bool_)
        for a in range(n):
            out[a] = (_ring_hits(fz, inv, entries[a], dirs[a], shaft[a], ts, lengths[a])
                      or _ring_hits(fz, inv, entries[a], dirs[a], head[a], th, np.inf))
        return out

    @_njit(cache=True)
    def _ring_hits(fz, inv, e, d, ring, ts, tmax):  # pragma: no cover - compiled
        """Whether a sample ``e + ring[j] + t d`` (t in ``ts`` up to ``tmax``) lies in ``fz``."""
        for jj in range(ring.shape[0]):
            for q in range(ts.shape[0]):
                if ts[q] > tmax:
                    break
                x = e[0] + ring[jj, 0] + ts[q] * d[0]
                y = e[1] + ring[jj, 1] + ts[q] * d[1]
                z = e[2] + ring[jj, 2] + ts[q] * d[2]
                i, j, k, ok = _nearest(inv, x, y, z, fz.shape)
                if ok and fz[i, j, k]:
                    return True
        return False

    from spineplan.geometry import _tri1 as _tri1_g

    @_njit(cache=True)
    def _surface_fail_nb(sdf, cval, e, d, u, v, ca, sa, prof, ss, sb, stop, need_p, need_b, lim_p, lim_b,
                         ez, s_ball, relief, lag, lim_e, cap, skip_below):  # pragma: no cover - compiled
        """Compiled :func:`_surface_fail` (index space: ``e`` entries, ``d`` direction per mm,
        ``u``/``v`` ring radius vectors): per axis, the first ``ss`` in [ez, stop] where the ring
        is nearer the boundary than its limit, the ring sampled only where the ball test fails;
        a ring point keeps ``lim_e`` until its own surface line's entry zone has passed."""
        n, m = prof.shape
        nk = ca.shape[0]
        out = np.full(n, np.inf)
        ends = np.empty(nk)
        j0 = 0
        while j0 < m and ss[j0] < ez - 1e-9:
            j0 += 1
        for i in range(n):
            # the relief-ball test first: a screw it already stops short needs no rings
            fc = np.inf
            for j in range(j0, m):
                s = ss[j]
                if s > stop[i]:
                    break
                if s >= s_ball + lag:
                    body = s >= sb[i]
                    if prof[i, j] < (need_b if body else need_p - relief):
                        fc = s
                        break
            if fc < skip_below:
                out[i] = fc
                continue
            have_ends = False
            for j in range(j0, m):
                s = ss[j]
                if s > stop[i]:
                    break
                body = s >= sb[i]
                if s >= s_ball:
                    need = need_b if body else need_p
                    if prof[i, j] >= need:
                        continue
                    if s >= s_ball + lag and prof[i, j] < need - (0.0 if body else relief):
                        out[i] = s
                        break
                lim = lim_b if body else lim_p
                if s < ez + lag and not have_ends:
                    # each ring line's own entry into the bone (first sample inside, interpolated)
                    for k in range(nk):
                        ox, oy, oz = ca[k] * u[i, 0] + sa[k] * v[i, 0], ca[k] * u[i, 1] + sa[k] * v[i, 1], \
                            ca[k] * u[i, 2] + sa[k] * v[i, 2]
                        tc = lag
                        prev = 0.0
                        for q in range(m):
                            t = ss[q]
                            if t > ez + lag:
                                break
                            val = _tri1_g(sdf, e[i, 0] + t * d[i, 0] + ox, e[i, 1] + t * d[i, 1] + oy,
                                          e[i, 2] + t * d[i, 2] + oz, cval)
                            if val <= 0:
                                if q == 0:
                                    tc = 0.0
                                else:
                                    tc = ss[q - 1] + (t - ss[q - 1]) * prev / max(prev - val, 1e-9)
                                break
                            prev = val
                        ends[k] = min(ez + min(max(tc, 0.0), lag), cap[i])
                    have_ends = True
                x, y, z = e[i, 0] + s * d[i, 0], e[i, 1] + s * d[i, 1], e[i, 2] + s * d[i, 2]
                bad = False
                for k in range(nk):
                    val = _tri1_g(sdf, x + ca[k] * u[i, 0] + sa[k] * v[i, 0], y + ca[k] * u[i, 1] + sa[k] * v[i, 1],
                                  z + ca[k] * u[i, 2] + sa[k] * v[i, 2], cval)
                    if val > (lim_e if (s < ez + lag and s < ends[k]) else lim):
                        bad = True
                        break
                if bad:
                    out[i] = s
                    break
        return out
else:  # pragma: no cover
    _facet_kernel = _surface_fail_nb = None


def corridor_of_vertebra(ctx: VertebraContext, cor: Corridor) -> Corridor:
    """``cor`` without the voxels of this vertebra's label that the planning mask dropped as not
    bone (outer voxels below OUTER_LAYER_MIN_HU): they are no obstacle on the way back to the skin.
    Measured on the abdomen CT (3 mm): the axes of all 300 best candidates for L2 left from
    spineplan's own labels met the label 4 mm behind their entry in a voxel of 27 HU (the reference
    label holds it too) that the planning mask had dropped, so the entry sat one voxel inside the
    label and every trajectory was refused as meeting bone (rule ``corridor-bone``)."""
    if cor.labels is None or ctx.label is None or OUTER_LAYER_MIN_HU is None:
        return cor
    key = "corridor"
    if key not in ctx.cache:
        from dataclasses import replace

        sl = tuple(slice(a, b) for a, b in ctx.cache["box"])
        drop = (cor.labels[sl] == ctx.label) & ~ctx.mask[sl] & (ctx.hu < OUTER_LAYER_MIN_HU)
        if drop.any():
            lab = cor.labels.copy(order="K")  # keeps the layout: a NIfTI label map is F-ordered, a C copy took ~0.9 s
            lab[sl][drop] = 0
            ctx.cache[key] = replace(cor, labels=lab)
        else:
            ctx.cache[key] = cor
    return ctx.cache[key]


def own_bone(ctx: VertebraContext) -> BoxMask | None:
    """The vertebra's own label (the raw label, dilated by one voxel to take in the partial
    volume of its cortex) in its box, for the docking-zone exemption of :func:`skin_and_corridor`."""
    if ctx.label is None or ctx.labels is None:
        return None
    key = "own-bone"
    if key not in ctx.cache:
        from scipy import ndimage as ndi

        (i0, i1), (j0, j1), (k0, k1) = ctx.cache["box"]
        sub = ndi.binary_dilation(ctx.labels[i0:i1, j0:j1, k0:k1] == ctx.label, structure=np.ones((3, 3, 3), bool))
        ctx.cache[key] = BoxMask(sub, ctx.hu_affine)
    return ctx.cache[key]


def _soft_fraction(hu_field: DistanceField, entries, dirs, diam, lengths, st: PlannerSettings,
                   marrow: BoxMask | None = None) -> np.ndarray:
    """Fraction of surface samples (8 around, every 1 mm after the entry zone) below soft_tissue_hu,
    not counting samples in ``marrow`` (:func:`marrow_pockets`: fat enclosed by bone)."""
    ts = np.arange(st.entry_zone_mm, float(np.max(lengths)) + 1e-9, 1.0)
    valid = ts[None, :] <= lengths[:, None]
    low = np.zeros(len(entries))
    for off in _ring_offsets(dirs, 0.5 * diam, 8)[1:]:
        hu = hu_field.sample_rays(entries + off, dirs, ts)
        soft = (hu < st.soft_tissue_hu) & valid
        if marrow is not None and soft.any():
            pts = (entries + off)[:, None, :] + ts[None, :, None] * dirs[:, None, :]
            soft &= ~marrow.contains(pts)
        low += np.sum(soft, axis=1)
    return low / np.maximum(8 * valid.sum(axis=1), 1)


#: Fatty marrow is bone interior, not soft tissue outside the bone: voxels of the planning mask below
#: ``PlannerSettings.soft_tissue_hu`` that lie in a hole of the rest of the mask (its voxels at or
#: above that HU, the bone around them) in a grid plane across the vertebra (axial or coronal, the
#: planes nearest the frame's cranio-caudal and antero-posterior axes), each hole at most this area
#: (mm^2), are not counted by the CT cross-check (rule ``ct-bone``). Same bound as the pedicle cores
#: (:data:`PEDICLE_CORE_MAX_MM2`, a 10 mm disc; a transverse process or pedicle is ~8-16 mm wide,
#: Zindrick et al. 1987): the spinal canal is larger (lumbar cross-section ~150-250 mm^2) and open
#: cranially and caudally, and fat or fluid outside the bone is not enclosed by it. Measured on the
#: abdomen CT's reference labels (session 9): L5's transverse-process roots hold marrow of -25 to
#: 15 HU inside a bright cortical rim (3 mm slices); the check refused the 5.5 x 45 mm L5 left screw
#: through it (3.4 % of its surface samples below 20 HU, all at 5-10 mm from the entry, limit 2 %) and
#: the planner placed 4.5 x 45 mm. None: every sample below soft_tissue_hu counts.
MARROW_POCKET_MAX_MM2: float | None = 80.0


def _plane_pockets(shell: np.ndarray, low: np.ndarray, ax: int, spacing: np.ndarray, max_mm2: float) -> np.ndarray:
    """Voxels of ``low`` enclosed by ``shell`` in the planes normal to grid axis ``ax``: inside the
    shell closed in-plane (3 x 3: a gap of one voxel in a thin cortical rim is partial volume, as
    for :data:`CLOSE_MIN_HU`) with its in-plane holes filled, not in the shell, in 4-connected
    in-plane parts of at most ``max_mm2``."""
    from scipy import ndimage as ndi

    pad = [(1, 1)] * 3
    pad[ax] = (0, 0)
    inner = tuple(slice(1, -1) if a != ax else slice(None) for a in range(3))
    closed = ndi.binary_closing(np.pad(shell, pad), structure=_in_plane(ax, square=True))[inner]
    cand = ndi.binary_fill_holes(closed, structure=_in_plane(ax)) & ~shell & low
    return _small_in_plane_parts(cand, ax, spacing, max_mm2)


def marrow_pockets(ctx: VertebraContext, st: PlannerSettings) -> BoxMask | None:
    """The planning mask's enclosed fatty marrow (:data:`MARROW_POCKET_MAX_MM2`) in its box (cached);
    None when switched off or there is none."""
    if MARROW_POCKET_MAX_MM2 is None:
        return None
    key = ("marrow", st.soft_tissue_hu)
    if key not in ctx.cache:
        sl = tuple(slice(a, b) for a, b in ctx.cache["box"])
        sub = ctx.mask[sl]
        low = sub & (ctx.hu < st.soft_tissue_hu)
        out = None
        if low.any():
            spacing = np.asarray(ctx.ct.spacing, float)
            axes = ctx.ct.affine[:3, :3] / ctx.ct.spacing
            shell = sub & ~low
            pockets = np.zeros_like(sub)
            for ax in sorted({int(np.argmax(np.abs(np.asarray(ctx.frame.axes, float)[2] @ axes))),
                              _coronal_axis(ctx.ct, ctx.frame)}):
                pockets |= _plane_pockets(shell, low, ax, spacing, MARROW_POCKET_MAX_MM2)
            out = BoxMask(pockets, ctx.hu_affine) if pockets.any() else None
        ctx.cache[key] = out
    return ctx.cache[key]


def _facet_hits(fz: BoxMask, entries, dirs, diam, lengths, st: PlannerSettings) -> np.ndarray:
    """Whether the shaft or the head model of each screw touches the facet zone (N,)."""
    out = np.zeros(len(entries), bool)
    ts = np.arange(0.0, float(np.max(lengths)) + 1e-9, 1.0)
    th = np.arange(-st.head_height_mm, 0.0, 1.0)
    if _facet_kernel is not None and FACET_COMPILED:
        shaft = np.ascontiguousarray(np.stack(_ring_offsets(dirs, 0.5 * diam, 6), axis=1))
        head = np.ascontiguousarray(np.stack(_ring_offsets(dirs, np.maximum(st.head_radius_mm, 0.5 * diam), 6), axis=1))
        return _facet_kernel(np.ascontiguousarray(fz.array, np.bool_), np.linalg.inv(fz.affine),
                             np.ascontiguousarray(entries, np.float64), np.ascontiguousarray(dirs, np.float64), shaft, head,
                             ts, np.asarray(lengths, np.float64), th)
    for off in _ring_offsets(dirs, 0.5 * diam, 6):
        p = entries[:, None, :] + off[:, None, :] + ts[None, :, None] * dirs[:, None, :]
        hit = fz.contains(p) & (ts[None, :] <= lengths[:, None])
        out |= hit.any(axis=1)
    for off in _ring_offsets(dirs, np.maximum(st.head_radius_mm, 0.5 * diam), 6):
        p = entries[:, None, :] + off[:, None, :] + th[None, :, None] * dirs[:, None, :]
        out |= fz.contains(p).any(axis=1)
    return out


def _bypasses_isthmus(ped, entries: np.ndarray, dirs: np.ndarray, st: PlannerSettings) -> np.ndarray:
    """Whether each axis (entry, unit direction) passes beside the measured pedicle ``ped``'s isthmus
    with the isthmus centre before the end of the entry zone (N,): see ``RULES``' comment; all False
    without a measurement (``ped`` None or no finite width)."""
    n = len(entries)
    if ped is None or not np.isfinite(getattr(ped, "isthmus_width_mm", np.nan)) or n == 0:
        return np.zeros(n, bool)
    rel = np.asarray(ped.isthmus_center, float)[None, :] - np.asarray(entries, float)
    t = np.einsum("ij,ij->i", rel, dirs)
    off = np.linalg.norm(rel - t[:, None] * dirs, axis=1)
    return (t < st.entry_zone_mm) & (off > 0.5 * float(ped.isthmus_width_mm))


def ranked(opt: Option) -> float:
    """An option's ranking value: its purchase discounted for angles away from the anatomical ones
    (``Option.score``; the raw purchase when not set)."""
    return opt.purchase if getattr(opt, "score", None) is None else opt.score


def prefer_thicker(options: list[Option], st: PlannerSettings) -> list[Option]:
    """``options`` (best ranked first) with the thickest option that gives up at most
    ``max_purchase_loss_for_diameter`` of the best one's ranked purchase and has at least its
    thread engagement (diameter x length) moved to the front (marked ``diameter_trade``)."""
    if not options or st.max_purchase_loss_for_diameter <= 0:
        return options
    best = options[0]
    ok = [o for o in options[1:] if o.diameter_mm > best.diameter_mm + 1e-6
          and ranked(o) >= (1 - st.max_purchase_loss_for_diameter) * ranked(best)
          and o.diameter_mm * o.length_mm >= best.diameter_mm * best.length_mm - 1e-6]
    if not ok:
        return options
    pick = max(ok, key=lambda o: (o.diameter_mm, ranked(o)))
    pick.diameter_trade = {"instead_of": [best.diameter_mm, best.length_mm],
                           "ranked_purchase_lost_pct": round(100.0 * (1 - ranked(pick) / max(ranked(best), 1e-9)), 1)}
    return [pick] + [o for o in options if o is not pick]


#: Fates of the candidates of :func:`search_pedicle` besides a refusing rule's index in RULES.
PASSED, NOT_CHECKED = -1, -2
#: How :func:`size_limit` names a later rule that refused the next larger screw on the same axis.
LIMIT_TEXT = {
    "ct-bone": "CT check (fat or fluid along the larger screw)",
    "sap-entry": "entry rule (lateral to the SAP, at the pedicle's height)",
    "pedicle-bypass": "transpedicular rule (the larger screw's axis passes beside the isthmus)",
    "facet": "facet rule (the larger screw or its head touches the facet joint above)",
    "corridor-bone": "percutaneous corridor (bone on the way back to the skin)",
    "skin-offset": "skin entry too far from the midline",
    "verified-grade": "surface verification (margin or grade of the larger screw)",
}


def _fit_limit(ctx: VertebraContext, st: PlannerSettings, entry, dirn, te: float, dmm: float, lmin: float,
               side: str = "left") -> dict:
    """Where one axis (entry, unit direction, ``te``: distance from the entry to its search point,
    where the body segment may start at the earliest) stops fitting a screw of ``dmm`` (see
    :func:`evaluate`): {"rule": "pedicle-margin" | "body-margin" | "tip-clearance", "at_mm": distance
    from the entry, "text": ...}; rule "fits" when a screw of at least ``lmin`` fits."""
    step = st.profile_step_mm
    entry = np.asarray(entry, float)[None]
    dirs = np.asarray(dirn, float)[None]
    ss = np.arange(int(round(AHEAD_MM / step)) + 1) * step
    prof = -ctx.field.sample_rays(entry, dirs, ss)
    out = (ss >= st.entry_zone_mm - 1e-9) & (prof[0] <= 0)  # the axis leaves the bone
    s_exit = float(ss[np.argmax(out)]) if out.any() else float(ss[-1])
    prof[:, ss < st.entry_zone_mm - 1e-9] = np.inf
    fail, sb = _surface_fail(ctx, st, entry, dirs, np.full(1, te), prof, ss, dmm, float(ss[-1]),
                             isthmus_along(ctx, side, entry, dirs))
    f, tipmax = float(fail[0]), s_exit - st.anterior_cortex_clearance_mm
    if min(f, tipmax) - step >= lmin:
        return {"rule": "fits", "at_mm": None, "text": "fits"}
    if tipmax <= f:
        return {"rule": "tip-clearance", "at_mm": round(tipmax, 1),
                "text": f"tip clearance ({st.anterior_cortex_clearance_mm:g} mm from the anterior cortex)"}
    seg = "pedicle" if f < float(sb[0]) else "body"
    return {"rule": f"{seg}-margin", "at_mm": round(f, 1), "text": f"{seg} margin {f:.0f} mm from entry"}


def size_limit(ctx: VertebraContext, side: str, st: PlannerSettings, sizes, res: dict, fate: np.ndarray, i: int,
               width: float | None) -> dict:
    """Why candidate ``i`` of :func:`search_pedicle` is not larger: for its diameter, what stops the
    next catalogue diameter on the same axis (``catalogue-max``, ``isthmus-80``, the fit:
    ``pedicle-margin`` / ``body-margin`` / ``tip-clearance`` at a distance from the entry, a later
    rule that refused it, or ``ranking``: it obeys every rule checked but holds less, being
    shorter); for its length, what stops the next catalogue length (``catalogue-max``, the margin or
    the tip clearance). Each part: {"rule", "at_mm", "text"}."""
    diam = res["diameters"]
    ax, kd = int(res["axis"][i]), int(res["kd"][i])
    dmm, lmm = float(res["d"][i]), float(res["L"][i])
    e, dirn, te = res["axis_entry"][ax], res["axis_dirs"][ax], float(res["axis_te"][ax])
    out: dict = {}
    if kd == len(diam) - 1:
        out["diameter"] = {"rule": "catalogue-max", "at_mm": None, "text": f"catalogue max ({dmm:g} mm)"}
    else:
        nxt = float(diam[kd + 1])
        lens_n = [l_ for d_, l_ in sizes if abs(d_ - nxt) < 1e-6]
        if width is not None and np.isfinite(width) and nxt > st.max_diameter_fraction * width + 1e-6:
            out["diameter"] = {"rule": "isthmus-80", "at_mm": None,
                               "text": f"{100 * st.max_diameter_fraction:.0f} % of isthmus ({width:.1f} mm)"}
        elif res["fit_l"][ax, kd + 1] <= 0:
            out["diameter"] = _fit_limit(ctx, st, e, dirn, te, nxt, min(lens_n), side)
            if out["diameter"]["rule"] == "fits":  # sampling differences: name the margin anyway
                out["diameter"] = {"rule": "pedicle-margin", "at_mm": None, "text": "pedicle margin"}
        else:
            j = np.flatnonzero((res["axis"] == ax) & (res["kd"] == kd + 1))
            f = int(fate[j[0]]) if len(j) else NOT_CHECKED
            if f >= 0:
                rule = RULES[f]
                out["diameter"] = {"rule": rule, "at_mm": None, "text": LIMIT_TEXT.get(rule, rule)}
            else:
                ln = float(res["fit_l"][ax, kd + 1])
                out["diameter"] = {"rule": "ranking", "at_mm": None,
                                   "text": f"ranking ({nxt:g} x {ln:g} mm on this axis holds less)"}
    lens = sorted(l_ for d_, l_ in sizes if abs(d_ - dmm) < 1e-6)
    longer = [l_ for l_ in lens if l_ > lmm + 1e-6]
    if not longer:
        out["length"] = {"rule": "catalogue-max", "at_mm": None, "text": f"catalogue max ({lmm:g} mm)"}
    else:
        lim = _fit_limit(ctx, st, e, dirn, te, dmm, longer[0], side)
        out["length"] = lim if lim["rule"] != "fits" else {"rule": "margin", "at_mm": None, "text": "margin"}
    return out


#: Candidates checked per vectorised batch of the later rules: the first batch, doubling up to CHUNK.
FIRST_CHUNK = 64
CHUNK = 512


def search_pedicle(ctx: VertebraContext, side: str, st: PlannerSettings, sizes: list[tuple[float, float]],
                   *, grade_fn=None, max_options: int | None = None, corridor: Corridor | None = None) -> PedicleResult:
    """All admissible screws for one pedicle, best purchase first (at most ``keep_candidates``)."""
    centre, med0, cra0, src = pedicle_seed(ctx, side)
    if centre is None:
        return PedicleResult([], float("nan"), float("nan"), "none", {"bone-corridor": 0}, "bone-corridor", src)
    ped = ctx.pedicles.get(side)
    spine_width = float(ped.isthmus_width_mm) if ped is not None and np.isfinite(ped.isthmus_width_mm) else None
    dmin = min(d for d, _ in sizes)
    if spine_width is not None and dmin > st.max_diameter_fraction * spine_width + 1e-6:
        # the 80 % rule refuses every size before any axis is searched: no search in vain
        # (measured on the half-width-pedicle phantom, isthmuses 4.3-4.4 mm: ~0.2-0.7 s per pedicle)
        return PedicleResult([], spine_width, float("nan"), "spine", {"isthmus-80": 0}, "isthmus-80", src,
                             detail=f"the smallest screw ({dmin:g} mm) exceeds {100 * st.max_diameter_fraction:.0f} % "
                                    f"of the isthmus width ({st.max_diameter_fraction * spine_width:.1f} mm)")
    seed_med, seed_cra, seed_centre = med0, cra0, np.asarray(centre, float)
    key = ("recentre", side)
    if key not in ctx.cache:
        # a seed from the mask is not recentred onto the widest corridor (on spineplan's own chest
        # labels that corridor was a rib neck: two grade-B screws)
        ctx.cache[key] = recentre(ctx, side, centre, med0, cra0, st) if src != "mask" else (centre, med0, cra0)
    centre, med0, cra0 = ctx.cache[key]
    pts, dirs = candidate_axes(ctx, side, centre, med0, cra0, st)
    cones = [(med0, cra0)]
    prior = (LEVEL_MEDIAL_DEG.get(ctx.name, DEFAULT_MEDIAL_DEG[region(ctx.name)]), 0.0)
    for m, c in ((seed_med, seed_cra), prior):
        # the measured pedicle direction, the widest corridor and the anatomical prior may
        # disagree (coarse CTs, imperfect labels): search around each of them
        if all(max(abs(m - m2), abs(c - c2)) > 0.5 * st.search_cone_deg for m2, c2 in cones):
            cones.append((m, c))
            p2, d2 = candidate_axes(ctx, side, centre, m, c, st)
            pts, dirs = np.concatenate([pts, p2]), np.concatenate([dirs, d2])
    if np.linalg.norm(seed_centre - np.asarray(centre, float)) > st.search_halfwidth_mm:
        # the recentring moved the through-points off the seed (measured on the abdomen CT's
        # reference labels: L3 left 7.4 mm medially, onto the lamina's root, where no entry is
        # lateral to the SAP at the pedicle's height): the seed's own grid is searched too
        for m, c in ((seed_med, seed_cra), prior):
            p2, d2 = candidate_axes(ctx, side, seed_centre, m, c, st)
            pts, dirs = np.concatenate([pts, p2]), np.concatenate([dirs, d2])
    corridor_mm = []  # isthmus_corridor_mm of these axes, computed once when first needed

    def through_isthmus_mm() -> float | None:
        if not corridor_mm:
            corridor_mm.append(isthmus_corridor_mm(ctx, side, st, pts, dirs) if src == "spine" else None)
        return corridor_mm[0]

    rule_width, wsrc = spine_width, "spine"
    if spine_width is not None and src == "spine" and ISTHMUS_WIDTH_FROM_CORRIDOR:
        # a straight cylinder of bone wider than the measured isthmus passes through it: the
        # measurement under-reads the outer width the 80 % rule is about (ISTHMUS_WIDTH_FROM_CORRIDOR)
        corr = through_isthmus_mm()
        if corr is not None and corr > spine_width:
            rule_width, wsrc = corr, "corridor"
    res = evaluate(ctx, side, pts, dirs, st, sizes, rule_width)
    width_sdf = res["isthmus"]
    if spine_width is not None:
        width = rule_width
    else:
        width, wsrc = width_sdf, "distance-field"
        res = evaluate(ctx, side, pts, dirs, st, sizes, width)
    counts = dict(res["counts"])
    cor = corridor_of_vertebra(ctx, corridor or Corridor.of(ctx.ct, ctx.labels, st))
    # best first: purchase, discounted for a medial angle away from the level's anatomical mean
    med_c, cra_c = ctx.frame.angles_of_many(res["dirs"], side)[:2]
    score = res["purchase"] * np.clip(1.0 - st.off_prior_penalty_per_deg * np.abs(med_c - prior[0]), 0.0, None) \
        * np.clip(1.0 - st.off_axis_cranial_penalty_per_deg * np.abs(cra_c), 0.0, None)
    res["score"] = score
    order = np.argsort(-score, kind="stable")
    border = sap_border(ctx, side, centre)
    # entry at the pedicle's height (the transverse process's root): within half the isthmus
    # height (measured, else ENTRY_DEFAULT_HALF_HEIGHT_MM) of the search centre's
    centre_z = float(ctx.frame.to_local(np.asarray(centre, float)[None])[0, 2])
    h_ped = float(ped.isthmus_height_mm) if ped is not None and np.isfinite(ped.isthmus_height_mm) else np.nan
    height_tol = 0.5 * h_ped if np.isfinite(h_ped) else ENTRY_DEFAULT_HALF_HEIGHT_MM
    s = _side_sign(side)
    keep = st.keep_candidates if max_options is None else max_options
    options: list[Option] = []
    stage = {r: 0 for r in RULES[4:]}
    hu_field = DistanceField(ctx.hu, ctx.hu_affine, 1000.0)
    bounds = [0]
    while bounds[-1] < len(order):  # batches grow: the best candidates usually pass
        bounds.append(min(len(order), bounds[-1] + min(CHUNK, FIRST_CHUNK * 2 ** (len(bounds) - 1))))
    # fate of each candidate checked: index into RULES of the later rule that refused it,
    # PASSED, or NOT_CHECKED (ranked below the last candidate the search needed)
    fate = np.full(len(order), NOT_CHECKED, np.int16)
    for c0, c1 in zip(bounds[:-1], bounds[1:]):
        ii = order[c0:c1]
        e, d = res["entry"][ii], res["dirs"][ii]
        dmm, lmm = res["d"][ii], res["L"][ii]
        fate_b = np.full(len(ii), NOT_CHECKED, np.int16)
        ok = np.ones(len(ii), bool)

        def passing(still, rule):
            """The candidates still admissible after ``rule``: the others are marked refused by it."""
            fate_b[ok & ~still] = RULES.index(rule)
            stage[rule] += int(still.sum())
            return still

        soft = _soft_fraction(hu_field, e, d, dmm, lmm, st, marrow_pockets(ctx, st))
        ok = passing(soft <= st.max_soft_fraction, "ct-bone")
        sap = s * ctx.frame.to_local(e)[:, 0] - border if border is not None else np.full(len(ii), np.nan)
        ok = passing(ok & ~(sap < -st.sap_lateral_tolerance_mm)
                     & (np.abs(ctx.frame.to_local(e)[:, 2] - centre_z) <= height_tol), "sap-entry")
        ok = passing(ok & ~_bypasses_isthmus(ped if src == "spine" else None, e, d, st), "pedicle-bypass")
        still = ok.copy()
        if ctx.facet is not None and ok.any():
            still[ok] = ~_facet_hits(ctx.facet, e[ok], d[ok], dmm[ok], lmm[ok], st)
        ok = passing(still, "facet")
        skin = np.full((len(ii), 3), np.nan)
        last = np.zeros((len(ii), 3))
        still = ok.copy()
        if ok.any():
            sk, blocked, last[ok] = skin_and_corridor(cor, e[ok], d[ok], 0.5 * dmm[ok], st,
                                                      fov_edge_is_skin=False, edge=True, own=own_bone(ctx))
            skin[ok] = sk
            still[ok] = ~blocked
        ok = passing(still, "corridor-bone")
        off = np.abs(ctx.frame.to_local(np.nan_to_num(skin))[:, 0])
        off[np.isnan(skin[:, 0])] = np.nan
        # when the trajectory leaves the scan before the skin, its offset where it leaves is a
        # lower bound of the skin entry's (the trajectory runs away from the midline going back)
        off_edge = np.abs(ctx.frame.to_local(last)[:, 0])
        ok = passing(ok & ~(np.where(np.isnan(off), off_edge, off) > st.max_skin_offset_mm), "skin-offset")
        for j in np.flatnonzero(ok):
            if len(options) >= keep:
                break  # the rest of the batch stays NOT_CHECKED
            i = ii[j]
            opt = Option(entry=e[j], tip=e[j] + lmm[j] * d[j], direction=d[j], diameter_mm=float(dmm[j]),
                         length_mm=float(lmm[j]), purchase=float(res["purchase"][i]), mean_hu=float(res["mean_hu"][i]),
                         score=float(score[i]),
                         min_clearance_mm=float(res["clear"][i]),
                         skin=None if np.isnan(skin[j, 0]) else skin[j],
                         skin_offset_mm=None if np.isnan(off[j]) else float(off[j]),
                         entry_sap_mm=None if np.isnan(sap[j]) else float(sap[j]), head=e[j] - st.rod_seat_mm * d[j],
                         body_start_mm=float(res["body_start"][i]), ct_soft_fraction=float(soft[j]))
            opt.pedicle_margin_mm, opt.body_margin_mm, m_ext = zone_margins(
                ctx, opt.entry, opt.tip, opt.diameter_mm, opt.body_start_mm, st.entry_zone_mm,
                float(isthmus_along(ctx, side, opt.entry[None], opt.direction[None])[0]))
            fate_b[j] = RULES.index("verified-grade")
            if (opt.pedicle_margin_mm < st.margin_mm - VERIFY_TOLERANCE_MM
                    or opt.body_margin_mm < st.body_margin - VERIFY_TOLERANCE_MM
                    or m_ext < st.body_margin - VERIFY_TOLERANCE_MM):
                continue
            if grade_fn is not None:
                opt.safety = grade_fn(opt, side)
                if opt.safety.grade != "A" or opt.safety.facet_violation:
                    continue
            fate_b[j] = PASSED
            stage["verified-grade"] += 1
            opt.candidate = int(i)
            options.append(opt)
        fate[c0:c1] = fate_b
        if len(options) >= keep:
            break
    counts.update(stage)
    fate_of = np.full(len(order), NOT_CHECKED, np.int16)
    fate_of[order] = fate
    options = prefer_thicker(options, st)
    failed, detail = None, None
    if not options:
        failed = next((r for r in RULES if counts.get(r, 1) == 0), "verified-grade")
        corr = through_isthmus_mm()
        need = dmin + 2.0 * st.margin_mm
        if corr is not None and corr < need - 1e-6 and RULES.index(failed) >= RULES.index("margin"):
            # the rules later in the order only refused what passed beside or around the isthmus
            failed = "margin"
            detail = (f"the widest straight corridor of bone through the pedicle's isthmus is {corr:.1f} mm across "
                      f"(inscribed, within {ISTHMUS_WINDOW_MM:g} mm of the measured isthmus centre), less than the "
                      f"smallest catalogue screw needs with its margin ({dmin:g} + 2 x {st.margin_mm:g} = {need:g} mm)")
    return PedicleResult(options, width, width_sdf, wsrc, counts, failed, src,
                         size_limit_of=lambda opt: size_limit(ctx, side, st, sizes, res, fate_of, opt.candidate, width),
                         detail=detail)


#: The 80 % rule (Misenhimer et al. 1989) is about the pedicle's outer width at its isthmus. When a
#: straight cylinder of the planning mask's bone through the measured isthmus
#: (:func:`isthmus_corridor_mm`, an inscribed width, so a lower bound of the outer width there) is
#: wider than the measured isthmus width, the measurement under-reads and the rule uses the
#: corridor. Measured on the abdomen CT's reference labels (session 9): L1 right isthmus read
#: 6.09 mm in a label ~9 mm across, corridor through it 7.85 mm; the 80 % rule held the screw to
#: 4.5 mm. The margin rule still applies to the screw as before. A measured isthmus narrower than
#: the smallest catalogue screw allows (< 5 mm) is refused before any search (speed); its corridor
#: would have to exceed 6 mm (4 mm + 2 x 1 mm margin) for a screw to fit anyway.
ISTHMUS_WIDTH_FROM_CORRIDOR = True

#: :func:`isthmus_corridor_mm`: an axis passes through the isthmus when the measured isthmus centre
#: lies within this fraction of the isthmus width of it, beyond the entry zone; its corridor there
#: is its narrowest inscribed radius within ISTHMUS_WINDOW_MM (along the axis) of the centre. (The
#: isthmus is the pedicle's narrowest section, Zindrick et al., Spine 1987;12:160-166; a screw
#: must pass through it, see ``RULES``' comment.)
ISTHMUS_THROUGH_FRACTION = 0.25
ISTHMUS_WINDOW_MM = 3.0


def isthmus_corridor_mm(ctx: VertebraContext, side: str, st: PlannerSettings, pts: np.ndarray,
                        dirs: np.ndarray) -> float | None:
    """Diameter (mm) of the widest straight corridor of bone through the measured pedicle isthmus
    among the candidate axes ``pts``/``dirs`` of :func:`search_pedicle` (2 x the largest, over the
    axes through the isthmus, of the narrowest inscribed radius near it); 0 when no axis passes
    through it, None without a measured pedicle. It states why a pedicle is refused when every
    axis through it is too narrow and the later rules only refused axes beside it."""
    ped = ctx.pedicles.get(side)
    w = float(getattr(ped, "isthmus_width_mm", np.nan)) if ped is not None else np.nan
    if not np.isfinite(w) or len(pts) == 0:
        return None
    _, d_ok, _, _, _, entry, ss, prof = _axis_profiles(ctx, side, pts, dirs, st)
    if len(entry) == 0:
        return 0.0
    tc = isthmus_along(ctx, side, entry, d_ok)
    rel = np.asarray(ped.isthmus_center, float)[None, :] - entry
    off = np.linalg.norm(rel - tc[:, None] * d_ok, axis=1)
    through = (off <= ISTHMUS_THROUGH_FRACTION * w) & (tc >= st.entry_zone_mm + ISTHMUS_WINDOW_MM)
    if not through.any():
        return 0.0
    win = np.abs(ss[None, :] - tc[through, None]) <= ISTHMUS_WINDOW_MM
    narrow = np.where(win, prof[through], np.inf).min(axis=1)
    return float(2.0 * max(float(narrow.max()), 0.0))
