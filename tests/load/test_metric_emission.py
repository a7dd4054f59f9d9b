"""50 instances emitting metric points at once: no point lost, no line garbled.

Each instance is a process (forked from a server that has already imported
aiprod, as a warm Cloud Functions instance has) running 4 threads (concurrent
requests), and all of them write to one shared file: harsher than production,
where each instance has its own stdout.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
from pathlib import Path

INSTANCES, THREADS, PER_THREAD = 50, 4, 100


def _instance(path: str, instance: int) -> None:
    from aiprod.observability import logs, metrics

    # The instance's stdout: the shared file, opened for appending.
    sink = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logs.CloudLoggingFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)

    def requests(thread: int) -> None:
        for n in range(PER_THREAD):
            metrics.observe("render_duration_s", instance * 1_000_000 + thread * 10_000 + n,
                            backend=f"i{instance}-t{thread}",
                            job_id=f"job-{instance}-{thread}-{n}")

    workers = [threading.Thread(target=requests, args=(t,)) for t in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sink.close()


def test_50_concurrent_instances_lose_and_garble_no_point(tmp_path: Path) -> None:
    out = tmp_path / "stdout.log"
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["aiprod.observability.metrics", "aiprod.observability.logs"])
    processes = [context.Process(target=_instance, args=(str(out), i))
                 for i in range(INSTANCES)]
    for process in processes:  # all started before any is awaited: they run at once
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * INSTANCES

    seen: dict[int, int] = {}
    raw = out.read_text().splitlines()
    for line in raw:
        point = json.loads(line)  # a garbled or interleaved line fails here
        assert point["severity"] == "INFO"
        assert point["metric"] == "render_duration_s"
        value = int(point["value"])
        instance, rest = divmod(value, 1_000_000)
        thread, n = divmod(rest, 10_000)
        assert point["metric_labels"] == {"backend": f"i{instance}-t{thread}"}
        assert point["job_id"] == f"job-{instance}-{thread}-{n}"
        seen[value] = seen.get(value, 0) + 1
    expected = {i * 1_000_000 + t * 10_000 + n for i in range(INSTANCES)
                for t in range(THREADS) for n in range(PER_THREAD)}
    assert len(raw) == len(expected) == INSTANCES * THREADS * PER_THREAD
    assert set(seen) == expected, f"{len(expected - set(seen))} points lost"
    assert set(seen.values()) == {1}, "points duplicated"
