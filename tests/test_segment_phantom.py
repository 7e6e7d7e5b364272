"""Built-in segmentation and naming on synthetic spines with exact ground truth (spineplan.phantom).

Each case is a phantom the segmentation has never seen; the expected names and masks come
from the phantom's own truth, not from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from spineplan.anatomy.segment import segment_spine
from spineplan.levels import VERSE_CODES, level_from_verse

phantom = pytest.importorskip("spineplan.phantom")

CASES = {
    "2mm-scoliosis30-rotation20": dict(spacing=2.0, seed=3, scoliosis_deg=30.0, rotation_deg=20.0),
    "3mm-lordosis50": dict(spacing=3.0, seed=1, lordosis_deg=50.0),
    "1.5mm-six-lumbar": dict(spacing=1.5, seed=6, lumbar_count=6),
    # osteoporotic bodies (cancellous HU near soft tissue): was named 0/8 right, Dice ~0
    "2mm-osteoporosis": dict(spacing=2.0, seed=8, osteoporosis=True),
    # an ordinary T12-to-pelvis CT at 1 mm: "no vertebrae found" while the canal search tried a
    # fixed 60 darkest pixels per slice (60 mm^2 at 1 mm: canal seen in 28 % of the slices)
    "1mm-T12-S1": dict(levels="T12-S1", spacing=1.0, seed=0),
    # the top vertebra's superior articular processes above its disc were a "T10" of their own
    "1.5mm-T11-top": dict(levels="T11-S1", spacing=1.5, seed=1),
}
#: Lowest Dice per case where it is below the general floor (measured, minus a small margin):
#: the osteoporotic bodies lose marrow below the bone threshold (min 0.669 today).
DICE_FLOOR = {"2mm-osteoporosis": 0.65}


@pytest.fixture(scope="session", params=list(CASES), ids=list(CASES))
def case(request):
    ph = phantom.make_phantom(**CASES[request.param])
    return request.param, ph, segment_spine(ph.ct)


def _majority(lab: np.ndarray, mask: np.ndarray) -> int:
    vals, cnt = np.unique(lab[mask], return_counts=True)
    cnt, vals = cnt[vals > 0], vals[vals > 0]
    return int(vals[np.argmax(cnt)]) if len(vals) else 0


def _complete_levels(case):
    """(name, own labels, true labels, [(level, truth entry)] of the levels wholly in the scan)."""
    name, ph, seg = case
    levels = [(lv, v) for lv, v in ph.truth["vertebrae"].items() if v.get("complete", True)]
    return name, np.asarray(seg.labels.array), np.asarray(ph.labels.array), levels


def test_every_complete_level_named_right(case):
    name, lab, ref, levels = _complete_levels(case)
    for level, v in levels:
        got = _majority(lab, ref == v["label"])
        assert got == v["label"], f"{name}: {level} labelled {level_from_verse(got) if got else 'nothing'}"


def test_no_vertebra_beyond_the_drawn_ones(case):
    """Every label is a vertebra the phantom has: no piece of one (e.g. the top vertebra's
    articular processes above its last disc) becomes a vertebra of its own."""
    name, ph, seg = case
    extra = set(seg.names) - set(ph.truth["vertebrae"])
    assert not extra, (name, sorted(extra))


def test_dice_against_phantom_truth(case):
    name, lab, ref, levels = _complete_levels(case)
    for level, v in levels:
        a, b = lab == v["label"], ref == v["label"]
        d = 2.0 * (a & b).sum() / (a.sum() + b.sum())
        # measured 0.78-0.95 (S1 and the top vertebra lowest); 3 mm voxels lose thin processes
        assert d >= DICE_FLOOR.get(name, 0.75), (name, level, round(float(d), 3))


def test_transitional_and_coarse_cases_are_flagged(case):
    name, ph, seg = case
    if name == "1.5mm-six-lumbar":
        assert "L6" in seg.names and seg.confidence <= 0.6
        assert any("six non-rib-bearing" in w for w in seg.warnings)
    elif name == "3mm-lordosis50":
        # the short 12th rib is not seen at 3 mm: the count comes from the sacrum, flagged
        assert seg.names[-1] == "S1"
        assert seg.confidence >= 0.9 or any("rib" in w for w in seg.warnings)
    else:
        assert seg.confidence >= 0.9 and "cross-checked" in seg.method


#: Share of a phantom's ilium (its unlabelled bone next to and below the sacrum) that the S1 label
#: may hold: the sacrum's flood crossed the sacro-iliac joints (0.14-0.17 of the ilium in S1 on
#: every case here before the ilium got its own seed; 0.05-0.12 since).
ILIUM_IN_S1_MAX = 0.13


def test_sacrum_label_stays_out_of_the_ilium(case):
    from scipy.ndimage import binary_dilation

    name, ph, seg = case
    lab, ref, hu = np.asarray(seg.labels.array), np.asarray(ph.labels.array), np.asarray(ph.ct.array)
    s1 = VERSE_CODES["S1"]
    if not (ref == s1).any():
        pytest.skip("no sacrum in this phantom")
    # the ilium: bone the phantom does not label, more than 3 mm from any labelled vertebra (so
    # not their partial-volume rims), no higher than the sacrum's top (ribs are higher up)
    sp = np.asarray(ph.ct.spacing, dtype=float)
    near = binary_dilation(ref > 0, iterations=max(1, int(round(3.0 / sp.min()))))
    ilium = (ref == 0) & (hu > 250) & ~near
    z_top = ph.ct.index_to_world(np.argwhere(ref == s1))[:, 2].max()
    nz = np.argwhere(ilium)
    ilium[tuple(nz[ph.ct.index_to_world(nz)[:, 2] > z_top].T)] = False
    assert ilium.sum() * sp.prod() > 20_000, (name, "phantom without an ilium?")
    share = float((ilium & (lab == s1)).sum() / ilium.sum())
    assert share < ILIUM_IN_S1_MAX, (name, round(share, 3))


#: Phantoms (drawn by benchmarks/bench_naming.py) on which one vertebra became two labels: a false
#: disc in the flat middle of L4 (1.5 mm: the width-based period 42 mm against 34 mm true put both
#: of its endplates inside the disc window), or in the top body's superior endplate band with soft
#: tissue past it (2.5 and 3 mm: read as a thin disc merged with its endplates).
SPLIT_CASES = {
    "1.5mm-L1-L5-flat-middle": dict(levels="L1-L5", spacing=1.5, seed=643, lordosis_deg=21.1, scoliosis_deg=10.0,
                                    rotation_deg=15.0),
    "3mm-L2-L4-top-band": dict(levels="L2-L4", spacing=3.0, seed=867, lordosis_deg=45.3, rotation_deg=15.0),
    "2.5mm-L2-L4-top-band": dict(levels="L2-L4", spacing=2.5, seed=974, lordosis_deg=44.2, rotation_deg=15.0),
    "3mm-L3-S1-top-band": dict(levels="L3-S1", spacing=3.0, seed=617, lordosis_deg=40.3, scoliosis_deg=10.0,
                               rotation_deg=15.0),
    # osteoporotic: a weak dip on the top band's flank, added as a missing disc towards the end
    "2mm-L3-S1-osteoporotic-top-band": dict(levels="L3-S1", spacing=2.0, seed=692, lordosis_deg=51.022557698907576,
                                            scoliosis_deg=25.0, rotation_deg=15.0, osteoporosis=True),
    # osteoporotic, scoliotic (bench_naming seed 1): the curve leaves the top body (T10) sideways
    # and runs 20 mm through its thin posterior bone (core 80-150 HU, no shell around it): that
    # piece, past a dip in the fat beside the body, was a sixth label (every name shifted)
    "1mm-T10-L2-osteoporotic-side-exit": dict(levels="T10-L2", spacing=1.0, seed=245,
                                              lordosis_deg=50.740679955850176, scoliosis_deg=25.0,
                                              osteoporosis=True),
}


@pytest.mark.parametrize("name", list(SPLIT_CASES))
def test_one_label_per_vertebra(name):
    """As many labels as the phantom has vertebrae, each holding most of one true vertebra, in
    cranio-caudal order (the names of the lumbar-only cases are a no-anchor guess, so the test is
    on the structure; the sacrum-counted case must also be named right)."""
    ph = phantom.make_phantom(**SPLIT_CASES[name])
    seg = segment_spine(ph.ct)
    lab, ref = np.asarray(seg.labels.array), np.asarray(ph.labels.array)
    own = [int(c) for c in np.unique(lab[lab > 0])]
    true = sorted(int(v["label"]) for v in ph.truth["vertebrae"].values())
    assert len(own) == len(true), (name, seg.names, [level_from_verse(c) for c in true])
    # own label -> the true vertebra it mostly holds: one to one, order kept
    held = [_majority(ref, lab == c) for c in own]
    assert held == true, (name, seg.names, [level_from_verse(c) if c else None for c in held])
    # ... and each true vertebra is mostly in one label (>= 80 % of its labelled voxels)
    for c in true:
        v, n = np.unique(lab[(ref == c) & (lab > 0)], return_counts=True)
        assert n.max() >= 0.8 * n.sum(), (name, level_from_verse(c), dict(zip(v.tolist(), n.tolist())))
    if seg.method.startswith("sacrum"):
        assert [level_from_verse(c) for c in own] == [level_from_verse(c) for c in true], (name, seg.names)
