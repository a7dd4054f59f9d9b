"""terraform/monitoring.tf checked offline against the code: the log-based metrics
read the lines aiprod.observability.metrics writes, and every alert, SLO and chart Terraform
would deploy names only metrics the code emits."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from aiprod.observability import logs, metrics, monitoring
from aiprod.wiring.config import Settings
from tests import metric_calls
from tests.infra import tfconfig
from tests.infra.tfconfig import Deployment, Instance

# Thresholds written {setting: ...} resolved with the code's defaults, which are
# Terraform's defaults too (test_budget_alerts_fire_where_the_deployed_functions_refuse).
SPEC = monitoring.load().with_settings(Settings.model_construct())
METRIC_TYPE = re.compile(r'metric\.type="logging\.googleapis\.com/user/([^"]+)"')
ANY_METRIC_TYPE = re.compile(r'metric\.type="([^"]+)"')
# Built-in Google Cloud metrics an alert may name instead of one the code emits,
# each with the page of Google's metric list that defines it. Adding one is a
# deliberate act: here and in monitoring.yaml's builtin_metrics.
DOCUMENTED_BUILTINS = {
    "pubsub.googleapis.com/subscription/oldest_unacked_message_age":
        "https://cloud.google.com/monitoring/api/metrics_gcp_p_z#gcp-pubsub",
    "run.googleapis.com/request_count":
        "https://cloud.google.com/monitoring/api/metrics_gcp_p_z#gcp-run",
}
FLOAT_MAX = 1.7976931348623157e308
LINE_METRIC = re.compile(r'jsonPayload\.metric="([^"]+)"')


def log_metrics(deployment: Deployment) -> dict[str, Instance]:
    return {i.key: i for i in deployment.instances("google_logging_metric", "metric").values()}


def alert_policies(deployment: Deployment) -> dict[str, Instance]:
    return {i.key: i for i in deployment.instances("google_monitoring_alert_policy",
                                                   "alert").values()}


def emitted_line(name: str, value: float, **labels: str) -> dict[str, Any]:
    """The line aiprod.observability.metrics writes for a point, as Cloud Logging stores it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.CloudLoggingFormatter())
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    # setLevel, not `.level =`: it clears the loggers' cached isEnabledFor answers
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        kind = SPEC.metric(name).kind
        if kind == "counter":
            metrics.count(name, **labels)
        elif kind == "gauge":
            metrics.gauge(name, value, **labels)
        else:
            metrics.observe(name, value, **labels)
    finally:
        root.setLevel(saved[0])
        root.handlers = saved[1]
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


def label_path(metric: str, label: str) -> str:
    """Where a label is read in a time series filter: built-in metrics also have
    labels of their monitored resource."""
    builtin = SPEC.builtin(metric)
    if builtin is not None and label in builtin.resource_labels:
        return f"resource.label.{label}"
    return f"metric.label.{label}"


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
        for metric_type in ANY_METRIC_TYPE.findall(text):
            if not METRIC_TYPE.fullmatch(f'metric.type="{metric_type}"'):
                refs.setdefault(f"builtin:{metric_type}", set()).add(where)
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
    builtins = {name.removeprefix("builtin:") for name in refs if name.startswith("builtin:")}
    undocumented = builtins - set(DOCUMENTED_BUILTINS)
    assert not undocumented, f"built-in metrics not in DOCUMENTED_BUILTINS: {undocumented}"
    missing = {name: sorted(users) for name, users in refs.items()
               if name not in emitted and not name.startswith("builtin:")}
    assert not missing, f"deployed, but the code never emits: {missing}"
    undeclared = emitted - {m.name for m in SPEC.metrics}
    assert not undeclared, f"emitted but not declared in monitoring.yaml: {undeclared}"


def test_a_renamed_metric_in_the_code_would_be_caught(deployment: Deployment) -> None:
    """The check above fails when the code stops emitting a metric an alert uses."""
    refs = deployed_metric_references(deployment)
    emitted = metric_calls.emitted() - {"job_duration_s"}
    assert {name for name in refs if name not in emitted
            and not name.startswith("builtin:")} == {"job_duration_s"}


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
            label_path(alert.metric, label) for label in alert.condition.group_by]
        for label, value in alert.condition.filter.items():
            assert f'{label_path(alert.metric, label)}="{value}"' in threshold.get("filter")


