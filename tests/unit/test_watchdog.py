"""What the watchdog does with a job that stopped moving, and why a re-drive that
races a late delivery is harmless: both go through the same claim."""

from __future__ import annotations

import datetime as dt

import pytest

from aiprod.domain import lifecycle
from aiprod.domain import watchdog as policy
from aiprod.domain.job import AttemptError, AttemptStatus, ErrorClass, Job, JobStatus
from aiprod.domain.lifecycle import ClaimKind
from aiprod.domain.watchdog import Action
from aiprod.wiring.config import Settings
from tests.unit.test_lifecycle import LEASE, T0, claim, error, make_job

STALE = dt.timedelta(seconds=60)
LATER = T0 + LEASE + STALE  # past both the lease and the stale bound


def decide(job: Job, now: dt.datetime = LATER) -> policy.Verdict:
    return policy.decide(job, now, STALE)


def running(job: Job, delivery: str = "m1") -> Job:
    claim(job, job.plan[0], 0, delivery)
    lifecycle.record_task(job, 0, "task-1", T0)
    return job


def test_a_queued_job_never_claimed_is_dispatched_to_its_first_backend() -> None:
    verdict = decide(make_job())
    assert (verdict.action, verdict.backend, verdict.attempt) == (Action.DISPATCH, "a", 0)


def test_a_job_that_moved_within_the_bound_is_left_alone() -> None:
    assert decide(make_job(), T0 + STALE / 2).action is Action.NONE


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED,
                                    JobStatus.CANCELLED, JobStatus.REJECTED])
def test_a_terminal_job_is_left_alone(status: JobStatus) -> None:
    job = make_job()
    job.status = status
    assert decide(job).action is Action.NONE


def test_a_live_render_polling_a_long_task_is_left_alone_however_old_its_last_change() -> None:
    """A poller changes nothing in the job while it waits, but holds a live lease;
    its continuation renews the lease before it runs out."""
    job = running(make_job())
    assert job.attempts[0].lease_expires_at == T0 + LEASE
    assert decide(job, T0 + LEASE - dt.timedelta(seconds=1)).action is Action.NONE
    # The hand-off: the continuation's claim renews the lease and moves the job.
    lifecycle.release_lease(job, 0, T0 + LEASE / 2)
    assert claim(job, "a", 0, "continuation", T0 + LEASE / 2).kind is ClaimKind.RESUME
    assert decide(job, T0 + LEASE + dt.timedelta(seconds=1)).action is Action.NONE


@pytest.mark.parametrize("status", [AttemptStatus.CREATING, AttemptStatus.UNKNOWN,
                                    AttemptStatus.RUNNING])
def test_an_open_attempt_whose_lease_expired_is_resumed_on_its_backend(
        status: AttemptStatus) -> None:
    job = running(make_job())
    job.attempts[0].status = status
    verdict = decide(job)
    assert (verdict.action, verdict.backend, verdict.attempt) == (Action.RESUME, "a", 0)


def test_an_ended_attempt_never_handed_on_is_followed_up_on_the_next_backend() -> None:
    job = running(make_job(["a", "b", "c"]))
    outcome = lifecycle.fail_attempt(job, 0, error(), T0)
    assert outcome.next_backend == "b"  # the render died before publishing to b
    verdict = decide(job)
    assert (verdict.action, verdict.backend, verdict.attempt) == (Action.FOLLOW_UP, "b", 0)


def test_a_job_with_no_backend_left_is_ended() -> None:
    job = running(make_job(["a"]))
    job.attempts[0].status = AttemptStatus.FAILED  # ended, but the job was never ended
    job.attempts[0].error = error()
    assert decide(job).action is Action.END


def test_an_attempt_whose_failure_does_not_fall_back_ends_the_job() -> None:
    job = running(make_job(["a", "b"]))
    job.attempts[0].status = AttemptStatus.FAILED
    job.attempts[0].error = AttemptError(error_class=ErrorClass.INVALID_INPUT, code="x",
                                         message="bad")
    assert decide(job).action is Action.END
    assert policy.decide(job, LATER, STALE, fallback_on_refusal=True).action is Action.END


def test_a_re_drive_to_a_backend_no_longer_in_the_catalog_ends_the_job_instead() -> None:
    """Removed from backends.yaml since the job was planned: no render function would
    ever take the job, and the re-drive could only fail on every run."""
    queued = make_job(["a", "b"])
    assert policy.decide(queued, LATER, STALE, backends=["a", "b"]).action is Action.DISPATCH
    verdict = policy.decide(queued, LATER, STALE, backends=["b"])
    assert (verdict.action, verdict.code) == (Action.END, "backend_removed")
    assert "backend a is no longer in the catalog" in verdict.reason
    assert policy.decide(running(make_job(["a"])), LATER, STALE,
                         backends=["b"]).action is Action.END
    handed_on = running(make_job(["a", "b"]))
    lifecycle.fail_attempt(handed_on, 0, error(), T0)
    assert policy.decide(handed_on, LATER, STALE, backends=["a"]).action is Action.END
    assert not policy.mark_redriven(queued, LATER, STALE, Action.DISPATCH, backends=["b"])
    # Nothing to re-drive, nothing to decide about the catalog.
    assert policy.decide(queued, T0, STALE, backends=[]).action is Action.NONE


