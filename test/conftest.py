"""Shared fixtures: where the real SNS/ISIS runs are, and a skip when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIVEREDUCE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real runs (../shared/data, or $LIVEREDUCE_DATA); skips when absent."""
    if not (SHARED_DATA / "HYS_178921.nxs.h5").is_file():
        pytest.skip(f"real SNS runs not found in {SHARED_DATA} (set LIVEREDUCE_DATA)")
    return SHARED_DATA
