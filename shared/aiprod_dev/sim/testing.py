"""Run a simulator inside the current process, for tests and benchmarks.

    with running_simulator("runway", latency=0.0) as base_url:
        client = RunwayML(api_key=..., base_url=base_url)

The server runs on a background thread with uvicorn on a free port of
127.0.0.1, and stops within about a second on exit, even with create calls
held open by the `hang` fault.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import uvicorn
from pydantic import SecretStr

from aiprod.domain.catalog import Backend
from aiprod.wiring.config import Settings, load_catalog
from aiprod_dev.sim import control, make_simulator
from aiprod_dev.sim.core import ProviderSim

STARTUP_TIMEOUT_S = 10.0


def server_config(sim: ProviderSim, host: str, port: int,
                  log_level: str = "warning") -> uvicorn.Config:
    """uvicorn settings for a simulator: no lifespan, and a short graceful shutdown so a
    create call held open by the `hang` fault cannot keep the server alive."""
    return uvicorn.Config(sim.app(), host=host, port=port, log_level=log_level,
                          lifespan="off", timeout_graceful_shutdown=1, access_log=False)


class SimServer(uvicorn.Server):
    """A uvicorn server that tells its simulator when it starts shutting down.

    uvicorn binds the socket itself: asyncio only turns Nagle's algorithm off
    on sockets it created, and with Nagle on every request costs ~40 ms.
    """

    def __init__(self, sim: ProviderSim, config: uvicorn.Config, announce: bool = False) -> None:
        super().__init__(config)
        self.sim = sim
        self.announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.announce:
            print(f"aiprod {self.sim.provider} simulator listening on "
                  f"http://{self.config.host}:{self.port} (latency {self.sim.latency_s:g}s)",
                  flush=True)

    @property
    def port(self) -> int:
        """The port actually bound (the configured one, or the one the OS chose for 0)."""
        port: int = self.servers[0].sockets[0].getsockname()[1]
        return port

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.sim.closing = True
        super().handle_exit(sig, frame)

    def stop(self) -> None:
        self.sim.closing = True
        self.should_exit = True


@contextmanager
def running_simulator(provider: str, latency: float = 0.0,
                      seed: int | None = None) -> Iterator[str]:
    """Serve a fresh `provider` simulator on a free local port; yield its base URL."""
    sim = make_simulator(provider, latency_s=latency, seed=seed)
    server = SimServer(sim, server_config(sim, "127.0.0.1", 0))
    thread = threading.Thread(target=server.run, name=f"sim-{provider}", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the {provider} simulator did not start")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        thread.join(timeout=5)


# Credentials the simulators accept (any non-empty bearer token works).
SIM_CREDENTIALS = {
    "runway": ("runway_api_key", "key_" + "0" * 128),
    "replicate": ("replicate_api_token", "r8_local_simulator"),
    "veo": ("veo_access_token", "local-simulator"),
}


def provider_settings(provider: str, base_url: str, **overrides: Any) -> Settings:
    """Settings that point `provider`'s client at the simulator at `base_url`."""
    key_field, key = SIM_CREDENTIALS[provider]
    fields: dict[str, Any] = {f"{provider}_base_url": base_url, key_field: SecretStr(key)}
    return Settings(**(fields | overrides))


def catalog_backend(provider: str) -> Backend:
    """The first backend in the catalog served by `provider`."""
    return next(b for b in load_catalog().backends if b.provider == provider)


def seeds_received(base_url: str, task_ids: Iterable[str]) -> list[Any]:
    """The seed each task reached the simulator at `base_url` with, by the task id its
    client returned (for Veo the operation name, whose last segment the simulator
    lists tasks by)."""
    tasks = {t["id"]: t for t in control.tasks(base_url)}
    return [tasks[task_id.rsplit("/", 1)[-1]]["seed"] for task_id in task_ids]
