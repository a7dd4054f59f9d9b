"""Routing on observed statistics: the figures are hand-checked here."""

from __future__ import annotations

import datetime as dt
import math

from aiprod.adapters.stats import MemoryStats
from aiprod.domain import routing
from aiprod.domain.job import JobRequest
from aiprod.domain.stats import (
    AttemptSample,
    BackendStats,
    bucket_names,
    expected_cost_usd,
    increments,
    recent,
    total,
)
from aiprod.wiring.config import load_catalog

CATALOG = load_catalog()
LATER = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)  # when test counters may expire
H8, H9, H10, H11 = (f"20261201T{h:02d}0000" for h in (8, 9, 10, 11))


def _stats(backend: str, ok: int, failed: int = 0, charged: int = 0,
           quality: float = 0.9, render_s: float = 50.0,
           error_class: str = "output_check") -> BackendStats:
    samples = [AttemptSample(backend, True, quality=quality, render_s=render_s)
               for _ in range(ok)]
    samples += [AttemptSample(backend, False, error_class=error_class, charged=i < charged)
                for i in range(failed)]
    return BackendStats.of(samples)


def test_expected_cost_of_a_successful_render() -> None:
    # 0.5 USD, 80 % succeed, half the failures billed: 0.5 * (1 + 0.2 * 0.5 / 0.8).
    assert expected_cost_usd(0.5, 0.8, 0.5) == 0.5625
    assert expected_cost_usd(0.5, 0.8, 0.0) == 0.5     # unbilled failures cost nothing
    assert expected_cost_usd(0.4, 0.5, 1.0) == 0.8     # every other render billed for nothing
    assert math.isinf(expected_cost_usd(0.4, 0.0, 1.0))


def test_statistics_of_a_handful_of_attempts() -> None:
    samples = [AttemptSample("b", True, quality=0.9, render_s=50.0) for _ in range(7)]
    samples.append(AttemptSample("b", True, quality=0.9, render_s=200.0))
    samples.append(AttemptSample("b", False, error_class="output_check", charged=True,
                                 quality=0.45))
    samples.append(AttemptSample("b", False, error_class="backend"))
    samples.append(AttemptSample("b", False, error_class="content_refused"))
    stats = BackendStats.of(samples)
    assert (stats.attempts, stats.successes, stats.failed) == (11, 8, 3)
    assert stats.failures == {"output_check": 1, "backend": 1, "content_refused": 1}
    # A refused prompt says nothing about the backend: 8 of 10 judged attempts succeeded.
    assert stats.success_rate == 0.8
    assert stats.charged_share == 1 / 3
    # Scores of every checked output, the failed check's too: (8 * 0.9 + 0.45) / 9.
    assert stats.mean_quality == 0.85
    # Render times of successes in histogram buckets: 50 s lands under 60 s, 200 s under 240 s.
    assert stats.p50_s == 60.0
    assert stats.p95_s == 240.0   # the 8th of 8 (ceil(0.95 * 8) = 8)


def test_statistics_merge_over_shards_and_buckets_by_adding_counters() -> None:
    store = MemoryStats()
    samples = ([AttemptSample("b", True, quality=0.9, render_s=50.0)] * 3
               + [AttemptSample("b", False, error_class="output_check", charged=True)]
               + [AttemptSample("b", True, quality=0.6, render_s=100.0)]
               + [AttemptSample("b", False, error_class="backend")])
    for i, sample in enumerate(samples):  # two hour buckets, three shards
        store.add("b", H8 if i < 3 else H9, i % 3, increments(sample), LATER)
    store.add("b", "20261201T070000", 0, increments(samples[0]), LATER)  # before the window
    store.add("other", H9, 0, increments(samples[0]), LATER)
    buckets = store.since(H8, ["b"])["b"]
    assert sorted(buckets) == [H8, H9]
    merged = BackendStats.from_counters(total(buckets))
    assert merged == BackendStats.of(samples)
    assert (merged.attempts, merged.successes, merged.charged_failures) == (6, 4, 1)
    assert merged.mean_quality == 0.825  # (3 * 0.9 + 0.6) / 4
    assert merged.p50_s == 60.0
    assert merged.p95_s == 120.0


def test_routing_judges_on_the_newest_buckets_that_hold_enough_samples() -> None:
    buckets = {H8: {"attempts": 5}, H9: {"attempts": 3}, H10: {"attempts": 4}}
    at_10 = bucket_names(dt.datetime(2026, 12, 1, 10, 30, tzinfo=dt.UTC), 3600, 4 * 3600)
    assert at_10 == [H10, H9, H8, "20261201T070000"]
    assert recent(buckets, 4, at_10) == {"attempts": 4}     # the current bucket is enough
    assert recent(buckets, 5, at_10) == {"attempts": 7}     # it takes the one before too
    assert recent(buckets, 100, at_10) == {"attempts": 12}  # the window runs out first
    # At 11:05 the current bucket is still empty: the run starts with the previous one.
    at_11 = bucket_names(dt.datetime(2026, 12, 1, 11, 5, tzinfo=dt.UTC), 3600, 4 * 3600)
    assert recent(buckets, 5, at_11) == {"attempts": 7}
    # Nothing in the current or previous bucket: nothing is known now (catalog figures).
    at_12 = bucket_names(dt.datetime(2026, 12, 1, 12, 5, tzinfo=dt.UTC), 3600, 4 * 3600)
    assert recent(buckets, 5, at_12) == {}
    # A bucket without attempts ends the run: what came before it is stale.
    gap = {H8: {"attempts": 50}, H10: {"attempts": 2}}
    assert recent(gap, 20, at_10) == {"attempts": 2}


