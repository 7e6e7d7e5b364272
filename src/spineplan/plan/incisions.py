"""Skin incisions for percutaneous screws: one stab per screw, merged where entries are close.

Each screw's trajectory is extended backwards from its bony entry to the skin surface found in
the CT (:class:`spineplan.plan.skin.SkinSurface`). A stab incision is centred there, oriented
cranio-caudally (the vertebra's superior axis projected onto the skin's tangent plane). Its
length is the footprint of the screw extender / largest dilator on the skin (a cylinder of
diameter :data:`EXTENDER_DIAMETER_MM` crossing the skin obliquely leaves an ellipse, longer by
1/cos of the obliquity along the axis' projection) plus :data:`INCISION_MARGIN_MM`.

On one side, neighbouring stab incisions are merged into one when they would overlap, or when
the skin bridge between them would be shorter than :data:`MIN_SKIN_BRIDGE_MM` and the merged
incision stays within :data:`MAX_INCISION_MM` (minimally invasive first: longer merges are not
made; the narrow bridge is reported instead). Every incision reports its position (centre,
start, end on the skin), length, distance from the midline (the vertebra's mid-sagittal plane)
and skin depth; the plan gets the total incision length. Incisions longer than
:data:`MAX_INCISION_MM` are flagged with the reason.
"""

from __future__ import annotations

import math

import numpy as np

from spineplan.levels import level_index
from spineplan.plan.model import Incision, Plan

#: Outer diameter of the screw extender / final dilator of percutaneous pedicle screw systems
#: (typically 14-18 mm; screw extenders ("tulip extensions") must pass through the incision:
#: Lalehzarian et al., "Percutaneous Pedicle Screw Systems", Thieme 2019). We take 16 mm.
EXTENDER_DIAMETER_MM = 16.0
#: Added to the extender's footprint so the skin is not stretched by the dilators.
INCISION_MARGIN_MM = 4.0
#: Merge two stab incisions on one side when the skin bridge between them would be shorter than
#: this (a narrow bridge between two incisions gains nothing and risks skin-edge necrosis).
#: Planning default; configurable.
MIN_SKIN_BRIDGE_MM = 10.0
#: Stab incisions for percutaneous screws are typically 15-25 mm (issue 6; e.g. Agrawal et al.,
#: J Minim Invasive Spine Surg Tech 2023); anything over 30 mm is flagged with its reason.
MAX_INCISION_MM = 30.0
#: A skin entry more than this from the midline is called far lateral in the flag's reason
#: (paramedian percutaneous entries are typically 30-60 mm from the midline in lumbar spines;
#: obesity pushes them further laterally: Agrawal et al. 2023). Planning default.
FAR_LATERAL_MM = 70.0
#: Obliquity of the trajectory to the skin normal is capped here when sizing the footprint.
_MAX_OBLIQUITY_DEG = 70.0


def _superior(spine, level: str) -> np.ndarray:
    if spine is not None and level in spine:
        return np.asarray(spine[level].frame.axes[2], float)
    return np.array([0.0, 0.0, 1.0])


def _midline(plan: Plan, spine, level: str) -> tuple[np.ndarray, np.ndarray]:
    """(point, unit normal) of the mid-sagittal plane at ``level``."""
    if spine is not None and level in spine:
        fr = spine[level].frame
        return np.asarray(fr.origin, float), np.asarray(fr.axes[0], float)
    pair = [s for s in plan.screws if s.level == level]
    if len(pair) == 2:
        a, b = (np.asarray(s.entry, float) for s in pair)
        n = a - b
        return (a + b) / 2, n / np.linalg.norm(n)
    xs = np.array([s.entry for s in plan.screws], float)
    return xs.mean(axis=0), np.array([1.0, 0, 0])


