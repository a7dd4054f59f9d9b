# Buckets: rendered outputs (provider URLs expire, so every output is copied
# here), and the function source archives.

resource "google_storage_bucket" "outputs" {
  #checkov:skip=CKV_GCP_62:Access is audited with Cloud Audit Logs (Data Access logs for Cloud Storage); legacy usage logs would need a second bucket.
  #checkov:skip=CKV_GCP_78:Each output is written once under a job-specific key and expires by the lifecycle rule; versions would only keep copies of retried uploads.
  name     = local.output_bucket
  location = var.region

  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced" # callers get signed URLs
  force_destroy               = !var.deletion_protection

  # Outputs are written once per key; versions would only keep overwritten
  # copies of the same render, so retention is by age instead.
  versioning {
    enabled = false
  }

  lifecycle_rule {
    condition {
      age = var.output_retention_days
    }
    action {
      type = "Delete"
    }
  }

  # An upload interrupted mid-way leaves parts that are billed until removed.
  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  labels = { component = "aiprod" }
}

resource "google_storage_bucket" "source" {
  #checkov:skip=CKV_GCP_62:Holds only build inputs that `make package` re-creates; access is audited with Cloud Audit Logs.
  #checkov:skip=CKV_GCP_78:Archives are content-addressed (a new object per change), so there is nothing to version.
  name     = local.source_bucket
  location = var.region

  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true # only build inputs, re-created by `make package`

  versioning {
    enabled = false
  }

  # No age-based deletion: the archive the functions were built from must stay
  # where Terraform's state says it is. Archives are content-addressed
  # (functions.tf) and a few hundred kilobytes each.

  labels = { component = "aiprod" }
}
