"""``spineplan demo``: the whole pipeline on a built-in synthetic spine (no data to download)."""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

HELP = "run spineplan end to end on a built-in synthetic spine CT (with a T12 compression fracture)"
DESCRIPTION = (
    "Builds a synthetic T11-S1 spine CT with ground truth and a T12 compression fracture (Genant grade 2), "
    "then plans L1-L5 percutaneous pedicle screws and T12 kyphoplasty access, and writes the plan, reports and "
    "3D Slicer folder into the output folder. Research software, not a medical device."
)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", default="spineplan-demo", help="output folder (default: ./spineplan-demo)")
    p.add_argument("--spacing", type=float, default=1.0, help="phantom voxel size in mm (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the phantom (default 0)")
    p.add_argument("--phantom-only", action="store_true", help="only build the phantom")


def run(args: argparse.Namespace) -> int:
    from spineplan.phantom import make_phantom, write_phantom

    out = Path(args.out)
    t0 = time.perf_counter()
    ph = make_phantom(levels="T11-S1", spacing=args.spacing, fracture=("T12", 2, "wedge"), seed=args.seed)
    files = write_phantom(ph, out / "phantom")
    print(f"phantom: {ph.ct.shape} voxels at {args.spacing:g} mm, levels {', '.join(ph.truth['vertebrae'])} "
          f"({time.perf_counter() - t0:.1f} s)")
    for name, path in files.items():
        print(f"  {name:8s} {path}")
    if args.phantom_only or importlib.util.find_spec("spineplan.workflow") is None:
        return 0
    from spineplan.workflow import run_plan

    from spineplan.cli.plan import summary

    # The demo segments and names the vertebrae itself (no labels given), as with a patient's CT.
    plan = run_plan(files["ct"], out / "plan", levels=["L1", "L2", "L3", "L4", "L5"], patient_name=None)
    print(summary(plan))
    print(f"\nplan: {len(plan.screws)} screws, {len(plan.rods)} rods, {len(plan.incisions)} incisions, "
          f"{len(plan.access)} access paths, {len(plan.warnings)} warnings -> {out / 'plan'}")
    _truth_check(plan, ph)
    print(f"open {out / 'plan' / 'surgeon_report.pdf'} and {out / 'plan' / 'patient_report.pdf'}; "
          f"load {out / 'plan' / 'slicer'} in 3D Slicer")
    print(f"done in {time.perf_counter() - t0:.1f} s. Research software, not a medical device.")
    return 0


def _truth_check(plan, ph) -> None:
    """Grade the plan (made on spineplan's own segmentation) against the phantom's true labels."""
    from collections import Counter

    from spineplan.safety import check_plan

    results = check_plan(plan, ph.ct, ph.labels)
    grades = Counter(r.grade for r in results)
    wrong = sum(1 for r in results if r.vertebra_found is not None and r.vertebra_found != r.level)
    text = ", ".join(f"{g}: {n}" for g, n in sorted(grades.items(), key=lambda kv: str(kv[0])))
    print(f"check against the phantom's ground-truth labels ({len(results)} screws and needles): {text}"
          + (f"; {wrong} not in their vertebra" if wrong else ""))
