"""Vertebra segmentation and level naming: the public entry point.

:func:`segment_spine` turns a CT into a VerSe label map (one label per vertebra, posterior
elements included) with names, a naming confidence and warnings. The built-in backend uses
classical image analysis and needs no model weights:

1. bone and body masks on an L,P,S-aligned working copy (``_bone``);
2. the body centreline by dynamic programming over axial slices and the canal tracked behind
   it (``_canal``);
3. discs as minima of the core-HU profile along the curve (``_discs``);
4. one label per vertebra by marker-based watershed with ribs / ilium / vessels as competing
   markers, refined at full resolution (``_instances``);
5. names from the sacrum and the last rib-bearing vertebra, cross-checked (``naming``).

``backend="totalsegmentator"`` runs the TotalSegmentator command line instead (when the user
has installed it with its weights) and reads its output.

Research software for planning support, not a certified medical device: a person must confirm
the vertebral levels before any use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spineplan.errors import InputError, MissingDependencyError, NoVertebraeError, SpinePlanError
from spineplan.volume import Volume

#: Minimum length (mm) of bone column along the path before we call it a spine: two lumbar
#: vertebrae or three thoracic ones.
MIN_SPINE_MM = 40.0
#: Inscribed bone radius (mm) on the path that counts as "inside a vertebral body / sacrum".
MIN_BODY_THICKNESS_MM = 5.0
#: In-plane spacing (mm) of the coarse copy on which the body path is searched.
PATH_GRID_MM = 3.0
#: Gap (mm) along z bridged when following bone along the path (lumbar discs are 8-14 mm high).
DISC_BRIDGE_MM = 18.0
#: Enclosed marrow-dense voxels (``_bone.enclosed_marrow``) beyond this share of the filled bone
#: on the path grid mean the bodies' cortical shells are broken: where the shells hold, discs,
#: the pelvic cavity and soft tissue between ribs make 0.27-0.36 of it (chest and abdomen
#: example CTs); the osteoporotic, noisy 1.5 mm L3 crop, whose bodies stay hollow, 0.78.
BROKEN_SHELL_RATIO = 0.5
#: Fraction of the path's slices in which an enclosed canal must be found behind the body.
MIN_CANAL_FRACTION = 0.3


@dataclass
class Segmentation:
    """Result of :func:`segment_spine`."""

    labels: Volume  # VerSe codes (uint8) on the CT grid: each vertebra incl. posterior elements
    names: list[str]  # cranial -> caudal
    confidence: float  # 0..1 for the naming
    method: str  # e.g. "sacrum-count+last-rib cross-checked"
    warnings: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


def segment_spine(ct: Volume, *, anchor: str | None = None, backend: str = "builtin") -> Segmentation:
    """Find, label and name every vertebra of ``ct``.

    ``anchor`` fixes one name, e.g. ``"L3@z=-210.5"`` (the vertebra at LPS z = -210.5 mm) or
    ``"L3@120,80,40"`` (the vertebra at voxel i, j, k); the other names follow from it.
    ``backend`` is ``"builtin"`` (no model weights) or ``"totalsegmentator"``.
    """
    if backend == "builtin":
        return _segment_builtin(ct, anchor=anchor)
    if backend == "totalsegmentator":
        return _segment_totalsegmentator(ct, anchor=anchor)
    raise InputError(f"Unknown segmentation backend {backend!r}; use 'builtin' or 'totalsegmentator'.")


# --------------------------------------------------------------------------------------- builtin
def _check_ct(ct: Volume) -> None:
    if str(ct.modality).upper() in ("MR", "MRI"):
        raise NoVertebraeError(
            f"no vertebrae found: {ct.meta.get('source', 'the image')} is an MR image; the built-in "
            "segmentation needs a CT in Hounsfield units. Give a CT, or a label map with --labels."
        )
    arr = np.asarray(ct.array)
    lo = float(np.percentile(arr[:: max(1, arr.shape[0] // 32), :: max(1, arr.shape[1] // 32), :], 1))
    if lo > -200 and float(arr.min()) >= 0:
        raise NoVertebraeError(
            "no vertebrae found: the image has no values below 0, so it is not a CT in Hounsfield "
            "units (an MR or a rescaled image?). Give a CT in HU, or a label map with --labels."
        )


def _segment_builtin(ct: Volume, anchor: str | None) -> Segmentation:
    from scipy.ndimage import map_coordinates

    from spineplan._progress import progress
    from spineplan.anatomy import _bone, _canal, _discs, _instances, naming

    _check_ct(ct)
    steps = iter(progress(range(6), "segmenting the spine", total=6))
    next(steps, None)
    grid, full = _bone.make_work_grid(ct)
    hu = grid.array
    sp = grid.spacing
    # the body path is searched on a coarse copy (~PATH_GRID_MM in-plane), then refined
    cf = tuple(max(1, int(PATH_GRID_MM / sp[a] + 1e-6)) if a < 2 else 1 for a in range(3))
    hc = _bone.block_mean(hu, cf)
    spc = sp * np.array(cf)
    body = _bone.body_mask(hc)
    fb = _bone.filled_bone(hc, spc, _canal.PATH_BONE_HU)
    # fatty marrow behind broken cortical shells (osteoporotic, noisy thin-slice CT): if the
    # marrow-dense voxels enclosed by bone on all sides are a large share of the bone, the shells
    # did not hold and that marrow is bone too (else the path can run through the neural arch)
    enc = _bone.enclosed_marrow(hc, spc, fb, _canal.PATH_BONE_HU)
    broken_shells = bool(enc.sum() > BROKEN_SHELL_RATIO * fb.sum())
    if broken_shells:
        fb |= enc
    path_c, thick_at, canal_at = _canal.body_path(hc, spc, body, fb)
    path = path_c * np.array(cf[:2]) + (np.array(cf[:2]) - 1) / 2.0
    next(steps, None)

    # the spine's extent: the longest run of slices whose path point lies in thick bone
    from scipy.ndimage import maximum_filter1d

    # discs (up to ~15 mm) interrupt the bone along the path: bridge them
    good = maximum_filter1d(thick_at, size=max(3, int(round(DISC_BRIDGE_MM / sp[2]))) | 1) >= MIN_BODY_THICKNESS_MM
    k0, k1 = _longest_run(good)
    if (k1 - k0) * sp[2] < MIN_SPINE_MM:
        raise NoVertebraeError(
            "no vertebrae found: no column of vertebral bodies could be followed through the CT "
            f"({ct.meta.get('source', 'input')}). Check that the scan covers the spine, or give a "
            "label map with --labels."
        )
    sm = path.copy()
    sm[k0:k1] = _canal.smooth_path(path[k0:k1], sp[2])
    canal = _canal.track_canal(hu, sp, sm, (k0, k1))
    frac = np.isfinite(canal[k0:k1, 0]).mean()
    if frac < MIN_CANAL_FRACTION:
        raise NoVertebraeError(
            "no vertebrae found: there is bone, but no spinal canal behind it "
            f"(canal seen in {100 * frac:.0f}% of the slices). The CT does not seem to show a spine; "
            "give a label map with --labels if it does."
        )
    if _bone.noise_hu(hu) > _bone.NOISE_MAX_HU:
        # a noisy CT: dark speckles make the raw track jump; outliers dropped, gaps interpolated
        # (L3 crop Dice 0.737 -> 0.748; on routine CTs it changed a six-lumbar phantom's naming)
        canal = _canal.clean_track(canal, sp, (k0, k1))
    ks = np.arange(k0, k1)
    body_pts = grid.to_world(np.column_stack([sm[ks], ks]))
    canal_pts = grid.to_world(np.column_stack([canal[ks], ks]))
    curve = _discs.build_curve(body_pts, canal_pts)

    def sample(xyz):
        idx = grid.to_index(xyz).T
        return map_coordinates(hu, idx, order=1, mode="nearest")

    profile = _discs.core_profile(sample, curve)
    width = _discs.body_width(sample, curve)
    ring = _discs.core_profile(sample, curve, _discs.RING_MM[1], _discs.RING_MM[0])
    shell = _discs.shell_profile(sample, curve)
    discs = _discs.find_discs(profile, width, ring=ring, slice_mm=float(sp[2]), shell=shell)
    curve = _discs.resmooth_tangent(curve, discs)
    next(steps, None)

    segs = _drop_bodyless_ends(_instances.segments_from_discs(curve, discs), curve, profile, shell)
    if not segs:
        raise NoVertebraeError("no vertebrae found: no vertebral bodies could be separated along the spine.")
    bone_thr = _bone.adaptive_bone_threshold(hc, body, curve, profile, discs, grid)
    box = _box_around(curve, grid)
    hub = hu[box]
    # the canal's hole stays open (epidural veins and partial volume can lift its mean above
    # the marrow level in contrast CTs, and it was filled as bone)
    canal_idx = np.column_stack([canal[ks], ks])
    canal_idx = canal_idx[np.all(np.isfinite(canal_idx), axis=1)]
    canal_work = np.round(canal_idx).astype(int)
    off = np.array([b.start for b in box])
    # a noisy CT (thin slices, low dose) is thresholded smoothed: noise speckles above the bone
    # threshold would otherwise chain into the vertebrae
    # (disc tissue between close bone plates is no marrow: left out of that fill)
    hub_d = _bone.denoised(hub)
    noisy = hub_d is not hub
    boneb = _bone.filled_bone(hub_d, sp, bone_thr, keep_open=_point_mask(hub.shape, canal_work - off),
                              enclosed=broken_shells, plate_gap=True, concave_open=True)
    if noisy:
        # the smoothing spreads the cortex outwards by about a voxel: on the mask's outer layer
        # (in-plane) only voxels that are cortex-bright in the unsmoothed CT stay (as at
        # sub-millimetre voxels, RIM_HU): L3 crop Dice 0.751 -> 0.77
        # (holes inside stay as they are: the layer around them is marrow, however dark)
        from scipy.ndimage import binary_erosion

        solid = _bone.fill_holes(boneb, structure=_bone._PLANE)
        boneb &= binary_erosion(solid, structure=_bone._PLANE) | (hub > RIM_HU)
    nzb = np.nonzero(boneb)
    xyz = grid.to_world(np.column_stack(nzb) + off)
    s_, lat, post, idx = curve.frame_coords(xyz)
    beyond = _axial_below_end(curve, xyz, s_, lat, post)
    coords = {"s": s_, "lat": lat, "post": post, "half_width": _end_held_half_width(width, discs)[idx],
              "beyond_end": beyond}
    inst = _instances.watershed_instances(hub, boneb, coords, segs, sp)
    next(steps, None)

    # naming (on the working grid)
    nm = naming.name_segments(segs, inst, boneb, coords, curve, grid, box, anchor=anchor, ct=ct, hu_box=hub)
    # thoracic vertebrae: a second flooding with the ribs as competitors, so rib heads and necks
    # are cut at the costovertebral / costotransverse joints (reference labels leave ribs out)
    rib_labels = {sg.label for sg, code in zip(segs, nm.codes) if code in THORACIC_CODES}
    # ... and the rib heads, except at T12 (its small rib head articulates with the body alone;
    # marking it cost the abdomen CT's T12 0.01 Dice against the reference labels)
    head_labels = {sg.label for sg, code in zip(segs, nm.codes) if code in RIB_HEAD_CODES}
    # T1-T10: the laminae and spinous processes slope caudally over the vertebra below
    sloped = {sg.label for sg, code in zip(segs, nm.codes) if code in SLOPED_SPINOUS_CODES}
    if rib_labels:
        inst = _instances.watershed_instances(hub, boneb, coords, segs, sp, rib_labels=rib_labels,
                                              rib_head_labels=head_labels, sloped_labels=sloped)
    # between the bodies, the cut follows each thin disc's fitted plane where slices are coarse
    # (THIN_DISC_MAX_PERIOD_MM; after naming, which keeps the flooding's cut)
    planes = np.zeros((len(discs), 3))
    if sp[2] > _discs.MERGED_BAND_MIN_SLICE_MM:
        planes = _discs.fit_disc_planes(sample, curve, discs, width, _instances.DEPTH_PER_WIDTH,
                                        max_period=THIN_DISC_MAX_PERIOD_MM)
        _instances.cut_at_disc_planes(inst, nzb, xyz, segs, curve, discs, planes,
                                      0.5 * _discs.capped_width(width))
    next(steps, None)

    # to VerSe codes on the CT grid
    lut = np.zeros(256, np.uint8)
    for sg, code in zip(segs, nm.codes):
        if code:
            lut[sg.label] = code
    work_lab = np.zeros(grid.shape, np.uint8)
    work_lab[box] = lut[np.clip(inst, 0, 255).astype(np.intp)]
    labels_full = _to_full_resolution(work_lab, grid, full, box, bone_thr, canal_idx)
    # the clean-up below works on the labelled box (with a margin) only: each step scanned the
    # whole grid (find_objects alone ~0.3 s per call on a 512 x 512 x 300 CT)
    sp_full = grid.spacing / np.asarray(grid.factors)
    lb = _labelled_box(labels_full, sp_full)
    lab_b, hu_b = labels_full[lb], full[lb]
    fill_enclosed_holes(lab_b)
    # ... and dark pockets enclosed in one axial slice (open to the canal in another)
    fill_slice_pockets(lab_b, _canal_points_full(labels_full.shape, grid, canal_idx)[lb], sp_full)
    # ... and dark marrow pockets of a body that open to the outside in every axial slice but are
    # enclosed in sagittal / coronal ones
    in_body = _body_column_test(grid, curve, width)
    off_b = np.array([s.start for s in lb])
    fill_body_pockets(lab_b, hu_b, lambda idx: in_body(idx + off_b))
    # (on a noisy CT one voxel's HU says little about its bone fraction: a voxel is trimmed only
    # if it is also below the limit smoothed, NOISY_TRIM_SIGMA_VOX)
    trim_partial_volume(lab_b, hu_b, noisy_sigma=NOISY_TRIM_SIGMA_VOX if noisy else None)
    if sp[2] > _discs.MERGED_BAND_MIN_SLICE_MM:
        # two vertebral bodies never touch: where their labels do, along z, a thin disc in
        # partial volume lies in between (at finer slices discs are resolved and dark)
        open_disc_contacts(lab_b, hu_b, lambda idx: in_body(idx + off_b))
    smooth_outlines(lab_b, sp_full)
    labels_ct = grid.work_axes_to_ct(labels_full)
    out = ct.with_array(np.ascontiguousarray(labels_ct, dtype=np.uint8), modality="SEG",
                        meta={"source": ct.meta.get("source", ""), "convention": "verse"})
    next(steps, None)
    extras = {
        "centreline_lps": curve.points,
        "canal_lps": canal_pts[np.all(np.isfinite(canal_pts), axis=1)],
        "disc_centres_lps": curve.points[discs] if len(discs) else np.zeros((0, 3)),
        # per disc, its fitted mid-plane (c, a, b) in the curve's frame at the disc centre: arc
        # length s + c + a * lat + b * post (mm); zeros where none was fitted (thick discs, fine slices)
        "disc_planes": planes,
        "bone_threshold_hu": float(bone_thr),
        "partial": nm.partial,
        "rib_bearing": nm.rib_bearing,
        "sacrum_found": nm.sacrum_found,
        "core_profile_hu": profile,
        "ring_profile_hu": ring,
        "shell_profile_hu": shell,
        "body_width_mm": width,
        "curve": curve,
        "broken_shells": broken_shells,
    }
    return Segmentation(out, nm.names, nm.confidence, nm.method, nm.warnings, extras)


#: A segment at either end of the curve (beyond its last disc) is a vertebra only if a body is
#: there: the median HU along its core is at least this fraction of the complete segments'
#: median core HU. Beyond the last body the core is disc or soft tissue (0-60 HU) against
#: cancellous bone's 150-250 HU (osteoporotic ~80-110): a piece past the top body, holding only
#: that vertebra's superior articular processes, was labelled as a vertebra of its own (a "T10"
#: made of T11's top on a T11-S1 phantom).
BODYLESS_CORE_FRACTION = 0.4
#: ... or if a body is there over at least this fraction of the complete segments' median length
#: (core HU at or above that limit): the curve runs on past the top body by up to half of
#: ``DISC_BRIDGE_MM`` and over soft tissue, and a complete T10 (20 mm of body core, 20 mm of soft
#: tissue past it) on a 0.8 mm T10-L2 phantom had a median core below the limit and got no label.
#: A piece holding only articular processes has a few mm of endplate blur at most.
BODY_CORE_MIN_FRACTION = 0.4
#: With the shell profile (``_discs.shell_profile``), an end segment's core counts only where a
#: cortical shell surrounds the curve (at least ``_discs.BAND_SHELL_HU``), and over at least this
#: length (mm) of it: past the top body of a 1 mm osteoporotic, scoliotic T10-L2 phantom the curve
#: left the body sideways and ran 20 mm through the top vertebra's thin posterior bone (core
#: 80-150 HU, above the limit of osteoporotic bodies, ring and shell 50-60 HU: no body around it),
#: which became a vertebra of its own and every name shifted by one (confidence 0.7). A body cut
#: by the scan's edge keeps its shell; the few millimetres of a disc's bright edge do not count.
END_BODY_MIN_MM = 5.0


def _drop_bodyless_ends(segs, curve, profile: np.ndarray, shell: np.ndarray | None = None):
    """``segs`` without end segments whose core shows no vertebral body (see
    :data:`BODYLESS_CORE_FRACTION`, :data:`BODY_CORE_MIN_FRACTION`, and with ``shell``
    :data:`END_BODY_MIN_MM`), renumbered 1..n cranial first; their bone floods to the
    neighbouring vertebra, whose articular processes it usually is."""
    from spineplan.anatomy._discs import BAND_SHELL_HU

    def core(sg, shelled=False):
        m = (curve.s >= sg.s0) & (curve.s <= sg.s1) & np.isfinite(profile)
        if shelled and shell is not None:
            m &= shell >= BAND_SHELL_HU
        return profile[m]

    def median(v):
        return float(np.median(v)) if len(v) else np.nan

    whole_segs = [sg for sg in segs if not (sg.partial_top or sg.partial_bottom)]
    whole = [median(core(sg)) for sg in whole_segs]
    whole = [c for c in whole if np.isfinite(c)]
    if not whole:
        return segs
    limit = BODYLESS_CORE_FRACTION * float(np.median(whole))
    min_mm = BODY_CORE_MIN_FRACTION * float(np.median([sg.s1 - sg.s0 for sg in whole_segs]))
    step = float(np.median(np.diff(curve.s))) if len(curve.s) > 1 else 1.0

    def has_body(sg):
        if shell is not None and (core(sg, shelled=True) >= limit).sum() * step < END_BODY_MIN_MM:
            return False
        v = core(sg)
        return median(v) >= limit or (v >= limit).sum() * step >= min_mm

    keep = [sg for sg in segs if not ((sg.partial_top or sg.partial_bottom) and not has_body(sg))]
    for n, sg in enumerate(keep, start=1):
        sg.label = n
    return keep


def _end_held_half_width(width: np.ndarray, discs: np.ndarray) -> np.ndarray:
    """Half the (capped) body width along the curve, never narrowing from the outermost discs
    out to the curve's ends (a running maximum outwards).

    The width sets how far in front of the curve bone is "other" (``_instances.ANTERIOR_MARGIN_MM``).
    Past the top (or bottom) body the curve leaves the bone and its lateral rays find 10-30 mm
    of width: the front of that body's end plate lay nearest to those samples, became "other"
    bone, and the flood carried it down the anterior cortex: a 1.5 mm osteoporotic L1-L5
    phantom's L1 lost its anterior-superior quarter (no anterior height, fracture not graded)."""
    from spineplan.anatomy._discs import capped_width

    hw = 0.5 * capped_width(width)
    if len(discs) == 0 or len(hw) == 0:
        return hw
    lo, hi = int(np.min(discs)), int(np.max(discs))
    hw[hi:] = np.maximum.accumulate(hw[hi:])
    hw[: lo + 1] = np.maximum.accumulate(hw[: lo + 1][::-1])[::-1]
    return hw


