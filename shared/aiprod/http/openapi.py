"""The OpenAPI 3.1 document of the REST API, generated from the models.

Request schemas come from the models the API validates with (JobRequest);
response schemas from the models below, which state the public shapes that
aiprod.domain.views and aiprod.http.api build (a unit test checks that real
responses validate against them, and schemathesis checks the live API).

Served at /v1/openapi.json and checked in at docs/openapi.json; `make openapi`
regenerates the checked-in copy (and the intake message's JSON schema under
schemas/), and a test fails when either drifts from the code.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from aiprod import REPO_ROOT
from aiprod import __version__ as _version
from aiprod.domain.budget import Threshold
from aiprod.domain.job import (
    JOB_REQUEST_SCHEMA_ID,
    AttemptStatus,
    ErrorClass,
    JobRequest,
    JobStatus,
)

OPENAPI_PATH = REPO_ROOT / "docs" / "openapi.json"
SCHEMAS_DIR = REPO_ROOT / "schemas"
JOB_REQUEST_SCHEMA = SCHEMAS_DIR / "job-request.v1.json"
REF = "#/components/schemas/{model}"


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AttemptErrorView(_View):
    error_class: ErrorClass = Field(alias="class", description="AIPROD's class of the failure")
    code: str = Field(description="the provider's (or AIPROD's) code")
    message: str


class AttemptView(_View):
    backend: str
    status: AttemptStatus
    provider_task_id: str | None
    started_at: dt.datetime
    ended_at: dt.datetime | None
    error: AttemptErrorView | None
    estimated_cost_usd: float
    cost_usd: float


class OutputView(_View):
    uri: str = Field(description="where AIPROD keeps the video (gs:// or file://)")
    download_url: str | None = Field(description="a signed URL, valid for an hour; "
                                                 "GET /v1/jobs/{job_id} makes a fresh one; "
                                                 "null when none could be signed (use uri)")
    mime_type: str
    duration_seconds: float
    width: int
    height: int
    bytes: int
    sha256: str


class InputImageView(_View):
    """An image uploaded as a data: URI, staged by AIPROD: shown by reference only."""

    uri: str = Field(description="where AIPROD staged it (gs:// or file://), under the job's "
                                 "prefix; removed with the job's output")
    sha256: str
    mime_type: str
    bytes: int


class JobView(_View):
    """A job: GET /v1/jobs/{job_id}, POST /v1/jobs, and webhook and event payloads."""

    id: str
    status: JobStatus
    status_reason: str | None
    plan: list[str] = Field(description="backends in the order they are tried")
    estimated_cost_usd: float
    cost_usd: float
    reused_from: str | None = Field(description="the job whose output served this one "
                                                "(reuse: cached), at no cost")
    attempts: list[AttemptView]
    output: OutputView | None
    quality_score: float | None
    request: JobRequest = Field(description="the request as admitted; an uploaded image's "
                                           "image_url is replaced by its staged uri")
    input_image: InputImageView | None
    metadata: dict[str, str]
    correlation_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class FieldErrorView(BaseModel):
    field: str
    message: str


class ProblemView(BaseModel):
    """RFC 9457 problem details. `type` is stable per kind of error (docs/problems.md)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(pattern=r"^urn:aiprod:problem:[a-z0-9-]+$")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str | None = None
    field: str | None = Field(default=None, description="the offending field or header")
    errors: list[FieldErrorView] | None = None


class QuoteItem(_View):
    """One backend of the plan with the figures it was ranked by."""

    backend: str
    estimated_cost_usd: float = Field(description="list price of this request (the hold)")
    expected_cost_usd: float | None = Field(
        description="expected cost of a successful render, from the observed success rate "
                    "and billed failures; null when nothing succeeds")
    quality: float = Field(description="effective quality: observed once there are enough "
                                       "samples, else the catalog's")
    quality_source: Literal["catalog", "observed"]
    catalog_quality: float | None
    success_rate: float | None = Field(description="observed; null below the minimum samples")
    p95_s: float | None = Field(description="observed p95 render time, else typical latency")
    latency_source: Literal["catalog", "observed"]
    samples: int = Field(description="attempts observed in the statistics window")


