# Cloud Functions (2nd gen), one per entry of local.functions (topology.tf):
# api, intake, dead-letter, notifier and one render function per catalog backend. All are
# HTTP-triggered; only the API is reachable from the internet. The others accept
# internal traffic only (Pub/Sub push in the same project counts as internal)
# and only from their own push subscription's service account (iam.tf).

# The archive is named after its content, so a code change gives a new object
# and a redeploy, and an unchanged archive (make package is deterministic)
# redeploys nothing.
resource "google_storage_bucket_object" "source" {
  name         = "function-source-${filemd5(local.source_zip)}.zip"
  bucket       = google_storage_bucket.source.name
  source       = local.source_zip
  content_type = "application/zip"
}

resource "google_cloudfunctions2_function" "fn" {
  for_each = local.functions

  name        = each.key
  location    = var.region
  description = "AIPROD ${each.value.entry_point}${each.value.backend == null ? "" : " for backend ${each.value.backend}"}"
  labels      = { component = "aiprod", kind = replace(each.value.kind, "_", "-") }

  build_config {
    runtime         = var.python_runtime
    entry_point     = each.value.entry_point
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory                 = local.sizing[each.value.kind].memory
    available_cpu                    = local.sizing[each.value.kind].cpu
    timeout_seconds                  = local.sizing[each.value.kind].timeout_seconds
    min_instance_count               = local.sizing[each.value.kind].min_instances
    max_instance_count               = local.sizing[each.value.kind].max_instances
    max_instance_request_concurrency = local.sizing[each.value.kind].concurrency
    service_account_email            = google_service_account.runtime[each.key].email
    ingress_settings                 = each.value.kind == "api" ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true

    environment_variables = each.value.env

    # Keys and tokens come from Secret Manager, never from plain variables.
    dynamic "secret_environment_variables" {
      for_each = toset(each.value.secrets)
      content {
        key        = local.secrets[secret_environment_variables.value]
        project_id = var.project_id
        secret     = google_secret_manager_secret.secret[secret_environment_variables.value].secret_id
        version    = var.secret_version
      }
    }
  }

  depends_on = [
    google_project_service.api,
    google_firestore_database.main,
    google_pubsub_topic.topic,
    google_secret_manager_secret_iam_member.accessor,
    google_project_iam_member.build,
  ]
}
