"""spineplan: from a spine CT to a minimally invasive surgical plan.

Research software for planning support. It is **not** a certified medical device:
every plan must be checked by a qualified surgeon on the original images.

The package namespace is kept light so that ``import spineplan`` is fast; heavy
modules (segmentation, rendering, reports) are imported where they are used.
"""

__version__ = "0.1.0"

DISCLAIMER = (
    "spineplan is research software for planning support, not a certified medical device. "
    "Every measurement, level name and screw must be verified by a qualified surgeon on the "
    "original images before any clinical use."
)

from spineplan.errors import SpinePlanError  # noqa: E402  (light module)

__all__ = ["__version__", "DISCLAIMER", "SpinePlanError"]
