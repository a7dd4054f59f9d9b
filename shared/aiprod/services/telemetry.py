"""The metrics a job's life emits, derived from the job document at the moment
its state changes (each call sits where a change was just committed, so a
redelivered message that changes nothing emits nothing)."""

from __future__ import annotations

from aiprod.domain import budget
from aiprod.domain.budget import DayFigures
from aiprod.domain.forecast import Forecast
from aiprod.domain.job import Job, JobStatus
from aiprod.observability import metrics

NONE = "none"  # label value when there is no backend or no error class to name


def _last_backend(job: Job) -> str:
    if job.attempts:
        return job.attempts[-1].backend
    return job.plan[0] if job.plan else NONE


def admitted(job: Job) -> None:
    metrics.count("jobs_admitted", job_id=job.id, backend=_last_backend(job))


def rejected(reason: str, job_id: str | None = None) -> None:
    metrics.count("jobs_rejected", job_id=job_id, reason=reason)


def attempt_started(job: Job, index: int) -> None:
    """Queue wait: from the hand-off to this backend until its render started the attempt."""
    attempt = job.attempts[index]
    previous = job.attempts[index - 1] if index > 0 else None
    handed_off = previous.ended_at if previous is not None and previous.ended_at else (
        job.created_at)
    metrics.observe("queue_wait_s", max(0.0, (attempt.started_at - handed_off).total_seconds()),
                    job_id=job.id, backend=attempt.backend)


def attempt_failed(job: Job, index: int, next_backend: str | None) -> None:
    """An attempt ended without output: the job falls back, or ends."""
    if next_backend is not None:
        metrics.count("fallbacks", job_id=job.id, from_backend=job.attempts[index].backend,
                      to_backend=next_backend)
    if job.status.terminal:
        ended(job)


def ended(job: Job) -> None:
    """The job just reached a terminal state."""
    backend = _last_backend(job)
    status = job.status
    if status is JobStatus.CANCELLED:
        metrics.count("jobs_cancelled", job_id=job.id, backend=backend)
        return
    if status is JobStatus.SUCCEEDED:
        metrics.count("jobs_succeeded", job_id=job.id, backend=backend)
        if job.quality_score is not None:
            metrics.observe("quality_score", job.quality_score, job_id=job.id, backend=backend)
        if job.output is not None:
            metrics.observe("output_bytes", job.output.bytes, job_id=job.id, backend=backend)
        last = job.attempts[-1] if job.attempts else None
        if last is not None and last.ended_at is not None:
            metrics.observe("render_duration_s", (last.ended_at - last.started_at)
                            .total_seconds(), job_id=job.id, backend=backend)
    elif status is JobStatus.FAILED:
        last = job.attempts[-1] if job.attempts else None
        error_class = last.error.error_class.value if last and last.error else NONE
        metrics.count("jobs_failed", job_id=job.id, backend=backend, error_class=error_class)
    else:
        return
    outcome = status.value.lower()
    metrics.observe("job_duration_s", max(0.0, (job.updated_at - job.created_at)
                                          .total_seconds()),
                    job_id=job.id, backend=backend, status=outcome)
    metrics.observe("job_cost_usd", job.cost_usd, job_id=job.id, backend=backend,
                    status=outcome)


def budget_level(figures: DayFigures, today: str) -> None:
    """Today's money, whenever it was just read after a reservation or a settlement
    (a late settlement of yesterday's reservation says nothing about today)."""
    if figures.day != today:
        return
    metrics.gauge("budget_spent_usd", budget.to_usd(figures.spent_micros))
    metrics.gauge("budget_reserved_usd", budget.to_usd(figures.reserved_micros))
    metrics.gauge("budget_committed_usd", budget.to_usd(figures.committed_micros))


def budget_forecast(forecast: Forecast) -> None:
    """Today's committed money projected to midnight UTC at the recent spend rate."""
    metrics.gauge("budget_forecast_usd", budget.to_usd(forecast.projected_micros))


def circuit(backend: str, state: str) -> None:
    metrics.count("circuit_state_changes", backend=backend, state=state)


def dead_lettered(subscription: str, job_id: str | None) -> None:
    metrics.count("messages_dead_lettered", job_id=job_id,
                  subscription=subscription.rsplit("/", 1)[-1])


def watchdog_redriven(job_id: str, action: str) -> None:
    """The watchdog moved a job that had stopped moving (a lost message, a dead process)."""
    metrics.count("watchdog_redriven", job_id=job_id, action=action)


def routing_quality_change(backend: str, change: str, job_id: str) -> None:
    """A backend left a job's plan for its observed quality (left), or came back (rejoined)."""
    metrics.count("routing_quality_changes", job_id=job_id, backend=backend, change=change)
