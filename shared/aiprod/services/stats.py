"""Observed backend statistics: recorded when an attempt finishes, read by routing.

Recording is one batch of server-side increments into the backend's current hour
bucket (one of `stats_shards` documents; adapters/stats.py). It runs right after
the attempt's end was committed, and only when that commit changed the job, so a
redelivered message counts nothing twice. It is advisory: a failure to record is
logged and never fails the render (the sample is lost, the job is not).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import weakref

from aiprod.domain import routing
from aiprod.domain.job import AttemptStatus, ErrorClass, Job
from aiprod.domain.stats import (
    AttemptSample,
    BackendStats,
    bucket_names,
    bucket_of,
    increments,
    recent,
    total,
)
from aiprod.observability.logs import log
from aiprod.services import telemetry
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)
def sample_of(job: Job, index: int, quality: float | None = None) -> AttemptSample | None:
    """What attempt `index` of `job` says about its backend; None when it says nothing
    (skipped without a call, cancelled, or not ended)."""
    attempt = job.attempts[index]
    if attempt.status is AttemptStatus.SUCCEEDED:
        render_s = None
        if attempt.ended_at is not None:
            render_s = max(0.0, (attempt.ended_at - attempt.started_at).total_seconds())
        score = quality if quality is not None else job.quality_score
        return AttemptSample(attempt.backend, True, quality=score, render_s=render_s)
    if attempt.status is not AttemptStatus.FAILED or attempt.error is None:
        return None
    if attempt.error.error_class is ErrorClass.SKIPPED:
        return None
    return AttemptSample(attempt.backend, False, error_class=attempt.error.error_class.value,
                         charged=attempt.cost_usd > 0, quality=quality)


def attempt_ended(rt: Runtime, job: Job, index: int, quality: float | None = None) -> None:
    """Count attempt `index` of `job`, which just ended (`quality`: the output check's
    score when an output was checked, passed or not)."""
    sample = sample_of(job, index, quality)
    if sample is None:
        return
    ended = job.attempts[index].ended_at or rt.clock()
    try:
        rt.stats.add(sample.backend, bucket_of(ended, rt.settings.stats_bucket_s),
                     random.randrange(max(1, rt.settings.stats_shards)), increments(sample),
                     expires_at=ended + dt.timedelta(seconds=rt.settings.stats_window_s
                                                     + rt.settings.stats_bucket_s))
    except Exception as error:  # advisory: never fail a finished render over a statistic
        log(logger, logging.WARNING, f"backend statistics not recorded: {error}",
            job_id=job.id, backend=sample.backend)


Buckets = dict[str, dict[str, dict[str, float]]]  # backend -> bucket -> counters
_cache_lock = threading.Lock()
_cache: weakref.WeakKeyDictionary[object, tuple[float, Buckets]] = weakref.WeakKeyDictionary()


def _window(rt: Runtime) -> list[str]:
    return bucket_names(rt.clock(), rt.settings.stats_bucket_s, rt.settings.stats_window_s)


def _buckets(rt: Runtime) -> Buckets:
    """Every backend's counters per bucket over the window (AIPROD_STATS_WINDOW_S), read
    at most once per AIPROD_STATS_CACHE_S per process (admission asks for every job)."""
    key: object = rt.stats
    now = rt.monotonic()
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and now - hit[0] < rt.settings.stats_cache_s:
            return hit[1]
    try:
        buckets = rt.stats.since(_window(rt)[-1], rt.catalog.names)
    except Exception as error:  # routing falls back on the catalog's figures
        log(logger, logging.WARNING, f"backend statistics unavailable: {error}")
        return {}
    with _cache_lock:
        _cache[key] = (now, buckets)
    return buckets


def observed(rt: Runtime) -> dict[str, BackendStats]:
    """What routing judges each backend by: its newest buckets holding at least
    AIPROD_ROUTING_MIN_SAMPLES attempts (aiprod.domain.stats.recent)."""
    names = _window(rt)
    return {name: BackendStats.from_counters(recent(b, rt.settings.routing_min_samples, names))
            for name, b in _buckets(rt).items()}


def window(rt: Runtime) -> dict[str, BackendStats]:
    """Each backend's figures over the whole window (what `GET /v1/backends` shows)."""
    return {name: BackendStats.from_counters(total(b)) for name, b in _buckets(rt).items()}


_left_for_quality: weakref.WeakKeyDictionary[object, set[str]] = weakref.WeakKeyDictionary()


def note_quality_changes(rt: Runtime, decision: routing.Plan | routing.Rejection,
                         job_id: str) -> None:
    """Log a backend leaving a job's plan because its observed quality fell under the
    job's floor (its catalog score would have passed), and its rejoining a plan once
    its outputs score well enough again (as seen by this process)."""
    quality_out = {name for name, stage in decision.stages.items() if stage == "quality"
                   and decision.problems[name].startswith("observed")}
    for name in sorted(quality_out):
        log(logger, logging.WARNING, f"backend left the plan for quality: "
            f"{decision.problems[name]}", job_id=job_id, backend=name, change="left")
        telemetry.routing_quality_change(name, "left", job_id)
    with _cache_lock:
        left = _left_for_quality.setdefault(rt.stats, set())
    if isinstance(decision, routing.Plan):
        for q in decision.quotes:
            if q.backend in left:
                log(logger, logging.INFO, f"backend rejoined the plan: {q.quality_source} "
                    f"quality {q.quality}", job_id=job_id, backend=q.backend, change="rejoined")
                telemetry.routing_quality_change(q.backend, "rejoined", job_id)
                left.discard(q.backend)
    left.update(quality_out)
