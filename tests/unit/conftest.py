"""Fixtures for the service tests: a Runtime on in-memory fakes (tests/fakes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes import Fakes, fake_runtime


@pytest.fixture
def fx(tmp_path: Path) -> Fakes:
    return fake_runtime(tmp_path)
