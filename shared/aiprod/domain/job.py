"""The job request callers send, and the job document AIPROD keeps."""

from __future__ import annotations

import binascii
import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aiprod.domain.catalog import DEFAULT_RESOLUTION, Mode, Resolution

# The `$id` of schemas/job-request.v1.json, named by intake's job.rejected events.
JOB_REQUEST_SCHEMA_ID = "urn:aiprod:schema:job-request:v1"
MAX_PROMPT_CHARS = 5000  # the widest provider limit; per-backend limits apply in routing
MAX_IMAGE_URL_CHARS = 28_000_000  # a 20 MiB image as base64, within a 32 MB request
IMAGE_DATA_URI = ("data:image/png;base64,", "data:image/jpeg;base64,")
# Validation context of a job read back from the store: its request may name an
# upload staged in AIPROD's own output store, which a caller may never name.
STORED = {"stored": True}
# Text only: no control characters but tab, newline and carriage return.
PROMPT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"


class AspectRatio(StrEnum):
    LANDSCAPE = "16:9"
    PORTRAIT = "9:16"
    SQUARE = "1:1"


class Reuse(StrEnum):
    """Whether an identical earlier (or in-flight) request's output may serve this one."""

    NEVER = "never"
    CACHED = "cached"


MAX_SEED = 4_294_967_295  # uint32: Veo's documented range, and Runway's (providers.md)


class Policy(StrEnum):
    CHEAPEST = "cheapest"
    BEST_QUALITY = "best_quality"
    FIXED = "fixed"
    FASTEST = "fastest"  # lowest observed p95 render time (until observed: typical latency)


MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class JobRequest(BaseModel):
    """The body of POST /v1/jobs and of a message on the intake topic."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False,
                              json_schema_extra={"examples": [
                                  {"prompt": "a red fox running through fresh snow, golden hour",
                                   "duration_seconds": 5, "aspect_ratio": "16:9",
                                   "metadata": {"order": "1042"}}]})

    schema_version: Literal[1] = 1
    prompt: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                             max_length=MAX_PROMPT_CHARS,
                                             pattern=PROMPT_PATTERN)] | None = None
    # https URL, gs:// URI, or an upload as a base64 data: URI (routing checks each
    # backend's size limit for uploads).
    image_url: Annotated[str, StringConstraints(max_length=MAX_IMAGE_URL_CHARS)] | None = None
    duration_seconds: int = Field(default=5, ge=1, le=60)
    aspect_ratio: AspectRatio = AspectRatio.LANDSCAPE
    # The shorter side of the frame: routing keeps the backends that render it, and
    # the output check fails a video smaller than asked for.
    resolution: Resolution = DEFAULT_RESOLUTION
    audio: bool = False
    min_quality: float = Field(default=0.0, ge=0, le=1)
    max_cost_usd: float | None = Field(default=None, gt=0, le=10_000)
    policy: Policy = Policy.CHEAPEST
    # Pin one backend by name (the /v1/videos `model`): routing considers no other, so
    # there is no fallback. Unknown names are refused by routing like any misfit.
    backend: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    webhook_url: Annotated[str, StringConstraints(max_length=2048)] | None = None
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=32)
    # Passed to each backend whose provider takes one (backends.yaml accepts_seed).
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    # "cached": an identical request that succeeded within the cache TTL, or one still
    # rendering, serves this one at no cost (aiprod.services.reuse).
    reuse: Reuse = Reuse.NEVER

    @model_validator(mode="after")
    def _needs_prompt_or_image(self) -> JobRequest:
        if self.prompt is None and self.image_url is None:
            raise ValueError("give a prompt, an image_url, or both")
        return self

    @field_validator("image_url")
    @classmethod
    def _image_source(cls, url: str | None, info: ValidationInfo) -> str | None:
        # http:// passes here only to get admission's clearer refusal (aiprod.adapters.netsafety),
        # which a development allow-list can lift for a local image server.
        if url is None or url.startswith(("https://", "http://", "gs://", *IMAGE_DATA_URI)):
            return url
        if url.startswith("file://") and (info.context or {}).get("stored"):
            return url  # an upload staged in the local stack's output folder
        raise ValueError("image_url must be an https:// URL, a gs:// URI, or a base64 "
                         "data:image/png or data:image/jpeg URI")

    @property
    def mode(self) -> Mode:
        return Mode.IMAGE_TO_VIDEO if self.image_url else Mode.TEXT_TO_VIDEO


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    RENDERING = "RENDERING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATUSES


TERMINAL_JOB_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.REJECTED}
)


class AttemptStatus(StrEnum):
    CREATING = "CREATING"      # claimed; the provider create call may be in flight
    UNKNOWN = "UNKNOWN"        # a create call was cut off: resolving whether a task exists
    RUNNING = "RUNNING"        # provider task id checkpointed; polling
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"        # never called the provider (circuit open, budget)
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self not in (AttemptStatus.CREATING, AttemptStatus.UNKNOWN, AttemptStatus.RUNNING)


class ErrorClass(StrEnum):
    TRANSIENT = "transient"          # 5xx, timeouts, 429: the provider may work later
    BACKEND = "backend"              # the provider failed this render: a strike, fall back
    CONTENT_REFUSED = "content_refused"  # provider moderation refused the prompt or output
    INVALID_INPUT = "invalid_input"  # the provider says the request itself is wrong
    UNKNOWN = "unknown"              # outcome of a create call could not be established
    OUTPUT_CHECK = "output_check"    # the rendered file failed verification
    SKIPPED = "skipped"              # the backend was not called


class AttemptError(BaseModel):
    """Why an attempt failed: our class, the provider's own code and message."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    error_class: ErrorClass = Field(alias="class")
    code: str
    message: str


