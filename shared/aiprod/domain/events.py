"""Events published on job-events for every state change of a job."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from aiprod.domain.job import AttemptError, Job, JobStatus


class EventType(StrEnum):
    QUEUED = "job.queued"
    REJECTED = "job.rejected"
    ATTEMPT_STARTED = "job.attempt_started"
    ATTEMPT_FAILED = "job.attempt_failed"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"


TERMINAL_EVENTS = {
    JobStatus.SUCCEEDED: EventType.SUCCEEDED,
    JobStatus.FAILED: EventType.FAILED,
    JobStatus.CANCELLED: EventType.CANCELLED,
    JobStatus.REJECTED: EventType.REJECTED,
}


class JobEvent(BaseModel):
    """One state change. `event_id` is stable across redeliveries so receivers can dedupe."""

    event_id: str
    type: EventType
    job_id: str
    status: JobStatus
    at: dt.datetime
    backend: str | None = None
    attempt: int | None = None
    error: AttemptError | None = None
    reason: str = ""
    correlation_id: str | None = None
    job: dict[str, Any] | None = None  # the public job, on terminal events


def attributes(event_type: str, event_id: str, *, job_id: str | None = None,
               status: str | None = None, correlation_id: str | None = None) -> dict[str, str]:
    """The Pub/Sub attributes of an event on job-events, what subscribers filter and
    dedupe on without reading the body: its type and id, and for a job's event the
    job id, its status and the publisher's correlation_id when there is one."""
    labels = {"job_id": job_id, "type": event_type, "status": status, "event_id": event_id,
              "correlation_id": correlation_id}
    return {name: value for name, value in labels.items() if value}


def job_event(job: Job, event_type: EventType, *, attempt: int | None = None,
              public_job: dict[str, Any] | None = None) -> JobEvent:
    """The event for a change that just happened to `job` (ids derive from the change)."""
    backend = error = None
    if attempt is not None:
        backend = job.attempts[attempt].backend
        error = job.attempts[attempt].error
    suffix = f":{attempt}" if attempt is not None else ""
    return JobEvent(event_id=f"{job.id}:{event_type.value}{suffix}", type=event_type,
                    job_id=job.id, status=job.status, at=job.updated_at, backend=backend,
                    attempt=attempt, error=error, reason=job.status_reason,
                    correlation_id=job.correlation_id, job=public_job)
