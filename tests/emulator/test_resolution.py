"""A resolution asked for, end to end: routed to the backends that render it, priced
at their rate for it, and checked in the decoded output."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiprod.adapters.media import probe_video
from aiprod_dev.sim.core import SIM_FPS
from tests.conftest import LocalStack

pytestmark = pytest.mark.emulator

JobPath = Callable[[dict[str, Any]], Path]


def test_a_1080p_job_renders_at_1080p(local: LocalStack, output_path: JobPath) -> None:
    job = local.submit(prompt="a heron over the lake at 1080p", duration_seconds=6,
                       resolution="1080p")
    # Runway's gen4.5 and Seedance 2.0 Fast render 720p only: not in the plan.
    assert job["plan"] == ["replicate-hailuo", "veo-31-fast", "veo-31"]
    assert job["estimated_cost_usd"] == pytest.approx(6 * 0.08)  # Hailuo's 1080p rate

    done = local.wait(job["id"], timeout=120)

    assert done["status"] == "SUCCEEDED", done["attempts"]
    [attempt] = done["attempts"]
    assert attempt["backend"] == "replicate-hailuo"
    assert (done["output"]["width"], done["output"]["height"]) == (1920, 1080)
    assert done["cost_usd"] == pytest.approx(6 * 0.08)
    video = probe_video(output_path(done))
    assert (video.codec, video.width, video.height) == ("h264", 1920, 1080)
    assert video.frames == 6 * SIM_FPS
    # The model was asked for 1080p in its own input's words.
    [task] = [t for t in local.sim_tasks("replicate") if t["prompt"] == job["request"]["prompt"]]
    assert task["model"] == "minimax/hailuo-02"


def test_a_video_below_the_resolution_asked_for_fails_and_the_next_backend_renders(
        local: LocalStack) -> None:
    local.fault("replicate", "lowres")  # Hailuo answers a 1080p request at 720p

    done = local.wait(local.submit(prompt="a heron, short-changed", duration_seconds=6,
                                   resolution="1080p")["id"], timeout=120)

    assert done["status"] == "SUCCEEDED", done["attempts"]
    first, second = done["attempts"]
    assert (first["backend"], first["status"]) == ("replicate-hailuo", "FAILED")
    assert first["error"]["class"] == "output_check"
    assert "is 1280x720, below 1080p" in first["error"]["message"]
    assert first["cost_usd"] == pytest.approx(6 * 0.08)  # rendered, so billed
    assert second["backend"] == "veo-31-fast"
    assert (done["output"]["width"], done["output"]["height"]) == (1920, 1080)


def test_a_resolution_no_backend_renders_at_that_length_is_a_422_naming_the_field(
        local: LocalStack) -> None:
    reply = httpx.post(f"{local.api}/v1/jobs", headers=local.auth, timeout=30,
                       json={"prompt": "fox", "duration_seconds": 3, "resolution": "1080p"})
    assert reply.status_code == 422, reply.text
    problem = reply.json()
    assert problem["field"] == "resolution"
    assert "renders 720p, not 1080p" in problem["detail"]
