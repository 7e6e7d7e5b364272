"""Automatic level names on osteoporotic bone: the marrow is nearly as dark as the discs, a disc
can be missed and two vertebrae counted as one (benchmarks/bench_naming.py: every misnamed phantom
was osteoporotic, some with confidence 0.7-0.8). ``analyse`` caps their confidence below the plan's
limit and says why; healthy bone keeps its confidence."""

from __future__ import annotations

import pytest

from spineplan.anatomy.pipeline import OSTEOPOROTIC_NAMING_CONFIDENCE_MAX, analyse
from spineplan.workflow import NAMING_CONFIDENCE_MIN

phantom = pytest.importorskip("spineplan.phantom")


@pytest.mark.parametrize("osteoporosis", [True, False])
def test_osteoporotic_names_ask_for_a_confirmed_level(osteoporosis):
    # the sacrum is in the scan: the count from it alone gives 0.8 on healthy bone
    ph = phantom.make_phantom(levels="L3-S1", spacing=2.0, seed=11, osteoporosis=osteoporosis)
    spine = analyse(ph.ct)
    hu = [v.measurements["cancellous_hu"] for v in spine.vertebrae if v.complete and v.name != "S1"]
    text = " ".join(spine.warnings)
    if osteoporosis:
        assert max(hu) < 110.0, hu  # the phantom's marrow reads osteoporotic (Pickhardt 2013: < 110 HU)
        assert spine.naming_confidence <= OSTEOPOROTIC_NAMING_CONFIDENCE_MAX < NAMING_CONFIDENCE_MIN
        assert "osteoporotic" in text and "--anchor" in text
    else:
        assert min(hu) > 150.0, hu
        assert spine.naming_confidence >= NAMING_CONFIDENCE_MIN, (spine.naming_confidence, spine.naming_method)
        assert "osteoporotic" not in text
