# Secret Manager secrets for the providers' keys and the webhook signing key.
#
# Terraform creates the secrets and grants each function access to the ones it
# uses (iam.tf); the values are added out of band so they never enter the
# Terraform state or a tfvars file:
#
#   printf '%s' "$RUNWAY_KEY" | gcloud secrets versions add runway-api-key --data-file=-
#
# The functions read them as secret environment variables (functions.tf).

resource "google_secret_manager_secret" "secret" {
  for_each = local.secrets

  secret_id = each.key
  labels    = { component = "aiprod" }

  annotations = {
    environment-variable = each.value
  }

  replication {
    auto {}
  }

  depends_on = [google_project_service.api["secretmanager.googleapis.com"]]
}
