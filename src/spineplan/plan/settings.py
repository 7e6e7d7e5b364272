"""Planner settings: every constant the screw planner and the safety rules use, with its source.

All lengths are mm, angles degrees, densities HU. ``PlannerSettings()`` gives the defaults;
change one with ``dataclasses.replace(settings, margin_mm=1.5)`` or ``PlannerSettings(margin_mm=1.5)``.

Sources cited below:

- Gertzbein SD, Robbins SE. Accuracy of pedicular screw placement in vivo. Spine 1990;15(1):11-14
  (the breach grades A-E in 2 mm steps).
- Misenhimer GR, Peek RD, Wiltse LL, et al. Anatomic analysis of pedicle cortical and cancellous
  diameter as related to screw size. Spine 1989;14(4):367-372 (plastic deformation then fracture of
  the pedicle once the screw exceeds ~80 % of its outer cortical diameter).
- Weinstein JN, Spratt KF, Spengler D, et al. Spinal pedicle fixation: reliability and validity of
  roentgenogram-based assessment and surgical factors on successful screw placement. Spine
  1988;13(9):1012-1018 (entry at the junction of the transverse process and the lateral border of
  the superior articular process, sparing the facet joint).
- Babu R, Park JG, Mehta AI, et al. Comparison of superior-level facet joint violations during open
  and percutaneous pedicle screw placement. Neurosurgery 2012;71(5):962-970; Chen Z, Zhao J, Xu H,
  et al. Technical factors related to the incidence of adjacent superior segment facet joint
  violation after transpedicular instrumentation in the lumbar spine. Eur Spine J
  2008;17(11):1476-1480; Moshirfar A, et al. Spine 2006;31(22):2624-2629 (facet violation by the
  top screw is frequent, more so percutaneously, and drives adjacent segment disease).
- Foley KT, Gupta SK, Justis JR, Sherman MC. Percutaneous pedicle screw fixation of the lumbar
  spine. Neurosurg Focus 2001;10(4):E10 (paramedian stab incisions over the pedicles; screws
  and rod passed through extension sleeves).
- Lonstein JE, Denis F, Perra JH, et al. Complications associated with pedicle screws. J Bone
  Joint Surg Am 1999;81(11):1519-1528 (anterior cortical perforation endangers the great vessels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from spineplan.errors import PlanningError
from spineplan.plan.rods import MAX_HEAD_OFFSET_MM, TULIP_CENTRE_HEIGHT_MM


@dataclass(frozen=True)
class PlannerSettings:
    # ------------------------------------------------------------------ hard safety rules
    #: Minimum bone left between the screw surface and the outside of the vertebra **along the
    #: pedicle** (issue 4 default; about one pedicle cortex thickness): from the end of the entry
    #: zone until the whole screw cross-section is anterior to the posterior wall of the vertebral
    #: body (the pedicle-body junction; the wall is found per vertebra in the distance field, see
    #: :func:`spineplan.plan._search.posterior_wall_y`). The spinal canal and the nerve roots lie
    #: along this segment (medial and caudal pedicle walls), so it keeps the full margin.
    margin_mm: float = 1.0
    #: Smaller margin required in the vertebral body (anterior to the posterior body wall): the
    #: screw surface stays at least this far inside the body's cortex (lateral, anterior and
    #: endplate walls), so the cortex is never breached, while the screw is not held to the
    #: pedicle's margin along its whole length. Lumbar body cortical shells are ~0.3-0.5 mm thick
    #: (Silva MJ et al., Calcif Tissue Int 1994;55:229-235; Ritzel H et al., J Bone Miner Res
    #: 1997;12:89-95: 0.38 +/- 0.06 mm), so 0.5 mm keeps the surface inside the shell's inner
    #: boundary. It must be > 0; when ``margin_mm`` is smaller, ``margin_mm`` is used in the body too
    #: (:attr:`body_margin`). The tip clearance from the anterior cortex
    #: (``anterior_cortex_clearance_mm``) still applies along the axis.
    body_margin_mm: float = 0.5
    #: Screw diameter <= this fraction of the pedicle isthmus's outer width (Misenhimer et al. 1989).
    max_diameter_fraction: float = 0.8
    #: The tip stays at least this far behind the anterior cortex, measured along the axis
    #: (issue 4; anterior perforation endangers the great vessels, Lonstein et al. 1999).
    anterior_cortex_clearance_mm: float = 4.0
    #: Entry zone: the first ``entry_zone_mm`` of the screw behind its entry point, measured
    #: along the axis, lie in the dorsal cortex of the posterior elements (lateral to the
    #: superior articular process, outside the pedicle) and cross it by design: they are
    #: excluded from the breach check. The margin is judged on each surface line from
    #: ``entry_zone_mm`` past that line's own entry into the bone (the dorsal surface is oblique to
    #: the screw; at most r tan 60 deg and ``entry_zone_mm`` later than the axis's zone); until then
    #: the planner keeps the line ``body_margin_mm`` inside the bone, and never past the measured
    #: isthmus centre. The same rule is used by spineplan.safety (``ENTRY_ZONE_RULE``).
    entry_zone_mm: float = 5.0
    #: Entry lateral to the superior articular process (Weinstein et al. 1988): the entry's
    #: lateral coordinate in the vertebra frame must be at least the SAP's centre line (median
    #: lateral coordinate of the bone above the pedicle roof, behind the isthmus) minus this
    #: tolerance, i.e. on the SAP's lateral half or beyond, never over the facet joint line or the
    #: lamina. The Weinstein entry sits on the SAP's lateral border at the transverse process; the
    #: tolerance allows for the SAP's width measured from a coarse mask (about half a lumbar SAP's
    #: ~8-10 mm width, minus a margin). The facet-zone test below is the stricter check.
    sap_lateral_tolerance_mm: float = 3.0
    #: Facet joint zone of the level above: points within this distance of both this vertebra
    #: and its cranial neighbour, posterior to the pedicle isthmus (the facet joint space
    #: between the inferior articular process above and the superior articular process here;
    #: a normal lumbar facet joint space is about 1-2 mm wide). Babu et al. 2012; Chen et al. 2008.
    facet_zone_mm: float = 2.5
    #: The screw head (tulip) is modelled for the facet check as a cylinder of this radius
    #: extending ``head_height_mm`` back from the entry along the axis (typical polyaxial
    #: percutaneous tulips are 10-13 mm wide and sit ~10-12 mm proud; the shaft-sized core is used
    #: because the tulip's exact shape varies by implant system). The height is the rods'
    #: tulip-centre height (:data:`spineplan.plan.rods.TULIP_CENTRE_HEIGHT_MM`), so the planner's
    #: head and the rods' head are the same point.
    head_radius_mm: float = 3.0
    head_height_mm: float = TULIP_CENTRE_HEIGHT_MM
    #: CT cross-check of the mask (a wrong segmentation must not hide a breach): at most
    #: ``max_soft_fraction`` of the screw's surface samples after the entry zone may have a CT
    #: value below ``soft_tissue_hu``. Cerebrospinal fluid is ~0-15 HU and epidural/retroperitoneal
    #: fat -100 to -50 HU, while even osteoporotic cancellous bone stays above ~50 HU (Pickhardt
    #: et al., Ann Intern Med 2013;158:588-595: L1 trabecular HU <= 110 flags osteoporosis).
    soft_tissue_hu: float = 20.0
    max_soft_fraction: float = 0.02
    #: Plausible trajectory angles in the vertebra frame: medial (transverse) angle between these
    #: limits and cranial/caudal angle within +/- max_cranial_angle_deg. Pedicle transverse angles
    #: run from ~5 deg (T12) to ~30 deg (L5) and up to ~40 deg at T1; sagittal angles stay within
    #: ~15 deg of the endplates (Zindrick et al., Spine 1987;12:160-166). The cranial/caudal limit
    #: is that 15 deg: steeper screws head for an endplate, where an automatic label is least
    #: sure (measured: the one B screw planned from spineplan's own labels on the chest CT, L1
    #: right, was 23.5 deg cranial and touched the superior endplate).
    min_medial_angle_deg: float = -5.0
    #: In the lumbar spine and S1 the pedicles converge: Zindrick et al. 1987 measured mean
    #: transverse angles of ~11 deg at L1 rising to ~30 deg at L5 (and S1 ~25 deg), none pointing
    #: laterally. A lumbar or sacral screw aimed less medially than this is not anatomical (it
    #: runs along the lateral pedicle wall into the lateral body cortex, and its head sits
    #: far lateral of the rod line). 5 deg is about half the smallest lumbar mean (L1).
    min_medial_angle_lumbar_deg: float = 5.0
    #: ... and, per lumbar level, no less than this far below the level's mean transverse angle
    #: (:data:`spineplan.plan._search.LEVEL_MEDIAL_DEG`, Zindrick et al. 1987: L4 ~18, L5 ~30
    #: deg). A screw far less convergent than the pedicle enters medially, over the facet joint of
    #: the level above, instead of at the transverse process (measured before these limits: the
    #: abdomen CT's reference-label plan had lumbar screws at -1.9 to -4.6 deg, and an L4 screw
    #: planned from spineplan's own labels at 5 deg crossed the L3 inferior articular process of
    #: the reference labels). 10 deg is an engineering allowance for individual anatomy and the
    #: frame's error, not a published figure.
    lumbar_medial_band_deg: float = 10.0
    #: At every level the medial angle stays at most this far above the level's mean pedicle
    #: transverse angle (:data:`spineplan.plan._search.LEVEL_MEDIAL_DEG`, else the region's
    #: default; Zindrick et al. 1987), and never above ``max_medial_angle_deg``. A screw much more
    #: convergent than its pedicle enters far lateral (through the rib neck or the transverse
    #: process) and crosses the pedicle's wall (measured: a T12 screw at 25 deg, mean ~7 deg,
    #: planned from spineplan's own chest labels breached the reference label by 0.8-1.1 mm).
    #: 15 deg is an engineering allowance, not a published figure; at L5 (mean ~30 deg) the
    #: 45 deg maximum applies.
    max_medial_above_mean_deg: float = 15.0
    max_medial_angle_deg: float = 45.0
    max_cranial_angle_deg: float = 15.0
    #: Preference for the anatomical trajectory: candidates are ranked by purchase discounted by
    #: this fraction per degree between their medial angle and the level's mean pedicle
    #: transverse angle (Zindrick et al. 1987; :data:`spineplan.plan._search.LEVEL_MEDIAL_DEG`).
    #: A screw along the pedicle's own axis converges like the pedicle and enters at the
    #: transverse process, away from the facet joint; 2 % per degree makes a 10 deg deviation
    #: cost as much as a fifth of the purchase (engineering choice; the safety rules are hard
    #: limits regardless).
    off_prior_penalty_per_deg: float = 0.02
    #: ... and by this fraction per degree of cranial/caudal angle in the vertebra frame: lumbar and
    #: thoracic pedicles run nearly parallel to the endplates (sagittal angles within a few degrees,
    #: Zindrick et al. 1987), so the anatomical screw is near 0 deg; a steep screw enters above or
    #: below the pedicle, at the facet joint or the transverse process's edge (measured: an L4
    #: screw at -15 deg planned from spineplan's own abdomen labels entered through the inferior
    #: articular process of L3, which that label holds, and breached the reference label by 1.3 mm).
    #: Same engineering weight as the medial one; the angle limit stays a hard rule.
    off_axis_cranial_penalty_per_deg: float = 0.02
    #: Thicker screw over a slightly denser thinner one: among the admissible screws, a thicker one
    #: is chosen over the best ranked one when its ranked purchase is at most this fraction lower
    #: and its thread engagement (diameter x length) is at least as large. Pullout strength grows
    #: with the screw's diameter and engaged length (thread shear area ~ pi x major diameter x
    #: length: Chapman JR et al., J Biomech Eng 1996;118:391-398; Zindrick MR et al., Clin Orthop
    #: 1986;203:99-112), and surgeons fill the pedicle with the largest screw it takes safely
    #: (Misenhimer et al. 1989). The ranked purchase (mean HU x volume) favours a thin screw along
    #: the dense cortex of the pedicle wall (measured on the abdomen CT's reference labels, L5 left:
    #: 4.0 x 50 mm at 172 HU ranked above 5.0 x 40 mm at 139 HU by 7 %). 10 % = the alignment
    #: trade's bound (engineering choice); 0 switches it off.
    max_purchase_loss_for_diameter: float = 0.10
    #: Depth: among the admissible screws, those whose tip reaches at least this fraction of the
    #: vertebral body's AP depth (from its posterior wall, in the vertebra frame) are preferred; a
    #: shorter one is placed only when no deeper screw obeys the rules, with a warning. Pullout and
    #: bending strength rise with insertion depth (Krag MH et al., "Depth of insertion of
    #: transpedicular vertebral screws into human vertebrae: effect upon screw-vertebra interface
    #: strength", J Spinal Disord 1988;1:287-294: 80 % depth stronger than 50 %); a screw ending in
    #: the posterior half of the body holds little more than the pedicle. 0 switches it off.
    min_body_depth_fraction: float = 0.5
    # ------------------------------------------------------------------ percutaneous corridor
    #: Skin = body surface in the CT: the outermost point along the trajectory with HU above
    #: this value (fat is about -100 HU, air -1000 HU).
    skin_hu: float = -300.0
    #: The trajectory extended back from the entry to the skin must not cross bone: no point
    #: with HU above this (cortical bone > 400 HU, muscle 40-60 HU; iliac crest at L5/S1,
    #: neighbouring transverse processes, ribs) and no other vertebra's label.
    corridor_bone_hu: float = 300.0
    #: The corridor bone check starts this far behind the entry (partial volume of the entry cortex).
    corridor_start_mm: float = 3.0
    #: Docking zone: within this distance behind the entry, the outline of the screw (head and
    #: driver; not its axis) may graze the vertebra's own posterior elements. The entry sits in the
    #: notch between the transverse process and the lateral border of the superior articular
    #: process (Weinstein et al. 1988), where the percutaneous needle docks and the tulip seats
    #: against bone (Foley et al. 2001); the tulip stands ~10-15 mm proud of the entry (see
    #: ``head_height_mm``). Beyond it, any bone counts.
    dock_zone_mm: float = 15.0
    #: Skin entry at most this far from the midline (the vertebra's mid-sagittal plane). Foley et
    #: al. 2001 place paramedian incisions ~4-5 cm from the midline in typical patients; the
    #: default allows deep soft tissue. Configure per patient and implant system.
    max_skin_offset_mm: float = 80.0
    #: How far behind the entry the skin is searched for (mm).
    max_skin_depth_mm: float = 200.0
    # ------------------------------------------------------------------ rod alignment trade
    #: Across levels on one side, a screw may give up at most this fraction of its ranked purchase
    #: (purchase discounted for off-anatomical angles, the value candidates are ordered by) to
    #: bring its head nearer the smooth rod line through the other heads - only where a head lies
    #: farther from that line than a polyaxial tulip takes up (``max_head_offset_mm``): the trade
    #: reduces the summed offset beyond that tolerance, never the offsets within it (a thinner-held
    #: or steeper screw is kept for the life of the fixation, while a head 1-2 mm off the line costs
    #: the surgeon nothing). Measured on the chest CT's own labels (session 9): without the
    #: tolerance the left rod's trade (summed offset 11.3 -> 9.1 mm, every head within 3.8 mm) turned
    #: T11 left from its best ranked 5 x 35 mm at 2.5 deg cranial (grade A against the reference
    #: labels, 0.5 mm margin) to 15 deg cranial (grade B, 0.03 mm lateral).
    max_purchase_loss_for_alignment: float = 0.10
    #: The rod seats in the screw head this far behind the entry point along the screw axis
    #: (typical polyaxial tulips; the rod-alignment offsets are measured at this point). Same
    #: constant as the rods (:data:`spineplan.plan.rods.TULIP_CENTRE_HEIGHT_MM`).
    rod_seat_mm: float = TULIP_CENTRE_HEIGHT_MM
    #: ... and only when that gains at least this much alignment (mm, summed offset beyond
    #: ``max_head_offset_mm``).
    min_alignment_gain_mm: float = 1.0
    #: A head farther than this from the smooth rod line is reported as a rod-alignment warning,
    #: and only offsets beyond it are traded purchase for. Percutaneous rods tolerate a few mm of
    #: offset in polyaxial tulips: the tulip swivels about 25-30 deg on the screw's head (typical
    #: polyaxial systems); 20 deg of it is used, so the head does not sit at its limit, which at
    #: the rod seat 12 mm above the entry (``rod_seat_mm``) moves the rod slot 4.1 mm sideways. Same
    #: constant as the rods' head-offset warning (:data:`spineplan.plan.rods.MAX_HEAD_OFFSET_MM`).
    max_head_offset_mm: float = MAX_HEAD_OFFSET_MM
    # ------------------------------------------------------------------ search (not clinical)
    #: Candidate axes pass through a grid of points around the pedicle isthmus centre
    #: (half-width and step, mm) with directions in a cone around the pedicle axis (half-angle
    #: and step, degrees).
    search_halfwidth_mm: float = 3.0
    search_step_mm: float = 1.0
    search_cone_deg: float = 15.0
    search_angle_step_deg: float = 2.5
    #: Step of the distance-field profile along each candidate axis (mm).
    profile_step_mm: float = 0.5
    #: Candidates kept for the rod-alignment trade per pedicle.
    keep_candidates: int = 12

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or value != value:
                raise PlanningError(f"Planner setting {name} must be a number, got {value!r}.")
        if self.margin_mm < 0:
            raise PlanningError(f"Planner setting margin_mm must be >= 0 mm, got {self.margin_mm}.")
        if self.body_margin_mm <= 0:
            raise PlanningError(f"Planner setting body_margin_mm must be > 0 mm (the body cortex must never be "
                                f"breached), got {self.body_margin_mm}.")
        if not 0 < self.max_diameter_fraction <= 1:
            raise PlanningError("Planner setting max_diameter_fraction must be in (0, 1], "
                                f"got {self.max_diameter_fraction}.")
        if not 0 <= self.max_purchase_loss_for_diameter < 1:
            raise PlanningError("Planner setting max_purchase_loss_for_diameter must be in [0, 1), "
                                f"got {self.max_purchase_loss_for_diameter}.")
        if not 0 <= self.min_body_depth_fraction < 1:
            raise PlanningError("Planner setting min_body_depth_fraction must be in [0, 1), "
                                f"got {self.min_body_depth_fraction}.")
        if not 0 <= self.max_purchase_loss_for_alignment < 1:
            raise PlanningError("Planner setting max_purchase_loss_for_alignment must be in [0, 1), "
                                f"got {self.max_purchase_loss_for_alignment}.")
        for name in ("search_step_mm", "search_angle_step_deg", "profile_step_mm"):
            if getattr(self, name) <= 0:
                raise PlanningError(f"Planner setting {name} must be positive.")

    @property
    def body_margin(self) -> float:
        """Margin required in the vertebral body: ``body_margin_mm``, never more than ``margin_mm``."""
        return min(self.body_margin_mm, self.margin_mm)

    def to_dict(self) -> dict:
        return asdict(self)
