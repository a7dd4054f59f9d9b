"""`aiprod slo`: both SLIs, the error budget left, and which alert policies would
fire now, computed from monitoring.yaml's own definitions.

Where the numbers come from is a `Source`:

- `JobRecords` (this module): the Firestore jobs collection and today's budget
  ledger, in the local stack as in production. It turns each job document
  into the points the code emitted for it (a job that ended gives one
  job_duration_s, one quality_score...), then aggregates them the way the
  alert or SLO says.
- In production the same report can come from Cloud Monitoring: a source whose
  `slo_counts` reads the SLO's good and total counts (timeSeries.list with the
  SLO's distribution filter, or `select_slo_counts`) and whose `alert_values`
  runs the alert condition's own filter and aggregation (the ones
  terraform/monitoring.tf builds) over the window. docs/observability.md
  describes it; the report and its rendering do not change.

Job records hold one point per job and attempt, not every call: provider
errors are counted per failed attempt (a create retried three times before
falling back counts once), and metrics with no trace in a job document
(rejections, circuit changes, dead-lettered messages) are listed as not
available rather than reported as zero.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from aiprod.adapters.providers.base import THROTTLE_CODES
from aiprod.domain.budget import DayFigures, ledger_day, to_usd
from aiprod.domain.catalog import Catalog
from aiprod.domain.forecast import forecast
from aiprod.domain.job import ErrorClass, Job, JobStatus
from aiprod.observability.monitoring import PERCENTILES, Alert, MonitoringSpec, Slo

NONE = "none"


@dataclass(frozen=True)
class Sample:
    """One point of a metric: what the code emitted (or would have) at `at`."""

    value: float
    labels: dict[str, str]
    at: dt.datetime


Group = tuple[tuple[str, str], ...]


class Source(Protocol):
    description: str

    def slo_counts(self, slo: Slo, start: dt.datetime, end: dt.datetime) -> tuple[int, int]:
        """(good, total) events of the SLO's metric between start and end."""
        ...

    def alert_values(self, alert: Alert, start: dt.datetime,
                     end: dt.datetime) -> dict[Group, float] | None:
        """The alert condition's aggregated value per group over [start, end] (for
        aggregate `each`: the value of the point that decides it); None when the
        source cannot tell."""
        ...


# -- aggregation (shared by every source that has the points themselves) ----------------

def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p% of values at or under it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def aggregate(samples: Iterable[Sample], alert: Alert) -> dict[Group, float]:
    condition = alert.condition
    groups: dict[Group, list[float]] = {}
    for sample in samples:
        if any(sample.labels.get(k) != v for k, v in condition.filter.items()):
            continue
        key = tuple((label, sample.labels.get(label, "")) for label in condition.group_by)
        groups.setdefault(key, []).append(sample.value)
    out: dict[Group, float] = {}
    for key, values in groups.items():
        if condition.aggregate in PERCENTILES:
            out[key] = percentile(values, PERCENTILES[condition.aggregate])
        elif condition.aggregate == "mean":
            out[key] = sum(values) / len(values)
        elif condition.aggregate == "max":
            out[key] = max(values)
        elif condition.aggregate in ("sum", "rate"):
            total = float(sum(values))
            out[key] = total / condition.window_s if condition.aggregate == "rate" else total
        else:  # each: the point furthest past the threshold decides
            out[key] = min(values) if condition.comparison == "below" else max(values)
    return out


class SampledSource:
    """A source that has the points themselves; subclasses say where they come from."""

    description = "points"

    def samples(self, metric: str, start: dt.datetime, end: dt.datetime) -> list[Sample] | None:
        """The metric's points in [start, end]; None if this source cannot know them."""
        raise NotImplementedError

    def slo_counts(self, slo: Slo, start: dt.datetime, end: dt.datetime) -> tuple[int, int]:
        points = self.samples(slo.metric, start, end) or []
        return sum(1 for p in points if slo.good.contains(p.value)), len(points)

    def alert_values(self, alert: Alert, start: dt.datetime,
                     end: dt.datetime) -> dict[Group, float] | None:
        points = self.samples(alert.metric, start, end)
        return None if points is None else aggregate(points, alert)


# -- the job records ---------------------------------------------------------------------

def _backend(job: Job) -> str:
    if job.attempts:
        return job.attempts[-1].backend
    return job.plan[0] if job.plan else NONE


