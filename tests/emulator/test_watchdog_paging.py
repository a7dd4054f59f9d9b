"""The watchdog's query of old budget holds (FirestoreLedger.held_before) on the real
Firestore emulator, beyond one page: only what is old enough, oldest first, and its
cursor carries on where the last page stopped.

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