def stab_length(direction, normal, cranio_caudal, *, diameter_mm: float = EXTENDER_DIAMETER_MM,
                margin_mm: float = INCISION_MARGIN_MM) -> float:
    """Length along ``cranio_caudal`` of the footprint of a cylinder crossing the skin, plus margin.

    The footprint of a cylinder of diameter D whose axis makes angle theta with the skin normal
    is an ellipse with minor axis D and major axis D / cos(theta) along the axis' projection.

    >>> round(stab_length([0, 0, 1], [0, 0, 1], [1, 0, 0], diameter_mm=16, margin_mm=4), 6)
    20.0
    """
    d = np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    n = np.asarray(normal, float)
    n = n / np.linalg.norm(n)
    c = np.asarray(cranio_caudal, float)
    c = c / np.linalg.norm(c)
    cos_t = max(abs(float(d @ n)), math.cos(math.radians(_MAX_OBLIQUITY_DEG)))
    a = d - (d @ n) * n  # projection of the axis on the skin plane: the major axis
    if np.linalg.norm(a) < 1e-9:
        return diameter_mm + margin_mm
    a = a / np.linalg.norm(a)
    b = np.cross(n, a)
    ext = diameter_mm * math.sqrt((c @ a) ** 2 / cos_t ** 2 + (c @ b) ** 2)
    return float(ext + margin_mm)


def plan_incisions(plan: Plan, skin, *, spine=None, diameter_mm: float = EXTENDER_DIAMETER_MM,
                   margin_mm: float = INCISION_MARGIN_MM, min_bridge_mm: float = MIN_SKIN_BRIDGE_MM,
                   max_incision_mm: float = MAX_INCISION_MM) -> list[Incision]:
    """Plan the skin incisions of ``plan``'s screws; sets ``plan.incisions`` and warns.

    ``skin`` is a :class:`~spineplan.plan.skin.SkinSurface` of the planning CT. Each screw gets
    ``extra["skin_entry"]`` and ``extra["skin_depth_mm"]`` (bony entry to skin along the axis).
    """
    stabs = []  # per screw: dict
    for i, s in enumerate(plan.screws):
        d = s.direction()
        hit = skin.exit_point(np.asarray(s.entry, float), -d)
        if hit is None:
            plan.warn("skin-outside-scan", f"The {s.side} {s.level} trajectory leaves the scan before it reaches "
                      "the skin: its incision cannot be planned from this CT (scan a wider field of view or "
                      "mark the incision under fluoroscopy).", level=s.level)
            continue
        n = hit.normal
        sup = _superior(spine, s.level)
        c = sup - (sup @ n) * n
        c = c / np.linalg.norm(c) if np.linalg.norm(c) > 1e-9 else np.array([0.0, 0, 1])
        length = stab_length(d, n, c, diameter_mm=diameter_mm, margin_mm=margin_mm)
        obliq = math.degrees(math.acos(min(1.0, abs(float(d @ n)))))
        o, mn = _midline(plan, spine, s.level)
        mid = abs(float((hit.point - o) @ mn))
        s.extra["skin_entry"] = [round(float(v), 3) for v in hit.point]
        s.extra["skin_depth_mm"] = round(hit.depth_mm, 1)
        stabs.append({"i": i, "screw": s, "point": hit.point, "dir": c, "length": length, "normal": n,
                      "depth": hit.depth_mm, "obliquity": obliq, "midline": mid})
    incisions: list[Incision] = []
    for side in ("left", "right"):
        group = sorted((t for t in stabs if t["screw"].side == side), key=lambda t: level_index(t["screw"].level))
        clusters: list[list[dict]] = []
        for t in group:
            if clusters:
                prev, first = clusters[-1][-1], clusters[-1][0]
                gap = float(np.linalg.norm(t["point"] - prev["point"])) - (t["length"] + prev["length"]) / 2
                merged = float(np.linalg.norm(t["point"] - first["point"])) + (t["length"] + first["length"]) / 2
                # Overlapping stabs must be one incision; a narrow bridge is merged only while the
                # merged incision stays minimally invasive (<= max_incision_mm). Otherwise the stabs
                # stay separate and the narrow bridge is reported (the skin is mobile: the surgeon may
                # also shift a stab by a few mm).
                if gap < 0 or (gap < min_bridge_mm and merged <= max_incision_mm):
                    clusters[-1].append(t)
                    continue
                if gap < min_bridge_mm:
                    plan.warn("narrow-skin-bridge", f"The {side} stab incisions of {prev['screw'].level} and "
                              f"{t['screw'].level} leave a skin bridge of only {max(gap, 0):.0f} mm (under "
                              f"{min_bridge_mm:g} mm); they are kept separate because one incision would be "
                              f"{merged:.0f} mm. Shift the stabs apart on the mobile skin or join them if the "
                              "bridge looks at risk.", level=t["screw"].level, severity="info")
            clusters.append([t])
        for cl in clusters:
            incisions.append(_incision(plan, skin, side, cl, min_bridge_mm))
    total = sum(inc.length_mm for inc in incisions)
    plan.incisions = incisions
    plan.extra["incisions_total_mm"] = round(total, 1)
    plan.extra["incisions_count"] = len(incisions)
    for inc in incisions:
        if inc.length_mm > max_incision_mm:
            inc.extra["flag"] = _why_long(inc, max_incision_mm)
            plan.warn("incision-long", inc.extra["flag"], level=inc.extra["levels"][0])
    return incisions


