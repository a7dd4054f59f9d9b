# Terraform and provider versions.
#
# The google provider is pinned to the 8.x series from 8.7: the configuration is
# checked offline (tests/infra) against the google provider 8.7.0 schema, as
# published in the jsii assembly of cdktn-provider-google 21.1.0, so 8.7 is the
# oldest release known to accept every argument used here, and a new major
# version (which may rename or remove arguments) is refused until it is checked.
#
# google-beta (same series, checked against the 8.7.0 schema of
# cdktn-provider-google-beta 21.1.0) is used for google_project_service_identity
# only, which the google provider does not have. time (checked against 0.14.2,
# cdktn-provider-time 14.0.2) gives time_sleep: log-based metrics take minutes
# before alert policies and SLOs may name them (monitoring.tf).
# Commit .terraform.lock.hcl after the first `terraform init` so every run uses
# the same provider build.
terraform {
  # 1.9 is the first release whose variable validations may refer to other
  # variables (variables.tf does); tested with 1.11.4.
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 8.7"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "~> 8.7"
    }
    time = {
      source  = "hashicorp/time"
      version = "~> 0.14.2"
    }
  }

  # State lives in a GCS bucket created once by hand (see README.md); its name
  # is given at init time: terraform init -backend-config="bucket=<bucket>".
  backend "gcs" {
    prefix = "aiprod"
  }
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = merge({ app = "aiprod", managed-by = "terraform" }, var.labels)
}

provider "google-beta" {
  project = var.project_id
  region  = var.region

  default_labels = merge({ app = "aiprod", managed-by = "terraform" }, var.labels)
}
