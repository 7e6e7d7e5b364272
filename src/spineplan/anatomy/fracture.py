"""Vertebral compression fractures: Genant's semi-quantitative grade from measured body heights.

Genant HK, Wu CY, van Kuijk C, Nevitt MC. "Vertebral fracture assessment using a
semiquantitative technique." J Bone Miner Res 1993;8(9):1137-1148. A vertebra is graded by its
height reduction: grade 0 normal (< 20 %), 1 mild (20-25 %), 2 moderate (25-40 %), 3 severe
(> 40 %); the type is wedge (anterior height reduced), biconcave (middle height reduced) or
crush (the whole body, including the posterior height, reduced).

Height loss % = 100 * (1 - min(anterior, middle) / reference), where the reference is the
body's own posterior height (extended to the posterior wall when the front is lower), or the
height expected from its neighbours (the posterior heights of the nearest complete levels above
and below, interpolated linearly by level) when the own posterior height is clearly shorter than
that (``NEIGHBOUR_REFERENCE_MIN_LOSS_PCT``, more with
a neighbour on one side only: ``SINGLE_NEIGHBOUR_EXTRA_PCT``). The
neighbour reference is what reveals a crush fracture, whose own posterior height is reduced
too. The reference used is reported.

Heights that no fracture can give are not graded: a posterior wall clearly taller than the
neighbours' (a fracture only shortens a body), or a posterior height far below both the anterior
and the middle one (not a Genant pattern; an endplate read inside the body). Such a body gets no
grade and a warning to check it, rather than a false "severe fracture" or a false "normal". A
grade measured in a frame that is out of line with a neighbour's is marked uncertain, and so is a
grade whose height loss lies within the measurement error (one voxel's share of the height) of a
Genant boundary: the grades the error spans are reported, and a grade 0 of at least 15 % loss within
reach of grade 1 is reported as borderline.
"""

from __future__ import annotations

from spineplan.anatomy.model import Spine, Vertebra
from spineplan.levels import level_index

