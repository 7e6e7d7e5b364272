"""Reading a small text input (a plan, a catalogue) with one clear error for each way it can fail."""

from __future__ import annotations

from pathlib import Path

from .errors import SpinePlanError


def read_text(path, error: type[SpinePlanError], what: str, hint: str, *, encoding: str = "utf-8") -> str:
    """The text of ``path``, or ``error`` saying which file, what went wrong and (for a missing file) ``hint``.

    ``what`` names the file for the message (e.g. ``"plan file"``); ``hint`` says what to give instead.
    """
    path = Path(path)
    try:
        return path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}. {hint}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}. {hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {what} ({exc}).") from None
