"""The job state machine: which attempt a render message may run, and how an
attempt's end moves the job. Pure functions over a Job; the render service
applies them inside a Firestore transaction."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from aiprod.domain.budget import ledger_day
from aiprod.domain.job import (
    Attempt,
    AttemptError,
    AttemptStatus,
    ErrorClass,
    Job,
    JobStatus,
    Output,
)


class ClaimKind(StrEnum):
    CREATE = "create"            # this delivery owns a new attempt: call the provider
    RESUME = "resume"            # the task exists and this delivery holds the lease: poll it
    FINISHED = "finished"        # the attempt already ended: nothing to render
    DUPLICATE = "duplicate"      # a live delivery holds the lease: this copy stands back
    UNKNOWN_OUTCOME = "unknown"  # a create call was cut off: the task may exist
    STALE = "stale"              # the job moved on: this message is obsolete
    JOB_DONE = "job_done"        # the job is terminal

    @property
    def writes(self) -> bool:
        """Whether acting on this claim changes the job (and so needs a transaction)."""
        return self in (ClaimKind.CREATE, ClaimKind.RESUME, ClaimKind.UNKNOWN_OUTCOME)


@dataclass(frozen=True)
class Claim:
    kind: ClaimKind
    attempt_index: int
    task_id: str | None = None


def next_backend(job: Job) -> str | None:
    """The backend after the last one tried, in plan order."""
    if not job.attempts:
        return job.plan[0]
    position = job.plan.index(job.attempts[-1].backend)
    return job.plan[position + 1] if position + 1 < len(job.plan) else None


def claim_attempt(job: Job, backend: str, index: int, delivery_id: str, now: dt.datetime,
                  lease: dt.timedelta, estimated_cost_usd: float) -> Claim:
    """Decide what the delivery of render message (backend, index) may do.

    One delivery at a time holds an attempt's lease. A copy of the message
    (a duplicate publish) stands back while the lease is live: the holder's own
    message stays unacknowledged until it hands off, so if the holder dies,
    Pub/Sub redelivers that message and it takes over. A job is never rendered
    twice, and never polled by two invocations at once.
    """
    if job.status.terminal:
        return Claim(ClaimKind.JOB_DONE, index)
    if index < len(job.attempts):
        attempt = job.attempts[index]
        if attempt.backend != backend:
            return Claim(ClaimKind.STALE, index)
        if attempt.status.terminal:
            return Claim(ClaimKind.FINISHED, index)
        holder = attempt.delivery_id == delivery_id
        expired = attempt.lease_expires_at is None or now >= attempt.lease_expires_at
        if not holder and not expired:
            return Claim(ClaimKind.DUPLICATE, index)
        # The holder died (its message came back) or its lease ran out: take over.
        attempt.delivery_id = delivery_id
        attempt.lease_expires_at = now + lease
        job.updated_at = now
        if attempt.status is AttemptStatus.CREATING:
            return Claim(ClaimKind.UNKNOWN_OUTCOME, index)
        return Claim(ClaimKind.RESUME, index, attempt.provider_task_id)
    if index > len(job.attempts) or next_backend(job) != backend:
        return Claim(ClaimKind.STALE, index)
    day, hold = ledger_day(now), reservation_id(job.id, index, delivery_id, now)
    if index == 0 and job.funding is not None:  # admission's hold is this attempt's
        day, hold = job.funding.day, job.funding.reservation_id
        estimated_cost_usd = job.funding.amount_usd
    job.attempts.append(Attempt(backend=backend, status=AttemptStatus.CREATING,
                                delivery_id=delivery_id, lease_expires_at=now + lease,
                                started_at=now, estimated_cost_usd=estimated_cost_usd,
                                reservation_day=day, reservation_id=hold))
    job.status = JobStatus.RENDERING
    job.updated_at = now
    return Claim(ClaimKind.CREATE, index)


def reservation_id(job_id: str, index: int, delivery_id: str, now: dt.datetime) -> str:
    """Unique per claim. Not per delivery alone: a claim handed back (abandon_claim)
    is made again by the redelivery of the same message, with the same message id,
    and must not meet the hold it released (the ledger would call that spent)."""
    return f"{job_id}-{index}-{delivery_id}-{now.strftime('%Y%m%dT%H%M%S%f')}"


def funding_unused(job: Job) -> bool:
    """Whether admission's hold is held for a first attempt that never claimed it: the
    job's ender releases it (a claimed one is closed with its attempt)."""
    return job.funding is not None and not any(
        a.reservation_id == job.funding.reservation_id for a in job.attempts)


