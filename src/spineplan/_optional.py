"""Optional dependencies fail only when first used, with a message saying what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from spineplan.errors import MissingDependencyError


def optional_import(module: str, extra: str, feature: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip extra.

    >>> optional_import("math", "none").sqrt(4.0)
    2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        what = f" for {feature}" if feature else ""
        raise MissingDependencyError(
            f"The Python package '{module.split('.')[0]}' is needed{what} but is not installed. "
            f"Install it with: pip install 'spineplan[{extra}]'"
        ) from exc
