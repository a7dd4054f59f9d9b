"""What the output check costs per resolution (part of `make bench`; runs alone too:
`python bench/output_check.py`).

A render function decodes every frame of every output before a job may succeed
(aiprod.adapters.media.probe_video). A 1080p job makes that far more work than
the 256x144 clips the simulators used to serve. Figures: the time to check one
5-second 24 fps clip at each resolution (probe_video, frame-threaded decoding),
as ratios against the 144p clip measured in the same run, beside a plain
single-threaded decode (no frame statistics) and what making each clip costs
the simulators.
"""

from __future__ import annotations

import io
import json
import statistics
import time
from typing import Any

SIZES = {"144p": 144, "720p": 720, "1080p": 1080}
DURATION_S = 5
FPS = 24
ROUNDS = 3


def _single_threaded_decode(data: bytes) -> int:
    import av

    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def measure(rounds: int = ROUNDS) -> dict[str, Any]:
    from aiprod.adapters import media

    figures: dict[str, dict[str, float]] = {}
    for name, short_side in SIZES.items():
        started = time.perf_counter()
        clip = media.render_test_video(DURATION_S, "16:9", fps=FPS, height=short_side)
        made = time.perf_counter() - started
        threaded, single = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            media.probe_video(clip)
            threaded.append(time.perf_counter() - started)
            started = time.perf_counter()
            _single_threaded_decode(clip)
            single.append(time.perf_counter() - started)
        figures[name] = {"make_s": round(made, 3),
                         "check_s": round(statistics.median(threaded), 3),
                         "decode_only_single_thread_s": round(statistics.median(single), 3),
                         "bytes": len(clip)}
    base = figures["144p"]["check_s"]
    for row in figures.values():
        row["check_vs_144p"] = round(row["check_s"] / base, 1)
    return {"clip": f"{DURATION_S} s, {FPS} fps, 16:9", "by_resolution": figures}


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
