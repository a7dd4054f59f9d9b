"""The REST API, served by the `api` HTTP function. Routes parse, call a service,
and render JSON or problem+json; they hold no business rules."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from flask import Request, Response
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from aiprod.domain import budget as budget_policy
from aiprod.domain import routing
from aiprod.domain.health import healthy
from aiprod.domain.job import JobRequest
from aiprod.domain.views import public_job
from aiprod.problems import PROBLEM_CONTENT_TYPE, Problem, invalid_request, malformed_json
from aiprod.runtime import Runtime
from aiprod.services import admission, budget
from aiprod.services import cancel as cancellation

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
DOWNLOAD_URL_TTL = dt.timedelta(hours=1)
ANONYMOUS = "anonymous"

Handler = Callable[[Runtime, Request, dict[str, str]], Response]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, default=str), status=status,
                    headers=headers or {}, content_type="application/json")


def _problem(problem: Problem, request: Request) -> Response:
    return Response(json.dumps(problem.body(request.path)), status=problem.status,
                    headers=problem.headers, content_type=PROBLEM_CONTENT_TYPE)


def _read_json(request: Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise Problem(413, "body-too-large", "The body is too large",
                      f"bodies are limited to {MAX_BODY_BYTES} bytes", field="body")
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY_BYTES:
        raise Problem(413, "body-too-large", "The body is too large",
                      f"bodies are limited to {MAX_BODY_BYTES} bytes", field="body")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as error:
        raise malformed_json(str(error)) from error
    if not isinstance(body, dict):
        raise malformed_json("expected an object")
    return body


def _rejection_problem(rt: Runtime, rejection: routing.Rejection) -> Problem:
    """422 when the request itself cannot be served; 503 while backends are down;
    429 once today's budget is spent (it says when it resets)."""
    cheapest = None
    if rejection.cheapest is not None:
        cheapest = {"backend": rejection.cheapest.backend,
                    "estimated_cost_usd": rejection.cheapest.estimated_cost_usd}
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    status, title = 422, "No backend can take this job"
    if rejection.reason is routing.RejectionReason.UNHEALTHY:
        status, title = 503, "Every fitting backend is failing"
        headers["Retry-After"] = str(int(rt.settings.circuit_cooldown_s))
    elif rejection.reason is routing.RejectionReason.BUDGET_EXHAUSTED:
        now = rt.clock()
        reset = budget_policy.resets_at(now)
        status, title = 429, "Today's budget is spent"
        headers["Retry-After"] = str(int((reset - now).total_seconds()) + 1)
        extra = {"limit": "daily_budget", "resets_at": reset.isoformat(),
                 "budget": budget.today(rt).public()}
    return Problem(status, f"rejected-{rejection.reason.value.replace('_', '-')}", title,
                   rejection.detail, headers=headers, reason=rejection.reason.value,
                   cheapest=cheapest, backends=dict(rejection.problems.items()), **extra)


def _plan_body(plan: routing.Plan) -> list[dict[str, Any]]:
    return [{"backend": q.backend, "estimated_cost_usd": q.estimated_cost_usd,
             "quality": q.quality} for q in plan.quotes]


def create_job(rt: Runtime, request: Request, _: dict[str, str]) -> Response:
    try:
        job_request = JobRequest.model_validate(_read_json(request))
    except ValidationError as error:
        raise invalid_request(error) from error
    result = admission.admit(rt, job_request, job_id=f"job_{uuid.uuid4().hex}", owner=ANONYMOUS)
    if isinstance(result, routing.Rejection):
        raise _rejection_problem(rt, result)
    body = public_job(result.job)
    return _json(body, 201 if result.created else 200,
                 {"Location": f"/v1/jobs/{result.job.id}"})


def get_job(rt: Runtime, request: Request, args: dict[str, str]) -> Response:
    job = rt.store.get(args["job_id"])
    if job is None:
        raise Problem(404, "job-not-found", "No such job", f"there is no job {args['job_id']}")
    download_url = None
    if job.output is not None:
        download_url = rt.outputs.download_url(job.output.uri, DOWNLOAD_URL_TTL)
    return _json(public_job(job, download_url))


