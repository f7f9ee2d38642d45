"""Shared fixtures: small SpatialData objects built from the core helpers (fast), and the shared real data."""

from __future__ import annotations

from pathlib import Path

import pytest
from _helpers import make_small_sdata, shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()


@pytest.fixture
def small_sdata():
    return make_small_sdata()
