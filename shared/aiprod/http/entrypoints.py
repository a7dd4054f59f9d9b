"""What each Cloud Function entry point does, minus the functions-framework
decorators (those stay in functions/main.py). Parses the trigger's input and
calls one service."""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import json
import logging
from typing import Any

import flask
from cloudevents.http import CloudEvent
from flask import Request, Response
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, TooManyRequests

from aiprod.http import api as rest
from aiprod.observability import logs, tracing
from aiprod.observability.logs import log
from aiprod.services import intake as intake_service
from aiprod.services import messages, webhooks
from aiprod.services import watchdog as watchdog_service
from aiprod.services.cancel import stop_task
from aiprod.services.deadletter import handle_dead_letter
from aiprod.services.messages import RenderMessage
from aiprod.services.render import BackendBusy, handle_render
from aiprod.wiring.runtime import get_runtime

logger = logging.getLogger(__name__)
logs.configure()

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's default, held fixed


def return_large_buffers() -> bool:
    """Make the process give large buffers (an upload's 27 MB of text, an inline
    video) back to the system when they are freed, so a bound on how many are live
    at once (uploads_at_once, output_checks_at_once) bounds the process's memory.

    glibc serves an allocation over its mmap threshold with a mapping of its own,
    unmapped on free, but raises the threshold (up to 32 MiB) each time such a block
    is freed; later ones then come from each thread's arena, which keeps them. With
    8 request threads an api process kept 8 uploads' peak although 3 at most were
    live (bench/uploads.py: 437 MiB over its resting size, against 143 MiB with the
    threshold fixed). Setting the threshold disables the adjustment:
    https://man7.org/linux/man-pages/man3/mallopt.3.html . False where the C library
    is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


return_large_buffers()


class PubSubMessage:
    """The Pub/Sub message inside a CloudEvent (direct push bodies are converted
    to CloudEvents by functions-framework)."""

    def __init__(self, event: CloudEvent) -> None:
        message: dict[str, Any] = (event.data or {}).get("message", {})
        self.id: str = message.get("messageId") or message.get("message_id") or event["id"]
        self.attributes: dict[str, str] = message.get("attributes") or {}
        self.data: str | bytes = message.get("data") or b""  # base64

    @property
    def raw(self) -> bytes:
        """The payload; raises binascii.Error (a ValueError) for bad base64."""
        return base64.b64decode(self.data, validate=True)

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


@tracing.event_entry
def intake(event: CloudEvent) -> None:
    """Admit a job another system published; answer bad ones on job-events
    (aiprod.services.intake). Raises TemporarilyRefused so Pub/Sub retries."""
    message = PubSubMessage(event)
    intake_service.handle(get_runtime(), intake_service.IntakeMessage(
        message.id, message.attributes, message.data))


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
