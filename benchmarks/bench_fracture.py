"""Genant fracture grades on many random phantoms, from spineplan's own segmentation.

Run:  SPINEPLAN_PROGRESS=0 python benchmarks/bench_fracture.py [--n 30] [--seed 1] [--labels]

Each case draws a level range, a voxel size (0.8-3 mm), lordosis, scoliosis and axial rotation
(as bench_naming.py), osteoporosis in a third of the cases, and one or two fractures on complete
levels (grade 1-3, type wedge / biconcave / crush; the phantom sets the height loss to the middle
of the grade's band: 22.5, 32.5, 50 %). It builds the phantom, segments and names it (or, with
``--labels``, takes the phantom's own label map), measures and grades every vertebra, and compares
with the phantom's truth. A true level is matched to the own label holding most of its voxels.

Prints one line per case (right; "not graded" when some level got no grade; WRONG when a grade is
wrong, a fracture missed or a false one graded), then:
- fractured vertebrae: graded right / wrong grade / not graded (heights implausible or not
  measured) / missed (graded 0), with the confusion of true vs measured grade;
- unfractured complete vertebrae: graded 0 / false fracture (grade >= 1) / not graded;
- how many wrong grades carry the "uncertain" mark (the report then says so);
- the height-loss error (measured - truth, percentage points) of every graded level, per voxel size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("SPINEPLAN_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # (tests/_phantoms.py)

RANGES = ["T12-L4", "T11-L3", "L1-L5", "T10-L2", "L1-S1", "T12-S1"]
TYPES = ["wedge", "biconcave", "crush"]


def draw(rng) -> dict:
    from spineplan.levels import level_range

    levels = str(rng.choice(RANGES))
    spacing = float(rng.choice([0.8, 1.0, 1.5, 2.0, 2.5, 3.0]))
    if spacing < 1.0:
        levels = "L1-L4"  # (keeps the 0.8 mm phantoms small)
    names = level_range(levels)
    inner = [n for n in names[1:-1] if n != "S1"]  # complete, with a neighbour on each side
    k = int(rng.integers(1, 3)) if len(inner) >= 3 else 1
    picked = sorted(rng.choice(len(inner), size=k, replace=False))
    if k == 2 and picked[1] - picked[0] < 2:  # not adjacent: each keeps an unfractured neighbour
        picked = picked[:1]
    fx = [(inner[i], int(rng.integers(1, 4)), str(rng.choice(TYPES))) for i in picked]
    return dict(levels=levels, spacing=spacing, seed=int(rng.integers(0, 1000)),
                lordosis_deg=float(rng.uniform(20, 55)), scoliosis_deg=float(rng.choice([0, 0, 10, 20])),
                rotation_deg=float(rng.choice([0, 0, 8, 15])), osteoporosis=bool(rng.random() < 1 / 3),
                fracture=fx)


def main() -> None:
    from _phantoms import names_by_majority
    from spineplan.anatomy.segment import segment_spine
    from spineplan.anatomy.spine import build_spine
    from spineplan.phantom import make_phantom

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="number of random phantoms")
    ap.add_argument("--seed", type=int, default=1, help="seed of the random draw of cases")
    ap.add_argument("--labels", action="store_true", help="grade on the phantom's labels, not the own segmentation")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    fx = Counter()  # fractured: right / wrong / not graded / missed
    un = Counter()  # unfractured: zero / false / not graded
    confusion = Counter()
    loss_err, wrong_uncertain, wrong_total, errors = [], 0, 0, 0
    t0 = time.time()
    for _ in range(a.n):
        kw = draw(rng)
        try:
            ph = make_phantom(fov="spine", **kw)
            if a.labels:
                spine = build_spine(ph.ct, ph.labels)
                match = {n: n for n in ph.truth["vertebrae"]}
            else:
                seg = segment_spine(ph.ct)
                spine = build_spine(ph.ct, seg.labels, names_confidence=seg.confidence, method=seg.method)
                match = names_by_majority(ph, seg)
        except Exception as e:  # a phantom that cannot be processed is a failure, reported
            print(f"ERROR {kw}: {type(e).__name__}: {str(e)[:160]}", flush=True)
            errors += 1
            continue
        notes, bad = [], False
        for name, tv in ph.truth["vertebrae"].items():
            if not tv["complete"] or name == "S1" or tv.get("sacrum"):
                continue
            own = match.get(name)
            v = spine[own] if own is not None and own in spine else None
            tg = int(tv["fracture"]["grade"])
            g = None if v is None else v.fracture.get("grade")
            unc = bool(v is not None and v.fracture.get("uncertain"))
            if g is not None and v.fracture.get("height_loss_pct") is not None:
                loss_err.append((kw["spacing"], bool(tg), float(v.fracture["height_loss_pct"])
                                 - float(tv["fracture"]["height_loss_pct"])))
            if tg:
                if g is None:
                    fx["not graded"] += 1
                    notes.append(f"{name} true {tg} not graded")
                elif g == tg:
                    fx["right"] += 1
                else:
                    fx["missed" if g == 0 else "wrong"] += 1
                    wrong_total += 1
                    bad = True
                    wrong_uncertain += int(unc)
                    notes.append(f"{name} true {tg} {tv['fracture']['type']} {tv['fracture']['height_loss_pct']:.1f} % "
                                 f"-> {g} {v.fracture.get('type')} {v.fracture.get('height_loss_pct')} %"
                                 + (" (uncertain)" if unc else ""))
                confusion[(tg, g)] += 1
            else:
                if g is None:
                    un["not graded"] += 1
                    notes.append(f"{name} unfractured not graded ({(v.fracture or {}).get('reason', 'no label') if v else 'no label'})"[:90])
                elif g == 0:
                    un["zero"] += 1
                else:
                    un["false"] += 1
                    wrong_total += 1
                    bad = True
                    wrong_uncertain += int(unc)
                    notes.append(f"{name} unfractured -> {g} {v.fracture.get('type')} {v.fracture.get('height_loss_pct')} %"
                                 + (" (uncertain)" if unc else ""))
        short = {k: (round(x, 1) if isinstance(x, float) else x) for k, x in kw.items()}
        print(f"{'WRONG' if bad else 'not graded' if notes else 'right'} {short}"
              + (": " + "; ".join(notes) if notes else ""), flush=True)
    n_fx, n_un = sum(fx.values()), sum(un.values())
    print(f"\n{a.n} phantoms (draw seed {a.seed}, {'phantom labels' if a.labels else 'own segmentation'}), "
          f"{time.time() - t0:.0f} s, errors {errors}")
    print(f"  fractured vertebrae {n_fx}: right {fx['right']}, wrong grade {fx['wrong']}, missed (graded 0) "
          f"{fx['missed']}, not graded {fx['not graded']}")
    print("  true grade -> measured (count): " + ", ".join(f"{t}->{g}: {c}" for (t, g), c in sorted(
        confusion.items(), key=lambda x: (x[0][0], -1 if x[0][1] is None else x[0][1]))))
    print(f"  unfractured complete vertebrae {n_un}: graded 0 {un['zero']}, false fracture {un['false']}, "
          f"not graded {un['not graded']}")
    print(f"  wrong grades (incl. false and missed) marked uncertain: {wrong_uncertain}/{wrong_total}")
    if loss_err:
        sp, fxd, e = (np.asarray(x) for x in zip(*loss_err))
        print("  height loss error, measured - truth (percentage points), of every graded level:")
        for s_ in sorted(set(sp.tolist())):
            for lab, sel in (("fractured", fxd), ("unfractured", ~fxd)):
                k = e[(sp == s_) & sel]
                if len(k):
                    print(f"    {s_:.1f} mm {lab:11s} n {len(k):3d}: median {np.median(k):+5.1f}, |error| p95 "
                          f"{np.percentile(np.abs(k), 95):4.1f}, max {np.abs(k).max():4.1f}")


if __name__ == "__main__":
    main()
