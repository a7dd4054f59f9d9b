"""Per-key request counters: the hottest document's writes, before and after
spreading a key's minute over shard counters (part of `make bench`; runs alone
too, with its own Firestore emulator: `python bench/rate_limits.py`).

Firestore sustains about one write per second per document
(https://cloud.google.com/firestore/docs/solutions/counters). The workload is one
minute's worth of requests for one key at the default limit (600), sent by 20
threads through the real adapter, twice in the same run:

- baseline: one counter document per key and minute (the scheme before sharding:
  every request increments it);
- sharded: services.access.RateLimiter (domain.ratelimit's shard quotas).

Figures: writes on the hottest document for that minute of traffic (and so its
sustained writes per second when the traffic is spread over the minute), the
number of documents, requests per second through the counter, how many were
admitted (the cap is exact: exactly the limit) and how many failed (the counter's
commit still ABORTED by contention after 10 s of retries: the emulator's lock
timeout on a hot document). Figures, not pass/fail.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

LIMIT = 600
REQUESTS = 900  # a minute at the limit, plus 300 over it
THREADS = 20
INSTANCES = 4


def _run(db: Any, key_id: str, admit: Any) -> dict[str, Any]:
    from google.api_core import exceptions as gexc
    from google.cloud import firestore

    from aiprod.adapters.access import RATE_LIMITS

    def one(i: int) -> bool | None:
        try:
            return bool(admit(i))
        except (gexc.GoogleAPICallError, gexc.RetryError):
            return None  # the counter's commit gave up (ABORTED by contention)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(one, range(REQUESTS)))
    seconds = time.perf_counter() - start
    admitted, failed = outcomes.count(True), outcomes.count(None)
    counts = [int((doc.to_dict() or {})["count"]) for doc in db.collection(RATE_LIMITS).where(
        filter=firestore.FieldFilter("key_id", "==", key_id)).stream()]
    return {"requests": REQUESTS, "admitted": admitted, "failed": failed,
            "documents": len(counts),
            "writes": sum(counts), "hottest_document_writes": max(counts),
            "hottest_document_writes_per_s_over_the_minute": round(max(counts) / 60, 2),
            "requests_per_s": round(REQUESTS / seconds, 1)}


def measure(db: Any) -> dict[str, Any]:
    from aiprod.adapters.access import FirestoreAccess
    from aiprod.services.access import RateLimiter

    store = FirestoreAccess(db)
    window = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    expires = window + dt.timedelta(minutes=2)

    baseline_key = f"bench{uuid.uuid4().hex[:8]}"
    baseline = _run(db, baseline_key, lambda _: store.count_request(
        baseline_key, window, 0, expires) <= LIMIT)  # one counter for the key's minute

    sharded_key = f"bench{uuid.uuid4().hex[:8]}"
    limiters = [RateLimiter() for _ in range(INSTANCES)]
    sharded = _run(db, sharded_key, lambda i: limiters[i % INSTANCES].admit(
        store, sharded_key, LIMIT, window, expires))
    return {"limit_per_minute": LIMIT, "threads": THREADS, "api_instances": INSTANCES,
            "one_document": baseline, "sharded": sharded,
            "hottest_document_ratio": round(sharded["hottest_document_writes"]
                                            / baseline["hottest_document_writes"], 3),
            "throughput_ratio": round(sharded["requests_per_s"] / baseline["requests_per_s"], 2)}


def main() -> None:
    from aiprod_dev.localstack.processes import ManagedProcess, free_port

    port = free_port()
    logs = Path(tempfile.mkdtemp(prefix="aiprod-bench-rl-"))
    emulator = ManagedProcess(
        "firestore-emulator", "emulator",
        ["gcloud", "emulators", "firestore", "start", f"--host-port=127.0.0.1:{port}",
         "--quiet"],
        url=f"http://127.0.0.1:{port}", ready_url=f"http://127.0.0.1:{port}/",
        log_path=logs / "firestore-emulator.log")
    print("starting the Firestore emulator ...", file=sys.stderr, flush=True)
    emulator.start()
    try:
        emulator.wait_ready(120)
        import os

        os.environ["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{port}"
        from google.cloud import firestore

        print(json.dumps(measure(firestore.Client(project="aiprod-bench")), indent=2))
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
