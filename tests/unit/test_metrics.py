"""The metrics the code emits against monitoring.yaml, and the lines they write
(50 instances at once: tests/load/test_metric_emission.py)."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiprod.adapters.metered import MeteredProvider
from aiprod.adapters.providers.base import ProviderError, RenderSpec, TaskState, TaskStatus
from aiprod.domain.budget import DayFigures
from aiprod.domain.job import (
    Attempt,
    AttemptError,
    AttemptStatus,
    ErrorClass,
    Job,
    JobRequest,
    JobStatus,
    Output,
)
from aiprod.observability import logs, metrics, monitoring, tracing
from aiprod.services import telemetry
from aiprod.wiring.config import load_catalog
from tests import metric_calls

SPEC = monitoring.load()
T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


class Captured:
    """Every line the process logs during a test, parsed."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def points(self) -> list[dict[str, Any]]:
        return [line for line in self.lines()
                if line.get("logger") == metrics.LOGGER_NAME and "metric" in line]


@pytest.fixture
def captured() -> Iterator[Captured]:
    capture = Captured()
    handler = logging.StreamHandler(capture.stream)
    handler.setFormatter(logs.CloudLoggingFormatter())
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        root.setLevel(saved[0])
        root.handlers = saved[1]


# --- What the code emits, statically -------------------------------------------------------

def test_every_metric_call_matches_monitoring_yaml() -> None:
    calls = metric_calls.collect()
    assert len(calls) >= 15, "the scan found too few calls: is it reading the code?"
    declared = {m.name: m for m in SPEC.metrics}
    problems = [f"{c.where}: {c.problem}" for c in calls if c.problem]
    for call in calls:
        if call.name is None:
            continue
        metric = declared.get(call.name)
        if metric is None:
            problems.append(f"{call.where}: {call.name} is not declared in monitoring.yaml")
            continue
        if metric.kind != call.kind:
            problems.append(f"{call.where}: {call.name} is a {metric.kind}, emitted as "
                            f"a {call.kind}")
        if call.labels != set(metric.labels):
            problems.append(f"{call.where}: {call.name} labels {sorted(call.labels)}, declared "
                            f"{sorted(metric.labels)}")
    assert not problems, "\n".join(problems)


def test_every_declared_metric_is_emitted_somewhere() -> None:
    never = {m.name for m in SPEC.metrics} - metric_calls.emitted()
    assert not never, f"declared in monitoring.yaml but emitted nowhere: {sorted(never)}"


def test_alerts_slos_and_widgets_name_only_emitted_metrics() -> None:
    """...or a built-in Google Cloud metric declared as such (builtin_metrics, with the
    page that documents it; tests/infra/test_monitoring.py lists the allowed ones)."""
    emitted = metric_calls.emitted()
    builtins = {m.name for m in SPEC.builtin_metrics}
    missing = {name: sorted(users) for name, users in SPEC.referenced_metrics().items()
               if name not in emitted and name not in builtins}
    assert not missing, f"named in monitoring.yaml but never emitted: {missing}"
    assert not builtins & emitted, "a built-in metric name shadows one the code emits"


def test_the_scan_sees_mistakes() -> None:
    source = textwrap.dedent("""
        from aiprod.observability import metrics
        metrics.count("jobs_admitted", backend="x")
        metrics.count("jobs_admited", backend="x")
        metrics.observe(name, 1.0)
        metrics.gauge("budget_spent_usd", 1.0, **labels)
        metrics.count("jobs_failed", job_id="j", backend="x")
    """)
    calls = {c.where.split(":")[1]: c for c in metric_calls.calls_in(source, "snippet")}
    assert calls["3"] == metric_calls.Call("snippet:3", "counter", "jobs_admitted",
                                           frozenset({"backend"}))
    assert calls["4"].name == "jobs_admited"
    assert calls["5"].problem
    assert calls["6"].problem
    assert calls["7"].labels == {"backend"}  # job_id is not a label


# --- The lines ---------------------------------------------------------------------------

