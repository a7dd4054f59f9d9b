"""Backend statistics on in-memory fakes: a finished attempt counts once, and what the
counts say changes the next job's plan (and shows in /v1/quote's figures)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from aiprod.domain import routing
from aiprod.domain.job import JobRequest, JobStatus
from aiprod.services import admission, stats
from tests.fakes import Fakes, fake_runtime, sample_video
from tests.service_helpers import admit, deliver

CHEAP = "replicate-seedance"  # the cheapest for 4 s: 0.32 USD, then Veo 0.40, Runway 0.48


@pytest.fixture
def learning(tmp_path: Path) -> Fakes:
    return fake_runtime(tmp_path, routing_min_samples=2, stats_cache_s=0)


def _blank_then_fallback(fx: Fakes, job_id: str) -> None:
    """A job whose first backend renders a blank clip (billed, fails the check) and
    whose second succeeds."""
    job = admit(fx, job_id)
    assert job.plan[0] == CHEAP
    after = deliver(fx, job)
    assert after.attempts[0].error is not None
    assert after.attempts[0].error.code == "output_check_failed"
    done = deliver(fx, after, attempt=1)
    assert done.status is JobStatus.SUCCEEDED


def test_each_finished_attempt_counts_once(learning: Fakes) -> None:
    fx = learning
    fx.provider(CHEAP).video = sample_video(4, blank=True)
    _blank_then_fallback(fx, "job_1")
    job = fx.store.get("job_1")
    assert job is not None
    deliver(fx, job, attempt=1, delivery="redelivered")  # changes nothing, counts nothing

    seen = stats.window(fx.rt)
    cheap, veo = seen[CHEAP], seen["veo-31-fast"]
    assert (cheap.attempts, cheap.successes, cheap.failures) == (1, 0, {"output_check": 1})
    assert cheap.charged_failures == 1   # the blank clip was rendered, so it was billed
    assert cheap.mean_quality is not None
    assert cheap.mean_quality < 0.5
    assert (veo.attempts, veo.successes, veo.quality_n) == (1, 1, 1)
    assert veo.mean_quality == job.quality_score
    assert veo.p95_s is not None


def quality_changes(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    """The routing_quality_changes points emitted, by their labels (alerted on)."""
    fields = [getattr(r, "fields", {}) for r in caplog.records]
    return [f["metric_labels"] for f in fields if f.get("metric") == "routing_quality_changes"]


def test_blank_clips_move_a_backend_to_the_end_of_the_plan_and_out_of_high_floors(
        learning: Fakes, caplog: pytest.LogCaptureFixture) -> None:
    fx = learning
    fx.provider(CHEAP).video = sample_video(4, blank=True)
    _blank_then_fallback(fx, "job_1")
    _blank_then_fallback(fx, "job_2")

    job = admit(fx, "job_3")
    # Its blank clips score under every other 4 s backend: it goes last.
    assert job.plan == ["veo-31-fast", "runway-gen45", "veo-31", CHEAP]
    plan = admission.quote(fx.rt, JobRequest(prompt="fox", duration_seconds=4))
    assert isinstance(plan, routing.Plan)
    cheap = plan.quotes[-1]
    assert cheap.success_rate == 0.0
    assert cheap.figures()["expected_cost_usd"] is None   # no success: no finite cost
    assert cheap.estimated_cost_usd == 0.32

    with caplog.at_level(logging.INFO):
        floor = admit(fx, "job_4", min_quality=0.6)
    assert CHEAP not in floor.plan
    assert any("backend left the plan for quality: observed quality" in r.getMessage()
               for r in caplog.records)
    assert quality_changes(caplog) == [{"backend": CHEAP, "change": "left"}]


def test_a_backend_ranked_away_is_tried_again_once_its_figures_go_stale(
        learning: Fakes, caplog: pytest.LogCaptureFixture) -> None:
    fx = learning
    fx.provider(CHEAP).video = sample_video(4, blank=True)
    _blank_then_fallback(fx, "job_1")
    _blank_then_fallback(fx, "job_2")
    assert admit(fx, "job_3", min_quality=0.6).plan[-1] != CHEAP
    # Two hours without an attempt on it: the old figures are stale, the catalog's stand.
    fx.clock.advance(2 * 3600)
    fx.provider(CHEAP).video = None  # it recovered
    with caplog.at_level(logging.INFO):
        again = admit(fx, "job_4", min_quality=0.6)
        assert again.plan[0] == CHEAP
        assert any(r.getMessage() == "backend rejoined the plan: catalog quality 0.8"
                   for r in caplog.records)
        assert {"backend": CHEAP, "change": "rejoined"} in quality_changes(caplog)
        assert deliver(fx, again).status is JobStatus.SUCCEEDED
        second = admit(fx, "job_5", min_quality=0.6)
        assert deliver(fx, second).status is JobStatus.SUCCEEDED
        # Now it is judged on two good outputs: observed, and back in the plan on merit.
        plan = admission.quote(fx.rt, JobRequest(prompt="fox", duration_seconds=4,
                                                 min_quality=0.6))
    assert isinstance(plan, routing.Plan)
    assert plan.quotes[0].backend == CHEAP
    assert plan.quotes[0].quality_source == "observed"
    assert plan.quotes[0].success_rate == 1.0
