"""One failure of each class, end to end: what the job records and whether it falls back."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LocalStack

pytestmark = pytest.mark.emulator


def backend_health(stack: LocalStack, name: str) -> dict[str, object]:
    backends = httpx.get(f"{stack.api}/v1/backends", headers=stack.auth, timeout=30).json()
    health: dict[str, object] = next(b for b in backends["backends"]
                                     if b["name"] == name)["health"]
    return health


def test_a_content_refusal_ends_the_job_uncharged_and_is_no_strike(local: LocalStack) -> None:
    local.fault("replicate", "moderation")

    done = local.wait(local.submit(prompt="something the provider refuses")["id"])

    assert done["status"] == "FAILED"
    [attempt] = done["attempts"]  # a refused prompt is not sent to another provider
    assert attempt["error"]["class"] == "content_refused"
    assert attempt["error"]["code"] == "E005"
    assert "flagged as sensitive" in attempt["error"]["message"]
    assert done["cost_usd"] == 0
    assert backend_health(local, "replicate-seedance")["strikes"] == 0


def test_invalid_input_fails_at_once_with_the_providers_reason(local: LocalStack) -> None:
    # Runway takes image URLs over https only; the development allow-list lets a plain
    # http URL past admission, so Runway's rule is what the job records.
    done = local.wait(local.submit(prompt="the fox in this picture", policy="fixed",
                                   image_url="http://127.0.0.1:9/fox.png")["id"])

    assert done["status"] == "FAILED"
    [attempt] = done["attempts"]
    assert attempt["backend"] == "runway-gen45"
    assert attempt["error"]["class"] == "invalid_input"
    assert "https" in attempt["error"]["message"].lower()
    assert backend_health(local, "runway-gen45")["strikes"] == 0


def test_a_transient_failure_falls_back_and_a_backend_failure_strikes(
        local: LocalStack) -> None:
    local.fault("replicate", "fail")

    done = local.wait(local.submit(prompt="a fox, the render crashes")["id"])

    assert done["status"] == "SUCCEEDED"
    first = done["attempts"][0]
    assert (first["error"]["class"], first["error"]["code"]) == (
        "backend", "failed")
    assert backend_health(local, "replicate-seedance")["strikes"] == 1
