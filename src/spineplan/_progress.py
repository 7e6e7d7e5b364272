"""Progress bars for long work (tqdm on stderr; silent when ``SPINEPLAN_PROGRESS=0``)."""

from __future__ import annotations

import os
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a terminal progress bar labelled ``desc``."""
    if os.environ.get("SPINEPLAN_PROGRESS", "1") == "0":
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
