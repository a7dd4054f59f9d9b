"""Dead-lettered messages: a message Pub/Sub gave up on must not leave its job stuck."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pydantic import ValidationError

from aiprod.domain import deadletter as policy
from aiprod.domain import lifecycle
from aiprod.domain.deadletter import DeadLetterAction
from aiprod.domain.job import Job
from aiprod.observability.logs import log
from aiprod.services import budget, render, telemetry
from aiprod.services.cancel import settle_unstoppable
from aiprod.services.messages import RenderMessage, intake_job_id
from aiprod.services.publishing import emit_rejected, emit_terminal, request_stop
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)

# Message attribute: how many times this render message was re-driven from the dead
# letter while its attempt had started (capped: policy.MAX_STARTED_REDRIVES).
STARTED_REDRIVES = "started_redrives"


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
    now = rt.clock()
    current = rt.store.get(message.job_id)
    started_redrives = _count(attributes, STARTED_REDRIVES)
    verdict = policy.decide(current, message.attempt, now,
                            dt.timedelta(seconds=rt.settings.redrive_max_age_s),
                            started_redrives, rt.settings.fallback_on_refusal)
    fields = {"job_id": job_id, "backend": message.backend, "attempt": message.attempt,
              "source": source, "delivery_count": attempts, "reason": verdict.reason}
    if verdict.action is DeadLetterAction.IGNORE:
        # A duplicate of a render that is running, or a copy the job moved past: the
        # job is fine, and failing it would stop a render capacity merely delayed.
        log(logger, logging.WARNING, "render message dead-lettered: the job is left alone",
            **fields)
        return
    if verdict.action is DeadLetterAction.REDRIVE:
        assert current is not None
        assert verdict.backend is not None
        assert verdict.attempt is not None
        _redrive(rt, current, RenderMessage(job_id=message.job_id, backend=verdict.backend,
                                            attempt=verdict.attempt),
                 attributes, verdict.started, fields)
        return
    if verdict.action is DeadLetterAction.FOLLOW_UP:
        assert current is not None
        assert verdict.attempt is not None
        log(logger, logging.WARNING, "render message dead-lettered after its attempt ended: "
            "the job is handed on", **fields)
        render.follow_up(rt, current, verdict.attempt)
        return
    _end(rt, message, f"dead-lettered from {source} after {attempts} deliveries "
         f"({verdict.reason})", now, started_redrives)


def _count(attributes: dict[str, str], name: str) -> int:
    try:
        return max(0, int(attributes.get(name, "0") or 0))
    except ValueError:
        return 0


def _redrive(rt: Runtime, job: Job, message: RenderMessage, attributes: dict[str, str],
             started: bool, fields: dict[str, object]) -> None:
    """Put the attempt's render message back on its render topic: the render claim
    takes the attempt over (or makes it, when it never started) and resumes the
    checkpointed task, so nothing renders twice. The attributes count the re-drives,
    those of a started attempt apart (they are capped)."""
    redrives = _count(attributes, "redrives") + 1
    started_redrives = _count(attributes, STARTED_REDRIVES) + (1 if started else 0)
    rt.bus.publish(rt.catalog.get(message.backend).topic, message.body(), {
        "job_id": message.job_id, "redrives": str(redrives),
        STARTED_REDRIVES: str(started_redrives)})
    age = (rt.clock() - job.created_at).total_seconds()
    log(logger, logging.WARNING, "render message dead-lettered: back on its render topic",
        **(fields | {"backend": message.backend, "attempt": message.attempt,
                     "started": started, "redrives": redrives,
                     "started_redrives": started_redrives, "job_age_s": round(age)}))


def _end(rt: Runtime, message: RenderMessage, reason: str, now: dt.datetime,
         started_redrives: int) -> None:
    """End the job FAILED (unless it moved meanwhile), close every hold (release, or
    settle what the provider may have billed) and have its backend stop a running task."""
    max_age = dt.timedelta(seconds=rt.settings.redrive_max_age_s)

    def end(fresh: Job) -> bool:
        if policy.decide(fresh, message.attempt, now, max_age, started_redrives,
                         rt.settings.fallback_on_refusal).action is not DeadLetterAction.END:
            return False  # it moved meanwhile (claimed, handed on): not ours to end
        return lifecycle.fail_job(fresh, reason, rt.clock())

    done = rt.store.mutate(message.job_id, end)
    if done is None:
        log(logger, logging.ERROR, "dead-lettered message for an unknown job",
            job_id=message.job_id)
        return
    job, changed = done
    if not job.status.terminal:
        log(logger, logging.WARNING, "dead-lettered job moved meanwhile: left alone",
            job_id=message.job_id)
        return
    log(logger, logging.ERROR, reason, job_id=job.id, changed=changed)
    budget.close_all(rt, job)
    request_stop(rt, job)  # a running task is stopped (and its charge settled) by its backend
    if changed:
        telemetry.ended(job)
        emit_terminal(rt, job)


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
