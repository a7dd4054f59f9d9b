"""A small client for the simulators' `/_sim/*` control routes (tests, CLI, benchmarks)."""

from __future__ import annotations

from typing import Any

import httpx

TIMEOUT_S = 10.0


def _call(method: str, base_url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, base_url.rstrip("/") + path, json=body, timeout=TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def set_fault(base_url: str, mode: str, rate: float = 1.0, *, latency_s: float | None = None,
              slow_s: float | None = None, retry_after_s: int | None = None) -> dict[str, Any]:
    """Set the fault drawn for each later create call; returns the new fault state.

    Raises httpx.HTTPStatusError (400) for an unknown mode or a rate outside 0..1.
    """
    body: dict[str, Any] = {"mode": mode, "rate": rate}
    for key, value in (("latency_s", latency_s), ("slow_s", slow_s),
                       ("retry_after_s", retry_after_s)):
        if value is not None:
            body[key] = value
    result: dict[str, Any] = _call("POST", base_url, "/_sim/fault", body)
    return result


def stats(base_url: str) -> dict[str, Any]:
    """Counters: requests, creates, by_outcome, polls, cancels, downloads, and the fault."""
    result: dict[str, Any] = _call("GET", base_url, "/_sim/stats")
    return result


def tasks(base_url: str) -> list[dict[str, Any]]:
    """Every task the simulator created (id, status, prompt, model, duration, ratio, ...)."""
    result: list[dict[str, Any]] = _call("GET", base_url, "/_sim/tasks")
    return result


def reset(base_url: str) -> None:
    """Forget all tasks and counters and clear the fault."""
    _call("POST", base_url, "/_sim/reset")
