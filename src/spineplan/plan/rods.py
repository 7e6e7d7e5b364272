"""Rods through the screw heads, one per side, that can be passed percutaneously.

Geometry
--------
Each screw's **head** (the centre of the polyaxial tulip's rod seat, where the rod's axis
lies) is :data:`TULIP_CENTRE_HEIGHT_MM` above the bony entry, along the screw axis. Per side,
the heads (cranial to caudal) are fitted with a curve in the rod's sagittal plane (the plane
through the heads that contains the mean direction of the screw extenders, i.e. the direction
the surgeon looks down): a circular arc for three heads or more (a pre-bent lordotic rod has a
constant radius), a straight rod for two. The rod runs :data:`ROD_OVERHANG_MM` beyond each end
head, and its length is rounded up to the next catalogue length (:data:`ROD_LENGTHS_MM`), the
extra split equally between the two ends.

Reported per rod (``Rod.extra``): the heads, each head's offset from the rod (3-D distance, and
its in-plane "sagittal" and out-of-plane "coronal" parts), the radius of curvature and the total
bend angle (angle between the end tangents), the bend at each inner head (angle between the
chords to its neighbours), and the depth of the rod below the skin and the fascia along its
path, measured from the CT's skin surface (:mod:`spineplan.plan.skin`) along the mean extender
direction.

Constants are engineering defaults typical of current percutaneous systems; replace them with
the values of the implant system in use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spineplan.levels import level_index
from spineplan.plan.model import Plan, Rod, Screw

#: Height of the rod's axis above the bony entry point along the screw axis. A polyaxial MIS
#: screw seats with its neck at the dorsal cortex; the tulip is ~13-16 mm tall and the rod
#: (5.5 mm) sits in its saddle, putting the rod axis ~10-14 mm above the bone (polyaxial head
#: dimensions in manufacturers' technique guides; see also Lalehzarian et al., "Percutaneous
#: Pedicle Screw Systems", in Minimally Invasive Spine Surgery Techniques, Thieme 2019, ch. 5).
#: We take 12 mm.
TULIP_CENTRE_HEIGHT_MM = 12.0
#: Rod diameter (5.5 mm is the usual thoracolumbar rod of percutaneous systems).
ROD_DIAMETER_MM = 5.5
#: Length of rod left beyond the centre of each end screw head, so the set screw grips the rod
#: fully and the rod cannot slip out of the tulip (~5 mm is the usual allowance in rod-length
#: measurement with percutaneous rod-length calipers).
ROD_OVERHANG_MM = 5.0
#: Catalogue of pre-cut (pre-bent) percutaneous rods: 30-120 mm in 5 mm steps (typical range of
#: pre-cut lordotic rods for 1-3 level percutaneous fixation; longer rods are cut to length).
ROD_LENGTHS_MM: tuple[float, ...] = tuple(float(x) for x in range(30, 121, 5))
#: A head further than this from the rod needs the rod reduced into the tulip (extended-tab
#: reduction screws); beyond it we warn. Engineering default.
MAX_HEAD_OFFSET_MM = 3.0
#: A rod passed less than this below the skin is palpable and risks wound problems in thin
#: patients; we warn. Engineering default.
MIN_ROD_SKIN_DEPTH_MM = 10.0
#: A fitted radius above this is treated as a straight rod (bend < 1 degree over 100 mm).
STRAIGHT_RADIUS_MM = 6000.0
#: Spacing of the points written to ``Rod.points``.
ROD_POINT_SPACING_MM = 5.0


def screw_head(screw: Screw, height_mm: float = TULIP_CENTRE_HEIGHT_MM) -> np.ndarray:
    """Centre of the rod seat: ``height_mm`` above the entry, back along the screw axis."""
    return np.asarray(screw.entry, float) - height_mm * screw.direction()


def catalogue_length(needed_mm: float, lengths=ROD_LENGTHS_MM) -> float | None:
    """Shortest catalogue rod at least ``needed_mm`` long (None if every rod is too short)."""
    ok = [float(x) for x in sorted(lengths) if x >= needed_mm - 1e-6]
    return ok[0] if ok else None


@dataclass
class _Curve:
    centre: np.ndarray  # origin of the plane coordinates (LPS)
    u: np.ndarray  # in-plane axis along the rod (caudal -> cranial)
    p: np.ndarray  # in-plane axis towards the skin (mean extender direction)
    radius: float | None  # None: straight
    c2: np.ndarray | None  # circle centre in (a, b) plane coordinates
    line: tuple[float, float] | None  # b = k * a + q for a straight rod

    def param(self, pts: np.ndarray) -> np.ndarray:
        """Curve parameter of points (angle for an arc, a-coordinate for a line)."""
        rel = np.atleast_2d(pts) - self.centre
        a, b = rel @ self.u, rel @ self.p
        if self.radius is None:
            return a
        return np.unwrap(np.arctan2(b - self.c2[1], a - self.c2[0]))  # type: ignore[index]


def _fit_circle(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Algebraic (Kasa) least-squares circle through 2-D points."""
    A = np.column_stack([a, b, np.ones_like(a)])
    rhs = a * a + b * b
    sol, *_ = np.linalg.lstsq(A, rhs, rcond=None)
    cx, cy = sol[0] / 2, sol[1] / 2
    r = math.sqrt(max(sol[2] + cx * cx + cy * cy, 0.0))
    return np.array([cx, cy]), r


