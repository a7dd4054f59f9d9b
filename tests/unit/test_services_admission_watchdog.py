"""Admission and watchdog decisions, on in-memory fakes (tests/fakes.py)."""

from __future__ import annotations

from pathlib import Path

from aiprod.domain import lifecycle, routing
from aiprod.domain.budget import to_micros
from aiprod.domain.job import AttemptError, AttemptStatus, ErrorClass, Job, JobRequest, JobStatus
from aiprod.services import admission, budget, watchdog
from tests.fakes import Fakes, fake_runtime
from tests.service_helpers import DAY, admit, deliver, figures, message, renders_sent

REQUEST = JobRequest(prompt="a red fox in snow", duration_seconds=4)


def test_admit_stores_and_dispatches_a_job_once(fx: Fakes) -> None:
    admitted = admission.admit(fx.rt, REQUEST, job_id="job_1", owner="o")

    assert isinstance(admitted, admission.Admitted)
    assert admitted.created
    job = admitted.job
    assert fx.store.get("job_1") == job
    assert job.status is JobStatus.QUEUED
    assert renders_sent(fx, job.plan[0]) == [message(job).body()]
    assert fx.bus.event_types() == ["job.queued"]


def test_a_retried_admission_finds_the_job_and_redispatches_only_if_unclaimed(
        fx: Fakes) -> None:
    first = admission.admit(fx.rt, REQUEST, job_id="job_1", owner="o")
    assert isinstance(first, admission.Admitted)
    retry = admission.admit(fx.rt, REQUEST, job_id="job_1", owner="o")
    assert isinstance(retry, admission.Admitted)
    assert not retry.created
    assert len(fx.store.docs) == 1
    # Still unclaimed: the dispatch may have been lost, so it is sent again (a render
    # claims once whatever the copies).
    assert len(renders_sent(fx, first.job.plan[0])) == 2

    deliver(fx, first.job)
    fx.bus.clear()
    again = admission.admit(fx.rt, REQUEST, job_id="job_1", owner="o")
    assert isinstance(again, admission.Admitted)
    assert not again.created
    assert fx.bus.published == []


def test_admission_rejects_what_no_backend_can_render_and_stores_nothing(fx: Fakes) -> None:
    decision = admission.admit(fx.rt, JobRequest(prompt="fox", duration_seconds=60),
                               job_id="job_1", owner="o")

    assert isinstance(decision, routing.Rejection)
    assert decision.reason is routing.RejectionReason.UNSUPPORTED
    assert fx.store.docs == {}
    assert fx.bus.published == []


def test_admission_rejects_when_the_budget_left_cannot_pay(tmp_path: Path) -> None:
    fx = fake_runtime(tmp_path, daily_budget_usd=0.1, daily_budget_warn_usd=0.09)

    decision = admission.admit(fx.rt, REQUEST, job_id="job_1", owner="o")

    assert isinstance(decision, routing.Rejection)
    assert decision.reason is routing.RejectionReason.BUDGET_EXHAUSTED
    assert fx.store.docs == {}


# -- the watchdog --------------------------------------------------------------------------
def stale(fx: Fakes) -> None:
    """Let every job go unmoved past the watchdog's bound and any lease."""
    fx.clock.advance(fx.rt.settings.watchdog_stale_s
                     + fx.rt.settings.attempt_lease.total_seconds() + 1)


def test_the_watchdog_redispatches_a_job_never_claimed(fx: Fakes) -> None:
    job = admit(fx)
    fx.bus.clear()
    stale(fx)

    assert watchdog.sweep(fx.rt) == {"dispatch": 1, "holds_closed": 0}
    assert renders_sent(fx, job.plan[0]) == [message(job).body()]
    assert watchdog.sweep(fx.rt) == {"holds_closed": 0}  # marked: not again next run


def test_the_watchdog_resumes_an_attempt_whose_lease_expired(fx: Fakes) -> None:
    job = admit(fx)
    fx.store.mutate(job.id, lambda j: lifecycle.claim_attempt(
        j, job.plan[0], 0, "d1", fx.clock(), fx.rt.settings.attempt_lease, 0.32))
    fx.bus.clear()
    stale(fx)

    assert watchdog.sweep(fx.rt) == {"resume": 1, "holds_closed": 0}
    assert [p.attributes.get("redrive") for p in fx.bus.published] == ["watchdog"]
    assert renders_sent(fx, job.plan[0]) == [message(job).body()]


def test_the_watchdog_hands_on_a_job_whose_attempt_ended_unannounced(fx: Fakes) -> None:
    job = admit(fx)
    fx.store.mutate(job.id, lambda j: lifecycle.claim_attempt(
        j, job.plan[0], 0, "d1", fx.clock(), fx.rt.settings.attempt_lease, 0.32))
    failure = AttemptError(error_class=ErrorClass.BACKEND, code="failed", message="x")
    fx.store.mutate(job.id, lambda j: lifecycle.fail_attempt(j, 0, failure, fx.clock()))
    fx.bus.clear()  # the process died before publishing the fallback
    stale(fx)

    assert watchdog.sweep(fx.rt) == {"follow_up": 1, "holds_closed": 0}
    assert renders_sent(fx, job.plan[1]) == [message(job, 1).body()]


def test_the_watchdog_ends_a_job_with_no_backend_left(fx: Fakes) -> None:
    job = admit(fx, plan=1)
    fx.store.mutate(job.id, lambda j: lifecycle.claim_attempt(
        j, job.plan[0], 0, "d1", fx.clock(), fx.rt.settings.attempt_lease, 0.32))

    def ended_unrecorded(j: Job) -> None:  # the attempt ended; the job's end was lost
        j.attempts[0].status = AttemptStatus.FAILED
        j.attempts[0].error = AttemptError(error_class=ErrorClass.BACKEND, code="failed",
                                           message="x")
    fx.store.mutate(job.id, ended_unrecorded)
    fx.bus.clear()
    stale(fx)

    assert watchdog.sweep(fx.rt) == {"end": 1, "holds_closed": 0}
    after = fx.store.get(job.id)
    assert after is not None
    assert after.status is JobStatus.FAILED
    assert fx.bus.event_types() == ["job.failed"]


def test_the_watchdog_closes_a_hold_whose_attempt_ended(fx: Fakes) -> None:
    job = admit(fx)
    claimed = fx.store.mutate(job.id, lambda j: lifecycle.claim_attempt(
        j, job.plan[0], 0, "d1", fx.clock(), fx.rt.settings.attempt_lease, 0.32))
    assert claimed is not None
    budget.reserve(fx.rt, claimed[0], 0, 0.32)
    failure = AttemptError(error_class=ErrorClass.BACKEND, code="failed", message="x")
    fx.store.mutate(job.id, lambda j: lifecycle.fail_attempt(j, 0, failure, fx.clock()))
    fx.store.mutate(job.id, lambda j: lifecycle.cancel(j, "gone", fx.clock()))  # terminal
    assert figures(fx).reserved_micros == to_micros(0.32)
    fx.clock.advance(fx.rt.settings.watchdog_stale_s + 1)

    assert watchdog.sweep(fx.rt) == {"holds_closed": 1}
    assert figures(fx).reserved_micros == 0
    assert fx.ledger.held(DAY) == []
