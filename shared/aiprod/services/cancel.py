"""Cancelling a job: stop paying for it now, wherever it is.

The API ends the job; the provider task is stopped by the backend's render
deployment, the only function holding that provider's credentials (Secret
Manager secrets and Vertex AI access go to render functions alone, see
terraform/topology.tf). It is told through its own topic (`stop_task` on an
`action: cancel` render message), and an in-flight render of the attempt does
the same when it notices the job ended; whichever comes first settles what the
stopped task cost, the other finds nothing left to do.
"""

from __future__ import annotations

import logging

from aiprod.adapters.providers.base import ProviderError, TaskState, TaskStatus
from aiprod.domain import lifecycle
from aiprod.domain.job import Job
from aiprod.observability.logs import log
from aiprod.services import budget, telemetry
from aiprod.services.messages import RenderMessage
from aiprod.services.publishing import emit_terminal, request_stop
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)

# Polls after the cancel call for the task to reach a terminal state (and its charge).
SETTLE_POLLS = 4


class NotCancellable(Exception):
    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} already ended {job.status.value}")
        self.job = job


def cancel_job(rt: Runtime, job_id: str) -> Job | None:
    """End the job CANCELLED, release what nothing was spent on, and have the backend
    stop its provider task (its hold is settled there, at what the task cost). None if
    there is no such job; NotCancellable if it already ended."""
    done = rt.store.mutate(job_id, lambda j: lifecycle.cancel(j, "cancelled by the caller",
                                                              rt.clock()))
    if done is None:
        return None
    job, outcome = done
    if not outcome.changed:
        # Closing and asking are idempotent: a cancel whose first try died before
        # either (the API is not retried for us) leaves nothing behind when repeated.
        budget.close_all(rt, job)
        request_stop(rt, job)
        raise NotCancellable(job)
    if outcome.open_attempt is not None:
        budget.close(rt, job, outcome.open_attempt)
    budget.release_funding(rt, job)
    request_stop(rt, job)
    log(logger, logging.INFO, "job cancelled", job_id=job.id)
    telemetry.ended(job)
    emit_terminal(rt, job)
    return job


def stop_task(rt: Runtime, message: RenderMessage) -> None:
    """In the render deployment of `message.backend`: stop the attempt's provider task
    if the attempt was ended from outside, settle what the provider says it cost, and
    close its hold. Safe to repeat and to race with the in-flight render."""
    job = rt.store.get(message.job_id)
    if job is None or message.attempt >= len(job.attempts):
        log(logger, logging.ERROR, "cancel message for an unknown attempt",
            job_id=message.job_id, attempt=message.attempt)
        return
    attempt = job.attempts[message.attempt]
    if attempt.cost_pending and attempt.provider_task_id:
        status = _stop(rt, attempt.backend, attempt.provider_task_id)
        charge = lifecycle.stopped_task_charge(
            status.state.value if status else None, status.cost_usd if status else None,
            attempt.estimated_cost_usd)
        _settle(rt, job.id, message.attempt, charge, logging.INFO, "stopped task settled",
                backend=attempt.backend, provider_task_id=attempt.provider_task_id,
                final_state=status.state.value if status else "unknown",
                estimated_cost_usd=attempt.estimated_cost_usd)
        return
    budget.close(rt, job, message.attempt)


def settle_unstoppable(rt: Runtime, message: RenderMessage) -> None:
    """A cancel message Pub/Sub gave up on: the backend never read the task's charge,
    so count the estimate (the conservative rule) and close the hold."""
    job = rt.store.get(message.job_id)
    if job is None or message.attempt >= len(job.attempts):
        return
    _settle(rt, job.id, message.attempt, job.attempts[message.attempt].estimated_cost_usd,
            logging.ERROR, "cancel never reached the backend: counted as charged",
            backend=message.backend, attempt=message.attempt)


def _settle(rt: Runtime, job_id: str, index: int, charge_usd: float, level: int,
            announce: str, **fields: object) -> None:
    """Record a stopped task's charge once (say so the one time it changes the job),
    then close the attempt's hold at it."""
    settled = rt.store.mutate(job_id, lambda j: lifecycle.settle_stopped_task(
        j, index, charge_usd, rt.clock()))
    if settled is None:
        return
    job, changed = settled
    if changed:
        log(logger, level, announce, job_id=job.id, cost_usd=charge_usd, **fields)
    budget.close(rt, job, index)


def _without_output(status: TaskStatus) -> TaskStatus:
    """A stopped task's status, its inline video (the file a Veo poll wrote) removed:
    nothing here keeps the output, and /tmp is memory on Cloud Functions."""
    if status.output_file is not None:
        status.output_file.unlink(missing_ok=True)
    return status


def _stop(rt: Runtime, backend: str, task_id: str) -> TaskStatus | None:
    """Cancel the task unless it already ended, then read its final state (and the
    charge, where the provider reports one). None if it cannot be read."""
    provider = rt.provider(backend)
    try:
        status = _without_output(provider.poll(task_id))
        if status.state is not TaskState.RUNNING:
            return status  # ended on its own: a cancel now would only delete it (Runway)
        provider.cancel(task_id)
        deadline = rt.monotonic() + SETTLE_POLLS * rt.settings.poll_interval_s
        while True:
            status = _without_output(provider.poll(task_id))
            if status.state is not TaskState.RUNNING or rt.monotonic() >= deadline:
                return status
            rt.sleep(rt.settings.poll_interval_s)
    except ProviderError as error:
        log(logger, logging.WARNING, f"stopped task could not be read: {error}",
            backend=backend, provider_task_id=task_id)
        return None
