"""Cloud Functions entry points: a table of contents, nothing more.

Deployed once per entry point (and `render` once per backend, with BACKEND set).
Pub/Sub-driven functions are HTTP-triggered with Terraform-owned push
subscriptions ("direct Pub/Sub triggers"); functions-framework turns the raw
push body into a CloudEvent.
"""

import functions_framework
from cloudevents.http import CloudEvent
from flask import Request, Response
from werkzeug.exceptions import HTTPException

from aiprod.http import entrypoints


@functions_framework.errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    """Requests the framework cannot route still get problem+json."""
    return entrypoints.http_error(error)


@functions_framework.http
def api(request: Request) -> Response:
    """REST API: /v1/jobs, /v1/quote, /v1/backends, /v1/budget, /v1/openapi.json, /healthz."""
    return entrypoints.api(request)


@functions_framework.cloud_event
def intake(event: CloudEvent) -> None:
    """Jobs published by other systems on the video-jobs topic."""
    entrypoints.intake(event)


@functions_framework.cloud_event
def render(event: CloudEvent) -> None:
    """One attempt of a job on this deployment's backend (render-<backend> topic)."""
    entrypoints.render(event)


@functions_framework.cloud_event
def dead_letter(event: CloudEvent) -> None:
    """Messages Pub/Sub gave up on: end their jobs cleanly."""
    entrypoints.dead_letter(event)


@functions_framework.cloud_event
def notifier(event: CloudEvent) -> None:
    """Signed webhooks for jobs that reach a terminal state (job-events topic)."""
    entrypoints.notifier(event)


@functions_framework.http
def watchdog(request: Request) -> Response:
    """Re-drives jobs that stopped moving (Cloud Scheduler, every few minutes)."""
    return entrypoints.watchdog(request)
