"""`aiprod replay`: routing policies against a simulated world, in-process, in seconds.

A trace is JSON lines, one job each: `{"at_s": 12.5, "request": {<POST /v1/jobs body>}}`.
A profile is YAML, one entry per backend of the world (any catalog backends; routing
chooses among those the profile names): `success` (the chance a render
succeeds), `charged_on_failure` (the chance a failure is billed anyway), `quality`
(`{mean, sd}` of the output score), `latency_s` (`{p50, p95}`, log-normal), and
optional `changes: [{at_s, <any of those>}]` for drift.

Every (job, backend) pair's outcome is drawn from its own RNG, seeded by `--seed`, the
job's index and the backend's name, so every policy meets the same world: the same
job on the same backend succeeds or fails the same way whichever policy sent it.

The policies run AIPROD's real code: `aiprod.domain.routing.plan` for the route, and
for `learned` the statistics path as the functions run it (`domain.stats.increments`
of each finished attempt into a `MemoryStats` store, bucketed as the render function
buckets them, visible only once the attempt has finished, read back over the window
and judged on the newest buckets holding AIPROD_ROUTING_MIN_SAMPLES attempts). A
failed attempt falls back to the plan's next backend, as the render function does.
Not modelled: circuit breakers, the daily budget, concurrency limits.

- `fixed`: the catalog's order (Runway, Veo, Replicate).
- `catalog`: `cheapest` on the catalog's figures alone.
- `learned`: `cheapest` with observed statistics.
- `hindsight`: each job sent straight to the cheapest backend that, in this world,
  would have succeeded at or above the job's `min_quality` (within its `max_cost_usd`).

Each result: `jobs`, `succeeded`, `failed` (rejected jobs included), `spend_usd` (every
billed attempt), `mean_quality` (of delivered videos), `under_floor` (delivered below
their `min_quality`), `p95_time_s` (nearest rank, over delivered jobs, from the first
attempt's start to the delivery, fallbacks included).
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from aiprod.adapters.stats import MemoryStats
from aiprod.domain import routing
from aiprod.domain.catalog import Catalog
from aiprod.domain.job import JobRequest, Policy
from aiprod.domain.pricing import estimate_usd
from aiprod.domain.stats import (
    AttemptSample,
    BackendStats,
    bucket_names,
    bucket_of,
    increments,
    recent,
)

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
Z95 = 1.6448536269514722  # the standard normal's 95th percentile
POLICIES = ("fixed", "catalog", "learned")


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QualityDist(_Closed):
    mean: float = Field(ge=0, le=1)
    sd: float = Field(default=0.0, ge=0)


class LatencyDist(_Closed):
    p50: float = Field(gt=0)
    p95: float = Field(gt=0)


class Change(_Closed):
    at_s: float = Field(ge=0)
    success: float | None = Field(default=None, ge=0, le=1)
    charged_on_failure: float | None = Field(default=None, ge=0, le=1)
    quality: QualityDist | None = None
    latency_s: LatencyDist | None = None


class BackendWorld(_Closed):
    success: float = Field(ge=0, le=1)
    charged_on_failure: float = Field(default=0.0, ge=0, le=1)
    quality: QualityDist
    latency_s: LatencyDist
    changes: list[Change] = Field(default_factory=list)

    def at(self, at_s: float) -> BackendWorld:
        """This backend as it is at `at_s`, every change up to then applied in order."""
        now = self
        for change in sorted(self.changes, key=lambda c: c.at_s):
            if change.at_s > at_s:
                break
            now = now.model_copy(update={k: v for k, v in change if k != "at_s"
                                         and v is not None})
        return now


@dataclass(frozen=True)
class TraceJob:
    at_s: float
    request: JobRequest


@dataclass(frozen=True)
class Outcome:
    """What one backend does with one job in this world."""

    succeeded: bool
    charged: bool
    quality: float
    seconds: float


def load_trace(path: Path) -> list[TraceJob]:
    jobs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            jobs.append(TraceJob(float(row["at_s"]), JobRequest.model_validate(row["request"])))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: {error}") from error
    return sorted(jobs, key=lambda j: j.at_s)


def load_profile(path: Path, catalog: Catalog) -> dict[str, BackendWorld]:
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected one entry per backend")
    unknown = set(raw) - set(catalog.names)
    if unknown or not raw:
        raise ValueError(f"{path}: the profile names catalog backends, at least one "
                         f"(unknown {sorted(unknown)})")
    return {name: BackendWorld.model_validate(raw[name]) for name in catalog.names
            if name in raw}


def profiled(catalog: Catalog, profile: Mapping[str, BackendWorld]) -> Catalog:
    """The catalog of the profile's world: its backends only, in catalog order."""
    return catalog.model_copy(update={"backends": tuple(
        b for b in catalog.backends if b.name in profile)})