def test_a_resume_that_races_the_late_original_delivery_renders_once() -> None:
    """The watchdog republished attempt 0 (its holder's message was lost); the lost
    message then arrives after all. Whichever comes first takes the lease; the
    other stands back. Either order, one task, one poller."""
    for first, second in (("watchdog-copy", "m1"), ("m1", "watchdog-copy")):
        job = running(make_job())
        assert decide(job).action is Action.RESUME
        taken = claim(job, "a", 0, first, LATER)
        assert (taken.kind, taken.task_id) == (ClaimKind.RESUME, "task-1")
        assert claim(job, "a", 0, second, LATER).kind is ClaimKind.DUPLICATE
        assert len(job.attempts) == 1
        assert decide(job, LATER + STALE).action is Action.NONE  # the lease lives again


def test_a_dispatch_that_races_the_late_original_dispatch_creates_one_attempt() -> None:
    job = make_job()
    assert decide(job).action is Action.DISPATCH
    assert claim(job, "a", 0, "watchdog-copy", LATER).kind is ClaimKind.CREATE
    assert claim(job, "a", 0, "original", LATER).kind is ClaimKind.DUPLICATE
    assert len(job.attempts) == 1


def test_a_follow_up_that_races_the_late_hand_off_creates_one_attempt() -> None:
    job = running(make_job(["a", "b"]))
    lifecycle.fail_attempt(job, 0, error(), T0)
    assert decide(job).action is Action.FOLLOW_UP
    assert claim(job, "b", 1, "watchdog-copy", LATER).kind is ClaimKind.CREATE
    assert claim(job, "b", 1, "original", LATER).kind is ClaimKind.DUPLICATE
    assert [a.backend for a in job.attempts] == ["a", "b"]


def test_a_re_drive_that_arrives_after_the_job_ended_does_nothing() -> None:
    job = running(make_job(["a"]))
    lifecycle.fail_attempt(job, 0, error(), T0)
    assert job.status is JobStatus.FAILED
    assert claim(job, "a", 0, "watchdog-copy", LATER).kind is ClaimKind.JOB_DONE


def test_leftover_holds() -> None:
    job = running(make_job(["a", "b"]))
    rid = job.attempts[0].reservation_id
    assert policy.leftover_hold(job, rid) == policy.HoldVerdict()  # open: its render closes it
    lifecycle.fail_attempt(job, 0, error(), T0)
    assert policy.leftover_hold(job, rid) == policy.HoldVerdict(close_attempt=0)
    assert policy.ended_attempts(job) == [0]
    # A claim handed back before calling the provider: no attempt owns the hold.
    assert policy.leftover_hold(job, "job_1-1-gone") == policy.HoldVerdict(release=True)
    assert policy.leftover_hold(None, rid) == policy.HoldVerdict(release=True)


def test_the_default_bound_does_not_race_pub_sub_or_a_live_render() -> None:
    """Stale at least Pub/Sub's maximum retry backoff (600 s, terraform/topology.tf),
    so the watchdog does not duplicate a redelivery Pub/Sub has scheduled; and an open
    attempt waits for its lease, which outlasts one render invocation."""
    settings = Settings.model_construct()
    defaults = Settings()
    assert defaults.watchdog_stale_s >= 600
    assert defaults.watchdog_interval_s <= defaults.watchdog_stale_s
    assert settings.attempt_lease.total_seconds() > defaults.render_deadline_s


def test_a_re_drive_counts_as_a_move_so_the_next_waits_another_bound() -> None:
    """A re-drive that is not delivered either is repeated once per bound, not on
    every run; a second run that finds the job already re-driven does nothing."""
    job = make_job()
    assert policy.mark_redriven(job, LATER, STALE, Action.DISPATCH)
    assert job.updated_at == LATER
    assert not policy.mark_redriven(job, LATER, STALE, Action.DISPATCH)
    assert decide(job, LATER + STALE / 2).action is Action.NONE
    assert decide(job, LATER + STALE).action is Action.DISPATCH
    # A job that moved in between (its first dispatch arrived) is not re-driven.
    claim(job, "a", 0, "m1", LATER + STALE / 2)
    assert not policy.mark_redriven(job, LATER + STALE, STALE, Action.DISPATCH)
