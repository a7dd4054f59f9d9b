"""The budget ledger on the real Firestore emulator: exact caps under contention."""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time
import uuid
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore

from aiprod.adapters.ledger import COUNTERS, DAYS, GLOBAL, FirestoreLedger, Scope
from aiprod.domain.budget import to_micros
from tests.conftest import LocalStack

pytestmark = pytest.mark.emulator

USD = to_micros(1.0)


def fresh_day() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def test_100_concurrent_reservations_against_room_for_10_give_exactly_10(
        stack: LocalStack) -> None:
    ledger, day = FirestoreLedger(stack.firestore()), fresh_day()
    scope = Scope(GLOBAL, 10 * USD)

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda i: ledger.reserve(day, f"r{i}", USD, [scope]),
                                range(100)))

    assert results.count(True) == 10
    figures = ledger.figures(day, scope, 9 * USD)
    assert figures.committed_micros == 10 * USD
    assert figures.reserved_micros == 10 * USD


def test_committed_money_never_exceeds_the_limit_as_money_comes_and_goes(
        stack: LocalStack) -> None:
    """Callers reserve, 'call the provider' for a while, then settle part or release
    all. At every instant, the money of callers that went ahead plus what was
    settled fits the limit; at the end nothing is left reserved."""
    ledger, day = FirestoreLedger(stack.firestore()), fresh_day()
    limit = 20 * USD
    scope = Scope(GLOBAL, limit)
    lock = threading.Lock()
    committed = 0  # live holds of callers that went ahead + settled spend
    peak = 0

    def caller(i: int) -> bool:
        nonlocal committed, peak
        amount = random.choice([USD // 2, USD, 2 * USD])
        if not ledger.reserve(day, f"r{i}", amount, [scope]):
            return False
        with lock:
            committed += amount
            peak = max(peak, committed)
        time.sleep(random.uniform(0, 0.02))
        spend = amount // 4 if random.random() < 0.5 else 0
        with lock:
            committed -= amount - spend
        if spend:
            assert ledger.settle(day, f"r{i}", spend)
        else:
            assert ledger.release(day, f"r{i}")
        return True

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(caller, range(300)))

    assert peak <= limit
    assert results.count(True) > 20  # released money was reused
    figures = ledger.figures(day, scope, limit)
    assert figures.reserved_micros == 0  # every hold was settled or released: no leak
    assert figures.committed_micros == figures.spent_micros <= limit


def test_no_spurious_refusal_when_every_reservation_fits(stack: LocalStack) -> None:
    """50 callers at once whose amounts add up to exactly the limit: all must get in,
    however their holds interleave."""
    ledger, day = FirestoreLedger(stack.firestore()), fresh_day()
    scope = Scope(GLOBAL, 10 * USD)
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda i: ledger.reserve(day, f"r{i}", USD // 5, [scope]),
                                range(50)))
    assert all(results)
    assert not ledger.reserve(day, "one-more", 1, [scope])


def test_settle_and_release_happen_once(stack: LocalStack) -> None:
    ledger, day = FirestoreLedger(stack.firestore()), fresh_day()
    scope = Scope(GLOBAL, 10 * USD)
    assert ledger.reserve(day, "r", 2 * USD, [scope])
    assert ledger.reserve(day, "r", 2 * USD, [scope])  # idempotent: the same hold
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: ledger.settle(day, "r", USD), range(8)))
    assert outcomes.count(True) == 1
    assert not ledger.release(day, "r")
    figures = ledger.figures(day, scope, 10 * USD)
    assert (figures.spent_micros, figures.reserved_micros) == (USD, 0)


def test_a_reservation_must_fit_every_scope(stack: LocalStack) -> None:
    ledger, day = FirestoreLedger(stack.firestore()), fresh_day()
    day_scope, key_scope = Scope(GLOBAL, 10 * USD), Scope("key:k1", 3 * USD)
    assert ledger.reserve(day, "a", 2 * USD, [key_scope, day_scope])
    assert not ledger.reserve(day, "b", 2 * USD, [key_scope, day_scope])
    assert ledger.reserve(day, "c", 2 * USD, [day_scope])
    assert ledger.figures(day, day_scope, 0).committed_micros == 4 * USD
    assert ledger.figures(day, key_scope, 0).committed_micros == 2 * USD


def lose_every_first_commit_answer(client: firestore.Client) -> list[int]:
    """Make every Commit land on the emulator but lose its answer, as a dropped
    connection does: the client's own retry policy for Commit (UNAVAILABLE is
    retryable, see docs/budget-ledger.md) then sends the same request again.
    Returns a list that grows by one per replayed commit."""
    transport = client._firestore_api._transport
    wrapped = transport._wrapped_methods[transport.commit]
    real = wrapped._target
    replays: list[int] = []

    def commit(request: Any, **kwargs: Any) -> Any:
        if id(request) not in seen:
            seen.add(id(request))
            real(request, **kwargs)  # applied on the server...
            raise gexc.ServiceUnavailable("connection reset")  # ...but the answer is lost
        replays.append(1)
        return real(request, **kwargs)

    seen: set[int] = set()
    wrapped._target = commit
    return replays