class LeftOutView(_View):
    backend: str
    stage: str | None = Field(description="capability, quality, health, ceiling or budget")
    why: str


class QuoteView(_View):
    plan: list[QuoteItem]
    left_out: list[LeftOutView] = Field(description="backends not in the plan, and why")
    estimated_cost_usd: float


class HealthView(_View):
    state: Literal["closed", "open", "half_open"]
    strikes: int
    opened_at: str | None
    probe_after: str | None
    routable: bool


class ObservedView(_View):
    """A backend's finished attempts over the statistics window."""

    attempts: int
    successes: int
    failures: dict[str, int] = Field(description="by error class")
    charged_failures: int
    success_rate: float | None
    mean_quality: float | None = Field(description="mean output-check score")
    quality_samples: int
    p50_s: float | None = Field(description="render time of successes, histogram bound")
    p95_s: float | None


class BackendView(BaseModel):
    name: str
    provider: str
    model: str
    quality: float
    health: HealthView
    typical_latency_s: int
    observed: ObservedView
    price: dict[str, Any]
    capabilities: dict[str, Any]


class StatisticsView(_View):
    window_s: float
    bucket_s: int
    min_samples: int = Field(description="samples before observations replace the catalog")


class BackendsView(_View):
    statistics: StatisticsView
    backends: list[BackendView]


class DayFiguresView(_View):
    day: str
    limit_usd: float
    warning_usd: float
    spent_usd: float
    reserved_usd: float
    committed_usd: float
    left_usd: float
    threshold: Threshold


class ForecastView(_View):
    """Where the day's committed money is heading at the recent spend rate."""

    projected_usd: float = Field(description="committed money expected by 00:00 UTC: "
                                             "committed now + rate x hours left")
    rate_usd_per_hour: float = Field(description="spend per hour over the day's last hours, "
                                                 "exponentially weighted")
    limit_reached_at: dt.datetime | None = Field(description="when the limit would be "
                                                            "reached today at this rate")
    exceeds_limit: bool
    method: str


class KeyBudgetView(DayFiguresView):
    forecast: ForecastView | None


class BudgetView(DayFiguresView):
    """Today's budget across all callers, with its forecast; `key`: the caller's own key
    budget, if it has one."""

    resets_at: dt.datetime
    forecast: ForecastView
    key: KeyBudgetView | None


class HealthzView(_View):
    status: Literal["ok"]


# -- the OpenAI-compatible video shape (aiprod.http.videos; docs/openai-compatible.md) -----

class VideoCreateRequest(BaseModel):
    """POST /v1/videos, as the OpenAI SDK sends it (multipart/form-data) or as JSON. Any
    other job request field (min_quality, max_cost_usd, audio, metadata, ...: the SDK's
    extra_body) passes through, unless an OpenAI field already sets it."""

    model_config = ConfigDict(extra="allow")

    prompt: str | None = Field(default=None, description="required unless input_reference "
                                                         "is given")
    model: str | None = Field(default=None, description="a backend's name (pins it: no "
                              "fallback) or a routing alias: aiprod/cheapest (default), "
                              "aiprod/best-quality, aiprod/fixed")
    seconds: str | None = Field(default=None, pattern=r"^[0-9]+$",
                                description="duration; default 5")
    size: str | None = Field(default=None, pattern=r"^[1-9][0-9]*x[1-9][0-9]*$",
                             description="WIDTHxHEIGHT: its aspect ratio (16:9, 9:16 or "
                                         "1:1, within 3 %); default 16:9")
    input_reference: str | dict[str, str] | None = Field(
        default=None, description="an image (file upload in a form), or {\"image_url\": "
                                  "URL or data: URI}, or the URL itself")


class VideoErrorView(_View):
    code: str
    message: str


class VideoAiprodView(_View):
    status: JobStatus
    plan: list[str]
    estimated_cost_usd: float
    cost_usd: float
    job: str = Field(description="the same job in AIPROD's own API")


class VideoView(_View):
    """A job in the OpenAI `video` shape; `id` is the job's id."""

    id: str
    object: Literal["video"]
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = Field(ge=0, le=100)
    model: str = Field(description="the pinned or chosen backend, else the routing alias")
    prompt: str | None
    seconds: str
    size: str = Field(description="the video's real frame once completed")
    created_at: int
    completed_at: int | None
    expires_at: None
    remixed_from_video_id: None
    error: VideoErrorView | None
    aiprod: VideoAiprodView


