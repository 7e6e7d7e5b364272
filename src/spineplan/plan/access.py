"""Needle access for vertebroplasty and kyphoplasty: skin -> pedicle -> anterior third of the body.

For each treated level (levels with a Genant fracture grade >= 1, or the levels the user names)
:func:`plan_access` finds needle paths with the screw planner's machinery
(:mod:`spineplan.plan._search`: the vertebra's signed distance field, candidate axes around the
pedicle isthmus, the percutaneous corridor and skin search) and grades each needle like a screw
(:func:`spineplan.safety.grade_screw`, the needle being a thin screw of the gauge's outer
diameter). Order of preference:

1. **Unipedicular** transpedicular: one needle through one pedicle whose tip reaches the
   mid-sagittal plane (within :data:`MIDLINE_TOLERANCE_MM`) in the anterior third of the body,
   so that one needle fills both halves (Kim et al. 2002). Both sides are tried; the better
   path wins.
2. **Bipedicular** transpedicular: one needle per pedicle, each tip in the anterior third of
   its own half of the body (two :class:`~spineplan.plan.model.Access` entries).
3. **Extrapedicular** (parapedicular) in the thoracic spine, for a side whose pedicle is too
   narrow for the needle plus the bone margin (or has no safe transpedicular path): the needle
   passes lateral to the pedicle, between it and the rib head, and enters the body at its
   postero-lateral corner (Boszczyk et al. 2005). The corridor must not meet the pedicle, the
   rib or any other bone on its way back to the skin.

Every path keeps the planner's bone margin (:attr:`PlannerSettings.margin_mm`) around the
needle from the end of the entry zone to the tip, and the tip stays
:attr:`PlannerSettings.anterior_cortex_clearance_mm` behind the anterior cortex along the
needle. The skin point is the needle path extended back to the skin
(:class:`spineplan.plan.skin.SkinSurface`).

Cement: an estimate of :data:`CEMENT_FILL_STRENGTH` of the vertebral body's volume (the fill
that restored strength in Molloy et al. 2003), with :data:`CEMENT_FILL_STIFFNESS` (restored
stiffness) as the upper end of the range; both in ``Access.extra``. Fill by the surgeon's
judgement under fluoroscopy; the estimate is a guide, not a target.

Sources:

- Jensen ME, Evans AJ, Mathis JM, et al. Percutaneous polymethylmethacrylate vertebroplasty in
  the treatment of osteoporotic vertebral body compression fractures: technical aspects.
  AJNR Am J Neuroradiol 1997;18(10):1897-1904 (transpedicular needle to the anterior third).
- Kim AK, Jensen ME, Dion JE, et al. Unilateral transpedicular percutaneous vertebroplasty:
  initial experience. Radiology 2002;222(3):737-741 (unipedicular needle, tip near the midline).
- Boszczyk BM, Bierschneider M, Hauck S, et al. Transcostovertebral kyphoplasty of the mid and
  high thoracic spine. Eur Spine J 2005;14(10):992-999 (extrapedicular thoracic access between
  the rib head and the pedicle).
- Molloy S, Mathis JM, Belkoff SM. The effect of vertebral body percentage fill on mechanical
  behavior during percutaneous vertebroplasty. Spine 2003;28(14):1549-1554 (16.2 % fill restored
  strength, 29.8 % stiffness, on average).
- ISO 9626:2016 needle tubing: 11 gauge 3.05 mm, 13 gauge 2.41 mm outer diameter
  (:data:`spineplan.safety.NEEDLE_OD_MM`).

Research software for planning support, not a certified medical device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spineplan.levels import region, sort_levels
from spineplan.plan.model import Access, PlanWarning
from spineplan.plan.settings import PlannerSettings

PROCEDURES = ("vertebroplasty", "kyphoplasty")
#: The unipedicular needle's tip must lie within this distance (mm) of the vertebra's
#: mid-sagittal plane ("reaching the midline", Kim et al. 2002).
MIDLINE_TOLERANCE_MM = 5.0
#: The tip lies in the anterior third of the vertebral body (Jensen et al. 1997): between the
#: anterior body edge and this fraction of the body's antero-posterior depth behind it.
ANTERIOR_FRACTION = 1.0 / 3.0
#: Ideal tip height: the body's mid-height (vertebra frame z = 0); the search prefers tips near it
#: with this weight per mm (relative to 1 per mm of distance from the ideal lateral position).
HEIGHT_WEIGHT = 0.5
#: For bipedicular needles the ideal tip lies this fraction of the half-width lateral of the
#: midline (the centre of its own half), with a weak weight: any tip in the anterior third of its
#: half is acceptable.
BIPEDICULAR_LATERAL_FRACTION = 0.4
BIPEDICULAR_LATERAL_WEIGHT = 0.3
#: Cement volume as a fraction of the vertebral body's volume: the mean fill that restored
#: strength (16.2 %) and stiffness (29.8 %) of fractured osteoporotic bodies (Molloy et al. 2003).
CEMENT_FILL_STRENGTH = 0.162
CEMENT_FILL_STIFFNESS = 0.298
CEMENT_SOURCE = ("Molloy S, Mathis JM, Belkoff SM. Spine 2003;28:1549-1554: mean fill of 16.2 % of the "
                 "body volume restored strength, 29.8 % stiffness")
#: Search around the pedicle: through-point grid half-width/step (mm), cone half-angle/step (deg)
#: about the pedicle axis, and the extra medial angle (deg) at which the unipedicular cone is
#: centred (a needle must converge more than the pedicle to reach the midline).
SEARCH_HALFWIDTH_MM, SEARCH_STEP_MM = 2.0, 1.0
SEARCH_CONE_DEG, SEARCH_ANGLE_STEP_DEG = 16.0, 2.0
UNIPEDICULAR_EXTRA_MEDIAL_DEG = 10.0
#: Extrapedicular search: medial angles (deg) and the cranial cone, through points in the body's
#: postero-lateral corner (mm inside its lateral and posterior edges).
EXTRAPEDICULAR_MEDIAL_DEG = (20.0, 50.0)
EXTRAPEDICULAR_INSET_MM = 6.0
#: An extrapedicular entry must lie on the body, at most this far (mm) behind its posterior wall.
EXTRAPEDICULAR_ENTRY_BEHIND_WALL_MM = 3.0
#: How far the profile along each candidate runs from the entry (mm).
AHEAD_MM = 80.0
#: Candidates checked (corridor to the skin, then grading) per side and approach, best first.
CHECK_CANDIDATES = 40


@dataclass
class _Path:
    side: str
    approach: str
    entry: np.ndarray
    tip: np.ndarray
    direction: np.ndarray
    cost: float
    skin: np.ndarray | None = None
    safety: object = None


@dataclass
class _Body:
    """Vertebral body geometry in the vertebra frame (mm)."""

    y_anterior: float  # local y of the anterior body edge (mid-sagittal)
    depth: float  # antero-posterior depth
    half_width: float
    volume_ml: float


def first_true(b: np.ndarray) -> np.ndarray:
    """Index of the first True in each row of ``b``, or the row length where there is none."""
    has = b.any(axis=1)
    return np.where(has, np.argmax(b, axis=1), b.shape[1])


def _body(v, mask: np.ndarray, ct) -> _Body:
    idx = np.argwhere(mask)
    loc = v.frame.to_local(ct.index_to_world(idx[:: max(1, len(idx) // 60000)]))
    central = (np.abs(loc[:, 0]) < 6.0) & (np.abs(loc[:, 2]) < 6.0)
    ya = float(loc[central, 1].min()) if central.any() else float(loc[:, 1].min())
    depth = v.measurements.get("body_ap_depth_mm") if v.measurements else None
    if depth is None or not np.isfinite(depth):
        depth = -2.0 * ya  # the frame origin is the body centroid
    in_body = loc[:, 1] <= ya + depth
    body = loc[in_body & (np.abs(loc[:, 2]) < 25.0)]
    hw = float(np.percentile(np.abs(body[:, 0]), 98)) if len(body) else 20.0
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0 * max(1, len(idx) // 60000)
    # the subsample step scales the count back; exact enough for a cement estimate
    vol = float(np.sum(in_body)) * voxel_ml
    return _Body(ya, float(depth), hw, vol)


def _score(ctx, body: _Body, side: str, approach: str, entry, dirs, ts, f, st, r_mm):
    """Best tip (index into ts) and its cost for each axis; cost inf when no admissible tip."""
    from spineplan.plan._search import PROFILE_SLACK_MM

    ez = int(np.ceil(st.entry_zone_mm / st.profile_step_mm))
    after = f[:, ez:]
    run = np.minimum.accumulate(-after, axis=1)
    exit_idx = first_true(after >= 0)
    s_exit = ts[ez:][np.minimum(exit_idx, after.shape[1] - 1)]
    s_exit = np.where(exit_idx < after.shape[1], s_exit, ts[-1])
    t = ts[ez:]
    pts = entry[:, None, :] + t[None, :, None] * dirs[:, None, :]
    loc = ctx.frame.to_local(pts)
    x, y, z = loc[..., 0], loc[..., 1], loc[..., 2]
    ok = run >= r_mm + st.margin_mm + PROFILE_SLACK_MM
    ok &= t[None, :] <= (s_exit - st.anterior_cortex_clearance_mm)[:, None]
    y_front = body.y_anterior + ANTERIOR_FRACTION * body.depth
    ok &= y <= y_front
    y_ideal = body.y_anterior + 0.5 * ANTERIOR_FRACTION * body.depth
    s = 1.0 if side == "left" else -1.0
    if approach == "unipedicular":
        ok &= np.abs(x) <= MIDLINE_TOLERANCE_MM
        cost = np.abs(x) + np.abs(y - y_ideal) + HEIGHT_WEIGHT * np.abs(z)
    else:
        ok &= s * x >= -1.0  # stay in its own half (1 mm slack at the midline)
        x_ideal = s * BIPEDICULAR_LATERAL_FRACTION * body.half_width
        cost = BIPEDICULAR_LATERAL_WEIGHT * np.abs(x - x_ideal) + np.abs(y - y_ideal) + HEIGHT_WEIGHT * np.abs(z)
    cost = np.where(ok, cost, np.inf)
    k = np.argmin(cost, axis=1)
    best = cost[np.arange(len(k)), k]
    return t[k], best


def _entries(ctx, pts, dirs, st):
    """Entry points (where each axis enters bone walking back from its through-point)."""
    from spineplan.plan._search import BACK_MM

    inside = ctx.field.sample(pts) < 0
    pts, dirs = pts[inside], dirs[inside]
    step = st.profile_step_mm
    tb = np.arange(0.0, BACK_MM + 1e-9, step)
    fb = ctx.field.sample_rays(pts, -dirs, tb)
    k = first_true(fb > 0)
    ok = (k < len(tb)) & (k > 0)
    pts, dirs, fb, k = pts[ok], dirs[ok], fb[ok], k[ok]
    rows = np.arange(len(k))
    f0, f1 = fb[rows, k - 1], fb[rows, k]
    te = tb[k - 1] + step * (-f0) / np.maximum(f1 - f0, 1e-6)
    return pts - te[:, None] * dirs, dirs


def _candidates(ctx, body: _Body, side: str, approach: str, st: PlannerSettings, r_mm: float, corridor,
                grade_fn) -> list[_Path]:
    """Admissible needle paths for one side and approach, best (lowest cost) first."""
    from spineplan.plan._search import candidate_axes, pedicle_seed, recentre, skin_and_corridor

    s = 1.0 if side == "left" else -1.0
    if approach == "extrapedicular":
        c_local = np.array([s * (body.half_width - EXTRAPEDICULAR_INSET_MM),
                            body.y_anterior + body.depth - EXTRAPEDICULAR_INSET_MM, 0.0])
        centre = ctx.frame.to_world(c_local)
        lo, hi = EXTRAPEDICULAR_MEDIAL_DEG
        pts, dirs = candidate_axes(ctx, side, centre, 0.5 * (lo + hi), 0.0, st, halfwidth=3.0, step=1.5,
                                   cone=0.5 * (hi - lo), astep=SEARCH_ANGLE_STEP_DEG)
    else:
        centre, med0, cra0, _ = pedicle_seed(ctx, side)
        if centre is None:
            return []
        # candidates around the seed (the measured pedicle) and around the planner's recentred
        # pedicle line (which corrects a seed that is off on a coarse CT)
        seeds = [(centre, med0, cra0), recentre(ctx, side, centre, med0, cra0, st)]
        extra_med = UNIPEDICULAR_EXTRA_MEDIAL_DEG if approach == "unipedicular" else 0.0
        axes = [candidate_axes(ctx, side, c, m + extra_med, cr, st, halfwidth=SEARCH_HALFWIDTH_MM,
                               step=SEARCH_STEP_MM, cone=SEARCH_CONE_DEG, astep=SEARCH_ANGLE_STEP_DEG)
                for c, m, cr in seeds]
        pts = np.concatenate([a[0] for a in axes])
        dirs = np.concatenate([a[1] for a in axes])
    entry, dirs = _entries(ctx, pts, dirs, st)
    if approach == "extrapedicular" and len(entry):
        # the entry is on the body's postero-lateral wall, not on the pedicle or posterior arch
        y_e = ctx.frame.to_local(entry)[:, 1]
        keep = y_e <= body.y_anterior + body.depth + EXTRAPEDICULAR_ENTRY_BEHIND_WALL_MM
        entry, dirs = entry[keep], dirs[keep]
    if not len(entry):
        return []
    ts = np.arange(0.0, AHEAD_MM + 1e-9, st.profile_step_mm)
    f = ctx.field.sample_rays(entry, dirs, ts)
    t_tip, cost = _score(ctx, body, side, approach, entry, dirs, ts, f, st, r_mm)
    good = np.isfinite(cost)
    order = np.flatnonzero(good)[np.argsort(cost[good], kind="stable")]
    out: list[_Path] = []
    for i in order[:CHECK_CANDIDATES * 4]:
        if len(out) >= 1:
            break
        e, d = entry[i], dirs[i]
        # a path that leaves the scan before the skin has no skin point (never the scan's edge)
        skin, blocked = skin_and_corridor(corridor, e[None], d[None], np.array([r_mm]), st, fov_edge_is_skin=False)
        if blocked[0]:
            continue
        p = _Path(side, approach, e, e + t_tip[i] * d, d, float(cost[i]),
                  None if np.isnan(skin[0, 0]) else skin[0])
        p.safety = grade_fn(p)
        if p.safety.grade != "A":
            continue
        out.append(p)
    return out


def fractured_levels(spine, min_grade: int = 1) -> list[str]:
    """Levels whose Genant grade (``Vertebra.fracture["grade"]``) is at least ``min_grade``."""
    out = []
    for v in spine.vertebrae:
        g = (v.fracture or {}).get("grade")
        if g is not None and g >= min_grade:
            out.append(v.name)
    return out


class _Needle:
    """The needle as the thin screw that :func:`spineplan.safety.grade_screw` grades."""

    def __init__(self, level, side, entry, tip, od):
        self.level, self.side, self.entry, self.tip, self.diameter_mm = level, side, entry, tip, od


APPROACHES = ("auto", "unipedicular", "bipedicular")


def plan_access(ct, spine, levels=None, *, procedure: str = "kyphoplasty", gauge: int = 11,
                settings: PlannerSettings | None = None, skin=None,
                approach: str = "auto") -> tuple[list[Access], list[PlanWarning]]:
    """Needle paths for vertebroplasty/kyphoplasty at ``levels`` (default: every level with a
    Genant fracture grade >= 1 in ``spine``).

    ``gauge``: needle gauge (11 or 13 typical; outer diameter per ISO 9626). ``settings``: the
    screw planner's :class:`PlannerSettings` (bone margin, anterior-cortex clearance, entry zone,
    corridor and skin thresholds). ``skin``: a :class:`spineplan.plan.skin.SkinSurface` of ``ct``
    to reuse (built when omitted). ``approach``: ``"auto"`` (unipedicular when a path reaches the
    midline, else bipedicular), ``"unipedicular"`` (only; a level without such a path gets a
    warning) or ``"bipedicular"`` (one needle per side, e.g. the surgeon's routine for balloon
    kyphoplasty). Thoracic sides too narrow for a transpedicular needle fall back to the
    extrapedicular path except with ``"unipedicular"``. Returns the access entries (two per level when bipedicular)
    and warnings (``no-safe-access`` danger, ``level-missing`` danger, ``access-extrapedicular``
    and ``access-bipedicular`` info, ``not-fractured`` info).
    """
    from spineplan.errors import PlanningError
    from spineplan.plan._search import Corridor, make_context
    from spineplan.safety import NEEDLE_OD_MM, grade_screw

    if procedure not in PROCEDURES:
        raise PlanningError(f"Unknown procedure {procedure!r}: use 'vertebroplasty' or 'kyphoplasty'.")
    if approach not in APPROACHES:
        raise PlanningError(f"Unknown access approach {approach!r}: use 'auto', 'unipedicular' or 'bipedicular'.")
    if int(gauge) not in NEEDLE_OD_MM:
        raise PlanningError(f"Unknown needle gauge {gauge}: use one of {sorted(NEEDLE_OD_MM)} (11 or 13 are usual).")
    gauge = int(gauge)
    od = NEEDLE_OD_MM[gauge]
    r_mm = 0.5 * od
    st = settings or PlannerSettings()
    warnings: list[PlanWarning] = []
    chosen = levels is not None
    if levels is None:
        levels = fractured_levels(spine)
    elif isinstance(levels, str):
        from spineplan.levels import level_range

        levels = level_range(levels)
    levels = sort_levels(dict.fromkeys(levels))
    if not levels:
        return [], warnings
    if not ct.same_grid(spine.labels):
        raise PlanningError("The Spine's label map is not on the CT's grid; build the Spine from this CT.")
    labels = np.asarray(spine.labels.array)
    corridor = Corridor.of(ct, labels, st)
    if skin is None:
        from spineplan.plan.skin import SkinSurface

        skin = SkinSurface(ct)
    out: list[Access] = []
    for lv in levels:
        if lv not in spine:
            warnings.append(PlanWarning("level-missing", f"{lv} is not in the scan's vertebrae "
                                        f"({', '.join(spine.names)}); no {procedure} access was planned there.",
                                        level=lv, severity="danger"))
            continue
        v = spine[lv]
        frac = dict(v.fracture or {})
        if chosen and not frac.get("grade"):
            warnings.append(PlanWarning("not-fractured", f"{lv} was chosen for {procedure} but has no Genant "
                                        "fracture grade in this scan; check the indication on MRI/STIR.",
                                        level=lv, severity="info"))
        mask = spine.mask(lv)
        ctx = make_context(ct, v, mask, labels, None, st)
        body = _body(v, mask, ct)

        def grade(p, lv=lv, mask=mask, v=v):
            return grade_screw(_Needle(lv, p.side, p.entry, p.tip, od), mask, ct, frame=v.frame,
                               entry_zone_mm=st.entry_zone_mm)

        def width(side, v=v):
            ped = v.pedicles.get(side) if v.pedicles else None
            return float(ped.isthmus_width_mm) if ped is not None and np.isfinite(ped.isthmus_width_mm) else None

        need = od + 2.0 * st.margin_mm
        thoracic = region(lv) == "thoracic"
        paths: list[_Path] = []
        uni = []
        for side in ("left", "right") if approach != "bipedicular" else ():
            w = width(side)
            if w is not None and w < need:
                continue
            uni += _candidates(ctx, body, side, "unipedicular", st, r_mm, corridor, grade)
        if uni:
            paths = [min(uni, key=lambda p: p.cost)]
        elif approach == "unipedicular":
            warnings.append(PlanWarning(
                "no-safe-access", f"No unipedicular {gauge} G needle path reaches the midline of {lv} with "
                f"{st.margin_mm:g} mm of bone around the needle; consider bipedicular access.", level=lv,
                severity="danger"))
        else:
            for side in ("left", "right"):
                w = width(side)
                narrow = w is not None and w < need
                cands = [] if narrow else _candidates(ctx, body, side, "bipedicular", st, r_mm, corridor, grade)
                if not cands and thoracic:
                    cands = _candidates(ctx, body, side, "extrapedicular", st, r_mm, corridor, grade)
                    if cands:
                        why = (f"the pedicle ({w:.1f} mm) is narrower than the needle plus margins ({need:.1f} mm)"
                               if narrow else "no safe transpedicular path was found")
                        warnings.append(PlanWarning(
                            "access-extrapedicular", f"{lv} {side}: extrapedicular (parapedicular) needle between "
                            f"the rib head and the pedicle because {why}; confirm the rib head and pleura on the "
                            "images.", level=lv, severity="info", extra={"side": side}))
                if cands:
                    paths.append(cands[0])
                else:
                    wtxt = "unmeasured" if w is None else f"{w:.1f} mm"
                    warnings.append(PlanWarning(
                        "no-safe-access", f"No safe {gauge} G needle path for {lv} {side}: no trajectory keeps "
                        f"{st.margin_mm:g} mm of bone around the needle ({od:.2f} mm) to the anterior third "
                        f"(isthmus width {wtxt}) with a bone-free corridor to the skin. Consider a thinner "
                        "needle or the other side.", level=lv, severity="danger", extra={"side": side}))
            if len(paths) == 2 and approach == "auto":
                warnings.append(PlanWarning(
                    "access-bipedicular", f"{lv}: no unipedicular path reaches the midline with a safe margin; "
                    "two needles (one per side) planned.", level=lv, severity="info"))
        n = len(paths)
        cement = CEMENT_FILL_STRENGTH * body.volume_ml
        for p in paths:
            sk = skin.exit_point(p.entry, -p.direction)
            skin_pt = sk.point if sk is not None else p.skin
            skin_seen = skin_pt is not None
            if not skin_seen:
                skin_pt = p.entry - 60.0 * p.direction
                warnings.append(PlanWarning("skin-outside-scan", f"{lv} {p.side}: the needle's skin point lies "
                                            "outside the scan; the skin point shown is 60 mm behind the entry.",
                                            level=lv, severity="warning"))
            med, cra = v.frame.angles_of(p.direction, p.side)
            tip_loc = v.frame.to_local(p.tip)
            saf = p.safety
            extra = {
                "approach": p.approach, "needle_od_mm": round(od, 2),
                "grade": saf.grade, "breach_mm": round(float(saf.breach_mm), 2),
                "min_margin_mm": round(float(saf.min_margin_mm), 2),
                "medial_angle_deg": round(med, 1), "cranial_angle_deg": round(cra, 1),
                "skin_to_target_mm": round(float(np.linalg.norm(p.tip - skin_pt)), 1) if skin_seen else None,
                "bone_path_mm": round(float(np.linalg.norm(p.tip - p.entry)), 1),
                "tip_from_midline_mm": round(abs(float(tip_loc[0])), 1),
                "tip_depth_fraction": round((float(tip_loc[1]) - body.y_anterior) / body.depth, 3),
                "body_volume_ml": round(body.volume_ml, 1),
                "cement_ml": round(cement / n, 1),
                "cement_ml_level": round(cement, 1),
                "cement_ml_range_level": [round(cement, 1), round(CEMENT_FILL_STIFFNESS * body.volume_ml, 1)],
                "cement_source": CEMENT_SOURCE,
                "genant_grade": frac.get("grade"), "fracture_type": frac.get("type"),
                "height_loss_pct": frac.get("height_loss_pct"),
                "isthmus_width_mm": None if width(p.side) is None else round(width(p.side), 2),
                "grading": "vertebra mask (needle as a thin screw)",
            }
            out.append(Access(level=lv, procedure=procedure, side=p.side,
                              skin=[float(x) for x in skin_pt], entry=[float(x) for x in p.entry],
                              target=[float(x) for x in p.tip], gauge=gauge, extra=extra))
    return out, warnings
