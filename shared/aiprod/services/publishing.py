"""Hand-offs to other functions and events to the outside world."""

from __future__ import annotations

import logging
from typing import Any

from aiprod.domain.budget import DayFigures
from aiprod.domain.events import TERMINAL_EVENTS, EventType, JobEvent, attributes, job_event
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
    _publish_job_event(rt, job_event(job, event_type, attempt=attempt, public_job=body))


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
    _publish_job_event(rt, event, code=code, **extra)


def emit_budget_threshold(rt: Runtime, figures: DayFigures) -> None:
    """Announce that the day's committed spend crossed its warning or critical level
    (the caller makes sure it is announced once per day and level)."""
    level = figures.threshold.value
    event_type, event_id = f"budget.{level}", f"budget:{figures.day}:{level}"
    _publish_event(rt, {"event_id": event_id, "type": event_type, **figures.public()},
                   attributes(event_type, event_id))


def _publish_job_event(rt: Runtime, event: JobEvent, **extra: str) -> None:
    _publish_event(rt, event.model_dump(mode="json", by_alias=True) | extra,
                   attributes(event.type.value, event.event_id, job_id=event.job_id,
                              status=event.status.value, correlation_id=event.correlation_id))


def _publish_event(rt: Runtime, body: dict[str, Any], event_attributes: dict[str, str]) -> None:
    """The one path to job-events."""
    rt.bus.publish(rt.settings.events_topic, body, event_attributes)
