# Inputs. Only project_id has no default; see README.md for a terraform.tfvars example.

variable "project_id" {
  description = "Google Cloud project that hosts AIPROD."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 characters: lowercase letters, digits and hyphens, starting with a letter)."
  }
}

variable "region" {
  description = "Region for the functions, topics' push endpoints and buckets."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1 or europe-west4."
  }
}

variable "firestore_location" {
  description = "Location of the Firestore database: a multi-region (nam5, eur3) or a region. Cannot be changed after creation."
  type        = string
  default     = "nam5"

  validation {
    condition     = can(regex("^(nam5|eur3|[a-z]+-[a-z]+[0-9]+)$", var.firestore_location))
    error_message = "firestore_location must be nam5, eur3 or a region such as us-central1."
  }
}

variable "firestore_database" {
  description = "Firestore database ID; the functions get it as AIPROD_FIRESTORE_DATABASE."
  type        = string
  default     = "(default)"

  validation {
    condition     = var.firestore_database == "(default)" || can(regex("^[a-z][a-z0-9-]{2,61}[a-z0-9]$", var.firestore_database))
    error_message = "firestore_database must be \"(default)\" or 4-63 characters of lowercase letters, digits and hyphens."
  }
}

variable "vertex_location" {
  description = "Vertex AI location the Veo render functions call (AIPROD_VEO_LOCATION)."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.vertex_location))
    error_message = "vertex_location must be a Vertex AI region such as us-central1."
  }
}

variable "function_source_zip" {
  description = "Path of the function source archive built by `make package`. Null means ../dist/function-source.zip beside this folder."
  type        = string
  default     = null

  validation {
    condition     = var.function_source_zip == null || endswith(coalesce(var.function_source_zip, "x.zip"), ".zip")
    error_message = "function_source_zip must be the path of a .zip file."
  }
}

variable "python_runtime" {
  description = "Cloud Functions runtime for every function."
  type        = string
  default     = "python312"

  validation {
    condition     = contains(["python312", "python313", "python314"], var.python_runtime)
    error_message = "python_runtime must be a GA Python runtime: python312, python313 or python314."
  }
}

variable "functions" {
  description = <<-EOT
    Overrides of the sizing per function kind (api, intake, render, dead_letter,
    notifier): memory, cpu, timeout_seconds, min_instances, max_instances and
    per-instance concurrency. The defaults, and why they are what they are, are
    in ../functions.yaml (the one source the local stack reads too). Give only
    what you change, e.g. functions = { render = { max_instances = 50 } }.
    Render functions serve many renders at once per instance (concurrency 80 by
    default): a render spends almost all its time waiting on the provider, and
    memory stays bounded whatever the concurrency (outputs stream to a file, at
    most AIPROD_OUTPUT_CHECKS_AT_ONCE are decoded at once); measured in
    bench/ (README.md, Performance). Concurrency above 1 needs cpu >= 1.
    The render timeout bounds one invocation; a render that needs longer hands
    off to a continuation (AIPROD_RENDER_DEADLINE_S = timeout - render_handoff_margin_seconds).
    Pub/Sub-driven kinds (intake, render, dead_letter, notifier) are capped at 570 s so their
    subscriptions' ack deadline (timeout + 30 s) stays within Pub/Sub's 600 s limit.
  EOT
  type = map(object({
    memory          = optional(string)
    cpu             = optional(string)
    timeout_seconds = optional(number)
    min_instances   = optional(number)
    max_instances   = optional(number)
    concurrency     = optional(number)
  }))
  default  = {}
  nullable = false

  # Each kind's sizing is functions.yaml's merged with these overrides (as
  # local.sizing does; a validation may not refer to it, that would be a cycle).
  # Only an overridden kind can break a rule, so the rules look at the kinds
  # given here (tests/infra checks functions.yaml's own values).
  validation {
    condition     = alltrue([for kind in keys(var.functions) : contains(keys(local.functions_spec.kinds), kind)])
    error_message = "functions: each key must be a function kind of functions.yaml (api, intake, render, dead_letter, notifier, watchdog)."
  }
  validation {
    condition = alltrue([
      for kind, m in { for kind, f in var.functions : kind => merge(local.functions_spec.kinds[kind], { for k, v in f : k => v if v != null }) if contains(keys(local.functions_spec.kinds), kind) } : can(regex("^[0-9]+(Mi|Gi|M|G)$", m.memory))
    ])
    error_message = "functions.*.memory must look like 256Mi, 512Mi, 1Gi or 2G."
  }
  validation {
    condition = alltrue([
      for kind, m in { for kind, f in var.functions : kind => merge(local.functions_spec.kinds[kind], { for k, v in f : k => v if v != null }) if contains(keys(local.functions_spec.kinds), kind) } :
      m.min_instances >= 0 && m.max_instances >= 1 && m.min_instances <= m.max_instances
    ])
    error_message = "functions.*: need 0 <= min_instances <= max_instances and max_instances >= 1."
  }
  validation {
    condition     = alltrue([for kind, m in { for kind, f in var.functions : kind => merge(local.functions_spec.kinds[kind], { for k, v in f : k => v if v != null }) if contains(keys(local.functions_spec.kinds), kind) } : m.concurrency >= 1 && m.concurrency <= 1000])
    error_message = "functions.*.concurrency must be between 1 and 1000."
  }
  validation {
    condition     = alltrue([for kind, m in { for kind, f in var.functions : kind => merge(local.functions_spec.kinds[kind], { for k, v in f : k => v if v != null }) if contains(keys(local.functions_spec.kinds), kind) } : m.concurrency == 1 || tonumber(m.cpu) >= 1])
    error_message = "functions.*: a concurrency above 1 needs cpu >= 1 (https://cloud.google.com/functions/docs/configuring/concurrency)."
  }
  validation {
    condition = alltrue([
      for kind, m in { for kind, f in var.functions : kind => merge(local.functions_spec.kinds[kind], { for k, v in f : k => v if v != null }) if contains(keys(local.functions_spec.kinds), kind) } : kind != "api" || (m.timeout_seconds >= 1 && m.timeout_seconds <= 3600)
    ])
    error_message = "functions.api.timeout_seconds must be 1-3600 (the HTTP function limit)."
  }
  validation {
    condition = alltrue([
      for kind, m in { for kind, f in var.functions : kind => merge(local.functions_spec.kinds[kind], { for k, v in f : k => v if v != null }) if contains(keys(local.functions_spec.kinds), kind) } : kind == "api" || (m.timeout_seconds >= 10 && m.timeout_seconds <= 570)
    ])
    error_message = "Pub/Sub-driven functions (intake, render, dead_letter, notifier) need 10 <= timeout_seconds <= 570 so that the ack deadline (timeout + 30 s) fits Pub/Sub's 600 s maximum."
  }
}