def _axial_below_end(curve, xyz: np.ndarray, s: np.ndarray, lat: np.ndarray, post: np.ndarray) -> np.ndarray:
    """Points below the curve's caudal end get, in place, coordinates in an axial frame there:
    ``s`` along z from the end, ``lat`` and ``post`` along the end's lateral and posterior
    directions laid flat (z removed). Returns the mask of those points.

    The curve's own frame tilts with its last few millimetres (often the path's step onto the
    sacral promontory): extrapolated 50-70 mm down, a 30 deg tilt of its lateral axis mixed z
    into "lateral", and the right acetabulum of the example abdomen CT came out 17 mm "lateral"
    of the midline, inside the sacrum's seed (the S1 label took the ilium)."""
    e = int(np.argmin(curve.points[:, 2]))
    below = xyz[:, 2] < curve.points[e, 2]
    if not below.any():
        return below
    p = curve.posterior[e].copy()
    p[2] = 0.0
    p /= max(float(np.linalg.norm(p)), 1e-6)
    lx = np.cross(p, [0.0, 0.0, 1.0])  # y x z = x (patient left)
    d = xyz[below] - curve.points[e]
    s[below] = curve.s[e] + d[:, 2]
    lat[below] = d @ lx
    post[below] = d @ p
    return below


#: The cut between two bodies follows the disc's fitted plane (``_discs.fit_disc_planes``,
#: ``_instances.cut_at_disc_planes``) only at thin discs in coarse slices (coarser than
#: ``_discs.MERGED_BAND_MIN_SLICE_MM``): there the disc merges with its endplates into a band as
#: bright as marrow, the flooding's fronts have no dark gap to meet in, and they met up to a slice
#: off the disc, tilted against it. A thin (thoracic) disc is one whose distance to the nearest
#: other disc is below this (mm): thoracic periods are 17-30 mm, lumbar ones 35-52 mm (Panjabi et
#: al., Spine 1991, 1992). Reference-label Dice, chest CT (2.5 mm slices): T7-T10
#: .827/.806/.833/.858 -> .839/.841/.859/.881, mean .812 -> .822, no level lower. At the resolved
#: lumbar discs the fronts already meet in the dark disc, and the fit (a flat-bottomed 8-14 mm dip,
#: osteoporotic marrow as dark as the disc) cost the abdomen's L4/L5 .015/.021 and the L3 crop .04.
THIN_DISC_MAX_PERIOD_MM = 35.0
#: VerSe codes of T1-T12 (spineplan.levels.VERSE_CODES), the rib-bearing vertebrae.
THORACIC_CODES = frozenset(range(8, 20))
#: VerSe codes of T1-T11, whose rib heads are marked as "other bone" (see ``_instances.RIB_HEAD_*``).
RIB_HEAD_CODES = frozenset(range(8, 19))
#: VerSe codes of T1-T10, whose spinous processes slope steeply caudally (T11 and T12 have short,
#: nearly horizontal, lumbar-like ones; Panjabi et al., Spine 1991); see ``_instances.SPINOUS_*``.
SLOPED_SPINOUS_CODES = frozenset(range(8, 18))


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    best = (0, 0)
    start = None
    for i, v in enumerate(list(mask) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


#: Half-size (mm) of the box around the curve in which vertebrae are labelled (left-right and
#: posterior): wide enough for the sacral ala, the transverse and the spinous processes.
BOX_HALF_MM = (75.0, 110.0)
#: How far (mm) the box reaches anterior of the body curve: past the front of the bodies and
#: far enough for the aorta / sternum "other bone" markers to exist.
BOX_ANTERIOR_MM = 45.0


def _box_around(curve, grid) -> tuple[slice, slice, slice]:
    idx = grid.to_index(curve.points)
    sp = grid.spacing
    lo = np.floor(idx.min(axis=0) - np.array([BOX_HALF_MM[0] / sp[0], BOX_ANTERIOR_MM / sp[1], 30.0 / sp[2]]))
    hi = np.ceil(idx.max(axis=0) + np.array([BOX_HALF_MM[0] / sp[0], BOX_HALF_MM[1] / sp[1], 30.0 / sp[2]])) + 1
    lo[2] = np.floor(idx[:, 2].min() - 60.0 / sp[2])  # the sacrum below the curve's end
    lo = np.maximum(lo.astype(int), 0)
    hi = np.minimum(hi.astype(int), grid.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


#: Margin (mm, in-plane) around the labelled voxels within which the label clean-up steps work:
#: more than the outline smoothing's half window (OUTLINE_WINDOW_MM) and the one-voxel reach of
#: the pocket fills; along z two slices.
CLEANUP_MARGIN_MM = 8.0


def _labelled_box(lab: np.ndarray, spacing) -> tuple[slice, slice, slice]:
    """Bounding box of the labelled voxels of ``lab`` plus ``CLEANUP_MARGIN_MM`` in-plane and two
    slices along z, clipped to the grid (the whole grid if nothing is labelled)."""
    if not lab.any():
        return (slice(0, lab.shape[0]), slice(0, lab.shape[1]), slice(0, lab.shape[2]))
    pm = lab.any(axis=2)
    ij = [np.nonzero(pm.any(axis=1))[0], np.nonzero(pm.any(axis=0))[0]]
    k = np.nonzero(lab.any(axis=(0, 1)))[0]
    m = [int(np.ceil(CLEANUP_MARGIN_MM / float(spacing[a]))) for a in range(2)] + [2]
    lo = [int(ij[0][0]) - m[0], int(ij[1][0]) - m[1], int(k[0]) - m[2]]
    hi = [int(ij[0][-1]) + m[0] + 1, int(ij[1][-1]) + m[1] + 1, int(k[-1]) + m[2] + 1]
    return tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, lab.shape))  # type: ignore[return-value]