def _incision(plan: Plan, skin, side: str, cl: list[dict], min_bridge_mm: float) -> Incision:
    levels = [t["screw"].level for t in cl]
    if len(cl) == 1:
        t = cl[0]
        start = skin.snap(t["point"] + t["dir"] * t["length"] / 2, t["normal"])
        end = skin.snap(t["point"] - t["dir"] * t["length"] / 2, t["normal"])
        centre = t["point"]
    else:
        a, b = cl[0], cl[-1]  # cranial, caudal
        axis = a["point"] - b["point"]
        axis = axis / np.linalg.norm(axis)
        start = skin.snap(a["point"] + axis * a["length"] / 2, a["normal"])
        end = skin.snap(b["point"] - axis * b["length"] / 2, b["normal"])
        centre = skin.snap((start + end) / 2, (a["normal"] + b["normal"]) / 2)
    length = float(np.linalg.norm(np.asarray(start) - np.asarray(end)))
    extra = {"levels": levels, "centre": [round(float(v), 3) for v in centre],
             "distance_from_midline_mm": round(max(t["midline"] for t in cl), 1),
             "skin_depth_mm": round(max(t["depth"] for t in cl), 1),
             "obliquity_deg": round(max(t["obliquity"] for t in cl), 1),
             "merged": len(cl) > 1, "stab_lengths_mm": [round(t["length"], 1) for t in cl]}
    if len(cl) > 1:
        extra["entry_spacing_mm"] = [round(float(np.linalg.norm(p["point"] - q["point"])), 1)
                                     for p, q in zip(cl[:-1], cl[1:])]
        extra["merge_rule"] = (f"overlapping stabs, or skin bridge < {min_bridge_mm:g} mm while the merged "
                               "incision stays short")
    return Incision(side=side, start=[float(v) for v in start], end=[float(v) for v in end], length_mm=length,
                    screws=[t["i"] for t in cl], extra=extra)


def _why_long(inc: Incision, limit: float) -> str:
    e = inc.extra
    lv = "/".join(e["levels"])
    reasons = []
    if e["merged"]:
        sp = ", ".join(f"{x:g}" for x in e["entry_spacing_mm"])
        reasons.append(f"it joins the skin entries of {lv}, which lie only {sp} mm apart, so separate stab "
                       "incisions would overlap")
    if e["obliquity_deg"] > 35:
        reasons.append(f"the trajectory meets the skin {e['obliquity_deg']:.0f} degrees from perpendicular, "
                       "which lengthens the dilator's footprint")
    if e["distance_from_midline_mm"] > FAR_LATERAL_MM:
        reasons.append(f"the entry is far lateral ({e['distance_from_midline_mm']:.0f} mm from the midline) because "
                       f"the skin lies {e['skin_depth_mm']:.0f} mm from the bony entry (thick soft tissue/fat)")
    if not reasons:
        reasons.append("the extender footprint plus margin exceeds the limit")
    return (f"The {inc.side} incision for {lv} is {inc.length_mm:.0f} mm (over {limit:g} mm): "
            + "; ".join(reasons) + ".")
