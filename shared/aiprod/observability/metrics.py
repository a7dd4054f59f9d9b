"""Metrics as structured log lines, turned into log-based metrics by Cloud Logging.

    metrics.count("jobs_admitted", backend="veo-31-fast")
    metrics.observe("render_duration_s", 12.3, backend="veo-31-fast")
    metrics.gauge("budget_committed_usd", 42.0)

Each call writes one JSON line on stdout (through the `logs` handler, so it
also carries the invocation's trace and job id):

    {"severity": "INFO", "message": "metric render_duration_s=12.3",
     "logger": "aiprod.metrics", "metric": "render_duration_s", "value": 12.3,
     "metric_labels": {"backend": "veo-31-fast"}, "job_id": ..., ...}

terraform/monitoring.tf defines one `google_logging_metric` per metric of
monitoring.yaml with the filter `jsonPayload.logger="aiprod.metrics" AND
jsonPayload.metric="<name>"`, label extractors on `jsonPayload.metric_labels.*`
and, for distributions and gauges, a value extractor on `jsonPayload.value`.
Why log lines and not Cloud Monitoring API writes: docs/observability.md.

Names, kinds and label sets are those of monitoring.yaml: the tests check every
call in the code against it. A call that does not match is a bug: it is logged
as an error (event `metric_rejected`) and its point dropped, never raised, so
a metric can never fail a render that has already cost money.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Literal

from aiprod.observability import monitoring

# A contract with every deployed log-based metric filter (jsonPayload.logger): it stays
# "aiprod.metrics" wherever this module lives.
LOGGER_NAME = "aiprod.metrics"
_logger = logging.getLogger(LOGGER_NAME)

Kind = Literal["counter", "distribution", "gauge"]


@functools.cache
def declared() -> dict[str, tuple[Kind, frozenset[str]]]:
    """Metric name -> (kind, label names), from monitoring.yaml (read once per process)."""
    return {m.name: (m.kind, frozenset(m.labels)) for m in monitoring.load().metrics}


_unchecked: list[str] = []  # set once monitoring.yaml failed to load


def _emit(kind: Kind, name: str, value: float, job_id: str | None,
          labels: dict[str, str]) -> None:
    if not _logger.isEnabledFor(logging.INFO):
        return
    problem = _problem(kind, name, value, labels)
    if problem is not None:
        _logger.error(f"metric {name} rejected: {problem}", extra={"fields": {
            "event": "metric_rejected", "rejected_metric": name, "problem": problem}})
        return
    fields: dict[str, object] = {"metric": name, "value": value,
                                 "metric_labels": {k: str(v) for k, v in labels.items()}}
    if job_id is not None:
        fields["job_id"] = job_id
    _logger.info(f"metric {name}={value:g}", extra={"fields": fields})


def _problem(kind: Kind, name: str, value: float, labels: dict[str, str]) -> str | None:
    if not math.isfinite(value):
        return f"value {value!r} is not a finite number"
    if _unchecked:
        return None
    try:
        known = declared().get(name)
    except Exception as error:  # no monitoring.yaml beside the code: keep the points
        _unchecked.append(name)
        _logger.error(f"metrics are not checked: monitoring.yaml unreadable ({error})",
                      extra={"fields": {"event": "metric_unchecked"}})
        return None
    if known is None:
        return "not declared in monitoring.yaml"
    declared_kind, declared_labels = known
    if declared_kind != kind:
        return f"declared as a {declared_kind}, emitted as a {kind}"
    if set(labels) != declared_labels:
        return (f"labels {sorted(labels)} differ from the declared "
                f"{sorted(declared_labels)}")
    return None


def count(name: str, /, *, job_id: str | None = None, **labels: str) -> None:
    """One event of counter `name`."""
    _emit("counter", name, 1, job_id, labels)


def observe(name: str, value: float, /, *, job_id: str | None = None, **labels: str) -> None:
    """One value of distribution `name` (a duration, a cost, a score, a size)."""
    _emit("distribution", name, float(value), job_id, labels)


def gauge(name: str, value: float, /, *, job_id: str | None = None, **labels: str) -> None:
    """The level of gauge `name` now (sampled when it changes)."""
    _emit("gauge", name, float(value), job_id, labels)
