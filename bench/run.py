"""`make bench`: AIPROD's orchestration overhead against a floor pipeline measured
in the same run, on the same emulators (ratios, since these machines are noisy).

Prints one JSON document. Figures, not pass/fail.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from aiprod_dev.localstack import control
from aiprod_dev.localstack.processes import ManagedProcess, free_port
from capacity import measure as capacity
from metrics_overhead import measure as metrics_overhead
from output_check import measure as output_check
from rate_limits import measure as rate_limits
from uploads import measure as uploads

HERE = Path(__file__).resolve().parent
SEQUENTIAL_JOBS = int(os.environ.get("BENCH_JOBS", "40"))
BURST_JOBS = int(os.environ.get("BENCH_BURST", "200"))
BURST_CONCURRENCY = 20


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49] * 1000, 1), "p95_ms": round(cuts[94] * 1000, 1)}


class Floor:
    """The floor pipeline's two functions, on the stack's emulators."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

        exe = str(Path(sys.executable).parent / "functions-framework")
        self.processes = []
        for target in ("floor_http", "floor_push"):
            port = free_port()
            self.processes.append(ManagedProcess(
                target, "function", [exe, f"--target={target}",
                                     f"--source={HERE / 'floor_main.py'}",
                                     "--host=127.0.0.1", f"--port={port}"],
                url=f"http://127.0.0.1:{port}", ready_url=f"http://127.0.0.1:{port}/",
                answers_any_status=True, log_path=logs / f"{target}.log", env=env))
        for process in self.processes:
            process.start()
        for process in self.processes:
            process.wait_ready(60)
        os.environ.update(env)
        project = env["GOOGLE_CLOUD_PROJECT"]
        publisher, subscriber = PublisherClient(), SubscriberClient()
        topic = publisher.topic_path(project, "floor")
        publisher.create_topic(name=topic)
        subscriber.create_subscription(request={
            "name": subscriber.subscription_path(project, "floor"), "topic": topic,
            "push_config": {"push_endpoint": f"{self.processes[1].url}/{topic}"},
            "ack_deadline_seconds": 30})
        self.url = self.processes[0].url

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def measure_one(submit: Callable[[], str], done: Callable[[str], bool]) -> float:
    start = time.perf_counter()
    item = submit()
    while not done(item):
        time.sleep(0.002)
    return time.perf_counter() - start


def cpu_seconds(state: dict[str, Any]) -> dict[str, float]:
    """CPU time used so far by each part of the stack (with its children, such as
    the emulators' Java processes), and by this benchmark's own process."""
    used: dict[str, float] = {}
    for part in state["parts"]:
        try:
            process = psutil.Process(part["pid"])
            tree = [process, *process.children(recursive=True)]
            used[part["name"]] = sum(p.cpu_times().user + p.cpu_times().system for p in tree)
        except psutil.NoSuchProcess:
            continue
    me = psutil.Process().cpu_times()
    used["bench client"] = me.user + me.system
    return used


def burst(submit: Callable[[int], str], count_done: Callable[[], int],
          timeout: float = 300) -> dict[str, float]:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(BURST_CONCURRENCY) as pool:
        list(pool.map(submit, range(BURST_JOBS)))
    done = 0
    while time.perf_counter() - start < timeout:
        done = count_done()
        if done >= BURST_JOBS:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    return {"jobs": BURST_JOBS, "succeeded": done, "lost": BURST_JOBS - done,
            "seconds": round(elapsed, 2), "jobs_per_s": round(done / elapsed, 1)}


def ledger_bench(db: Any, callers: int = 50, reservations: int = 500) -> dict[str, Any]:
    """Reservations per second under contention, against plain server-side increments
    on one document (the floor for any counter) at the same concurrency."""
    from google.cloud import firestore

    from aiprod.adapters.ledger import GLOBAL, FirestoreLedger, Scope

    ledger = FirestoreLedger(db)
    fits = reservations // 2  # the cap is hit halfway: exactness is checked too
    day = f"bench-{uuid.uuid4().hex[:8]}"
    scope = Scope(GLOBAL, fits * 1000)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(callers) as pool:
        granted = sum(pool.map(lambda i: ledger.reserve(day, f"r{i}", 1000, [scope]),
                               range(reservations)))
    ledger_s = time.perf_counter() - start

    ref = db.collection("bench").document(day)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(callers) as pool:
        list(pool.map(lambda _: ref.set({"n": firestore.Increment(1)}, merge=True),
                      range(reservations)))
    floor_s = time.perf_counter() - start

    figures = ledger.figures(day, scope, 0)
    return {"callers": callers, "reservations": reservations,
            "granted": granted, "cap_fits": fits,
            "cap_exact": granted == fits and figures.committed_micros == fits * 1000,
            "reservations_per_s": round(reservations / ledger_s, 1),
            "increment_floor_per_s": round(reservations / floor_s, 1),
            "ratio_to_floor": round(floor_s / ledger_s, 2)}


