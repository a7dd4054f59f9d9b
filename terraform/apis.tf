# Google APIs the deployment uses. Left enabled on destroy: other workloads in
# the project may use them too.

locals {
  services = toset([
    "aiplatform.googleapis.com",       # Veo on Vertex AI
    "artifactregistry.googleapis.com", # function images
    "cloudbuild.googleapis.com",       # function builds
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com", # runs the watchdog
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com", # 2nd gen functions run on Cloud Run
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])
}

resource "google_project_service" "api" {
  for_each = local.services

  project            = var.project_id
  service            = each.key
  disable_on_destroy = false
}