class VideoListView(_View):
    object: Literal["list"]
    data: list[VideoView]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeletedView(_View):
    id: str
    object: Literal["video.deleted"]
    deleted: bool


class OpenAIErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    message: str
    type: str
    param: str | None
    code: str = Field(description="the problem's stable slug (docs/problems.md)")
    aiprod: dict[str, Any] = Field(description="the problem's type, title and details")


class OpenAIErrorView(_View):
    """An error on /v1/videos: the body the OpenAI SDK parses."""

    error: OpenAIErrorDetail


def _video_error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {
        "application/json": {"schema": {"$ref": REF.format(model="OpenAIErrorView")}}}}
    if headers:
        response["headers"] = headers
    return response


def _video_paths() -> dict[str, Any]:
    video_id = {"name": "video_id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": r"^job_[0-9a-f]{32}$"}}
    auth = {"401": _video_error("no API key, or an unknown or revoked one", {
                "WWW-Authenticate": {"required": True, "schema": {"type": "string"}}}),
            "429": _video_error("the key's rate limit or a daily budget is spent",
                                _RETRY_AFTER),
            "default": _video_error("any other error")}
    form = VideoCreateRequest.model_json_schema(ref_template=REF)
    form["properties"]["input_reference"] = {"type": "string", "format": "binary",
                                             "description": "a PNG or JPEG image"}
    form.pop("title", None)
    return {
        "/v1/videos": {
            "post": {
                "operationId": "createVideo", "tags": ["OpenAI-compatible"],
                "summary": "Submit a video job in the OpenAI shape",
                "description": "The same admission as POST /v1/jobs (keys, limits, "
                               "Idempotency-Key, budgets, routing).",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "minLength": 1,
                                           "maxLength": 255, "pattern": "^[!-~]+$"}}],
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": form},
                    "application/json": {"schema": {
                        "$ref": REF.format(model="VideoCreateRequest")}}}},
                "responses": {
                    "200": _ok("VideoView", "the video, queued (or the same one again, for "
                                            "a retry with the same Idempotency-Key)"),
                    "400": _video_error("a field is not valid (`param` names it)"),
                    "413": _video_error("the body or the uploaded image is too large"),
                    "415": _video_error("the body is neither a form nor JSON"),
                    "422": _video_error("no backend can take the job as asked, or the "
                                        "Idempotency-Key was used with another body"),
                    "503": _video_error("every backend that fits is failing, or this "
                                        "instance is taking as many uploaded images as it "
                                        "may at once", _RETRY_AFTER),
                    **auth}},
            "get": {
                "operationId": "listVideos", "tags": ["OpenAI-compatible"],
                "summary": "The caller's videos (jobs made either way), newest first",
                "parameters": [
                    {"name": "after", "in": "query", "required": False,
                     "description": "the last id of the previous page",
                     "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 100,
                                "default": 20}},
                    {"name": "order", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["asc", "desc"],
                                "default": "desc"}}],
                "responses": {"200": _ok("VideoListView", "a page of videos"),
                              "400": _video_error("a parameter is not valid"), **auth}}},
        "/v1/videos/{video_id}": {
            "get": {
                "operationId": "getVideo", "tags": ["OpenAI-compatible"],
                "summary": "A video's status and progress",
                "parameters": [video_id],
                "responses": {"200": _ok("VideoView", "the video"),
                              "404": _video_error("no such video (or not this caller's, "
                                                  "or deleted)"), **auth}},
            "delete": {
                "operationId": "deleteVideo", "tags": ["OpenAI-compatible"],
                "summary": "Cancel the video if it still runs, and remove it from the "
                           "videos API (the job stays at /v1/jobs/{id})",
                "parameters": [video_id],
                "responses": {"200": _ok("VideoDeletedView", "deleted"),
                              "404": _video_error("no such video"), **auth}}},
        "/v1/videos/{video_id}/content": {"get": {
            "operationId": "getVideoContent", "tags": ["OpenAI-compatible"],
            "summary": "The MP4",
            "parameters": [video_id, {
                "name": "variant", "in": "query", "required": False,
                "schema": {"type": "string", "enum": ["video", "thumbnail", "spritesheet"],
                           "default": "video"}}],
            "responses": {
                "200": {"description": "the MP4, where no download URL can be signed",
                        "content": {"video/mp4": {"schema": {"type": "string",
                                                             "format": "binary"}}}},
                "302": {"description": "a signed download URL, valid for an hour",
                        "headers": {"Location": {"required": True,
                                                 "schema": {"type": "string"}}}},
                "400": _video_error("only variant=video is kept"),
                "404": _video_error("no such video, or it is not completed"),
                "503": _video_error("no URL could be signed and the video is too large "
                                    "to send inline", _RETRY_AFTER),
                **auth}}},
    }


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {
        "application/problem+json": {"schema": {"$ref": REF.format(model="ProblemView")}}}}
    if headers:
        response["headers"] = headers
    return response


