"""The REST API, served by the `api` HTTP function. Routes parse, call a service,
and render JSON or problem+json; they hold no business rules.

Every /v1 route but the OpenAPI document needs `Authorization: Bearer <key>`
(services.access): the caller is checked and counted against its key's rate
limit before routing, so an unauthenticated request learns nothing and creates
nothing. Callers see only their own jobs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

from flask import Request, Response
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter, Map, Rule

from aiprod.adapters.storage import SigningUnavailable
from aiprod.domain import budget as budget_policy
from aiprod.domain import routing
from aiprod.domain.apikeys import Principal
from aiprod.domain.health import healthy
from aiprod.domain.job import MAX_IMAGE_URL_CHARS, Job, JobRequest
from aiprod.domain.problems import PROBLEM_CONTENT_TYPE, Problem, invalid_request, malformed_json
from aiprod.domain.stats import BackendStats
from aiprod.domain.views import public_job
from aiprod.services import access, admission, budget, stats
from aiprod.services import cancel as cancellation
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
# An image uploaded as a data: URI in image_url may come on top (up to the widest
# backend's upload limit, as base64), within Cloud Functions' 32 MB request cap.
MAX_UPLOAD_BODY_BYTES = MAX_BODY_BYTES + MAX_IMAGE_URL_CHARS
DOWNLOAD_URL_TTL = dt.timedelta(hours=1)
PRINCIPAL = "aiprod.principal"  # where handle() leaves the caller in the WSGI environ
PUBLIC_PATHS = frozenset({"/healthz", "/v1/openapi.json"})
JOB_ID = re.compile(r"job_[0-9a-f]{32}")
QUOTE_EXCLUDED = ("metadata", "webhook_url")

Handler = Callable[[Runtime, Request, dict[str, str]], Response]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, default=str), status=status,
                    headers=headers or {}, content_type="application/json")


def _problem(problem: Problem, request: Request) -> Response:
    if videos.serves(request.path):  # the OpenAI shape's own error body
        return videos.error_response(problem)
    return Response(json.dumps(problem.body(request.path)), status=problem.status,
                    headers=problem.headers, content_type=PROBLEM_CONTENT_TYPE)


def caller(request: Request) -> Principal:
    """The authenticated caller of a /v1 request (handle() put it there)."""
    principal: Principal = request.environ[PRINCIPAL]
    return principal


def _own_job(rt: Runtime, request: Request, job_id: str) -> Job:
    """The caller's job, or a 404 (another caller's job does not exist for them)."""
    job = rt.store.get(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None or job.owner != caller(request).owner:
        raise Problem(404, "job-not-found", "No such job", f"there is no job {job_id}",
                      field="job_id")
    return job


def _too_large() -> Problem:
    return Problem(413, "body-too-large", "The body is too large",
                   f"bodies are limited to {MAX_BODY_BYTES} bytes, plus an image "
                   "uploaded as a data: URI in image_url", field="body")


def _read_json(request: Request) -> bytes:
    """The body, checked to be JSON of at most MAX_UPLOAD_BODY_BYTES; a body of at most
    MAX_BODY_BYTES is checked here to be an object. A larger one (an upload) is parsed
    once, by the model (_job_request): parsing it here too would hold its text twice
    more."""
    if not (request.mimetype == "application/json" or (
            request.mimetype.startswith("application/") and request.mimetype.endswith("+json"))):
        raise Problem(415, "unsupported-media-type", "The body must be JSON",
                      f"send the body as application/json, not {request.mimetype or 'nothing'}",
                      field="Content-Type")
    if request.content_length is not None and request.content_length > MAX_UPLOAD_BODY_BYTES:
        raise _too_large()
    raw = request.get_data(cache=False)
    if len(raw) > MAX_UPLOAD_BODY_BYTES:
        raise _too_large()
    if len(raw) <= MAX_BODY_BYTES:
        json_object(raw)
    return raw


def json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object a request body holds, or a 400 malformed-json problem."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as error:
        raise malformed_json(str(error)) from error
    if not isinstance(body, dict):
        raise malformed_json("expected an object")
    return body


def _only_image_is_large(raw: bytes, image_url: object) -> None:
    """A body over MAX_BODY_BYTES is allowed only for an image uploaded as a data: URI."""
    if len(raw) > MAX_BODY_BYTES and not (
            isinstance(image_url, str) and image_url.startswith("data:")
            and len(raw) - len(image_url) <= MAX_BODY_BYTES):
        raise _too_large()


def _job_request(request: Request) -> JobRequest:
    """The body as a job request. An upload's text is held by the raw body and the
    model only (bench/uploads.py measures it); the raw body goes when this returns."""
    raw = _read_json(request)
    try:
        job_request = JobRequest.model_validate_json(raw, strict=True)
    except ValidationError as error:
        if len(raw) > MAX_BODY_BYTES:  # the checks a small body had in _read_json
            _only_image_is_large(raw, json_object(raw).get("image_url"))
        raise invalid_request(error) from error
    _only_image_is_large(raw, job_request.image_url)
    return job_request


@contextlib.contextmanager
def upload_slot(rt: Runtime, request: Request) -> Iterator[None]:
    """At most settings.uploads_at_once requests with a large body (an image uploaded
    as a data: URI, up to 20 MiB) parsed, decoded and staged at once in this process,
    whatever its concurrency: each holds tens of MiB while it does (README,
    Performance). One more waits up to upload_wait_s for its turn, then gets a 503
    with Retry-After, rather than the instance running out of memory. Small bodies
    pass straight through."""
    if request.content_length is not None and request.content_length <= MAX_BODY_BYTES:
        yield
        return
    if not rt.uploads.acquire(timeout=rt.settings.upload_wait_s):
        retry = max(1, math.ceil(rt.settings.upload_wait_s))
        raise Problem(503, "uploads-busy", "Too many uploads at once",
                      f"this instance is taking {rt.settings.uploads_at_once} uploaded images "
                      f"already; retry in {retry} s, or send the image as an https URL",
                      headers={"Retry-After": str(retry)}, field="image_url")
    try:
        yield
    finally:
        rt.uploads.release()


def _rejection_field(rt: Runtime, request: JobRequest, reason: routing.RejectionReason,
                     ) -> str | None:
    """The request field a rejection is about, where one field explains it."""
    if reason is routing.RejectionReason.QUALITY:
        return "min_quality"
    if reason is routing.RejectionReason.OVER_JOB_CEILING:
        return "max_cost_usd"
    if reason is routing.RejectionReason.IMAGE_TOO_LARGE:
        return "image_url"
    if reason is not routing.RejectionReason.UNSUPPORTED:
        return None
    if request.backend is not None and request.backend not in rt.catalog.names:
        return "backend"
    capabilities = [b.capabilities.get(request.mode) for b in rt.catalog.backends]
    able = [c for c in capabilities if c is not None]
    if not able:
        return "image_url" if request.image_url else "prompt"
    if not any(c.durations.allows(request.duration_seconds) for c in able):
        return "duration_seconds"
    if not any(request.aspect_ratio.value in c.aspect_ratios for c in able):
        return "aspect_ratio"
    if not any(request.resolution in c.resolutions
               and c.durations_for(request.resolution).allows(request.duration_seconds)
               for c in able):
        return "resolution"
    if request.audio and not any(c.audio for c in able):
        return "audio"
    if request.prompt is not None and all(
            len(request.prompt) > b.limits.max_prompt_chars for b in rt.catalog.backends):
        return "prompt"
    return None


def _rejection_problem(rt: Runtime, rejection: routing.Rejection, request: JobRequest,
                       principal: Principal) -> Problem:
    """422 when the request itself cannot be served; 503 while backends are down;
    429 once today's budget, or the API key's, is spent (it says which, and when it
    resets)."""
    cheapest = None
    if rejection.cheapest is not None:
        cheapest = {"backend": rejection.cheapest.backend,
                    "estimated_cost_usd": rejection.cheapest.estimated_cost_usd}
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    status, title = 422, "No backend can take this job"
    if rejection.reason is routing.RejectionReason.IMAGE_TOO_LARGE:
        status, title = 413, "The uploaded image is too large"
        extra = {"limit": "max_image_data_uri_bytes", "limit_bytes": rejection.limit_bytes}
    elif rejection.reason is routing.RejectionReason.UNHEALTHY:
        status, title = 503, "Every fitting backend is failing"
        headers["Retry-After"] = str(int(rt.settings.circuit_cooldown_s))
    elif rejection.reason is routing.RejectionReason.BUDGET_EXHAUSTED:
        now = rt.clock()
        reset = budget_policy.resets_at(now)
        status, title = 429, "Today's budget is spent"
        headers["Retry-After"] = str(int((reset - now).total_seconds()) + 1)
        extra = {"limit": "daily_budget", "resets_at": reset.isoformat(),
                 "budget": budget.today(rt).public()}
        own = budget.key_today(rt, principal.owner)
        needed = budget_policy.to_micros(rejection.cheapest.estimated_cost_usd
                                         if rejection.cheapest else 0)
        if own is not None and own.left_micros < needed <= budget.today(rt).left_micros:
            title = "This API key's daily budget is spent"
            extra |= {"limit": "key_daily_budget", "budget": own.public()}
            detail = (f"this API key's daily budget has {budget_policy.to_usd(own.left_micros)}"
                      f" USD left; the cheapest fitting backend costs "
                      f"{budget_policy.to_usd(needed)} USD; it resets at {reset.isoformat()}")
            rejection = routing.Rejection(rejection.reason, detail, rejection.cheapest,
                                          rejection.problems)
    field = _rejection_field(rt, request, rejection.reason)
    if field is not None:
        extra["field"] = field
    return Problem(status, f"rejected-{rejection.reason.value.replace('_', '-')}", title,
                   rejection.detail, headers=headers, reason=rejection.reason.value,
                   cheapest=cheapest, backends=dict(rejection.problems.items()), **extra)


def _plan_body(plan: routing.Plan) -> list[dict[str, Any]]:
    """Each backend with the figures it was ranked by (observed or catalog)."""
    return [q.figures() for q in plan.quotes]


def _left_out(plan: routing.Plan) -> list[dict[str, Any]]:
    return [{"backend": name, "stage": plan.stages.get(name), "why": why}
            for name, why in plan.problems.items()]


def create_job(rt: Runtime, request: Request, _: dict[str, str]) -> Response:
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None:
        access.check_idempotency_key(idempotency_key)
    with upload_slot(rt, request):
        job, created = submit(rt, request, _job_request(request))
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if idempotency_key is not None and not created:
        headers["Idempotent-Replayed"] = "true"
    return _json(public_job(job), 201 if created else 200, headers)


def submit(rt: Runtime, request: Request, job_request: JobRequest) -> tuple[Job, bool]:
    """Admit a parsed job request for the caller, under its Idempotency-Key if it sent
    one (checked by the caller): the one admission path of POST /v1/jobs and POST
    /v1/videos. The job, and whether this request created it."""
    principal = caller(request)
    idempotency_key = request.headers.get("Idempotency-Key")
    unsafe = admission.url_problem(rt, job_request)
    if unsafe is not None:
        field, reason = unsafe
        raise Problem(400, "unsafe-url", "The URL is not allowed", f"{field}: {reason}",
                      field=field)
    job_id = access.job_id_for(rt, principal.owner, idempotency_key, job_request)[0]
    try:
        result = admission.admit(rt, job_request, job_id=job_id, owner=principal.owner)
    except admission.InvalidUpload as bad:
        raise Problem(422, "invalid-image", "The uploaded image is not valid",
                      f"image_url: {bad.message}", field="image_url", code=bad.code) from None
    if isinstance(result, routing.Rejection):
        raise _rejection_problem(rt, result, job_request, principal)
    return result.job, result.created


def get_job(rt: Runtime, request: Request, args: dict[str, str]) -> Response:
    job = _own_job(rt, request, args["job_id"])
    download_url = None
    if job.output is not None:
        try:
            download_url = rt.outputs.download_url(job.output.uri, DOWNLOAD_URL_TTL)
        except SigningUnavailable as error:  # the output's uri still answers the caller
            logger.warning("no download URL for the output: %s", error,
                           extra={"fields": {"job_id": job.id, "output_uri": job.output.uri}})
    return _json(public_job(job, download_url))


def cancel_job(rt: Runtime, request: Request, args: dict[str, str]) -> Response:
    _own_job(rt, request, args["job_id"])
    try:
        job = cancellation.cancel_job(rt, args["job_id"])
    except cancellation.NotCancellable as ended:
        raise Problem(409, "job-already-ended", "The job already ended",
                      f"job {ended.job.id} already ended {ended.job.status.value}; "
                      "there is nothing to cancel", status_now=ended.job.status.value) from None
    if job is None:
        raise Problem(404, "job-not-found", "No such job", f"there is no job {args['job_id']}",
                      field="job_id")
    return _json(public_job(job))


def get_quote(rt: Runtime, request: Request, _: dict[str, str]) -> Response:
    principal = caller(request)
    params: dict[str, Any] = {}
    for name, values in request.args.lists():
        if name in QUOTE_EXCLUDED:
            raise Problem(400, "invalid-request", "The request is not valid",
                          f"{name} cannot be given to a quote", field=name)
        if len(values) > 1:
            raise Problem(400, "invalid-request", "The request is not valid",
                          f"{name} is given {len(values)} times", field=name)
        params[name] = values[0]
    if "audio" in params:  # a query string is text: only true and false are booleans
        if params["audio"] not in ("true", "false"):
            raise Problem(400, "invalid-request", "The request is not valid",
                          "audio: give true or false", field="audio")
        params["audio"] = params["audio"] == "true"
    try:
        job_request = JobRequest.model_validate(params)
    except ValidationError as error:
        raise invalid_request(error) from error
    decision = admission.quote(rt, job_request, principal.owner)
    if isinstance(decision, routing.Rejection):
        raise _rejection_problem(rt, decision, job_request, principal)
    return _json({"plan": _plan_body(decision), "left_out": _left_out(decision),
                  "estimated_cost_usd": decision.estimated_cost_usd})


def get_budget(rt: Runtime, request: Request, _: dict[str, str]) -> Response:
    now = rt.clock()
    today = budget.today(rt)
    body = today.public() | {"resets_at": budget_policy.resets_at(now).isoformat(),
                             "forecast": budget.forecast(rt, today).public()}
    owner = caller(request).owner
    own = budget.key_today(rt, owner)
    own_forecast = budget.key_forecast(rt, owner, own) if own is not None else None
    body["key"] = (own.public() | {"forecast": own_forecast.public() if own_forecast else None}
                   if own is not None else None)
    return _json(body)


def list_backends(rt: Runtime, request: Request, _: dict[str, str]) -> Response:
    cooldown = rt.settings.circuit_cooldown
    states = rt.health.all(rt.catalog.names)
    now = rt.clock()
    seen = stats.window(rt)
    return _json({"statistics": {"window_s": rt.settings.stats_window_s,
                                 "bucket_s": rt.settings.stats_bucket_s,
                                 "min_samples": rt.settings.routing_min_samples},
                  "backends": [
        {"name": b.name, "provider": b.provider, "model": b.model, "quality": b.quality,
         "health": states[b.name].public(cooldown)
         | {"routable": healthy(states[b.name], now, cooldown)},
         "typical_latency_s": b.typical_latency_s,
         "observed": seen.get(b.name, BackendStats()).public(),
         "price": b.price.model_dump(exclude_none=True),
         "capabilities": {mode.value: cap.model_dump(mode="json", exclude_none=True)
                          for mode, cap in b.capabilities.items()}}
        for b in rt.catalog.backends]})


def healthz(rt: Runtime, request: Request, _: dict[str, str]) -> Response:
    return _json({"status": "ok"})


def openapi_document(rt: Runtime, request: Request, _: dict[str, str]) -> Response:
    from aiprod.http.openapi import document

    return _json(document())


ROUTES: dict[str, Handler] = {
    "create_job": create_job,
    "get_job": get_job,
    "cancel_job": cancel_job,
    "get_quote": get_quote,
    "list_backends": list_backends,
    "get_budget": get_budget,
    "healthz": healthz,
    "openapi": openapi_document,
}

class _Segment(BaseConverter):
    """A path segment without ':', so `/v1/jobs/{id}:cancel` never reads as a job id."""

    regex = "[^/:]+"


URL_MAP = Map([
    Rule("/v1/jobs", methods=["POST"], endpoint="create_job"),
    Rule("/v1/jobs/<segment:job_id>", methods=["GET"], endpoint="get_job"),
    Rule("/v1/jobs/<segment:job_id>:cancel", methods=["POST"], endpoint="cancel_job"),
    Rule("/v1/quote", methods=["GET"], endpoint="get_quote"),
    Rule("/v1/backends", methods=["GET"], endpoint="list_backends"),
    Rule("/v1/budget", methods=["GET"], endpoint="get_budget"),
    Rule("/healthz", methods=["GET"], endpoint="healthz"),
    Rule("/v1/openapi.json", methods=["GET"], endpoint="openapi"),
], converters={"segment": _Segment})


# The OpenAI-compatible video routes (http/videos.py), served by the same function.
from aiprod.http import videos  # noqa: E402  (it uses this module's helpers)

ROUTES |= videos.ROUTES
for _rule in videos.rules():
    URL_MAP.add(_rule)


def framework_error(request: Request, error: HTTPException) -> Response:
    """Errors raised by the functions framework's own routing before handle() runs (a
    path it cannot route, e.g. one with a newline): problem+json like every error."""
    if error.code == 404:
        return _problem(Problem(404, "not-found", "Not found",
                                "there is nothing at this path"), request)
    return _problem(Problem(error.code or 500, "http-error", error.name,
                            error.description or error.name), request)


def handle(rt: Runtime, request: Request) -> Response:
    """Route one HTTP request; every error leaves as problem+json."""
    adapter = URL_MAP.bind("", path_info=request.path)
    try:
        # Routing merges repeated slashes, so the key check must too (//v1 is /v1).
        path = re.sub(r"/{2,}", "/", request.path)
        if path.startswith("/v1") and path not in PUBLIC_PATHS:
            principal = access.authenticate(rt, request.headers.get("Authorization"))
            access.check_rate(rt, principal)
            request.environ[PRINCIPAL] = principal
        endpoint, args = adapter.match(request.path, method=request.method)
        return ROUTES[str(endpoint)](rt, request, {k: str(v) for k, v in args.items()})
    except Problem as problem:
        return _problem(problem, request)
    except MethodNotAllowed as error:
        allowed = ", ".join(sorted(error.valid_methods or []))
        return _problem(Problem(405, "method-not-allowed", "Method not allowed",
                                f"{request.method} is not allowed here; use {allowed}",
                                headers={"Allow": allowed}), request)
    except NotFound:
        return _problem(Problem(404, "not-found", "Not found",
                                f"there is nothing at {request.path}"), request)
    except HTTPException as error:
        return _problem(Problem(error.code or 500, "http-error", error.name,
                                error.description or error.name), request)
    except Exception:
        logger.exception("unhandled error in the API", extra={"fields": {"path": request.path}})
        return _problem(Problem(500, "internal-error", "Internal error",
                                "something went wrong on our side; retry later"), request)
