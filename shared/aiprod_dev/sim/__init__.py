"""Local simulators of the provider APIs, speaking each provider's own wire format.

Start one with `python -m aiprod_dev.sim --provider runway|veo|replicate --port N`,
or in tests with `aiprod_dev.sim.testing.running_simulator(...)`. Every simulator
also serves the `/_sim/*` control routes (fault injection, stats, task list,
reset, rendered files); `aiprod_dev.sim.control` is a small client for them.
"""

from __future__ import annotations

from typing import Literal, get_args

from starlette.applications import Starlette

from aiprod_dev.sim.core import DEFAULT_LATENCY_S, ProviderSim
from aiprod_dev.sim.replicate import ReplicateSim
from aiprod_dev.sim.runway import RunwaySim
from aiprod_dev.sim.veo import VeoSim

ProviderName = Literal["runway", "veo", "replicate"]
PROVIDERS: tuple[ProviderName, ...] = get_args(ProviderName)

_SIMULATORS: dict[str, type[ProviderSim]] = {
    "runway": RunwaySim, "veo": VeoSim, "replicate": ReplicateSim}

__all__ = ["PROVIDERS", "ProviderName", "ProviderSim", "create_app", "make_simulator"]


def make_simulator(provider: str, latency_s: float = DEFAULT_LATENCY_S,
                   seed: int | None = None) -> ProviderSim:
    """A fresh simulator for `provider` (one of PROVIDERS)."""
    try:
        cls = _SIMULATORS[provider]
    except KeyError:
        raise ValueError(f"unknown provider {provider!r}; expected one of "
                         f"{', '.join(PROVIDERS)}") from None
    return cls(latency_s=latency_s, seed=seed)


def create_app(provider: str, latency_s: float = DEFAULT_LATENCY_S,
               seed: int | None = None) -> Starlette:
    """The ASGI app of a fresh simulator; the simulator itself is `app.state.sim`."""
    return make_simulator(provider, latency_s, seed).app()
