"""The watchdog's run stays bounded whatever the backlog: it reads only what is old
enough to act on, a page at a time, and stops starting pages once its interval is
spent (the next run goes on). On in-memory fakes (tests/fakes.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from aiprod.adapters.ledger import ReservationState, Scope
from aiprod.domain import lifecycle
from aiprod.domain.budget import to_micros
from aiprod.domain.job import AttemptStatus, Job, JobStatus
from aiprod.services import budget, watchdog
from tests.fakes import Fakes
from tests.service_helpers import DAY, admit, figures, renders_sent

ROOM = Scope("global", 10**12)


def stale(fx: Fakes) -> None:
    """Let everything so far go unmoved past the watchdog's bound and any lease."""
    fx.clock.advance(fx.rt.settings.watchdog_stale_s
                     + fx.rt.settings.attempt_lease.total_seconds() + 1)


def orphan_holds(fx: Fakes, count: int, prefix: str = "orphan") -> list[str]:
    """Holds whose job does not exist (a claim handed back before calling the provider,
    whose release died with its process): the watchdog releases them."""
    ids = [f"{prefix}-{i:04d}" for i in range(count)]
    for rid in ids:
        assert fx.ledger.reserve(DAY, rid, 1000, [ROOM], job_id=f"gone-{rid}")
    return ids


