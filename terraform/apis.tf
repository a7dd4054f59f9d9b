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
    # IAM Service Account Credentials API: the API function signs download URLs
    # with its own identity through projects.serviceAccounts.signBlob, which
    # lives in this API (the IAM API's own signBlob is deprecated):
    # https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/signBlob
    "iamcredentials.googleapis.com",
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
