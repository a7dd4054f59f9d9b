"""Observed backend statistics: what finished attempts say about each backend.

Pure. A finished attempt becomes a set of counter increments (`increments`); the
store adds them into time-bucketed, sharded documents (adapters/stats.py), and
summing every counter of a window back together gives a `BackendStats`. Counters
add, so buckets and shards merge by addition and no document is ever rewritten
whole. Render-time percentiles come from a fixed histogram (the way Cloud
Monitoring's distributions do it), so they merge by addition too.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# Upper bounds (seconds) of the render-time histogram's buckets; one more bucket
# above the last bound. Roughly geometric, finer where renders usually end.
LATENCY_BOUNDS_S: tuple[float, ...] = (
    1, 2, 3, 5, 7, 10, 15, 20, 30, 45, 60, 75, 90, 120, 150, 180, 240, 300, 420, 600,
    900, 1200, 1800, 2700, 3600)

BUCKET_FORMAT = "%Y%m%dT%H%M%S"  # a bucket's UTC start

# Failures that say nothing about the backend: the caller's prompt or input was refused.
NOT_THE_BACKENDS_FAULT = frozenset({"content_refused", "invalid_input", "skipped"})


@dataclass(frozen=True)
class AttemptSample:
    """One finished attempt, as statistics see it."""

    backend: str
    succeeded: bool
    error_class: str | None = None   # ErrorClass value of a failed attempt
    charged: bool = False            # a failed attempt the provider billed anyway
    quality: float | None = None     # the output check's score, when an output was checked
    render_s: float | None = None    # from the attempt's start to its end


def latency_bucket(seconds: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_S, seconds)


def increments(sample: AttemptSample) -> dict[str, float]:
    """The counters one finished attempt adds (flat names; the store nests nothing)."""
    counts: dict[str, float] = {"attempts": 1}
    if sample.succeeded:
        counts["successes"] = 1
    else:
        counts[f"failures_{sample.error_class or 'unknown'}"] = 1
        if sample.charged:
            counts["charged_failures"] = 1
    if sample.quality is not None:
        counts["quality_n"] = 1
        counts["quality_sum"] = round(sample.quality, 6)
    if sample.render_s is not None and sample.succeeded:
        counts[f"latency_{latency_bucket(max(0.0, sample.render_s))}"] = 1
    return counts


def add(total: dict[str, float], more: Mapping[str, float]) -> dict[str, float]:
    for name, value in more.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            total[name] = total.get(name, 0) + value
    return total


def total(buckets: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Every bucket's counters added up: the whole window."""
    summed: dict[str, float] = {}
    for counters in buckets.values():
        add(summed, counters)
    return summed


def bucket_of(at: dt.datetime, bucket_s: int) -> str:
    """The name of the time bucket holding `at`: its UTC start, which sorts in time order."""
    epoch = at.timestamp()
    start = dt.datetime.fromtimestamp(epoch - epoch % bucket_s, dt.UTC)
    return start.strftime(BUCKET_FORMAT)


def bucket_names(now: dt.datetime, bucket_s: int, window_s: float) -> list[str]:
    """The buckets of the window ending at `now`, newest first."""
    count = max(1, math.ceil(window_s / bucket_s))
    return [bucket_of(now - dt.timedelta(seconds=i * bucket_s), bucket_s)
            for i in range(count)]


def recent(buckets: Mapping[str, Mapping[str, float]], min_samples: int,
           newest_first: Sequence[str]) -> dict[str, float]:
    """What routing judges a backend by: its newest buckets' counters, added newest
    first until they hold `min_samples` attempts. A busy backend is judged on its last
    bucket or two, so a drift shows soon; a quiet one on as much of the window as it
    takes to have enough samples.

    Observations older than a bucket with no attempts are stale, and nothing at all
    in the current and the previous bucket means nothing is known now: a backend that
    routing stopped sending work to is judged on the catalog's figures again a bucket
    later, so it is tried again (and leaves again after `min_samples` attempts if it
    is still failing), instead of staying out on old figures for the whole window.
    """
    summed: dict[str, float] = {}
    for position, name in enumerate(newest_first):
        counters = buckets.get(name)
        if not counters or not counters.get("attempts"):
            if summed or position >= 1:
                break  # a gap: what came before it is stale
            continue   # the current bucket may have just begun
        add(summed, counters)
        if summed.get("attempts", 0) >= min_samples:
            break
    return summed


