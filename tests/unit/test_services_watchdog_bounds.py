"""The watchdog's run stays bounded whatever the backlog: it reads only what is old
enough to act on, a page at a time, and stops starting pages once its interval is
spent (the next run goes on). On in-memory fakes (tests/fakes.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aiprod.adapters.ledger import ReservationState, Scope
from aiprod.domain.job import Job
from aiprod.services import watchdog
from tests.fakes import Fakes
from tests.service_helpers import DAY, admit

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
