"""CT (+ optional labels) -> measured, named, graded :class:`~spineplan.anatomy.model.Spine`."""

from __future__ import annotations

from spineplan.anatomy.model import Spine
from spineplan.anatomy.spine import build_spine
from spineplan.volume import Volume


def analyse(ct: Volume, labels: Volume | None = None, *, anchor=None, backend: str = "builtin") -> Spine:
    """Segment and name the vertebrae when ``labels`` is None, then measure and grade them.

    ``labels`` is a VerSe-coded label map on the CT grid (e.g. ``spineplan.io.read_labels(...).volume``);
    ``anchor`` and ``backend`` are passed to :func:`spineplan.anatomy.segment.segment_spine`.
    """
    if labels is not None:
        return build_spine(ct, labels, names_confidence=1.0, method="labels (given)")
    from spineplan.anatomy.segment import segment_spine  # heavy; landing with the segmentation work

    seg = segment_spine(ct, anchor=anchor, backend=backend)
    return build_spine(ct, seg.labels, names_confidence=seg.confidence, method=seg.method,
                       warnings=seg.warnings)
