"""Safety grading of any screw or needle against any vertebra mask.

Public API:

- :func:`grade_screw` - Gertzbein-Robbins grade, breach distance and direction, minimum margin
  and facet violation of one screw against one vertebra mask;
- :func:`check_plan` - every screw (and bone-access needle) of a plan against a Spine or a
  label map;
- :class:`ScrewSafety`, :func:`gr_grade`, :data:`ENTRY_ZONE_RULE`.

Breach (DESIGN.md): the largest distance by which the screw's surface lies outside the
vertebra's bone, measured with a sub-voxel signed distance field of the mask; grades A no
breach, B < 2 mm, C 2 to < 4 mm, D 4 to < 6 mm, E >= 6 mm (Gertzbein & Robbins, Spine 1990).
The entry zone is excluded as stated in :data:`ENTRY_ZONE_RULE` (default: the first 5 mm
behind the entry point along the axis for the breach; for the margin, 5 mm past each surface
line's own entry into the bone, at most r tan 60 deg and 5 mm later, :func:`line_zone_ends`).
Research software, not a certified medical device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spineplan.safety._grade import (
    ENTRY_ZONE_MM,
    ENTRY_ZONE_RULE,
    FACET_ZONE_MM,
    GR_LIMITS_MM,
    NEEDLE_OD_MM,
    ScrewSafety,
    direction_name,
    facet_zone,
    gr_grade,
    grade_segment,
    line_zone_ends,
    patient_axes_frame,
)

__all__ = ["grade_screw", "check_plan", "ScrewSafety", "gr_grade", "ENTRY_ZONE_RULE", "ENTRY_ZONE_MM",
           "GR_LIMITS_MM", "facet_zone", "direction_name", "NEEDLE_OD_MM", "screw_field", "line_zone_ends"]

#: Padding (mm) of the distance-field box around a graded screw: margins and breaches up to this
#: size are exact; larger ones are reported as at least this.
_PAD_MM = 15.0


def screw_field(entry, tip, radius_mm: float, mask: np.ndarray, grid, pad_mm: float = _PAD_MM):
    """Signed distance field of ``mask`` in a box around one screw (for grading)."""
    from spineplan.geometry import DistanceField

    pts = grid.world_to_index(np.array([entry, tip], float))
    reach = (radius_mm + pad_mm) / grid.spacing
    lo = np.floor(pts.min(axis=0) - reach).astype(int)
    hi = np.ceil(pts.max(axis=0) + reach).astype(int) + 1
    shape = np.array(mask.shape)
    lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    box = tuple((int(a), int(b)) for a, b in zip(lo, hi))
    if any(b <= a for a, b in box):  # the screw is entirely off the grid
        box = tuple((0, 1) for _ in range(3))
    return DistanceField.of_mask(mask, grid, pad_mm=pad_mm, box=box)


def grade_screw(screw, vertebra_mask: np.ndarray, ct_or_grid, *, canal_mask: np.ndarray | None = None,
                facet_zone=None, frame=None, entry_zone_mm: float = ENTRY_ZONE_MM,
                head_radius_mm: float = 3.0, head_height_mm: float = 10.0, pad_mm: float = _PAD_MM) -> ScrewSafety:
    """Grade ``screw`` (a :class:`spineplan.plan.model.Screw` or anything with ``entry``, ``tip``,
    ``diameter_mm``, ``level``, ``side``) against ``vertebra_mask`` (bool, on ``ct_or_grid``'s grid).

    ``frame``: the vertebra's :class:`~spineplan.anatomy.model.VertebraFrame` for naming the breach
    direction (default: patient axes with origin in the vertebral body, see
    :func:`patient_axes_frame`). ``canal_mask``: spinal canal on the same grid (any intrusion,
    entry zone included, is a breach). ``facet_zone``: a :class:`spineplan.geometry.BoxMask` or a
    bool array on the grid (see :func:`facet_zone`); ``None`` leaves the facet unassessed.
    ``pad_mm``: the distance field is computed in a box this much larger than the screw, so
    breaches and margins up to ``pad_mm`` are exact (larger ones read as at least ``pad_mm``).
    """
    from spineplan.geometry import BoxMask, DistanceField

    grid = ct_or_grid
    mask = np.asarray(vertebra_mask, bool)
    if mask.shape != grid.shape:
        from spineplan.errors import LabelError

        raise LabelError(f"The vertebra mask has shape {mask.shape} but the CT grid is {grid.shape}; "
                         "give a mask on the CT's grid.")
    r = 0.5 * float(screw.diameter_mm)
    fld = screw_field(screw.entry, screw.tip, r, mask, grid, pad_mm=pad_mm)
    if frame is None:
        frame = patient_axes_frame(mask, grid)
    canal = None if canal_mask is None else DistanceField.of_mask(np.asarray(canal_mask, bool), grid, pad_mm=5.0)
    if isinstance(facet_zone, np.ndarray):
        facet_zone = BoxMask(np.asarray(facet_zone, bool), grid.affine)
    return grade_segment(screw.entry, screw.tip, screw.diameter_mm, fld, frame, getattr(screw, "side", None),
                         entry_zone_mm=entry_zone_mm, canal=canal, facet=facet_zone,
                         head_radius_mm=head_radius_mm, head_height_mm=head_height_mm,
                         level=getattr(screw, "level", None))


class _Anatomy:
    """Level name -> mask / frame from a Spine, a VerSe label Volume or a dict of masks."""

    def __init__(self, spine_or_labels: Any, grid):
        from spineplan.levels import level_from_verse, level_index

        self.grid = grid
        self.frames: dict[str, Any] = {}
        self.label_array = None
        self.codes: dict[str, int] = {}
        self.masks: dict[str, np.ndarray] = {}
        obj = spine_or_labels
        if hasattr(obj, "vertebrae") and hasattr(obj, "labels"):  # Spine
            self.label_array = np.asarray(obj.labels.array)
            for v in obj.vertebrae:
                self.codes[v.name] = int(v.label)
                self.frames[v.name] = v.frame
        elif hasattr(obj, "array") and hasattr(obj, "affine"):  # label Volume, VerSe codes
            self.label_array = np.asarray(obj.array)
            for code in np.unique(self.label_array):
                try:
                    self.codes[level_from_verse(int(code))] = int(code)
                except (KeyError, ValueError):
                    continue
        elif isinstance(obj, dict):
            self.masks = {k: np.asarray(v, bool) for k, v in obj.items()}
        elif hasattr(obj, "mask") and hasattr(obj, "names"):
            self.masks = {n: np.asarray(obj.mask(n), bool) for n in obj.names}
        else:
            from spineplan.errors import LabelError

            raise LabelError("check_plan needs a Spine, a VerSe label volume or a dict of level -> mask; "
                             f"got {type(obj).__name__}.")
        if self.label_array is not None and self.label_array.shape != grid.shape:
            from spineplan.errors import LabelError

            raise LabelError(f"The label map has shape {self.label_array.shape} but the CT has {grid.shape}; "
                             "resample the labels onto the CT grid.")
        self.names = sorted(set(self.codes) | set(self.masks), key=level_index)
        self._facet_cache: dict[str, Any] = {}

    def mask(self, name: str) -> np.ndarray | None:
        if name in self.masks:
            return self.masks[name]
        if name in self.codes:
            return self.label_array == self.codes[name]
        return None

    def frame(self, name: str):
        if name not in self.frames:
            self.frames[name] = patient_axes_frame(self.mask(name), self.grid)
        return self.frames[name]

    def above(self, name: str) -> str | None:
        """The vertebra just cranial to ``name`` in the labels (skipping nothing but transitional levels)."""
        from spineplan.levels import level_above

        return level_above(name, self.names)

    def facet(self, name: str, zone_mm: float):
        if name not in self._facet_cache:
            up = self.above(name)
            self._facet_cache[name] = None if up is None else facet_zone(
                self.mask(name), self.mask(up), self.grid, self.frame(name), zone_mm=zone_mm)
        return self._facet_cache[name]

    def level_at(self, points: np.ndarray) -> str | None:
        """The level holding most of ``points`` (nearest voxel), None when they are not in bone."""
        idx = np.rint(self.grid.world_to_index(points)).astype(int)
        ok = np.all((idx >= 0) & (idx < np.array(self.grid.shape)), axis=1)
        idx = idx[ok]
        if not len(idx):
            return None
        counts: dict[str, int] = {}
        for n in self.names:
            if self.label_array is not None and n in self.codes:
                c = int(np.sum(self.label_array[idx[:, 0], idx[:, 1], idx[:, 2]] == self.codes[n]))
            else:
                m = self.mask(n)
                c = int(np.sum(m[idx[:, 0], idx[:, 1], idx[:, 2]]))
            if c:
                counts[n] = c
        return max(counts, key=counts.get) if counts else None


def check_plan(plan, ct, spine_or_labels, *, entry_zone_mm: float = ENTRY_ZONE_MM,
               facet_zone_mm: float = FACET_ZONE_MM, canal_mask: np.ndarray | None = None,
               head_radius_mm: float = 3.0, head_height_mm: float = 10.0) -> list[ScrewSafety]:
    """Grade every screw, then every bone-access needle (as a thin screw of the gauge's outer
    diameter, ISO 9626), of ``plan`` against the vertebra of its level in ``spine_or_labels``
    (a Spine, a VerSe label Volume on the CT grid, or a dict level -> mask).

    Each result also names the level whose bone holds most of the axis (``vertebra_found``), so a
    screw in the wrong vertebra is visible. A level missing from the labels gives grade ``"n/a"``.
    """
    anat = _Anatomy(spine_or_labels, ct)
    items: list[tuple[str, int, Any, np.ndarray, np.ndarray, float]] = []
    for i, s in enumerate(plan.screws):
        items.append(("screw", i, s, np.asarray(s.entry, float), np.asarray(s.tip, float), float(s.diameter_mm)))
    for i, a in enumerate(getattr(plan, "access", [])):
        od = NEEDLE_OD_MM.get(int(a.gauge), 3.05)
        items.append(("needle", i, a, np.asarray(a.entry, float), np.asarray(a.target, float), od))
    out: list[ScrewSafety] = []
    for kind, i, obj, entry, tip, dia in items:
        mask = anat.mask(obj.level)
        if mask is None or not mask.any():
            out.append(ScrewSafety(level=obj.level, side=obj.side, grade="n/a", breach_mm=float("nan"),
                                   breach_direction=None, min_margin_mm=float("nan"), facet_violation=None,
                                   in_bone_fraction=0.0, entry_zone_mm=entry_zone_mm, kind=kind, index=i,
                                   notes=[f"{obj.level} is not in the labels: this {kind} cannot be graded."]))
            continue
        fld = screw_field(entry, tip, 0.5 * dia, mask, ct)
        canal = None
        if canal_mask is not None:
            from spineplan.geometry import DistanceField

            canal = DistanceField.of_mask(np.asarray(canal_mask, bool), ct, pad_mm=5.0)
        res = grade_segment(entry, tip, dia, fld, anat.frame(obj.level), obj.side, entry_zone_mm=entry_zone_mm,
                            canal=canal, facet=anat.facet(obj.level, facet_zone_mm) if kind == "screw" else None,
                            head_radius_mm=head_radius_mm, head_height_mm=head_height_mm, level=obj.level,
                            kind=kind)
        res.index = i
        length = float(np.linalg.norm(tip - entry))
        if length > entry_zone_mm:
            d = (tip - entry) / length
            axis = entry + np.arange(entry_zone_mm, length, 0.5)[:, None] * d
            res.vertebra_found = anat.level_at(axis)
            if res.vertebra_found is not None and res.vertebra_found != obj.level:
                res.notes.append(f"Most of this {kind} lies in {res.vertebra_found}, not {obj.level}.")
        out.append(res)
    return out