variable "render_handoff_margin_seconds" {
  description = "How long before its timeout a render invocation stops polling and publishes a continuation (the time it keeps for the hand-off and for copying an output)."
  type        = number
  default     = 60

  validation {
    condition     = var.render_handoff_margin_seconds >= 30 && var.render_handoff_margin_seconds <= 300
    error_message = "render_handoff_margin_seconds must be between 30 and 300."
  }
  validation {
    condition     = local.sizing.render.timeout_seconds - var.render_handoff_margin_seconds >= 60
    error_message = "functions.render.timeout_seconds must leave at least 60 s of rendering after render_handoff_margin_seconds."
  }
}

variable "watchdog_interval_seconds" {
  description = "How often Cloud Scheduler runs the watchdog, which re-drives jobs that stopped moving (AIPROD_WATCHDOG_INTERVAL_S): a whole number of minutes that divides an hour. See README.md, \"No job stuck\"."
  type        = number
  default     = 60

  validation {
    condition     = var.watchdog_interval_seconds >= 60 && var.watchdog_interval_seconds <= 3600 && var.watchdog_interval_seconds % 60 == 0 && 60 % (var.watchdog_interval_seconds / 60) == 0
    error_message = "watchdog_interval_seconds must be a whole number of minutes that divides an hour (60, 120, 180, 240, 300, 360, 600, 720, 900, 1200, 1800 or 3600)."
  }
  validation {
    condition     = local.sizing.watchdog.timeout_seconds >= var.watchdog_interval_seconds + 60 && local.sizing.watchdog.timeout_seconds <= 1800
    error_message = "functions.watchdog.timeout_seconds must be at least watchdog_interval_seconds + 60 (a run stops starting new pages after one interval, then finishes its page) and at most 1800 (Cloud Scheduler's longest attempt deadline)."
  }
}

variable "watchdog_stale_seconds" {
  description = "How long a job may go without a change before the watchdog re-drives it (AIPROD_WATCHDOG_STALE_S); an open attempt is re-driven only once its lease has expired too. At least 600: Pub/Sub's maximum retry backoff, so the watchdog does not duplicate a redelivery Pub/Sub still has scheduled."
  type        = number
  default     = 600

  validation {
    condition     = var.watchdog_stale_seconds >= 600 && var.watchdog_stale_seconds <= 86400
    error_message = "watchdog_stale_seconds must be between 600 (Pub/Sub's maximum retry backoff) and 86400."
  }
}

