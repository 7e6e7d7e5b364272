"""Pedicle screw planning: for each level and side, the screw with the best purchase that obeys
every hard safety rule, heads aligned for one percutaneous rod per side.

The search and the rules are described in :mod:`spineplan.plan._search`; every constant is a
:class:`~spineplan.plan.settings.PlannerSettings` field with its source. When no screw obeys the
rules for a pedicle the plan gets a ``no-safe-screw`` warning (severity ``danger``) giving the
rule that failed and the best smaller screw that would obey them (outside the catalogue), or
none; a breaching screw is never placed. Every placed screw is graded (Gertzbein-Robbins,
:mod:`spineplan.safety`) against the planning mask: the vertebra's label with enclosed marrow
cavities filled and detached islands dropped (:func:`spineplan.plan._search.planning_mask`; what
was changed per level is in ``plan.extra["planner"]["planning_mask"]``), cross-checked against
the CT (rule ``ct-bone``; ``ct_soft_fraction`` per screw).

Planning from an automatic label map (the product's real use: only a CT is given) adds what the
label cannot be trusted for: a label whose outer layer is mostly soft tissue is peeled by a voxel,
pedicle cores missing from the label are filled where the CT shows marrow, a pedicle the Spine
could not measure (or measured implausibly far out) is seeded from the mask, the facet-joint zone
is at least one voxel wide, and trajectories stay in an anatomical band of medial angles around
the level's mean (:mod:`spineplan.plan._search`, :class:`~spineplan.plan.settings.PlannerSettings`).

Research software for planning support, not a certified medical device.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from spineplan._progress import progress
from spineplan.errors import PlanningError
from spineplan.levels import level_above, level_index, sort_levels
from spineplan.plan._search import ranked as _rank
from spineplan.plan.catalogue import ScrewCatalogue
from spineplan.plan.model import Plan, Screw
from spineplan.plan.settings import PlannerSettings
from spineplan.volume import Volume

#: Sizes tried below the catalogue when no catalogue screw fits, to name "the best smaller
#: option": diameters from this value up to the catalogue's smallest, lengths from SMALL_LENGTH_MM.
SMALL_DIAMETER_MM = 2.5
SMALL_LENGTH_MM = 15.0


def plan_screws(ct: Volume, spine, levels: Iterable[str], *, sides=("left", "right"),
                settings: PlannerSettings | None = None, catalogue: ScrewCatalogue | None = None) -> Plan:
    """Plan pedicle screws for ``levels`` (e.g. ``["L3", "L4", "L5"]``) on both ``sides``.

    ``spine``: a :class:`spineplan.anatomy.model.Spine` on the CT's grid (masks, frames and,
    when measured, pedicles). Returns a :class:`~spineplan.plan.model.Plan` with the screws
    (graded, extras: ``purchase``, ``mean_hu``, ``isthmus_width_mm``, ``skin_entry``,
    ``head_offset_mm``, ``size_limited_by`` / ``length_limited_by`` (why the screw is not thicker /
    longer, e.g. "80 % of isthmus (8.1 mm)", "pedicle margin 12 mm from entry", "tip clearance
    (4 mm from the anterior cortex)") with ``size_limit`` (the same as {"diameter"|"length":
    {"rule", "at_mm", "text"}}), ...) and warnings.
    """
    from spineplan.plan._search import RULE_TEXT, make_context, search_pedicle
    from spineplan.safety import ENTRY_ZONE_RULE

    st = settings or PlannerSettings()
    cat = catalogue or ScrewCatalogue.default()
    sides = tuple(sides)
    for s in sides:
        if s not in ("left", "right"):
            raise PlanningError(f"Unknown side {s!r}: use 'left', 'right' or both.")
    levels = sort_levels(dict.fromkeys(levels))
    plan = Plan()
    present = [lv for lv in levels if lv in spine]
    for lv in levels:
        if lv not in spine:
            plan.warn("level-missing", f"{lv} is not in the scan's vertebrae ({', '.join(spine.names)}); "
                      "no screws were planned there.", level=lv, severity="danger")
    if not present:
        raise PlanningError(f"None of the requested levels ({', '.join(levels)}) is in the scan "
                            f"(found {', '.join(spine.names) or 'none'}). Choose levels the CT covers.")
    if not ct.same_grid(spine.labels):
        raise PlanningError("The Spine's label map is not on the CT's grid; build the Spine from this CT.")
    labels = np.asarray(spine.labels.array)
    sizes = cat.all_sizes()
    results: dict[tuple[str, str], object] = {}
    contexts = {}
    from spineplan.plan._search import Corridor

    corridor = Corridor.of(ct, labels, st)
    masks: dict[str, np.ndarray] = {}

    def mask_of(name):  # each level's mask once (it is also the level below's "above")
        if name not in masks:
            masks[name] = spine.mask(name)
        return masks[name]

    for lv in progress(present, desc="planning screws"):
        v = spine[lv]
        if not v.complete:
            plan.warn("vertebra-incomplete", f"{lv} is cut by the edge of the scan: its screws rest on partial "
                      "anatomy; check them on the images.", level=lv)
        above = level_above(lv, spine.names)
        ctx = make_context(ct, v, mask_of(lv), labels, None if above is None else mask_of(above), st)
        masks.pop(above, None)  # levels are planned top down: the one above is not needed again
        contexts[lv] = ctx
        if above is None:
            plan.warn("facet-unchecked", f"No vertebra above {lv} in the scan: the facet joint of the level above "
                      "could not be checked.", level=lv, severity="info")

        def grade(opt, side_, ctx=ctx, lv=lv):
            from spineplan.safety._grade import grade_segment

            return grade_segment(opt.entry, opt.tip, opt.diameter_mm, ctx.field, ctx.frame, side_,
                                 entry_zone_mm=st.entry_zone_mm, facet=ctx.facet, head_radius_mm=st.head_radius_mm,
                                 head_height_mm=st.head_height_mm, level=lv)

        for side in sides:
            res = search_pedicle(ctx, side, st, sizes, grade_fn=grade, corridor=corridor)
            results[(lv, side)] = res
            if res.options and st.min_body_depth_fraction > 0:
                # deep enough into the body first (PlannerSettings.min_body_depth_fraction)
                frac = [_body_depth_fraction(ctx, o, v) for o in res.options]
                deep = [o for o, f in zip(res.options, frac) if f is None or f >= st.min_body_depth_fraction]
                if deep:
                    res.options = deep
            if not res.options:
                why = res.detail or RULE_TEXT.get(res.failed_rule, res.failed_rule)
                width = res.isthmus_width_mm
                smaller = _smaller_option(ctx, side, st, cat, grade, corridor, width)
                dmin = min(cat.diameters_mm)
                msg = (f"No safe screw for {lv} {side}: {why} (isthmus width {width:.1f} mm, "
                       f"margin {st.margin_mm:g} mm along the pedicle and {st.body_margin:g} mm in the body, diameter <= {100 * st.max_diameter_fraction:.0f} % of the isthmus; "
                       f"the smallest catalogue screw, {dmin:g} mm, needs {dmin + 2 * st.margin_mm:g} mm of bone across the "
                       f"pedicle ({dmin:g} + 2 x {st.margin_mm:g} mm) and an isthmus of at least "
                       f"{dmin / st.max_diameter_fraction:.1f} mm). ")
                msg += (f"The best smaller option that obeys the rules would be {smaller[0]:g} x {smaller[1]:g} mm "
                        "(not in the catalogue)." if smaller else
                        "No smaller screw obeys the rules either; consider another fixation at this level.")
                plan.warn("no-safe-screw", msg, level=lv, severity="danger", side=side, rule=res.failed_rule,
                          isthmus_width_mm=_r(width), smaller_option=None if smaller is None else list(smaller),
                          candidates_after_rule=res.counts)
    # ---- rod alignment per side, then screws
    for side in sides:
        lvs = [lv for lv in present if results.get((lv, side)) is not None and results[(lv, side)].options]
        choice, report = _align([results[(lv, side)].options for lv in lvs], st)
        for j, lv in enumerate(lvs):
            res = results[(lv, side)]
            opt = res.options[choice[j]]
            best = res.options[0]
            ctx = contexts[lv]
            med, cra = ctx.frame.angles_of(opt.direction, side)
            saf = opt.safety
            extra = {
                "purchase": _r(opt.purchase, 1), "ranked_purchase": _r(_rank(opt), 1), "mean_hu": _r(opt.mean_hu, 1),
                "isthmus_width_mm": _r(res.isthmus_width_mm, 2), "isthmus_width_source": res.width_source,
                "corridor_width_mm": _r(res.isthmus_width_sdf_mm, 2),
                "diameter_to_isthmus": _r(opt.diameter_mm / res.isthmus_width_mm, 3) if res.isthmus_width_mm else None,
                "pedicle_margin_mm": _r(opt.pedicle_margin_mm, 2), "body_margin_mm": _r(opt.body_margin_mm, 2),
                "body_segment_from_mm": _r(opt.body_start_mm, 1),
                "ct_soft_fraction": _r(opt.ct_soft_fraction, 3),
                "breach_mm": _r(saf.breach_mm, 2), "breach_direction": saf.breach_direction,
                "facet_violation": saf.facet_violation, "entry_zone_mm": st.entry_zone_mm,
                "skin_entry": None if opt.skin is None else [round(float(x), 2) for x in opt.skin],
                "skin_offset_mm": _r(opt.skin_offset_mm, 1), "entry_lateral_to_sap_mm": _r(opt.entry_sap_mm, 1),
                "head": [round(float(x), 2) for x in opt.head],
                "head_offset_mm": _r(report["offset_after"][j], 2) if report else None,
                "grading": "planning mask",
            }
            if opt.diameter_trade:
                extra["diameter_trade"] = opt.diameter_trade
            lim = res.size_limit_of(opt) if res.size_limit_of is not None else None
            if lim:
                # why the screw is not larger (spineplan.plan._search.size_limit)
                extra["size_limited_by"] = lim["diameter"]["text"]
                extra["length_limited_by"] = lim["length"]["text"]
                extra["size_limit"] = lim
            if choice[j] != 0:
                loss = 100.0 * (1 - _rank(opt) / max(_rank(best), 1e-9))
                extra["alignment_trade"] = {"purchase_lost_pct": _r(loss, 1),
                                            "offset_before_mm": _r(report["offset_before"][j], 2),
                                            "offset_after_mm": _r(report["offset_after"][j], 2),
                                            "side_offset_gain_mm": _r(report["total_before"] - report["total_after"], 2)}
            depth = _body_depth_fraction(ctx, opt, spine[lv])
            extra["body_depth_pct"] = None if depth is None else _r(100 * depth, 0)
            if depth is not None and depth < st.min_body_depth_fraction:
                plan.warn("short-screw", f"The {lv} {side} screw ({opt.diameter_mm:g} x {opt.length_mm:g} mm) reaches only "
                          f"{100 * depth:.0f} % of the vertebral body's depth (under "
                          f"{100 * st.min_body_depth_fraction:.0f} %): no deeper screw obeys the rules on this pedicle "
                          "(see its length limit). Check the trajectory; a longer screw holds better.",
                          level=lv, side=side)
            if opt.skin is None:
                plan.warn("skin-not-found", f"{lv} {side}: the trajectory leaves the scan before reaching the skin; "
                          "the percutaneous corridor was checked only inside the field of view.", level=lv,
                          severity="info", side=side)
            plan.screws.append(Screw(level=lv, side=side, entry=[float(x) for x in opt.entry],
                                     tip=[float(x) for x in opt.tip], diameter_mm=opt.diameter_mm,
                                     length_mm=opt.length_mm, medial_angle_deg=med, cranial_angle_deg=cra,
                                     grade=saf.grade, min_margin_mm=float(saf.min_margin_mm), extra=extra))
        if report and report["changed"]:
            traded = [f"{lvs[int(j)]} {v:.1f} %" for j, v in report["loss_pct"].items()]
            plan.warn("rod-alignment-trade",
                      f"{side.capitalize()} rod: gave up ranked purchase (purchase discounted for off-anatomical angles; "
                      f"{', '.join(traded)}) to line up the screw heads: "
                      f"summed head offset from a smooth rod line {report['total_before']:.1f} -> "
                      f"{report['total_after']:.1f} mm (gain {report['total_before'] - report['total_after']:.1f} mm; "
                      f"beyond the {st.max_head_offset_mm:g} mm a polyaxial tulip takes up: "
                      f"{report['excess_before']:.1f} -> {report['excess_after']:.1f} mm).",
                      severity="info", side=side,
                      purchase_lost_pct={lvs[int(j)]: v for j, v in report["loss_pct"].items()},
                      alignment_gain_mm=_r(report["total_before"] - report["total_after"], 2))
        if report:
            worst = int(np.argmax(report["offset_after"]))
            if report["offset_after"][worst] > st.max_head_offset_mm:
                plan.warn("rod-alignment", f"{side.capitalize()} rod: the {lvs[worst]} head lies "
                          f"{report['offset_after'][worst]:.1f} mm from a smooth rod line through the other heads; "
                          "the rod must be contoured or passed with care.", level=lvs[worst], side=side)
    plan.screws.sort(key=lambda s: (level_index(s.level), s.side))
    plan.extra["planner"] = {"settings": st.to_dict(), "catalogue": cat.name, "entry_zone_rule":
                             ENTRY_ZONE_RULE.format(zone=st.entry_zone_mm),
                             "planning_mask": {lv: c.cache.get("mask-cleaning") for lv, c in contexts.items()}}
    return plan


def _body_depth_fraction(ctx, opt, vertebra) -> float | None:
    """How far the screw's tip reaches into the vertebral body: its distance anterior of the
    body's posterior wall over the body's AP depth (both in the vertebra frame); None when either
    is unknown."""
    from spineplan.plan._search import posterior_wall_y

    depth = (vertebra.measurements or {}).get("body_ap_depth_mm")
    wall = posterior_wall_y(ctx)
    if wall is None or depth is None or not np.isfinite(depth) or depth <= 0:
        return None
    tip_y = float(ctx.frame.to_local(np.asarray(opt.tip, float)[None])[0, 1])
    return (wall - tip_y) / float(depth)


def _r(x, nd=2):
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def _smaller_option(ctx, side, st: PlannerSettings, cat: ScrewCatalogue, grade, corridor, width=None):
    """Largest screw below the catalogue that obeys every rule, as (diameter, length), or None.
    ``width``: the isthmus width the 80 % rule uses (sizes above it are not searched)."""
    from spineplan.plan._search import search_pedicle

    dmin = min(cat.diameters_mm)
    diam = [d for d in np.arange(SMALL_DIAMETER_MM, dmin, 0.5)]
    lengths = sorted(set(cat.lengths_mm) | set(np.arange(SMALL_LENGTH_MM, min(cat.lengths_mm), 5.0)))
    sizes = [(float(d), float(l_)) for d in diam for l_ in lengths]
    sizes += [(float(d), float(l_)) for d in cat.diameters_mm for l_ in lengths if l_ < min(cat.lengths_mm)]
    if width is not None and np.isfinite(width):  # the 80 % rule refuses the others anyway
        sizes = [(d, l_) for d, l_ in sizes if d <= st.max_diameter_fraction * width + 1e-6]
    if not sizes:
        return None
    res = search_pedicle(ctx, side, st, sizes, grade_fn=grade, max_options=1, corridor=corridor)
    if not res.options:
        return None
    o = res.options[0]
    return (o.diameter_mm, o.length_mm)


def _rod_residuals(heads: np.ndarray) -> np.ndarray:
    """Distance of each head from a smooth rod line through all heads: a straight line for 3
    heads, a parabola (in the cranio-caudal parameter) for 4 or more; zero for 2 or fewer."""
    n = len(heads)
    if n <= 2:
        return np.zeros(n)
    c = heads.mean(axis=0)
    _, _, vt = np.linalg.svd(heads - c)
    s = (heads - c) @ vt[0]
    deg = 1 if n == 3 else 2
    A = np.vander(s, deg + 1)
    coef, *_ = np.linalg.lstsq(A, heads, rcond=None)
    return np.linalg.norm(heads - A @ coef, axis=1)


def _align(opts: list[list], st: PlannerSettings):
    """Choose one option per level (index into each list, 0 = best ranked) trading at most
    ``max_purchase_loss_for_alignment`` of a screw's ranked purchase (:func:`_rank`: purchase
    discounted for off-anatomical angles, the value the options are ordered by) for a smaller
    summed head offset beyond what a polyaxial tulip takes up (``max_head_offset_mm``), never for a
    thinner screw than the best ranked one nor one with ``max_purchase_loss_for_alignment`` less
    thread engagement (diameter x length). No trade while every head lies within that tolerance."""
    n = len(opts)
    choice = [0] * n
    if n == 0:
        return choice, None
    heads = lambda ch: np.array([opts[i][ch[i]].head for i in range(n)])  # noqa: E731
    tol = st.max_head_offset_mm
    excess = lambda res_: float(np.maximum(res_ - tol, 0.0).sum())  # noqa: E731
    before = _rod_residuals(heads(choice))
    if n >= 3 and excess(before) > 0:
        # never a thinner screw for alignment, nor one whose thread engagement (diameter x length,
        # the pullout model of Chapman et al. 1996, see max_purchase_loss_for_diameter) is lower by
        # more than the same bound: a polyaxial tulip takes up a few mm of offset, while a thinner
        # or shorter screw holds less for the whole life of the fixation (measured on the abdomen
        # CT: a 6 x 30 mm screw of denser bone ranked within 10 % of the 6 x 45 mm best one)
        loss = st.max_purchase_loss_for_alignment
        allowed = [[k for k, o in enumerate(ol) if _rank(o) >= (1 - loss) * _rank(ol[0])
                    and o.diameter_mm >= ol[0].diameter_mm - 1e-6
                    and o.diameter_mm * o.length_mm >= (1 - loss) * ol[0].diameter_mm * ol[0].length_mm]
                   for ol in opts]
        cur = excess(before)
        for _ in range(4):
            improved = False
            for i in range(n):
                best_k, best_v = choice[i], cur
                for k in allowed[i]:
                    trial = list(choice)
                    trial[i] = k
                    v = excess(_rod_residuals(heads(trial)))
                    if v < best_v - 1e-6:
                        best_k, best_v = k, v
                if best_k != choice[i]:
                    choice[i], cur, improved = best_k, best_v, True
            if not improved:
                break
        if excess(before) - cur < st.min_alignment_gain_mm:
            choice = [0] * n
    after = _rod_residuals(heads(choice))
    loss = {i: 100.0 * (1 - _rank(opts[i][choice[i]]) / max(_rank(opts[i][0]), 1e-9)) for i in range(n) if choice[i]}
    return choice, {"offset_before": before, "offset_after": after, "total_before": float(before.sum()),
                    "total_after": float(after.sum()), "excess_before": excess(before), "excess_after": excess(after),
                    "changed": any(choice), "loss_pct": {str(i): round(v, 2) for i, v in loss.items()}}
