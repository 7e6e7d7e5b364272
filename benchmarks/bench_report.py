"""Reports on the real lumbar CT: timings of each step, and (with ``--docs``) the two report
pages shown in the README (``docs/surgeon_report_page1.png``, ``docs/patient_report_page1.png``).

    SPINEPLAN_TEST_DATA=/work/shared/data python benchmarks/bench_report.py [--docs] [--out DIR]

Plan: percutaneous screws L3-L5 (``spineplan.workflow.run_plan`` with the TotalSegmentator
labels), kyphoplasty at L1 (the level with the most height loss on this CT), then both reports. Timings are wall-clock on a shared machine (pessimistic).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Rendering of the docs pages: resolution and the size limit of each PNG.
DOCS_DPI = 130
DOCS_MAX_BYTES = 400_000
#: Kyphoplasty level of the demonstration plan.
KYPHOPLASTY_LEVEL = "L1"


def page_png(pdf: Path, dest: Path, dpi: int = DOCS_DPI) -> int:
    """Render page 1 of ``pdf`` with pdftoppm and save it as an optimised palette PNG; returns bytes."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["pdftoppm", "-r", str(dpi), "-f", "1", "-l", "1", "-png", str(pdf), f"{tmp}/p"], check=True)
        src = next(Path(tmp).glob("p*.png"))
        im = Image.open(src).convert("RGB")
        colours = 256
        while True:
            q = im.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            q.save(dest, format="PNG", optimize=True)
            if dest.stat().st_size <= DOCS_MAX_BYTES or colours <= 32:
                return dest.stat().st_size
            colours //= 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", action="store_true", help="write the two docs/ pages")
    ap.add_argument("--out", default=None, help="plan folder (default: a temporary folder)")
    args = ap.parse_args(argv)
    data = Path(os.environ.get("SPINEPLAN_TEST_DATA", "/work/shared/data")) / "totalseg_example_abdomen"
    ct_path, lab_path = data / "example_ct.nii.gz", data / "spine_report_totalseg.nii.gz"
    if not ct_path.is_file():
        print(f"missing {ct_path}; set SPINEPLAN_TEST_DATA", file=sys.stderr)
        return 1
    os.environ.setdefault("SPINEPLAN_PROGRESS", "0")
    from spineplan.anatomy.pipeline import analyse
    from spineplan.io import read_ct, read_labels
    from spineplan.plan.access import plan_access
    from spineplan.plan.model import Plan
    from spineplan.report.surgeon import make_pictures, write_reports
    from spineplan.workflow import run_plan

    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="bench_report_")
        out = Path(tmp) / "plan"
    else:
        out = Path(args.out)
    t = {}
    t0 = time.perf_counter()
    run_plan(ct_path, out, labels=lab_path, levels="L3-L5", progress=False)
    t["plan (workflow, L3-L5)"] = time.perf_counter() - t0
    plan = Plan.load(out / "plan.json")
    t0 = time.perf_counter()
    ct = read_ct(ct_path)
    spine = analyse(ct, read_labels(lab_path, ct).volume)
    t["anatomy again (for the reports)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fractured = [v.name for v in spine.vertebrae if (v.fracture or {}).get("grade")]
    print(f"Genant grade >= 1: {', '.join(fractured) or 'none'}; kyphoplasty planned at {KYPHOPLASTY_LEVEL}")
    acc, warns = plan_access(ct, spine, [KYPHOPLASTY_LEVEL], procedure="kyphoplasty", gauge=11)
    plan.access, plan.warnings = acc, plan.warnings + warns
    plan.save(out / "plan.json")
    t["access (fractured levels)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    make_pictures(plan, ct, spine)
    t["pictures only"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    paths = write_reports(plan, ct, spine, out)
    t["write_reports (pictures + 2 HTML + 2 PDF)"] = time.perf_counter() - t0
    for k, v in t.items():
        print(f"{k:45s} {v:6.1f} s")
    for a in acc:
        e = a.extra
        print(f"access {a.level} {a.side}: {e['approach']}, grade {e['grade']}, margin {e['min_margin_mm']} mm, "
              f"tip {e['tip_from_midline_mm']} mm from midline at {100 * e['tip_depth_fraction']:.0f} % of the body "
              f"depth, cement {e['cement_ml_level']} mL (body {e['body_volume_ml']} mL)")
    for k, p in paths.items():
        print(f"{k:14s} {p.stat().st_size / 1e3:8.0f} kB  {p}")
    if args.docs:
        if shutil.which("pdftoppm") is None:
            print("pdftoppm (poppler-utils) is needed for --docs", file=sys.stderr)
            return 1
        docs = Path(__file__).resolve().parents[1] / "docs"
        docs.mkdir(exist_ok=True)
        for key, name in (("surgeon_pdf", "surgeon_report_page1.png"), ("patient_pdf", "patient_report_page1.png")):
            n = page_png(paths[key], docs / name)
            print(f"wrote docs/{name} ({n / 1e3:.0f} kB, {DOCS_DPI} dpi)")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
