"""One label per vertebra: marker-based watershed inside the spine's bone.

Markers: the core of each body between two disc centres (one marker per vertebra) and, as a
competing "other bone" marker, bone far lateral of the column (ribs, ilium), well anterior of
the bodies (contrast-filled aorta, sternum) or far behind the spinous processes. The flooding
relief is the negated, lightly smoothed HU, so fronts meet in the dark gaps between bones:
discs, facet and costovertebral joints, the sacro-iliac joints. Posterior elements reach
their own body through the pedicles, which are brighter than the facet-joint gaps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spineplan.anatomy._discs import Curve

#: Bone farther than this from the body curve, left or right (mm), seeds "other bone": the
#: transverse processes reach ~40-50 mm from the midline at L3 (the widest; Panjabi et al.,
#: Spine 1992), ribs leave the costotransverse joints at ~30-40 mm and run laterally.
OTHER_LATERAL_MM = 58.0
#: ... or more than this anterior of the body curve (mm): a body's front is 12-22 mm anterior
#: of its centre, the aorta and sternum lie beyond.
OTHER_ANTERIOR_MM = 28.0
#: ... or in front of the body by more than ANTERIOR_MARGIN_MM (mm), the body's anterior cortex
#: lying DEPTH_PER_WIDTH x its half width in front of the curve (vertebral body depth / width
#: 0.75-0.9 from T1 to L5; Panjabi et al., Spine 1991, 1992): a 28 mm limit left the
#: contrast-filled aorta touching the mid-thoracic bodies of the example chest CT to them.
#: With 6 mm the front of an osteoporotic body (1.5 mm L1-L5 phantom, seed 339: L3's anterior
#: cortex 25.4 mm in front of the curve, the limit 26.0) had the limit's seeds in its partial-
#: volume rim and lost 0.18 of its front quarter to them; 7 mm: 1.00 kept, the chest CT's
#: Dice unchanged (T7 -0.001), abdomen unchanged, L3 crop 0.855 -> 0.854.
DEPTH_PER_WIDTH = 0.85
ANTERIOR_MARGIN_MM = 7.0
#: ... or more than this posterior of it (mm): spinous-process tips lie 60-90 mm behind the
#: body centre (thoracic processes slope caudally, lumbar ones are longer).
OTHER_POSTERIOR_MM = 105.0
#: Radius (mm) of a body's seed around the curve: inside the body of every vertebra from C3
#: (C3-C7 bodies are ~15 mm deep, so this also reaches their cortex) to L5.
BODY_SEED_RADIUS_MM = 11.0
#: Half-width (mm) of the seed of the most caudal segment below the curve (sacral body and the
#: medial alae; the sacral base is 95-120 mm wide, the rest of the alae fills from the seed).
#: Behind the alae the posterior ilium comes within 36-40 mm of the midline (TotalSegmentator
#: reference labels of the example abdomen CT): a 40 mm seed reached into it (the S1 label held
#: 9 mL of right ilium even with the ILIUM_* seed; 35 mm: 5 mL; 30 mm: 2 mL, but then a 1 mm
#: T12-S1 phantom's sacrum lost the ilium contacts naming.py looks for, and 22 mm left the sacral
#: base to L5, L5 Dice 0.854 -> 0.839).
SACRUM_SEED_HALF_WIDTH_MM = 35.0
#: The pedicles leave the cranial half of their body (fractions of the disc-to-disc span from
#: the caudal disc), but the seed is kept below the body's upper third: the inferior articular
#: processes of the vertebra above reach down to the level of this body's pedicles (measured on
#: the TotalSegmentator reference labels of the example chest CT: (0.5, 0.85) put the T1-T10
#: arches one level too high, mean Dice 0.60; (0.3, 0.65) with LAMINA_LEVEL below: 0.68;
#: tuned on that one CT, so it may be over-fitted) ...
PEDICLE_LEVEL = (0.3, 0.65)
#: In the thoracic spine (segments in ``rib_labels``) the seed starts higher: the superior
#: articular processes of the vertebra below rise behind the foramen into the seed's box (coronal
#: facets, directly in front of this vertebra's inferior articular processes). On the
#: TotalSegmentator reference labels of the example chest CT, in our frame, they reach 0.30-0.36
#: of the span above the caudal disc at T11-L1 (99th percentile; 0.06-0.33 at T1-T10), and
#: from 0.3 the seeds of T11, T12 and L1 sat on the next one's SAP tips (the flood then gave
#: T12's right SAP and transverse process to T11). The box from 0.4 holds 0.99-1.00 of the
#: vertebra's own bone at T1-T12 (0.95-0.97 at T6, T11, T12 from 0.3); chest Dice mean
#: 0.823 -> 0.826 (T6 +0.026, T12 +0.011; T4 -0.008), its reference T12 in our T11 0.059 ->
#: 0.046 of T12's volume; the demo phantom's (T11-S1, 1 mm) L1 voxels in our T12 1627 -> 1080,
#: abdomen CT 6 voxels changed (T12 -> L1). Lumbar SAPs lie behind and lateral of
#: the box (abdomen CT: none of them in it), and from 0.4 the 3 mm abdomen's L5 lost its
#: left pedicle seed to the lordotic tilt (L5 Dice 0.872 -> 0.831): lumbar levels keep 0.3.
PEDICLE_LEVEL_THORACIC_FROM = 0.4
#: ... lateral of the canal (mm from the midline; canal half-width 7-12 mm, pedicles 5-10 mm
#: wide) and between the back of the body and the canal's centre (mm behind the body centre).
PEDICLE_LAT_MM = (8.0, 24.0)
PEDICLE_POST_MM = (8.0, 28.0)
#: The laminae meet in the midline behind the canal (mm behind the body centre), where the
#: spinous process starts; only a narrow midline strip is seeded so the facet joints
#: (15-25 mm lateral) stay free.
LAMINA_HALF_WIDTH_MM = 5.0
LAMINA_POST_MM = (32.0, 48.0)
#: Level of the lamina seed (fractions of the span from the caudal disc): the laminae slope
#: caudally from the pedicles, down to the disc below in the thoracic spine (the spinous
#: processes overlap the next vertebra; Panjabi et al., Spine 1991). The seed starts at the
#: caudal disc: the lumbar laminae, from which the inferior articular processes hang, reach the
#: disc's level (at 0.1 the abdomen CT's reference T12 posterior elements below its body were
#: 0.63 in our T12 / 0.31 in our L1, at 0.0 0.80 / 0.14; abdomen Dice 0.903 -> 0.904; chest
#: mean unchanged, T11/T12 -0.001/-0.002; L3 crop 0.854 -> 0.855; -0.08 took L1's spinous top).
LAMINA_LEVEL = (0.0, 0.5)
#: Fraction of a vertebra's disc-to-disc span (at each end) left out of its seed: a disc is
#: 0.15-0.3 of the span (lumbar 8-14 mm of 35-50 mm; Pooni et al., Spine 1986), so the seed
#: stops at about the endplate. 0.25 left the sacral base to L5 (abdomen L5 Dice 0.79 -> 0.84
#: with 0.15; chest unchanged).
SEED_MARGIN = 0.15
#: In the thoracic spine the transverse processes end 25-32 mm from the body curve (T3-T12 on
#: the TotalSegmentator reference labels of the example chest CT, 99.5th percentile; 28-35 mm
#: half-spans, Panjabi et al., Spine 1991) and the ribs run on laterally from the costotransverse
#: joints: bone beyond this distance of a thoracic vertebra seeds "other bone", so the rib
#: necks and heads are contested up to their joints with the vertebra.
RIB_SEED_LAT_MM = 34.0
#: Rib heads and necks: behind the body centre, lateral of the body's posterior corners and the
#: pedicle roots and in front of the transverse processes (mm; on the reference labels of the
#: example chest CT, T3-T10, bone at 5-18 mm behind the body centre and > 16 mm from the midline
#: is mostly rib, which the reference leaves out of the vertebra).
RIB_HEAD_LAT_MM = 17.0
RIB_HEAD_POST_MM = (5.0, 17.0)
#: ... and at least this far (mm) beyond the half body width measured along the curve.
RIB_HEAD_MARGIN_MM = 1.0
#: How far (mm) the inferior articular processes and the spinous process reach below their
#: vertebra's caudal disc (lumbar facet joints are 15-20 mm high and centred near the disc,
#: Panjabi et al., Spine 1993; on the L3 crop's VerSe reference the L3 arch ends ~15 mm below
#: it; 25 mm cost the abdomen's L5 0.005 Dice).
IAP_DROP_MM = 15.0
#: Thoracic laminae and spinous processes slope caudally: on the TotalSegmentator reference
#: labels of the example chest CT (T1-T12), the boundary between a vertebra's midline posterior
#: bone and the next one's lies at its caudal disc up to ~25 mm behind the body centre and
#: ~0.8 mm lower per mm further back (-8 to -12 mm at 30-40 mm, -15 to -25 mm at 40-55 mm;
#: the spinous processes of T5-T8 reach the level of the body below; Panjabi et al., Spine
#: 1991). The midline seed of a thoracic vertebra follows that slope between these distances
#: (mm behind the body centre) and levels (fractions of its span above the sloped boundary).
SPINOUS_POST_MM = (25.0, 60.0)
SPINOUS_SLOPE = 0.8
SPINOUS_LEVEL = (0.3, 0.7)
#: The posterior ilium (iliac tuberosity, posterior superior iliac spine) lies behind and
#: lateral of the sacral ala: the sacro-iliac joint runs obliquely in axial sections, its
#: anterior end lateral of its posterior end, at 30-45 deg to the sagittal plane (on the
#: TotalSegmentator reference labels of the example abdomen CT, S1-S3: from ~57 mm lateral /
#: 15 mm behind the S1 body centre to ~39 mm / 39 mm; Vleeming et al., J Anat 2012). The
#: "other bone" seed starts far lateral (OTHER_LATERAL_MM), so the sacrum's flood crossed the
#: joint, which is not dark at 3 mm voxels, and took the ilium (a third of the S1 label of that
#: CT was ilium). So, beside the most caudal segment, bone beyond the line ILIUM_DIR . (|lat|, post) =
#: ILIUM_OBLIQUE_MM seeds "other bone": on that CT the sacrum reaches 74 mm along ILIUM_DIR
#: (99th percentile 71), the ilium behind the joint 46-87 mm; on the phantoms the sacrum <= 55.
ILIUM_DIR = (0.8, 0.6)
ILIUM_OBLIQUE_MM = 72.0
#: Label used for the "other bone" marker.
OTHER = 255


@dataclass
class Segment:
    """One vertebra candidate along the curve."""

    s0: float  # arc length of its cranial boundary (disc centre or the curve's start), mm
    s1: float  # caudal boundary
    partial_top: bool = False  # bounded by the scan / curve end rather than a disc
    partial_bottom: bool = False
    label: int = 0  # provisional label in the instance map (1..n, cranial -> caudal)
    info: dict = field(default_factory=dict)


def segments_from_discs(curve: Curve, discs: np.ndarray) -> list[Segment]:
    """Segments between consecutive discs, cranial first (the curve runs caudal -> cranial)."""
    s = curve.s
    cuts = [float(s[i]) for i in discs]
    bounds = [float(s[0])] + cuts + [float(s[-1])]
    segs = []
    for n in range(len(bounds) - 1):
        a, b = bounds[n], bounds[n + 1]
        if b - a < 4.0:
            continue
        segs.append(Segment(a, b, partial_bottom=(n == 0), partial_top=(n == len(bounds) - 2)))
    segs.reverse()  # cranial first
    for n, sg in enumerate(segs, start=1):
        sg.label = n
    return segs


def watershed_instances(hu: np.ndarray, bone: np.ndarray, coords: dict, segs: list[Segment],
                        spacing, rib_labels=(), rib_head_labels=(), sloped_labels=()) -> np.ndarray:
    """Instance labels (0, 1..n for ``segs``, ``OTHER``) on the box ``hu``/``bone`` arrays.

    ``coords`` holds per-voxel (s, lat, post) arrays for the bone voxels (flat, matching
    ``np.nonzero(bone)``), optionally "half_width" (of the body at the voxel's curve sample) and
    "beyond_end" (True below the curve's caudal end). Segments whose label is in ``rib_labels`` (thoracic, once named) get
    "other bone" markers on their ribs from ``RIB_SEED_LAT_MM`` outwards and their pedicle seed
    from ``PEDICLE_LEVEL_THORACIC_FROM``, those in
    ``rib_head_labels`` also on their rib heads (``RIB_HEAD_*``); those in ``sloped_labels`` get
    midline seeds that follow the caudal slope of their spinous processes (``SPINOUS_*``).
    """
    markers = np.zeros(hu.shape, np.int32)
    nz = np.nonzero(bone)
    s, lat, post = coords["s"], coords["lat"], coords["post"]
    rad = np.hypot(lat, post)
    mk = np.zeros(len(s), np.int32)
    # a segment cut by the scan's end is shorter than its vertebra: its pedicle and lamina levels
    # are placed from its one disc with the span of a whole neighbour (else they crowd that disc
    # and take the articular processes of the vertebra next to it)
    whole = [sg.s1 - sg.s0 for sg in segs if not (sg.partial_top or sg.partial_bottom)]
    h_whole = float(np.median(whole)) if whole else 0.0
    for sg in segs:
        h = sg.s1 - sg.s0
        if (sg.partial_top or sg.partial_bottom) and not (sg.partial_top and sg.partial_bottom):
            base = sg.s1 - max(h, h_whole) if sg.partial_bottom else sg.s0
            h_lev = max(h, h_whole)
        else:
            base, h_lev = sg.s0, h
        a = sg.s0 + SEED_MARGIN * h if not sg.partial_bottom else -np.inf
        b = sg.s1 - SEED_MARGIN * h if not sg.partial_top else np.inf
        r = BODY_SEED_RADIUS_MM
        if sg.partial_bottom:
            # the caudal end of the curve: usually the sacrum, which continues below the curve
            below = (s < sg.s1 - SEED_MARGIN * h) & (np.abs(lat) < SACRUM_SEED_HALF_WIDTH_MM) & (post < 40.0)
            # ... but not the inferior articular processes and the laminae of the vertebra above,
            # which hang behind the canal down to ~IAP_DROP_MM below its caudal disc
            below &= (post < PEDICLE_POST_MM[1]) | (s < sg.s1 - IAP_DROP_MM)
            mk[below] = sg.label
        sel = (s > a) & (s < b) & (rad < r)
        # the neural arch at the level of the pedicles (cranial half of the body) belongs to
        # this vertebra too: pedicles and the midline of the laminae
        ped_from = PEDICLE_LEVEL_THORACIC_FROM if sg.label in rib_labels else PEDICLE_LEVEL[0]
        pa = base + ped_from * h_lev if not sg.partial_bottom else -np.inf
        pb = base + PEDICLE_LEVEL[1] * h_lev if not sg.partial_top else np.inf
        lev = (s > pa) & (s < pb)
        ped = lev & (np.abs(lat) > PEDICLE_LAT_MM[0]) & (np.abs(lat) < PEDICLE_LAT_MM[1]) & \
            (post > PEDICLE_POST_MM[0]) & (post < PEDICLE_POST_MM[1])
        la = base + LAMINA_LEVEL[0] * h_lev if not sg.partial_bottom else -np.inf
        lb = base + LAMINA_LEVEL[1] * h_lev if not sg.partial_top else np.inf
        lam = (s > la) & (s < lb) & (np.abs(lat) < LAMINA_HALF_WIDTH_MM) & (post > LAMINA_POST_MM[0]) & (post < LAMINA_POST_MM[1])
        if sg.label in sloped_labels:
            # thoracic: the laminae and the spinous process slope caudally behind the canal
            drop = SPINOUS_SLOPE * np.clip(post - SPINOUS_POST_MM[0], 0.0, None)
            lo_ = base + SPINOUS_LEVEL[0] * h_lev - drop if not sg.partial_bottom else -np.inf
            hi_ = base + SPINOUS_LEVEL[1] * h_lev - drop if not sg.partial_top else np.inf
            lam = (s > lo_) & (s < hi_) & (np.abs(lat) < LAMINA_HALF_WIDTH_MM) & \
                (post > SPINOUS_POST_MM[0]) & (post < SPINOUS_POST_MM[1])
        mk[sel | ped | lam] = sg.label
    other = (np.abs(lat) > OTHER_LATERAL_MM) | (post < -OTHER_ANTERIOR_MM) | (post > OTHER_POSTERIOR_MM)
    low = [sg for sg in segs if sg.partial_bottom and not sg.partial_top]
    if low:
        # the posterior ilium beside the sacrum (or, if the scan ends higher, ribs or nothing:
        # lumbar transverse processes reach ~60 mm along ILIUM_DIR), below the articular
        # processes of the vertebra above, and not below the curve's end: there the frame is
        # extrapolated and the lower sacrum, curving backwards, would look like ilium
        il = (s < low[0].s1 - IAP_DROP_MM) & (ILIUM_DIR[0] * np.abs(lat) + ILIUM_DIR[1] * post > ILIUM_OBLIQUE_MM)
        if "beyond_end" in coords:
            il &= ~coords["beyond_end"]
        other |= il
    if "half_width" in coords:
        # in front of the body's anterior cortex, scaled by its width (the contrast-filled aorta
        # lies against the front of the smaller thoracic bodies)
        other |= post < -(DEPTH_PER_WIDTH * coords["half_width"] + ANTERIOR_MARGIN_MM)
    for sg in segs:
        if sg.label in rib_labels:
            lev = (s > sg.s0) & (s < sg.s1)
            other |= lev & (np.abs(lat) > RIB_SEED_LAT_MM)
        if sg.label in rib_head_labels:
            # the rib heads beside the back of the body, in front of the transverse processes
            lat_min = RIB_HEAD_LAT_MM
            if "half_width" in coords:  # wider lower thoracic bodies: the heads lie further out
                lat_min = np.maximum(RIB_HEAD_LAT_MM, coords["half_width"] + RIB_HEAD_MARGIN_MM)
            other |= lev & (np.abs(lat) > lat_min) & (post > RIB_HEAD_POST_MM[0]) & (post < RIB_HEAD_POST_MM[1])
    mk[other] = OTHER
    markers[nz] = mk
    return geodesic_labels(hu, bone, markers, spacing)


#: Bone brighter than this (HU) is travelled at unit cost; darker voxels (partial-volume joint
#: gaps, marrow) cost up to ``1 + GAP_COST`` per mm, so labels meet in the joints. Only dense
#: cortex (800-1500 HU at 0.5-3 mm voxels) is cheap: at 450 HU the partial-volume facet and
#: costovertebral gaps at 2.5-3 mm slices were nearly free (reference-label Dice, mean over
#: the levels: abdomen 0.829 -> 0.854, chest 0.681 -> 0.689 with 850).
BRIGHT_HU = 850.0
GAP_COST = 12.0


def geodesic_labels(hu: np.ndarray, mask: np.ndarray, markers: np.ndarray, spacing, lo_hu: float | None = None) -> np.ndarray:
    """Each mask voxel takes the marker with the cheapest path to it through the mask.

    Path cost is the sum over steps of step length x the mean of (1 + GAP_COST x darkness^2)
    at both ends, darkness being 0 at ``BRIGHT_HU`` and 1 at ``lo_hu`` (default: the darkest
    masked voxel). Dijkstra over the 26-neighbourhood (numba).
    """
    h = hu.astype(np.float32)
    if lo_hu is None:
        lo_hu = float(np.percentile(h[mask], 1)) if mask.any() else 0.0
    dark = np.clip((BRIGHT_HU - h) / max(BRIGHT_HU - lo_hu, 1.0), 0.0, 1.0)
    cost = (1.0 + GAP_COST * dark**2).astype(np.float64)
    lab = np.where(mask, markers, 0).astype(np.int32)
    if not (lab > 0).any():
        return np.zeros(hu.shape, np.int32)
    offs = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)],
                    dtype=np.int64)
    steps = np.sqrt(((offs * np.asarray(spacing, dtype=np.float64)) ** 2).sum(axis=1))
    out = _dijkstra(np.ascontiguousarray(cost), np.ascontiguousarray(mask), np.ascontiguousarray(lab), offs, steps)
    return out


def _dijkstra(cost, mask, lab, offs, steps):
    from spineplan.anatomy._numba import dijkstra_labels

    return dijkstra_labels(cost, mask, lab, offs, steps)



#: The cut between two bodies follows the fitted disc plane (``_discs.fit_disc_planes``) in the
#: body column (within the body's half width of the curve left and right, in front of its
#: posterior wall, DEPTH_PER_WIDTH x the half width behind the curve) and up to this fraction
#: of each neighbour's disc-to-disc span from the plane. The posterior elements keep their
#: flooding: their level is set by the pedicles and the facet joints, not by the disc.
PLANE_CUT_REACH = 0.5


def cut_at_disc_planes(inst: np.ndarray, nz, xyz: np.ndarray, segs: list[Segment], curve: Curve,
                       discs: np.ndarray, planes: np.ndarray, half_width: np.ndarray) -> None:
    """In place on ``inst`` (instance labels of the box): bone voxels ``nz`` (indices, with LPS
    points ``xyz``) of the body column labelled with one of the two vertebrae next to a disc
    take the upper one's label above that disc's fitted plane and the lower one's below it."""
    cur = inst[nz]
    by_s0 = {round(sg.s0, 6): sg for sg in segs}
    by_s1 = {round(sg.s1, 6): sg for sg in segs}
    for di, (c, a, b) in zip(np.asarray(discs, dtype=int), planes):
        sd = round(float(curve.s[di]), 6)
        up, lo = by_s0.get(sd), by_s1.get(sd)  # s grows cranially: the upper vertebra starts at the disc
        if up is None or lo is None or (a == 0.0 and b == 0.0 and c == 0.0):
            continue
        sel = np.nonzero((cur == up.label) | (cur == lo.label))[0]
        if not len(sel):
            continue
        d = xyz[sel] - curve.points[di]
        t = d @ curve.tangent[di]
        lat = d @ curve.lateral[di]
        post = d @ curve.posterior[di]
        hw = float(half_width[di])
        off = t - (c + a * lat + b * post)
        near = (off < PLANE_CUT_REACH * (up.s1 - up.s0)) & (off > -PLANE_CUT_REACH * (lo.s1 - lo.s0))
        col = near & (np.abs(lat) < hw) & (post < DEPTH_PER_WIDTH * hw)
        cur[sel[col]] = np.where(off[col] > 0, up.label, lo.label)
    inst[nz] = cur
