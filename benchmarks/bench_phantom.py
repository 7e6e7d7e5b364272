"""Phantom speed: seconds to build and write the default T11-S1 phantom per voxel spacing.

Run: ``SPINEPLAN_PROGRESS=0 python benchmarks/bench_phantom.py [spacings...]``
Prints spacing, voxels, build seconds, write seconds, total, and Mvoxel/s. Target (issue 2):
``spineplan phantom --spacing 0.8`` under 20 s. The machine is shared while this runs, so
figures are pessimistic; ``os.getloadavg()`` is printed alongside.

With ``SPINEPLAN_TEST_DATA`` set it also compares the phantom's whole-vertebra volumes and
median HU with the TotalSegmentator labels of the shared abdomen CT (one 55-year-old man,
3 mm voxels, automatic labels): a plausibility check, not a validation.
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
    if os.environ.get("SPINEPLAN_TEST_DATA"):
        compare_real(os.environ["SPINEPLAN_TEST_DATA"])


def compare_real(data_dir: str) -> None:
    import nibabel as nib
    import numpy as np

    base = os.path.join(data_dir, "totalseg_example_abdomen")
    lab_img = nib.load(os.path.join(base, "spine_report_totalseg.nii.gz"))
    lab = np.asarray(lab_img.dataobj)
    ct = np.asarray(nib.load(os.path.join(base, "example_ct.nii.gz")).dataobj)
    vox_ml = abs(np.linalg.det(lab_img.affine[:3, :3])) / 1000.0
    ph = make_phantom(spacing=1.0)
    ph_ml = float(np.prod(ph.ct.spacing)) / 1000.0
    ts_ids = {"T12": 32, "L1": 31, "L2": 30, "L3": 29, "L4": 28, "L5": 27}  # TotalSegmentator 'total'
    print(f"{'level':>5} {'real mL':>8} {'phantom mL':>10} {'ratio':>6} {'real HU':>8} {'phantom HU':>10}")
    for name, tid in ts_ids.items():
        m_real = lab == tid
        m_ph = ph.labels.array == ph.truth["vertebrae"][name]["label"]
        v_real, v_ph = m_real.sum() * vox_ml, m_ph.sum() * ph_ml
        print(f"{name:>5} {v_real:8.1f} {v_ph:10.1f} {v_ph / v_real:6.2f} {np.median(ct[m_real]):8.0f} "
              f"{np.median(ph.ct.array[m_ph]):10.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
