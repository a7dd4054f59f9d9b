"""The job state machine: one claim per attempt, fallback order, redeliveries are no-ops."""

from __future__ import annotations

import datetime as dt

from aiprod.domain import lifecycle
from aiprod.domain.job import (
    AttemptError,
    AttemptStatus,
    ErrorClass,
    Job,
    JobRequest,
    JobStatus,
    Output,
)
from aiprod.domain.lifecycle import ClaimKind

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
LEASE = dt.timedelta(seconds=120)


def make_job(plan: list[str] | None = None) -> Job:
    return Job(id="job_1", owner="o", request=JobRequest(prompt="fox"),
               plan=plan or ["a", "b"], status=JobStatus.QUEUED, estimated_cost_usd=0.5,
               created_at=T0, updated_at=T0)


def claim(job: Job, backend: str, index: int, delivery: str,
          now: dt.datetime = T0) -> lifecycle.Claim:
    return lifecycle.claim_attempt(job, backend, index, delivery, now, LEASE, 0.5)


def error(cls: ErrorClass = ErrorClass.BACKEND) -> AttemptError:
    return AttemptError(error_class=cls, code="x", message="boom")


def test_first_delivery_claims_and_copies_stand_back_while_its_lease_lives() -> None:
    job = make_job()
    assert claim(job, "a", 0, "m1").kind is ClaimKind.CREATE
    assert job.status is JobStatus.RENDERING
    assert claim(job, "a", 0, "m2").kind is ClaimKind.DUPLICATE
    assert lifecycle.record_task(job, 0, "task-1", T0)
    assert claim(job, "a", 0, "m2", T0 + LEASE / 2).kind is ClaimKind.DUPLICATE
    assert len(job.attempts) == 1


def test_the_holders_redelivered_message_takes_over_a_running_task() -> None:
    job = make_job()
    claim(job, "a", 0, "m1")
    lifecycle.record_task(job, 0, "task-1", T0)
    resumed = claim(job, "a", 0, "m1", T0 + dt.timedelta(seconds=5))
    assert (resumed.kind, resumed.task_id) == (ClaimKind.RESUME, "task-1")
    assert job.attempts[0].lease_expires_at == T0 + dt.timedelta(seconds=5) + LEASE


def test_an_expired_or_released_lease_lets_another_delivery_resume() -> None:
    job = make_job()
    claim(job, "a", 0, "m1")
    lifecycle.record_task(job, 0, "task-1", T0)
    assert claim(job, "a", 0, "m2", T0 + LEASE).kind is ClaimKind.RESUME
    assert job.attempts[0].delivery_id == "m2"
    assert lifecycle.release_lease(job, 0, T0 + LEASE)
    assert claim(job, "a", 0, "continuation", T0 + LEASE).kind is ClaimKind.RESUME


def test_a_create_cut_off_is_an_unknown_outcome_never_a_second_create() -> None:
    job = make_job()
    claim(job, "a", 0, "m1")
    assert claim(job, "a", 0, "m1").kind is ClaimKind.UNKNOWN_OUTCOME
    job = make_job()
    claim(job, "a", 0, "m1")
    assert claim(job, "a", 0, "m9", T0 + LEASE * 2).kind is ClaimKind.UNKNOWN_OUTCOME
    assert len(job.attempts) == 1


def test_failure_falls_back_in_plan_order_then_fails_the_job() -> None:
    job = make_job()
    claim(job, "a", 0, "m1")
    outcome = lifecycle.fail_attempt(job, 0, error(), T0)
    assert (outcome.changed, outcome.next_backend) == (True, "b")
    assert claim(job, "a", 1, "m2").kind is ClaimKind.STALE  # wrong backend for attempt 1
    assert claim(job, "b", 1, "m2").kind is ClaimKind.CREATE
    outcome = lifecycle.fail_attempt(job, 1, error(), T0)
    assert (outcome.changed, outcome.next_backend) == (True, None)
    assert job.status is JobStatus.FAILED
    assert "a: backend x" in job.status_reason
    assert "b: backend x" in job.status_reason


def test_a_redelivered_failure_changes_nothing() -> None:
    job = make_job()
    claim(job, "a", 0, "m1")
    lifecycle.fail_attempt(job, 0, error(), T0)
    again = lifecycle.fail_attempt(job, 0, error(), T0)
    assert not again.changed
    assert claim(job, "a", 0, "m1").kind is ClaimKind.FINISHED


def test_refusals_and_invalid_input_do_not_fall_back_by_default() -> None:
    for cls in (ErrorClass.CONTENT_REFUSED, ErrorClass.INVALID_INPUT):
        job = make_job()
        claim(job, "a", 0, "m1")
        assert lifecycle.fail_attempt(job, 0, error(cls), T0).next_backend is None
        assert job.status is JobStatus.FAILED
    job = make_job()
    claim(job, "a", 0, "m1")
    assert lifecycle.fail_attempt(job, 0, error(ErrorClass.CONTENT_REFUSED), T0,
                                  fallback_on_refusal=True).next_backend == "b"


def test_success_is_recorded_once_with_cost_and_quality() -> None:
    job = make_job()
    claim(job, "a", 0, "m1")
    lifecycle.record_task(job, 0, "t", T0)
    output = Output(uri="file:///x.mp4", duration_seconds=5, width=256, height=144, bytes=10,
                    sha256="0" * 64)
    assert lifecycle.succeed(job, 0, output, 0.4, 0.8, T0)
    assert not lifecycle.succeed(job, 0, output, 0.4, 0.8, T0)
    assert job.status is JobStatus.SUCCEEDED
    assert job.cost_usd == 0.4
    assert job.attempts[0].status is AttemptStatus.SUCCEEDED
    assert claim(job, "a", 0, "m2").kind is ClaimKind.JOB_DONE


def test_dead_lettering_fails_the_job_and_its_open_attempt() -> None:
    job = make_job()
    claim(job, "a", 0, "m1")
    assert lifecycle.fail_job(job, "dead-lettered", T0)
    assert job.status is JobStatus.FAILED
    assert job.attempts[0].status is AttemptStatus.FAILED
    assert not lifecycle.fail_job(job, "again", T0)


def test_a_claim_made_again_after_being_handed_back_gets_a_new_reservation() -> None:
    """The redelivery of a handed-back claim carries the same message id; reusing the
    released hold's id would make the ledger refuse it as already closed (a spurious
    budget_exhausted)."""
    job = make_job(["a"])
    lifecycle.claim_attempt(job, "a", 0, "message-7", T0, LEASE, 1.0)
    first = job.attempts[0].reservation_id
    assert lifecycle.abandon_claim(job, 0)
    lifecycle.claim_attempt(job, "a", 0, "message-7", T0 + dt.timedelta(seconds=1), LEASE, 1.0)
    assert job.attempts[0].reservation_id != first
