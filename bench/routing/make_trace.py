"""Write bench/routing/trace-12h.jsonl: the job mix `make bench-routing` replays
(seeded, so the file is reproducible; run again only to change the mix)."""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
JOBS = 3000
HOURS = 12.0

rng = random.Random(13)
at_s = 0.0
rows = []
for i in range(JOBS):
    at_s += rng.expovariate(JOBS / (HOURS * 3600))
    request: dict[str, object] = {
        "prompt": f"trace job {i}",
        "duration_seconds": rng.choices([4, 5, 6, 8], [3, 3, 2, 2])[0],
        "aspect_ratio": rng.choices(["16:9", "9:16", "1:1"], [7, 2, 1])[0],
        "min_quality": rng.choices([0.0, 0.6, 0.75], [50, 35, 15])[0],
    }
    if rng.random() < 0.1:
        request["audio"] = True
    rows.append(json.dumps({"at_s": round(at_s, 1), "request": request}))
(HERE / "trace-12h.jsonl").write_text("\n".join(rows) + "\n")
