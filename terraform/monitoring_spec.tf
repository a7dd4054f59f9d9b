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
# "metric_labels": {...}} (shared/aiprod/observability/metrics.py); each metric is a
# log-based metric logging.googleapis.com/user/<prefix><name>.

locals {
  monitoring      = yamldecode(file("${path.module}/../monitoring.yaml"))
  metric_prefix   = local.monitoring.prefix
  metric_resource = local.monitoring.resource_type
  metric_logger   = "aiprod.metrics"

  # How long monitoring.tf waits after creating log-based metrics before it
  # creates the alert policies, SLOs and dashboard that name them ("up to 10
  # minutes", terraform-provider-google#11102).
  log_metrics_wait = "600s"

  metrics = { for m in local.monitoring.metrics : m.name => m }
  # Metrics Google Cloud writes itself (Pub/Sub, Cloud Run), named by type.
  builtin_metrics = { for m in try(local.monitoring.builtin_metrics, []) : m.name => m }
  metric_types = merge(
    { for name, m in local.metrics : name => "logging.googleapis.com/user/${local.metric_prefix}${name}" },
    { for name, m in local.builtin_metrics : name => m.type },
  )
  # The log lines of one metric (the log-based metric's filter).
  metric_lines = {
    for name, m in local.metrics : name => "resource.type=\"${local.metric_resource}\" AND jsonPayload.logger=\"${local.metric_logger}\" AND jsonPayload.metric=\"${name}\""
  }
  # The time series of one metric (alert, SLO and chart filters).
  metric_series = merge(
    { for name, m in local.metrics : name => "metric.type=\"${local.metric_types[name]}\" AND resource.type=\"${local.metric_resource}\"" },
    { for name, m in local.builtin_metrics : name => "metric.type=\"${m.type}\" AND resource.type=\"${m.resource_type}\"" },
  )
  # Where each label of a metric is read in a time series filter or group-by.
  label_paths = merge(
    { for name, m in local.metrics : name => { for label in m.labels : label => "metric.label.${label}" } },
    { for name, m in local.builtin_metrics : name => merge(
      { for label in try(m.labels, []) : label => "metric.label.${label}" },
      { for label in try(m.resource_labels, []) : label => "resource.label.${label}" },
    ) },
  )

  # Thresholds monitoring.yaml writes {setting: NAME}: the same variables that set
  # the functions' AIPROD_DAILY_BUDGET_USD / AIPROD_DAILY_BUDGET_WARN_USD
  # (topology.tf), so alerts fire where the functions refuse.
  monitoring_settings = {
    daily_budget_usd      = var.daily_budget_usd
    daily_budget_warn_usd = local.daily_budget_warn_usd
  }

  # The warning threshold: the operator's, or 90% of the budget it warns about.
  daily_budget_warn_usd = coalesce(var.daily_budget_warn_usd, var.daily_budget_usd * 0.9)

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
    # Built-in GAUGE metrics (not log-based): the highest value in the window.
    max = { aligner = "ALIGN_MAX", reducer = "REDUCE_MAX" }
  }
  # For a condition on each point (a log-match alert): the logging query's operator.
  point_operators = { at_least = ">=", above = ">", below = "<" }

  # Each alert's comparison (above, below or at_least) and its threshold, a number
  # or a setting's value.
  alert_comparisons = {
    for a in local.monitoring.alerts : a.name => [for op in ["above", "below", "at_least"] : op if lookup(a.condition, op, null) != null][0]
  }
  alert_thresholds = {
    for a in local.monitoring.alerts : a.name => try(
      local.monitoring_settings[a.condition[local.alert_comparisons[a.name]].setting],
      a.condition[local.alert_comparisons[a.name]],
    )
  }

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
          ["jsonPayload.value${local.point_operators[local.alert_comparisons[a.name]]}${local.alert_thresholds[a.name]}"],
          [for k, v in try(a.condition.filter, {}) : "jsonPayload.metric_labels.${k}=\"${v}\""],
        ))
      }]
      # Anything else -> a threshold on the log-based metric's time series.
      threshold = a.condition.aggregate == "each" ? [] : [{
        filter          = join("", concat([local.metric_series[a.metric]], [for k, v in try(a.condition.filter, {}) : " AND ${local.label_paths[a.metric][k]}=\"${v}\""]))
        comparison      = local.alert_comparisons[a.name] == "above" ? "COMPARISON_GT" : "COMPARISON_LT"
        threshold_value = local.alert_thresholds[a.name]
        window          = "${try(a.condition.window_s, 3600)}s"
        aligner         = local.aggregations[a.condition.aggregate].aligner
        reducer         = local.aggregations[a.condition.aggregate].reducer
        group_by        = [for label in try(a.condition.group_by, []) : local.label_paths[a.metric][label]]
      }]
    }
  }

  # The SLOs: request-based distribution cuts on the custom service "aiprod".
  slo_service_id = "aiprod"
  # The largest double, written as a string: checkov's HCL parser does not
  # read exponent literals.
  range_unbounded_min = -tonumber("1.7976931348623157e308")
  range_unbounded_max = tonumber("1.7976931348623157e308")
  slos = {
    for s in local.monitoring.slos : s.name => {
      slo_id              = replace(s.name, "_", "-")
      display_name        = s.display_name
      metric              = s.metric
      goal                = s.goal
      rolling_period_days = s.rolling_days
      distribution_filter = local.metric_series[s.metric]
      # good: {below: X} is [-inf, X); good: {at_least: X} is [X, +inf).
      # Both ends are always explicit: the provider sends 0 for an unset end,
      # and the API refuses a range [0.6, 0] ("the minimum of the range ...
      # must be less than its maximum"). The largest double stands for
      # infinity, the documented workaround of
      # https://github.com/hashicorp/terraform-provider-google/issues/9453
      range_min = lookup(s.good, "at_least", local.range_unbounded_min)
      range_max = lookup(s.good, "below", local.range_unbounded_max)
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
