"""Each contract module drives one simulator (its module-level PROVIDER), started once
per module in-process and reset before every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aiprod_dev.sim import control
from aiprod_dev.sim.testing import running_simulator


@pytest.fixture(scope="module")
def sim(request: pytest.FixtureRequest) -> Iterator[str]:
    with running_simulator(request.module.PROVIDER, latency=0.0, seed=7) as base_url:
        yield base_url


@pytest.fixture(autouse=True)
def _clean(sim: str) -> None:
    control.reset(sim)