#: Genant et al. (1993) grade boundaries, in % height reduction: < 20 normal, 20-25 grade 1,
#: 25-40 grade 2, > 40 grade 3.
GENANT_GRADE_BOUNDS_PCT = (20.0, 25.0, 40.0)
#: A posterior height this far (%) below the neighbours' expected height means the posterior
#: wall collapsed too: a crush fracture (Genant et al. 1993, "crush" = whole-body reduction),
#: the same 20 % as the grade-1 threshold.
CRUSH_POSTERIOR_LOSS_PCT = 20.0
#: The neighbours' expected height replaces the body's own posterior height as the reference
#: only when the posterior height is this much (%) shorter than expected, i.e. clearly more than
#: the height measurement error (about 5 % at 3 mm voxels, benchmarks/bench_measure.py);
#: otherwise a neighbour measured a little too tall would fake a fracture.
NEIGHBOUR_REFERENCE_MIN_LOSS_PCT = 10.0
#: With a neighbour on one side only (a level at the end of the scan or next to an ungradable one),
#: no interpolation between levels is possible, and adjacent levels differ in posterior body
#: height by up to ~10-15 % at the thoracolumbar junction (T10-T12 ~22-25 mm, L1-L4 ~27-28 mm;
#: Panjabi 1991, 1992): the posterior shortfall must exceed the threshold above by this much more (%)
#: before that neighbour becomes the reference (a T12 measured against L1 alone looked crushed).
SINGLE_NEIGHBOUR_EXTRA_PCT = 10.0
#: Measurement error of the height loss, in voxels along the body's axis: the loss is read as
#: ``loss +- LOSS_ERROR_VOXELS x (voxel along the axis / reference height) x 100`` percentage points,
#: and a grade whose error band crosses a Genant boundary is marked uncertain with the grades the
#: band spans (a grade 0 whose band reaches 20 % is reported as a possible grade 1). Measured with
#: the phantoms' own labels (``benchmarks/bench_fracture.py --labels --seed 2``, 30 phantoms, 146
#: graded levels): |error| p95 / one voxel's share of the height = 0.9 at 0.8 mm, 0.65 at 1 mm,
#: 0.95 at 1.5 mm, 0.65 at 2 mm, 0.7 at 2.5 mm, 0.75 at 3 mm; one voxel covers them all. (Grade 1
#: spans only 5 points: at 1 mm voxels, ~4 points, every grade 1 is marked uncertain - Genant grade
#: 1 is also the least reproducible between readers, Genant et al. 1993.)
LOSS_ERROR_VOXELS = 1.0
#: A grade-0 reading is reported as borderline (a possible grade 1) only from this height loss (%)
#: up: Genant's "grade 0.5", a questionable deformity short of 20 % (Genant et al. 1993, as
#: described by Wang, Quant Imaging Med Surg 2019;9:146-150), and the 15 % height reduction from
#: which visual semiquantitative methods call a deformity (Eur Spine J 2003;12 Suppl 2:S104-S112).
#: Below it, normal bodies (their natural wedge and concavity) at 2-3 mm voxels would all be
#: flagged: the real abdomen CT's intact L2-L4 read 10-11 % +- 12 points.
BORDERLINE_MIN_LOSS_PCT = 15.0
#: Heights are implausible when the posterior height exceeds that of every gradable neighbour within
#: :data:`MAX_NEIGHBOUR_GAP` levels by more than this (%): adjacent bodies differ by ~3-5 % per level
#: (Panjabi 1991, 1992), heights are measured to ~5 % at 3 mm voxels (benchmarks/bench_measure.py),
#: and a fracture never makes a body taller. (Every neighbour: one crushed neighbour must not make
#: an intact body look too tall; and only with neighbours on both sides: a lone neighbour may be the
#: fractured one.) The chest CT's own T8 (2.5 mm slices) measured 24.3 mm posterior against T6 21.4
#: and T9 19.9 mm (+14 %), with a middle height of 13.1 mm read inside the body: graded a false
#: Genant 3.
POSTERIOR_EXCESS_MAX_PCT = 10.0
#: ... or when the posterior height is less than this fraction of both the anterior and the middle
#: height. The most wedged normal body, L5 in lordosis, has a posterior/anterior height ratio of
#: about 0.85 (Panjabi 1992); a posterior wedge this strong with an intact front is not one of
#: Genant's types (wedge, biconcave, crush) but a misplaced endplate.
POSTERIOR_MIN_RATIO = 0.7
#: An unfractured body's endplates are at most this many degrees apart. A Genant grade 1 wedge
#: fracture (20-25 % height loss) at L1-L2 has a wedge angle of 7-11 deg lying down (11 deg sitting;
#: J Orthop Surg Res 2023;18:254, table 1), a grade 2 12-17 deg: a body with wider-apart endplates
#: but heights that show no fracture has misread endplates. At 2-3 mm voxels such levels gave
#: the largest C-arm errors (benchmarks/bench_carm.py: chest T4, T5, T8-T10, 10-26 deg).
WEDGE_UNFRACTURED_MAX_DEG = 10.0
#: ... except L5, whose normal lordotic wedge is the largest of the spine (its anterior height
#: exceeds the posterior by ~15 %, Panjabi 1992): the segment limit of the lower lumbar levels.
WEDGE_UNFRACTURED_MAX_L5_DEG = 15.0
#: Levels not graded: C1/C2 have no comparable body, S1 is the sacrum.
UNGRADED_LEVELS = ("C1", "C2", "S1")
#: Neighbours farther than this many levels away are not used for the expected height.
MAX_NEIGHBOUR_GAP = 2

_HEIGHTS = ("anterior_height_mm", "middle_height_mm", "posterior_height_mm")


def genant_grade(height_loss_pct: float) -> int:
    """Genant grade (0-3) of a height loss in percent.

    >>> [genant_grade(p) for p in (10, 20, 24.9, 25, 39.9, 41)]
    [0, 1, 1, 2, 2, 3]
    """
    g1, g2, g3 = GENANT_GRADE_BOUNDS_PCT
    if height_loss_pct < g1:
        return 0
    if height_loss_pct < g2:
        return 1
    if height_loss_pct <= g3:
        return 2
    return 3


def borderline(fracture: dict | None) -> bool:
    """A grade-0 reading that may be a grade 1: its height loss is at least
    :data:`BORDERLINE_MIN_LOSS_PCT` and its error band reaches 20 %."""
    fr = fracture or {}
    return (fr.get("grade") == 0 and float(fr.get("height_loss_pct") or 0.0) >= BORDERLINE_MIN_LOSS_PCT
            and (fr.get("grade_range") or [0, 0])[1] >= 1)


