output "api_url" {
  description = "Base URL of the REST API (GET <api_url>/healthz answers without an API key)."
  value       = google_cloudfunctions2_function.fn["api"].service_config[0].uri
}

output "intake_topic" {
  description = "Topic other systems publish job requests to (the JSON body of POST /v1/jobs)."
  value       = google_pubsub_topic.topic[local.intake_topic].id
}

output "events_topic" {
  description = "Topic carrying every job state change; subscribe to it for outcomes."
  value       = google_pubsub_topic.topic[local.events_topic].id
}

output "topics" {
  description = "Every topic AIPROD owns, by name."
  value       = { for name, topic in google_pubsub_topic.topic : name => topic.id }
}

output "output_bucket" {
  description = "Bucket holding rendered videos (AIPROD_OUTPUT_URI is gs://<bucket>/outputs)."
  value       = google_storage_bucket.outputs.name
}

output "function_urls" {
  description = "Every function's URL (only the API is reachable from the internet)."
  value       = { for name, fn in google_cloudfunctions2_function.fn : name => fn.service_config[0].uri }
}

output "secrets" {
  description = "Secret Manager secrets to fill before the functions can call providers: secret ID => environment variable."
  value       = local.secrets
}
