"""`python -m aiprod_dev.localstack`: the stack's supervisor (started by `aiprod dev up`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from aiprod_dev.localstack.stack import DEFAULT_PORT_BASE, StackOptions, run_supervisor


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m aiprod_dev.localstack")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE)
    parser.add_argument("--sim-latency", type=float, default=1.0)
    parser.add_argument("--poll-interval", type=float, default=0.25)
    parser.add_argument("--render-capacity", type=int, default=None)
    parser.add_argument("--max-delivery-attempts", type=int, default=None)
    # Dev-only fault (delivery.py, MessageLoss); AIPROD_DEV_* never reach the functions.
    parser.add_argument("--lose-messages", type=float,
                        default=float(os.environ.get("AIPROD_DEV_LOSE_MESSAGES") or 0))
    args = parser.parse_args()
    run_supervisor(StackOptions(args.state_dir, args.port_base, args.sim_latency,
                                args.poll_interval, args.render_capacity,
                                args.max_delivery_attempts,
                                lose_messages=args.lose_messages))


if __name__ == "__main__":
    main()