def _percentile(histogram: Mapping[int, int], share: float) -> float | None:
    """The upper bound of the bucket holding the `share` quantile (conservative: a
    render is at most this long); None without samples."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = math.ceil(share * total)
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            if index < len(LATENCY_BOUNDS_S):
                return float(LATENCY_BOUNDS_S[index])
            return float(LATENCY_BOUNDS_S[-1]) * 2
    return None  # pragma: no cover (rank <= total)


@dataclass(frozen=True)
class BackendStats:
    """A backend's observed figures over the statistics window."""

    attempts: int = 0
    successes: int = 0
    failures: Mapping[str, int] = field(default_factory=dict)  # by error class
    charged_failures: int = 0
    quality_n: int = 0
    quality_sum: float = 0.0
    latency: Mapping[int, int] = field(default_factory=dict)   # histogram bucket -> count

    @classmethod
    def from_counters(cls, counters: Mapping[str, float]) -> BackendStats:
        failures = {k.removeprefix("failures_"): int(v) for k, v in counters.items()
                    if k.startswith("failures_") and v}
        latency = {int(k.removeprefix("latency_")): int(v) for k, v in counters.items()
                   if k.startswith("latency_") and v}
        return cls(attempts=int(counters.get("attempts", 0)),
                   successes=int(counters.get("successes", 0)), failures=failures,
                   charged_failures=int(counters.get("charged_failures", 0)),
                   quality_n=int(counters.get("quality_n", 0)),
                   quality_sum=float(counters.get("quality_sum", 0.0)), latency=latency)

    @classmethod
    def of(cls, samples: Iterable[AttemptSample]) -> BackendStats:
        total: dict[str, float] = {}
        for sample in samples:
            add(total, increments(sample))
        return cls.from_counters(total)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def backend_failures(self) -> int:
        """Failures that were the backend's doing (not a refused prompt)."""
        return sum(n for cls, n in self.failures.items() if cls not in NOT_THE_BACKENDS_FAULT)

    @property
    def judged(self) -> int:
        """Attempts that say whether the backend works: successes and its own failures."""
        return self.successes + self.backend_failures

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.judged if self.judged else None

    @property
    def charged_share(self) -> float | None:
        """Of the failures, the share the provider billed anyway."""
        return self.charged_failures / self.failed if self.failed else None

    @property
    def mean_quality(self) -> float | None:
        return round(self.quality_sum / self.quality_n, 4) if self.quality_n else None

    @property
    def p50_s(self) -> float | None:
        return _percentile(self.latency, 0.50)

    @property
    def p95_s(self) -> float | None:
        return _percentile(self.latency, 0.95)

    def public(self) -> dict[str, object]:
        return {"attempts": self.attempts, "successes": self.successes,
                "failures": dict(sorted(self.failures.items())),
                "charged_failures": self.charged_failures,
                "success_rate": None if self.success_rate is None else round(
                    self.success_rate, 4),
                "mean_quality": self.mean_quality, "quality_samples": self.quality_n,
                "p50_s": self.p50_s, "p95_s": self.p95_s}


def expected_cost_usd(price_usd: float, success_rate: float, charged_share: float) -> float:
    """What one successful render costs on average when failed attempts are retried
    until one succeeds: each attempt costs `price` if it succeeds and, when it fails,
    `price` with probability `charged_share`; a success needs 1/success_rate attempts.

        E = price * (s + (1 - s) * c) / s = price * (1 + (1 - s) * c / s)

    Infinite when nothing succeeds."""
    if success_rate <= 0:
        return math.inf
    return price_usd * (1 + (1 - success_rate) * charged_share / success_rate)
