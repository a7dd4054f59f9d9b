"""Configuration from environment variables (documented in README.md).

Defaults run the local stack; production sets the same variables in Terraform.
Provider secrets are SecretStr so they never print in logs or reprs.
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from aiprod import root_file
from aiprod.domain.catalog import Catalog, parse_catalog

DEFAULT_CATALOG_PATH = root_file("backends.yaml")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIPROD_", extra="ignore")

    project: str = Field(default="aiprod-local", validation_alias="GOOGLE_CLOUD_PROJECT")
    firestore_database: str = "(default)"
    catalog_path: Path = Field(default=DEFAULT_CATALOG_PATH, validation_alias="AIPROD_CATALOG")

    # Topics (names, not paths).
    intake_topic: str = "video-jobs"
    events_topic: str = "job-events"

    # Which backend this render deployment serves.
    backend: str = Field(default="", validation_alias="BACKEND")

    # Money.
    daily_budget_usd: float = 100.0
    daily_budget_warn_usd: float = 90.0
    # Reuse of identical requests ("reuse": "cached"): how long a succeeded render serves
    # identical requests (keep it under the output bucket's retention), and whose
    # requests count as identical: one API key's ("key") or everyone's ("deployment").
    cache_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    cache_scope: Literal["key", "deployment"] = "key"

    # Rendering.
    poll_interval_s: float = 5.0
    render_deadline_s: float = 480.0  # hand off to a continuation before the function timeout
    create_timeout_s: float = 60.0
    # After a create call whose outcome is unknown, how long to wait before falling
    # back when the provider cannot be searched; empty: the catalog's task_timeout_s.
    unknown_outcome_wait_s: float | None = None
    transient_retry_initial_s: float = 1.0
    transient_retry_budget_s: float = 30.0
    fallback_on_refusal: bool = False  # a refused prompt is refused everywhere
    # Outputs a render process downloads, decodes and checks at once, whatever its
    # concurrency: what bounds its memory (and /tmp, which is memory on Cloud Functions).
    output_checks_at_once: int = Field(default=2, ge=1)
    # The largest output a render process downloads (bytes): each of the outputs at
    # once sits whole in /tmp, memory on Cloud Functions. 2 x 256 MiB beside the
    # process's measured peak (~320 MiB with 187 renders in flight) fit the render
    # instance's 1 GiB (functions.yaml); a 1080p 8 s clip is tens of MB. Larger
    # outputs fail the attempt (output_too_large) rather than the instance.
    output_max_bytes: int = Field(default=256 * 1024**2, ge=1024**2)
    # A render message dead-lettered (every instance was busy for all its deliveries)
    # whose attempt no render holds goes back on its render topic while the job is
    # younger than this; after, the job ends FAILED (domain/deadletter.py).
    redrive_max_age_s: float = 24 * 3600.0

    # Backend health (circuit breakers shared by every instance).
    circuit_strikes: int = 3
    circuit_cooldown_s: float = 300.0
    # How long to wait for a call slot before falling back (on the plan's last backend:
    # before handing the message back for Pub/Sub to redeliver).
    backend_busy_wait_s: float = 30.0

    # Routing on observed statistics (aiprod.domain.stats): samples a backend needs
    # before its observed quality, success rate or p95 replace the catalog's figures;
    # the window they are counted over, in buckets of stats_bucket_s (routing reads the
    # newest buckets that hold min_samples); documents each bucket's counters spread
    # over (no hot document under a burst); how long a process reuses what it read.
    routing_min_samples: int = Field(default=20, ge=1)
    stats_window_s: float = Field(default=24 * 3600.0, gt=0)
    stats_bucket_s: int = Field(default=3600, ge=5, le=86400)
    stats_shards: int = Field(default=4, ge=1)
    stats_cache_s: float = Field(default=30.0, ge=0)

    # Outputs: a local folder, or gs://bucket/prefix in production.
    output_uri: str = "file://./out/store"

    # Provider endpoints and credentials.
    runway_base_url: str = "https://api.dev.runwayml.com"
    runway_api_key: SecretStr = SecretStr("")
    replicate_base_url: str = "https://api.replicate.com"
    replicate_api_token: SecretStr = SecretStr("")
    veo_base_url: str = ""  # empty: Google's regional endpoint
    veo_location: str = "us-central1"
    veo_access_token: SecretStr = SecretStr("")  # empty: Application Default Credentials

    # The watchdog (re-drives jobs that stopped moving; see README, "No job stuck").
    # How often it runs: Cloud Scheduler's schedule in production, the local
    # stack's timer in development; one run also stops starting new pages after it.
    watchdog_interval_s: float = 60.0
    # How long a job may go without a change before the watchdog looks at it. At
    # least Pub/Sub's maximum retry backoff (600 s, terraform/topology.tf), so it
    # does not duplicate a redelivery Pub/Sub still has scheduled; an open attempt
    # is re-driven only once its lease (attempt_lease, 600 s) has also expired.
    watchdog_stale_s: float = 600.0

    # Uploads: requests with a body over 64 KiB (an image as a data: URI) an API process
    # parses, decodes and stages at once, whatever its concurrency; one more waits up
    # to upload_wait_s for its turn, then gets 503 uploads-busy with Retry-After. Each
    # 20 MiB upload peaks at about 54 MiB (bench/uploads.py): 3 fit a 512Mi api instance
    # (functions.yaml) beside its ~120 MiB at rest and the small requests it serves.
    uploads_at_once: int = Field(default=3, ge=1)
    upload_wait_s: float = Field(default=10.0, ge=0)

    # Callers: requests per minute for an API key created without its own --rpm.
    default_rate_limit_rpm: int = 600

    # Webhooks (the notifier signs them; admission checks their addresses).
    webhook_signing_key: SecretStr = SecretStr("")  # whsec_<base64>, from Secret Manager
    webhook_timeout_s: float = 10.0
    # Development only: comma-separated hosts exempt from the address rules (and
    # allowed plain http), e.g. 127.0.0.1 for a local receiver. Production: empty.
    webhook_allow_hosts: str = ""
    # Development only, likewise, for input image URLs fetched by AIPROD.
    image_allow_hosts: str = ""
    # Buckets callers may name in gs:// image URLs (comma-separated). AIPROD reads
    # them with its own identity, so any other bucket (its output bucket above all)
    # is refused: callers must not borrow AIPROD's access.
    image_buckets: str = ""

    @property
    def attempt_lease(self) -> dt.timedelta:
        """How long one invocation may hold an attempt (or a circuit probe): it hands
        off to a continuation before this runs out."""
        return dt.timedelta(seconds=self.create_timeout_s + self.render_deadline_s + 60)

    @property
    def circuit_cooldown(self) -> dt.timedelta:
        """How long an open circuit keeps callers away before one probe may go
        (aiprod.domain.health.cools_until reckons it)."""
        return dt.timedelta(seconds=self.circuit_cooldown_s)

    def catalog(self) -> Catalog:
        return load_catalog(self.catalog_path)


@functools.cache
def get_settings() -> Settings:
    return Settings()


@functools.cache
def load_catalog(path: Path = DEFAULT_CATALOG_PATH) -> Catalog:
    """The catalog in `path` (backends.yaml beside the code by default), read once."""
    return parse_catalog(Path(path).read_text())