def cancel_job(rt: Runtime, request: Request, args: dict[str, str]) -> Response:
    try:
        job = cancellation.cancel_job(rt, args["job_id"])
    except cancellation.NotCancellable as ended:
        raise Problem(409, "job-already-ended", "The job already ended",
                      f"job {ended.job.id} already ended {ended.job.status.value}; "
                      "there is nothing to cancel", status_now=ended.job.status.value) from None
    if job is None:
        raise Problem(404, "job-not-found", "No such job", f"there is no job {args['job_id']}")
    return _json(public_job(job))


def get_quote(rt: Runtime, request: Request, _: dict[str, str]) -> Response:
    params: dict[str, Any] = dict(request.args)
    if "metadata" in params:
        raise Problem(400, "invalid-request", "The request is not valid",
                      "metadata cannot be given to a quote", field="metadata")
    try:
        job_request = JobRequest.model_validate(params)
    except ValidationError as error:
        raise invalid_request(error) from error
    decision = admission.quote(rt, job_request)
    if isinstance(decision, routing.Rejection):
        raise _rejection_problem(rt, decision)
    return _json({"plan": _plan_body(decision),
                  "estimated_cost_usd": decision.estimated_cost_usd})


def get_budget(rt: Runtime, request: Request, _: dict[str, str]) -> Response:
    now = rt.clock()
    return _json(budget.today(rt).public() | {"resets_at": budget_policy.resets_at(now)
                                                           .isoformat()})


def list_backends(rt: Runtime, request: Request, _: dict[str, str]) -> Response:
    cooldown = dt.timedelta(seconds=rt.settings.circuit_cooldown_s)
    states = rt.health.all(rt.catalog.names)
    now = rt.clock()
    return _json({"backends": [
        {"name": b.name, "provider": b.provider, "model": b.model, "quality": b.quality,
         "health": states[b.name].public(cooldown)
         | {"routable": healthy(states[b.name], now, cooldown)},
         "typical_latency_s": b.typical_latency_s,
         "price": b.price.model_dump(exclude_none=True),
         "capabilities": {mode.value: cap.model_dump(mode="json", exclude_none=True)
                          for mode, cap in b.capabilities.items()}}
        for b in rt.catalog.backends]})


def healthz(rt: Runtime, request: Request, _: dict[str, str]) -> Response:
    return _json({"status": "ok"})


ROUTES: dict[str, Handler] = {
    "create_job": create_job,
    "get_job": get_job,
    "cancel_job": cancel_job,
    "get_quote": get_quote,
    "list_backends": list_backends,
    "get_budget": get_budget,
    "healthz": healthz,
}

URL_MAP = Map([
    Rule("/v1/jobs", methods=["POST"], endpoint="create_job"),
    Rule("/v1/jobs/<job_id>", methods=["GET"], endpoint="get_job"),
    Rule("/v1/jobs/<job_id>:cancel", methods=["POST"], endpoint="cancel_job"),
    Rule("/v1/quote", methods=["GET"], endpoint="get_quote"),
    Rule("/v1/backends", methods=["GET"], endpoint="list_backends"),
    Rule("/v1/budget", methods=["GET"], endpoint="get_budget"),
    Rule("/healthz", methods=["GET"], endpoint="healthz"),
])


def handle(rt: Runtime, request: Request) -> Response:
    """Route one HTTP request; every error leaves as problem+json."""
    adapter = URL_MAP.bind("", path_info=request.path)
    try:
        endpoint, args = adapter.match(request.path, method=request.method)
        return ROUTES[str(endpoint)](rt, request, {k: str(v) for k, v in args.items()})
    except Problem as problem:
        return _problem(problem, request)
    except MethodNotAllowed as error:
        allowed = ", ".join(sorted(error.valid_methods or []))
        return _problem(Problem(405, "method-not-allowed", "Method not allowed",
                                f"{request.method} is not allowed here; use {allowed}"), request)
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