def main() -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="aiprod-bench-"))
    say(f"starting the local stack in {state_dir} ...")
    state = control.up(state_dir, port_base=0, sim_latency_s=0.0)
    os.environ.update(state["env"])
    from google.cloud import firestore

    db = firestore.Client(project=state["project"])
    floor = Floor(state["env"], state_dir / "logs")
    api = state["api_url"]
    # the stack's own dev API key (written to its state folder, never printed)
    api_key = Path(state["api_key_file"]).read_text().strip()
    http = httpx.Client(timeout=60, headers={"Authorization": f"Bearer {api_key}"})
    run = uuid.uuid4().hex[:8]
    try:
        def job_submit(n: int = 0) -> str:
            response = http.post(f"{api}/v1/jobs", json={
                "prompt": f"bench {run} {n} {uuid.uuid4().hex[:6]}",
                "metadata": {"bench": run}})
            response.raise_for_status()
            return str(response.json()["id"])

        def job_done(job_id: str) -> bool:
            doc = db.collection("jobs").document(job_id).get()
            status = (doc.to_dict() or {}).get("status")
            if status in ("FAILED", "CANCELLED", "REJECTED"):
                raise RuntimeError(f"bench job {job_id} ended {status}")
            return status == "SUCCEEDED"

        def floor_submit(n: int = 0) -> str:
            item = f"{run}-{n}-{uuid.uuid4().hex[:6]}"
            http.post(f"{floor.url}/", json={"id": item, "run": run}).raise_for_status()
            return item

        def floor_done(item: str) -> bool:
            doc = db.collection("floor").document(item).get()
            return (doc.to_dict() or {}).get("stage") == "done"

        say("warming up ...")
        for _ in range(3):
            measure_one(job_submit, job_done)
            measure_one(floor_submit, floor_done)

        say(f"{SEQUENTIAL_JOBS} jobs one at a time, interleaved with the floor ...")
        overhead, floor_times = [], []
        for _ in range(SEQUENTIAL_JOBS):
            overhead.append(measure_one(job_submit, job_done))
            floor_times.append(measure_one(floor_submit, floor_done))

        def jobs_succeeded() -> int:
            query = (db.collection("jobs").where(filter=firestore.FieldFilter(
                "request.metadata.bench", "==", run + "-burst"))
                .where(filter=firestore.FieldFilter("status", "==", "SUCCEEDED")))
            return int(query.count().get()[0][0].value)

        def floor_succeeded() -> int:
            query = (db.collection("floor").where(filter=firestore.FieldFilter(
                "run", "==", run + "-burst"))
                .where(filter=firestore.FieldFilter("stage", "==", "done")))
            return int(query.count().get()[0][0].value)

        def job_burst_submit(n: int) -> str:
            response = http.post(f"{api}/v1/jobs", json={
                "prompt": f"burst {run} {n}", "metadata": {"bench": run + "-burst"}})
            response.raise_for_status()
            return str(response.json()["id"])

        def floor_burst_submit(n: int) -> str:
            item = f"{run}-burst-{n}"
            http.post(f"{floor.url}/", json={"id": item, "run": run + "-burst"}
                      ).raise_for_status()
            return item

        say(f"burst of {BURST_JOBS} jobs, {BURST_CONCURRENCY} at a time ...")
        before = cpu_seconds(state)
        job_burst = burst(job_burst_submit, jobs_succeeded)
        after = cpu_seconds(state)
        job_burst["cpu_s_by_part"] = {name: round(after[name] - before.get(name, 0), 1)
                                      for name in sorted(after, key=lambda n: before.get(n, 0)
                                                         - after[n])[:8]}
        say(f"burst of {BURST_JOBS} floor items, {BURST_CONCURRENCY} at a time ...")
        floor_burst = burst(floor_burst_submit, floor_succeeded)

        say("ledger: 500 reservations from 50 callers at once ...")
        ledger = ledger_bench(db)

        say("rate limits: a minute of requests for one key, one counter vs shards ...")
        rate_limit_counters = rate_limits(db)

        say("metric emission: the heaviest invocation's points, against its log lines ...")
        metric_emission = metrics_overhead()

        fresh = control.status(state_dir) or state
        memory = {p["name"]: round(psutil.Process(p["pid"]).memory_info().rss / 2**20, 1)
                  for p in fresh["parts"] if p["kind"] == "function"}

        o, f = percentiles(overhead), percentiles(floor_times)
        # What the metrics of a job's heaviest invocation cost, next to the whole job.
        metric_emission["share_of_job_p50"] = round(
            metric_emission["metrics"]["p50_ms"] / o["p50_ms"], 5)
        report: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "overhead": o, "floor": f,
            "ratio": {"p50": round(o["p50_ms"] / f["p50_ms"], 2),
                      "p95": round(o["p95_ms"] / f["p95_ms"], 2)},
            "burst": {"aiprod": job_burst, "floor": floor_burst,
                      "throughput_ratio": round(job_burst["jobs_per_s"]
                                                / floor_burst["jobs_per_s"], 2)},
            "function_rss_mib": memory,
            "ledger": ledger,
            "rate_limits": rate_limit_counters,
            "metric_emission": metric_emission,
            "targets": {"overhead_p50_ratio_max": 1.5, "overhead_p95_ratio_max": 2.0,
                        "burst_throughput_ratio_min": 0.5, "rss_mib_max": 200,
                        "ledger_reservations_per_s_min": 50,
                        "metric_emission_ms_per_invocation_max": 5.0},
        }
    finally:
        floor.stop()
        control.down(state_dir)
        subprocess.run(["rm", "-rf", str(state_dir)], check=False)
    # Bursts over the deployment's capacity, and renders in flight on one process
    # (capacity.py: stacks of their own).
    report["capacity"] = capacity()
    report["output_check"] = output_check()
    report["uploads"] = uploads()  # the API's memory under large uploads
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
