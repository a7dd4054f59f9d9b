"""Routing that learns, end to end on the local stack: a simulator that starts
returning blank clips is ranked away from once its outputs say so, and routed to
again after it recovers; the statistics behind it are real Firestore increments."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from aiprod.adapters.stats import FirestoreStats
from aiprod.domain.stats import BackendStats, total
from aiprod_dev.cli.main import main
from tests.conftest import LocalStack, running_stack

pytestmark = pytest.mark.emulator

CHEAP = "replicate-seedance"  # 4 s: 0.32 USD, then veo-31-fast 0.40, runway-gen45 0.48
BUCKET_S = 10
MIN_SAMPLES = 3


@pytest.fixture(scope="module")
def learning(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # Few samples, short buckets, no cache, quick polls: the shift shows within
    # seconds. Circuits that never open, so the statistics alone move the route.
    with running_stack(tmp_path_factory.mktemp("learning"), AIPROD_POLL_INTERVAL_S="0.3",
                       AIPROD_ROUTING_MIN_SAMPLES=str(MIN_SAMPLES),
                       AIPROD_STATS_BUCKET_S=str(BUCKET_S), AIPROD_STATS_CACHE_S="0",
                       AIPROD_CIRCUIT_STRIKES="1000") as started:
        yield started


def _quote(stack: LocalStack, **params: Any) -> dict[str, Any]:
    response = stack.http.get(f"{stack.api}/v1/quote", headers=stack.auth, timeout=30,
                              params={"prompt": "fox", "duration_seconds": 4} | params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _run(stack: LocalStack, **body: Any) -> dict[str, Any]:
    job = stack.submit(prompt="a heron over a lake", duration_seconds=4, **body)
    return stack.wait(job["id"], timeout=60)


def test_concurrent_increments_from_many_writers_all_count(learning: LocalStack) -> None:
    stats = FirestoreStats(learning.firestore())
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    counters = {"attempts": 1, "successes": 1, "quality_n": 1, "quality_sum": 0.5}
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda i: stats.add("test-backend", "29990101T000000", i % 4, counters,
                                          later), range(60)))
    buckets = stats.since("29990101T000000", ["test-backend"])["test-backend"]
    seen = BackendStats.from_counters(total(buckets))
    assert (seen.attempts, seen.successes, seen.quality_n) == (60, 60, 60)
    assert seen.mean_quality == 0.5


def test_blank_clips_shift_routing_away_and_back_after_recovery(learning: LocalStack) -> None:
    assert _quote(learning)["plan"][0]["backend"] == CHEAP
    learning.fault("replicate", "blank")
    for _ in range(MIN_SAMPLES):
        job = _run(learning)
        assert [a["backend"] for a in job["attempts"]] == [CHEAP, "veo-31-fast"]
        assert job["attempts"][0]["error"]["code"] == "output_check_failed"
        assert job["status"] == "SUCCEEDED"

    # The next job goes to Veo first: the blank clips were billed and failed, so a
    # successful render on Replicate has no finite expected cost.
    job = _run(learning)
    quote = _quote(learning)
    assert [a["backend"] for a in job["attempts"]] == ["veo-31-fast"], quote
    cheap = next(q for q in quote["plan"] if q["backend"] == CHEAP)
    assert quote["plan"][-1] == cheap
    assert cheap["success_rate"] == 0.0
    assert cheap["expected_cost_usd"] is None
    assert cheap["estimated_cost_usd"] == 0.32
    # A floor of 0.6 leaves it out altogether, and says why.
    floor = _quote(learning, min_quality=0.6)
    left = {row["backend"]: row for row in floor["left_out"]}
    assert left[CHEAP]["stage"] == "quality"
    assert left[CHEAP]["why"].startswith("observed quality")
    backends = learning.http.get(f"{learning.api}/v1/backends", headers=learning.auth,
                                 timeout=30).json()
    observed = next(b for b in backends["backends"] if b["name"] == CHEAP)["observed"]
    assert observed["failures"]["output_check"] >= MIN_SAMPLES
    assert observed["charged_failures"] >= MIN_SAMPLES
    assert observed["successes"] == 0
    shown = CliRunner().invoke(main, ["backends", "--api", learning.api],
                               env={"AIPROD_API_KEY": learning.api_key, "COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    row = next(line for line in shown.output.splitlines() if CHEAP in line)
    assert f"│ {observed['attempts']} " in row  # attempts
    assert f"{observed['attempts']} ({observed['charged_failures']})" in row

    # It recovers. With no attempt on it for a bucket, its figures are stale and the
    # catalog's stand again: it is tried, and stays first on what it now renders.
    learning.fault("replicate", "ok")
    deadline = time.monotonic() + 4 * BUCKET_S
    while _quote(learning)["plan"][0]["backend"] != CHEAP:
        assert time.monotonic() < deadline, "routing never came back to the recovered backend"
        time.sleep(1)
    for _ in range(MIN_SAMPLES):
        job = _run(learning)
        assert [a["backend"] for a in job["attempts"]] == [CHEAP]
    first = _quote(learning)["plan"][0]
    assert first["backend"] == CHEAP
    assert first["success_rate"] == 1.0

    # `aiprod report` over the same job records: the billed blank clips are the gap
    # between what was spent and what the hindsight route would have cost.
    out = CliRunner().invoke(main, ["report", "--json", "--project", learning.state["project"]],
                             env={"FIRESTORE_EMULATOR_HOST":
                                  learning.state["env"]["FIRESTORE_EMULATOR_HOST"]})
    assert out.exit_code == 0, out.output
    spent = json.loads(out.output)
    row = spent["backends"][CHEAP]
    assert row["charged_failures"] == MIN_SAMPLES
    assert row["succeeded"] == MIN_SAMPLES
    total = spent["total"]
    assert total["spend_usd"] - total["hindsight_usd"] == pytest.approx(0.32 * MIN_SAMPLES)
