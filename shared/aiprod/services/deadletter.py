"""Dead-lettered messages: a message Pub/Sub gave up on must not leave its job stuck."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from aiprod.domain import lifecycle
from aiprod.domain.job import Job
from aiprod.observability.logs import log
from aiprod.services import budget, telemetry
from aiprod.services.cancel import settle_unstoppable
from aiprod.services.messages import RenderMessage, intake_job_id
from aiprod.services.publishing import emit_rejected, emit_terminal, request_stop
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)


def handle_dead_letter(rt: Runtime, payload: dict[str, Any], attributes: dict[str, str],
                       message_id: str = "") -> None:
    source = attributes.get("CloudPubSubDeadLetterSourceSubscription", "unknown subscription")
    attempts = attributes.get("CloudPubSubDeadLetterSourceDeliveryCount", "?")
    job_id = payload.get("job_id") or attributes.get("job_id")
    telemetry.dead_lettered(source, job_id)
    if "event_id" in payload and "type" in payload:
        # A job event the notifier could not deliver: the job itself is finished.
        log(logger, logging.ERROR, "webhook delivery gave up", source=source,
            delivery_count=attempts, job_id=job_id, webhook_id=payload["event_id"])
        return
    try:
        message = RenderMessage.model_validate(payload)
    except ValidationError:
        _reject_intake(rt, payload, attributes, message_id, source, attempts)
        return
    if message.action == "cancel":
        settle_unstoppable(rt, message)
        return
    reason = f"dead-lettered from {source} after {attempts} deliveries"
    current = rt.store.get(message.job_id)
    if current is not None and message.attempt < len(current.attempts) - 1:
        # A stale copy for an attempt the job has moved past: the job is fine.
        log(logger, logging.WARNING, "stale render message dead-lettered", job_id=job_id,
            attempt=message.attempt)
        return
    if current is not None and _redrive(rt, current, message, attributes, source, attempts):
        return
    done = rt.store.mutate(str(job_id), lambda j: lifecycle.fail_job(j, reason, rt.clock()))
    if done is None:
        log(logger, logging.ERROR, "dead-lettered message for an unknown job", job_id=job_id)
        return
    job, changed = done
    log(logger, logging.ERROR, reason, job_id=job.id, changed=changed)
    for index in range(len(job.attempts)):
        budget.close(rt, job, index)  # release, or settle what the provider may have billed
    budget.release_funding(rt, job)
    request_stop(rt, job)  # a running task is stopped (and its charge settled) by its backend
    if changed:
        telemetry.ended(job)
        emit_terminal(rt, job)


def _redrive(rt: Runtime, job: Job, message: RenderMessage, attributes: dict[str, str],
             source: str, attempts: str) -> bool:
    """Capacity is never a reason to fail a job: a render message that used up its
    deliveries before its attempt ever started (every instance was busy, so Cloud Run
    answered 429 each time) goes back on its render topic, while the job is younger
    than redrive_max_age_s. True when it was put back."""
    if job.status.terminal or message.attempt < len(job.attempts):
        return False  # the attempt started: it may have rendered (and billed)
    age = (rt.clock() - job.created_at).total_seconds()
    if age > rt.settings.redrive_max_age_s:
        return False
    backend = rt.catalog.get(message.backend)
    redrives = int(attributes.get("redrives", "0") or 0) + 1
    rt.bus.publish(backend.topic, message.body(), {
        "job_id": message.job_id, "redrives": str(redrives)})
    log(logger, logging.WARNING, "render message dead-lettered before its attempt started: "
        "back on its render topic", job_id=message.job_id, backend=message.backend,
        source=source, delivery_count=attempts, redrives=redrives, job_age_s=round(age))
    return True


def _reject_intake(rt: Runtime, payload: dict[str, Any], attributes: dict[str, str],
                   message_id: str, source: str, attempts: str) -> None:
    """An intake message that kept failing (refused while every fitting backend cooled
    down, or a fault): its publisher hears job.rejected with the reason and its
    correlation_id, as for any other refusal."""
    correlation_id = attributes.get("correlation_id")
    # The dead letter is a new message: its id names the job only when the publisher
    # gave no idempotency key (then the event's correlation_id is what it matches).
    job_id = intake_job_id(attributes, message_id)
    if rt.store.get(job_id) is not None:
        # Admitted on an earlier delivery: the job runs and reports its own end.
        log(logger, logging.WARNING, "intake message dead-lettered after admission",
            job_id=job_id, source=source, delivery_count=attempts)
        return
    reason = (f"the job could not be admitted in {attempts} deliveries "
              f"(dead-lettered from {source}); publish it again later")
    log(logger, logging.ERROR, "intake message dead-lettered: job.rejected", source=source,
        delivery_count=attempts, job_id=job_id, correlation_id=correlation_id)
    emit_rejected(rt, job_id, correlation_id, reason, "dead-lettered")