def test_a_point_is_one_json_line_terraform_reads(captured: Captured) -> None:
    context = tracing.TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    with tracing.scope(context, job_id="job_1"):
        metrics.observe("render_duration_s", 12.5, backend="veo-31-fast")
        metrics.count("jobs_failed", backend="veo-31-fast", error_class="backend")
    rendered, failed = captured.points()
    assert rendered["severity"] == "INFO"
    assert rendered["message"] == "metric render_duration_s=12.5"
    assert rendered["metric"] == "render_duration_s"
    assert rendered["value"] == 12.5
    assert rendered["metric_labels"] == {"backend": "veo-31-fast"}
    assert rendered["job_id"] == "job_1"
    assert rendered["logging.googleapis.com/trace"] == (
        "projects/aiprod-local/traces/4bf92f3577b34da6a3ce929d0e0e4736")
    assert rendered["logging.googleapis.com/spanId"] == "00f067aa0ba902b7"
    assert rendered["logging.googleapis.com/trace_sampled"] is True
    assert failed["value"] == 1
    assert failed["metric_labels"] == {"backend": "veo-31-fast", "error_class": "backend"}


def test_a_call_that_breaks_the_declaration_is_dropped_and_reported(
        captured: Captured) -> None:
    metrics.count("jobs_admited", backend="x")                       # not declared
    metrics.count("jobs_admitted")                                   # label missing
    metrics.observe("jobs_admitted", 2.0, backend="x")               # wrong kind
    metrics.observe("render_duration_s", float("nan"), backend="x")  # not a number
    assert captured.points() == []
    rejected = [line for line in captured.lines() if line.get("event") == "metric_rejected"]
    assert [r["severity"] for r in rejected] == ["ERROR"] * 4
    assert "not declared" in rejected[0]["problem"]
    assert "labels" in rejected[1]["problem"]
    assert "counter" in rejected[2]["problem"]
    assert "finite" in rejected[3]["problem"]


# --- Points from a job's life --------------------------------------------------------------

def _job(status: JobStatus, attempts: list[Attempt], **extra: Any) -> Job:
    return Job(id="job_t", owner="o", request=JobRequest(prompt="p"),
               plan=["replicate-seedance", "runway-gen45"], status=status,
               attempts=attempts, estimated_cost_usd=0.4, created_at=T0,
               updated_at=T0 + dt.timedelta(seconds=95), **extra)


def _attempt(backend: str, start_s: float, end_s: float, status: AttemptStatus,
             error: AttemptError | None = None) -> Attempt:
    return Attempt(backend=backend, status=status, started_at=T0 + dt.timedelta(seconds=start_s),
                   ended_at=T0 + dt.timedelta(seconds=end_s), estimated_cost_usd=0.4,
                   error=error)


def test_a_succeeded_job_after_a_fallback_emits_its_story(captured: Captured) -> None:
    failed = _attempt("replicate-seedance", 2, 10, AttemptStatus.FAILED,
                      AttemptError(error_class=ErrorClass.TRANSIENT, code="http_503", message="x"))
    done = _attempt("runway-gen45", 12, 95, AttemptStatus.SUCCEEDED)
    job = _job(JobStatus.RENDERING, [failed])
    telemetry.attempt_started(job, 0)
    telemetry.attempt_failed(job, 0, "runway-gen45")
    job = _job(JobStatus.SUCCEEDED, [failed, done], cost_usd=0.6, quality_score=0.9,
               output=Output(uri="gs://b/o", duration_seconds=5, width=1280, height=720,
                             bytes=123_456, sha256="0" * 64))
    telemetry.attempt_started(job, 1)
    telemetry.ended(job)
    got = {(p["metric"], json.dumps(p["metric_labels"], sort_keys=True)): p["value"]
           for p in captured.points()}
    runway = json.dumps({"backend": "runway-gen45"})
    assert got == {
        ("queue_wait_s", json.dumps({"backend": "replicate-seedance"})): 2.0,
        ("fallbacks", json.dumps({"from_backend": "replicate-seedance",
                                  "to_backend": "runway-gen45"})): 1,
        ("queue_wait_s", runway): 2.0,  # from the failed attempt's end to this start
        ("jobs_succeeded", runway): 1,
        ("quality_score", runway): 0.9,
        ("output_bytes", runway): 123_456.0,
        ("render_duration_s", runway): 83.0,
        ("job_duration_s", json.dumps({"backend": "runway-gen45", "status": "succeeded"})): 95.0,
        ("job_cost_usd", json.dumps({"backend": "runway-gen45", "status": "succeeded"})): 0.6,
    }
    assert {p["job_id"] for p in captured.points()} == {"job_t"}


