# The watchdog's schedule: Cloud Scheduler calls the watchdog function (an
# internal-only HTTP function, topology.tf) every watchdog_interval_seconds with
# an OIDC token of its own service account, which may invoke that one function.
# Cloud Scheduler in the same project counts as internal traffic for the
# function's ingress setting (https://cloud.google.com/run/docs/securing/ingress).
# Whoever applies this needs iam.serviceAccounts.actAs on that account
# (roles/iam.serviceAccountUser) to attach it to the job.

resource "google_service_account" "scheduler" {
  account_id   = local.watchdog_scheduler_account
  display_name = "AIPROD watchdog schedule"
  description  = "OIDC identity Cloud Scheduler calls the watchdog function with; may invoke that function only."

  # IAM is off in a new project; google_project_service.api enables it (apis.tf).
  depends_on = [google_project_service.api["iam.googleapis.com"]]
}

resource "google_cloud_run_v2_service_iam_member" "scheduler_invoker" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.fn["watchdog"].service_config[0].service
  role     = "roles/run.invoker"
  member   = google_service_account.scheduler.member
}

resource "google_cloud_scheduler_job" "watchdog" {
  name        = "aiprod-watchdog"
  region      = var.region
  description = "Re-drives AIPROD jobs that stopped moving (README.md, \"No job stuck\")."
  schedule    = local.watchdog_schedule
  time_zone   = "Etc/UTC"
  # The run's own time budget is one interval; let it finish.
  attempt_deadline = "${local.sizing.watchdog.timeout_seconds}s"

  # A failed run is not retried: the next one, an interval later, does the same work.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.fn["watchdog"].service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.fn["watchdog"].service_config[0].uri
    }
  }

  depends_on = [
    google_project_service.api["cloudscheduler.googleapis.com"],
    google_cloud_run_v2_service_iam_member.scheduler_invoker,
  ]
}