def _frame(heads: np.ndarray, outward: np.ndarray, left: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rod plane: through the heads' centroid, containing the rod direction ``u`` (caudal ->
    cranial), normal to the patient's left axis (the sagittal plane), ``p`` pointing outward."""
    centre = heads.mean(axis=0)
    u = heads[0] - heads[-1]  # caudal -> cranial (heads are sorted cranial first)
    u = u / np.linalg.norm(u)
    n = left - (left @ u) * u
    if np.linalg.norm(n) < 1e-6:  # rod along the left axis: degenerate, use the outward direction
        n = np.cross(u, outward)
    n = n / np.linalg.norm(n)
    p = np.cross(n, u)
    if p @ outward < 0:
        p = -p
    return centre, u, p


def fit_rod(heads, outward, *, left=(1.0, 0.0, 0.0), overhang_mm: float = ROD_OVERHANG_MM, lengths=ROD_LENGTHS_MM) -> dict:
    """Fit a rod through ``heads`` (cranial to caudal, (n, 3), n >= 2).

    ``outward`` is the mean extender direction (from bone towards the skin) and ``left`` the
    patient's left axis (the normal of the sagittal plane the rod is contoured in). Returns a dict with
    ``points`` (rod polyline, cranial to caudal, spaced <= 5 mm), ``length_mm`` (catalogue),
    ``needed_mm``, ``radius_mm`` (None if straight), ``bend_angle_deg``, ``inner_bends_deg``,
    ``head_offsets_mm``, ``sagittal_offsets_mm``, ``coronal_offsets_mm``, ``overhang_mm``
    (actual, per end) and ``plane`` (centre, u, p).
    """
    heads = np.asarray(heads, float)
    if heads.shape[0] < 2:
        raise ValueError("a rod needs at least two screw heads")
    centre, u, p = _frame(heads, np.asarray(outward, float), np.asarray(left, float))
    rel = heads - centre
    a, b = rel @ u, rel @ p
    radius = None
    curve = None
    if heads.shape[0] >= 3:
        c2, r = _fit_circle(a, b)
        if r < STRAIGHT_RADIUS_MM:
            radius = r
            curve = _Curve(centre, u, p, r, c2, None)
    if curve is None:
        k, q = np.polyfit(a, b, 1)
        curve = _Curve(centre, u, p, None, None, (float(k), float(q)))
    # parameters of the end heads' projections and the arc length between them
    t = curve.param(heads)
    if radius is None:
        k = curve.line[0]  # type: ignore[index]
        scale = math.sqrt(1 + k * k)  # arc length per unit of a
    else:
        scale = radius  # arc length per radian
    t_first, t_last = float(t[0]), float(t[-1])
    sign = 1.0 if t_first >= t_last else -1.0  # direction of increasing parameter: caudal -> cranial
    span = abs(t_first - t_last) * scale
    needed = span + 2 * overhang_mm
    length = catalogue_length(needed, lengths)
    if length is None:
        length = needed  # longer than the pre-cut range: a rod cut to length
        cut_to_length = True
    else:
        cut_to_length = False
    over = (length - span) / 2
    # sample from the cranial end (t_first + over) to the caudal end
    n = max(2, int(math.ceil(length / ROD_POINT_SPACING_MM)) + 1)
    s = np.linspace(0.0, length, n)  # arc length from the cranial end
    tt = t_first + sign * over / scale - sign * s / scale
    if radius is None:
        k, q = curve.line  # type: ignore[misc]
        aa = tt
        pts = centre + np.outer(aa, u) + np.outer(k * aa + q, p)
    else:
        pts = centre + np.outer(curve.c2[0] + radius * np.cos(tt), u) + np.outer(curve.c2[1] + radius * np.sin(tt), p)  # type: ignore[index]
    off, sag, cor = head_offsets(heads, pts, u, p)
    bend_total = 0.0 if radius is None else math.degrees(length / radius)
    inner = []
    for i in range(1, heads.shape[0] - 1):
        c1 = heads[i] - heads[i - 1]
        c2_ = heads[i + 1] - heads[i]
        cosang = float(c1 @ c2_ / (np.linalg.norm(c1) * np.linalg.norm(c2_)))
        inner.append(math.degrees(math.acos(max(-1.0, min(1.0, cosang)))))
    return {"points": pts, "length_mm": float(length), "needed_mm": float(needed), "cut_to_length": cut_to_length,
            "radius_mm": None if radius is None else float(radius), "bend_angle_deg": float(bend_total),
            "inner_bends_deg": inner, "head_offsets_mm": off, "sagittal_offsets_mm": sag,
            "coronal_offsets_mm": cor, "overhang_mm": float(over), "plane": (centre, u, p)}


