"""Shared fixtures: where the real SNS/ISIS runs are, and a skip when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LONGEST_FIRST = ("systemd", "slow")
"""Markers of the tests that take longest, in that order. The suite runs them first (one
queue, each parallel worker taking the next test: ``--dist load --maxschedchunk 1`` in
pyproject.toml), so that no worker starts a minute-long test when the others are done."""

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIVEREDUCE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real runs (../shared/data, or $LIVEREDUCE_DATA); skips when absent."""
    if not (SHARED_DATA / "HYS_178921.nxs.h5").is_file():
        pytest.skip(f"real SNS runs not found in {SHARED_DATA} (set LIVEREDUCE_DATA)")
    return SHARED_DATA


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the tests longest first (:data:`LONGEST_FIRST`); a stable sort, so that each
    group keeps its collection order."""

    def rank(item: pytest.Item) -> int:
        for position, name in enumerate(LONGEST_FIRST):
            if item.get_closest_marker(name) is not None:
                return position
        return len(LONGEST_FIRST)

    items.sort(key=rank)
