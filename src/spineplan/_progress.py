"""Progress bars for long work (tqdm on stderr).

Silent when ``SPINEPLAN_PROGRESS=0`` or inside :func:`silenced` (e.g. ``spineplan plan
--no-progress``: no bar of the plan's steps nor of the anatomy, measuring or planning loops
they run, including those run on worker threads)."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_silenced = 0  # depth of active silenced() blocks (process-wide: worker threads see it too)


def enabled() -> bool:
    """Whether progress bars are shown now."""
    return _silenced == 0 and os.environ.get("SPINEPLAN_PROGRESS", "1") != "0"


@contextlib.contextmanager
def silenced(active: bool = True) -> Iterator[None]:
    """No progress bars while inside (``active=False``: no change)."""
    global _silenced
    if not active:
        yield
        return
    with _lock:
        _silenced += 1
    try:
        yield
    finally:
        with _lock:
            _silenced -= 1


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a terminal progress bar labelled ``desc``."""
    if not enabled():
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def progress_steps(steps: Iterable[tuple[str, T]], desc: str) -> Iterator[tuple[str, T]]:
    """:func:`progress` over named steps ``(name, item)``, the current step's name shown on the bar."""
    steps = list(steps)
    if not enabled():
        yield from steps
        return
    from tqdm import tqdm

    bar = tqdm(steps, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    for name, item in bar:
        bar.set_postfix_str(name)
        yield name, item
