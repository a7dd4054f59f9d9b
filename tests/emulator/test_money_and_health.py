"""Budget and backend health through the whole stack."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aiprod.adapters.store import FirestoreJobStore
from aiprod.domain.job import Job, JobRequest, JobStatus
from aiprod_dev.localstack.processes import free_port, http_ok, wait_until
from aiprod_dev.localstack.stack import LOCAL_CREDENTIALS
from tests.conftest import CIRCUIT_COOLDOWN_S, LocalStack, running_stack

pytestmark = pytest.mark.emulator

LIMIT_USD = 3.0  # seven 5-second jobs on replicate-seedance at 0.40 USD each (2.80 USD)


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("tight"),
                       AIPROD_DAILY_BUDGET_USD=str(LIMIT_USD),
                       AIPROD_DAILY_BUDGET_WARN_USD="1.5") as started:
        yield started


@pytest.fixture
def fresh(tight: LocalStack) -> LocalStack:
    tight.reset_sims()
    tight.reset_health()
    tight.reset_budget()
    return tight


def test_accepted_means_funded_under_a_burst(fresh: LocalStack) -> None:
    """Issue 14: a 3 USD day and 100 jobs submitted at once from 25 threads. Each 201
    holds its first attempt's money, so the jobs told yes all render, the others are
    told no at once (429), and the limit is never passed."""
    def submit(n: int) -> httpx.Response:
        return httpx.post(f"{fresh.api}/v1/jobs", json={"prompt": f"budget burst {n}"},
                          headers=fresh.auth, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(25) as pool:
        replies = list(pool.map(submit, range(100)))

    admitted = [r.json()["id"] for r in replies if r.status_code == 201]
    refused = [r for r in replies if r.status_code != 201]
    for reply in refused:
        assert reply.status_code == 429, reply.text
        assert reply.headers["content-type"] == "application/problem+json"
        assert reply.json()["type"] == "urn:aiprod:problem:rejected-budget-exhausted"
        assert "Retry-After" in reply.headers
    # No spurious refusal: every job the budget could hold was admitted.
    assert len(admitted) == 7, [r.json().get("detail") for r in refused[:3]]
    jobs = [fresh.wait(job_id, timeout=120) for job_id in admitted]
    assert [j["status"] for j in jobs] == ["SUCCEEDED"] * 7, [
        (j["status"], [(a["backend"], a["status"], a["error"]) for a in j["attempts"]])
        for j in jobs]
    assert all(len(j["attempts"]) == 1 for j in jobs)  # none skipped for want of money
    spent = sum(j["cost_usd"] for j in jobs)
    assert spent <= LIMIT_USD + 1e-9
    figures = httpx.get(f"{fresh.api}/v1/budget", headers=fresh.auth, timeout=30).json()
    assert figures["reserved_usd"] == 0  # every hold settled or released
    assert figures["spent_usd"] == pytest.approx(spent)
    # The forecast: today's spend, all within this hour, projects past the limit.
    ahead = figures["forecast"]
    assert ahead["rate_usd_per_hour"] > 0
    assert ahead["projected_usd"] >= figures["committed_usd"]
    assert ahead["exceeds_limit"] == (ahead["projected_usd"] >= LIMIT_USD)
    shown = subprocess.run([str(Path(sys.executable).parent / "aiprod"), "budget", "--api",
                            fresh.api], capture_output=True, text=True, timeout=60,
                           env=os.environ | {"AIPROD_API_KEY": fresh.api_key, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "forecast today: " in shown.stdout  # the projection moves with the clock
    assert f"USD of {LIMIT_USD:.2f} by 00:00 UTC" in shown.stdout
    after = httpx.post(f"{fresh.api}/v1/jobs", json={"prompt": "one more"},
                       headers=fresh.auth, timeout=30)
    assert after.status_code == 429
    assert after.json()["type"] == "urn:aiprod:problem:rejected-budget-exhausted"


def test_a_job_cancelled_while_queued_gives_its_funding_back(fresh: LocalStack) -> None:
    fresh.fault("replicate", "slow", latency_s=30)
    job = fresh.submit(prompt="funded then cancelled")
    held = httpx.get(f"{fresh.api}/v1/budget", headers=fresh.auth, timeout=30).json()
    assert held["reserved_usd"] == pytest.approx(job["estimated_cost_usd"])

    httpx.post(f"{fresh.api}/v1/jobs/{job['id']}:cancel", headers=fresh.auth,
               timeout=30).raise_for_status()
    fresh.fault("replicate", "ok")

    def released() -> bool:
        body = httpx.get(f"{fresh.api}/v1/budget", headers=fresh.auth, timeout=30).json()
        return bool(body["reserved_usd"] == 0)

    wait_until(released, 60, "the cancelled job's hold released")


def start_instance(stack: LocalStack, function: str, logs: Path) -> subprocess.Popen[bytes]:
    """One more instance of a function, as the platform would scale it out."""
    spec = stack.state["functions"][function]
    port = free_port()
    argv = [a for a in spec["argv"] if not a.startswith("--port=")] + [f"--port={port}"]
    log = (logs / f"{function}-extra.log").open("ab")
    process = subprocess.Popen(argv, env={**os.environ, **spec["env"], **LOCAL_CREDENTIALS},
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(url, any_status=True), 60, f"extra {function}")
    process.url = url  # type: ignore[attr-defined]
    return process


def queued_job(stack: LocalStack, prompt: str) -> Job:
    """A job stored as admission stores it, not yet dispatched (the test delivers it)."""
    now = __import__("datetime").datetime.now(__import__("datetime").UTC)
    job = Job(id=f"job_{uuid.uuid4().hex}", owner="test", request=JobRequest(prompt=prompt),
              plan=["replicate-seedance", "runway-gen45"], status=JobStatus.QUEUED,
              estimated_cost_usd=0.4, created_at=now, updated_at=now)
    assert FirestoreJobStore(stack.firestore()).create(job)
    return job


def test_a_failing_backend_gets_no_more_calls_than_the_strike_count(
        local: LocalStack, tmp_path: Path) -> None:
    """Jobs arrive at two render instances at once; the backend fails every call."""
    local.fault("replicate", "error")
    second = start_instance(local, "render-replicate-seedance", tmp_path)
    instances = [local.url("render-replicate-seedance"), second.url]  # type: ignore[attr-defined]
    try:
        jobs = [queued_job(local, f"circuit {n}") for n in range(10)]

        def deliver(n: int) -> int:
            body = {"job_id": jobs[n].id, "backend": "replicate-seedance", "attempt": 0}
            reply = local.push_to(instances[n % 2], "render-replicate-seedance", body)
            return reply.status_code

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            assert set(pool.map(deliver, range(10))) == {200}

        calls = local.sim_stats("replicate")["requests"]
        assert 1 <= calls <= 3
        backends = {b["name"]: b for b in
                    httpx.get(f"{local.api}/v1/backends", headers=local.auth,
                              timeout=30).json()["backends"]}
        assert backends["replicate-seedance"]["health"]["state"] == "open"
        for job in jobs:  # every job fell back and rendered elsewhere
            done = local.wait(job.id, timeout=60)
            assert done["status"] == "SUCCEEDED", done["attempts"]
            assert done["attempts"][-1]["backend"] == "runway-gen45"

        # After the cool-down exactly one probe goes through; its success closes it.
        local.fault("replicate", "ok")
        time.sleep(CIRCUIT_COOLDOWN_S + 0.5)
        probes = [queued_job(local, f"probe {n}") for n in range(4)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda n: local.push_to(
                instances[n % 2], "render-replicate-seedance",
                {"job_id": probes[n].id, "backend": "replicate-seedance", "attempt": 0}),
                range(4)))
        assert [r.status_code for r in replies] == [200] * 4
        assert local.sim_stats("replicate")["requests"] == calls + 1
        outcomes = [local.wait(job.id, timeout=60) for job in probes]
        assert sum(o["attempts"][0]["status"] == "SUCCEEDED" for o in outcomes) == 1
        backends = {b["name"]: b for b in
                    httpx.get(f"{local.api}/v1/backends", headers=local.auth,
                              timeout=30).json()["backends"]}
        assert backends["replicate-seedance"]["health"]["state"] == "closed"
    finally:
        os.killpg(second.pid, 15)
        second.wait(10)


def test_a_throttled_backend_is_not_struck(local: LocalStack) -> None:
    local.fault("replicate", "throttle")
    jobs = [local.submit(prompt=f"throttled {n}") for n in range(4)]
    for job in jobs:
        done = local.wait(job["id"], timeout=60)
        assert done["attempts"][0]["error"]["class"] == "transient"
    backends = {b["name"]: b for b in
                httpx.get(f"{local.api}/v1/backends", headers=local.auth,
                          timeout=30).json()["backends"]}
    assert backends["replicate-seedance"]["health"]["state"] == "closed"
    assert backends["replicate-seedance"]["health"]["strikes"] == 0
