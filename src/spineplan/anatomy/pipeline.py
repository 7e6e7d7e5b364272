"""CT (+ optional labels) -> measured, named, graded :class:`~spineplan.anatomy.model.Spine`."""

from __future__ import annotations

from spineplan.anatomy.model import Spine
from spineplan.anatomy.spine import build_spine
from spineplan.volume import Volume

#: Automatic level names on osteoporotic bone (median cancellous density of the complete vertebrae
#: below ``spineplan.anatomy.measure.OSTEOPOROSIS_HU``) keep at most this confidence, below the
#: plan's ``NAMING_CONFIDENCE_MIN`` (0.6), so the plan asks for one level to be confirmed: the
#: marrow is then nearly as dark as a disc, a disc can be missed and two vertebrae counted as one.
#: benchmarks/bench_naming.py (80 phantoms, 30 % osteoporotic, session 7): all 6 misnamed cases
#: were osteoporotic (6 of 29; 0 of 51 others), 3 of them named with confidence 0.7-0.8.
OSTEOPOROTIC_NAMING_CONFIDENCE_MAX = 0.5


def osteoporotic_naming_check(spine: Spine) -> None:
    """Cap the naming confidence of ``spine`` (in place, with a warning) when its bone is
    osteoporotic; see :data:`OSTEOPOROTIC_NAMING_CONFIDENCE_MAX`."""
    import numpy as np

    from spineplan.anatomy.measure import OSTEOPOROSIS_HU

    hu = [v.measurements["cancellous_hu"] for v in spine.vertebrae
          if v.complete and v.name != "S1" and "cancellous_hu" in v.measurements]
    med = float(np.median(hu)) if hu else None
    if med is None or med >= OSTEOPOROSIS_HU:
        return
    if spine.naming_confidence > OSTEOPOROTIC_NAMING_CONFIDENCE_MAX:
        spine.naming_confidence = OSTEOPOROTIC_NAMING_CONFIDENCE_MAX
    spine.warnings.append(
        f"The bone looks osteoporotic (median cancellous density {med:.0f} HU, below "
        f"{OSTEOPOROSIS_HU:.0f} HU): its marrow is nearly as dark as the discs, so a disc can be missed and two "
        "vertebrae counted as one, shifting every name. The automatic names' confidence is capped at "
        f"{OSTEOPOROTIC_NAMING_CONFIDENCE_MAX:.1f}: count the levels on the images and confirm one (--anchor) "
        "before choosing a level.")


def analyse(ct: Volume, labels: Volume | None = None, *, anchor=None, backend: str = "builtin") -> Spine:
    """Segment and name the vertebrae when ``labels`` is None, then measure and grade them.

    ``labels`` is a VerSe-coded label map on the CT grid (e.g. ``spineplan.io.read_labels(...).volume``);
    ``anchor`` and ``backend`` are passed to :func:`spineplan.anatomy.segment.segment_spine`.
    """
    if labels is not None:
        return build_spine(ct, labels, names_confidence=1.0, method="labels (given)")
    from spineplan.anatomy.segment import segment_spine  # heavy; landing with the segmentation work

    seg = segment_spine(ct, anchor=anchor, backend=backend)
    spine = build_spine(ct, seg.labels, names_confidence=seg.confidence, method=seg.method,
                        warnings=seg.warnings)
    if anchor is None and backend == "builtin":  # (a user's anchor, or another segmenter, is not this count)
        osteoporotic_naming_check(spine)
    return spine
