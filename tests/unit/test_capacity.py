"""The local stack's capacity: each function serves what the deployment gives it
(functions.yaml), `--render-capacity` lowers the render functions, and a request
beyond the capacity gets 429 as from Cloud Run with every instance busy."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiprod_dev.localstack.serve import CapacityGate
from aiprod_dev.localstack.stack import Stack, StackOptions
from aiprod_dev.topology import load_functions_spec


def test_each_function_gets_the_deployments_capacity_and_render_capacity_lowers_renders(
        tmp_path: Path) -> None:
    spec = load_functions_spec()
    full = Stack(StackOptions(tmp_path, port_base=0))
    lowered = Stack(StackOptions(tmp_path, port_base=0, render_capacity=2))
    for name, function in full.functions.items():
        kind = next(f.target for f in full.topology.functions if f.name == name)
        expected = spec.kinds[kind].max_instances * spec.kinds[kind].concurrency
        assert full.capacity[name] == expected
        assert f"--capacity={expected}" in function.argv
        if kind == "render":
            assert lowered.capacity[name] == 2
            assert "--capacity=2" in lowered.functions[name].argv
        else:
            assert lowered.capacity[name] == expected
    assert spec.kinds["render"].concurrency > 1


def _call(gate: CapacityGate, path: str = "/projects/p/topics/t") -> str:
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        statuses.append(status)

    b"".join(gate({"PATH_INFO": path, "REQUEST_METHOD": "POST"}, start_response))
    return statuses[0]


def test_a_request_beyond_the_capacity_gets_429_and_the_gate_counts_it() -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def slow_app(environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        entered.release()
        release.wait(10)
        start_response("200 OK", [])
        return [b"OK"]

    gate = CapacityGate(slow_app, capacity=2)
    results: list[str] = []
    workers = [threading.Thread(target=lambda: results.append(_call(gate))) for _ in range(2)]
    for worker in workers:
        worker.start()
    assert entered.acquire(timeout=5)
    assert entered.acquire(timeout=5)
    assert _call(gate).startswith("429")  # both slots busy: refused at once
    release.set()
    for worker in workers:
        worker.join(5)
    assert results == ["200 OK", "200 OK"]
    assert gate.stats() == {"capacity": 2, "in_flight": 0, "peak_in_flight": 2,
                            "admitted": 2, "refused": 1}
    assert _call(gate).startswith("200")  # slots free again
