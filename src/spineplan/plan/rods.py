"""Rods through the screw heads, one per side, that can be passed percutaneously.

Geometry
--------
Each screw's **head** (the centre of the polyaxial tulip's rod seat, where the rod's axis
lies) is :data:`TULIP_CENTRE_HEIGHT_MM` above the bony entry, along the screw axis. Per side,
the heads (cranial to caudal) are fitted with a curve in the rod's sagittal plane (through the
heads, containing the rod's direction, normal to the patient's left axis): a straight rod for
two heads; a circular arc (a pre-bent lordotic rod has a constant radius) when one passes within
:data:`PREBENT_TOLERANCE_MM` of every head; otherwise (four heads or more) a cubic contour, the
rod being bent to the heads with a rod bender. Given the vertebrae, the rod bends no more than the
spine's own curve across the construct plus :data:`ROD_EXTRA_BEND_DEG`; heads that a more bent rod
would have reached are then left off it and reported. The rod runs :data:`ROD_OVERHANG_MM` beyond each end
head, and its length is rounded up to the next catalogue length (:data:`ROD_LENGTHS_MM`), the
extra split equally between the two ends.

Reported per rod (``Rod.extra``): the heads, each head's offset from the rod (3-D distance, and
its in-plane "sagittal" and out-of-plane "coronal" parts), the contour, the radius of an arc, the total
bend angle (angle between the end tangents), the bend at each inner head (angle between the
chords to its neighbours), and the depth of the rod below the skin and the fascia along its
path, measured from the CT's skin surface (:mod:`spineplan.plan.skin`) along the mean extender
direction.

Constants are engineering defaults typical of current percutaneous systems; replace them with
the values of the implant system in use.
"""

from __future__ import annotations

import math
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
#: Usable angulation of a polyaxial head (half-cone). Polyaxial pedicle screws typically allow
#: ~25-30 degrees each way; we allow 20 so that the head does not sit at its limit. Engineering
#: default from manufacturers' specifications; set it for the implant system in use.
POLYAXIAL_USABLE_ANGLE_DEG = 20.0
#: How far a tulip's rod seat can move sideways by angulating the head:
#: TULIP_CENTRE_HEIGHT_MM * sin(20 deg) = 4.1 mm. A head further from the rod than this needs the
#: rod reduced into it (extended-tab reduction screws) or the rod bent to it; we warn.
MAX_HEAD_OFFSET_MM = round(TULIP_CENTRE_HEIGHT_MM * math.sin(math.radians(POLYAXIAL_USABLE_ANGLE_DEG)), 1)
#: A rod passed less than this below the skin is palpable and risks wound problems in thin
#: patients; we warn. Engineering default.
MIN_ROD_SKIN_DEPTH_MM = 10.0
#: A fitted radius above this is treated as a straight rod (bend < 1 degree over 100 mm).
STRAIGHT_RADIUS_MM = 6000.0
#: A rod longer than the pre-cut range is cut to a length rounded up to this step.
CUT_LENGTH_STEP_MM = 5.0
#: A pre-bent (constant-radius) rod is used when it passes within this distance of every head in
#: the sagittal plane; otherwise (4+ heads) the rod is contoured to the heads. Engineering default.
PREBENT_TOLERANCE_MM = 1.0
#: A rod follows the spine's sagittal curve across the construct: its bend over the heads may exceed
#: the lordosis (or kyphosis) between the end vertebrae (the angle between their frames' z axes in
#: the rod's plane) by at most this much. Three heads always lie on some circle, but one through a
#: head that sits a few mm deeper than its neighbours is a 60 deg bend over 75 mm that no surgeon
#: would pass percutaneously (segmental lumbar lordosis is ~5-20 deg per level, Damasceno LHF et
#: al., Eur Spine J 2006;15:1026-1034); such a head is left off the rod and reported (a reduction
#: screw, or the screw realigned, takes it up). Engineering default.
ROD_EXTRA_BEND_DEG = 10.0
#: The dense model curve extends this far beyond the end heads (longer than any overhang).
_EXTEND_MM = 100.0
#: Spacing of the points written to ``Rod.points``.
ROD_POINT_SPACING_MM = 5.0


def screw_head(screw: Screw, height_mm: float = TULIP_CENTRE_HEIGHT_MM) -> np.ndarray:
    """Centre of the rod seat: ``height_mm`` above the entry, back along the screw axis."""
    return np.asarray(screw.entry, float) - height_mm * screw.direction()


def sagittal_angle_deg(z1, z2, left) -> float:
    """Angle (deg, >= 0) between two vertebrae's superior axes projected on the plane normal to
    ``left`` (their lordosis or kyphosis in that plane)."""
    n = np.asarray(left, float) / np.linalg.norm(left)
    p = [np.asarray(z, float) - (np.asarray(z, float) @ n) * n for z in (z1, z2)]
    cosang = float(p[0] @ p[1] / (np.linalg.norm(p[0]) * np.linalg.norm(p[1])))
    return math.degrees(math.acos(max(-1.0, min(1.0, cosang))))


