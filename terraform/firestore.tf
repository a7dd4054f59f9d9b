# Firestore (native mode): jobs, the budget ledger, backend health, idempotency
# keys, hashed API keys and rate-limit counters.

resource "google_firestore_database" "main" {
  name        = var.firestore_database
  location_id = var.firestore_location
  type        = "FIRESTORE_NATIVE"

  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = var.deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  # Without protection, `terraform destroy` really deletes the database.
  deletion_policy = var.deletion_protection ? "ABANDON" : "DELETE"

  depends_on = [google_project_service.api["firestore.googleapis.com"]]
}

# TTL policies: Firestore deletes a document (typically within 24 hours) once
# the timestamp in this field has passed. The field is exempt from indexing
# (the empty index_config): nothing queries it, and an index on a steadily
# increasing timestamp is a write hotspot.
#
# Every collection the code writes either has a TTL policy here or stays small
# by construction; tests/infra/test_firestore_retention.py scans the code's
# collection names against this list. A TTL policy names a collection group:
# `reservations` covers budget_days/{day}/reservations of every day.
locals {
  ttl_fields = {
    idempotency_keys = "expires_at" # Idempotency-Key records (24 h)
    rate_limits      = "expires_at" # per-key, per-minute request counters
    reservations     = "expires_at" # budget holds, 8 days after they were taken
    backend_stats    = "expires_at" # attempt counters, once their bucket left the window
    render_cache     = "expires_at" # reuse index: a render's key, the cache TTL after it ended
    followers        = "expires_at" # render_cache/{key}/followers: jobs that joined a render
  }
}

resource "google_firestore_field" "ttl" {
  for_each = local.ttl_fields

  database   = google_firestore_database.main.name
  collection = each.key
  field      = each.value

  ttl_config {}
  index_config {}
}

# Composite indexes. Reads by document ID need none. The watchdog's query
# (shared/aiprod/adapters/store.py, FirestoreJobStore.unmoved) filters jobs by
# status (`in` QUEUED, RENDERING) and by a range on updated_at, ordered by
# updated_at: Firestore serves an equality filter combined with a range or order
# on another field only from a composite index, and refuses the query without
# one (https://cloud.google.com/firestore/docs/query-data/index-overview). The
# Firestore emulator does not enforce indexes, so only tests/infra, which checks
# this index against the query, would notice a missing one. `status` has few
# values, so the index adds no write hotspot beyond the single-field one
# updated_at already has.
resource "google_firestore_index" "jobs_unmoved" {
  database   = google_firestore_database.main.name
  collection = "jobs"

  fields {
    field_path = "status"
    order      = "ASCENDING"
  }
  fields {
    field_path = "updated_at"
    order      = "ASCENDING"
  }
  fields {
    field_path = "__name__"
    order      = "ASCENDING"
  }
}

# The watchdog's scan of leftover budget holds (shared/aiprod/adapters/ledger.py,
# FirestoreLedger.held_before) reads budget_days/{day}/reservations with an
# equality on state (HELD) and a range and order on created_at, a page at a time:
# like the jobs query above, production Firestore serves it only from a composite
# index. A collection-scope index names the collection ID, so this one serves
# every day's `reservations`.
resource "google_firestore_index" "reservations_held" {
  database   = google_firestore_database.main.name
  collection = "reservations"

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }
  fields {
    field_path = "created_at"
    order      = "ASCENDING"
  }
  fields {
    field_path = "__name__"
    order      = "ASCENDING"
  }
}

# A caller's job listing (GET /v1/videos, shared/aiprod/adapters/store.py,
# FirestoreJobStore.owned): an equality filter on owner ordered by created_at, newest
# or oldest first. Like the watchdog's query, production Firestore serves it only
# from a composite index, and a composite index serves only the directions it lists
# (https://cloud.google.com/firestore/docs/query-data/index-overview), so one index
# per order.
resource "google_firestore_index" "jobs_owned" {
  for_each = toset(["ASCENDING", "DESCENDING"])

  database   = google_firestore_database.main.name
  collection = "jobs"

  fields {
    field_path = "owner"
    order      = "ASCENDING"
  }
  fields {
    field_path = "created_at"
    order      = each.value
  }
  fields {
    field_path = "__name__"
    order      = each.value
  }
}
