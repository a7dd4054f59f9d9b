# Identities and least privilege (what each function may do is listed in
# topology.tf, under "Least privilege"):
# - each function runs as its own service account (fn-<function>), with only
#   the roles its code needs, scoped to the topic, secret or bucket it uses;
# - each push subscription authenticates with an OIDC token of its own
#   service account (push-<function>), which may invoke that one function;
# - the Pub/Sub service agent may publish to the dead-letter topics and
#   acknowledge on the subscriptions that dead-letter, which is what moving a
#   message to a dead-letter topic takes;
# - functions are built by a dedicated build service account.

# The Pub/Sub service agent (service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com)
# is created lazily by Google, so in a fresh project it may not exist yet when
# the dead-letter bindings below name it, and IAM refuses a binding to an
# account that does not exist. Creating it explicitly (google-beta only) makes
# it exist first; its `member` gives every binding an implicit dependency on it.
# https://registry.terraform.io/providers/hashicorp/google-beta/latest/docs/resources/project_service_identity
resource "google_project_service_identity" "pubsub" {
  provider = google-beta

  project = var.project_id
  service = "pubsub.googleapis.com"

  depends_on = [google_project_service.api["pubsub.googleapis.com"]]
}

locals {
  pubsub_service_agent = google_project_service_identity.pubsub.member
}

# --- Runtime identities ---------------------------------------------------------

resource "google_service_account" "runtime" {
  for_each = local.functions

  account_id   = local.account_ids["runtime/${each.key}"]
  display_name = "AIPROD function ${each.key}"
  description  = "Runtime identity of the ${each.key} Cloud Function."

  # IAM is off in a new project; google_project_service.api enables it (apis.tf).
  depends_on = [google_project_service.api["iam.googleapis.com"]]
}

# Firestore: jobs, budget ledger, backend health, idempotency and API keys.
resource "google_project_iam_member" "firestore_user" {
  for_each = local.functions

  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.runtime[each.key].member
}

resource "google_pubsub_topic_iam_member" "publisher" {
  for_each = local.publisher_grants

  topic  = google_pubsub_topic.topic[each.value.topic].id
  role   = "roles/pubsub.publisher"
  member = google_service_account.runtime[each.value.function].member
}

resource "google_secret_manager_secret_iam_member" "accessor" {
  for_each = local.secret_grants

  secret_id = google_secret_manager_secret.secret[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.runtime[each.value.function].member
}

resource "google_storage_bucket_iam_member" "outputs" {
  for_each = local.output_bucket_roles

  bucket = google_storage_bucket.outputs.name
  role   = each.value.role
  member = google_service_account.runtime[each.value.function].member
}

# Veo reads a staged input image from its gs:// URI (the `gcsUri` of the request's
# image) as the project's Vertex AI service agent, not as the calling function:
# https://cloud.google.com/vertex-ai/docs/general/access-control#service-agents
# Create that agent explicitly (it may not exist yet in a fresh project) and let
# it read the output bucket, where inputs are staged under jobs/<id>/input/.
resource "google_project_service_identity" "vertex" {
  provider = google-beta

  project = var.project_id
  service = "aiplatform.googleapis.com"

  depends_on = [google_project_service.api["aiplatform.googleapis.com"]]
}

resource "google_storage_bucket_iam_member" "vertex_reads_staged_inputs" {
  bucket = google_storage_bucket.outputs.name
  role   = "roles/storage.objectViewer"
  member = google_project_service_identity.vertex.member
}

# V4 signed download URLs from a function's own identity go through IAM
# signBlob on its own service account, and on nothing else.
resource "google_service_account_iam_member" "self_signer" {
  for_each = toset(local.signs_urls)

  service_account_id = google_service_account.runtime[each.key].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = google_service_account.runtime[each.key].member
}

# Veo on Vertex AI, with the function's own credentials (no API key).
resource "google_project_iam_member" "vertex_user" {
  for_each = toset(local.vertex_users)

  project = var.project_id
  role    = "roles/aiplatform.user"
  member  = google_service_account.runtime[each.key].member
}

# --- Push subscriptions' identities ---------------------------------------------

resource "google_service_account" "invoker" {
  for_each = local.invoker_account_names

  account_id   = local.account_ids["invoker/${each.key}"]
  display_name = "AIPROD push to ${each.key}"
  description  = "OIDC identity of the Pub/Sub push subscriptions that feed the ${each.key} function; may invoke that function only."

  # IAM is off in a new project; google_project_service.api enables it (apis.tf).
  depends_on = [google_project_service.api["iam.googleapis.com"]]
}

resource "google_cloud_run_v2_service_iam_member" "push_invoker" {
  for_each = local.invoker_account_names

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.fn[each.key].service_config[0].service
  role     = "roles/run.invoker"
  member   = google_service_account.invoker[each.key].member
}

# Pub/Sub mints the OIDC tokens as the push service account. Projects that
# enabled Pub/Sub before 2021-04-08 need this grant; later ones have it built
# in. It is scoped to the push accounts, not the project.
resource "google_service_account_iam_member" "pubsub_agent_token_creator" {
  for_each = local.invoker_account_names

  service_account_id = google_service_account.invoker[each.key].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent

  depends_on = [google_project_service_identity.pubsub]
}

# The API authenticates callers with AIPROD API keys, so Cloud Run lets anyone
# reach it (set api_public = false to require roles/run.invoker instead).
resource "google_cloud_run_v2_service_iam_member" "api_public" {
  count = var.api_public ? 1 : 0

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.fn["api"].service_config[0].service
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# --- Dead-lettering ---------------------------------------------------------------

resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.work_subscriptions

  topic  = google_pubsub_topic.topic[each.value.dead_letter_topic].id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent

  depends_on = [google_project_service_identity.pubsub]
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = local.work_subscriptions

  subscription = google_pubsub_subscription.push[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent

  depends_on = [google_project_service_identity.pubsub]
}

# --- Builds -------------------------------------------------------------------------

resource "google_service_account" "build" {
  account_id   = "aiprod-build"
  display_name = "AIPROD function builds"
  description  = "Builds the Cloud Functions' container images from the source archive."

  # IAM is off in a new project; google_project_service.api enables it (apis.tf).
  depends_on = [google_project_service.api["iam.googleapis.com"]]
}

# Cloud Run Builder: what building a function from source needs (read the
# source archive, write the image, write build logs), and no more.
resource "google_project_iam_member" "build" {
  project = var.project_id
  role    = "roles/run.builder"
  member  = google_service_account.build.member
}