def _point_mask(shape, idx: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` with the integer points ``idx`` (M, 3) inside it set."""
    m = np.zeros(shape, bool)
    if len(idx):
        ok = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
        m[tuple(idx[ok].T)] = True
    return m


def _to_full_resolution(work_lab: np.ndarray, grid, full: np.ndarray, box, bone_thr: float,
                        canal_idx: np.ndarray | None = None) -> np.ndarray:
    """Upsample labels to the reoriented full-resolution grid and snap them to the bone there."""
    from scipy.ndimage import grey_dilation

    from spineplan.anatomy import _bone

    f = grid.factors
    out = np.zeros(full.shape, np.uint8)
    if tuple(f) == (1, 1, 1):
        out[...] = work_lab
        return out
    # only the labelled part of the box (plus a margin) is refined at full resolution
    nzl = np.nonzero(work_lab[box].any(axis=2))
    if len(nzl[0]) == 0:
        return out
    box = (slice(box[0].start + max(0, nzl[0].min() - 2), box[0].start + nzl[0].max() + 3),
           slice(box[1].start + max(0, nzl[1].min() - 2), box[1].start + nzl[1].max() + 3), box[2])
    fb = tuple(slice(b.start * k, b.stop * k) for b, k in zip(box, f))
    up = work_lab[box]
    for a, k in enumerate(f):
        up = np.repeat(up, k, axis=a)
    sub = full[fb]
    up = up[: sub.shape[0], : sub.shape[1], : sub.shape[2]]
    sp_full = grid.spacing / np.array(f)
    keep_open = None
    if canal_idx is not None and len(canal_idx):
        fi = np.round(canal_idx * np.asarray(f) + (np.asarray(f) - 1) / 2.0).astype(int)
        keep_open = _point_mask(sub.shape, fi - np.array([b.start for b in fb]))
    bone = _bone.filled_bone(sub, sp_full, bone_thr, keep_open=keep_open, concave_open=True)
    # at sub-millimetre voxels the outermost layer between the low threshold and the cortex is
    # partial volume with soft tissue (and the thin discs); keep it only where it is cortex
    from scipy.ndimage import binary_erosion

    plane = np.zeros((3, 3, 3), bool)
    plane[:, :, 1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    bone = binary_erosion(bone, structure=plane) | _bone.filled_bone(sub, sp_full, max(bone_thr, RIM_HU), keep_open=keep_open,
                                                                       concave_open=True)
    lab = np.where(bone, up, 0).astype(np.uint8)
    # bone voxels left unlabelled next to a label (thin edges lost by block averaging) grow in
    foot = np.ones((3, 3, 1), bool)
    for _ in range(max(f)):
        grown = grey_dilation(lab, footprint=foot)
        fill = bone & (lab == 0) & (grown > 0)
        if not fill.any():
            break
        lab[fill] = grown[fill]
    out[fb[0].start : fb[0].start + lab.shape[0], fb[1].start : fb[1].start + lab.shape[1],
        fb[2].start : fb[2].start + lab.shape[2]] = lab
    return out


#: Soft tissue around the vertebrae (HU; muscle 40-60, fat below 0) and the share of the way from
#: it to the bone's local mean HU that a voxel on the labels' outer layer must reach to stay: a
#: boundary voxel holds bone and soft tissue in proportion to its HU, and one less than half bone
#: is outside the bone's surface. On the reference labels: abdomen 3 mm 0.867 -> 0.875 mean
#: Dice (L5 0.842 -> 0.850), chest 0.793 -> 0.796; phantoms (exact truth) +0.02 mean Dice.
PV_SOFT_HU = 40.0
PV_FRACTION = 0.5
#: On a noisy CT (``_bone.NOISE_MAX_HU``) a surface voxel is trimmed only if it is below the limit
#: both as it is and Gaussian-smoothed with this sigma (voxels): a noise-dark voxel of bone has
#: brighter neighbours, a partial-volume voxel outside the cortex has not. (Before, noisy CTs
#: were not trimmed at all, since the raw HU alone cut open the fatty pedicle marrow of the
#: noisy 1.5 mm L3 crop.) L3 crop against its VerSe reference: 1161 voxels trimmed, 961 of them
#: outside the reference's vertebrae (raw HU alone: 1315 / 1045); Dice 0.779 -> 0.793.
NOISY_TRIM_SIGMA_VOX = 0.6


def trim_partial_volume(lab: np.ndarray, hu: np.ndarray, noisy_sigma: float | None = None) -> None:
    """Unlabel, in place, voxels of the labels' outer surface layer whose HU is less
    than halfway (``PV_FRACTION``) from ``PV_SOFT_HU`` to the mean HU of the labelled voxels in
    their 3x3x3 neighbourhood. The scan's own edges do not count as a surface. With
    ``noisy_sigma`` (voxels) a voxel's HU is the larger of its own and the Gaussian-smoothed one."""
    from scipy.ndimage import binary_erosion, uniform_filter

    from spineplan.anatomy import _bone

    nz = np.nonzero(lab.any(axis=(1, 2)))[0], np.nonzero(lab.any(axis=(0, 2)))[0], np.nonzero(lab.any(axis=(0, 1)))[0]
    if any(len(a) == 0 for a in nz):
        return
    box = tuple(slice(max(0, int(a[0]) - 1), int(a[-1]) + 2) for a in nz)
    sub = lab[box]
    m = sub > 0
    h = np.asarray(hu[box], dtype=np.float32)
    if noisy_sigma:
        from scipy.ndimage import gaussian_filter

        h = np.maximum(h, gaussian_filter(h, noisy_sigma))
    # the outside surface only: the rim of a pocket inside (dark fatty marrow, the canal where the
    # arch is closed) is not trimmed, which would hollow osteoporotic bodies
    solid = _bone.fill_holes(m, structure=_bone._PLANE)
    outer = m & ~binary_erosion(solid, border_value=1)
    w = uniform_filter(m.astype(np.float32), 3, mode="nearest")
    local = uniform_filter(np.where(m, h, 0.0).astype(np.float32), 3, mode="nearest") / np.maximum(w, 1e-3)
    drop = outer & (h < PV_SOFT_HU + PV_FRACTION * (local - PV_SOFT_HU))
    sub[drop] = 0


#: A pocket enclosed in an axial slice by one vertebra's label is dark marrow or a basivertebral
#: vein opening towards the canal in another slice (so not enclosed in 3-D), unless it is the
#: canal itself or, in C1-C7, a transverse foramen (the only other bony rings in an axial slice).
#: The canal is kept open where the canal track passes, and any pocket at least half the smallest
#: canal cross-section (mid-thoracic canal ~15 x 15 mm, ~175 mm^2; Panjabi et al., Spine 1991)
#: is left open too, in case the track missed a slice. Reference-label Dice: abdomen L2/L3/L4
#: +0.002/+0.003/+0.004, chest T3/T4/T7/T9 +0.003/+0.004/+0.002/+0.002, no level lower.
POCKET_MAX_AREA_MM2 = 80.0
#: VerSe codes of C1-C7 (their transverse foramina stay open).
CERVICAL_CODES = frozenset(range(1, 8))


def _canal_points_full(shape, grid, canal_idx) -> np.ndarray:
    """The canal track (working-grid indices) as a mask on the reoriented full-resolution grid."""
    f = np.asarray(grid.factors)
    m = np.zeros(shape, bool)
    if canal_idx is not None and len(canal_idx):
        fi = np.round(canal_idx * f + (f - 1) / 2.0).astype(int)
        ok = np.all((fi >= 0) & (fi < np.asarray(shape)), axis=1)
        m[tuple(fi[ok].T)] = True
    return m


def _label_boxes(lab: np.ndarray, skip=()):
    """(code, box, the label map's view in the box) for each label of ``lab`` present and not in
    ``skip``, the box grown by one voxel on every side (a hole at the label's edge is then seen
    closed by it). The boxes are found before the first is yielded: writing into a view does not
    move the next box."""
    from scipy.ndimage import find_objects

    for code, sl in enumerate(find_objects(lab), start=1):
        if sl is None or code in skip:
            continue
        sl = tuple(slice(max(0, a.start - 1), a.stop + 1) for a in sl)
        yield code, sl, lab[sl]


def fill_slice_pockets(lab: np.ndarray, canal: np.ndarray, spacing) -> None:
    """Unlabelled pockets enclosed by one vertebra's label within an axial slice (axis 2) join
    that vertebra, in place: not the ones holding a ``canal`` point, not those of
    ``POCKET_MAX_AREA_MM2`` or more, not in cervical labels (``CERVICAL_CODES``)."""
    from scipy.ndimage import label as cc_label

    from spineplan.anatomy import _bone

    max_vox = POCKET_MAX_AREA_MM2 / float(spacing[0] * spacing[1])
    for code, sl, sub in _label_boxes(lab, skip=CERVICAL_CODES):
        holes = _bone.fill_holes(sub == code, structure=_bone._PLANE) & (sub == 0)
        if not holes.any():
            continue
        cc, n = cc_label(holes, structure=_bone._PLANE)
        fill = np.bincount(cc.ravel(), minlength=n + 1) < max_vox
        fill[0] = False
        fill[np.unique(cc[canal[sl]])] = False
        sub[fill[cc]] = code


#: A vertebral body's dark marrow (fatty marrow, a haemangioma, a basivertebral venous plexus:
#: 27-96 HU in the example abdomen CT's L4, 72-77 HU in its L1) can stay below the bone threshold
#: in a pocket that opens towards the canal or the front in every axial slice, so neither the 3-D
#: nor the axial pocket fill reaches it. In sagittal and coronal slices the body's cortex and
#: endplates enclose it: there unlabelled voxels enclosed by one vertebra's label, in the body
#: column (``_body_column_test``: not the canal behind the posterior wall) and brighter than
#: POCKET_MIN_HU, join that vertebra. Cerebrospinal fluid is 0-15 HU and fat below 0 (so an
#: enclosed canal or fat stays out). Abdomen CT: the L4 pocket's 143 voxels (3.9 mL) and L1's 97
#: filled; Dice L1/L4/L5 .878/.888/.855 -> .907/.920/.870, L3 crop .793 -> .798, chest +.001.
POCKET_MIN_HU = 20.0


def fill_body_pockets(lab: np.ndarray, hu: np.ndarray, in_body) -> None:
    """In place: unlabelled voxels enclosed by one vertebra's label in a sagittal (axis 0) or
    coronal (axis 1) slice that ``in_body(idx)`` ((M, 3) indices -> bool) puts in the body column
    and whose HU is above ``POCKET_MIN_HU`` join that vertebra."""
    from spineplan.anatomy import _bone

    sag = np.zeros((3, 3, 3), bool)
    sag[1, :, 1] = sag[1, 1, :] = True
    cor = np.zeros((3, 3, 3), bool)
    cor[:, 1, 1] = cor[1, 1, :] = True
    for code, sl, sub in _label_boxes(lab):
        m = sub == code
        cand = (_bone.fill_holes(m, structure=sag) | _bone.fill_holes(m, structure=cor)) & (sub == 0)
        cand &= np.asarray(hu[sl]) > POCKET_MIN_HU
        if not cand.any():
            continue
        idx = np.argwhere(cand)
        ok = in_body(idx + np.array([a.start for a in sl]))
        sub[tuple(idx[ok].T)] = code


def _body_column_test(grid, curve, width):
    """A function telling, for voxel indices of the reoriented full-resolution grid, which lie in
    the column of the vertebral bodies: within the body's half width of the curve left and right,
    and in front of its posterior wall (``_instances.DEPTH_PER_WIDTH`` x the half width behind the
    curve)."""
    from spineplan.anatomy import _discs, _instances

    f = np.asarray(grid.factors, dtype=float)
    half = 0.5 * _discs.capped_width(width)

    def inside(idx: np.ndarray) -> np.ndarray:
        _, lat, post, ci = curve.frame_coords(grid.to_world((idx - (f - 1) / 2.0) / f))
        hw = half[ci]
        return (np.abs(lat) < hw) & (post < _instances.DEPTH_PER_WIDTH * hw)

    return inside


def open_disc_contacts(lab: np.ndarray, hu: np.ndarray, in_body=None) -> None:
    """Unlabel, in place, the disc layer where two vertebrae's labels touch along z (axis 2) in
    the body column: of each touching pair, the darker voxel, if it is also no brighter than its
    other neighbour along z (a dip: disc between two endplates). ``in_body(idx)`` (M, 3) -> bool
    limits this to the body column (None: everywhere).

    A disc always separates two vertebral bodies, but at 2-3 mm slices a thin disc in partial
    volume with both endplates is as bright as marrow and the labels meet across it. Reference-
    label Dice: chest (2.5 mm slices) mean 0.797 -> 0.804 (T9-L1 +0.01 to +0.017; T4 -0.006,
    whose disc picks lie a slice off the reference's), abdomen (3 mm) within +-0.004. Used at
    slices coarser than ``_discs.MERGED_BAND_MIN_SLICE_MM`` only.
    """
    n = lab.shape[2]
    if n < 2:
        return
    la, lb = lab[:, :, :-1], lab[:, :, 1:]
    lower = np.argwhere((la != lb) & (la > 0) & (lb > 0))  # (i, j, k) touches (i, j, k + 1)
    if not len(lower):
        return
    i, j, k = lower.T
    h_lo = np.asarray(hu[i, j, k], dtype=np.float32)
    h_hi = np.asarray(hu[i, j, k + 1], dtype=np.float32)
    # the darker of the pair and its other neighbour along z
    up = h_hi < h_lo
    kk = np.where(up, k + 1, k)
    h0 = np.minimum(h_lo, h_hi)
    h_out = np.asarray(hu[i, j, np.clip(np.where(up, k + 2, k - 1), 0, n - 1)], dtype=np.float32)
    ok = h0 <= h_out
    idx = np.unique(np.column_stack([i, j, kk])[ok], axis=0)
    if in_body is not None and len(idx):
        idx = idx[in_body(idx)]
    lab[tuple(idx.T)] = 0


#: In-plane window (mm) of the majority vote that smooths the labels' outlines at sub-millimetre
#: voxels: there the outline follows single voxels of noise and partial volume around a
#: vertebra's cortex (on the example chest CT, 0.7 mm, 4-8 % of each vertebra's reference volume
#: was a missed outer layer and 4-6 % an extra ring just outside; bench_segment prints it), while
#: the smallest features labelled, thoracic laminae and pedicle walls, are >= 4 mm thick
#: (Panjabi et al., Spine 1991). Chest mean Dice 0.804 -> 0.809 (T10, T11, L1 reach 0.85). Only
#: where the window spans OUTLINE_MIN_VOXELS or more (voxels of 1.0 mm and finer: 3.5 mm rounds to
#: 4 -> 5 voxels at 1.0 mm); at 1.1-3 mm the vote's 3 x 3 window is wider than the features it
#: smooths. (Without it, session 5: the demo's 1 mm phantom lost its L1 left screw to the facet
#: rule; with it, the chest CT's own labels gave one grade-B screw, 0.14 mm posterior at T12 left,
#: against 7/7 grade A without: kept, and the planner's margin from automatic labels reported.)
OUTLINE_WINDOW_MM = 3.5
OUTLINE_MIN_VOXELS = 5


def smooth_outlines(lab: np.ndarray, spacing) -> None:
    """In place, per label and axial slice (axis 2): an unlabelled voxel joins a label that holds
    more than half of the ``OUTLINE_WINDOW_MM`` square around it; a labelled voxel whose label
    holds less than half of it is unlabelled. Nothing happens at voxels coarser than
    ``OUTLINE_WINDOW_MM / OUTLINE_MIN_VOXELS``."""
    from scipy.ndimage import find_objects, uniform_filter

    size = [int(round(OUTLINE_WINDOW_MM / float(sp))) | 1 for sp in spacing[:2]]
    if min(size) < OUTLINE_MIN_VOXELS:
        return
    pad = max(size) // 2 + 1
    for code, sl in enumerate(find_objects(lab), start=1):
        if sl is None:
            continue
        sl = (slice(max(0, sl[0].start - pad), sl[0].stop + pad), slice(max(0, sl[1].start - pad), sl[1].stop + pad), sl[2])
        sub = lab[sl]
        m = sub == code
        share = uniform_filter(m.astype(np.float32), size=(size[0], size[1], 1), mode="nearest")
        sub[(sub == 0) & (share > 0.5)] = code
        sub[m & (share < 0.5)] = 0


def fill_enclosed_holes(lab: np.ndarray) -> None:
    """Unlabelled pockets enclosed in 3-D by one vertebra's label (dark marrow, basivertebral
    veins) join that vertebra, in place. A pocket open to the canal or to soft tissue in any
    direction stays open."""
    from spineplan.anatomy import _bone

    for code, _sl, sub in _label_boxes(lab):
        m = sub == code
        holes = _bone.fill_holes(m) & (sub == 0)
        if holes.any():
            sub[holes] = code


#: At full resolution, a bone voxel on the outer layer of the low-threshold mask is kept only if
#: it is brighter than this (HU): halfway between soft tissue (~40 HU) and thin cortex (~400 HU).
RIM_HU = 220.0


# ------------------------------------------------------------------------------ TotalSegmentator
#: The TotalSegmentator command line (Wasserthal et al., Radiology AI 2023).
TOTALSEG_EXE = "TotalSegmentator"


def _segment_totalsegmentator(ct: Volume, anchor: str | None) -> Segmentation:
    """Run TotalSegmentator (installed by the user, weights already downloaded) as a subprocess."""
    exe = shutil.which(TOTALSEG_EXE)
    if exe is None:
        raise MissingDependencyError(
            "The 'totalsegmentator' backend needs the TotalSegmentator command line, which is not "
            "installed (not found on PATH). Install it with 'pip install TotalSegmentator' and download "
            "its weights once with 'totalseg_download_weights -t total' (spineplan never downloads "
            "weights itself), or use the built-in backend (--backend builtin)."
        )
    from spineplan.io import write_volume

    with tempfile.TemporaryDirectory(prefix="spineplan-ts-") as tmp:
        src = Path(tmp) / "ct.nii.gz"
        write_volume(ct, src)
        out_dir = Path(tmp) / "seg"
        env = dict(os.environ)
        env.setdefault("TOTALSEG_HOME_DIR", str(Path.home() / ".totalsegmentator"))
        cmd = [exe, "-i", str(src), "-o", str(out_dir), "--roi_subset",
               *[f"vertebrae_{n}" for n in _TS_VERTEBRAE], "sacrum"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        except subprocess.TimeoutExpired as exc:
            raise SpinePlanError("TotalSegmentator did not finish within an hour; use the built-in backend.") from exc
        tail = (res.stderr or res.stdout or "")[-600:]
        if res.returncode != 0:
            if "weights" in tail.lower() or "download" in tail.lower():
                raise MissingDependencyError(
                    "TotalSegmentator is installed but its weights are not: download them once with "
                    "'totalseg_download_weights -t total' (spineplan does not download them). "
                    f"TotalSegmentator said: {tail.strip()}"
                )
            raise SpinePlanError(f"TotalSegmentator failed (exit {res.returncode}): {tail.strip()}")
        return labels_to_segmentation(ct, out_dir, method="TotalSegmentator (external)", anchor=anchor)


_TS_VERTEBRAE = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)] + ["S1"]


def labels_to_segmentation(ct: Volume, labels_path, *, method: str, anchor: str | None = None) -> Segmentation:
    """Read another segmenter's output (a VerSe / TotalSegmentator label file or folder) as a Segmentation.

    Uses :func:`spineplan.io.read_labels` (auto-detects the convention). The names are the
    other segmenter's; ``anchor`` is not applied to them (it only steers the built-in naming).
    """
    from spineplan.io import read_labels

    lab = read_labels(labels_path, ct=ct)
    names = list(lab.names)
    if not names:
        raise NoVertebraeError(f"no vertebrae found in the label map {labels_path}.")
    arr = np.ascontiguousarray(np.asarray(lab.volume.array), dtype=np.uint8)
    warnings = [f"Names come from {method} ({lab.convention}); confirm them on the images."]
    warnings += list(lab.warnings)
    if anchor:
        warnings.append("The anchor was not applied: the names come from the external segmenter.")
    return Segmentation(ct.with_array(arr, modality="SEG", meta={"convention": "verse"}), names,
                        EXTERNAL_CONFIDENCE, method, warnings, {"labels_convention": lab.convention})


#: Naming confidence given to another segmenter's names (its own level naming is not cross-checked here).
EXTERNAL_CONFIDENCE = 0.8
