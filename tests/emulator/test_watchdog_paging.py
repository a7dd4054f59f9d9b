"""The watchdog's two queries on the real Firestore emulator, beyond one page: the jobs
that stopped moving (FirestoreJobStore.unmoved) and the old budget holds
(FirestoreLedger.held_before). Each returns only what is old enough, oldest first,
and its cursor carries on where the last page stopped, across ties.

A Firestore emulator of its own (no functions, no watchdog timer): a running
watchdog would act on these old jobs and holds while the test reads them.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import os
import uuid
from collections.abc import Iterator

import pytest
from google.cloud import firestore

from aiprod.adapters.ledger import DAYS, GLOBAL, RESERVATIONS, FirestoreLedger, Held, Scope
from aiprod.adapters.store import FirestoreJobStore
from aiprod.domain import watchdog as policy
from aiprod.domain.job import Job, JobRequest, JobStatus
from aiprod.services import watchdog
from aiprod_dev.localstack.processes import ManagedProcess, free_port
from aiprod_dev.localstack.stack import PROJECT

pytestmark = pytest.mark.emulator

ROOM = Scope(GLOBAL, 10**12)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[firestore.Client]:
    port = free_port()
    emulator = ManagedProcess(
        "firestore-emulator", "emulator",
        ["gcloud", "emulators", "firestore", "start", f"--host-port=127.0.0.1:{port}",
         "--quiet"],
        url=f"http://127.0.0.1:{port}", ready_url=f"http://127.0.0.1:{port}/",
        log_path=tmp_path_factory.mktemp("firestore") / "firestore-emulator.log")
    emulator.start()
    saved = os.environ.get("FIRESTORE_EMULATOR_HOST")
    try:
        emulator.wait_ready(60)
        os.environ["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{port}"
        yield firestore.Client(project=PROJECT)
    finally:
        if saved is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = saved
        emulator.stop()


def job(job_id: str, status: JobStatus, updated_at: dt.datetime) -> Job:
    return Job(id=job_id, owner="test", request=JobRequest(prompt="a fox"),
               plan=["replicate-seedance"], status=status, estimated_cost_usd=0.4,
               created_at=updated_at, updated_at=updated_at)


def test_unmoved_jobs_come_oldest_first_across_pages(client: firestore.Client) -> None:
    """More stuck jobs than one page (watchdog.PAGE), two by two on the same instant
    (the cursor must not skip or repeat a tie): every page in order, then the end.
    Jobs that moved since the bound, and ended jobs, are not read at all."""
    store = FirestoreJobStore(client)
    now = dt.datetime.now(dt.UTC)
    bound = now - dt.timedelta(minutes=10)
    count = 2 * watchdog.PAGE + 31
    stuck = {f"stuck_{i:04d}": bound - dt.timedelta(hours=1) + dt.timedelta(seconds=i // 2)
             for i in range(count)}
    statuses = policy.OPEN_STATUSES
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        created = list(pool.map(store.create, [
            *(job(i, statuses[n % 2], at) for n, (i, at) in enumerate(stuck.items())),
            *(job(f"moving_{i:03d}", JobStatus.QUEUED, now) for i in range(20)),
            *(job(f"ended_{i:03d}", JobStatus.SUCCEEDED, bound - dt.timedelta(hours=2))
              for i in range(20))]))
    assert all(created)

    pages: list[list[str]] = []
    cursor: object | None = None
    while True:
        jobs, cursor = store.unmoved(statuses, bound, watchdog.PAGE, cursor)
        pages.append([j.id for j in jobs])
        if cursor is None:
            break

    assert [len(p) for p in pages] == [watchdog.PAGE, watchdog.PAGE, 31]
    assert [i for p in pages for i in p] == sorted(stuck, key=lambda i: (stuck[i], i))


def test_old_holds_come_oldest_first_across_pages_and_fresh_or_closed_ones_never(
        client: firestore.Client) -> None:
    """A backlog's holds: old ones the watchdog must look at, more than one page,
    some already closed; then a burst of fresh ones it must not read."""
    ledger = FirestoreLedger(client)
    day = f"test-{uuid.uuid4().hex[:10]}"

    def reserve(rid: str) -> bool:
        return ledger.reserve(day, rid, 1000, [ROOM], job_id=f"job-{rid}")

    old = [f"old-{i:04d}" for i in range(watchdog.HOLD_PAGE + 60)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(reserve, old))
        closed = old[::16]
        assert all(ledger.release(day, rid) for rid in closed[::2])
        assert all(ledger.settle(day, rid, 500) for rid in closed[1::2])
        bound = dt.datetime.now(dt.UTC)
        assert all(pool.map(reserve, [f"fresh-{i:04d}" for i in range(40)]))

    pages: list[list[Held]] = []
    cursor: object | None = None
    while True:
        holds, cursor = ledger.held_before(day, bound, watchdog.HOLD_PAGE, cursor)
        pages.append(holds)
        if cursor is None:
            break

    kept = set(old) - set(closed)
    expected = sorted((s.get("created_at"), s.id) for s in client.collection(DAYS)
                      .document(day).collection(RESERVATIONS).stream() if s.id in kept)
    assert [len(p) for p in pages] == [watchdog.HOLD_PAGE, len(expected) - watchdog.HOLD_PAGE]
    assert [(h.created_at, h.reservation_id) for p in pages for h in p] == expected
    assert all(h.job_id == f"job-{h.reservation_id}" and h.day == day
               for p in pages for h in p)
