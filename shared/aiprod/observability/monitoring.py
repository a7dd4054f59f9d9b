"""monitoring.yaml, parsed and checked: the metrics the code emits, the alert
policies, the SLOs and the dashboard (the one source of truth; Terraform reads
the same file with yamldecode, see terraform/monitoring.tf).

The checks here are the ones Cloud Monitoring would make too late (at apply
time, or never): a condition on a metric that does not exist, a label that
metric does not carry, a percentile on a counter, a threshold that falls
inside a bucket (bucketed percentiles and distribution cuts are only exact on
bucket bounds).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from aiprod import root_file
from aiprod.domain.model import Strict

NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# Fields every log line already has (logs.py) or that metrics.py writes.
RESERVED_LABELS = frozenset({"severity", "message", "time", "logger", "metric", "value",
                             "metric_labels", "job_id"})

MetricKind = Literal["counter", "distribution", "gauge"]
Aggregate = Literal["each", "p50", "p95", "p99", "mean", "sum", "rate", "max"]
PERCENTILES = {"p50": 50, "p95": 95, "p99": 99}
# Which aggregates apply to which kinds of metric.
VALUE_AGGREGATES = frozenset({"p50", "p95", "p99", "mean"})
COUNT_AGGREGATES = frozenset({"sum", "rate"})
GAUGE_AGGREGATES = frozenset({"max"})  # built-in GAUGE metrics (ALIGN_MAX)
# Settings a threshold may name ({setting: NAME}): Terraform substitutes the
# variables that also set the functions' environment, `aiprod slo` the Settings.
THRESHOLD_SETTINGS = frozenset({"daily_budget_usd", "daily_budget_warn_usd"})


DEFAULT_MONITORING_PATH = root_file("monitoring.yaml")


class Metric(Strict):
    name: str
    kind: MetricKind
    unit: str = Field(min_length=1)
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    description: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Metric:
        if not NAME.fullmatch(self.name):
            raise ValueError(f"metric name {self.name!r} must be lower_snake_case")
        for label in self.labels:
            if not NAME.fullmatch(label) or label in RESERVED_LABELS:
                raise ValueError(f"{self.name}: label {label!r} is not a usable label name")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"{self.name}: labels repeat")
        if self.kind == "counter" and self.buckets:
            raise ValueError(f"{self.name}: a counter has no buckets")
        if self.kind != "counter":
            if not self.buckets:
                raise ValueError(f"{self.name}: a {self.kind} needs bucket bounds")
            if any(b >= a for b, a in zip(self.buckets, self.buckets[1:], strict=False)):
                raise ValueError(f"{self.name}: bucket bounds must increase")
        return self

    @property
    def has_values(self) -> bool:
        return self.kind != "counter"


class BuiltinMetric(Strict):
    """A metric Google Cloud itself writes (Pub/Sub, Cloud Run), named by its type.

    Alerts may use it; the code does not emit it, so `docs` must point at Google's
    list of built-in metrics that defines it."""

    name: str
    type: str = Field(pattern=r"^[a-z]+\.googleapis\.com/[a-z_/]+$")
    resource_type: str = Field(min_length=1)
    kind: Literal["counter", "gauge"]
    unit: str = Field(min_length=1)
    labels: tuple[str, ...] = ()  # metric labels (metric.label.X)
    resource_labels: tuple[str, ...] = ()  # monitored-resource labels (resource.label.X)
    docs: str = Field(pattern=r"^https://cloud\.google\.com/monitoring/api/metrics_gcp")
    description: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> BuiltinMetric:
        if not NAME.fullmatch(self.name):
            raise ValueError(f"built-in metric name {self.name!r} must be lower_snake_case")
        if self.type.startswith("logging.googleapis.com/user/"):
            raise ValueError(f"{self.name}: a log-based metric belongs in metrics")
        return self

    @property
    def has_values(self) -> bool:
        return self.kind == "gauge"

    @property
    def all_labels(self) -> tuple[str, ...]:
        return self.labels + self.resource_labels


class SettingRef(Strict):
    """A threshold taken from a deployment setting, e.g. {setting: daily_budget_usd}."""

    setting: str

    @model_validator(mode="after")
    def _known(self) -> SettingRef:
        if self.setting not in THRESHOLD_SETTINGS:
            raise ValueError(f"threshold setting {self.setting!r} is not one of "
                             f"{sorted(THRESHOLD_SETTINGS)}")
        return self


Threshold = float | SettingRef


class Condition(Strict):
    aggregate: Aggregate
    window_s: int = Field(default=3600, ge=60, le=86400)
    above: Threshold | None = None
    below: Threshold | None = None
    at_least: Threshold | None = None
    group_by: tuple[str, ...] = ()
    filter: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Condition:
        given = [c for c in (self.above, self.below, self.at_least) if c is not None]
        if len(given) != 1:
            raise ValueError("a condition takes exactly one of above, below, at_least")
        if self.window_s % 60:
            raise ValueError("window_s must be a whole number of minutes")
        if self.at_least is not None and self.aggregate != "each":
            raise ValueError("at_least is for aggregate: each (Cloud Monitoring's threshold "
                             "conditions compare strictly: use above or below)")
        return self

    @property
    def threshold(self) -> float:
        value = next(c for c in (self.above, self.below, self.at_least) if c is not None)
        if isinstance(value, SettingRef):
            raise ValueError(f"threshold {{setting: {value.setting}}} is unresolved: "
                             "use MonitoringSpec.with_settings")
        return value

    @property
    def setting(self) -> str | None:
        """The setting the threshold comes from, if it is symbolic."""
        value = next(c for c in (self.above, self.below, self.at_least) if c is not None)
        return value.setting if isinstance(value, SettingRef) else None

    @property
    def comparison(self) -> Literal["above", "below", "at_least"]:
        if self.above is not None:
            return "above"
        if self.below is not None:
            return "below"
        return "at_least"

    def holds(self, value: float) -> bool:
        """Whether an aggregated value meets the condition (the alert fires)."""
        if self.comparison == "above":
            return value > self.threshold
        if self.comparison == "below":
            return value < self.threshold
        return value >= self.threshold


class Alert(Strict):
    name: str
    display_name: str = Field(min_length=1, max_length=512)
    severity: Literal["CRITICAL", "ERROR", "WARNING"]
    metric: str
    condition: Condition
    notify_at_most_every_s: int = Field(default=3600, ge=300)
    documentation: str = Field(min_length=1, max_length=8192)


class Good(Strict):
    below: float | None = None
    at_least: float | None = None

    @model_validator(mode="after")
    def _one(self) -> Good:
        if (self.below is None) == (self.at_least is None):
            raise ValueError("good takes exactly one of below, at_least")
        return self

    @property
    def threshold(self) -> float:
        value = self.below if self.below is not None else self.at_least
        assert value is not None
        return value

    def contains(self, value: float) -> bool:
        if self.below is not None:
            return value < self.below
        assert self.at_least is not None
        return value >= self.at_least


class Slo(Strict):
    name: str
    display_name: str = Field(min_length=1)
    metric: str
    goal: float = Field(gt=0, le=0.999)
    rolling_days: int = Field(ge=1, le=30)
    good: Good
    description: str = ""


class Series(Strict):
    metric: str
    aggregate: Aggregate
    group_by: tuple[str, ...] = ()
    filter: dict[str, str] = Field(default_factory=dict)


class Widget(Strict):
    title: str = Field(min_length=1)
    unit: str = ""
    plot: Literal["line", "stacked_bars"] = "line"
    series: tuple[Series, ...] = Field(min_length=1)


class Dashboard(Strict):
    display_name: str
    columns: int = Field(default=2, ge=1, le=12)
    window_s: int = Field(default=300, ge=60)
    widgets: tuple[Widget, ...] = Field(min_length=1)


class MonitoringSpec(Strict):
    version: Literal[1]
    prefix: str = Field(pattern=r"^[a-z][a-z0-9_]*_$")
    resource_type: str
    metrics: tuple[Metric, ...]
    builtin_metrics: tuple[BuiltinMetric, ...] = ()
    alerts: tuple[Alert, ...]
    slos: tuple[Slo, ...]
    dashboard: Dashboard

    @model_validator(mode="after")
    def _consistent(self) -> MonitoringSpec:
        names = [m.name for m in self.metrics] + [m.name for m in self.builtin_metrics]
        if len(set(names)) != len(names):
            raise ValueError("metric names repeat")
        for kind, items in (("alert", [a.name for a in self.alerts]),
                            ("slo", [s.name for s in self.slos])):
            if len(set(items)) != len(items) or not all(NAME.fullmatch(n) for n in items):
                raise ValueError(f"{kind} names must be unique lower_snake_case")
        for alert in self.alerts:
            metric = self._metric(alert.metric, f"alert {alert.name}")
            self._check_query(metric, alert.condition.aggregate, alert.condition.group_by,
                              alert.condition.filter, f"alert {alert.name}")
            if isinstance(metric, BuiltinMetric) and alert.condition.aggregate == "each":
                raise ValueError(f"alert {alert.name}: aggregate each reads the code's log "
                                 f"lines; {metric.name} is a built-in metric")
            if alert.condition.aggregate in PERCENTILES:
                if alert.condition.setting is not None:
                    raise ValueError(f"alert {alert.name}: a percentile threshold must be a "
                                     "bucket bound, not a setting")
                assert isinstance(metric, Metric)
                self._on_bound(metric, alert.condition.threshold, f"alert {alert.name}")
        for slo in self.slos:
            metric = self._metric(slo.metric, f"slo {slo.name}")
            if isinstance(metric, BuiltinMetric):
                raise ValueError(f"slo {slo.name}: SLOs cut the code's own distributions")
            if not metric.has_values:
                raise ValueError(f"slo {slo.name}: {metric.name} is a counter; an SLO cuts a "
                                 "distribution")
            self._on_bound(metric, slo.good.threshold, f"slo {slo.name}")
        for widget in self.dashboard.widgets:
            for series in widget.series:
                metric = self._metric(series.metric, f"widget {widget.title!r}")
                self._check_query(metric, series.aggregate, series.group_by, series.filter,
                                  f"widget {widget.title!r}")
                if series.aggregate == "each":
                    raise ValueError(f"widget {widget.title!r}: charts aggregate (not each)")
        return self

    def _metric(self, name: str, where: str) -> Metric | BuiltinMetric:
        candidates: list[Metric | BuiltinMetric] = [*self.metrics, *self.builtin_metrics]
        for metric in candidates:
            if metric.name == name:
                return metric
        raise ValueError(f"{where}: no metric {name!r} in metrics or builtin_metrics")

    @staticmethod
    def _check_query(metric: Metric | BuiltinMetric, aggregate: str, group_by: tuple[str, ...],
                     filter_: dict[str, str], where: str) -> None:
        builtin = isinstance(metric, BuiltinMetric)
        if aggregate in VALUE_AGGREGATES and not metric.has_values:
            raise ValueError(f"{where}: {aggregate} of {metric.name}, a counter")
        if aggregate in VALUE_AGGREGATES and builtin:
            raise ValueError(f"{where}: {aggregate} of {metric.name}, not a distribution")
        if aggregate in COUNT_AGGREGATES and metric.has_values:
            raise ValueError(f"{where}: {aggregate} of {metric.name}, a {metric.kind}: "
                             "counters only")
        if aggregate in GAUGE_AGGREGATES and not (builtin and metric.kind == "gauge"):
            raise ValueError(f"{where}: {aggregate} is for built-in gauges only")
        labels = metric.all_labels if isinstance(metric, BuiltinMetric) else metric.labels
        unknown = (set(group_by) | set(filter_)) - set(labels)
        if unknown:
            raise ValueError(f"{where}: {metric.name} has no label {sorted(unknown)}")

    @staticmethod
    def _on_bound(metric: Metric, threshold: float, where: str) -> None:
        if threshold not in metric.buckets and threshold != 0:
            raise ValueError(f"{where}: threshold {threshold} of {metric.name} is not one of "
                             f"its bucket bounds {list(metric.buckets)}")

    # -- lookups -------------------------------------------------------------------
    def metric(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise ValueError(f"no metric {name!r} in metrics")

    def builtin(self, name: str) -> BuiltinMetric | None:
        return next((m for m in self.builtin_metrics if m.name == name), None)

    def with_settings(self, settings: Any) -> MonitoringSpec:
        """The same spec with every {setting: NAME} threshold replaced by that setting's
        value (`settings`: an aiprod.wiring.config.Settings, or a mapping of names to values)."""
        values: Mapping[str, Any] = settings if isinstance(settings, Mapping) else {
            name: getattr(settings, name) for name in THRESHOLD_SETTINGS}

        def resolved(value: Threshold | None) -> float | None:
            return float(values[value.setting]) if isinstance(value, SettingRef) else value

        alerts = tuple(alert.model_copy(update={"condition": alert.condition.model_copy(
            update={op: resolved(getattr(alert.condition, op))
                    for op in ("above", "below", "at_least")})}) for alert in self.alerts)
        return self.model_copy(update={"alerts": alerts})

    def alert(self, name: str) -> Alert:
        return next(a for a in self.alerts if a.name == name)

    def slo(self, name: str) -> Slo:
        return next(s for s in self.slos if s.name == name)

    def metric_type(self, name: str) -> str:
        """The Cloud Monitoring metric type (as Terraform names it): a log-based metric's,
        or a built-in metric's own."""
        builtin = self.builtin(name)
        return builtin.type if builtin else f"logging.googleapis.com/user/{self.prefix}{name}"

    def referenced_metrics(self) -> dict[str, set[str]]:
        """Metric name -> what names it (alerts, SLOs, dashboard widgets)."""
        used: dict[str, set[str]] = {}
        for alert in self.alerts:
            used.setdefault(alert.metric, set()).add(f"alert {alert.name}")
        for slo in self.slos:
            used.setdefault(slo.metric, set()).add(f"slo {slo.name}")
        for widget in self.dashboard.widgets:
            for series in widget.series:
                used.setdefault(series.metric, set()).add(f"widget {widget.title!r}")
        return used


def parse(text: str) -> MonitoringSpec:
    return MonitoringSpec.model_validate(yaml.safe_load(text))


@functools.cache
def load(path: Path = DEFAULT_MONITORING_PATH) -> MonitoringSpec:
    return parse(path.read_text())
