"""Shared test fixtures.

Real CT data: set ``SPINEPLAN_TEST_DATA`` to the shared data folder (CI does). Tests that need
it skip with a reason only when the variable is unset (a user's clone); when it is set but
missing, or when running under CI without it, they fail loudly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("SPINEPLAN_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    env = os.environ.get("SPINEPLAN_TEST_DATA")
    if not env:
        if os.environ.get("CI"):
            pytest.fail("CI is set but SPINEPLAN_TEST_DATA is not: the real-CT tests cannot run.", pytrace=False)
        pytest.skip("SPINEPLAN_TEST_DATA is not set (point it at the shared real-CT data folder)")
    path = Path(env)
    if not path.is_dir():
        pytest.fail(f"SPINEPLAN_TEST_DATA={env} does not exist: the real-CT tests cannot run.", pytrace=False)
    return path


@pytest.fixture(scope="session")
def data_file(data_dir):
    """Return a function that resolves a path under the data folder, failing if it is missing."""

    def get(rel: str) -> Path:
        p = data_dir / rel
        if not p.exists():
            pytest.fail(f"Test data file missing: {p}", pytrace=False)
        return p

    return get
