"""A cancel reaches the provider from the one function that holds its credentials.

In production only render functions get the Runway/Replicate secrets and Vertex AI
access (terraform/topology.tf); the local stack gives the same split, so the API and
the dead-letter handler cannot call a provider here either. A cancel through the API
(or a dead-lettered render) is carried out by the backend's render deployment, and
the attempt is settled at what the provider reports the stopped task cost
(docs/budget-ledger.md, "Cancelled renders").
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiprod_dev.localstack import control
from aiprod_dev.localstack.stack import LOCAL_CREDENTIALS
from tests.conftest import LocalStack
from tests.emulator.test_deadletter_capacity import age_past_redrive_bound

pytestmark = pytest.mark.emulator

# Per provider: a request the router sends there first, and its simulator's phase names.
ROUTED = {
    "runway": {"policy": "fixed"},
    "veo": {"min_quality": 0.85, "duration_seconds": 6},
    "replicate": {},
}
BACKENDS = {"runway": "runway-gen45", "veo": "veo-31-fast", "replicate": "replicate-seedance"}


def process_env(stack: LocalStack, function: str) -> dict[str, str]:
    """The environment the function's process actually runs with."""
    state = control.status(Path(stack.state["state_dir"]))  # pids now (after restarts)
    assert state is not None
    pid = next(p["pid"] for p in state["parts"] if p["name"] == function)
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def sim_task(stack: LocalStack, provider: str, prompt: str) -> dict[str, Any]:
    """The provider's record of the task made for `prompt` (empty until it exists)."""
    tasks = [t for t in stack.sim_tasks(provider) if t["prompt"] == prompt]
    assert len(tasks) <= 1, tasks  # never created twice
    return tasks[0] if tasks else {}


def budget(stack: LocalStack) -> dict[str, Any]:
    figures: dict[str, Any] = stack.http.get(f"{stack.api}/v1/budget", headers=stack.auth,
                                             timeout=30).json()
    return figures


def wait_for(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return result


def settled(stack: LocalStack) -> dict[str, Any]:
    """Today's figures once nothing is held any more."""
    result: dict[str, Any] = wait_for(
        lambda: (figures := budget(stack))["reserved_usd"] == 0 and figures)
    return result


def test_only_render_functions_hold_provider_credentials(local: LocalStack) -> None:
    for function in ("api", "intake", "dead-letter", "notifier"):
        env = process_env(local, function)
        assert not [k for k in LOCAL_CREDENTIALS if env.get(k)], function
    for provider, backend in BACKENDS.items():
        env = process_env(local, f"render-{backend}")
        held = {k for k in LOCAL_CREDENTIALS if env.get(k)}
        assert held == {k for k in LOCAL_CREDENTIALS if provider.upper() in k}, backend


@pytest.mark.parametrize("provider", ["runway", "veo", "replicate"])
def test_cancelling_mid_render_cancels_the_task_at_the_provider_and_settles_it(
        local: LocalStack, provider: str) -> None:
    local.reset_budget()
    local.fault(provider, "ok", latency_s=30)  # queued for 3 s, then running
    prompt = f"a fox, cancelled mid-render on {provider} {uuid.uuid4().hex[:6]}"
    job = local.submit(prompt=prompt, **ROUTED[provider])
    assert job["plan"][0] == BACKENDS[provider]
    wait_for(lambda: sim_task(local, provider, prompt).get("phase") == "running", timeout=30)

    reply = httpx.post(f"{local.api}/v1/jobs/{job['id']}:cancel", headers=local.auth,
                       timeout=30)

    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "CANCELLED"
    wait_for(lambda: sim_task(local, provider, prompt).get("phase") == "cancelled")
    figures = settled(local)
    final = local.job(job["id"])
    assert final["status"] == "CANCELLED"
    [attempt] = final["attempts"]
    assert attempt["status"] == "CANCELLED"
    # Runway reports no refund for a task cancelled while RUNNING; Replicate bills a
    # `canceled` prediction without saying how much; Veo reports no charge: all three
    # are settled at the estimate, and nothing stays held.
    assert attempt["cost_usd"] == pytest.approx(final["estimated_cost_usd"])
    assert figures["spent_usd"] == pytest.approx(final["estimated_cost_usd"])


def test_a_runway_task_cancelled_before_it_runs_is_refunded_and_costs_nothing(
        local: LocalStack) -> None:
    local.reset_budget()
    # Queued for 300 s (the simulator queues a task for a tenth of its render time): the
    # cancel must reach Runway while the task is still PENDING, and on a loaded 2-core CI
    # machine running the whole suite the API -> Pub/Sub -> render hop once took more
    # than 12 s and once more than 60 s.
    local.fault("runway", "ok", latency_s=3000)
    prompt = f"a fox, cancelled while queued {uuid.uuid4().hex[:6]}"
    job = local.submit(prompt=prompt, policy="fixed")
    local.wait(job["id"], until=lambda j: bool(j["attempts"])
               and bool(j["attempts"][0]["provider_task_id"]))

    reply = httpx.post(f"{local.api}/v1/jobs/{job['id']}:cancel", headers=local.auth,
                       timeout=30)

    assert reply.status_code == 200, reply.text
    wait_for(lambda: sim_task(local, "runway", prompt).get("phase") == "cancelled")
    figures = settled(local)
    final = local.job(job["id"])
    assert final["status"] == "CANCELLED"
    assert final["cost_usd"] == 0  # Runway refunded it and said so: nothing spent
    assert figures["spent_usd"] == 0
    assert local.sim_stats("runway")["cancels"] >= 1


def test_a_dead_lettered_render_of_a_running_task_is_cancelled_at_the_provider(
        local: LocalStack) -> None:
    local.reset_budget()
    local.fault("replicate", "ok", latency_s=60)
    prompt = f"a fox, dead-lettered mid-render {uuid.uuid4().hex[:6]}"
    job = local.submit(prompt=prompt)
    assert job["plan"][0] == "replicate-seedance"
    running = local.wait(job["id"], until=lambda j: bool(j["attempts"])
                         and bool(j["attempts"][0]["provider_task_id"]))
    age_past_redrive_bound(local, job["id"])  # or the live render is left alone

    topic = "render-replicate-seedance-dead-letter"
    reply = local.push("dead-letter", topic,
                       {"job_id": job["id"], "backend": "replicate-seedance", "attempt": 0},
                       attributes={"job_id": job["id"],
                                   "CloudPubSubDeadLetterSourceSubscription":
                                       "render-replicate-seedance",
                                   "CloudPubSubDeadLetterSourceDeliveryCount": "5"})

    assert reply.status_code in (200, 204), reply.text
    task = wait_for(lambda: (t := sim_task(local, "replicate", prompt)).get("phase") == "cancelled"
                    and t)
    assert task["id"] == running["attempts"][0]["provider_task_id"]
    figures = settled(local)
    final = local.job(job["id"])
    assert final["status"] == "FAILED"
    assert final["attempts"][0]["error"]["code"] == "dead_lettered"
    assert figures["spent_usd"] == pytest.approx(final["cost_usd"])