def catalogue_length(needed_mm: float, lengths=ROD_LENGTHS_MM) -> float | None:
    """Shortest catalogue rod at least ``needed_mm`` long (None if every rod is too short)."""
    ok = [float(x) for x in sorted(lengths) if x >= needed_mm - 1e-6]
    return ok[0] if ok else None


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


def fit_rod(heads, outward, *, left=(1.0, 0.0, 0.0), overhang_mm: float = ROD_OVERHANG_MM, lengths=ROD_LENGTHS_MM,
            max_bend_deg: float | None = None) -> dict:
    """Fit a rod through ``heads`` (cranial to caudal, (n, 3), n >= 2).

    ``outward`` is the mean extender direction (from bone towards the skin) and ``left`` the
    patient's left axis (the normal of the sagittal plane the rod is contoured in).
    ``max_bend_deg``: the largest bend of the rod between its end heads (see
    :data:`ROD_EXTRA_BEND_DEG`); a curve through the heads that bends more is replaced by the
    least-squares circular arc of that bend. Returns a dict with
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
    contour, radius, point_of, t_heads = _contour(a, b, None if max_bend_deg is None else math.radians(max_bend_deg))
    # dense curve, cranial -> caudal, over the heads and 100 mm beyond each end
    sgn = 1.0 if t_heads[0] >= t_heads[-1] else -1.0
    ext = _EXTEND_MM / (radius if radius is not None else 1.0)
    span_t = abs(t_heads[0] - t_heads[-1]) + 2 * ext
    n_dense = int(math.ceil(span_t * (radius or 1.0) / 0.02)) + 2
    t = np.linspace(t_heads[0] + sgn * ext, t_heads[-1] - sgn * ext, n_dense)
    da, db = point_of(t)
    s_dense = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(da), np.diff(db)))])
    order = np.argsort(t)
    s_heads = np.interp(t_heads, t[order], s_dense[order])
    span = float(s_heads[-1] - s_heads[0])
    needed = span + 2 * overhang_mm
    length = catalogue_length(needed, lengths)
    cut_to_length = length is None
    if cut_to_length:  # longer than the pre-cut range: a rod cut (and bent) to length
        length = math.ceil(needed / CUT_LENGTH_STEP_MM) * CUT_LENGTH_STEP_MM
    over = (length - span) / 2
    n = max(2, int(math.ceil(length / ROD_POINT_SPACING_MM)) + 1)
    sq = np.linspace(s_heads[0] - over, s_heads[-1] + over, n)
    qa, qb = np.interp(sq, s_dense, da), np.interp(sq, s_dense, db)
    pts = centre + np.outer(qa, u) + np.outer(qb, p)
    off, sag, cor = head_offsets(heads, pts, u, p)
    # total bend: angle between the tangents at the two ends of the rod
    i0, i1 = np.searchsorted(s_dense, [sq[0], sq[-1]])
    i0, i1 = min(max(i0, 1), len(t) - 2), min(max(i1, 1), len(t) - 2)
    tan0 = np.array([da[i0 + 1] - da[i0 - 1], db[i0 + 1] - db[i0 - 1]])
    tan1 = np.array([da[i1 + 1] - da[i1 - 1], db[i1 + 1] - db[i1 - 1]])
    cosb = float(tan0 @ tan1 / (np.linalg.norm(tan0) * np.linalg.norm(tan1)))
    bend_total = math.degrees(math.acos(max(-1.0, min(1.0, cosb))))
    inner = []
    for i in range(1, heads.shape[0] - 1):
        c1 = heads[i] - heads[i - 1]
        c2_ = heads[i + 1] - heads[i]
        cosang = float(c1 @ c2_ / (np.linalg.norm(c1) * np.linalg.norm(c2_)))
        inner.append(math.degrees(math.acos(max(-1.0, min(1.0, cosang)))))
    return {"points": pts, "length_mm": float(length), "needed_mm": float(needed), "cut_to_length": cut_to_length,
            "contour": contour, "radius_mm": None if radius is None else float(radius),
            "bend_angle_deg": float(bend_total), "inner_bends_deg": inner, "head_offsets_mm": off,
            "sagittal_offsets_mm": sag, "coronal_offsets_mm": cor, "overhang_mm": float(over),
            "plane": (centre, u, p)}


def _contour(a: np.ndarray, b: np.ndarray, max_bend: float | None = None):
    """In-plane rod model through the heads' plane coordinates (a along the rod, b outward).

    Returns (contour name, radius or None, point_of(t) -> (a, b), t of the heads). Two heads: a
    straight rod. Otherwise a circular arc (a pre-bent rod) when it passes within
    :data:`PREBENT_TOLERANCE_MM` of every head; else, for four heads or more, a cubic contour
    (the rod bent to the heads with a rod bender). A curve bending more than ``max_bend``
    (radians) between the end heads is replaced by the least-squares arc of that bend.
    """
    n = len(a)

    def line():
        k, q = np.polyfit(a, b, 1)
        return "straight", None, (lambda t: (t, k * t + q)), a.copy()

    def arc(c2, r, name="circular arc (pre-bent)"):
        th = np.unwrap(np.arctan2(b - c2[1], a - c2[0]))
        return name, r, (lambda t: (c2[0] + r * np.cos(t), c2[1] + r * np.sin(t))), th

    if n == 2:
        return line()
    c2, r = _fit_circle(a, b)
    resid = float(np.max(np.abs(np.hypot(a - c2[0], b - c2[1]) - r)))
    if n >= 4 and resid > PREBENT_TOLERANCE_MM:
        coef = np.polyfit(a, b, 3)
        slope = np.polyval(np.polyder(coef), [a[0], a[-1]])
        if max_bend is None or abs(math.atan(slope[0]) - math.atan(slope[1])) <= max_bend:
            return ("contoured to the heads (cubic, bend with a rod bender)", None,
                    (lambda t: (t, np.polyval(coef, t))), a.copy())
    elif r >= STRAIGHT_RADIUS_MM:
        return line()
    else:
        name, r, point_of, th = arc(c2, r)
        if max_bend is None or abs(th[0] - th[-1]) <= max_bend:
            return name, r, point_of, th
    if max_bend is None or max_bend <= 0.0:
        return line()
    c2, r = _fit_arc_of_bend(a, b, max_bend)
    if r >= STRAIGHT_RADIUS_MM:
        return line()
    return arc(c2, r, f"circular arc (pre-bent; capped at {math.degrees(max_bend):.0f} deg between the end heads, "
                      f"the spine's curve + {ROD_EXTRA_BEND_DEG:g}: see the head offsets)")


def _fit_arc_of_bend(a: np.ndarray, b: np.ndarray, bend: float) -> tuple[np.ndarray, float]:
    """Least-squares circle through the plane points whose arc between the first and last point
    turns by ``bend`` (radians): radius and centre fitted together under that constraint."""
    from scipy.optimize import least_squares

    chord = math.hypot(a[-1] - a[0], b[-1] - b[0])
    mid = np.array([(a[0] + a[-1]) / 2.0, (b[0] + b[-1]) / 2.0])
    along = np.array([a[-1] - a[0], b[-1] - b[0]]) / max(chord, 1e-9)
    normal = np.array([-along[1], along[0]])
    # the bulge of the points (their mean offset from the end chord) sets the side of the centre
    bulge = float(np.mean((np.column_stack([a, b]) - mid) @ normal))
    side = -1.0 if bulge >= 0 else 1.0

    def circle(params):
        shift = params[0]  # the end chord slides along its normal; the bend fixes r from the chord
        r = chord / (2.0 * math.sin(bend / 2.0))
        c = mid + normal * (shift + side * r * math.cos(bend / 2.0))
        return c, r

    def resid(params):
        c, r = circle(params)
        return np.hypot(a - c[0], b - c[1]) - r

    sol = least_squares(resid, [0.0])
    return circle(sol.x)


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
        max_bend = None
        if spine is not None and all(s.level in spine for s in screws):
            left = np.mean([spine[s.level].frame.axes[0] for s in screws], axis=0)
            max_bend = sagittal_angle_deg(spine[screws[0].level].frame.axes[2], spine[screws[-1].level].frame.axes[2],
                                          left) + ROD_EXTRA_BEND_DEG
        fit = fit_rod(heads, outward, left=left, overhang_mm=overhang_mm, lengths=lengths, max_bend_deg=max_bend)
        levels = [s.level for s in screws]
        span = f"{levels[0]}-{levels[-1]}"
        extra = {"levels": levels, "screws": idx, "heads": [[round(float(v), 3) for v in h] for h in heads],
                 "head_height_mm": head_height_mm, "diameter_mm": ROD_DIAMETER_MM,
                 "needed_length_mm": round(fit["needed_mm"], 1), "overhang_mm": round(fit["overhang_mm"], 1),
                 "radius_mm": None if fit["radius_mm"] is None else round(fit["radius_mm"], 1),
                 "contour": fit["contour"],
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
                plan.warn("rod-head-offset", f"The {side} {lv} screw head lies {off:.1f} mm from the {side} rod, "
                          f"more than a polyaxial head can take up by angulating ({MAX_HEAD_OFFSET_MM:g} mm at "
                          f"{POLYAXIAL_USABLE_ANGLE_DEG:g} deg): reduce the rod into this head (reduction screw), "
                          "bend the rod to it, or realign the screw.", level=lv)
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