class World:
    """The profile, drawn once per (job, backend) pair."""

    def __init__(self, profile: Mapping[str, BackendWorld], seed: int) -> None:
        self.profile = profile
        self.seed = seed
        self._drawn: dict[tuple[int, str], Outcome] = {}

    def outcome(self, index: int, job: TraceJob, backend: str) -> Outcome:
        key = (index, backend)
        if key not in self._drawn:
            rng = random.Random(f"{self.seed}:{index}:{backend}")
            spec = self.profile[backend].at(job.at_s)
            succeeded = rng.random() < spec.success
            charged = not succeeded and rng.random() < spec.charged_on_failure
            quality = min(1.0, max(0.0, rng.gauss(spec.quality.mean, spec.quality.sd)))
            sigma = max(0.0, math.log(spec.latency_s.p95 / spec.latency_s.p50) / Z95)
            seconds = spec.latency_s.p50 * math.exp(sigma * rng.gauss(0.0, 1.0))
            self._drawn[key] = Outcome(succeeded, charged, round(quality, 4), seconds)
        return self._drawn[key]


@dataclass
class JobResult:
    delivered: bool = False
    spend_usd: float = 0.0
    quality: float | None = None
    under_floor: bool = False
    seconds: float | None = None
    backends: list[str] = field(default_factory=list)


@dataclass
class Result:
    jobs: list[JobResult]

    def summary(self) -> dict[str, Any]:
        delivered = [j for j in self.jobs if j.delivered]
        qualities = [j.quality for j in delivered if j.quality is not None]
        times = sorted(j.seconds for j in delivered if j.seconds is not None)
        return {"jobs": len(self.jobs), "succeeded": len(delivered),
                "failed": len(self.jobs) - len(delivered),
                "spend_usd": round(sum(j.spend_usd for j in self.jobs), 4),
                "mean_quality": round(sum(qualities) / len(qualities), 4) if qualities else None,
                "under_floor": sum(1 for j in delivered if j.under_floor),
                "p95_time_s": round(nearest_rank(times, 0.95), 1) if times else None}


def nearest_rank(ordered: Sequence[float], share: float) -> float:
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class _Learning:
    """The statistics path of the functions, in memory: attempts become visible to
    routing when they finish."""

    store: MemoryStats
    min_samples: int
    window_s: float
    bucket_s: int
    pending: list[tuple[float, int, AttemptSample]] = field(default_factory=list)
    _order: int = 0

    def finish(self, at_s: float, sample: AttemptSample) -> None:
        self._order += 1
        heapq.heappush(self.pending, (at_s, self._order, sample))

    def observed(self, now_s: float, backends: Iterable[str]) -> dict[str, BackendStats]:
        while self.pending and self.pending[0][0] <= now_s:
            at_s, _, sample = heapq.heappop(self.pending)
            at = EPOCH + dt.timedelta(seconds=at_s)
            self.store.add(sample.backend, bucket_of(at, self.bucket_s), 0, increments(sample),
                           at + dt.timedelta(seconds=self.window_s + self.bucket_s))
        names = bucket_names(EPOCH + dt.timedelta(seconds=now_s), self.bucket_s, self.window_s)
        return {name: BackendStats.from_counters(recent(b, self.min_samples, names))
                for name, b in self.store.since(names[-1], backends).items()}


