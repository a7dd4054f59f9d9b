# Topics and the push subscriptions that feed the functions ("direct Pub/Sub
# triggers"): Terraform owns every subscription, so the dead-letter policy,
# retry policy and ack deadline are set here rather than left to an
# Eventarc-managed subscription that cannot carry them. See README.md.
#
# The intake topic carries no Pub/Sub schema: Pub/Sub schemas are Avro or
# Protocol Buffers, and neither can state the job request faithfully (see
# README.md, "No schema on the intake topic"); the intake function validates
# every message and answers bad ones on job-events.

resource "google_pubsub_topic" "topic" {
  #checkov:skip=CKV_GCP_83:Messages are job requests and job events (no keys or credentials); Google-managed encryption at rest applies. Set kms_key_name when a policy requires CMEK.
  for_each = local.topics

  name   = each.key
  labels = { component = "aiprod" }

  depends_on = [google_project_service.api["pubsub.googleapis.com"]]
}

resource "google_pubsub_subscription" "push" {
  for_each = local.push_subscriptions

  name  = each.key
  topic = google_pubsub_topic.topic[each.value.topic].id

  # The push request times out with the ack deadline: it must outlast the
  # function's timeout (topology.tf).
  ack_deadline_seconds       = local.ack_deadline_seconds[each.key]
  message_retention_duration = "604800s"

  push_config {
    # The path names the topic, so the CloudEvent that functions-framework
    # builds from the raw push body has the topic as its source.
    push_endpoint = "${google_cloudfunctions2_function.fn[each.value.function].service_config[0].uri}/projects/${var.project_id}/topics/${each.value.topic}"

    oidc_token {
      service_account_email = google_service_account.invoker[each.value.function].email
      audience              = google_cloudfunctions2_function.fn[each.value.function].service_config[0].uri
    }
  }

  # Work subscriptions hand a message to the dead-letter topic after
  # max_delivery_attempts; subscriptions on dead-letter topics have none.
  dynamic "dead_letter_policy" {
    for_each = each.value.dead_letter_topic == null ? [] : [each.value.dead_letter_topic]
    content {
      dead_letter_topic     = google_pubsub_topic.topic[dead_letter_policy.value].id
      max_delivery_attempts = local.delivery[each.key].max_delivery_attempts
    }
  }

  # Sized against the function's work (topology.tf, functions.yaml).
  retry_policy {
    minimum_backoff = "${local.delivery[each.key].minimum_backoff_s}s"
    maximum_backoff = "${local.delivery[each.key].maximum_backoff_s}s"
  }

  # Never delete an idle subscription (the default expires it after 31 days).
  expiration_policy {
    ttl = ""
  }

  labels = { component = "aiprod" }

  depends_on = [
    google_cloud_run_v2_service_iam_member.push_invoker,
    google_service_account_iam_member.pubsub_agent_token_creator,
  ]
}
