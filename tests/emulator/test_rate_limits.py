"""Per-key request limits on the Firestore emulator: spread over shard counters so
no document takes more than about one write a second (Firestore's sustained rate
per document, https://cloud.google.com/firestore/docs/solutions/counters), with the
cap still exact under concurrency from several API instances."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import types
import uuid

import pytest
from google.cloud import firestore

from aiprod.adapters.access import RATE_LIMITS, FirestoreAccess
from aiprod.domain.apikeys import Principal
from aiprod.domain.problems import Problem
from aiprod.domain.ratelimit import shard_quotas
from aiprod.services.access import RateLimiter, check_rate
from tests.conftest import LocalStack

pytestmark = pytest.mark.emulator

WINDOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
EXPIRES = WINDOW + dt.timedelta(minutes=2)
INSTANCES = 4  # API instances, each with its own memory of full shards


THREADS = 40


def requests(stack: LocalStack, key_id: str, limit: int, count: int,
             limiters: list[RateLimiter] | None = None) -> list[bool]:
    """`count` requests at once from THREADS threads spread over the instances."""
    store = FirestoreAccess(stack.firestore())
    limiters = limiters or [RateLimiter() for _ in range(INSTANCES)]
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(lambda i: limiters[i % len(limiters)].admit(
            store, key_id, limit, WINDOW, EXPIRES), range(count)))


def counters(stack: LocalStack, key_id: str) -> list[dict[str, object]]:
    docs = stack.firestore().collection(RATE_LIMITS).where(
        filter=firestore.FieldFilter("key_id", "==", key_id)).stream()
    return [doc.to_dict() or {} for doc in docs]


def test_a_busy_key_gets_exactly_its_limit_and_no_document_runs_hot(
        stack: LocalStack) -> None:
    key_id = uuid.uuid4().hex[:12]
    instances = [RateLimiter() for _ in range(INSTANCES)]
    admitted = requests(stack, key_id, 600, 900, instances)

    assert admitted.count(True) == 600  # never more than the limit (margin 0)
    shards = counters(stack, key_id)
    assert len(shards) == 10
    for shard in shards:
        assert shard["expires_at"] == EXPIRES  # the TTL policy's field, on every document
        # its quota (60 a minute: one write a second), plus probes by requests in
        # flight when it filled (each instance then remembers it is full): at most
        # twice its share, where one counter took all 900
        assert int(shard["count"]) <= 2 * 60  # type: ignore[call-overload]
    writes = sum(int(shard["count"]) for shard in shards)  # type: ignore[call-overload]

    assert not any(requests(stack, key_id, 600, 400, instances))
    after = sum(int(shard["count"]) for shard in counters(stack, key_id))  # type: ignore[call-overload]
    assert after == writes  # past the limit, instances that know it write nothing


def test_a_key_under_its_limit_is_never_refused(stack: LocalStack) -> None:
    key_id = uuid.uuid4().hex[:12]
    assert shard_quotas(130) == [44, 43, 43]

    assert all(requests(stack, key_id, 130, 130))

    principal = Principal(key_id=key_id, name="k", daily_budget_usd=None, rate_limit_rpm=130)
    rt = types.SimpleNamespace(clock=lambda: WINDOW + dt.timedelta(seconds=30),
                               access=FirestoreAccess(stack.firestore()))
    with pytest.raises(Problem) as refused:
        check_rate(rt, principal, RateLimiter())  # type: ignore[arg-type]
    assert refused.value.status == 429
    assert refused.value.headers["Retry-After"] == "30"
