"""One exception family whose messages a surgeon or researcher can act on.

Every message says *which* input is wrong, *what* is wrong and *what to do*. The CLI prints
the message without a traceback and exits non-zero.
"""


class SpinePlanError(Exception):
    """Base class of every error spineplan raises on purpose."""

    exit_code = 2


class InputError(SpinePlanError):
    """An input file or folder cannot be used (missing, corrupt, not a CT, inconsistent)."""


class LabelError(InputError):
    """A label map cannot be used with the CT (unknown convention, grid mismatch, empty)."""


class NoVertebraeError(SpinePlanError):
    """No vertebrae were found where a spine was expected."""


class PlanFormatError(SpinePlanError):
    """A plan file is malformed, of another format or of an unsupported version."""


class PlanningError(SpinePlanError):
    """A plan cannot be made as asked (unknown level, level not in the scan, ...)."""


class RegistrationError(SpinePlanError):
    """2D/3D registration failed or its result cannot be trusted."""


class MissingDependencyError(SpinePlanError):
    """An optional dependency is needed for this feature and is not installed."""
