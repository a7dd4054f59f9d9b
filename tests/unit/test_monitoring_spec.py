"""monitoring.yaml: what operators were promised is in it, it agrees with the code's
settings, and the checks on it catch the mistakes Cloud Monitoring would only
report at apply time (or never)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from aiprod import REPO_ROOT
from aiprod.observability import monitoring
from aiprod.wiring.config import Settings

# Thresholds written {setting: ...} take the code's default settings here.
SPEC = monitoring.load().with_settings(Settings.model_construct())
RAW = yaml.safe_load(monitoring.DEFAULT_MONITORING_PATH.read_text())


def test_the_alert_policies() -> None:
    alerts = {a.name: a for a in SPEC.alerts}
    assert set(alerts) == {"budget_warning", "budget_critical", "quality_low", "latency_high",
                           "runway_errors", "messages_dead_lettered", "pubsub_backlog_old",
                           "function_errors", "watchdog_redrove", "budget_forecast",
                           "backend_left_for_quality"}
    c = {name: a.condition for name, a in alerts.items()}
    assert (alerts["budget_warning"].metric, c["budget_warning"].at_least) == (
        "budget_committed_usd", 90)
    assert (alerts["budget_critical"].metric, c["budget_critical"].at_least) == (
        "budget_committed_usd", 100)
    # Issue 14: the forecast of the day's committed money crossing the limit.
    assert (alerts["budget_forecast"].metric, c["budget_forecast"].at_least) == (
        "budget_forecast_usd", 100)
    assert (c["quality_low"].aggregate, c["quality_low"].below) == ("mean", 0.6)
    assert (c["latency_high"].aggregate, c["latency_high"].above) == ("p95", 900)
    assert (c["runway_errors"].aggregate, c["runway_errors"].above,
            c["runway_errors"].window_s, c["runway_errors"].filter) == (
        "sum", 5, 3600, {"provider": "runway"})
    # Any re-drive at all opens an incident, one per action.
    assert (alerts["watchdog_redrove"].metric, c["watchdog_redrove"].aggregate,
            c["watchdog_redrove"].above, c["watchdog_redrove"].group_by) == (
        "watchdog_redriven", "sum", 0, ("action",))
    for alert in alerts.values():
        assert alert.severity in {"WARNING", "CRITICAL", "ERROR"}
        assert "Runbook" in alert.documentation, f"{alert.name} has no runbook action"
    # Critical says that nothing more is spent: admission refuses already.
    assert "admission already" in alerts["budget_critical"].documentation
    assert "refuses new jobs" in alerts["budget_critical"].documentation


def test_alerts_on_lost_work() -> None:
    """Dead letters (the code's metric), a stuck subscription and function 5xx
    responses (Google's own metrics, named by type)."""
    dead = SPEC.alert("messages_dead_lettered")
    assert (dead.metric, dead.condition.aggregate, dead.condition.above) == (
        "messages_dead_lettered", "sum", 0)
    backlog = SPEC.alert("pubsub_backlog_old")
    assert SPEC.metric_type(backlog.metric) == (
        "pubsub.googleapis.com/subscription/oldest_unacked_message_age")
    assert backlog.condition.group_by == ("subscription_id",)
    # Longer than a work message's whole retry schedule (5 deliveries of at most
    # 600 s each, backoff up to 600 s): only a stuck one crosses it.
    assert backlog.condition.threshold >= 5 * 600 + 4 * 150
    errors = SPEC.alert("function_errors")
    assert SPEC.metric_type(errors.metric) == "run.googleapis.com/request_count"
    assert errors.condition.filter == {"response_code_class": "5xx"}
    for alert in (dead, backlog, errors):
        assert "Runbook" in alert.documentation


def test_budget_thresholds_come_from_the_settings() -> None:
    raw = monitoring.load()
    spec = raw.with_settings(Settings.model_construct(daily_budget_usd=250,
                                                      daily_budget_warn_usd=200))
    assert spec.alert("budget_critical").condition.threshold == 250
    assert spec.alert("budget_warning").condition.threshold == 200
    assert raw.alert("budget_critical").condition.setting == "daily_budget_usd"
    with pytest.raises(ValueError, match="unresolved"):
        _ = raw.alert("budget_warning").condition.threshold


def test_budget_alerts_agree_with_the_codes_thresholds() -> None:
    """The alerts fire where the code's own thresholds are (committed money >= limit)."""
    defaults = Settings.model_construct()
    assert SPEC.alert("budget_warning").condition.at_least == defaults.daily_budget_warn_usd
    assert SPEC.alert("budget_critical").condition.at_least == defaults.daily_budget_usd
    assert SPEC.alert("budget_critical").condition.holds(defaults.daily_budget_usd)
    assert not SPEC.alert("budget_warning").condition.holds(
        defaults.daily_budget_warn_usd - 0.01)


def test_the_two_slos() -> None:
    latency, quality = SPEC.slo("latency"), SPEC.slo("quality")
    assert (latency.metric, latency.goal, latency.rolling_days) == ("job_duration_s", 0.95, 7)
    assert latency.good.contains(899.9)
    assert not latency.good.contains(900)
    assert (quality.metric, quality.goal, quality.rolling_days) == ("quality_score", 0.90, 7)
    assert quality.good.contains(0.6)
    assert not quality.good.contains(0.599)


def test_the_dashboard_has_the_promised_widgets() -> None:
    charts = {(s.metric, s.aggregate, s.group_by) for w in SPEC.dashboard.widgets
              for s in w.series}
    for wanted in [("job_duration_s", "p50", ()), ("job_duration_s", "p95", ()),
                   ("job_duration_s", "p99", ()), ("quality_score", "mean", ("backend",)),
                   ("budget_committed_usd", "p99", ()), ("provider_errors", "rate", ("backend",)),
                   ("jobs_admitted", "sum", ()), ("jobs_succeeded", "sum", ()),
                   ("jobs_failed", "sum", ()), ("job_cost_usd", "mean", ("backend",))]:
        assert wanted in charts, wanted


def test_the_issues_metrics_are_declared_and_labelled_by_backend() -> None:
    labels = {m.name: set(m.labels) for m in SPEC.metrics}
    by_backend = ["jobs_admitted", "jobs_succeeded", "jobs_failed", "jobs_cancelled",
                  "render_duration_s", "job_duration_s", "queue_wait_s", "job_cost_usd",
                  "quality_score", "provider_errors", "provider_throttles",
                  "circuit_state_changes", "output_bytes"]
    for name in by_backend:
        assert "backend" in labels[name], name
    assert labels["jobs_rejected"] == {"reason"}
    assert "error_class" in labels["jobs_failed"]
    assert labels["fallbacks"] == {"from_backend", "to_backend"}
    assert {"budget_spent_usd", "budget_reserved_usd", "messages_dead_lettered"} <= set(labels)


def broken(change: Any) -> dict[str, Any]:
    spec = yaml.safe_load(yaml.safe_dump(RAW))
    change(spec)
    return spec


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s["alerts"][0].update(metric="budget_commited_usd"), "no metric"),
    (lambda s: s["alerts"][3]["condition"].update(above=1000), "bucket bounds"),
    (lambda s: s["alerts"][4]["condition"].update(aggregate="p95"), "a counter"),
    (lambda s: s["alerts"][4]["condition"].update(filter={"vendor": "runway"}), "no label"),
    (lambda s: s["alerts"][2]["condition"].update(at_least=0.6), "exactly one"),
    (lambda s: s["alerts"][2]["condition"].update(window_s=90), "whole number of minutes"),
    (lambda s: s["slos"][0].update(metric="jobs_succeeded"), "counter"),
    (lambda s: s["slos"][1]["good"].update(at_least=0.65), "bucket bounds"),
    (lambda s: s["slos"][0].update(rolling_days=31), "rolling_days"),
    (lambda s: s["dashboard"]["widgets"][0]["series"].append(
        {"metric": "jobs_failed", "aggregate": "p95"}), "a counter"),
    (lambda s: s["metrics"][0]["labels"].append("job_id"), "usable label"),
    (lambda s: s["metrics"].append(dict(s["metrics"][0])), "repeat"),
    (lambda s: s["metrics"][6].update(buckets=[5, 1]), "increase"),
    (lambda s: s["alerts"][0]["condition"].update(at_least={"setting": "budget"}),
     "threshold setting"),
    (lambda s: s["alerts"][3]["condition"].update(above={"setting": "daily_budget_usd"}),
     "not a setting"),
    (lambda s: s["alerts"][4]["condition"].update(aggregate="max"), "built-in gauges"),
    (lambda s: next(a for a in s["alerts"] if a["name"] == "pubsub_backlog_old")["condition"]
     .update(aggregate="each", above=None, at_least=1), "built-in metric"),
    (lambda s: s["builtin_metrics"][0].update(docs="https://example.com/m"), "docs"),
    (lambda s: s["builtin_metrics"][0].update(type="logging.googleapis.com/user/x"),
     "log-based"),
])
def test_mistakes_are_refused(change: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        monitoring.MonitoringSpec.model_validate(broken(change))


def test_the_documentation_lists_every_metric_and_alert() -> None:
    text = (REPO_ROOT / "docs" / "observability.md").read_text()
    missing = [m.name for m in SPEC.metrics if f"`{m.name}`" not in text]
    assert not missing, f"docs/observability.md does not describe {missing}"
    for alert in SPEC.alerts:
        assert alert.name.replace("_", " ").split()[0] in text.lower(), alert.name
