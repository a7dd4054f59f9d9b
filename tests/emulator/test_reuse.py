"""Never pay twice for the same video (issue 14), through the whole local stack: the
seed reaches the provider, a cached request is served at once with the same video,
and identical requests racing make one provider task."""

from __future__ import annotations

import concurrent.futures
import time
import uuid

import httpx
import pytest

from tests.conftest import LocalStack

pytestmark = pytest.mark.emulator


def test_a_cached_request_is_served_at_once_with_the_same_video(local: LocalStack) -> None:
    body = {"prompt": f"a lighthouse at dusk {uuid.uuid4().hex}", "seed": 1234,
            "reuse": "cached"}
    first = local.wait(local.submit(**body)["id"], timeout=120)
    assert first["status"] == "SUCCEEDED"
    created = local.sim_stats("replicate")["creates"]
    task = next(t for t in local.sim_tasks("replicate") if t["prompt"] == body["prompt"])
    assert task["seed"] == 1234  # the seed reached the provider's API

    started = time.monotonic()
    reply = local.http.post(f"{local.api}/v1/jobs", json=body | {"metadata": {"run": "2"}},
                            headers=local.auth, timeout=30)
    took = time.monotonic() - started

    assert reply.status_code == 201, reply.text
    again = reply.json()
    assert took < 1.0, took
    assert again["status"] == "SUCCEEDED"  # already, in the 201 itself
    assert again["reused_from"] == first["id"]
    assert again["cost_usd"] == 0
    assert again["output"]["sha256"] == first["output"]["sha256"]
    assert again["output"]["uri"] == first["output"]["uri"]
    fetched = local.job(again["id"])
    assert fetched["output"]["download_url"]
    assert local.sim_stats("replicate")["creates"] == created  # no provider call
    # Without the opt-in, the same request renders (and is paid for) again.
    fresh = local.wait(local.submit(**(body | {"reuse": "never"}))["id"], timeout=120)
    assert fresh["reused_from"] is None
    assert fresh["cost_usd"] > 0


def test_identical_requests_racing_make_one_provider_task(local: LocalStack) -> None:
    before = local.sim_stats("replicate")["creates"]
    body = {"prompt": f"one render for all {uuid.uuid4().hex}", "reuse": "cached"}

    def submit(_: int) -> httpx.Response:
        return httpx.post(f"{local.api}/v1/jobs", json=body, headers=local.auth, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(submit, range(12)))

    assert [r.status_code for r in replies] == [201] * 12, [r.text for r in replies]
    jobs = [local.wait(r.json()["id"], timeout=120) for r in replies]
    assert {j["status"] for j in jobs} == {"SUCCEEDED"}
    assert len({j["output"]["sha256"] for j in jobs}) == 1
    rendered = [j for j in jobs if j["reused_from"] is None]
    assert len(rendered) == 1
    assert all(j["reused_from"] == rendered[0]["id"] for j in jobs if j is not rendered[0])
    assert sum(j["cost_usd"] for j in jobs) == pytest.approx(rendered[0]["cost_usd"])
    assert local.sim_stats("replicate")["creates"] - before == 1  # exactly one render
    budget = local.http.get(f"{local.api}/v1/budget", headers=local.auth, timeout=30).json()
    assert budget["reserved_usd"] == 0  # the joiners' momentary holds were given back
