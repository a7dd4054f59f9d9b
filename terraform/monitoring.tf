# Cloud Monitoring: alert policies, SLOs and the dashboard are built from
# ../monitoring.yaml (metrics the code emits, alerts, SLOs, widgets).
#
# The observability issue fills this file in: log-based metrics or metric
# descriptors for every metric in local.monitoring.metrics, one
# google_monitoring_alert_policy per alert, a google_monitoring_custom_service
# with one google_monitoring_slo per SLO, and a google_monitoring_dashboard.
# Functions that write custom metrics will then also need
# roles/monitoring.metricWriter (iam.tf).

locals {
  monitoring_file = "${path.module}/../monitoring.yaml"
  # Until monitoring.yaml exists, an empty one; a malformed one still fails.
  monitoring = yamldecode(
    fileexists(local.monitoring_file) ? file(local.monitoring_file) : "{metrics: [], alerts: [], slos: []}"
  )
}
