"""Hand-offs to other functions and events to the outside world."""

from __future__ import annotations

import logging

from aiprod.domain.events import TERMINAL_EVENTS, EventType, JobEvent, job_event
from aiprod.domain.job import Job, JobStatus
from aiprod.domain.views import public_job
from aiprod.observability.logs import log
from aiprod.services.messages import RenderMessage
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)


def dispatch(rt: Runtime, job: Job, backend: str, attempt: int) -> None:
    """Send the job to a backend's render function."""
    message = RenderMessage(job_id=job.id, backend=backend, attempt=attempt)
    topic = rt.catalog.get(backend).topic
    rt.bus.publish(topic, message.body(), {"job_id": job.id})
    log(logger, logging.INFO, f"job dispatched to {backend}", job_id=job.id,
        backend=backend, attempt=attempt)


def request_stop(rt: Runtime, job: Job) -> None:
    """Ask each backend whose task an outside ending left unsettled to stop it and
    settle its charge (idempotent there, so asking twice is harmless)."""
    for index, attempt in enumerate(job.attempts):
        if attempt.cost_pending:
            message = RenderMessage(job_id=job.id, backend=attempt.backend, attempt=index,
                                    action="cancel")
            rt.bus.publish(rt.catalog.get(attempt.backend).topic, message.body(),
                           {"job_id": job.id, "action": "cancel"})
            log(logger, logging.INFO, f"cancel sent to {attempt.backend}", job_id=job.id,
                backend=attempt.backend, attempt=index,
                provider_task_id=attempt.provider_task_id)


def emit(rt: Runtime, job: Job, event_type: EventType, attempt: int | None = None) -> None:
    """Publish a job event; terminal events carry the whole public job."""
    body = None
    if event_type in TERMINAL_EVENTS.values():
        body = public_job(job)
    event = job_event(job, event_type, attempt=attempt, public_job=body)
    rt.bus.publish(rt.settings.events_topic, event.model_dump(mode="json", by_alias=True),
                   {"job_id": job.id, "type": event.type.value, "status": job.status.value,
                    "event_id": event.event_id})


def emit_terminal(rt: Runtime, job: Job) -> None:
    emit(rt, job, TERMINAL_EVENTS[job.status])
    if job.reuse_key is not None:  # every end is announced here: its followers end too
        from aiprod.services import reuse  # reuse publishes through this module

        reuse.leader_ended(rt, job)


def emit_rejected(rt: Runtime, job_id: str, correlation_id: str | None, reason: str,
                  code: str, **extra: str) -> None:
    """Answer an intake message that will never become a job: job.rejected on
    job-events, with the reason, a stable code and the publisher's correlation_id."""
    event = JobEvent(event_id=f"{job_id}:{EventType.REJECTED.value}", type=EventType.REJECTED,
                     job_id=job_id, status=JobStatus.REJECTED, at=rt.clock(), reason=reason,
                     correlation_id=correlation_id)
    rt.bus.publish(rt.settings.events_topic,
                   event.model_dump(mode="json") | {"code": code, **extra},
                   {"job_id": job_id, "type": event.type.value, "status": "REJECTED",
                    "event_id": event.event_id, **({"correlation_id": correlation_id}
                                                   if correlation_id else {})})
