"""What each Cloud Function entry point does, minus the functions-framework
decorators (those stay in functions/main.py). Parses the trigger's input and
calls one service."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from typing import Any

import flask
from cloudevents.http import CloudEvent
from flask import Request, Response
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, TooManyRequests

from aiprod.domain import routing
from aiprod.domain.job import JobRequest, same_request
from aiprod.domain.problems import invalid_request
from aiprod.http import api as rest
from aiprod.http.openapi import JOB_REQUEST_SCHEMA_ID
from aiprod.observability import logs, tracing
from aiprod.observability.logs import log
from aiprod.services import admission, messages, telemetry, webhooks
from aiprod.services import watchdog as watchdog_service
from aiprod.services.cancel import stop_task
from aiprod.services.deadletter import handle_dead_letter
from aiprod.services.messages import RenderMessage
from aiprod.services.publishing import emit_rejected
from aiprod.services.render import BackendBusy, handle_render
from aiprod.wiring.runtime import get_runtime

logger = logging.getLogger(__name__)
logs.configure()

PUBLISHER = re.compile(r"[A-Za-z0-9._-]{1,64}")


class PubSubMessage:
    """The Pub/Sub message inside a CloudEvent (direct push bodies are converted
    to CloudEvents by functions-framework)."""

    def __init__(self, event: CloudEvent) -> None:
        message: dict[str, Any] = (event.data or {}).get("message", {})
        self.id: str = message.get("messageId") or message.get("message_id") or event["id"]
        self.attributes: dict[str, str] = message.get("attributes") or {}
        self._data: str | bytes = message.get("data") or b""

    @property
    def raw(self) -> bytes:
        """The payload; raises binascii.Error (a ValueError) for bad base64."""
        return base64.b64decode(self._data, validate=True)

    def json(self) -> Any:
        return json.loads(self.raw)


@tracing.http_entry
def api(request: Request) -> Response:
    return rest.handle(get_runtime(), request)


def http_error(error: HTTPException) -> Response:
    """An HTTP error the framework raised itself (it could not route the request)."""
    return rest.framework_error(flask.request, error)


@tracing.event_entry
def render(event: CloudEvent) -> None:
    message = PubSubMessage(event)
    rt = get_runtime()
    try:
        render_message = RenderMessage.model_validate(message.json())
    except (ValueError, ValidationError) as error:
        # Only AIPROD publishes here: a bad message is a bug; retrying will not fix it.
        log(logger, logging.ERROR, f"unreadable render message dropped: {error}",
            message_id=message.id)
        return
    if rt.settings.backend and render_message.backend != rt.settings.backend:
        log(logger, logging.ERROR, "render message for another backend dropped",
            job_id=render_message.job_id, backend=render_message.backend)
        return
    if render_message.action == "cancel":
        stop_task(rt, render_message)
        return
    try:
        handle_render(rt, render_message, delivery_id=message.id)
    except BackendBusy as busy:
        # Back-pressure, like Cloud Run's own 429: Pub/Sub redelivers with backoff.
        log(logger, logging.WARNING, f"render handed back: {busy}",
            job_id=render_message.job_id, backend=render_message.backend)
        raise TooManyRequests(str(busy)) from None


def intake_job_id(message: PubSubMessage) -> str:
    """Stable per message (or per publisher idempotency key), so redelivery admits once."""
    return messages.intake_job_id(message.attributes, message.id)


def intake_owner(message: PubSubMessage) -> str:
    """Who published it: the topic's IAM is the gate (only granted publishers get
    here); the `publisher` attribute names the system, for attribution."""
    publisher = message.attributes.get("publisher", "")
    if not PUBLISHER.fullmatch(publisher):
        publisher = "unnamed"
    return f"pubsub:{publisher}"


@tracing.event_entry
def intake(event: CloudEvent) -> None:
    """Admit a job another system published; answer bad ones on job-events.

    The message is the same JSON as the POST /v1/jobs body, checked as strictly
    (schemas/job-request.v1.json). A message that can never be admitted is
    acknowledged, not retried, and answered with a REJECTED event carrying the
    reason and the publisher's correlation_id.
    """
    message = PubSubMessage(event)
    rt = get_runtime()
    correlation_id = message.attributes.get("correlation_id")
    job_id = intake_job_id(message)
    try:
        if not isinstance(json.loads(message.raw), dict):
            raise ValueError("expected a JSON object")
        request = JobRequest.model_validate_json(message.raw, strict=True)
    except (ValueError, binascii.Error, ValidationError) as error:
        if isinstance(error, ValidationError):
            reason = invalid_request(error).detail
        else:
            reason = f"the message is not a JSON job request: {error}"
        telemetry.rejected("invalid_request", job_id)
        _reject(job_id, correlation_id, reason, "invalid-request")
        return
    unsafe = admission.url_problem(rt, request)
    if unsafe is not None:
        telemetry.rejected("unsafe_url", job_id)
        _reject(job_id, correlation_id, f"{unsafe[0]}: {unsafe[1]}", "unsafe-url")
        return
    try:
        result = admission.admit(rt, request, job_id=job_id, owner=intake_owner(message),
                                 correlation_id=correlation_id)
    except admission.InvalidUpload as bad:
        telemetry.rejected("invalid_image", job_id)
        _reject(job_id, correlation_id, f"image_url: {bad.message}", "invalid-image")
        return
    if isinstance(result, admission.Admitted) and not result.created and not same_request(
            result.job, request):
        # A publisher reused an idempotency key for another job: say so, keep the first.
        _reject(job_id, correlation_id, "idempotency_key was already used for another job "
                "request; use a new key for a new job", "idempotency-key-reused")
        return
    if isinstance(result, routing.Rejection):
        if result.reason is routing.RejectionReason.UNHEALTHY:
            # Every fitting backend is cooling down: a temporary state. Pub/Sub retries
            # with backoff (and dead-letters if it lasts), rather than a final refusal.
            raise TemporarilyRefused(result.detail)
        _reject(job_id, correlation_id, result.detail, result.reason.value)


class TemporarilyRefused(Exception):
    """Admission cannot take the job now but may shortly."""


def _reject(job_id: str, correlation_id: str | None, reason: str, code: str) -> None:
    rt = get_runtime()
    log(logger, logging.WARNING, f"intake message rejected: {reason}", job_id=job_id,
        correlation_id=correlation_id)
    emit_rejected(rt, job_id, correlation_id, reason, code, schema=JOB_REQUEST_SCHEMA_ID)


@tracing.event_entry
def notifier(event: CloudEvent) -> None:
    """Send a job's webhook on its terminal event (raises so Pub/Sub retries)."""
    message = PubSubMessage(event)
    try:
        payload = message.json()
    except ValueError:
        log(logger, logging.ERROR, "unreadable job event dropped", message_id=message.id)
        return
    if isinstance(payload, dict):
        webhooks.deliver(get_runtime(), payload)


@tracing.event_entry
def dead_letter(event: CloudEvent) -> None:
    message = PubSubMessage(event)
    try:
        payload = message.json()
    except ValueError:
        payload = {}
    handle_dead_letter(get_runtime(), payload if isinstance(payload, dict) else {},
                       message.attributes, message.id)


@tracing.http_entry
def watchdog(request: Request) -> Response:
    """One watchdog run (Cloud Scheduler's OIDC-authenticated POST in production; the
    local stack's timer in development): what it re-drove, as JSON."""
    if request.method != "POST":
        refused = flask.jsonify({"error": "POST runs the watchdog"})
        refused.status_code = 405
        return refused
    return flask.jsonify(watchdog_service.sweep(get_runtime()))
