"""`make bench` (or `python bench/capacity.py` alone): bursts far above the
deployment's capacity, and many renders in flight on one render process.

- burst: the stack's render functions get `--render-capacity 4` (429 beyond, as
  Cloud Run with every instance busy) and production's delivery attempts
  (functions.yaml); 10x that capacity of jobs at once, renders of a few seconds.
  Reports jobs FAILED and lost (both must be 0), dead letters (re-driven back to
  work), and the time to drain against the ideal, jobs x render time / capacity.
- in_flight: full capacity, renders of tens of seconds, production's poll
  interval; hundreds of jobs at once on one backend. Reports the most renders
  in flight on its render process and that process's peak resident memory.

Prints one JSON document. Figures, not pass/fail.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil

from aiprod_dev.localstack import control

BURST_CAPACITY = int(os.environ.get("BENCH_RENDER_CAPACITY", "4"))
BURST_JOBS = int(os.environ.get("BENCH_CAPACITY_JOBS", str(30 * BURST_CAPACITY)))
BURST_RENDER_S = float(os.environ.get("BENCH_RENDER_S", "5"))
IN_FLIGHT_JOBS = int(os.environ.get("BENCH_IN_FLIGHT_JOBS", "200"))
IN_FLIGHT_RENDER_S = float(os.environ.get("BENCH_IN_FLIGHT_RENDER_S", "30"))
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "REJECTED"}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Stack:
    """A local stack for one scenario, with its API, Firestore and parts at hand."""

    def __init__(self, sim_latency_s: float, render_capacity: int | None,
                 env: dict[str, str]) -> None:
        self.state_dir = Path(tempfile.mkdtemp(prefix="aiprod-bench-capacity-"))
        with control.environment(env):
            self.state = control.up(self.state_dir, port_base=0, sim_latency_s=sim_latency_s,
                                    render_capacity=render_capacity)
        os.environ.update(self.state["env"])
        from google.cloud import firestore

        self.db = firestore.Client(project=self.state["project"])
        key = Path(self.state["api_key_file"]).read_text().strip()
        self.http = httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"})

    def part(self, name: str) -> dict[str, Any]:
        return next(p for p in self.state["parts"] if p["name"] == name)

    def gate(self, function: str) -> dict[str, int]:
        stats: dict[str, int] = self.http.get(f"{self.part(function)['url']}/_gate/stats").json()
        return stats

    def submit(self, prompt: str) -> dict[str, Any]:
        """As a careful client would: retried on a 5xx, with one Idempotency-Key."""
        key = uuid.uuid4().hex
        for wait in (1, 2, 4, 8, 0):
            response = self.http.post(f"{self.state['api_url']}/v1/jobs",
                                      json={"prompt": prompt},
                                      headers={"Idempotency-Key": key})
            if response.status_code < 500 or not wait:
                break
            time.sleep(wait)
        response.raise_for_status()
        job: dict[str, Any] = response.json()
        return job

    def failures(self, job_ids: list[str]) -> dict[str, int]:
        """Why jobs failed: each attempt's error code, counted."""
        refs = [self.db.collection("jobs").document(j) for j in job_ids]
        codes: dict[str, int] = {}
        for doc in self.db.get_all(refs):
            job = doc.to_dict() or {}
            if job.get("status") != "FAILED":
                continue
            for attempt in job.get("attempts", []):
                code = f"{attempt.get('backend')}:{(attempt.get('error') or {}).get('code')}"
                codes[code] = codes.get(code, 0) + 1
        return codes

    def statuses(self, job_ids: list[str]) -> dict[str, str]:
        refs = [self.db.collection("jobs").document(j) for j in job_ids]
        return {doc.id: str((doc.to_dict() or {}).get("status"))
                for doc in self.db.get_all(refs)}

    def down(self) -> None:
        control.down(self.state_dir)
        subprocess.run(["rm", "-rf", str(self.state_dir)], check=False)


def submit_all(stack: Stack, count: int, tag: str) -> tuple[list[str], str]:
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        jobs = list(pool.map(lambda n: stack.submit(f"{tag} {n}"), range(count)))
    backends = {job["plan"][0] for job in jobs}
    assert len(backends) == 1, backends  # the cheapest backend takes them all
    return [job["id"] for job in jobs], f"render-{backends.pop()}"


def wait_all(stack: Stack, job_ids: list[str], timeout: float) -> tuple[dict[str, str], float]:
    start = time.perf_counter()
    while True:
        statuses = stack.statuses(job_ids)
        if all(s in TERMINAL for s in statuses.values()) or (
                time.perf_counter() - start > timeout):
            return statuses, time.perf_counter() - start
        time.sleep(1)


