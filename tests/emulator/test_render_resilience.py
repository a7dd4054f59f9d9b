"""Long renders, crashes, cancellation and output checks, with real processes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from aiprod_dev.localstack import control
from tests.conftest import RENDER_DEADLINE_S, LocalStack

pytestmark = pytest.mark.emulator


def render_log(stack: LocalStack, function: str) -> str:
    return Path(stack.part(function)["log"]).read_text()


def tasks_for(stack: LocalStack, provider: str, prompt: str) -> list[dict[str, object]]:
    return [t for t in stack.sim_tasks(provider) if t["prompt"] == prompt]


def test_a_render_longer_than_the_deadline_continues_in_new_invocations(
        local: LocalStack) -> None:
    local.fault("replicate", "ok", latency_s=RENDER_DEADLINE_S * 2.5)
    prompt = "a fox, a long render"

    done = local.wait(local.submit(prompt=prompt)["id"], timeout=60)

    assert done["status"] == "SUCCEEDED"
    assert len(done["attempts"]) == 1
    assert len(tasks_for(local, "replicate", prompt)) == 1
    handoffs = [line for line in render_log(local, "render-replicate-seedance").splitlines()
                if done["id"] in line and "continues in a new invocation" in line]
    assert len(handoffs) >= 2


def test_a_render_killed_mid_poll_resumes_the_same_task_and_charges_once(
        local: LocalStack) -> None:
    local.fault("replicate", "ok", latency_s=2.0)
    prompt = "a fox, survives a crash"
    job = local.submit(prompt=prompt)
    local.wait(job["id"], until=lambda j: bool(j["attempts"])
               and bool(j["attempts"][0]["provider_task_id"]))
    state = control.status(Path(local.state["state_dir"]))
    assert state is not None
    render = next(p for p in state["parts"] if p["name"] == "render-replicate-seedance")

    os.kill(render["pid"], signal.SIGKILL)  # mid-poll: no chance to clean up

    done = local.wait(job["id"], timeout=90)
    assert done["status"] == "SUCCEEDED"
    assert len(done["attempts"]) == 1
    assert len(tasks_for(local, "replicate", prompt)) == 1
    assert done["cost_usd"] == pytest.approx(done["estimated_cost_usd"])
    after = control.status(Path(local.state["state_dir"]))
    assert after is not None
    restarted = next(p for p in after["parts"] if p["name"] == "render-replicate-seedance")
    assert restarted["restarts"] >= 1  # the stack restarted it, like a new instance


def test_cancelling_mid_render_stops_the_provider_task_and_records_nothing_more(
        local: LocalStack, output_path: object) -> None:
    local.fault("replicate", "ok", latency_s=6.0)
    prompt = "a fox, cancelled"
    job = local.submit(prompt=prompt)
    local.wait(job["id"], until=lambda j: bool(j["attempts"])
               and bool(j["attempts"][0]["provider_task_id"]))

    reply = httpx.post(f"{local.api}/v1/jobs/{job['id']}:cancel", headers=local.auth,
                       timeout=30)

    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "CANCELLED"
    # The render function (which holds the provider's key; the API does not) stops it.
    deadline = time.monotonic() + 10
    while tasks_for(local, "replicate", prompt)[0]["phase"] != "cancelled":
        assert time.monotonic() < deadline, "the provider task was never cancelled"
        time.sleep(0.1)
    time.sleep(7)  # past the simulated render: an in-flight poller would have finished
    final = local.job(job["id"])
    assert final["status"] == "CANCELLED"
    assert final["output"] is None
    # Replicate bills a `canceled` prediction by an amount it does not report: counted.
    assert final["cost_usd"] == final["estimated_cost_usd"]
    assert [a["status"] for a in final["attempts"]] == ["CANCELLED"]
    again = httpx.post(f"{local.api}/v1/jobs/{job['id']}:cancel", headers=local.auth,
                       timeout=30)
    assert again.status_code == 409
    assert again.json()["type"] == "urn:aiprod:problem:job-already-ended"


def test_a_blank_output_fails_the_check_and_the_job_falls_back(local: LocalStack) -> None:
    local.fault("replicate", "blank")

    done = local.wait(local.submit(prompt="a fox, rendered black")["id"])

    assert done["status"] == "SUCCEEDED"
    first, second = done["attempts"]
    assert first["status"] == "FAILED"
    assert first["error"]["class"] == "output_check"
    assert "blank" in first["error"]["message"]
    assert first["cost_usd"] > 0  # the provider rendered it, so it was charged
    assert second["backend"] == "runway-gen45"
    assert done["quality_score"] == pytest.approx(0.9)


def test_a_create_cut_off_on_a_searchable_provider_adopts_the_task_it_made(
        local: LocalStack) -> None:
    """Replicate lists predictions: the hung create's task is found and used, not resent."""
    local.fault("replicate", "hang")
    prompt = "a fox, create cut off"

    done = local.wait(local.submit(prompt=prompt)["id"], timeout=60)

    assert done["status"] == "SUCCEEDED", done["attempts"]
    [attempt] = done["attempts"]
    assert attempt["backend"] == "replicate-seedance"
    assert len(tasks_for(local, "replicate", prompt)) == 1  # never resent
    assert local.sim_stats("replicate")["requests"] == 1


def test_a_create_cut_off_elsewhere_keeps_its_reservation_until_the_provider_timeout(
        local: LocalStack) -> None:
    """Runway cannot be searched: the attempt stays open (and its money held) until the
    provider's task timeout has passed, then counts as charged, and the job falls back."""
    local.fault("runway", "hang")
    prompt = "a fox, runway cut off"
    job = local.submit(prompt=prompt, policy="fixed")  # runway first
    assert job["plan"][0] == "runway-gen45"

    unknown = local.wait(job["id"], until=lambda j: bool(j["attempts"])
                         and j["attempts"][0]["status"] == "UNKNOWN", timeout=30)
    assert unknown["status"] == "RENDERING"
    assert unknown["attempts"][0]["error"]["code"] == "create_timeout_lost"

    done = local.wait(job["id"], timeout=60)
    assert done["status"] == "SUCCEEDED", done["attempts"]
    first, second = done["attempts"]
    assert (first["status"], first["error"]["class"]) == ("FAILED", "unknown")
    assert first["cost_usd"] == first["estimated_cost_usd"]  # counted as charged
    assert second["backend"] == "replicate-seedance"
    assert len(tasks_for(local, "runway", prompt)) == 1