def test_budget_alerts_fire_where_the_deployed_functions_refuse(
        deployment: Deployment, evaluated: tfconfig.Evaluated) -> None:
    """The 90/100 USD of the alerts are the code's defaults and Terraform's: a
    committed-money line at the limit matches the critical alert's filter."""
    defaults = Settings.model_construct()
    assert (evaluated.locals["daily_budget_warn_usd"], evaluated.vars["daily_budget_usd"]) == (
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

def api_range(low: Any, high: Any) -> tuple[float, float]:
    """The range.min and range.max the Monitoring API receives from the google
    provider: float64s, where an end left unset is sent as 0, not as infinity
    (https://github.com/hashicorp/terraform-provider-google/issues/9453), and a
    value past the largest double would not be a float64 at all."""
    sent = []
    for value in (low, high):
        number = 0.0 if value is None else float(value)
        assert abs(number) <= FLOAT_MAX, value  # a float64, finite (not NaN either)
        sent.append(number)
    return sent[0], sent[1]


def test_an_unset_range_end_would_be_refused() -> None:
    """What the quality SLO sent before: at_least 0.6 with no max is [0.6, 0]."""
    low, high = api_range(0.6, None)
    assert not low < high


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
        sent_min, sent_max = api_range(window.get("min"), window.get("max"))
        assert sent_min < sent_max, f"{slo.name}: the API refuses the range [{sent_min}, " \
            f"{sent_max}]"
        # The finite end is the YAML's threshold; the open end is the largest double.
        assert (sent_min, sent_max) == (
            slo.good.at_least if slo.good.at_least is not None else -FLOAT_MAX,
            slo.good.below if slo.good.below is not None else FLOAT_MAX), slo.name
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


# --- First apply: log-based metrics before what names them ----------------------------------

def test_alerts_slos_and_dashboard_wait_for_new_log_based_metrics(
        tf_config: tfconfig.Config, evaluated: tfconfig.Evaluated) -> None:
    """A log-based metric is not usable at once: an alert policy created right after
    it fails with 404 "Cannot find metric(s) ... it could take up to 10 minutes to
    become available" (https://github.com/hashicorp/terraform-provider-google/issues/11102).
    So a time_sleep of at least 10 minutes sits between the metrics and every
    resource that names them, and sleeps again when the set of metrics changes."""
    sleep = tf_config.resources[("time_sleep", "log_metrics_ready")]
    assert "${google_logging_metric.metric}" in sleep["depends_on"]
    duration = evaluated.locals["log_metrics_wait"]
    assert sleep["create_duration"] == "${local.log_metrics_wait}"
    assert re.fullmatch(r"\d+s", duration), duration
    assert int(duration[:-1]) >= 600, duration
    (triggers,) = [sleep["triggers"]] if isinstance(sleep["triggers"], dict) else sleep[
        "triggers"]
    assert "google_logging_metric.metric" in str(triggers), "re-sleep when metrics change"
    for rtype, rname in (("google_monitoring_alert_policy", "alert"),
                         ("google_monitoring_slo", "slo"),
                         ("google_monitoring_dashboard", "main")):
        assert tf_config.resources[(rtype, rname)]["depends_on"] == [
            "${time_sleep.log_metrics_ready}"], rtype


# --- Budget thresholds: one value for the functions and the alerts ------------------------------

@pytest.mark.parametrize(("variables", "limit", "warn"), [
    ({"daily_budget_usd": 250, "daily_budget_warn_usd": 200}, 250, 200),
    # An operator who raises only the budget moves the warning with it (90%).
    ({"daily_budget_usd": 250}, 250, 225),
    ({"daily_budget_usd": 50}, 50, 45),
])
def test_budget_alert_thresholds_follow_the_budget_variables(
        tf_config: tfconfig.Config, tmp_path: Path, variables: dict[str, float], limit: float,
        warn: float) -> None:
    """With a daily budget of 250 the deployed functions refuse at 250, so the alerts
    must fire at 250 and at the warning, not at monitoring.yaml's old 100/90."""
    evaluated = tfconfig.evaluate_locals(tf_config, tmp_path, {
        "project_id": "aiprod-offline-test", **variables})
    deployment = Deployment(tf_config, evaluated)
    policies = alert_policies(deployment)

    def fires(alert: str, committed: float) -> bool:
        (condition,) = policies[alert].blocks("conditions")
        log_filter = condition.block("condition_matched_log").get("filter")
        return matches(log_filter, emitted_line("budget_committed_usd", committed))

    for fn in deployment.instances("google_cloudfunctions2_function", "fn").values():
        env = fn.block("service_config").get("environment_variables")
        assert (float(env["AIPROD_DAILY_BUDGET_USD"]),
                float(env["AIPROD_DAILY_BUDGET_WARN_USD"])) == (limit, warn), fn.key
    assert fires("budget_critical", limit)
    assert not fires("budget_critical", limit - 0.01)
    assert fires("budget_warning", warn)
    assert not fires("budget_warning", warn - 0.01)
    assert not fires("budget_critical", warn)
    for name in ("budget_warning", "budget_critical"):
        text = policies[name].get("display_name") + policies[name].block(
            "documentation").get("content")
        assert not re.search(r"\b(90|100) USD\b", text), f"{name} names a fixed amount"


def test_budget_thresholds_are_settings_in_monitoring_yaml() -> None:
    raw = monitoring.load()
    assert raw.alert("budget_warning").condition.setting == "daily_budget_warn_usd"
    assert raw.alert("budget_critical").condition.setting == "daily_budget_usd"
    with pytest.raises(ValueError, match="unresolved"):
        _ = raw.alert("budget_critical").condition.threshold