def counters(client: firestore.Client, day: str, scope: str = GLOBAL) -> dict[str, int]:
    ref = client.collection(DAYS).document(day)
    if scope != GLOBAL:
        ref = ref.collection("keys").document(scope.removeprefix("key:"))
    data = ref.get().to_dict() or {}
    return {name: int(data.get(name, 0)) for name in COUNTERS}


def test_a_replayed_commit_counts_once(stack: LocalStack) -> None:
    """Every ledger batch is applied twice (the first answer lost, the client's retry
    resends it): each hold, grant, refund, settlement and release counts once, and
    the callers get the answers they would have got without the replay."""
    client = stack.firestore()
    replays = lose_every_first_commit_answer(client)
    ledger, day = FirestoreLedger(client), fresh_day()
    day_scope, key_scope = Scope(GLOBAL, 10 * USD), Scope("key:k1", 5 * USD)

    assert ledger.reserve(day, "a", 2 * USD, [key_scope, day_scope])
    assert ledger.reserve(day, "b", USD, [day_scope])
    assert not ledger.reserve(day, "too-big", 4 * USD, [key_scope, day_scope])
    assert ledger.settle(day, "a", USD)
    assert ledger.release(day, "b")
    assert ledger.first_crossing(day, "warning")
    assert not ledger.first_crossing(day, "warning")

    assert len(replays) >= 8  # the replays really happened
    assert counters(client, day) == {"held": 7 * USD, "refunded": 4 * USD,
                                     "granted": 3 * USD, "returned": 2 * USD, "spent": USD}
    assert counters(client, day, "key:k1") == {"held": 6 * USD, "refunded": 4 * USD,
                                               "granted": 2 * USD, "returned": USD,
                                               "spent": USD}
    figures = ledger.figures(day, day_scope, 9 * USD)
    assert (figures.spent_micros, figures.reserved_micros) == (USD, 0)
    # The spend per hour (the forecast's history) is in the settlement's batch: once.
    assert sum(ledger.hourly_spent(day, GLOBAL)) == USD
    assert sum(ledger.hourly_spent(day, "key:k1")) == USD


def test_a_hold_closed_elsewhere_before_its_grant_does_not_go_ahead(
        stack: LocalStack) -> None:
    """The grant is guarded too: once the dead-letter handler (say) released a hold
    that never went ahead, its holder must not mark it granted and spend."""
    client = stack.firestore()
    ledger, day = FirestoreLedger(client), fresh_day()
    scope = Scope(GLOBAL, 10 * USD)
    real_write = ledger._write
    closed = False

    def close_first(reservation: Any, version: Any, change: dict[str, Any], *args: Any,
                    **increments: int) -> Any:
        nonlocal closed
        if "granted" in increments and not closed:
            closed = True
            assert ledger.release(day, "r")
        return real_write(reservation, version, change, *args, **increments)

    ledger._write = close_first  # type: ignore[method-assign]
    assert not ledger.reserve(day, "r", 2 * USD, [scope])
    assert counters(client, day) == {"held": 2 * USD, "refunded": 2 * USD, "granted": 0,
                                     "returned": 0, "spent": 0}


def test_settled_money_is_counted_in_the_hour_it_settled_per_scope(stack: LocalStack) -> None:
    """The spend forecast's history (issue 14): written in the settlement's own batch."""
    import datetime as dt

    ledger = FirestoreLedger(stack.firestore())
    day = dt.datetime.now(dt.UTC).date().isoformat()
    scope = Scope(f"key:{uuid.uuid4().hex[:12]}", 10 * USD)  # a scope no other test uses
    for rid, spent in (("a", USD // 2), ("b", USD // 4), ("c", 0)):
        name = f"{scope.name}-{rid}"
        assert ledger.reserve(day, name, USD, [scope])
        assert ledger.settle(day, name, spent) if spent else ledger.release(day, name)
    assert not ledger.settle(day, f"{scope.name}-a", USD // 2)  # settled once only
    hour = dt.datetime.now(dt.UTC).hour

    hourly = ledger.hourly_spent(day, scope.name)

    assert len(hourly) == 24
    if dt.datetime.now(dt.UTC).hour == hour:  # not across an hour boundary
        assert hourly[hour] == USD // 2 + USD // 4
    assert sum(hourly) == USD // 2 + USD // 4 == ledger.figures(day, scope, 0).spent_micros