def grade_text(fracture: dict | None) -> str | None:
    """Short text of a vertebra's grade for tables and pictures ("Genant 2 crush (31 %)", with
    what makes it uncertain), or None when there is nothing to report (grade 0, cut, S1)."""
    fr = fracture or {}
    g, loss = fr.get("grade"), fr.get("height_loss_pct")
    rng = fr.get("grade_range") or [g, g]
    if g is None:
        return "fracture not graded (heights implausible)" if str(fr.get("reason", "")).startswith(
            "heights implausible") else None
    if g == 0:
        return (f"borderline, possible Genant 1 ({loss:.1f} % height loss, within the measurement error)"
                if borderline(fr) else None)
    why = []
    if rng[0] != rng[1]:
        why.append(f"grades {rng[0]}-{rng[1]} within the measurement error")
    if fr.get("uncertain") and rng[0] == rng[1]:
        why.append("uncertain")
    return f"Genant {g} {fr.get('type', '')} ({loss:.0f} % height loss{'; ' + ', '.join(why) if why else ''})"


def endplate_wedge_deg(v: Vertebra) -> float | None:
    """Angle (deg) between the measured superior and inferior endplate planes of ``v``, or None."""
    import numpy as np

    ep = getattr(v, "endplates", None) or {}
    try:
        a, b = (np.asarray(ep[k]["normal"], float) for k in ("superior", "inferior"))
    except (KeyError, TypeError):
        return None
    c = abs(float(a @ b)) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(min(1.0, c))))


def _wedge_limit(name: str) -> float:
    return WEDGE_UNFRACTURED_MAX_L5_DEG if name in ("L5", "L6") else WEDGE_UNFRACTURED_MAX_DEG


def endplates_misread(spine: Spine) -> dict[str, float]:
    """{name: wedge deg} of the complete levels whose endplates are wider apart than an
    unfractured body's (:data:`WEDGE_UNFRACTURED_MAX_DEG`) while no fracture is graded there:
    their endplate planes (the C-arm's true AP and lateral, the heights) are probably misread."""
    out = {}
    for v in spine.vertebrae:
        if not v.complete or v.name in UNGRADED_LEVELS or (v.fracture or {}).get("grade"):
            continue
        w = endplate_wedge_deg(v)
        if w is not None and w > _wedge_limit(v.name):
            out[v.name] = w
    return out


def _gradable(v: Vertebra) -> bool:
    return v.complete and v.name not in UNGRADED_LEVELS and all(k in v.measurements for k in _HEIGHTS)


def _neighbour_expected(spine: Spine, v: Vertebra, skip=()) -> tuple[float | None, list[str]]:
    """Expected (posterior) height from the nearest gradable levels above and below (not those
    named in ``skip``)."""
    me = level_index(v.name)
    usable = [o for o in spine.vertebrae if _gradable(o) and o.name not in skip]
    above = [(me - level_index(o.name), o) for o in usable if 0 < me - level_index(o.name) <= MAX_NEIGHBOUR_GAP]
    below = [(level_index(o.name) - me, o) for o in usable if 0 < level_index(o.name) - me <= MAX_NEIGHBOUR_GAP]
    a = min(above, key=lambda t: t[0]) if above else None
    b = min(below, key=lambda t: t[0]) if below else None
    if a and b:
        ha, hb = a[1].measurements["posterior_height_mm"], b[1].measurements["posterior_height_mm"]
        # linear interpolation in level position
        h = ha + (hb - ha) * a[0] / (a[0] + b[0])
        return float(h), [a[1].name, b[1].name]
    one = a or b
    if one:
        return float(one[1].measurements["posterior_height_mm"]), [one[1].name]
    return None, []


def _misshapen(v: Vertebra) -> str | None:
    """The heights of ``v`` alone are not a body's (:data:`POSTERIOR_MIN_RATIO`), or None."""
    ha, hm, hp = (float(v.measurements[k]) for k in _HEIGHTS)
    if hp < POSTERIOR_MIN_RATIO * min(ha, hm):
        return (f"posterior height {hp:.1f} mm is less than {POSTERIOR_MIN_RATIO:.1f} x the anterior ({ha:.1f} mm) "
                f"and middle ({hm:.1f} mm) heights: not a fracture pattern")
    return None


