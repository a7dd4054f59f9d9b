"""`aiprod slo`'s arithmetic on job records: SLIs, error budgets, alert conditions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest

from aiprod.domain.budget import DayFigures
from aiprod.domain.job import (
    Attempt,
    AttemptError,
    AttemptStatus,
    ErrorClass,
    Job,
    JobRequest,
    JobStatus,
)
from aiprod.observability import monitoring
from aiprod.wiring.config import Settings, load_catalog
from aiprod_dev import slo_report as slo

SPEC = monitoring.load().with_settings(Settings.model_construct())
CATALOG = load_catalog()
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def job(n: int, *, ended_ago_s: float, duration_s: float, status: JobStatus = JobStatus.SUCCEEDED,
        backend: str = "replicate-seedance", quality: float | None = 0.8,
        errors: Sequence[tuple[str, str]] = ()) -> Job:
    end = NOW - dt.timedelta(seconds=ended_ago_s)
    start = end - dt.timedelta(seconds=duration_s)
    attempts = [Attempt(backend=b, status=AttemptStatus.FAILED, started_at=start, ended_at=start,
                        estimated_cost_usd=0.5,
                        error=AttemptError(error_class=ErrorClass.TRANSIENT, code=code,
                                           message="x"))
                for b, code in errors]
    attempts.append(Attempt(backend=backend, status=AttemptStatus.SUCCEEDED
                            if status is JobStatus.SUCCEEDED else AttemptStatus.FAILED,
                            started_at=start, ended_at=end, estimated_cost_usd=0.5,
                            error=None if status is JobStatus.SUCCEEDED else AttemptError(
                                error_class=ErrorClass.BACKEND, code="failed", message="x")))
    return Job(id=f"job_{n}", owner="o", request=JobRequest(prompt="p"),
               plan=[a.backend for a in attempts], status=status, attempts=attempts,
               estimated_cost_usd=0.5, cost_usd=0.4 if status is JobStatus.SUCCEEDED else 0,
               quality_score=quality if status is JobStatus.SUCCEEDED else None,
               created_at=start, updated_at=end)


def figures(committed_usd: float, day: str = "2026-11-26") -> DayFigures:
    return DayFigures(day=day, limit_micros=100_000_000, warn_micros=90_000_000,
                      granted_micros=round(committed_usd * 1e6), spent_micros=0)


def run(jobs: list[Job], committed_usd: float = 0.0, since: dt.datetime | None = None,
        spec: monitoring.MonitoringSpec = SPEC) -> slo.Report:
    source = slo.JobRecords(jobs, CATALOG, figures(committed_usd), "test", NOW)
    return slo.report(spec, source, NOW, since)


def test_latency_sli_and_error_budget() -> None:
    # 40 jobs in the week: 38 under 900 s, 2 over (one of them a failure).
    jobs = [job(n, ended_ago_s=3600 * (n + 2), duration_s=60) for n in range(38)]
    jobs.append(job(38, ended_ago_s=7200, duration_s=1000))
    jobs.append(job(39, ended_ago_s=9000, duration_s=950, status=JobStatus.FAILED))
    jobs.append(job(40, ended_ago_s=8 * 86400, duration_s=5000))  # outside the 7 days
    latency = {s.name: s for s in run(jobs).slos}["latency"]
    assert (latency.good, latency.total) == (38, 40)
    assert latency.sli == pytest.approx(0.95)
    assert latency.met is True
    # 5% of 40 = 2 bad jobs allowed, 2 spent: nothing left.
    assert latency.error_budget_left == pytest.approx(0.0)


def test_quality_sli_counts_succeeded_jobs_only() -> None:
    jobs = [job(n, ended_ago_s=60 * n + 60, duration_s=30, quality=0.9) for n in range(17)]
    jobs += [job(17, ended_ago_s=60, duration_s=30, quality=0.59),
             job(18, ended_ago_s=60, duration_s=30, quality=0.6),
             job(19, ended_ago_s=60, duration_s=30, status=JobStatus.FAILED)]
    quality = {s.name: s for s in run(jobs).slos}["quality"]
    assert (quality.good, quality.total) == (18, 19)
    assert quality.met is True
    # 10% of 19 = 1.9 bad allowed, 1 spent.
    assert quality.error_budget_left == pytest.approx(1 - 1 / 1.9, abs=1e-6)


def test_an_empty_window_spends_nothing() -> None:
    report = run([])
    assert [(s.total, s.sli, s.met, s.error_budget_left) for s in report.slos] == [
        (0, None, None, 1.0)] * 2
    assert report.firing == []


def test_latency_alert_fires_on_the_last_hours_p95() -> None:
    fast = [job(n, ended_ago_s=60, duration_s=100) for n in range(18)]
    slow = [job(100 + n, ended_ago_s=120, duration_s=1000) for n in range(2)]
    old_slow = [job(200 + n, ended_ago_s=7200, duration_s=5000) for n in range(10)]
    assert "latency_high" not in run(fast + old_slow).firing
    report = run(fast + slow)  # 2 of 20 over 900 s: p95 is over
    assert "latency_high" in report.firing
    (row,) = {a.name: a for a in report.alerts}["latency_high"].values
    assert row == {"labels": {}, "value": 1000.0, "firing": True}


def test_quality_alert_names_the_backend() -> None:
    jobs = [job(n, ended_ago_s=60, duration_s=30, backend="veo-31-fast", quality=0.5)
            for n in range(3)]
    jobs += [job(10 + n, ended_ago_s=60, duration_s=30, backend="runway-gen45", quality=0.9)
             for n in range(3)]
    alert = {a.name: a for a in run(jobs).alerts}["quality_low"]
    assert alert.firing is True
    assert [(r["labels"], r["firing"]) for r in alert.values] == [
        ({"backend": "runway-gen45"}, False), ({"backend": "veo-31-fast"}, True)]


def test_runway_errors_alert_counts_runway_failures_in_the_hour() -> None:
    jobs = [job(n, ended_ago_s=60, duration_s=30, backend="replicate-seedance",
                errors=[("runway-gen45", "http_503")]) for n in range(5)]
    jobs.append(job(9, ended_ago_s=60, duration_s=30, errors=[("runway-gen45", "http_429")]))
    jobs.append(job(10, ended_ago_s=60, duration_s=30, errors=[("veo-31-fast", "http_503")]))
    assert "runway_errors" not in run(jobs).firing  # 5 errors (a 429 is not one): not over 5
    jobs.append(job(11, ended_ago_s=60, duration_s=30, errors=[("runway-gen45", "http_500")]))
    report = run(jobs)
    assert "runway_errors" in report.firing
    assert {a.name: a for a in report.alerts}["runway_errors"].values[0]["value"] == 6


@pytest.mark.parametrize(("committed", "firing"), [
    (89.99, []), (90.0, ["budget_warning"]), (99.99, ["budget_warning"]),
    # At the limit, the forecast (committed now plus no further spend) is at it too.
    (100.0, ["budget_warning", "budget_critical", "budget_forecast"])])
def test_budget_alerts_fire_at_the_codes_thresholds(committed: float,
                                                    firing: list[str]) -> None:
    assert run([], committed_usd=committed).firing == firing


def test_slo_cli_takes_budget_thresholds_from_the_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`aiprod slo` on a deployment with a 250 USD budget: 120 USD committed is no
    alert, 250 is critical (monitoring.yaml names the settings, not 90/100)."""
    import json

    from click.testing import CliRunner

    from aiprod.wiring import config
    from aiprod_dev.cli import slo as slo_cli

    monkeypatch.setenv("AIPROD_DAILY_BUDGET_USD", "250")
    monkeypatch.setenv("AIPROD_DAILY_BUDGET_WARN_USD", "200")
    config.get_settings.cache_clear()
    monkeypatch.setattr(slo_cli, "firestore_client", lambda project, database: (None, "test"))
    monkeypatch.setattr(slo, "read_jobs", lambda client, since: [])
    monkeypatch.setattr(slo, "read_budget_hours", lambda client, now: [0] * 24)
    firing = {}
    try:
        for committed in (120.0, 250.0):
            monkeypatch.setattr(slo, "read_budget", lambda client, now, c=committed: DayFigures(
                day=now.strftime("%Y-%m-%d"), limit_micros=250_000_000,
                warn_micros=200_000_000, granted_micros=round(c * 1e6), spent_micros=0))
            result = CliRunner().invoke(slo_cli.slo_command, ["--json"])
            assert result.exit_code == 0, result.output
            firing[committed] = sorted(a["name"] for a in json.loads(result.output)["alerts"]
                                       if a["firing"])
    finally:
        config.get_settings.cache_clear()
    assert firing == {120.0: [],
                      250.0: ["budget_critical", "budget_forecast", "budget_warning"]}


