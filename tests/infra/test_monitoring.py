"""terraform/monitoring.tf checked offline against the code: the log-based metrics
read the lines aiprod.metrics writes, and every alert, SLO and chart Terraform
would deploy names only metrics the code emits."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any

import pytest

from aiprod import logs, metrics, monitoring
from aiprod.config import Settings
from tests import metric_calls
from tests.infra import tfconfig
from tests.infra.tfconfig import Deployment, Instance

SPEC = monitoring.load()
METRIC_TYPE = re.compile(r'metric\.type="logging\.googleapis\.com/user/([^"]+)"')
LINE_METRIC = re.compile(r'jsonPayload\.metric="([^"]+)"')


def log_metrics(deployment: Deployment) -> dict[str, Instance]:
    return {i.key: i for i in deployment.instances("google_logging_metric", "metric").values()}


def alert_policies(deployment: Deployment) -> dict[str, Instance]:
    return {i.key: i for i in deployment.instances("google_monitoring_alert_policy",
                                                   "alert").values()}


def emitted_line(name: str, value: float, **labels: str) -> dict[str, Any]:
    """The line aiprod.metrics writes for a point, as Cloud Logging stores it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.CloudLoggingFormatter())
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    root.handlers, root.level = [handler], logging.INFO
    try:
        kind = SPEC.metric(name).kind
        if kind == "counter":
            metrics.count(name, **labels)
        elif kind == "gauge":
            metrics.gauge(name, value, **labels)
        else:
            metrics.observe(name, value, **labels)
    finally:
        root.level, root.handlers = saved
    (line,) = stream.getvalue().splitlines()
    return {"resource": {"type": "cloud_run_revision"}, "jsonPayload": json.loads(line)}


def field(entry: dict[str, Any], path: str) -> Any:
    node: Any = entry
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


_CLAUSE = re.compile(r'^([\w.]+)(=|>=|>|<)(?:"([^"]*)"|(-?[\d.]+))$')


def matches(log_filter: str, entry: dict[str, Any]) -> bool:
    """The Logging query subset the log-based metrics and log-match alerts use:
    clauses `path="text"` or `path>=number` joined by AND."""
    for clause in log_filter.split(" AND "):
        match = _CLAUSE.fullmatch(clause.strip())
        assert match, f"clause outside the checked subset: {clause!r}"
        path, op, text, number = match.groups()
        value = field(entry, path)
        if text is not None:
            if op != "=" or value != text:
                return False
        elif not isinstance(value, int | float) or not {
                ">=": value >= float(number), ">": value > float(number),
                "<": value < float(number), "=": value == float(number)}[op]:
            return False
    return True


def extract(extractor: str, entry: dict[str, Any]) -> Any:
    match = re.fullmatch(r"EXTRACT\(([\w.]+)\)", extractor)
    assert match, extractor
    return field(entry, match.group(1))


def sample_labels(metric: monitoring.Metric) -> dict[str, str]:
    return {label: f"{label}-value" for label in metric.labels}


# --- Log-based metrics <-> the lines the code writes -------------------------------------

def test_each_metric_is_a_log_based_metric_that_reads_the_codes_lines(
        deployment: Deployment) -> None:
    built = log_metrics(deployment)
    assert set(built) == {m.name for m in SPEC.metrics}
    for metric in SPEC.metrics:
        lm = built[metric.name]
        assert lm.get("name") == f"{SPEC.prefix}{metric.name}"
        labels = sample_labels(metric)
        line = emitted_line(metric.name, 42.0, **labels)
        log_filter = lm.get("filter")
        assert matches(log_filter, line), f"{metric.name}: {log_filter} misses {line}"
        # ... and no other metric's line.
        for other in SPEC.metrics:
            if other.name != metric.name:
                assert not matches(log_filter, emitted_line(other.name, 1.0,
                                                            **sample_labels(other)))
        extractors = lm.get("label_extractors")
        assert {k: extract(v, line) for k, v in extractors.items()} == labels
        descriptor = lm.block("metric_descriptor")
        assert descriptor.get("metric_kind") == "DELTA"
        assert {b.get("key") for b in descriptor.blocks("labels")} == set(metric.labels)
        if metric.kind == "counter":
            assert descriptor.get("value_type") == "INT64"
            assert lm.get("value_extractor") is None
            assert not lm.blocks("bucket_options")
        else:
            assert descriptor.get("value_type") == "DISTRIBUTION"
            assert extract(lm.get("value_extractor"), line) == 42.0
            bounds = lm.block("bucket_options").block("explicit_buckets").get("bounds")
            assert bounds == list(metric.buckets)


