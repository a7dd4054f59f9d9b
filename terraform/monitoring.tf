# Cloud Monitoring, built from ../monitoring.yaml through the locals of
# monitoring_spec.tf: one log-based metric per metric the code emits, one alert
# policy per alert, the custom service "aiprod" with one SLO per SLO, and the
# dashboard. Add or change any of them in monitoring.yaml, not here.
#
# The functions need no monitoring role: metric points are log lines on stdout
# (docs/observability.md), which Cloud Logging ingests for every function.

resource "google_logging_metric" "metric" {
  for_each = local.log_metrics

  project     = var.project_id
  name        = each.value.name
  description = each.value.description
  filter      = each.value.filter

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = each.value.value_type
    unit         = each.value.unit
    display_name = each.key

    dynamic "labels" {
      for_each = toset(each.value.labels)
      content {
        key        = labels.value
        value_type = "STRING"
      }
    }
  }

  label_extractors = each.value.label_extractors
  value_extractor  = each.value.value_extractor

  dynamic "bucket_options" {
    for_each = each.value.bucket_options
    content {
      explicit_buckets {
        bounds = bucket_options.value
      }
    }
  }

  depends_on = [google_project_service.api]
}

# A new log-based metric cannot be named by an alert policy or SLO at once: the
# API answers 404 "Cannot find metric(s) ... it could take up to 10 minutes to
# become available" (https://github.com/hashicorp/terraform-provider-google/issues/11102).
# So on the first apply, and whenever the set of metrics changes (the trigger),
# wait before creating what uses them. Later applies that change no metric do
# not wait.
resource "time_sleep" "log_metrics_ready" {
  create_duration = local.log_metrics_wait

  triggers = {
    metrics = join(",", sort([for m in google_logging_metric.metric : m.id]))
  }

  depends_on = [google_logging_metric.metric]
}

resource "google_monitoring_alert_policy" "alert" {
  for_each = local.alert_policies

  project               = var.project_id
  display_name          = each.value.display_name
  severity              = each.value.severity
  combiner              = "OR"
  enabled               = true
  notification_channels = var.notification_channels
  user_labels           = merge(var.labels, { component = "aiprod", alert = each.key })

  conditions {
    display_name = each.value.display_name

    dynamic "condition_threshold" {
      for_each = each.value.threshold
      content {
        filter          = condition_threshold.value.filter
        comparison      = condition_threshold.value.comparison
        threshold_value = condition_threshold.value.threshold_value
        duration        = "0s"

        aggregations {
          alignment_period     = condition_threshold.value.window
          per_series_aligner   = condition_threshold.value.aligner
          cross_series_reducer = condition_threshold.value.reducer
          group_by_fields      = condition_threshold.value.group_by
        }

        trigger {
          count = 1
        }
      }
    }

    dynamic "condition_matched_log" {
      for_each = each.value.matched_log
      content {
        filter = condition_matched_log.value.filter
      }
    }
  }

  alert_strategy {
    auto_close = "1800s"

    dynamic "notification_rate_limit" {
      for_each = each.value.rate_limits
      content {
        period = notification_rate_limit.value
      }
    }
  }

  documentation {
    subject   = each.value.display_name
    content   = each.value.documentation
    mime_type = "text/markdown"
  }

  depends_on = [time_sleep.log_metrics_ready]
}

resource "google_monitoring_custom_service" "aiprod" {
  project      = var.project_id
  service_id   = local.slo_service_id
  display_name = "AIPROD video jobs"
  user_labels  = merge(var.labels, { component = "aiprod" })

  depends_on = [google_project_service.api]
}

resource "google_monitoring_slo" "slo" {
  for_each = local.slos

  project             = var.project_id
  service             = google_monitoring_custom_service.aiprod.service_id
  slo_id              = each.value.slo_id
  display_name        = each.value.display_name
  goal                = each.value.goal
  rolling_period_days = each.value.rolling_period_days
  user_labels         = merge(var.labels, { component = "aiprod", slo = each.key })

  request_based_sli {
    distribution_cut {
      distribution_filter = each.value.distribution_filter
      range {
        min = each.value.range_min
        max = each.value.range_max
      }
    }
  }

  depends_on = [time_sleep.log_metrics_ready]
}

resource "google_monitoring_dashboard" "main" {
  project        = var.project_id
  dashboard_json = jsonencode(local.dashboard)

  depends_on = [time_sleep.log_metrics_ready]
}
