"""Cancelling a job: stop paying for it now, wherever it is."""

from __future__ import annotations

import logging

from aiprod.domain import lifecycle
from aiprod.domain.job import Job
from aiprod.logs import log
from aiprod.runtime import Runtime
from aiprod.services import budget, telemetry
from aiprod.services.publishing import emit_terminal

logger = logging.getLogger(__name__)


class NotCancellable(Exception):
    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} already ended {job.status.value}")
        self.job = job


def cancel_job(rt: Runtime, job_id: str) -> Job | None:
    """Cancel at the provider (best effort), release the reservation, end the job
    CANCELLED. An in-flight render notices on its next poll and records nothing
    more. None if there is no such job; NotCancellable if it already ended."""
    done = rt.store.mutate(job_id, lambda j: lifecycle.cancel(j, "cancelled by the caller",
                                                              rt.clock()))
    if done is None:
        return None
    job, outcome = done
    if not outcome.changed:
        # Closing is idempotent: a cancel whose first try died before closing the
        # ledger (the API is not retried for us) leaves nothing held when repeated.
        for index in range(len(job.attempts)):
            budget.close(rt, job, index)
        raise NotCancellable(job)
    if outcome.open_attempt is not None:
        attempt = job.attempts[outcome.open_attempt]
        if attempt.provider_task_id:
            rt.provider(attempt.backend).cancel(attempt.provider_task_id)
        budget.close(rt, job, outcome.open_attempt)
    log(logger, logging.INFO, "job cancelled", job_id=job.id)
    telemetry.ended(job)
    emit_terminal(rt, job)
    return job