def job_samples(job: Job, catalog: Catalog) -> dict[str, list[Sample]]:
    """The points the code emits over a job's life, rebuilt from its document."""
    out: dict[str, list[Sample]] = {}

    def add(metric: str, value: float, at: dt.datetime, **labels: str) -> None:
        out.setdefault(metric, []).append(Sample(float(value), labels, at))

    backend = _backend(job)
    add("jobs_admitted", 1, job.created_at, backend=job.plan[0] if job.plan else NONE)
    for index, attempt in enumerate(job.attempts):
        handed_off = job.created_at
        if index > 0:
            previous = job.attempts[index - 1]
            handed_off = previous.ended_at or previous.started_at
            add("fallbacks", 1, attempt.started_at, from_backend=previous.backend,
                to_backend=attempt.backend)
        add("queue_wait_s", max(0.0, (attempt.started_at - handed_off).total_seconds()),
            attempt.started_at, backend=attempt.backend)
        error = attempt.error
        if error is None or error.error_class is ErrorClass.SKIPPED \
                or error.code == "dead_lettered":  # no provider call failed
            continue
        provider = (catalog.get(attempt.backend).provider if attempt.backend in catalog.names
                    else "unknown")
        at = attempt.ended_at or job.updated_at
        if error.code in THROTTLE_CODES:
            add("provider_throttles", 1, at, backend=attempt.backend, provider=provider)
        else:
            add("provider_errors", 1, at, backend=attempt.backend, provider=provider,
                error_class=error.error_class.value)
    end = job.updated_at
    status = job.status.value.lower()
    if job.status is JobStatus.CANCELLED:
        add("jobs_cancelled", 1, end, backend=backend)
    if job.status is JobStatus.SUCCEEDED:
        add("jobs_succeeded", 1, end, backend=backend)
        if job.quality_score is not None:
            add("quality_score", job.quality_score, end, backend=backend)
        if job.output is not None:
            add("output_bytes", job.output.bytes, end, backend=backend)
        last = job.attempts[-1] if job.attempts else None
        if last is not None and last.ended_at is not None:
            add("render_duration_s", (last.ended_at - last.started_at).total_seconds(), end,
                backend=backend)
    if job.status is JobStatus.FAILED:
        last = job.attempts[-1] if job.attempts else None
        add("jobs_failed", 1, end, backend=backend,
            error_class=last.error.error_class.value if last and last.error else NONE)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        add("job_duration_s", max(0.0, (end - job.created_at).total_seconds()), end,
            backend=backend, status=status)
        add("job_cost_usd", job.cost_usd, end, backend=backend, status=status)
    return out


class JobRecords(SampledSource):
    """Points rebuilt from job documents (read once, for the widest window asked)
    and today's budget ledger."""

    def __init__(self, jobs: Iterable[Job], catalog: Catalog, budget_today: DayFigures | None,
                 description: str, now: dt.datetime,
                 budget_hours: Sequence[int] | None = None) -> None:
        self.description = description
        self._now = now
        self._points: dict[str, list[Sample]] = {}
        for job in jobs:
            for metric, points in job_samples(job, catalog).items():
                self._points.setdefault(metric, []).extend(points)
        self._budget = budget_today
        self._hours = list(budget_hours) if budget_hours is not None else [0] * 24

    def samples(self, metric: str, start: dt.datetime, end: dt.datetime) -> list[Sample] | None:
        if metric.startswith("budget_"):
            figures = self._budget
            if figures is None or figures.day != ledger_day(self._now):
                return []
            micros = {"budget_spent_usd": figures.spent_micros,
                      "budget_reserved_usd": figures.reserved_micros,
                      "budget_committed_usd": figures.committed_micros,
                      "budget_forecast_usd": forecast(
                          self._now, figures.limit_micros, figures.committed_micros,
                          self._hours).projected_micros}.get(metric)
            return None if micros is None else [Sample(to_usd(micros), {}, self._now)]
        if metric not in JOB_RECORD_METRICS:
            return None
        return [p for p in self._points.get(metric, []) if start <= p.at <= end]


# Metrics a job document holds the points of (the budget ones come from the ledger).
JOB_RECORD_METRICS = frozenset({
    "jobs_admitted", "jobs_succeeded", "jobs_failed", "jobs_cancelled", "fallbacks",
    "job_duration_s", "render_duration_s", "queue_wait_s", "job_cost_usd", "quality_score",
    "output_bytes", "provider_errors", "provider_throttles"})