def _ok(model: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {
        "application/json": {"schema": {"$ref": REF.format(model=model)}}}}
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {"Retry-After": {"description": "seconds until it is worth trying again",
                                "required": True, "schema": {"type": "string"}}}
_AUTH_ERRORS = {
    "401": _problem("no API key, or an unknown or revoked one", {"WWW-Authenticate": {
        "required": True, "schema": {"type": "string"}}}),
    "429": _problem("the key's rate limit or daily budget (or today's budget) is spent; "
                    "`limit` says which, `resets_at` when", _RETRY_AFTER),
    "default": _problem("any other error"),
}
_JOB_ID = {"name": "job_id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": r"^job_[0-9a-f]{32}$"}}
_QUOTE_EXCLUDED = ("metadata", "webhook_url", "schema_version")


def _quote_parameters(request_schema: dict[str, Any]) -> list[dict[str, Any]]:
    """GET /v1/quote takes the job request's fields as query parameters."""
    parameters = []
    for name, schema in request_schema["properties"].items():
        if name in _QUOTE_EXCLUDED:
            continue
        schema = copy.deepcopy(schema)
        options = [s for s in schema.pop("anyOf", []) if s.get("type") != "null"]
        if options:
            schema |= options[0]
        if schema.get("default") is None:
            schema.pop("default", None)
        schema.pop("title", None)
        parameters.append({"name": name, "in": "query", "required": False,
                           "description": schema.pop("description", ""), "schema": schema})
    return parameters


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (the same bytes every time for the same code)."""
    _, top = models_json_schema(
        [(JobRequest, "validation"), (JobView, "serialization"), (ProblemView, "serialization"),
         (QuoteView, "serialization"), (BackendsView, "serialization"),
         (BudgetView, "serialization"), (HealthzView, "serialization"),
         (VideoCreateRequest, "validation"), (VideoView, "serialization"),
         (VideoListView, "serialization"), (VideoDeletedView, "serialization"),
         (OpenAIErrorView, "serialization")],
        ref_template=REF)
    schemas: dict[str, Any] = top["$defs"]
    request_schema = JobRequest.model_json_schema(ref_template=REF)
    job_headers = {"Location": {"description": "the job's URL", "required": True,
                                "schema": {"type": "string"}}}
    paths: dict[str, Any] = {
        "/v1/jobs": {"post": {
            "operationId": "createJob",
            "summary": "Submit a video job",
            "description": "Validates, prices and routes the job, then queues it. With an "
                           "`Idempotency-Key`, a retry with the same body returns the same "
                           "job (200) and a different body is a 422, for 24 hours.",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "description": "1-255 visible ASCII characters, e.g. a UUID",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                                       "pattern": "^[!-~]+$"}}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": REF.format(model="JobRequest")}}}},
            "responses": {
                "201": _ok("JobView", "the job was created and queued", job_headers),
                "200": _ok("JobView", "a retry with the same Idempotency-Key: the same job",
                           job_headers),
                "400": _problem("the body is not a valid job request (`field` names the "
                                "offending field)"),
                "413": _problem("the body is over 64 KiB (besides an image uploaded as a data: "
                                "URI), or the uploaded image is larger than every fitting "
                                "backend takes (`rejected-image-too-large`: `limit_bytes`)"),
                "415": _problem("the body is not application/json"),
                "422": _problem("no backend can take the job as asked (`reason`, `backends`), "
                                "the uploaded image is not a base64 PNG or JPEG "
                                "(`invalid-image`), or the Idempotency-Key was used with "
                                "another body"),
                "503": _problem("every backend that fits is failing, or this instance is "
                                "taking as many uploaded images as it may at once "
                                "(`uploads-busy`)", _RETRY_AFTER),
                **_AUTH_ERRORS,
            }}},
        "/v1/jobs/{job_id}": {"get": {
            "operationId": "getJob",
            "summary": "A job, with a fresh download URL once it succeeded",
            "parameters": [_JOB_ID],
            "responses": {"200": _ok("JobView", "the job"),
                          "404": _problem("no such job (or not this caller's)"),
                          **_AUTH_ERRORS}}},
        "/v1/jobs/{job_id}:cancel": {"post": {
            "operationId": "cancelJob",
            "summary": "Cancel a job: stop paying for it now",
            "parameters": [_JOB_ID],
            "responses": {"200": _ok("JobView", "the job, CANCELLED"),
                          "404": _problem("no such job (or not this caller's)"),
                          "409": _problem("the job already ended"),
                          **_AUTH_ERRORS}}},
        "/v1/quote": {"get": {
            "operationId": "getQuote",
            "summary": "The plan and price a job would get now, without submitting it",
            "parameters": _quote_parameters(request_schema),
            "responses": {"200": _ok("QuoteView", "the plan, cheapest first or as the "
                                                  "policy orders it"),
                          "400": _problem("the parameters are not a valid job request"),
                          "422": _problem("no backend can take such a job"),
                          "503": _problem("every backend that fits is failing", _RETRY_AFTER),
                          **_AUTH_ERRORS}}},
        "/v1/backends": {"get": {
            "operationId": "listBackends",
            "summary": "The catalog: prices, quality, capabilities and health",
            "responses": {"200": _ok("BackendsView", "every backend"), **_AUTH_ERRORS}}},
        "/v1/budget": {"get": {
            "operationId": "getBudget",
            "summary": "Today's budget, and the caller's own key budget",
            "responses": {"200": _ok("BudgetView", "today's figures"), **_AUTH_ERRORS}}},
        "/healthz": {"get": {
            "operationId": "healthz", "summary": "Liveness", "security": [],
            "responses": {"200": _ok("HealthzView", "the API answers"),
                          "default": _problem("any other error")}}},
        "/v1/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": {"description": "the OpenAPI document", "content": {
                "application/json": {"schema": {"type": "object"}}}},
                "default": _problem("any other error")}}},
        **_video_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "AIPROD", "version": _version,
                 "description": "Routes text-to-video and image-to-video jobs to the best paid "
                                "provider within a budget. Errors are RFC 9457 problem details "
                                "with a stable `type` (docs/problems.md), except on the "
                                "OpenAI-compatible /v1/videos routes, which answer the "
                                "OpenAI error body (docs/openai-compatible.md)."},
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {
                "type": "http", "scheme": "bearer",
                "description": "An AIPROD API key (`aiprod keys create`): "
                               "`Authorization: Bearer aiprod_...`"}},
            "schemas": dict(sorted(schemas.items())),
        },
    }


def job_request_schema() -> dict[str, Any]:
    """The versioned JSON schema of the intake message (= the POST /v1/jobs body)."""
    schema = JobRequest.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": JOB_REQUEST_SCHEMA_ID,
            "title": "AIPROD job request, version 1",
            "description": "The body of POST /v1/jobs and of a message on the video-jobs "
                           "topic. Attributes of an intake message: correlation_id (echoed on "
                           "job-events), idempotency_key (one job per key), publisher "
                           "(recorded as the job's owner).",
            **{k: v for k, v in schema.items() if k not in ("title", "description")}}


def render(value: dict[str, Any]) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def write(root: Path = REPO_ROOT) -> list[Path]:
    """Regenerate the checked-in document and schema (`make openapi`)."""
    written = []
    for path, value in ((root / "docs" / "openapi.json", document()),
                        (root / "schemas" / "job-request.v1.json", job_request_schema())):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(value))
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write():
        print(f"wrote {written_path.relative_to(REPO_ROOT)}")
