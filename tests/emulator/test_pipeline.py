"""A job end to end through the real emulators, function processes and simulators."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.cloud import firestore

from aiprod.adapters.media import probe_video
from aiprod_dev.sim.core import SIM_FPS
from tests.conftest import LocalStack

pytestmark = pytest.mark.emulator

JobPath = Callable[[dict[str, Any]], Path]


def jobs_in_firestore() -> int:
    client = firestore.Client(project="aiprod-local")
    return sum(1 for _ in client.collection("jobs").stream())


def test_a_job_renders_end_to_end_and_its_video_decodes(local: LocalStack,
                                                        output_path: JobPath) -> None:
    job = local.submit(prompt="a fox in the snow", aspect_ratio="9:16", duration_seconds=6)
    assert job["status"] == "QUEUED"
    assert job["plan"][0] == "replicate-seedance"

    done = local.wait(job["id"])

    assert done["status"] == "SUCCEEDED", done
    [attempt] = done["attempts"]
    assert attempt["backend"] == "replicate-seedance"
    assert attempt["status"] == "SUCCEEDED"
    assert attempt["provider_task_id"]
    assert done["cost_usd"] == pytest.approx(6 * 0.08)
    video = probe_video(output_path(done))
    assert video.codec == "h264"
    assert video.frames == 6 * SIM_FPS
    assert video.duration_s == pytest.approx(6, abs=0.1)
    assert video.height > video.width  # 9:16
    assert done["output"]["bytes"] == output_path(done).stat().st_size


def test_the_first_backend_fails_and_the_next_renders(local: LocalStack) -> None:
    local.fault("replicate", "error")

    done = local.wait(local.submit(prompt="a fox, fallback")["id"])

    assert done["status"] == "SUCCEEDED", done
    first, second = done["attempts"]
    assert (first["backend"], first["status"]) == ("replicate-seedance", "FAILED")
    assert first["error"]["class"] == "transient"
    assert first["error"]["message"]
    assert first["cost_usd"] == 0
    assert (second["backend"], second["status"]) == ("runway-gen45", "SUCCEEDED")
    assert local.sim_stats("replicate")["creates"] == 0


def test_every_backend_failing_fails_the_job_with_each_reason(local: LocalStack) -> None:
    local.fault("replicate", "fail")
    local.fault("runway", "error")
    local.fault("veo", "fail")

    done = local.wait(local.submit(prompt="a fox, doomed", duration_seconds=6)["id"])

    assert done["status"] == "FAILED"
    assert [a["backend"] for a in done["attempts"]] == done["plan"]
    assert len(done["plan"]) == 4  # gen4.5, Veo 3.1 Fast, Seedance, Veo 3.1
    for attempt in done["attempts"]:
        assert attempt["status"] == "FAILED"
        assert attempt["error"]["class"] in {"backend", "transient"}
        assert attempt["error"]["code"]
    assert done["cost_usd"] == 0
    assert done["output"] is None
    for attempt in done["attempts"]:
        assert attempt["backend"] in done["status_reason"]


def test_a_redelivered_render_message_creates_no_second_task(local: LocalStack,
                                                              output_path: JobPath) -> None:
    local.fault("replicate", "ok", latency_s=3.0)  # keep the render in flight a while
    prompt = "a fox, delivered twice"
    job = local.submit(prompt=prompt)
    local.wait(job["id"], until=lambda j: bool(j["attempts"])
               and bool(j["attempts"][0]["provider_task_id"]))
    message = {"job_id": job["id"], "backend": "replicate-seedance", "attempt": 0}

    # The same message id twice (a redelivery) and two other ids (duplicate publishes).
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(
            lambda mid: local.push("render-replicate-seedance", "render-replicate-seedance",
                                   message, message_id=mid), ["dup-1", "dup-1", "dup-2", "dup-3"]))

    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    done = local.wait(job["id"])
    assert done["status"] == "SUCCEEDED"
    assert len(done["attempts"]) == 1
    tasks = [t for t in local.sim_tasks("replicate") if t["prompt"] == prompt]
    assert len(tasks) == 1
    assert [p.name for p in output_path(done).parent.iterdir()] == ["output.mp4"]


def test_the_same_intake_message_twice_admits_one_job(local: LocalStack) -> None:
    prompt = "a fox from another system"
    body = {"prompt": prompt, "duration_seconds": 5}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda _: local.push("intake", "video-jobs", body,
                                                     message_id="intake-dup-1"), range(2)))
    assert all(r.status_code == 200 for r in replies)
    client = firestore.Client(project="aiprod-local")
    jobs = [d.to_dict() for d in client.collection("jobs").stream()
            if (d.to_dict() or {})["request"].get("prompt") == prompt]
    assert len(jobs) == 1
    done = local.wait(jobs[0]["id"])
    assert done["status"] == "SUCCEEDED"
    assert len([t for t in local.sim_tasks("replicate") if t["prompt"] == prompt]) == 1


@pytest.mark.parametrize(("body", "field"), [
    (b"{not json", "body"),
    (json.dumps({"prompt": "fox", "duration_seconds": "long"}).encode(), "duration_seconds"),
    (json.dumps({"prompt": "fox", "aspect_ratio": "4:3"}).encode(), "aspect_ratio"),
    (json.dumps({"duration_seconds": 5}).encode(), "body"),
    (json.dumps({"prompt": "fox", "surprise": True}).encode(), "surprise"),
])
def test_a_malformed_request_gets_problem_json_and_creates_nothing(
        local: LocalStack, body: bytes, field: str) -> None:
    before = jobs_in_firestore()

    response = httpx.post(f"{local.api}/v1/jobs", content=body,
                          headers={"Content-Type": "application/json", **local.auth}, timeout=30)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].startswith("urn:aiprod:problem:")
    assert problem["status"] == 400
    assert problem["detail"]
    assert problem["field"] == field
    assert jobs_in_firestore() == before
    assert all(local.sim_stats(p)["requests"] == 0 for p in ("runway", "veo", "replicate"))


def test_a_request_no_backend_can_render_is_refused_with_reasons(local: LocalStack) -> None:
    response = httpx.post(f"{local.api}/v1/jobs", json={"prompt": "fox",
                                                        "duration_seconds": 45},
                          headers=local.auth, timeout=30)
    assert response.status_code == 422
    problem = response.json()
    assert problem["reason"] == "unsupported"
    assert "runway-gen45" in problem["backends"]