def read_jobs(client: Any, since: dt.datetime) -> list[Job]:
    """Every job document touched since `since` (a Firestore client on the project)."""
    from google.cloud import firestore

    from aiprod.adapters.store import JOBS, job_from_doc

    query = client.collection(JOBS).where(
        filter=firestore.FieldFilter("updated_at", ">=", since))
    return [job_from_doc(snapshot.to_dict() or {}) for snapshot in query.stream()]


def read_budget(client: Any, now: dt.datetime) -> DayFigures:
    from aiprod.adapters.ledger import GLOBAL, FirestoreLedger, Scope

    return FirestoreLedger(client).figures(ledger_day(now), Scope(GLOBAL, 0), 0)


def read_budget_hours(client: Any, now: dt.datetime) -> list[int]:
    """What settled in each UTC hour of today (the forecast's history)."""
    from aiprod.adapters.ledger import GLOBAL, FirestoreLedger

    return FirestoreLedger(client).hourly_spent(ledger_day(now), GLOBAL)


# -- the report --------------------------------------------------------------------------

@dataclass(frozen=True)
class SloResult:
    name: str
    display_name: str
    metric: str
    goal: float
    window_days: int
    good_when: dict[str, float]
    good: int
    total: int
    sli: float | None
    met: bool | None
    error_budget_left: float  # share of the window's error budget still unspent (<0: overspent)


@dataclass(frozen=True)
class AlertResult:
    name: str
    display_name: str
    severity: str
    metric: str
    condition: str
    firing: bool | None  # None: the source cannot tell
    values: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    source: str
    now: dt.datetime
    since: dt.datetime | None
    slos: list[SloResult]
    alerts: list[AlertResult]

    @property
    def firing(self) -> list[str]:
        return [a.name for a in self.alerts if a.firing]

    def as_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["now"] = self.now.isoformat()
        body["since"] = self.since.isoformat() if self.since else None
        body["firing"] = self.firing
        return body


def _window_start(now: dt.datetime, seconds: float, since: dt.datetime | None) -> dt.datetime:
    start = now - dt.timedelta(seconds=seconds)
    return max(start, since) if since is not None else start


def slo_result(slo: Slo, good: int, total: int) -> SloResult:
    good_when = {k: v for k, v in slo.good.model_dump().items() if v is not None}
    if total == 0:
        return SloResult(slo.name, slo.display_name, slo.metric, slo.goal, slo.rolling_days,
                         good_when, 0, 0, None, None, 1.0)
    sli = good / total
    allowed = (1 - slo.goal) * total  # bad events the goal tolerates in this window
    bad = total - good
    left = 1 - bad / allowed  # allowed > 0: goals stay under 1
    return SloResult(slo.name, slo.display_name, slo.metric, slo.goal, slo.rolling_days,
                     good_when, good, total, round(sli, 6), sli >= slo.goal, round(left, 6))


def describe(alert: Alert) -> str:
    c = alert.condition
    where = "".join(f" {k}={v}" for k, v in c.filter.items())
    by = f" by {', '.join(c.group_by)}" if c.group_by else ""
    if c.aggregate == "each":
        return f"any {alert.metric}{where} point {c.comparison.replace('_', ' ')} {c.threshold:g}"
    return (f"{c.aggregate} of {alert.metric}{where}{by} over {c.window_s} s "
            f"{c.comparison} {c.threshold:g}")


def alert_result(alert: Alert, values: dict[Group, float] | None) -> AlertResult:
    if values is None:
        return AlertResult(alert.name, alert.display_name, alert.severity, alert.metric,
                           describe(alert), None)
    rows = [{"labels": dict(key), "value": round(value, 6),
             "firing": alert.condition.holds(value)} for key, value in sorted(values.items())]
    return AlertResult(alert.name, alert.display_name, alert.severity, alert.metric,
                       describe(alert), any(row["firing"] for row in rows), rows)


def report(spec: MonitoringSpec, source: Source, now: dt.datetime,
           since: dt.datetime | None = None) -> Report:
    slos = []
    for slo in spec.slos:
        start = _window_start(now, slo.rolling_days * 86400, since)
        slos.append(slo_result(slo, *source.slo_counts(slo, start, now)))
    alerts = []
    for alert in spec.alerts:
        start = _window_start(now, alert.condition.window_s, since)
        alerts.append(alert_result(alert, source.alert_values(alert, start, now)))
    return Report(source.description, now, since, slos, alerts)


def widest_window(spec: MonitoringSpec) -> dt.timedelta:
    seconds = [s.rolling_days * 86400 for s in spec.slos] + [
        a.condition.window_s for a in spec.alerts]
    return dt.timedelta(seconds=max(seconds, default=86400))