def run_policy(policy: str, jobs: Sequence[TraceJob], catalog: Catalog, world: World,
               min_samples: int, window_s: float = 24 * 3600.0,
               bucket_s: int = 3600) -> Result:
    learning = _Learning(MemoryStats(), min_samples, window_s, bucket_s)
    results = []
    for index, job in enumerate(jobs):
        request = job.request.model_copy(
            update={"policy": Policy.FIXED if policy == "fixed" else Policy.CHEAPEST})
        observed = learning.observed(job.at_s, catalog.names) if policy == "learned" else None
        decision = routing.plan(request, catalog, observed=observed, min_samples=min_samples)
        result = JobResult()
        results.append(result)
        if isinstance(decision, routing.Rejection):
            continue
        clock = 0.0
        for quote in decision.quotes:
            outcome = world.outcome(index, job, quote.backend)
            clock += outcome.seconds
            result.backends.append(quote.backend)
            if outcome.succeeded or outcome.charged:
                result.spend_usd += quote.estimated_cost_usd
            learning.finish(job.at_s + clock, AttemptSample(
                quote.backend, outcome.succeeded,
                error_class=None if outcome.succeeded else "backend", charged=outcome.charged,
                quality=outcome.quality if outcome.succeeded else None,
                render_s=outcome.seconds))
            if outcome.succeeded:
                result.delivered, result.quality, result.seconds = True, outcome.quality, clock
                result.under_floor = outcome.quality < request.min_quality
                break
    return Result(results)


def hindsight(jobs: Sequence[TraceJob], catalog: Catalog, world: World) -> Result:
    results = []
    for index, job in enumerate(jobs):
        request = job.request
        best: tuple[float, int, str] | None = None
        for order, backend in enumerate(catalog.backends):
            if routing.capability_problem(backend, request) is not None:
                continue
            price = estimate_usd(backend, request.duration_seconds, request.audio,
                                 request.resolution)
            if request.max_cost_usd is not None and price > request.max_cost_usd:
                continue
            outcome = world.outcome(index, job, backend.name)
            if outcome.succeeded and outcome.quality >= request.min_quality:
                best = min(best or (price, order, backend.name), (price, order, backend.name))
        result = JobResult()
        if best is not None:
            outcome = world.outcome(index, job, best[2])
            result = JobResult(True, best[0], outcome.quality, False, outcome.seconds, [best[2]])
        results.append(result)
    return Result(results)


@dataclass
class Replay:
    policies: dict[str, Result]
    hindsight: Result

    def summary(self) -> dict[str, Any]:
        """The `--json` document."""
        return {"policies": {name: r.summary() for name, r in self.policies.items()},
                "hindsight": self.hindsight.summary()}

    def targets(self) -> dict[str, Any]:
        """The issue's targets for the learning policy, checked job by job."""
        learned, catalog = self.policies["learned"], self.policies["catalog"]
        hindsight_spend = self.hindsight.summary()["spend_usd"]
        extra_under = [i for i, (a, b) in enumerate(zip(learned.jobs, catalog.jobs, strict=True))
                       if a.delivered and a.under_floor and not (b.delivered and b.under_floor)]
        ratio = (learned.summary()["spend_usd"] / hindsight_spend if hindsight_spend
                 else None)
        def at_floor(result: Result) -> int:
            return sum(1 for j in result.jobs if j.delivered and not j.under_floor)

        return {"spend_vs_hindsight": None if ratio is None else round(ratio, 4),
                "under_floor_not_in_catalog": len(extra_under),
                "succeeded_vs_catalog": (learned.summary()["succeeded"]
                                         - catalog.summary()["succeeded"]),
                "at_floor_vs_catalog": at_floor(learned) - at_floor(catalog)}


def replay(jobs: Sequence[TraceJob], profile: Mapping[str, BackendWorld], catalog: Catalog,
           seed: int, min_samples: int, window_s: float = 24 * 3600.0,
           bucket_s: int = 3600) -> Replay:
    world = World(profile, seed)
    catalog = profiled(catalog, profile)
    return Replay({name: run_policy(name, jobs, catalog, world, min_samples, window_s, bucket_s)
                   for name in POLICIES}, hindsight(jobs, catalog, world))