def burst() -> dict[str, Any]:
    say(f"burst: {BURST_JOBS} jobs of {BURST_RENDER_S} s renders on render capacity "
        f"{BURST_CAPACITY} ...")
    stack = Stack(BURST_RENDER_S, BURST_CAPACITY, {"AIPROD_POLL_INTERVAL_S": "0.5",
                                                   "AIPROD_DAILY_BUDGET_USD": "10000",
                                                   "AIPROD_DAILY_BUDGET_WARN_USD": "9000"})
    try:
        run = uuid.uuid4().hex[:8]
        start = time.perf_counter()
        jobs, function = submit_all(stack, BURST_JOBS, f"capacity burst {run}")
        statuses, _ = wait_all(stack, jobs, timeout=30 * 60)
        drain_s = time.perf_counter() - start
        counts = {s: list(statuses.values()).count(s) for s in set(statuses.values())}
        log = Path(stack.part("dead-letter")["log"]).read_text()
        ideal_s = BURST_JOBS * BURST_RENDER_S / BURST_CAPACITY
        gate = stack.gate(function)
        return {
            "jobs": BURST_JOBS, "render_capacity": BURST_CAPACITY,
            "render_s": BURST_RENDER_S, "statuses": counts,
            "failed_attempts_by_code": stack.failures(jobs),
            "failed": counts.get("FAILED", 0),
            "lost": BURST_JOBS - sum(n for s, n in counts.items() if s in TERMINAL),
            "pushes_refused_429": gate["refused"], "renders_admitted": gate["admitted"],
            "peak_in_flight": gate["peak_in_flight"],
            "dead_lettered_and_redriven": log.count("back on its render topic"),
            "drain_s": round(drain_s, 1), "ideal_drain_s": round(ideal_s, 1),
            "drain_vs_ideal": round(drain_s / ideal_s, 2),
        }
    finally:
        stack.down()


def in_flight() -> dict[str, Any]:
    say(f"in flight: {IN_FLIGHT_JOBS} jobs of {IN_FLIGHT_RENDER_S} s renders at full "
        "capacity ...")
    stack = Stack(IN_FLIGHT_RENDER_S, None, {"AIPROD_POLL_INTERVAL_S": "5",
                                             "AIPROD_DAILY_BUDGET_USD": "10000",
                                             "AIPROD_DAILY_BUDGET_WARN_USD": "9000"})
    try:
        run = uuid.uuid4().hex[:8]
        peak = {"rss": 0, "cpu": 0.0}
        stop = threading.Event()
        jobs: list[str] = []
        function = ""

        def sample(pid: int) -> None:
            root = psutil.Process(pid)
            while not stop.wait(0.5):
                try:
                    tree = [root, *root.children(recursive=True)]
                    peak["rss"] = max(peak["rss"], sum(p.memory_info().rss for p in tree))
                except psutil.NoSuchProcess:
                    return

        start = time.perf_counter()
        jobs, function = submit_all(stack, IN_FLIGHT_JOBS, f"in flight {run}")
        root = psutil.Process(stack.part(function)["pid"])
        cpu_before = sum(p.cpu_times().user + p.cpu_times().system
                         for p in [root, *root.children(recursive=True)])
        sampler = threading.Thread(target=sample, args=(root.pid,), daemon=True)
        sampler.start()
        statuses, _ = wait_all(stack, jobs, timeout=15 * 60)
        elapsed = time.perf_counter() - start
        cpu_after = sum(p.cpu_times().user + p.cpu_times().system
                        for p in [root, *root.children(recursive=True)])
        stop.set()
        sampler.join()
        gate = stack.gate(function)
        counts = {s: list(statuses.values()).count(s) for s in set(statuses.values())}
        return {
            "jobs": IN_FLIGHT_JOBS, "render_s": IN_FLIGHT_RENDER_S, "statuses": counts,
            "failed_attempts_by_code": stack.failures(jobs),
            "capacity": gate["capacity"], "peak_renders_in_flight": gate["peak_in_flight"],
            "render_process_peak_rss_mib": round(peak["rss"] / 2**20, 1),
            "render_process_cpu_s": round(cpu_after - cpu_before, 1),
            "seconds": round(elapsed, 1),
        }
    finally:
        stack.down()


def measure() -> dict[str, Any]:
    first = burst()
    say(json.dumps(first))
    return {"burst_over_capacity": first, "renders_in_flight": in_flight()}


if __name__ == "__main__":
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()}, **measure()}
    print(json.dumps(report, indent=2))
