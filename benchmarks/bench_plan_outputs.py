"""Timings of the plan outputs (skin, rods, incisions, exports, pictures) on the real lumbar CT.

Run: ``SPINEPLAN_PROGRESS=0 python benchmarks/bench_plan_outputs.py [/work/shared/data]``.
Screws are laid along the pedicle axes measured by spineplan's anatomy (L1-L5, both sides) so
the figures do not depend on the screw planner. Prints seconds per step and per screw.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def main(data_dir: str) -> None:
    from spineplan.anatomy.pipeline import analyse
    from spineplan.export.slicer import export_slicer
    from spineplan.export.tables import write_screws_csv
    from spineplan.io import read_ct, read_labels
    from spineplan.plan.incisions import plan_incisions
    from spineplan.plan.model import Plan, Screw
    from spineplan.plan.rods import plan_rods
    from spineplan.plan.skin import SkinSurface
    from spineplan.report.screw_figures import screw_figures

    d = Path(data_dir) / "totalseg_example_abdomen"
    ct = read_ct(d / "example_ct.nii.gz")
    labels = read_labels(d / "spine_report_totalseg.nii.gz", ct)
    spine = analyse(ct, labels.volume)
    plan = Plan()
    for lv in ("L1", "L2", "L3", "L4", "L5"):
        for side in ("left", "right"):
            p = spine[lv].pedicles.get(side)
            if p is not None:
                e = p.isthmus_center - 15.0 * p.axis
                plan.screws.append(Screw(lv, side, e.tolist(), (e + 45.0 * p.axis).tolist(), 6.5, 45.0))
    n = len(plan.screws)
    times = {}
    t = time.perf_counter()
    skin = SkinSurface(ct)
    times["skin surface (once per CT)"] = time.perf_counter() - t
    t = time.perf_counter()
    plan_rods(plan, skin=skin, spine=spine)
    times["rods (incl. depth check)"] = time.perf_counter() - t
    t = time.perf_counter()
    plan_incisions(plan, skin, spine=spine)
    times["incisions"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_screws_csv(plan, Path(tmp) / "screws.csv", ct=ct, spine=spine)
        times["screws.csv (incl. mean HU)"] = time.perf_counter() - t
        t = time.perf_counter()
        export_slicer(plan, Path(tmp) / "slicer", labels=spine.labels)
        times["Slicer folder"] = time.perf_counter() - t
        t = time.perf_counter()
        screw_figures(ct, plan, Path(tmp) / "screws", spine=spine, labels=spine.labels)
        times["screw pictures"] = time.perf_counter() - t
    print(f"CT {ct.shape} at {ct.spacing.round(2).tolist()} mm, {n} screws, {len(plan.rods)} rods, "
          f"{len(plan.incisions)} incisions (total {plan.extra['incisions_total_mm']:.0f} mm)")
    total = sum(times.values())
    for k, v in times.items():
        print(f"  {k:<30} {v:7.2f} s   {v / n:6.3f} s/screw")
    print(f"  {'total outputs':<30} {total:7.2f} s   {total / n:6.3f} s/screw")
    print(f"(machine: {os.cpu_count()} cores, shared with other jobs: timings are pessimistic)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SPINEPLAN_TEST_DATA", "/work/shared/data"))
