"""Dead-lettered messages: a message Pub/Sub gave up on must not leave its job stuck."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from aiprod.domain import lifecycle
from aiprod.logs import log
from aiprod.runtime import Runtime
from aiprod.services import budget, telemetry
from aiprod.services.cancel import settle_unstoppable
from aiprod.services.messages import RenderMessage
from aiprod.services.publishing import emit_terminal, request_stop

logger = logging.getLogger(__name__)


def handle_dead_letter(rt: Runtime, payload: dict[str, Any], attributes: dict[str, str]) -> None:
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
        # An intake message that kept failing (its job may never have been stored).
        log(logger, logging.ERROR, "intake message dead-lettered", source=source,
            delivery_count=attempts, job_id=job_id,
            correlation_id=attributes.get("correlation_id"))
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
    done = rt.store.mutate(str(job_id), lambda j: lifecycle.fail_job(j, reason, rt.clock()))
    if done is None:
        log(logger, logging.ERROR, "dead-lettered message for an unknown job", job_id=job_id)
        return
    job, changed = done
    log(logger, logging.ERROR, reason, job_id=job.id, changed=changed)
    for index in range(len(job.attempts)):
        budget.close(rt, job, index)  # release, or settle what the provider may have billed
    request_stop(rt, job)  # a running task is stopped (and its charge settled) by its backend
    if changed:
        telemetry.ended(job)
        emit_terminal(rt, job)