class Output(BaseModel):
    uri: str
    mime_type: str = "video/mp4"
    duration_seconds: float
    width: int
    height: int
    bytes: int
    sha256: str


class Attempt(BaseModel):
    backend: str
    status: AttemptStatus
    delivery_id: str = ""          # the Pub/Sub message that holds the attempt's lease
    lease_expires_at: datetime | None = None  # until then, other deliveries stand back
    provider_task_id: str | None = None
    started_at: datetime
    ended_at: datetime | None = None
    error: AttemptError | None = None
    estimated_cost_usd: float
    cost_usd: float = 0.0
    # Ended from outside (cancel, dead letter) while its provider task ran: what the task
    # cost is not known yet, so cost_usd holds the estimate and the hold stays reserved
    # until the backend's render deployment (the only one with its credentials) has
    # stopped the task and read its charge (services/cancel.py stop_task).
    cost_pending: bool = False
    reservation_day: str | None = None  # the ledger day holding this attempt's reservation
    # Unique per claim: a claim handed back and made again never reuses a closed hold.
    reservation_id: str = ""


class Funding(BaseModel):
    """The money admission set aside for the job's first attempt, in the same ledger
    operation that accepted it: a 201 means this much is held. The first attempt uses
    this hold as its own; whatever ends the job before that attempt releases it."""

    model_config = ConfigDict(frozen=True)

    day: str             # the ledger day holding it
    reservation_id: str
    amount_usd: float


class InputImage(BaseModel):
    """An uploaded image, staged in the output store at admission: the job keeps this
    reference, never the bytes (a Firestore document holds at most 1 MiB)."""

    model_config = ConfigDict(frozen=True)

    uri: str            # gs://BUCKET/PREFIX/jobs/<job id>/input/<sha256>.<ext>, or file://
    sha256: str
    mime_type: str
    bytes: int


def staged_key(job_id: str, sha256: str, mime_type: str) -> str:
    """Where an upload is staged: under the job's prefix (removed with its output by
    the bucket's lifecycle rule), named by its content so a retry writes nothing new."""
    extension = {"image/png": "png", "image/jpeg": "jpg"}[mime_type]
    return f"jobs/{job_id}/input/{sha256}.{extension}"


_HASH_SLICE_CHARS = 1024 * 1024  # a multiple of 4: base64 decodes in 4-character groups


def upload_sha256(url: str | None) -> str | None:
    """The SHA-256 of an image uploaded as a base64 data: URI (None for any other URL,
    or for one that is not valid base64), decoded and hashed a slice at a time: an
    upload of up to 27 MB of text is never copied whole."""
    if url is None or not url.startswith("data:"):
        return None
    start = url.find(",") + 1
    if start == 0:
        return None
    digest = hashlib.sha256()
    try:
        for at in range(start, len(url), _HASH_SLICE_CHARS):
            digest.update(binascii.a2b_base64(url[at:at + _HASH_SLICE_CHARS].encode("ascii"),
                                              strict_mode=True))
    except ValueError:  # binascii.Error and UnicodeEncodeError are ValueErrors
        return None
    return digest.hexdigest()


def same_request(stored: Job, request: JobRequest) -> bool:
    """Whether `request` is the one `stored` was admitted from, its upload (staged
    and replaced by a reference in the job) compared by content."""
    if stored.input_image is None or request.image_url is None:
        return stored.request == request
    sha256 = upload_sha256(request.image_url)
    if sha256 is None:
        return False
    return (sha256 == stored.input_image.sha256
            and stored.request.model_copy(update={"image_url": None})
            == request.model_copy(update={"image_url": None}))


class Job(BaseModel):
    """The job document in Firestore (jobs/{id}) and the body of GET /v1/jobs/{id}."""

    id: str
    owner: str
    request: JobRequest
    plan: list[str]
    status: JobStatus
    status_reason: str = ""
    attempts: list[Attempt] = Field(default_factory=list)
    output: Output | None = None
    # The staged upload when the request sent one as a data: URI; request.image_url
    # then holds its uri.
    input_image: InputImage | None = None
    estimated_cost_usd: float
    # The first attempt's money, held at admission (None for jobs stored before it).
    funding: Funding | None = None
    # reuse "cached": the hash of what it renders (aiprod.domain.reuse.request_key), and
    # the job whose output serves it, when it was served from (or joined) another.
    reuse_key: str | None = None
    reused_from: str | None = None
    cost_usd: float = 0.0
    quality_score: float | None = None
    correlation_id: str | None = None
    created_at: datetime
    updated_at: datetime
    # DELETE /v1/videos/{id}: gone from the videos API, as the OpenAI shape promises; the
    # job stays (GET /v1/jobs/{id}): it is the billing record.
    video_deleted_at: datetime | None = None

    @property
    def current_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None
