"""`python -m aiprod_dev.sim --provider runway|veo|replicate --port N [--latency S]`."""

from __future__ import annotations

import argparse

from aiprod_dev.sim import PROVIDERS, make_simulator
from aiprod_dev.sim.core import DEFAULT_LATENCY_S
from aiprod_dev.sim.testing import SimServer, server_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aiprod_dev.sim", description=__doc__)
    parser.add_argument("--provider", required=True, choices=PROVIDERS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--latency", type=float, default=DEFAULT_LATENCY_S,
                        help="seconds a normal task takes from create to success (0: done "
                             "at the first poll)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for the fault draws, for repeatable runs")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    sim = make_simulator(args.provider, latency_s=args.latency, seed=args.seed)
    server = SimServer(sim, server_config(sim, args.host, args.port, args.log_level),
                       announce=True)
    server.run()
    if not server.started:
        raise SystemExit(1)  # uvicorn has logged why (e.g. the port is taken)


if __name__ == "__main__":
    main()