def test_the_filter_check_is_not_vacuous() -> None:
    line = emitted_line("jobs_failed", 1, backend="b", error_class="backend")
    assert matches('resource.type="cloud_run_revision" AND jsonPayload.metric="jobs_failed"',
                   line)
    assert not matches('jsonPayload.metric="jobs_succeeded"', line)
    assert not matches('jsonPayload.logger="aiprod.other" AND jsonPayload.metric="jobs_failed"',
                       line)
    assert not matches("jsonPayload.value>=2", line)


# --- Everything deployed names metrics the code emits -----------------------------------------

def deployed_metric_references(deployment: Deployment) -> dict[str, set[str]]:
    """Metric name -> the deployed resources that name it (alert, SLO and chart filters)."""
    refs: dict[str, set[str]] = {}

    def note(text: str, where: str) -> None:
        for metric_type in METRIC_TYPE.findall(text):
            assert metric_type.startswith(SPEC.prefix), metric_type
            refs.setdefault(metric_type.removeprefix(SPEC.prefix), set()).add(where)
        for name in LINE_METRIC.findall(text):
            refs.setdefault(name, set()).add(where)

    for name, policy in alert_policies(deployment).items():
        for condition in policy.blocks("conditions"):
            for kind in ("condition_threshold", "condition_matched_log"):
                for block in condition.blocks(kind):
                    note(block.get("filter"), f"alert {name}")
    for name, objective in {i.key: i for i in deployment.instances(
            "google_monitoring_slo", "slo").values()}.items():
        cut = objective.block("request_based_sli").block("distribution_cut")
        note(cut.get("distribution_filter"), f"slo {name}")
    dashboard = deployment.evaluated.locals["dashboard"]
    for widget in dashboard["gridLayout"]["widgets"]:
        for data_set in widget["xyChart"]["dataSets"]:
            note(data_set["timeSeriesQuery"]["timeSeriesFilter"]["filter"],
                 f"widget {widget['title']!r}")
    return refs


def test_every_deployed_alert_slo_and_chart_names_a_metric_the_code_emits(
        deployment: Deployment) -> None:
    refs = deployed_metric_references(deployment)
    kinds = {where.split()[0] for users in refs.values() for where in users}
    assert kinds == {"alert", "slo", "widget"}, "the scan found no alert, SLO or chart"
    emitted = metric_calls.emitted()
    missing = {name: sorted(users) for name, users in refs.items() if name not in emitted}
    assert not missing, f"deployed, but the code never emits: {missing}"
    undeclared = emitted - {m.name for m in SPEC.metrics}
    assert not undeclared, f"emitted but not declared in monitoring.yaml: {undeclared}"


def test_a_renamed_metric_in_the_code_would_be_caught(deployment: Deployment) -> None:
    """The check above fails when the code stops emitting a metric an alert uses."""
    refs = deployed_metric_references(deployment)
    emitted = metric_calls.emitted() - {"job_duration_s"}
    assert {name for name in refs if name not in emitted} == {"job_duration_s"}


# --- Alert policies ----------------------------------------------------------------------------

def test_alert_policies_are_the_yaml_alerts(deployment: Deployment) -> None:
    policies = alert_policies(deployment)
    assert set(policies) == {a.name for a in SPEC.alerts}
    for alert in SPEC.alerts:
        policy = policies[alert.name]
        assert policy.get("severity") == alert.severity
        assert policy.get("display_name") == alert.display_name
        docs = policy.block("documentation")
        assert docs.get("mime_type") == "text/markdown"
        assert alert.documentation.strip() in docs.get("content")
        assert len(docs.get("content")) <= 8192
        (condition,) = policy.blocks("conditions")
        thresholds = condition.blocks("condition_threshold")
        matched = condition.blocks("condition_matched_log")
        if alert.condition.aggregate == "each":
            assert (len(thresholds), len(matched)) == (0, 1)
            # A log-match alert must rate-limit its notifications.
            limit = policy.block("alert_strategy").block("notification_rate_limit")
            assert limit.get("period") == f"{alert.notify_at_most_every_s}s"
            continue
        assert (len(thresholds), len(matched)) == (1, 0)
        (threshold,) = thresholds
        assert threshold.get("threshold_value") == alert.condition.threshold
        assert threshold.get("comparison") == {"above": "COMPARISON_GT",
                                               "below": "COMPARISON_LT"}[
            alert.condition.comparison]
        aggregation = threshold.block("aggregations")
        assert aggregation.get("alignment_period") == f"{alert.condition.window_s}s"
        assert aggregation.get("group_by_fields") == [
            f"metric.label.{label}" for label in alert.condition.group_by]
        for label, value in alert.condition.filter.items():
            assert f'metric.label.{label}="{value}"' in threshold.get("filter")