def head_offsets(heads, polyline, u, p, *, resolution_mm: float = 0.05):
    """Distance of each head from a polyline (densified), split into in-plane and normal parts."""
    heads = np.atleast_2d(np.asarray(heads, float))
    poly = np.asarray(polyline, float)
    dense = [poly[0:1]]
    for a, b in zip(poly[:-1], poly[1:]):
        n = max(1, int(math.ceil(np.linalg.norm(b - a) / resolution_mm)))
        dense.append(a + np.outer(np.arange(1, n + 1) / n, b - a))
    dense = np.vstack(dense)
    normal = np.cross(u, p)
    off, sag, cor = [], [], []
    for h in heads:
        d = dense - h
        i = int(np.argmin(np.einsum("ij,ij->i", d, d)))
        v = h - dense[i]
        off.append(float(np.linalg.norm(v)))
        c = float(v @ normal)
        cor.append(abs(c))
        sag.append(float(np.linalg.norm(v - c * normal)))
    return off, sag, cor


def plan_rods(plan: Plan, *, ct=None, skin=None, spine=None, overhang_mm: float = ROD_OVERHANG_MM, lengths=ROD_LENGTHS_MM,
              head_height_mm: float = TULIP_CENTRE_HEIGHT_MM) -> list[Rod]:
    """Plan one rod per side through the heads of ``plan``'s screws; sets ``plan.rods`` and warns.

    ``spine`` (optional) gives the levels' left axes (the rod is contoured in their mean
    sagittal plane; default the LPS x axis). ``skin`` is a :class:`spineplan.plan.skin.SkinSurface` (or ``ct`` to build one) for the
    depth check; without either the depth check is skipped (and the rod says so).
    """
    if skin is None and ct is not None:
        from spineplan.plan.skin import SkinSurface

        skin = SkinSurface(ct)
    rods: list[Rod] = []
    for side in ("left", "right"):
        idx = [i for i, s in enumerate(plan.screws) if s.side == side]
        idx.sort(key=lambda i: level_index(plan.screws[i].level))
        if len(idx) < 2:
            if len(idx) == 1:
                sc = plan.screws[idx[0]]
                plan.warn("single-screw-side", f"Only one screw on the {side} side ({sc.level}): no rod planned "
                          f"on that side.", level=sc.level, severity="info")
            continue
        screws = [plan.screws[i] for i in idx]
        heads = np.array([screw_head(s, head_height_mm) for s in screws])
        outward = -np.mean([s.direction() for s in screws], axis=0)
        left = np.array([1.0, 0.0, 0.0])
        if spine is not None and all(s.level in spine for s in screws):
            left = np.mean([spine[s.level].frame.axes[0] for s in screws], axis=0)
        fit = fit_rod(heads, outward, left=left, overhang_mm=overhang_mm, lengths=lengths)
        levels = [s.level for s in screws]
        span = f"{levels[0]}-{levels[-1]}"
        extra = {"levels": levels, "screws": idx, "heads": [[round(float(v), 3) for v in h] for h in heads],
                 "head_height_mm": head_height_mm, "diameter_mm": ROD_DIAMETER_MM,
                 "needed_length_mm": round(fit["needed_mm"], 1), "overhang_mm": round(fit["overhang_mm"], 1),
                 "radius_mm": None if fit["radius_mm"] is None else round(fit["radius_mm"], 1),
                 "contour": "straight" if fit["radius_mm"] is None else "circular arc (sagittal)",
                 "bend_angle_deg": round(fit["bend_angle_deg"], 1),
                 "inner_bends_deg": [round(x, 1) for x in fit["inner_bends_deg"]],
                 "head_offsets_mm": [round(x, 2) for x in fit["head_offsets_mm"]],
                 "sagittal_offsets_mm": [round(x, 2) for x in fit["sagittal_offsets_mm"]],
                 "coronal_offsets_mm": [round(x, 2) for x in fit["coronal_offsets_mm"]]}
        if fit["cut_to_length"]:
            plan.warn("rod-cut-to-length", f"The {side} rod ({span}) needs {fit['needed_mm']:.0f} mm, longer than the "
                      f"pre-cut rods ({max(lengths):g} mm): cut and bend a rod to length.", level=levels[0])
        for lv, off in zip(levels, fit["head_offsets_mm"]):
            if off > MAX_HEAD_OFFSET_MM:
                plan.warn("rod-head-offset", f"The {side} {lv} screw head lies {off:.1f} mm from the {side} rod "
                          f"(limit {MAX_HEAD_OFFSET_MM:g} mm): the rod will need to be reduced into this head "
                          "(use a reduction screw) or the screw realigned.", level=lv)
        if skin is not None:
            _depth_check(plan, skin, fit["points"], outward, side, span, levels[0], extra)
        else:
            extra["depth_check"] = "not done (no CT given)"
        rods.append(Rod(side=side, points=[list(map(float, q)) for q in fit["points"]], length_mm=fit["length_mm"],
                        extra=extra))
    plan.rods = rods
    return rods