def test_yesterdays_ledger_fires_nothing_today() -> None:
    source = slo.JobRecords([], CATALOG, figures(150, day="2026-11-25"), "test", NOW)
    assert slo.report(SPEC, source, NOW).firing == []


def test_since_narrows_every_window() -> None:
    slow = [job(n, ended_ago_s=600, duration_s=1000) for n in range(3)]
    fast = [job(10 + n, ended_ago_s=60, duration_s=10) for n in range(3)]
    report = run(slow + fast, since=NOW - dt.timedelta(seconds=300))
    latency = {s.name: s for s in report.slos}["latency"]
    assert (latency.good, latency.total) == (3, 3)
    assert report.firing == []


def test_metrics_job_records_cannot_show_are_reported_unknown() -> None:
    spec = monitoring.MonitoringSpec.model_validate(
        monitoring.load().model_dump() | {"alerts": [
            {"name": "circuits", "display_name": "circuits", "severity": "WARNING",
             "metric": "circuit_state_changes", "documentation": "Runbook: x",
             "condition": {"aggregate": "sum", "above": 0}}]})
    (alert,) = run([], spec=spec).alerts
    assert alert.firing is None


def test_the_report_is_json() -> None:
    body = run([job(1, ended_ago_s=60, duration_s=30)], committed_usd=95).as_json()
    assert body["firing"] == ["budget_warning"]
    assert {s["name"] for s in body["slos"]} == {"latency", "quality"}
    assert body["now"] == NOW.isoformat()


@pytest.mark.parametrize(("committed_usd", "fires"), [(62.0, True), (61.0, False)])
def test_the_forecast_alert_fires_when_the_projection_reaches_the_limit(
        committed_usd: float, fires: bool) -> None:
    """At 12:00 with 6.20 USD settled in hour 11 (age 1, weight 0.5) and nothing in
    hours 7-10 or yet in hour 12 (observed 0 h): rate = 0.5 * 6.2 / (0.5 + 0.25 +
    0.125 + 0.0625 + 0.03125) = 3.1 / 0.96875 = 3.2 USD/h; 12 h left, so the
    projection is committed + 38.4 USD: 100.4 (fires at the 100 USD limit) or 99.4."""
    hours = [0] * 24
    hours[11] = 6_200_000
    source = slo.JobRecords([], CATALOG, figures(committed_usd), "test", NOW, hours)

    report = slo.report(SPEC, source, NOW)

    (projected,) = next(a for a in report.alerts if a.name == "budget_forecast").values
    assert projected["value"] == pytest.approx(committed_usd + 38.4)
    assert ("budget_forecast" in report.firing) is fires
