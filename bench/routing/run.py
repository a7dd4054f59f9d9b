"""`make bench-routing`: `aiprod replay` on the traces shipped here, every profile, and
the issue's targets for the learning policy. Prints one JSON document; figures, not
pass/fail (the unit tests check the arithmetic on hand-worked traces)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from aiprod.wiring.config import get_settings
from aiprod_dev import replay as engine

HERE = Path(__file__).resolve().parent
SEED = int(os.environ.get("BENCH_SEED", "1"))


def main() -> None:
    settings = get_settings()
    catalog = settings.catalog()
    runs = []
    for trace_path in sorted(HERE.glob("*.jsonl")):
        jobs = engine.load_trace(trace_path)
        for profile_path in sorted(HERE.glob("*.yaml")):
            profile = engine.load_profile(profile_path, catalog)
            started = time.perf_counter()
            result = engine.replay(jobs, profile, catalog, SEED, settings.routing_min_samples,
                                   settings.stats_window_s, settings.stats_bucket_s)
            elapsed = time.perf_counter() - started
            print(f"{trace_path.name} x {profile_path.name}: {elapsed:.1f} s", file=sys.stderr)
            runs.append({"trace": trace_path.name, "profile": profile_path.name,
                         "seconds": round(elapsed, 2), **result.summary(),
                         "targets": result.targets()})
    print(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                      "seed": SEED, "min_samples": settings.routing_min_samples,
                      "window_s": settings.stats_window_s, "bucket_s": settings.stats_bucket_s,
                      "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
