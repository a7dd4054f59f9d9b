"""What the dead-letter handler does with a render message Pub/Sub gave up on (a full
deployment answers 429 to every delivery): capacity never fails a job, and a render
that keeps failing still ends."""

from __future__ import annotations

import datetime as dt

import pytest

from aiprod.domain import deadletter as policy
from aiprod.domain import lifecycle
from aiprod.domain.deadletter import MAX_STARTED_REDRIVES, DeadLetterAction
from aiprod.domain.job import AttemptStatus, ErrorClass, Job, JobStatus
from tests.unit.test_lifecycle import LEASE, T0, claim, error, make_job

MAX_AGE = dt.timedelta(hours=24)
LIVE = T0 + LEASE / 2      # the render's lease still runs
EXPIRED = T0 + LEASE * 2   # nobody renews it any more


def decide(job: Job | None, attempt: int = 0, now: dt.datetime = EXPIRED,
           started_redrives: int = 0) -> policy.DeadLetterVerdict:
    return policy.decide(job, attempt, now, MAX_AGE, started_redrives)


def rendering(plan: list[str] | None = None) -> Job:
    job = make_job(plan)
    claim(job, job.plan[0], 0, "m1")
    lifecycle.record_task(job, 0, "task-1", T0)
    return job


def test_a_duplicate_of_a_render_held_under_a_live_lease_is_only_acknowledged() -> None:
    """The watchdog's copy of a dispatch that waited in the backlog is dead-lettered
    while the original copy renders: the job is fine."""
    verdict = decide(rendering(), now=LIVE)
    assert verdict.action is DeadLetterAction.IGNORE
    assert "live lease" in verdict.reason


def test_a_started_attempt_nobody_holds_goes_back_to_its_render_topic() -> None:
    """A continuation that never got an instance: its render claim takes it over."""
    job = rendering()
    lifecycle.release_lease(job, 0, T0 + LEASE / 4)  # the hand-off before the deadline
    verdict = decide(job, now=LIVE)
    assert (verdict.action, verdict.backend, verdict.attempt, verdict.started) == (
        DeadLetterAction.REDRIVE, "a", 0, True)


def test_an_attempt_never_started_goes_back_to_its_render_topic() -> None:
    verdict = decide(make_job())
    assert (verdict.action, verdict.backend, verdict.attempt, verdict.started) == (
        DeadLetterAction.REDRIVE, "a", 0, False)


def test_a_started_attempt_is_redriven_a_bounded_number_of_times_then_ended() -> None:
    """A render that fails on every delivery (with no live lease left) must still end."""
    job = rendering()
    assert decide(job, started_redrives=MAX_STARTED_REDRIVES - 1).action \
        is DeadLetterAction.REDRIVE
    verdict = decide(job, started_redrives=MAX_STARTED_REDRIVES)
    assert verdict.action is DeadLetterAction.END
    assert f"re-driven {MAX_STARTED_REDRIVES} times" in verdict.reason


def test_the_cap_counts_only_redrives_of_a_started_attempt() -> None:
    """Re-drives while the attempt waited for capacity are no sign of a faulty render."""
    assert decide(make_job(), started_redrives=MAX_STARTED_REDRIVES).action \
        is DeadLetterAction.REDRIVE


@pytest.mark.parametrize("job", [make_job(), rendering()], ids=["queued", "started"])
def test_a_job_older_than_the_bound_is_not_redriven_but_ended(job: Job) -> None:
    assert decide(job, now=T0 + MAX_AGE + dt.timedelta(seconds=1)).action \
        is DeadLetterAction.END


def test_a_live_lease_on_a_job_older_than_the_bound_ends_it() -> None:
    """A render that crashes on every delivery renews its lease at each claim, so its
    own dead letter arrives under a live lease: the job's age still bounds it."""
    job = rendering()
    old = T0 + MAX_AGE + dt.timedelta(seconds=1)
    lifecycle.release_lease(job, 0, old)
    claim(job, "a", 0, "m1", old)  # the crashing delivery's own claim
    assert decide(job, now=old + dt.timedelta(seconds=1)).action is DeadLetterAction.END


def test_an_ended_attempt_never_handed_on_is_handed_on() -> None:
    job = rendering(["a", "b"])
    lifecycle.fail_attempt(job, 0, error(), T0)  # the render died before publishing to b
    verdict = decide(job)
    assert (verdict.action, verdict.attempt) == (DeadLetterAction.FOLLOW_UP, 0)
    # The dead-lettered message may be the hand-off itself (attempt 1, never started).
    assert decide(job, attempt=1).action is DeadLetterAction.FOLLOW_UP


def test_an_ended_attempt_with_no_backend_left_ends_the_job() -> None:
    job = rendering(["a"])
    # The attempt ended, the job not yet (the process died between the two writes).
    job.attempts[0].status = AttemptStatus.FAILED
    job.attempts[0].error = error(ErrorClass.BACKEND)
    assert job.status is JobStatus.RENDERING
    verdict = decide(job)
    assert verdict.action is DeadLetterAction.END
    assert "no backend is left" in verdict.reason


def test_a_stale_copy_for_an_attempt_the_job_moved_past_is_ignored() -> None:
    job = rendering(["a", "b"])
    lifecycle.fail_attempt(job, 0, error(), T0)
    claim(job, "b", 1, "m2")
    job.status = JobStatus.FAILED  # even once the job ended: the copy says nothing
    assert decide(job, attempt=0).action is DeadLetterAction.IGNORE


def test_an_ended_job_or_an_unknown_one_goes_to_the_end_path() -> None:
    """The end path closes what may still be open (holds, a running task), as before."""
    job = rendering()
    job.status = JobStatus.CANCELLED
    assert decide(job).action is DeadLetterAction.END
    assert decide(None).action is DeadLetterAction.END
