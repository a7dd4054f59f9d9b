"""Accepted means funded (issue 14): admission holds the first attempt's money in the
same ledger operation that accepts the job, on in-memory fakes (tests/fakes.py). The
burst through the whole stack is in tests/emulator/test_money_and_health.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from aiprod.adapters.ledger import ReservationState, Scope
from aiprod.domain import routing
from aiprod.domain.apikeys import ApiKey, owner_of
from aiprod.domain.budget import to_micros
from aiprod.domain.job import JobRequest, JobStatus, Policy
from aiprod.services import admission, budget, cancel, watchdog
from aiprod.services.render import BackendBusy
from tests.fakes import Fakes, fake_runtime
from tests.service_helpers import DAY, admit, deliver, figures

REQUEST = JobRequest(prompt="a red fox in snow", duration_seconds=4)


def first_estimate(fx: Fakes, request: JobRequest = REQUEST) -> float:
    plan = admission.quote(fx.rt, request)
    assert isinstance(plan, routing.Plan)
    return plan.estimated_cost_usd


def test_an_accepted_job_holds_its_first_attempt_and_the_attempt_uses_that_hold(
        fx: Fakes) -> None:
    job = admit(fx)

    assert job.funding is not None
    assert job.funding.amount_usd == job.estimated_cost_usd
    assert figures(fx).reserved_micros == to_micros(job.estimated_cost_usd)  # set aside now

    done = deliver(fx, job)

    assert done.status is JobStatus.SUCCEEDED
    assert done.attempts[0].reservation_id == job.funding.reservation_id
    assert fx.ledger.state(DAY, job.funding.reservation_id) is ReservationState.SETTLED
    assert len(fx.ledger.reservations) == 1  # no second hold for the first attempt
    day = figures(fx)
    assert day.reserved_micros == 0
    assert day.spent_micros == to_micros(done.cost_usd)


def test_a_job_the_budget_cannot_hold_is_refused_at_once_and_the_admitted_ones_render(
        tmp_path: Path) -> None:
    probe = fake_runtime(tmp_path / "probe")
    cost = first_estimate(probe)
    fx = fake_runtime(tmp_path, daily_budget_usd=round(cost * 2.5, 6),
                      daily_budget_warn_usd=cost)

    decisions = [admission.admit(fx.rt, REQUEST, job_id=f"job_{n}", owner="o")
                 for n in range(5)]

    admitted = [d for d in decisions if isinstance(d, admission.Admitted)]
    refused = [d for d in decisions if isinstance(d, routing.Rejection)]
    assert len(admitted) == 2
    assert [r.reason for r in refused] == [routing.RejectionReason.BUDGET_EXHAUSTED] * 3
    assert set(fx.store.docs) == {"job_0", "job_1"}  # nothing stored for the refused
    for accepted in admitted:
        assert deliver(fx, accepted.job).status is JobStatus.SUCCEEDED  # no attempt skipped
    day = figures(fx)
    assert day.reserved_micros == 0
    assert day.spent_micros == to_micros(2 * cost)


def test_a_hold_refused_in_a_race_is_drawn_again_on_a_backend_that_still_fits(
        fx: Fakes) -> None:
    """The plan is drawn from the budget as read; the ledger decides. When others took
    the money between the read and the hold, the plan is drawn again from what is left."""
    request = JobRequest(prompt="a red fox in snow", duration_seconds=4,
                         policy=Policy.BEST_QUALITY)
    best = admission.quote(fx.rt, request)
    assert isinstance(best, routing.Plan)
    cheaper = sorted(q.estimated_cost_usd for q in best.quotes)[0]
    assert cheaper < best.estimated_cost_usd
    real_reserve = fx.ledger.reserve
    limit = fx.rt.settings.daily_budget_usd

    def racing_reserve(day: str, rid: str, micros: int, scopes: Any, **labels: str) -> bool:
        if rid.endswith("-funding-0"):  # someone else commits just before our hold lands
            assert real_reserve(day, "rival", to_micros(limit - cheaper), scopes)
        return real_reserve(day, rid, micros, scopes, **labels)

    fx.ledger.reserve = racing_reserve  # type: ignore[method-assign]

    admitted = admission.admit(fx.rt, request, job_id="job_1", owner="o")

    assert isinstance(admitted, admission.Admitted)
    assert admitted.job.funding is not None
    assert admitted.job.funding.amount_usd == cheaper
    assert admitted.job.estimated_cost_usd == cheaper
    assert figures(fx).committed_micros == to_micros(limit)  # exactly full, never over


def test_per_key_budgets_are_held_at_admission_too(fx: Fakes) -> None:
    cost = first_estimate(fx)
    key = ApiKey(id="0123456789ab", name="small", hash="x", created_at=fx.clock(),
                 daily_budget_usd=round(cost * 1.5, 6))
    fx.access.create_key(key)
    owner = owner_of(key.id)

    first = admission.admit(fx.rt, REQUEST, job_id="job_1", owner=owner)
    second = admission.admit(fx.rt, REQUEST, job_id="job_2", owner=owner)
    other = admission.admit(fx.rt, REQUEST, job_id="job_3", owner="someone-else")

    assert isinstance(first, admission.Admitted)
    assert isinstance(second, routing.Rejection)
    assert second.reason is routing.RejectionReason.BUDGET_EXHAUSTED
    assert isinstance(other, admission.Admitted)  # the day's budget still has room
    own = fx.rt.ledger.figures(DAY, Scope(f"key:{key.id}", 0), 0)
    assert own.reserved_micros == to_micros(cost)


def test_a_job_cancelled_before_its_first_attempt_gives_its_hold_back(fx: Fakes) -> None:
    job = admit(fx)
    assert job.funding is not None

    cancelled = cancel.cancel_job(fx.rt, job.id)

    assert cancelled is not None
    assert cancelled.status is JobStatus.CANCELLED
    assert fx.ledger.state(DAY, job.funding.reservation_id) is ReservationState.RELEASED
    assert figures(fx).committed_micros == 0
    with pytest.raises(cancel.NotCancellable):  # a repeated cancel releases nothing twice
        cancel.cancel_job(fx.rt, job.id)
    assert figures(fx).committed_micros == 0


def test_a_claim_handed_back_keeps_the_hold_for_the_redelivery(fx: Fakes) -> None:
    job = admit(fx, plan=1)
    backend = job.plan[0]
    for n in range(fx.rt.settings.circuit_strikes):  # every call slot held by others
        fx.health.take_slot(backend, f"other-{n}", fx.rt.settings.circuit_strikes,
                            fx.clock(), dt.timedelta(hours=1))
    with pytest.raises(BackendBusy):
        deliver(fx, job)
    assert figures(fx).committed_micros == to_micros(job.estimated_cost_usd)  # still funded
    fx.health.slots.clear()  # the others finished

    done = deliver(fx, job, delivery="d1-redelivered")

    assert done.status is JobStatus.SUCCEEDED
    assert figures(fx).reserved_micros == 0
    assert figures(fx).spent_micros == to_micros(done.cost_usd)


def test_the_watchdog_keeps_a_waiting_jobs_hold_and_releases_an_orphan(fx: Fakes) -> None:
    job = admit(fx)
    assert job.funding is not None
    # An admission that died after holding and before storing its job.
    assert budget.fund(fx.rt, "job_lost", "o", 0.5, 0) is not None
    fx.clock.advance(fx.rt.settings.watchdog_stale_s + 1)

    def touch(j: Any) -> None:
        j.updated_at = fx.clock()  # the job is waiting in a backlog, not stuck

    fx.store.mutate(job.id, touch)

    assert watchdog.sweep(fx.rt) == {"holds_closed": 1}
    assert fx.ledger.state(DAY, job.funding.reservation_id) is ReservationState.HELD
    assert fx.ledger.state(DAY, "job_lost-funding-0") is ReservationState.RELEASED
    assert figures(fx).committed_micros == to_micros(job.estimated_cost_usd)