variable "input_image_buckets" {
  description = "Buckets callers may name in gs:// image_url values (AIPROD_IMAGE_BUCKETS). Grant the render functions' service accounts read access to them yourself; empty refuses gs:// images."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for b in var.input_image_buckets : can(regex("^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$", b))])
    error_message = "input_image_buckets must be bucket names, without gs://."
  }
}

variable "daily_budget_usd" {
  description = "Hard daily spending limit across all providers, in USD (AIPROD_DAILY_BUDGET_USD)."
  type        = number
  default     = 100

  validation {
    condition     = var.daily_budget_usd > 0
    error_message = "daily_budget_usd must be positive."
  }
}

variable "cache_ttl_days" {
  description = "Days a succeeded render serves identical \"reuse\": \"cached\" requests at no cost (AIPROD_CACHE_TTL_S); under output_retention_days, so a reused output still exists."
  type        = number
  default     = 7

  validation {
    condition     = var.cache_ttl_days > 0 && var.cache_ttl_days < var.output_retention_days
    error_message = "cache_ttl_days must be positive and less than output_retention_days."
  }
}

variable "routing_min_samples" {
  description = "Attempts a backend needs in the statistics window before its observed quality, success rate and p95 replace the catalog's figures in routing (AIPROD_ROUTING_MIN_SAMPLES; README, \"Routing that learns\")."
  type        = number
  default     = 20

  validation {
    condition     = var.routing_min_samples >= 1
    error_message = "routing_min_samples must be at least 1."
  }
}

variable "stats_window_hours" {
  description = "Hours of finished attempts a backend's observed statistics cover (AIPROD_STATS_WINDOW_S); their Firestore counters expire after it."
  type        = number
  default     = 24

  validation {
    condition     = var.stats_window_hours >= 1 && var.stats_window_hours <= 168
    error_message = "stats_window_hours must be between 1 and 168."
  }
}

variable "cache_scope" {
  description = "Whose requests count as identical for reuse (AIPROD_CACHE_SCOPE): one API key's (key) or every caller's (deployment)."
  type        = string
  default     = "key"

  validation {
    condition     = contains(["key", "deployment"], var.cache_scope)
    error_message = "cache_scope must be key or deployment."
  }
}

variable "daily_budget_warn_usd" {
  description = "Daily spend at which AIPROD warns, in USD (AIPROD_DAILY_BUDGET_WARN_USD); at most daily_budget_usd. Unset: 90% of daily_budget_usd, so changing the budget moves the warning with it."
  type        = number
  default     = null

  validation {
    condition     = var.daily_budget_warn_usd == null ? true : (var.daily_budget_warn_usd > 0 && var.daily_budget_warn_usd <= var.daily_budget_usd)
    error_message = "daily_budget_warn_usd must be positive and at most daily_budget_usd."
  }
}

variable "output_retention_days" {
  description = "Rendered videos are deleted from the output bucket this many days after they were written."
  type        = number
  default     = 30

  validation {
    condition     = var.output_retention_days >= 1 && floor(var.output_retention_days) == var.output_retention_days
    error_message = "output_retention_days must be a whole number of days, at least 1."
  }
}

variable "secret_version" {
  description = "Version of each Secret Manager secret the functions read: \"latest\" (picked up by new instances) or a version number (picked up on the next apply)."
  type        = string
  default     = "latest"

  validation {
    condition     = can(regex("^(latest|[1-9][0-9]*)$", var.secret_version))
    error_message = "secret_version must be \"latest\" or a positive version number."
  }
}

variable "api_public" {
  description = "Let anyone on the internet call the API function (it checks API keys itself). When false, callers need roles/run.invoker."
  type        = bool
  default     = true
}

variable "deletion_protection" {
  description = "Protect the Firestore database and the output bucket against `terraform destroy`."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Extra labels on every resource that takes labels."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))
    ])
    error_message = "labels: keys must start with a lowercase letter; keys and values may hold lowercase letters, digits, _ and - (63 characters at most)."
  }
}

variable "notification_channels" {
  description = "Cloud Monitoring notification channels (projects/P/notificationChannels/ID) every alert policy of monitoring.yaml notifies. Empty: incidents open in the console only."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.notification_channels : can(regex("^projects/[^/]+/notificationChannels/[^/]+$", c))])
    error_message = "notification_channels must be full channel names: projects/PROJECT/notificationChannels/ID."
  }
}
