"""Breach grading of one screw or needle against one vertebra mask (implementation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spineplan.geometry import BoxMask, DistanceField, cylinder_surface, mask_box
from spineplan.volume import Volume

#: Gertzbein-Robbins grades (Gertzbein & Robbins, Spine 1990;15:11-14): upper breach limits (mm,
#: exclusive) of grades B, C, D; A is no breach, E is >= 6 mm (DESIGN.md).
GR_LIMITS_MM: tuple[tuple[str, float], ...] = (("B", 2.0), ("C", 4.0), ("D", 6.0))
#: A breach below this (mm) is numerical noise of the sub-voxel distance field, not a breach.
BREACH_TOLERANCE_MM = 0.0
#: Default entry zone (mm behind the entry point, along the axis): see ENTRY_ZONE_RULE.
ENTRY_ZONE_MM = 5.0
#: Largest angle (deg) between the screw axis and the normal of the dorsal bone surface at the
#: entry that the margin's per-line entry zone follows (ENTRY_ZONE_RULE): a surface line of a screw
#: of radius r entering the bone up to r tan(ENTRY_OBLIQUITY_MAX_DEG) after the axis (never more than
#: the entry zone's length) starts its margin that much later. Measured on the screws planned from
#: the abdomen CT's reference labels (session 7): the dorsal surface's normal at the entry lies
#: 9-71 deg (median 59 deg) from the axis, and the surface lines of the next larger screw entered
#: the bone up to 4.2 mm after the axis (7.0 mm screw: r tan 50 deg).
ENTRY_OBLIQUITY_MAX_DEG = 60.0
#: Surface sampling step (mm) along and around the screw.
SURFACE_STEP_MM = 0.4
#: Facet joint zone distance (mm); the planner uses PlannerSettings.facet_zone_mm (same default).
FACET_ZONE_MM = 2.5
#: Facet zone only posterior of this fraction of the vertebra's antero-posterior extent (from
#: its anterior end, in the vertebra frame): excludes the disc space between the bodies, keeps
#: the articular processes (lumbar: body ~35 mm of ~85 mm total depth; facets beyond ~50 mm).
FACET_POSTERIOR_FRACTION = 0.45
#: Outer diameter (mm) of needle gauges (ISO 9626:2016, normal-wall tubing), for bone-access needles.
NEEDLE_OD_MM: dict[int, float] = {8: 4.19, 10: 3.40, 11: 3.05, 12: 2.77, 13: 2.41, 14: 2.11, 15: 1.83,
                                  16: 1.65, 17: 1.47, 18: 1.27}

ENTRY_ZONE_RULE = (
    "Entry-zone rule: a screw crosses the dorsal cortex at its entry point by design. Breach: the "
    "surface points within the first {zone:g} mm behind the entry point, measured along the screw "
    "axis (the part lying in the posterior elements lateral to the superior articular process, "
    "outside the pedicle), are excluded; any other surface point outside the bone is a breach. "
    "Margin: the dorsal surface is oblique to the screw, so each surface line of the screw (parallel "
    "to its axis) is judged from {zone:g} mm past its own entry into the bone; a line entering later "
    "than the axis gains at most r tan 60 deg (r: the screw's radius) and never more than {zone:g} mm, "
    "and until then it must still lie in the bone (breach rule above). A spinal-canal mask, when "
    "given, is checked over the whole screw including the entry zone."
)


def line_lag_max(radius_mm: float, zone_mm: float) -> float:
    """How much later (mm along the axis) than the axis a surface line may enter the bone and still
    be judged from its own entry (ENTRY_ZONE_RULE): ``radius_mm`` tan(ENTRY_OBLIQUITY_MAX_DEG), at
    most ``zone_mm``."""
    return min(float(zone_mm), float(radius_mm) * float(np.tan(np.radians(ENTRY_OBLIQUITY_MAX_DEG))))


def line_entries(ts: np.ndarray, f: np.ndarray, zone_mm: float, lag_max: float) -> np.ndarray:
    """Where each surface line enters the bone (mm along the axis): ``f`` (T, L) is the signed
    distance on L lines at the distances ``ts`` (T,) from the entry; a line's entry is its first
    sample inside (``f <= 0``) within ``zone_mm + lag_max``, the zero crossing interpolated from
    the sample before; ``lag_max`` for a line that does not enter there."""
    inside = (f <= 0) & (ts <= zone_mm + lag_max)[:, None]
    has = inside.any(axis=0)
    k = np.argmax(inside, axis=0)
    tc = np.where(has, ts[k], lag_max)
    kk = np.maximum(k - 1, 0)
    cols = np.arange(f.shape[1])
    f0, f1 = f[kk, cols], f[k, cols]
    frac = np.where((k > 0) & (f0 > 0), f0 / np.maximum(f0 - f1, 1e-9), 0.0)
    return np.where(has & (k > 0), ts[kk] + frac * (ts[k] - ts[kk]), tc)


def line_zone_ends(t_mm: np.ndarray, on_cap: np.ndarray, sdf: np.ndarray, radius_mm: float, zone_mm: float,
                   max_end_mm: float | None = None) -> np.ndarray:
    """Per surface sample of :func:`spineplan.geometry.cylinder_surface` (``t_mm``, ``on_cap``) with
    its signed distance ``sdf``: the distance along the axis from which its margin is judged
    (ENTRY_ZONE_RULE). A surface line's own entry into the bone is its first sample inside
    (``sdf <= 0``, zero crossing interpolated) within ``zone_mm`` + the largest lag, the lag being
    ``radius_mm`` tan(ENTRY_OBLIQUITY_MAX_DEG) and at most ``zone_mm``; the line is judged from
    ``zone_mm`` + its lag (0 for a line inside at the entry point, the largest lag for one that does
    not enter). ``max_end_mm`` caps the result (the planner keeps the pedicle isthmus judged). The
    flat tip cap keeps ``zone_mm``."""
    t_mm = np.asarray(t_mm, float)
    out = np.full(len(t_mm), float(zone_mm))
    lat = ~np.asarray(on_cap, bool)
    if not lat.any() or zone_mm <= 0:
        return out
    tl = t_mm[lat]
    n_around = int(np.sum(tl == tl[0]))
    ts = tl[::n_around]
    f = np.asarray(sdf, float)[lat].reshape(len(ts), n_around)
    lag_max = line_lag_max(radius_mm, zone_mm)
    end = zone_mm + np.clip(line_entries(ts, f, zone_mm, lag_max), 0.0, lag_max)
    if max_end_mm is not None:
        end = np.minimum(end, max(float(max_end_mm), float(zone_mm)))
    out[lat] = np.tile(end, len(ts))
    return out


def gr_grade(breach_mm: float) -> str:
    """Gertzbein-Robbins grade of a breach distance (mm).

    >>> [gr_grade(x) for x in (0.0, 1.99, 2.0, 3.99, 4.0, 5.99, 6.0)]
    ['A', 'B', 'C', 'C', 'D', 'D', 'E']
    """
    if breach_mm <= BREACH_TOLERANCE_MM:
        return "A"
    for grade, limit in GR_LIMITS_MM:
        if breach_mm < limit:
            return grade
    return "E"


@dataclass
class ScrewSafety:
    """Safety of one screw (or needle) against one vertebra."""

    level: str | None
    side: str | None
    grade: str  # Gertzbein-Robbins A-E
    breach_mm: float  # largest distance of the surface outside the bone (0 when none)
    breach_direction: str | None  # medial|lateral|superior|inferior|anterior|posterior (vertebra frame)
    min_margin_mm: float  # smallest bone margin of the surface (negative = breach)
    facet_violation: bool | None  # None: not assessed (no neighbour above in the labels)
    in_bone_fraction: float  # fraction of the axis (after the entry zone) inside this vertebra
    entry_zone_mm: float
    kind: str = "screw"  # "screw" | "needle"
    index: int | None = None  # position in the plan's screws (or access) list
    #: Level whose label holds most of the axis beyond the entry zone (None: not checked / no bone).
    vertebra_found: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_safe(self) -> bool:
        return self.grade == "A" and not self.facet_violation

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "side": self.side, "kind": self.kind, "index": self.index,
                "grade": self.grade, "breach_mm": round(self.breach_mm, 2),
                "breach_direction": self.breach_direction, "min_margin_mm": round(self.min_margin_mm, 2),
                "facet_violation": self.facet_violation, "in_bone_fraction": round(self.in_bone_fraction, 3),
                "entry_zone_mm": self.entry_zone_mm, "vertebra_found": self.vertebra_found,
                "notes": list(self.notes)}


def direction_name(vector_local: np.ndarray, side: str | None) -> str:
    """Name of the dominant direction of a vector in the vertebra frame (x left, y posterior, z up).

    >>> direction_name(np.array([-1.0, 0.1, 0.2]), "left"), direction_name(np.array([-1.0, 0, 0]), "right")
    ('medial', 'lateral')
    """
    v = np.asarray(vector_local, float)
    k = int(np.argmax(np.abs(v)))
    if k == 0:
        to_left = v[0] > 0
        if side in ("left", "right"):
            lateral = to_left if side == "left" else not to_left
            return "lateral" if lateral else "medial"
        return "left" if to_left else "right"
    if k == 1:
        return "posterior" if v[1] > 0 else "anterior"
    return "superior" if v[2] > 0 else "inferior"


def patient_axes_frame(mask: np.ndarray, grid: Volume):
    """A stand-in vertebra frame when no Spine is given: patient LPS axes, origin at the centroid
    of the anterior 40 % of the mask (about the vertebral body)."""
    from spineplan.anatomy.model import VertebraFrame

    idx = np.argwhere(mask)
    if len(idx) == 0:
        return VertebraFrame(np.zeros(3), np.eye(3))
    xyz = grid.index_to_world(idx[:: max(1, len(idx) // 20000)])
    y0, y1 = xyz[:, 1].min(), xyz[:, 1].max()
    body = xyz[xyz[:, 1] <= y0 + 0.4 * (y1 - y0)]
    return VertebraFrame(body.mean(axis=0), np.eye(3))


#: Padding (mm) of the box, around the vertebra, that :func:`facet_zone` is built in.
FACET_ZONE_PAD_MM = 12.0


def facet_zone(mask: np.ndarray, above_mask: np.ndarray | None, grid: Volume, frame, *,
               zone_mm: float = FACET_ZONE_MM, pad_mm: float = FACET_ZONE_PAD_MM, box=None) -> BoxMask | None:
    """The facet joint zone between a vertebra and the one above it.

    Points within ``zone_mm`` of both vertebrae, plus the cranial vertebra's own bone, restricted
    to the posterior elements (beyond ``FACET_POSTERIOR_FRACTION`` of the vertebra's
    antero-posterior extent in its frame), in the padded bounding box of the vertebra. ``None``
    when there is no vertebra above. ``box``: ``mask_box(mask, grid, pad_mm)`` when already known.

    ``zone_mm`` is widened to at least one voxel (the largest spacing): the zone is built from
    voxel centres, and the voxels of two vertebrae that touch across the joint are one voxel
    apart, so a narrower zone on a coarse CT (2.5 mm on 3 mm voxels) holds none of this
    vertebra's voxels and the joint is seen from the level above only.
    """
    from scipy.ndimage import distance_transform_edt

    zone_mm = max(float(zone_mm), float(np.max(grid.spacing)) + 1e-3)

    if above_mask is None or not np.any(above_mask):
        return None
    if box is None:
        box = mask_box(mask, grid, pad_mm)
    aff = grid.box_affine([b[0] for b in box])
    shape = tuple(b - a for a, b in box)
    zone = np.zeros(shape, bool)
    # local y of every box voxel, by broadcasting (y is affine in the indices)
    m = frame.axes[1] @ aff[:3, :3]  # d y_local / d index
    y0 = float(frame.axes[1] @ (aff[:3, 3] - frame.origin))
    y_local = (y0 + m[0] * np.arange(shape[0])[:, None, None] + m[1] * np.arange(shape[1])[None, :, None]
               + m[2] * np.arange(shape[2])[None, None, :]).astype(np.float32)
    sl = tuple(slice(a, b) for a, b in box)
    sub, up = mask[sl], above_mask[sl]
    ys = y_local[np.broadcast_to(sub, shape)] if sub.any() else np.zeros(0)
    if ys.size == 0 or not up.any():
        return BoxMask(zone, aff)
    y_cut = ys.min() + FACET_POSTERIOR_FRACTION * (ys.max() - ys.min())
    post = y_local > y_cut
    # work only in the sub-box holding the posterior part of both masks (+ the zone width)
    cand = post & (sub | up)
    if not cand.any():
        return BoxMask(zone, aff)
    sp = grid.spacing
    lo = [max(int(np.flatnonzero(np.any(cand, axis=tuple(a for a in range(3) if a != ax)))[0])
              - int(np.ceil(zone_mm / sp[ax])) - 1, 0) for ax in range(3)]
    hi = [min(int(np.flatnonzero(np.any(cand, axis=tuple(a for a in range(3) if a != ax)))[-1])
              + int(np.ceil(zone_mm / sp[ax])) + 2, shape[ax]) for ax in range(3)]
    ss = tuple(slice(a, b) for a, b in zip(lo, hi))
    near_this = distance_transform_edt(~sub[ss], sampling=sp) <= zone_mm
    near_up = distance_transform_edt(~up[ss], sampling=sp) <= zone_mm
    zone[ss] = ((near_this & near_up) | up[ss]) & post[ss]
    return BoxMask(zone, aff)


def grade_segment(entry, tip, diameter_mm: float, field_: DistanceField, frame, side: str | None, *,
                  entry_zone_mm: float = ENTRY_ZONE_MM, canal: DistanceField | None = None,
                  facet: BoxMask | None = None, head_radius_mm: float = 3.0, head_height_mm: float = 10.0,
                  level: str | None = None, kind: str = "screw", step_mm: float = SURFACE_STEP_MM) -> ScrewSafety:
    """Grade a cylinder entry->tip of ``diameter_mm`` against a precomputed distance field."""
    entry = np.asarray(entry, float)
    tip = np.asarray(tip, float)
    r = 0.5 * float(diameter_mm)
    s = cylinder_surface(entry, tip, r, step_mm=step_mm)
    sdf = field_.sample(s.points)
    judged = s.t_mm >= entry_zone_mm
    notes = [ENTRY_ZONE_RULE.format(zone=entry_zone_mm)]
    if not judged.any():
        notes.append(f"The {kind} is shorter than the entry zone: nothing to grade.")
        judged = np.ones_like(judged)
    sj = sdf[judged]
    worst = int(np.argmax(sj))
    breach = max(float(sj[worst]), 0.0)
    # the margin: each surface line from the entry zone past its own entry into the bone
    margin_judged = judged & (s.t_mm >= line_zone_ends(s.t_mm, s.on_cap, sdf, r, entry_zone_mm) - 1e-9)
    margin = float(-sdf[margin_judged].max()) if margin_judged.any() else float(-sj.max())
    if breach > 0:
        margin = min(margin, -breach)
    wpt_radial = s.radial[judged][worst]
    wpt = s.points[judged][worst]
    # Spinal canal: any intrusion counts, entry zone included.
    if canal is not None:
        depth = -canal.sample(s.points)
        k = int(np.argmax(depth))
        if depth[k] > 0:
            notes.append(f"The {kind} enters the spinal canal by {depth[k]:.1f} mm.")
            if depth[k] > breach:
                breach, wpt_radial, wpt = float(depth[k]), s.radial[k], s.points[k]
                margin = min(margin, -float(depth[k]))
    direction = None
    if breach > BREACH_TOLERANCE_MM:
        # the breach points along the distance field's gradient (outward from the bone) at the
        # worst surface point; the screw's radial direction there when the field is flat
        h = 0.5
        g = np.array([(field_.sample((wpt + h * e)[None])[0] - field_.sample((wpt - h * e)[None])[0]) / (2 * h)
                      for e in np.eye(3)])
        vec = g if np.linalg.norm(g) > 0.3 else wpt_radial
        direction = direction_name(frame.direction_to_local(vec), side)
    d = (tip - entry) / np.linalg.norm(tip - entry)
    length = float(np.linalg.norm(tip - entry))
    ts = np.arange(entry_zone_mm, length + 1e-9, 0.5)
    in_bone = float(np.mean(field_.sample(entry + ts[:, None] * d) < 0)) if len(ts) else 0.0
    facet_violation = None
    if facet is not None:
        from spineplan.geometry import cylinder_volume_points

        shaft = cylinder_volume_points(entry, tip, r, step_mm=0.75)
        head = cylinder_volume_points(entry, entry - head_height_mm * d, max(head_radius_mm, r), step_mm=0.75)
        pts = np.concatenate([shaft, head]) if len(head) else shaft
        facet_violation = bool(facet.contains(pts).any())
        if facet_violation:
            notes.append("The screw or its head lies in the facet joint of the level above "
                         "(adjacent-segment risk; Babu et al., Neurosurgery 2012).")
    grade = gr_grade(breach)
    if breach > 0:
        notes.append(f"Largest breach {breach:.1f} mm ({direction}) at LPS "
                     f"[{wpt[0]:.1f}, {wpt[1]:.1f}, {wpt[2]:.1f}].")
    return ScrewSafety(level=level, side=side, grade=grade, breach_mm=breach, breach_direction=direction,
                       min_margin_mm=margin, facet_violation=facet_violation, in_bone_fraction=in_bone,
                       entry_zone_mm=float(entry_zone_mm), kind=kind, notes=notes)