def uses_funding(job: Job, index: int) -> bool:
    """Whether attempt `index` holds admission's money (kept when its claim is handed back:
    the redelivery claims it again)."""
    return (job.funding is not None and index < len(job.attempts)
            and job.attempts[index].reservation_id == job.funding.reservation_id)


def abandon_claim(job: Job, index: int) -> bool:
    """Undo a CREATE claim that failed before calling the provider."""
    if index != len(job.attempts) - 1 or job.attempts[index].status is not AttemptStatus.CREATING:
        return False
    job.attempts.pop()
    if not job.attempts:
        job.status = JobStatus.QUEUED
    return True


def release_lease(job: Job, index: int, now: dt.datetime) -> bool:
    """Let the next delivery (a continuation) take the attempt over at once."""
    attempt = job.attempts[index]
    if attempt.status.terminal:
        return False
    attempt.lease_expires_at = now
    job.updated_at = now
    return True


def mark_unknown(job: Job, index: int, error: AttemptError, now: dt.datetime) -> bool:
    """A create call's outcome is unknown: keep the attempt (and its reservation)
    open until a lookup or the provider's own timeout settles it."""
    attempt = job.attempts[index]
    if attempt.status is not AttemptStatus.CREATING:
        return False
    attempt.status = AttemptStatus.UNKNOWN
    attempt.error = error
    job.updated_at = now
    return True


def record_task(job: Job, index: int, task_id: str, now: dt.datetime) -> bool:
    """Checkpoint the provider's task id before polling starts."""
    attempt = job.attempts[index]
    if attempt.status not in (AttemptStatus.CREATING, AttemptStatus.UNKNOWN):
        return False
    attempt.error = None
    attempt.provider_task_id = task_id
    attempt.status = AttemptStatus.RUNNING
    job.updated_at = now
    return True


def succeed(job: Job, index: int, output: Output, cost_usd: float, quality: float,
            now: dt.datetime) -> bool:
    """End the job with this attempt's output; False if the attempt had already ended."""
    attempt = job.attempts[index]
    if attempt.status.terminal or job.status.terminal:
        return False
    attempt.status = AttemptStatus.SUCCEEDED
    attempt.ended_at = now
    attempt.cost_usd = cost_usd
    job.status = JobStatus.SUCCEEDED
    job.output = output
    _total_cost(job)
    job.quality_score = quality
    job.updated_at = now
    return True


def falls_back(error_class: ErrorClass, fallback_on_refusal: bool) -> bool:
    """Whether another backend should try after an attempt failed this way.

    Invalid input fails the same everywhere; a refused prompt is refused unless
    the operator chose otherwise. Everything else is the backend's problem.
    """
    if error_class is ErrorClass.INVALID_INPUT:
        return False
    if error_class is ErrorClass.CONTENT_REFUSED:
        return fallback_on_refusal
    return True


@dataclass(frozen=True)
class FailureOutcome:
    changed: bool              # False: the attempt had already ended (a redelivery)
    next_backend: str | None   # where the job goes next; None: the job failed


