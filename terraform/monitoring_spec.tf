# What Cloud Monitoring gets, derived from ../monitoring.yaml (the one source
# of truth: metrics the code emits, alerts, SLOs, dashboard). monitoring.tf
# turns these values into resources; nothing here is copied from the file.
#
# This file holds locals only and refers to nothing but variables and files, so
# the offline tests evaluate it with Terraform itself (tests/infra) and check
# every filter, condition and chart against what the code emits.
#
# Mechanism (docs/observability.md): the code writes one JSON log line per
# metric point, {"logger": "aiprod.metrics", "metric": NAME, "value": V,
# "metric_labels": {...}} (shared/aiprod/metrics.py); each metric is a
# log-based metric logging.googleapis.com/user/<prefix><name>.

locals {
  monitoring      = yamldecode(file("${path.module}/../monitoring.yaml"))
  metric_prefix   = local.monitoring.prefix
  metric_resource = local.monitoring.resource_type
  metric_logger   = "aiprod.metrics"

  metrics      = { for m in local.monitoring.metrics : m.name => m }
  metric_types = { for name, m in local.metrics : name => "logging.googleapis.com/user/${local.metric_prefix}${name}" }
  # The log lines of one metric (the log-based metric's filter).
  metric_lines = {
    for name, m in local.metrics : name => "resource.type=\"${local.metric_resource}\" AND jsonPayload.logger=\"${local.metric_logger}\" AND jsonPayload.metric=\"${name}\""
  }
  # The time series of one metric (alert, SLO and chart filters).
  metric_series = {
    for name, m in local.metrics : name => "metric.type=\"${local.metric_types[name]}\" AND resource.type=\"${local.metric_resource}\""
  }

  # One log-based metric per metric: counters count lines, distributions and
  # gauges take the line's value into explicit buckets.
  log_metrics = {
    for name, m in local.metrics : name => {
      name             = "${local.metric_prefix}${name}"
      description      = trimspace(m.description)
      filter           = local.metric_lines[name]
      value_type       = m.kind == "counter" ? "INT64" : "DISTRIBUTION"
      unit             = m.unit
      labels           = m.labels
      label_extractors = { for label in m.labels : label => "EXTRACT(jsonPayload.metric_labels.${label})" }
      value_extractor  = m.kind == "counter" ? null : "EXTRACT(jsonPayload.value)"
      # Zero or one set of bucket bounds (the dynamic bucket_options block).
      bucket_options = m.kind == "counter" ? [] : [m.buckets]
    }
  }

  # monitoring.yaml's aggregates in Cloud Monitoring's terms. Log-based metrics
  # are DELTA: ALIGN_DELTA keeps a window's distribution (or count) whole, and
  # the cross-series reducer merges every function's series.
  aggregations = {
    p50  = { aligner = "ALIGN_DELTA", reducer = "REDUCE_PERCENTILE_50" }
    p95  = { aligner = "ALIGN_DELTA", reducer = "REDUCE_PERCENTILE_95" }
    p99  = { aligner = "ALIGN_DELTA", reducer = "REDUCE_PERCENTILE_99" }
    mean = { aligner = "ALIGN_DELTA", reducer = "REDUCE_MEAN" }
    sum  = { aligner = "ALIGN_DELTA", reducer = "REDUCE_SUM" }
    rate = { aligner = "ALIGN_RATE", reducer = "REDUCE_SUM" }
  }
  # For a condition on each point (a log-match alert): the logging query's operator.
  point_operators = { at_least = ">=", above = ">", below = "<" }

  alert_policies = {
    for a in local.monitoring.alerts : a.name => {
      display_name  = a.display_name
      severity      = a.severity
      metric        = a.metric
      documentation = "${trimspace(a.documentation)}\n\n_Defined in monitoring.yaml (alert `${a.name}`, metric `${a.metric}`: ${local.metric_types[a.metric]})._"
      # A log-match condition fires on every matching line: notify at most this often.
      rate_limits = a.condition.aggregate != "each" ? [] : ["${try(a.notify_at_most_every_s, 3600)}s"]
      # aggregate: each -> a log-match condition on the metric's lines.
      matched_log = a.condition.aggregate != "each" ? [] : [{
        filter = join(" AND ", concat(
          [local.metric_lines[a.metric]],
          [for op, sign in local.point_operators : "jsonPayload.value${sign}${lookup(a.condition, op, 0)}" if lookup(a.condition, op, null) != null],
          [for k, v in try(a.condition.filter, {}) : "jsonPayload.metric_labels.${k}=\"${v}\""],
        ))
      }]
      # Anything else -> a threshold on the log-based metric's time series.
      threshold = a.condition.aggregate == "each" ? [] : [{
        filter          = join("", concat([local.metric_series[a.metric]], [for k, v in try(a.condition.filter, {}) : " AND metric.label.${k}=\"${v}\""]))
        comparison      = lookup(a.condition, "above", null) != null ? "COMPARISON_GT" : "COMPARISON_LT"
        threshold_value = lookup(a.condition, "above", null) != null ? a.condition.above : a.condition.below
        window          = "${try(a.condition.window_s, 3600)}s"
        aligner         = local.aggregations[a.condition.aggregate].aligner
        reducer         = local.aggregations[a.condition.aggregate].reducer
        group_by        = [for label in try(a.condition.group_by, []) : "metric.label.${label}"]
      }]
    }
  }

  # The SLOs: request-based distribution cuts on the custom service "aiprod".
  slo_service_id = "aiprod"
  slos = {
    for s in local.monitoring.slos : s.name => {
      slo_id              = replace(s.name, "_", "-")
      display_name        = s.display_name
      metric              = s.metric
      goal                = s.goal
      rolling_period_days = s.rolling_days
      distribution_filter = local.metric_series[s.metric]
      # good: {below: X} is [-inf, X); good: {at_least: X} is [X, +inf).
      range_min = lookup(s.good, "at_least", null)
      range_max = lookup(s.good, "below", null)
    }
  }

  # The dashboard: one chart per widget, one data set per series.
  dashboard = {
    displayName = local.monitoring.dashboard.display_name
    gridLayout = {
      columns = try(local.monitoring.dashboard.columns, 2)
      widgets = [
        for w in local.monitoring.dashboard.widgets : {
          title = w.title
          xyChart = {
            chartOptions = { mode = "COLOR" }
            yAxis        = { label = try(w.unit, ""), scale = "LINEAR" }
            dataSets = [
              for s in w.series : {
                plotType       = try(w.plot, "line") == "stacked_bars" ? "STACKED_BAR" : "LINE"
                legendTemplate = join(" ", concat(["${s.metric} ${s.aggregate}"], [for label in try(s.group_by, []) : "$${metric.labels.${label}}"]))
                timeSeriesQuery = {
                  timeSeriesFilter = {
                    filter = join("", concat([local.metric_series[s.metric]], [for k, v in try(s.filter, {}) : " AND metric.label.${k}=\"${v}\""]))
                    aggregation = {
                      alignmentPeriod    = "${try(local.monitoring.dashboard.window_s, 300)}s"
                      perSeriesAligner   = local.aggregations[s.aggregate].aligner
                      crossSeriesReducer = local.aggregations[s.aggregate].reducer
                      groupByFields      = [for label in try(s.group_by, []) : "metric.label.${label}"]
                    }
                  }
                }
              }
            ]
          }
        }
      ]
    }
  }
}