def implausible_heights(v: Vertebra, neighbour_heights) -> str | None:
    """Why the body heights of ``v`` cannot be graded (see the module's text), or None.
    ``neighbour_heights``: {name: posterior height} of the gradable levels within
    :data:`MAX_NEIGHBOUR_GAP` levels."""
    hp = float(v.measurements["posterior_height_mm"])
    me = level_index(v.name)
    if {level_index(n) < me for n in neighbour_heights} == {True, False}:
        lim = POSTERIOR_EXCESS_MAX_PCT
        tallest = max(neighbour_heights.values())
        if hp > tallest * (1.0 + lim / 100.0):
            around = ", ".join(f"{n} {h:.1f}" for n, h in neighbour_heights.items())
            return (f"posterior height {hp:.1f} mm is {100.0 * (hp / tallest - 1.0):.0f} % taller than any neighbour's "
                    f"({around} mm; more than {lim:.0f} %: a fracture does not make a body taller)")
    return _misshapen(v)


def _near(spine: Spine, v: Vertebra, skip) -> dict[str, float]:
    """Posterior heights of the gradable levels within :data:`MAX_NEIGHBOUR_GAP` of ``v``."""
    me = level_index(v.name)
    return {o.name: float(o.measurements["posterior_height_mm"]) for o in spine.vertebrae
            if o is not v and _gradable(o) and o.name not in skip
            and 0 < abs(level_index(o.name) - me) <= MAX_NEIGHBOUR_GAP}


def _posterior_wall_height(v: Vertebra) -> float:
    """The body's posterior height as the reference of its own height loss: the posterior height
    (measured :data:`~spineplan.anatomy.measure.HEIGHT_EDGE_INSET_MM` inside the wall), extended to
    the wall along the line from the anterior height when the front is lower (a wedge).

    Genant et al. (1993) compare the anterior height with the posterior wall's; read inside the
    wall, a wedge's sloping endplate has already lowered the posterior height, and a 22.5 % wedge
    read 19.5-20.3 % (phantom labels, ``benchmarks/bench_fracture.py --labels``, 0.8-1.5 mm voxels).
    An intact thoracic body's natural ~2 mm wedge gains ~1.3 points of loss this way."""
    from spineplan.anatomy.measure import HEIGHT_EDGE_INSET_MM as inset

    ha, hp = (float(v.measurements[k]) for k in ("anterior_height_mm", "posterior_height_mm"))
    depth = v.measurements.get("body_ap_depth_mm")
    if depth is None or ha >= hp or float(depth) <= 4.0 * inset:
        return hp
    return hp + (hp - ha) * inset / (float(depth) - 2.0 * inset)


def grade_vertebra(v: Vertebra, expected: float | None, neighbours: list[str]) -> dict:
    """Genant grade, type and height loss of one vertebra given the neighbours' expected height."""
    ha, hm, hp = (float(v.measurements[k]) for k in _HEIGHTS)
    post_loss = 100.0 * (1.0 - hp / expected) if expected else 0.0
    switch = NEIGHBOUR_REFERENCE_MIN_LOSS_PCT + (SINGLE_NEIGHBOUR_EXTRA_PCT if len(neighbours) == 1 else 0.0)
    if expected is not None and post_loss >= switch:
        ref, used = expected, f"neighbours ({', '.join(neighbours)})"
    else:
        ref, used = _posterior_wall_height(v), "own posterior height"
    loss = 100.0 * (1.0 - min(ha, hm) / ref)
    loss = round(max(loss, 0.0), 1)  # (graded as reported: a 19.96 % shown as 20.0 is a grade 1)
    grade = genant_grade(loss)
    if grade == 0:
        kind = "none"
    elif post_loss >= CRUSH_POSTERIOR_LOSS_PCT:
        kind = "crush"
    elif ha <= hm:
        kind = "wedge"
    else:
        kind = "biconcave"
    out = {
        "grade": grade,
        "type": kind,
        "height_loss_pct": round(loss, 1),
        "reference": used,
        "reference_height_mm": round(ref, 2),
        "neighbour_expected_height_mm": None if expected is None else round(expected, 2),
        "method": "Genant semi-quantitative (Genant et al., J Bone Miner Res 1993)",
    }
    return out