def test_cheapest_ranks_by_expected_cost_once_there_are_enough_samples() -> None:
    # 5 s: Replicate lists 0.40 USD, Runway 0.60 (Veo cannot render 5 s).
    # Replicate fails half its renders and every failure is billed: 0.4 * (1 + 0.5/0.5) = 0.8.
    seen = {"replicate-seedance": _stats("replicate-seedance", ok=10, failed=10, charged=10)}
    plan = routing.plan(JobRequest(prompt="fox"), CATALOG, observed=seen, min_samples=20)
    assert isinstance(plan, routing.Plan)
    assert plan.backends == ["runway-gen45", "replicate-seedance"]
    replicate = plan.quotes[1]
    assert replicate.expected_cost_usd == 0.8
    assert replicate.estimated_cost_usd == 0.4  # the hold is still the list price
    assert replicate.success_rate == 0.5
    assert plan.estimated_cost_usd == 0.6       # first choice: Runway at list price
    # Under the minimum, the catalog's figures stand.
    early = routing.plan(JobRequest(prompt="fox"), CATALOG, observed=seen, min_samples=21)
    assert isinstance(early, routing.Plan)
    assert early.backends == ["replicate-seedance", "runway-gen45"]
    assert early.quotes[0].success_rate is None


def test_unbilled_failures_do_not_raise_the_expected_cost() -> None:
    seen = {"replicate-seedance": _stats("replicate-seedance", ok=10, failed=10,
                                         error_class="backend")}
    plan = routing.plan(JobRequest(prompt="fox"), CATALOG, observed=seen, min_samples=20)
    assert isinstance(plan, routing.Plan)
    assert plan.backends[0] == "replicate-seedance"
    assert plan.quotes[0].expected_cost_usd == 0.4


def test_observed_quality_under_the_floor_leaves_the_plan_and_says_why() -> None:
    seen = {"replicate-seedance": _stats("replicate-seedance", ok=20, quality=0.5)}
    request = JobRequest(prompt="fox", min_quality=0.6)
    plan = routing.plan(request, CATALOG, observed=seen, min_samples=20)
    assert isinstance(plan, routing.Plan)
    assert plan.backends == ["runway-gen45"]
    # Veo, Hailuo and Kling render no 5 s 720p clip; gen4_turbo only animates images.
    assert plan.stages == {"veo-31-fast": "capability", "veo-31": "capability",
                           "replicate-kling": "capability", "replicate-hailuo": "capability",
                           "runway-gen4-turbo": "capability", "replicate-seedance": "quality"}
    assert plan.problems["replicate-seedance"] == (
        "observed quality 0.5 is below min_quality 0.6 (catalog: 0.8)")
    # It comes back when its outputs score well again.
    seen = {"replicate-seedance": _stats("replicate-seedance", ok=20, quality=0.75)}
    back = routing.plan(request, CATALOG, observed=seen, min_samples=20)
    assert isinstance(back, routing.Plan)
    assert back.backends == ["replicate-seedance", "runway-gen45"]
    assert back.quotes[0].quality == 0.75
    assert back.quotes[0].quality_source == "observed"


def test_observed_quality_can_reject_the_job_with_the_observed_figures() -> None:
    seen = {name: _stats(name, ok=20, quality=0.5) for name in CATALOG.names}
    rejection = routing.plan(JobRequest(prompt="fox", min_quality=0.6), CATALOG,
                             observed=seen, min_samples=20)
    assert isinstance(rejection, routing.Rejection)
    assert rejection.reason is routing.RejectionReason.QUALITY
    assert "the best reaches 0.5" in rejection.detail
    assert rejection.stages["runway-gen45"] == "quality"


def test_fastest_orders_by_observed_p95_else_the_catalog_latency() -> None:
    request = JobRequest(prompt="fox", duration_seconds=6, policy="fastest")
    plan = routing.plan(request, CATALOG)
    assert isinstance(plan, routing.Plan)
    # Catalog typical latencies: Seedance 60 s, Runway 90 s, Veo Fast 120 s, Veo 180 s.
    assert plan.backends == ["replicate-seedance", "runway-gen45", "veo-31-fast", "veo-31"]
    slow = {"replicate-seedance": _stats("replicate-seedance", ok=20, render_s=200.0)}
    plan = routing.plan(request, CATALOG, observed=slow, min_samples=20)
    assert isinstance(plan, routing.Plan)
    assert plan.backends == ["runway-gen45", "veo-31-fast", "veo-31", "replicate-seedance"]
    assert plan.quotes[-1].p95_s == 240.0
    assert plan.quotes[-1].latency_source == "observed"


def test_every_left_out_backend_names_its_stage() -> None:
    plan = routing.plan(JobRequest(prompt="fox", duration_seconds=6, max_cost_usd=0.7),
                        CATALOG, {"veo-31-fast": False})
    assert isinstance(plan, routing.Plan)
    assert plan.backends == ["replicate-seedance"]
    assert plan.stages == {"veo-31-fast": "health", "runway-gen45": "ceiling",
                           "veo-31": "ceiling", "replicate-kling": "capability",
                           "replicate-hailuo": "capability", "runway-gen4-turbo": "capability"}
    assert plan.problems["runway-gen45"] == "costs 0.72 USD, over max_cost_usd 0.7"
    assert [s.name for s in routing.STAGES] == ["quality", "health", "ceiling", "budget"]
