"""Phantom speed: seconds to build and write the default T11-S1 phantom per voxel spacing.

Run: ``SPINEPLAN_PROGRESS=0 python benchmarks/bench_phantom.py [spacings...]``
Prints spacing, voxels, build seconds, write seconds, total, and Mvoxel/s. Target (issue 2):
``spineplan phantom --spacing 0.8`` under 20 s. The machine is shared while this runs, so
figures are pessimistic; ``os.getloadavg()`` is printed alongside.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from spineplan.phantom import make_phantom, write_phantom


def main(argv: list[str]) -> None:
    spacings = [float(a) for a in argv] or [3.0, 1.5, 1.0, 0.8, 0.5]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'spacing':>8} {'voxels':>12} {'build s':>8} {'write s':>8} {'total s':>8} {'Mvox/s':>7}")
    target = None
    with tempfile.TemporaryDirectory() as tmp:
        for sp in spacings:
            t0 = time.perf_counter()
            ph = make_phantom(spacing=sp)
            t1 = time.perf_counter()
            write_phantom(ph, os.path.join(tmp, f"sp{sp}"))
            t2 = time.perf_counter()
            n = ph.ct.array.size
            print(f"{sp:8.2f} {n:12,d} {t1 - t0:8.2f} {t2 - t1:8.2f} {t2 - t0:8.2f} {n / 1e6 / (t2 - t0):7.2f}")
            if sp == 0.8:
                target = t2 - t0
            del ph
    if target is not None:
        print(f"spacing 0.8 mm: {target:.1f} s for build+write; target 20 s -> ratio {target / 20.0:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
