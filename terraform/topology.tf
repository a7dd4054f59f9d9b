# What gets deployed, derived from the catalog (../backends.yaml) the same way
# the local stack derives it (shared/aiprod_dev/topology.py): one render topic,
# dead-letter topic, push subscription and render function per backend.
#
# This file holds locals only and refers to nothing but variables and files, so
# the offline tests evaluate it with Terraform itself (tests/infra) and compare
# the result with the code's own topology.

locals {
  catalog  = yamldecode(file("${path.module}/../backends.yaml"))
  backends = { for b in local.catalog.backends : b.name => b }

  # Sizing per function kind (memory, cpu, timeout, instances, concurrency) and
  # the retry policy of the subscriptions feeding it: ../functions.yaml, the one
  # source the local stack reads too (shared/aiprod_dev/topology.py), with the
  # operator's var.functions overrides on top. Why the numbers: functions.yaml.
  functions_spec = yamldecode(file("${path.module}/../functions.yaml"))
  sizing = {
    for kind, defaults in local.functions_spec.kinds : kind => merge(defaults, {
      for field, value in try(var.functions[kind], {}) : field => value if value != null
    })
  }

  intake_topic       = "video-jobs"
  events_topic       = "job-events"
  dead_letter_suffix = "-dead-letter"

  source_zip = coalesce(var.function_source_zip, "${path.module}/../dist/function-source.zip")

  output_bucket = "${var.project_id}-aiprod-outputs"
  source_bucket = "${var.project_id}-aiprod-source"

  # Secret Manager secrets: secret ID => environment variable it becomes.
  secrets = {
    runway-api-key      = "AIPROD_RUNWAY_API_KEY"
    replicate-api-token = "AIPROD_REPLICATE_API_TOKEN"
    webhook-signing-key = "AIPROD_WEBHOOK_SIGNING_KEY"
  }

  # What each provider's render function needs beyond the common settings.
  # Veo authenticates as the function's service account (roles/aiplatform.user),
  # so it has a location but no key.
  provider_env = {
    runway    = {}
    replicate = {}
    veo       = { AIPROD_VEO_LOCATION = var.vertex_location }
  }
  provider_secrets = {
    runway    = ["runway-api-key"]
    replicate = ["replicate-api-token"]
    veo       = []
  }

  # Settings every function reads (shared/aiprod/wiring/config.py). Variables the
  # functions leave at their code defaults are listed, with the reason, in
  # tests/infra/test_terraform.py (DEFAULTED).
  common_env = {
    GOOGLE_CLOUD_PROJECT         = var.project_id
    AIPROD_FIRESTORE_DATABASE    = var.firestore_database
    AIPROD_INTAKE_TOPIC          = local.intake_topic
    AIPROD_EVENTS_TOPIC          = local.events_topic
    AIPROD_OUTPUT_URI            = "gs://${local.output_bucket}/outputs"
    AIPROD_DAILY_BUDGET_USD      = tostring(var.daily_budget_usd)
    AIPROD_DAILY_BUDGET_WARN_USD = tostring(local.daily_budget_warn_usd)
    AIPROD_IMAGE_BUCKETS         = join(",", var.input_image_buckets)
    AIPROD_CACHE_TTL_S           = tostring(var.cache_ttl_days * 86400)
    AIPROD_CACHE_SCOPE           = var.cache_scope
    AIPROD_ROUTING_MIN_SAMPLES   = tostring(var.routing_min_samples)
    AIPROD_STATS_WINDOW_S        = tostring(var.stats_window_hours * 3600)
  }

  render_deadline_s = local.sizing.render.timeout_seconds - var.render_handoff_margin_seconds

  # Every function: entry point in functions/main.py, kind (its sizing and
  # service account role set), plain and secret environment, and the topic whose
  # push subscription feeds it (null for the HTTP API).
  fixed_functions = {
    api = {
      entry_point = "api"
      kind        = "api"
      backend     = null
      topic       = null
      env         = local.common_env
      secrets     = []
    }
    intake = {
      entry_point = "intake"
      kind        = "intake"
      backend     = null
      topic       = local.intake_topic
      env         = local.common_env
      secrets     = []
    }
    dead-letter = {
      entry_point = "dead_letter"
      kind        = "dead_letter"
      backend     = null
      topic       = null # fed by one subscription per dead-letter topic
      env         = local.common_env
      secrets     = []
    }
    # Signed webhooks on each terminal job event; a failed delivery raises, so
    # its push subscription on job-events retries with backoff, then dead-letters.
    notifier = {
      entry_point = "notifier"
      kind        = "notifier"
      backend     = null
      topic       = local.events_topic
      env         = local.common_env
      secrets     = ["webhook-signing-key"]
    }
    # Re-drives jobs that stopped moving (lost messages, dead processes), called
    # by Cloud Scheduler (watchdog.tf) every watchdog_interval_seconds.
    watchdog = {
      entry_point = "watchdog"
      kind        = "watchdog"
      backend     = null
      topic       = null # HTTP, on a schedule
      env = merge(local.common_env, {
        AIPROD_WATCHDOG_INTERVAL_S = tostring(var.watchdog_interval_seconds)
        AIPROD_WATCHDOG_STALE_S    = tostring(var.watchdog_stale_seconds)
      })
      secrets = []
    }
  }
  render_functions = {
    for name, b in local.backends : "render-${name}" => {
      entry_point = "render"
      kind        = "render"
      backend     = name
      topic       = "render-${name}"
      env = merge(local.common_env, local.provider_env[b.provider], {
        BACKEND                  = name
        AIPROD_RENDER_DEADLINE_S = tostring(local.render_deadline_s)
      })
      secrets = local.provider_secrets[b.provider]
    }
  }
  # THREADS: functions-framework's gunicorn serves one request per thread (4 per
  # core by default); Python needs as many threads as the concurrency
  # (https://cloud.google.com/functions/docs/configuring/concurrency).
  functions = {
    for name, f in merge(local.fixed_functions, local.render_functions) : name => merge(f, {
      env = merge(f.env, { THREADS = tostring(local.sizing[f.kind].concurrency) })
    })
  }

  # Pub/Sub: work topics feed one function each through a push subscription
  # with a dead-letter topic; every dead-letter topic feeds the dead-letter
  # function. Subscription name => what it does.
  work_subscriptions = {
    for name, f in local.functions : name => {
      topic             = f.topic
      function          = name
      dead_letter_topic = "${f.topic}${local.dead_letter_suffix}"
    } if f.topic != null
  }
  dead_letter_subscriptions = {
    for name, s in local.work_subscriptions : s.dead_letter_topic => {
      topic             = s.dead_letter_topic
      function          = "dead-letter"
      dead_letter_topic = null
    }
  }
  push_subscriptions = merge(local.work_subscriptions, local.dead_letter_subscriptions)

  topics = toset(concat(
    [for s in values(local.work_subscriptions) : s.topic],
    [for s in values(local.work_subscriptions) : s.dead_letter_topic],
    [local.events_topic],
  ))

  # A push request is answered when the function returns, so the subscription's
  # ack deadline (which is also the push request timeout) must outlast the
  # function's timeout, or Pub/Sub redelivers work that is still running.
  ack_deadline_seconds = {
    for name, s in local.push_subscriptions :
    name => min(600, local.sizing[local.functions[s.function].kind].timeout_seconds + 30)
  }

  # Retry policy and delivery attempts per subscription, from functions.yaml
  # `delivery` (by the kind of function it feeds). Pub/Sub backs off
  # exponentially between the two bounds (each at most 600 s) and dead-letters
  # after max_delivery_attempts (5..100):
  # https://cloud.google.com/pubsub/docs/handling-failures
  # Capacity is never a reason to fail a job: when every render instance is
  # busy Cloud Run answers the push 429 and Pub/Sub retries. A render message
  # keeps trying for a configured window of (100 - 1) x 60 s = 99 min (best
  # effort: Pub/Sub's delay "can be more or less than configured backoff",
  # https://cloud.google.com/java/docs/reference/google-cloud-pubsub/latest/com.google.pubsub.v1.RetryPolicy),
  # eleven render timeouts
  # (540 s), while renders in flight finish and free their slots; one that
  # still dead-letters is put back on its render topic by the dead-letter
  # function when no render holds its attempt, while the job is younger than
  # AIPROD_REDRIVE_MAX_AGE_S (domain/deadletter.py). A webhook
  # receiver may be down 99 x 60 s = 99 min as configured (tests/infra pin both).
  delivery = {
    for name, s in local.push_subscriptions :
    name => local.functions_spec.delivery[local.functions[s.function].kind]
  }

  # Least privilege: what each function may do; iam.tf grants exactly this.
  render_topics = [for f in values(local.render_functions) : f.topic]
  publishes = {
    # admission dispatches to the first backend of the plan and emits job events;
    # a cancel asks the job's backend (its render function holds the provider's
    # credentials, the API does not) to stop the task, on that backend's topic
    api    = concat(local.render_topics, [local.events_topic])
    intake = concat(local.render_topics, [local.events_topic])
    # fallback to the next backend, continuation to its own topic, job events
    render = concat(local.render_topics, [local.events_topic])
    # marks jobs FAILED and says so on job-events; a running task is stopped by its
    # backend's render function, asked on that backend's topic
    dead_letter = concat(local.render_topics, [local.events_topic])
    # only calls receivers' URLs
    notifier = []
    # resumes an attempt or dispatches on render topics; announces jobs it ends
    watchdog = concat(local.render_topics, [local.events_topic])
  }
  publisher_grants = merge([
    for name, f in local.functions : {
      for topic in local.publishes[f.kind] : "${name}/${topic}" => { function = name, topic = topic }
    }
  ]...)
  secret_grants = merge([
    for name, f in local.functions : {
      for secret in f.secrets : "${name}/${secret}" => { function = name, secret = secret }
    }
  ]...)
  # Output bucket: render functions write (and overwrite, for idempotent
  # retries) outputs and read staged input images; the API reads outputs to sign
  # download URLs. The api and intake functions stage uploaded images
  # (jobs/<id>/input/<sha256>) create-only (ifGenerationMatch=0: a content-addressed
  # object already there is kept), so objectCreator is enough: no read, no overwrite.
  output_bucket_roles = merge(
    { for name, f in local.render_functions : "${name}/roles/storage.objectUser" => { function = name, role = "roles/storage.objectUser" } },
    {
      "api/roles/storage.objectViewer"     = { function = "api", role = "roles/storage.objectViewer" }
      "api/roles/storage.objectCreator"    = { function = "api", role = "roles/storage.objectCreator" }
      "intake/roles/storage.objectCreator" = { function = "intake", role = "roles/storage.objectCreator" }
    },
  )
  # Functions that sign URLs with their own identity (IAM signBlob): the API for
  # downloads, and the render functions of providers that fetch a staged upload too
  # large to send inline by a signed URL (Runway, Replicate).
  signs_urls = concat(["api"], [
    for name, f in local.render_functions : name
    if contains(["runway", "replicate"], local.backends[f.backend].provider)
  ])
  # Veo is called on Vertex AI as the function's own service account.
  vertex_users = [for name, f in local.render_functions : name if local.backends[f.backend].provider == "veo"]

  # Service account IDs must be 6-30 characters: long names are shortened with
  # a hash so that two backends never share an account.
  runtime_account_names = { for name, f in local.functions : name => "fn-${name}" }
  invoker_account_names = {
    for name, f in local.functions : name => "push-${name}" if !contains(["api", "watchdog"], f.kind)
  }
  # Cloud Scheduler's OIDC identity for the watchdog: it may invoke that function only.
  watchdog_scheduler_account = "aiprod-watchdog-scheduler"
  # Every watchdog_interval_seconds (a whole number of minutes that divides an hour).
  watchdog_schedule = var.watchdog_interval_seconds == 3600 ? "0 * * * *" : "*/${floor(var.watchdog_interval_seconds / 60)} * * * *"
  account_ids = {
    for key, id in merge(
      { for k, v in local.runtime_account_names : "runtime/${k}" => v },
      { for k, v in local.invoker_account_names : "invoker/${k}" => v },
    ) : key => length(id) <= 30 ? id : "${substr(id, 0, 21)}-${substr(sha1(id), 0, 8)}"
  }
}