def slow_reads(fx: Fakes, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every job read takes `seconds` of the run's time (a loaded Firestore)."""
    get: Callable[[str], Job | None] = fx.store.get

    def slow(job_id: str) -> Job | None:
        fx.clock.advance(seconds)
        return get(job_id)
    monkeypatch.setattr(fx.store, "get", slow)


def state(fx: Fakes, rid: str) -> ReservationState | None:
    return fx.ledger.state(DAY, rid)


# -- stuck jobs ----------------------------------------------------------------------------
def test_stuck_jobs_beyond_one_page_are_all_re_driven_in_one_run(fx: Fakes) -> None:
    jobs = [admit(fx, f"job_{i:04d}") for i in range(2 * watchdog.PAGE + 17)]
    fx.bus.clear()
    stale(fx)

    assert watchdog.sweep(fx.rt) == {"dispatch": len(jobs), "holds_closed": 0}
    sent = [m["job_id"] for m in renders_sent(fx, jobs[0].plan[0])]
    assert sorted(sent) == [j.id for j in jobs]  # each once


def test_the_job_scan_stops_when_the_runs_time_is_spent_and_the_next_run_goes_on(
        fx: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run starts no page once its interval is spent; the jobs it re-drove count as
    moved, so the next run starts where this one stopped."""
    jobs = [admit(fx, f"job_{i:04d}") for i in range(3 * watchdog.PAGE - 40)]
    fx.bus.clear()
    stale(fx)
    # A page of re-drives takes 0.6 of the interval: the second page starts, no third.
    mutate = fx.store.mutate

    def slow(job_id: str, change: Callable[[Job], Any]) -> Any:
        fx.clock.advance(0.6 * fx.rt.settings.watchdog_interval_s / watchdog.PAGE)
        return mutate(job_id, change)
    monkeypatch.setattr(fx.store, "mutate", slow)

    assert watchdog.sweep(fx.rt) == {"dispatch": 2 * watchdog.PAGE, "holds_closed": 0}
    sent = [m["job_id"] for m in renders_sent(fx, jobs[0].plan[0])]
    assert sent == [j.id for j in jobs[:2 * watchdog.PAGE]]  # oldest first
    assert watchdog.sweep(fx.rt) == {"dispatch": len(jobs) - 2 * watchdog.PAGE,
                                     "holds_closed": 0}
    sent = [m["job_id"] for m in renders_sent(fx, jobs[0].plan[0])]
    assert sorted(sent) == [j.id for j in jobs]  # every one, once


# -- leftover holds ------------------------------------------------------------------------
def test_a_backlog_of_fresh_holds_is_not_read(fx: Fakes) -> None:
    """Every queued job holds its admission money: a backlog of fresh jobs must not
    make each run read all their holds (and a job per hold) to find the old ones."""
    leftovers = orphan_holds(fx, 30)
    stale(fx)
    for i in range(200):  # a burst just admitted: fresh holds, nothing to do
        admit(fx, f"job_{i:04d}")
    fx.ledger.holds_read = 0

    assert watchdog.sweep(fx.rt) == {"holds_closed": 30}
    assert fx.ledger.holds_read == 30  # the old holds only
    assert all(state(fx, rid) is ReservationState.RELEASED for rid in leftovers)


def test_leftover_holds_beyond_one_page_are_all_closed_in_one_run(fx: Fakes) -> None:
    leftovers = orphan_holds(fx, 2 * watchdog.HOLD_PAGE + 17)
    stale(fx)
    fresh = orphan_holds(fx, 5, "fresh")

    assert watchdog.sweep(fx.rt) == {"holds_closed": len(leftovers)}
    assert all(state(fx, rid) is ReservationState.RELEASED for rid in leftovers)
    assert all(state(fx, rid) is ReservationState.HELD for rid in fresh)


def test_the_hold_scan_stops_when_the_runs_time_is_spent_and_the_next_run_goes_on(
        fx: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run starts no page once its interval (the next run's start) is spent."""
    leftovers = orphan_holds(fx, 3 * watchdog.HOLD_PAGE)
    stale(fx)
    # A page of job reads takes 0.6 of the interval: the second page starts, no third.
    slow_reads(fx, monkeypatch, 0.6 * fx.rt.settings.watchdog_interval_s / watchdog.HOLD_PAGE)

    first = watchdog.sweep(fx.rt)
    assert first == {"holds_closed": 2 * watchdog.HOLD_PAGE}
    assert [state(fx, rid) for rid in leftovers].count(ReservationState.HELD) == \
        watchdog.HOLD_PAGE
    assert watchdog.sweep(fx.rt) == {"holds_closed": watchdog.HOLD_PAGE}
    assert all(state(fx, rid) is ReservationState.RELEASED for rid in leftovers)


# -- jobs it cannot move -------------------------------------------------------------------
def redriven(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The watchdog_redriven points emitted, by action (what its alert counts)."""
    fields = [getattr(r, "fields", {}) for r in caplog.records]
    return [f["metric_labels"]["action"] for f in fields
            if f.get("metric") == "watchdog_redriven"]


def retire(fx: Fakes, backend: str) -> None:
    """A redeploy with `backend` taken out of backends.yaml."""
    fx.rt.catalog = fx.rt.catalog.model_copy(update={"backends": tuple(
        b for b in fx.rt.catalog.backends if b.name != backend)})


def test_a_queued_job_whose_backend_left_the_catalog_is_ended_and_its_money_released(
        fx: Fakes, caplog: pytest.LogCaptureFixture) -> None:
    """Its dispatch was lost; since then its first backend was removed from the
    catalog. Re-driving it can only fail, on every run: it is ended FAILED, saying
    why, and admission's hold goes back."""
    job = admit(fx)
    assert figures(fx).reserved_micros > 0
    retire(fx, job.plan[0])
    fx.bus.clear()
    stale(fx)

    with caplog.at_level(logging.INFO):
        assert watchdog.sweep(fx.rt) == {"end": 1, "holds_closed": 0}
    after = fx.store.get(job.id)
    assert after is not None
    assert after.status is JobStatus.FAILED
    assert f"{job.plan[0]} is no longer in the catalog" in (after.status_reason or "")
    assert figures(fx).reserved_micros == 0
    assert fx.bus.event_types() == ["job.failed"]
    assert redriven(caplog) == ["end"]
    stale(fx)
    assert watchdog.sweep(fx.rt) == {"holds_closed": 0}


def test_a_render_whose_backend_left_the_catalog_is_ended_and_its_holds_released(
        fx: Fakes) -> None:
    """Its render died holding the attempt; its backend has been removed since: no
    render function will ever take the attempt over."""
    job = admit(fx)
    claimed = fx.store.mutate(job.id, lambda j: lifecycle.claim_attempt(
        j, job.plan[0], 0, "d1", fx.clock(), fx.rt.settings.attempt_lease, 0.32))
    assert claimed is not None
    budget.reserve(fx.rt, claimed[0], 0, 0.32)
    retire(fx, job.plan[0])
    fx.bus.clear()
    stale(fx)

    assert watchdog.sweep(fx.rt) == {"end": 1, "holds_closed": 0}
    after = fx.store.get(job.id)
    assert after is not None
    assert after.status is JobStatus.FAILED
    assert after.attempts[0].status is AttemptStatus.FAILED
    assert after.attempts[0].error is not None
    assert after.attempts[0].error.code == "backend_removed"
    assert figures(fx).reserved_micros == 0
    assert fx.ledger.held(DAY) == []


def test_a_job_whose_re_drive_fails_is_counted_and_does_not_hold_up_the_others(
        fx: Fakes, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The oldest job's re-drive raises on every run (here its publish): the run goes
    on to the others, and the failure is a watchdog_redriven point (action=error),
    so the watchdog's alert fires even though nothing moved it."""
    jobs = [admit(fx, f"job_{i}") for i in range(5)]
    publish = fx.bus.publish

    def failing(topic: str, payload: dict[str, Any],
                attributes: dict[str, str] | None = None) -> str:
        if (attributes or {}).get("job_id") == jobs[0].id:
            raise RuntimeError("publish refused")
        return publish(topic, payload, attributes)
    monkeypatch.setattr(fx.bus, "publish", failing)
    stale(fx)

    with caplog.at_level(logging.INFO):
        assert watchdog.sweep(fx.rt) == {"errors": 1, "dispatch": 4, "holds_closed": 0}
    assert redriven(caplog).count("error") == 1
    assert redriven(caplog).count("dispatch") == 4


def test_a_task_on_a_backend_that_left_the_catalog_is_counted_at_its_estimate(
        fx: Fakes, caplog: pytest.LogCaptureFixture) -> None:
    """Its render died while the provider task ran; its backend has been removed
    since, so no deployment is left to stop the task and read what it cost. The job
    ends FAILED and its hold is settled at the estimate (never under-counted)."""
    job = admit(fx)
    claimed = fx.store.mutate(job.id, lambda j: lifecycle.claim_attempt(
        j, job.plan[0], 0, "d1", fx.clock(), fx.rt.settings.attempt_lease, 0.32))
    assert claimed is not None
    budget.reserve(fx.rt, claimed[0], 0, 0.32)
    fx.store.mutate(job.id, lambda j: lifecycle.record_task(j, 0, "task-1", fx.clock()))
    retire(fx, job.plan[0])
    stale(fx)

    with caplog.at_level(logging.INFO):
        assert watchdog.sweep(fx.rt) == {"end": 1, "holds_closed": 1}
    after = fx.store.get(job.id)
    assert after is not None
    assert after.status is JobStatus.FAILED
    assert not after.attempts[0].cost_pending
    assert after.cost_usd == pytest.approx(after.attempts[0].estimated_cost_usd)
    day = figures(fx)
    assert day.reserved_micros == 0
    assert day.spent_micros == to_micros(after.attempts[0].estimated_cost_usd)
    assert redriven(caplog) == ["end", "close_hold"]
    assert watchdog.sweep(fx.rt) == {"holds_closed": 0}


def test_a_hold_that_cannot_be_closed_is_counted_and_does_not_hold_up_the_others(
        fx: Fakes, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    leftovers = orphan_holds(fx, 5)
    stale(fx)
    get = fx.store.get

    def failing(job_id: str) -> Job | None:
        if job_id == f"gone-{leftovers[0]}":
            raise RuntimeError("read failed")
        return get(job_id)
    monkeypatch.setattr(fx.store, "get", failing)

    with caplog.at_level(logging.INFO):
        assert watchdog.sweep(fx.rt) == {"holds_closed": 4}
    assert redriven(caplog).count("error") == 1
    assert state(fx, leftovers[0]) is ReservationState.HELD
    assert all(state(fx, rid) is ReservationState.RELEASED for rid in leftovers[1:])


# -- followers -----------------------------------------------------------------------------
CACHED = {"reuse": "cached", "seed": 7}


def join(fx: Fakes) -> tuple[Job, Job]:
    """A job rendering, and an identical request that joined it (its follower)."""
    leader = admit(fx, "job_1", **CACHED)
    follower = admit(fx, "job_2", **CACHED)
    assert follower.reused_from == leader.id
    return leader, follower


def test_a_follower_whose_leader_does_not_exist_is_ended_and_counted(
        fx: Fakes, caplog: pytest.LogCaptureFixture) -> None:
    """The job it joined was never stored (its admission died after taking the lead):
    nothing would ever end the follower but the watchdog, which says so."""
    leader, follower = join(fx)
    del fx.store.docs[leader.id]
    fx.bus.clear()
    stale(fx)

    with caplog.at_level(logging.INFO):
        assert watchdog.sweep(fx.rt) == {"end_follower": 1, "holds_closed": 1}
    after = fx.store.get(follower.id)
    assert after is not None
    assert after.status is JobStatus.FAILED
    assert f"{leader.id} it joined does not exist" in (after.status_reason or "")
    assert fx.bus.event_types() == ["job.failed"]
    assert redriven(caplog) == ["end_follower", "close_hold"]  # and the leader's hold
    assert figures(fx).reserved_micros == 0
    assert watchdog.sweep(fx.rt) == {"holds_closed": 0}


def test_a_follower_of_a_live_leader_is_left_alone_and_not_counted(fx: Fakes) -> None:
    _, follower = join(fx)
    stale(fx)

    assert watchdog.sweep(fx.rt) == {"dispatch": 1, "holds_closed": 0}  # the leader's
    after = fx.store.get(follower.id)
    assert after is not None
    assert after.status is JobStatus.QUEUED