def grade_fractures(spine: Spine) -> None:
    """Fill ``Vertebra.fracture`` for every vertebra of ``spine`` (in place).

    Vertebrae that cannot be graded (cut by the scan, missing heights, C1/C2/S1) get
    ``{"grade": None, "type": "not graded", "reason": ...}``.
    """
    from spineplan.anatomy.spine import frames_suspect

    suspect = frames_suspect(spine)
    # bodies whose heights are not a body's shape give no expectation to their neighbours
    misshapen = {v.name for v in spine.vertebrae if _gradable(v) and _misshapen(v)}
    for v in spine.vertebrae:
        if not _gradable(v):
            why = ("cut by the edge of the scan" if not v.complete else
                   "not graded at this level" if v.name in UNGRADED_LEVELS else "body heights could not be measured")
            v.fracture = {"grade": None, "type": "not graded", "reason": why}
            continue
        expected, names = _neighbour_expected(spine, v, skip=misshapen)
        why = implausible_heights(v, _near(spine, v, misshapen))
        if why:
            v.fracture = {"grade": None, "type": "not graded", "reason": f"heights implausible: {why}"}
            v.warnings.append(f"{v.name}: not graded for fracture: its measured {why}. Its endplates were probably "
                              "misread; check its body on the images.")
            continue
        v.fracture = g = grade_vertebra(v, expected, names)
        vox = _voxel_along(spine, v)
        reasons = []
        g["uncertain"] = False
        if vox is not None:
            g["voxel_along_axis_mm"] = round(vox, 2)
            g["voxel_pct_of_height"] = round(100.0 * vox / g["reference_height_mm"], 1)
            err = LOSS_ERROR_VOXELS * 100.0 * vox / g["reference_height_mm"]
            lo, hi = genant_grade(max(g["height_loss_pct"] - err, 0.0)), genant_grade(g["height_loss_pct"] + err)
            g["height_loss_error_pct"] = round(err, 1)
            g["grade_range"] = [lo, hi]
            if lo != hi:
                g["uncertain"] = True
                reasons.append(f"its height loss ({g['height_loss_pct']:.0f} %) is read to +-{err:.0f} points at this "
                               f"voxel size ({vox:.1f} mm along the body), which spans Genant grades {lo}-{hi}")
        if v.name in suspect:
            g["uncertain"] = True
            reasons.append("its axis is out of line with a neighbour's, so its heights may be measured askew")
        if reasons:
            g["uncertain_reasons"] = reasons
        if g["grade"]:
            note = f"; uncertain: {'; '.join(reasons)}. Confirm on the images." if reasons else "."
            v.warnings.append(f"{v.name}: Genant grade {g['grade']} {g['type']} deformity "
                              f"({g['height_loss_pct']:.0f} % height loss vs. {g['reference']}){note}")
        elif borderline(g):
            v.warnings.append(f"{v.name}: no fracture graded, but a borderline deformity: its height loss "
                              f"({g['height_loss_pct']:.1f} % vs. {g['reference']}) is within the measurement error "
                              f"of a Genant grade 1 ({'; '.join(reasons)}). Confirm on the images.")
    _warn_misread_endplates(spine)


def _warn_misread_endplates(spine: Spine) -> None:
    for name, w in endplates_misread(spine).items():
        v = spine[name]
        v.warnings.append(f"{name}: its endplates were measured {w:.0f} deg apart, more than an unfractured body's "
                          f"(<= {_wedge_limit(name):.0f} deg), and no fracture is graded there: its endplate planes are probably "
                          "misread, and with them its C-arm true AP / lateral angles. Confirm the true AP on the first "
                          "shot.")


def _voxel_along(spine: Spine, v: Vertebra) -> float | None:
    """Extent (mm) of one voxel of the spine's label grid along the vertebra's superior axis."""
    import numpy as np

    lab = getattr(spine, "labels", None)
    if lab is None or getattr(v, "frame", None) is None:
        return None
    cols = np.asarray(lab.affine, float)[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    z = np.asarray(v.frame.axes, float)[2]
    return float(np.sum(np.abs(z @ (cols / spacing)) * spacing))