def test_a_failed_job_counts_its_error_class(captured: Captured) -> None:
    error = AttemptError(error_class=ErrorClass.CONTENT_REFUSED, code="SAFETY", message="x")
    job = _job(JobStatus.FAILED, [_attempt("replicate-seedance", 1, 5, AttemptStatus.FAILED,
                                           error)])
    telemetry.attempt_failed(job, 0, None)
    by_metric = {p["metric"]: p for p in captured.points()}
    assert set(by_metric) == {"jobs_failed", "job_duration_s", "job_cost_usd"}
    assert by_metric["jobs_failed"]["metric_labels"] == {"backend": "replicate-seedance",
                                                         "error_class": "content_refused"}
    assert by_metric["job_duration_s"]["metric_labels"]["status"] == "failed"


def test_budget_levels_are_sampled_for_today_only(captured: Captured) -> None:
    figures = DayFigures(day="2026-11-26", limit_micros=100_000_000, warn_micros=90_000_000,
                         granted_micros=95_000_000, returned_micros=3_000_000,
                         spent_micros=80_000_000)
    telemetry.budget_level(figures, today="2026-11-27")
    assert captured.points() == []
    telemetry.budget_level(figures, today="2026-11-26")
    assert {p["metric"]: p["value"] for p in captured.points()} == {
        "budget_spent_usd": 80.0, "budget_reserved_usd": 12.0, "budget_committed_usd": 92.0}


class FakeProvider:
    def __init__(self, error: ProviderError | None = None,
                 status: TaskStatus | None = None) -> None:
        self.error, self.status = error, status

    def create(self, spec: RenderSpec) -> str:
        if self.error:
            raise self.error
        return "task"

    def poll(self, task_id: str) -> TaskStatus:
        if self.error:
            raise self.error
        assert self.status is not None
        return self.status

    def cancel(self, task_id: str) -> None:
        pass

    @property
    def can_find_tasks(self) -> bool:
        return True

    def find_task(self, spec: RenderSpec, since: dt.datetime) -> str | None:
        return None

    def download(self, status: TaskStatus, dest: Path) -> None:
        pass

    extra = "passed through"


def test_provider_errors_and_429s_are_counted_where_every_call_passes(
        captured: Captured) -> None:
    runway = load_catalog().get("runway-gen45")
    spec = RenderSpec(job_id="job_p", model="gen4.5", prompt="p", image_url=None,
                      duration_seconds=5, aspect_ratio="16:9", audio=False)
    broken = MeteredProvider(FakeProvider(ProviderError(ErrorClass.TRANSIENT, "http_503", "x")),
                             runway)
    throttled = MeteredProvider(FakeProvider(ProviderError(ErrorClass.TRANSIENT, "http_429",
                                                           "x")), runway)
    failed_task = MeteredProvider(FakeProvider(status=TaskStatus(
        TaskState.FAILED, error=ProviderError(ErrorClass.BACKEND, "INTERNAL", "x"))), runway)
    for call in (lambda: broken.create(spec), lambda: broken.poll("t"),
                 lambda: throttled.create(spec)):
        with pytest.raises(ProviderError):
            call()
    assert failed_task.poll("t").state is TaskState.FAILED
    assert failed_task.create(spec) == "task"  # a good call counts nothing
    assert failed_task.extra == "passed through"  # type: ignore[attr-defined]
    got = [(p["metric"], p["metric_labels"]) for p in captured.points()]
    errors = {"backend": "runway-gen45", "provider": "runway"}
    assert got == [
        ("provider_errors", errors | {"error_class": "transient"}),
        ("provider_errors", errors | {"error_class": "transient"}),
        ("provider_throttles", errors),
        ("provider_errors", errors | {"error_class": "backend"}),
    ]


def test_without_monitoring_yaml_points_still_flow(captured: Captured,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment missing monitoring.yaml loses the checks, not the metrics."""
    def unreadable(path: Path = monitoring.DEFAULT_MONITORING_PATH) -> monitoring.MonitoringSpec:
        raise FileNotFoundError(path)

    monkeypatch.setattr(monitoring, "load", unreadable)
    monkeypatch.setattr(metrics, "_unchecked", [])
    metrics.declared.cache_clear()
    try:
        metrics.count("jobs_admitted", backend="x")
        metrics.count("jobs_admitted", backend="y")
    finally:
        metrics.declared.cache_clear()
    assert [p["metric_labels"] for p in captured.points()] == [{"backend": "x"},
                                                               {"backend": "y"}]
    assert [line["event"] for line in captured.lines() if "event" in line] == [
        "metric_unchecked"]