def test_budget_alerts_fire_where_the_deployed_functions_refuse(
        deployment: Deployment, evaluated: tfconfig.Evaluated) -> None:
    """The 90/100 USD of the alerts are the code's defaults and Terraform's: a
    committed-money line at the limit matches the critical alert's filter."""
    defaults = Settings.model_construct()
    assert (evaluated.vars["daily_budget_warn_usd"], evaluated.vars["daily_budget_usd"]) == (
        defaults.daily_budget_warn_usd, defaults.daily_budget_usd)
    policies = alert_policies(deployment)

    def fires(alert: str, committed: float) -> bool:
        (condition,) = policies[alert].blocks("conditions")
        log_filter = condition.block("condition_matched_log").get("filter")
        return matches(log_filter, emitted_line("budget_committed_usd", committed))

    limit, warn = defaults.daily_budget_usd, defaults.daily_budget_warn_usd
    assert fires("budget_warning", warn)
    assert not fires("budget_warning", warn - 0.01)
    assert fires("budget_critical", limit)
    assert not fires("budget_critical", limit - 0.01)
    assert not fires("budget_critical", warn)


def test_percentile_thresholds_fall_on_bucket_bounds(deployment: Deployment) -> None:
    built = log_metrics(deployment)
    for alert in SPEC.alerts:
        if alert.condition.aggregate in monitoring.PERCENTILES:
            bounds = built[alert.metric].block("bucket_options").block(
                "explicit_buckets").get("bounds")
            assert alert.condition.threshold in bounds, alert.name


# --- SLOs and dashboard ----------------------------------------------------------------------

def test_slos_are_distribution_cuts_on_the_custom_service(deployment: Deployment) -> None:
    service = deployment.instances("google_monitoring_custom_service", "aiprod")[None]
    objectives = {i.key: i for i in deployment.instances("google_monitoring_slo",
                                                         "slo").values()}
    assert set(objectives) == {s.name for s in SPEC.slos}
    built = log_metrics(deployment)
    for slo in SPEC.slos:
        objective = objectives[slo.name]
        assert deployment.resolve(objective.get("service")) is service
        assert objective.get("goal") == slo.goal
        assert objective.get("rolling_period_days") == slo.rolling_days == 7
        cut = objective.block("request_based_sli").block("distribution_cut")
        window = cut.block("range")
        assert (window.get("min"), window.get("max")) == (slo.good.at_least, slo.good.below)
        bounds = built[slo.metric].block("bucket_options").block("explicit_buckets").get(
            "bounds")
        assert slo.good.threshold in bounds, "an SLO cut must fall on a bucket bound"


def test_the_dashboard_is_built_from_the_yaml_widgets(deployment: Deployment) -> None:
    resource = deployment.config.resources[("google_monitoring_dashboard", "main")]
    assert resource["dashboard_json"] == "${jsonencode(local.dashboard)}"
    dashboard = json.loads(json.dumps(deployment.evaluated.locals["dashboard"]))
    widgets = dashboard["gridLayout"]["widgets"]
    assert [w["title"] for w in widgets] == [w.title for w in SPEC.dashboard.widgets]
    for widget, spec in zip(widgets, SPEC.dashboard.widgets, strict=True):
        assert len(widget["xyChart"]["dataSets"]) == len(spec.series)
        for data_set in widget["xyChart"]["dataSets"]:
            aggregation = data_set["timeSeriesQuery"]["timeSeriesFilter"]["aggregation"]
            assert aggregation["perSeriesAligner"] in ("ALIGN_DELTA", "ALIGN_RATE")
            assert aggregation["crossSeriesReducer"].startswith("REDUCE_")


@pytest.mark.parametrize("resource", ["google_logging_metric", "google_monitoring_alert_policy",
                                      "google_monitoring_slo", "google_monitoring_dashboard",
                                      "google_monitoring_custom_service"])
def test_monitoring_resources_live_in_monitoring_tf(tf_config: tfconfig.Config,
                                                    resource: str) -> None:
    files = {f for (rtype, _), f in tf_config.resource_file.items() if rtype == resource}
    assert files == {"monitoring.tf"}