def _depth_check(plan: Plan, skin, points, outward, side, span, level, extra) -> None:
    from spineplan.plan.skin import FAT_MUSCLE_THRESHOLD_HU

    depths, fascia_margin, above = [], [], 0
    for q in points:
        hit = skin.exit_point(q, outward)
        if hit is None:
            continue
        depths.append(hit.depth_mm)
        in_fat = float(skin.ct.sample(q[None], order=1)[0]) < FAT_MUSCLE_THRESHOLD_HU
        if in_fat or not skin.inside(q[None])[0] >= 0.5:
            above += 1
        elif hit.fascia_depth_mm is not None:
            fascia_margin.append(hit.fascia_depth_mm)
    if not depths:
        extra["depth_check"] = "not done (the skin above the rod is outside the scan)"
        return
    extra["min_skin_depth_mm"] = round(min(depths), 1)
    extra["mean_skin_depth_mm"] = round(float(np.mean(depths)), 1)
    extra["min_depth_below_fascia_mm"] = round(min(fascia_margin), 1) if fascia_margin else None
    extra["points_above_fascia"] = above
    extra["depth_check"] = "done"
    if min(depths) < MIN_ROD_SKIN_DEPTH_MM:
        plan.warn("rod-shallow", f"The {side} rod ({span}) passes {min(depths):.0f} mm below the skin at its "
                  f"shallowest (minimum {MIN_ROD_SKIN_DEPTH_MM:g} mm): it may be palpable or irritate the wound; "
                  "consider lower-profile heads or seating the screws deeper.", level=level)
    if above:
        plan.warn("rod-above-fascia", f"{above} of {len(points)} points of the {side} rod ({span}) lie in the "
                  "subcutaneous fat, above the fascia: pass the rod under the fascia (seat the heads deeper or "
                  "check the head height).", level=level)
