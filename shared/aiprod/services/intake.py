"""Intake: a job another system published on the video-jobs topic.

The message is the same JSON as the POST /v1/jobs body, checked as strictly
(schemas/job-request.v1.json). The topic's IAM is the gate (only granted
publishers get here), so a message carries no API key: its `publisher`
attribute names the system, `correlation_id` is echoed on every event and
`idempotency_key` makes republishing safe. A message that can never be
admitted is acknowledged, not retried, and answered with job.rejected on
job-events carrying the reason, a stable code and the correlation_id.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from aiprod.domain import routing
from aiprod.domain.job import JOB_REQUEST_SCHEMA_ID, JobRequest, same_request
from aiprod.domain.problems import invalid_request
from aiprod.observability.logs import log
from aiprod.services import admission, messages, telemetry
from aiprod.services.publishing import emit_rejected
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)

PUBLISHER = re.compile(r"[A-Za-z0-9._-]{1,64}")


class TemporarilyRefused(Exception):
    """Admission cannot take the job now but may shortly: every fitting backend is
    cooling down. Pub/Sub redelivers with backoff (and dead-letters if it lasts)."""


@dataclass(frozen=True)
class IntakeMessage:
    """A message on the video-jobs topic, as Pub/Sub delivers it."""

    id: str
    attributes: Mapping[str, str]
    data: str | bytes  # base64, as in Pub/Sub's JSON form of a message

    @property
    def job_id(self) -> str:
        """Stable per message (or per publisher idempotency key), so redelivery admits once."""
        return messages.intake_job_id(dict(self.attributes), self.id)

    @property
    def owner(self) -> str:
        """Who published it, for attribution: `pubsub:<publisher>`."""
        publisher = self.attributes.get("publisher", "")
        if not PUBLISHER.fullmatch(publisher):
            publisher = "unnamed"
        return f"pubsub:{publisher}"

    @property
    def correlation_id(self) -> str | None:
        return self.attributes.get("correlation_id")


@dataclass(frozen=True)
class Rejected:
    """Why a message will never become a job: `code` is stable, `reason` for a person."""

    code: str
    reason: str


def handle(rt: Runtime, message: IntakeMessage) -> admission.Admitted | Rejected:
    """Admit the job a message asks for, or answer on job-events why it never will.

    A redelivered message (or one republished with the same idempotency_key and
    request) finds the job admitted the first time. Raises TemporarilyRefused
    while every fitting backend is cooling down; a store or bus fault propagates,
    so Pub/Sub redelivers."""
    decision = _decide(rt, message)
    if isinstance(decision, Rejected):
        log(logger, logging.WARNING, f"intake message rejected: {decision.reason}",
            job_id=message.job_id, correlation_id=message.correlation_id)
        emit_rejected(rt, message.job_id, message.correlation_id, decision.reason,
                      decision.code, schema=JOB_REQUEST_SCHEMA_ID)
    return decision


def parse(data: str | bytes) -> JobRequest | Rejected:
    """The job request a message's base64 data carries, validated as strictly as the
    POST /v1/jobs body, or why it is not one."""
    try:
        raw = base64.b64decode(data, validate=True)
        if not isinstance(json.loads(raw), dict):
            raise ValueError("expected a JSON object")
        return JobRequest.model_validate_json(raw, strict=True)
    except ValidationError as error:
        return Rejected("invalid-request", invalid_request(error).detail)
    except ValueError as error:  # bad base64 (binascii.Error), bad JSON or UTF-8
        return Rejected("invalid-request", f"the message is not a JSON job request: {error}")


def _decide(rt: Runtime, message: IntakeMessage) -> admission.Admitted | Rejected:
    job_id = message.job_id
    request = parse(message.data)
    if isinstance(request, Rejected):
        telemetry.rejected("invalid_request", job_id)
        return request
    unsafe = admission.url_problem(rt, request)
    if unsafe is not None:
        telemetry.rejected("unsafe_url", job_id)
        return Rejected("unsafe-url", f"{unsafe[0]}: {unsafe[1]}")
    try:
        result = admission.admit(rt, request, job_id=job_id, owner=message.owner,
                                 correlation_id=message.correlation_id)
    except admission.InvalidUpload as bad:
        telemetry.rejected("invalid_image", job_id)
        return Rejected("invalid-image", f"image_url: {bad.message}")
    if isinstance(result, routing.Rejection):  # admission counted it
        if result.reason is routing.RejectionReason.UNHEALTHY:
            # A temporary state: retried with backoff rather than refused for good.
            raise TemporarilyRefused(result.detail)
        return Rejected(result.reason.value, result.detail)
    if not result.created and not same_request(result.job, request):
        # A publisher reused an idempotency key for another job: say so, keep the first.
        return Rejected("idempotency-key-reused", "idempotency_key was already used for "
                        "another job request; use a new key for a new job")
    return result