def fail_attempt(job: Job, index: int, error: AttemptError, now: dt.datetime,
                 fallback_on_refusal: bool = False,
                 status: AttemptStatus = AttemptStatus.FAILED,
                 cost_usd: float = 0.0) -> FailureOutcome:
    """End an attempt without output, and move the job to its next backend or end it.

    `cost_usd` is what the provider charged for it anyway (a rendered video that
    failed our check); refusals and failed renders cost nothing."""
    attempt = job.attempts[index]
    if attempt.status.terminal or job.status.terminal:
        return FailureOutcome(False, None)
    attempt.status = status
    attempt.ended_at = now
    attempt.error = error
    attempt.cost_usd = cost_usd
    _total_cost(job)
    job.updated_at = now
    following = next_backend(job) if falls_back(error.error_class, fallback_on_refusal) else None
    if following is None:
        job.status = JobStatus.FAILED
        tried = "; ".join(
            f"{a.backend}: {a.error.error_class.value} {a.error.code}" for a in job.attempts
            if a.error is not None)
        job.status_reason = f"no backend rendered the job ({tried})"
    return FailureOutcome(True, following)


@dataclass(frozen=True)
class Cancellation:
    changed: bool
    open_attempt: int | None  # the attempt whose provider task should be stopped


def _end_open_attempt(attempt: Attempt, status: AttemptStatus, now: dt.datetime,
                      error: AttemptError | None = None) -> None:
    """End an attempt from outside its render. A provider task that may exist may
    have been billed: count its estimate, budget safety first. Where the task is
    known, its charge is settled later from what the provider reports
    (`settle_stopped_task`); until then the estimate stays held."""
    if attempt.provider_task_id or attempt.status in (AttemptStatus.UNKNOWN,
                                                      AttemptStatus.CREATING):
        attempt.cost_usd = attempt.estimated_cost_usd
    attempt.cost_pending = bool(attempt.provider_task_id)
    attempt.status = status
    attempt.ended_at = now
    if error is not None:
        attempt.error = error


def _total_cost(job: Job) -> None:
    job.cost_usd = round(sum(a.cost_usd for a in job.attempts), 6)


def cancel(job: Job, reason: str, now: dt.datetime) -> Cancellation:
    """End a job at the caller's request; its open attempt ends with it."""
    if job.status.terminal:
        return Cancellation(False, None)
    open_attempt = None
    for index, attempt in enumerate(job.attempts):
        if not attempt.status.terminal:
            _end_open_attempt(attempt, AttemptStatus.CANCELLED, now)
            open_attempt = index
    _total_cost(job)
    job.status = JobStatus.CANCELLED
    job.status_reason = reason
    job.updated_at = now
    return Cancellation(True, open_attempt)


def fail_job(job: Job, reason: str, now: dt.datetime, code: str = "dead_lettered") -> bool:
    """End a job that cannot go on (dead-lettered, for instance); `code` is the error
    of an attempt it ends."""
    if job.status.terminal:
        return False
    for attempt in job.attempts:
        if not attempt.status.terminal:
            _end_open_attempt(attempt, AttemptStatus.FAILED, now, AttemptError(
                error_class=ErrorClass.UNKNOWN, code=code, message=reason))
    _total_cost(job)
    job.status = JobStatus.FAILED
    job.status_reason = reason
    job.updated_at = now
    return True


def stopped_task_charge(final_state: str | None, reported_usd: float | None,
                        estimate_usd: float) -> float:
    """What a provider task stopped from outside cost (docs/budget-ledger.md, "Cancelled
    renders").

    The provider's own figure wins where it reports one: Runway reports every
    terminal task's final `cost` (0 when refunded; a cancel seen while RUNNING is
    not refunded), and Replicate documents `aborted` predictions as free. A task
    that ended FAILED costs nothing, as everywhere in AIPROD. Anything else (a task
    still running after the cancel, Replicate's `canceled`, which is billed by an
    amount it does not report for per-output models, a Veo operation, which reports
    no charge) is unknowable: the full estimate.
    """
    if reported_usd is not None:
        return max(0.0, reported_usd)
    if final_state == "FAILED":
        return 0.0
    return estimate_usd


def settle_stopped_task(job: Job, index: int, charge_usd: float, now: dt.datetime) -> bool:
    """Record what a task stopped from outside cost; False if it was settled already
    (the cancel message and the in-flight render may both get there)."""
    attempt = job.attempts[index]
    if not attempt.cost_pending or not attempt.status.terminal:
        return False
    attempt.cost_usd = round(charge_usd, 6)
    attempt.cost_pending = False
    _total_cost(job)
    job.updated_at = now
    return True
