"""The S1 frame from a label that holds the whole sacrum (the built-in segmentation's S1 label,
or TotalSegmentator's sacrum and S1 read together) on the real abdomen CT: its z axis must match
the one from TotalSegmentator's S1-only label, and the L5/S1 segment must read lordotic.

Before the sacrum's canal was looked for in the label's top only (measure.SACRUM_CANAL_MM), the
whole-sacrum label's S1 z axis was 35 deg off the S1-only label's and the L5/S1 segment read
19 deg kyphotic."""

from __future__ import annotations

import numpy as np
import pytest

from spineplan.anatomy.spine import build_spine, lumbosacral_kyphosis_deg
from spineplan.io import read_ct, read_labels


@pytest.fixture(scope="module")
def abdomen_s1(data_file):
    ct = read_ct(data_file("totalseg_example_abdomen/example_ct.nii.gz"))
    whole = read_labels(data_file("totalseg_example_abdomen/example_seg_fast_force_split.nii.gz"), ct).volume
    s1_only = read_labels(data_file("totalseg_example_abdomen/spine_report_totalseg.nii.gz"), ct).volume
    # the whole-sacrum label really is larger (sacrum 25 + S1 26 -> S1)
    assert (np.asarray(whole.array) == 26).sum() > 1.5 * (np.asarray(s1_only.array) == 26).sum()
    return (build_spine(ct, whole, levels=["L5", "S1"]), build_spine(ct, s1_only, levels=["L5", "S1"]))


def test_whole_sacrum_label_gives_the_s1_frame(abdomen_s1):
    whole, s1_only = abdomen_s1
    za, zb = whole["S1"].frame.axes[2], s1_only["S1"].frame.axes[2]
    ang = float(np.degrees(np.arccos(np.clip(abs(za @ zb), -1.0, 1.0))))
    # the same vertebra's S1 endplate from two labels: within 5 deg (the C-arm's true AP tolerance
    # of a few degrees); 35 deg before the fix
    assert ang < 5.0, ang


def test_whole_sacrum_label_reads_a_lordotic_lumbosacral_segment(abdomen_s1):
    whole, s1_only = abdomen_s1
    for spine in (whole, s1_only):
        k = lumbosacral_kyphosis_deg(spine.vertebrae)
        assert k is not None and k < 0.0, k  # lordotic (negative = lordosis)
        assert not [w for w in spine.warnings if "lumbosacral" in w]
