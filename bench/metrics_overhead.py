"""What emitting metrics adds to one invocation (part of `make bench`; runs alone too:
`python bench/metrics_overhead.py`).

The heaviest invocation is a render that succeeds: it samples the budget when it
reserves and when it settles, and reports the queue wait and the job's end (13
points in all). That invocation's metric calls run here through the real code
(aiprod.services.telemetry and aiprod.observability.metrics, the functions' log handler,
writing to a file as a function writes to stdout), against a baseline in the
same run: the 5 log lines the same invocation already wrote before metrics
existed. Figures per invocation, in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

INVOCATIONS = 2000
TARGET_MS = 5.0


def _percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49] * 1000, 4), "p95_ms": round(cuts[94] * 1000, 4),
            "max_ms": round(max(samples) * 1000, 4)}


def measure(invocations: int = INVOCATIONS) -> dict[str, Any]:
    from aiprod.domain.budget import DayFigures
    from aiprod.domain.job import Attempt, AttemptStatus, Job, JobRequest, JobStatus, Output
    from aiprod.observability import logs, metrics, tracing
    from aiprod.services import telemetry

    started = time.perf_counter()
    metrics.declared()  # what a cold instance pays once: reading monitoring.yaml
    cold_ms = (time.perf_counter() - started) * 1000

    now = dt.datetime.now(dt.UTC)
    attempt = Attempt(backend="veo-31-fast", status=AttemptStatus.SUCCEEDED,
                      started_at=now - dt.timedelta(seconds=80), ended_at=now,
                      estimated_cost_usd=0.6, cost_usd=0.6)
    job = Job(id="job_bench", owner="bench", request=JobRequest(prompt="bench"),
              plan=["veo-31-fast"], status=JobStatus.SUCCEEDED, attempts=[attempt],
              estimated_cost_usd=0.6, cost_usd=0.6, quality_score=0.88,
              output=Output(uri="gs://b/o.mp4", duration_seconds=6, width=1280, height=720,
                            bytes=2_400_000, sha256="0" * 64),
              created_at=now - dt.timedelta(seconds=95), updated_at=now)
    figures = DayFigures(day=now.date().isoformat(), limit_micros=100_000_000,
                         warn_micros=90_000_000, granted_micros=42_000_000,
                         returned_micros=1_000_000, spent_micros=38_000_000)
    today = figures.day
    logger = logging.getLogger("aiprod.services.render")

    def baseline() -> None:  # the lines a successful render invocation logs anyway
        logs.log(logger, logging.INFO, "render claim: create", job_id=job.id,
                 backend="veo-31-fast", attempt=0, delivery_id="123")
        logs.log(logger, logging.INFO, "provider task created", job_id=job.id,
                 backend="veo-31-fast", attempt=0, provider_task_id="op-1")
        logs.log(logger, logging.INFO, "job succeeded", job_id=job.id, backend="veo-31-fast",
                 cost_usd=0.6, output_uri="gs://b/o.mp4")
        logs.log(logger, logging.INFO, "budget settled", job_id=job.id, cost_usd=0.6)
        logs.log(logger, logging.INFO, "job dispatched to veo-31-fast", job_id=job.id,
                 backend="veo-31-fast", attempt=0)

    def with_metrics() -> None:  # what the same invocation now emits on top
        telemetry.attempt_started(job, 0)
        telemetry.budget_level(figures, today)  # after reserving
        telemetry.ended(job)
        telemetry.budget_level(figures, today)  # after settling

    sink_dir = Path(tempfile.mkdtemp(prefix="aiprod-metrics-bench-"))
    sink = (sink_dir / "stdout.log").open("w", buffering=1)
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logs.CloudLoggingFormatter())
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    # setLevel, not `.level =`: it clears the loggers' cached isEnabledFor answers
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        context = tracing.new_trace("bench")
        timings: dict[str, list[float]] = {"baseline": [], "metrics": []}
        with tracing.scope(context, job_id=job.id):
            for _ in range(50):  # warm up
                baseline()
                with_metrics()
            for _ in range(invocations):  # interleaved, so both see the same machine
                for name, run in (("baseline", baseline), ("metrics", with_metrics)):
                    start = time.perf_counter()
                    run()
                    timings[name].append(time.perf_counter() - start)
    finally:
        root.setLevel(saved[0])
        root.handlers = saved[1]
        sink.close()
    lines = (sink_dir / "stdout.log").read_text().splitlines()
    points = sum(1 for line in lines if '"logger": "aiprod.metrics"' in line)
    per_invocation = points // (invocations + 50)
    base, emitted = _percentiles(timings["baseline"]), _percentiles(timings["metrics"])
    return {
        "points_per_invocation": per_invocation,
        "lines_lost": (invocations + 50) * (per_invocation + 5) - len(lines),
        "baseline_5_log_lines": base,
        "metrics": emitted,
        "per_point_p50_us": round(emitted["p50_ms"] * 1000 / max(per_invocation, 1), 1),
        "ratio_to_baseline_p50": round(emitted["p50_ms"] / base["p50_ms"], 2),
        "cold_start_monitoring_yaml_ms": round(cold_ms, 1),
        "target_ms_max": TARGET_MS,
        "within_target": emitted["p95_ms"] < TARGET_MS,
    }


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else INVOCATIONS),
                     indent=2))
