"""`aiprod dev up | down | status`: start the supervisor in the background, wait
until every part answers, and read the state file it keeps."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from aiprod_dev.localstack.processes import wait_until
from aiprod_dev.localstack.stack import DEFAULT_PORT_BASE, FAULTS_FILE, STATE_FILE

DEFAULT_STATE_DIR = Path(".aiprod/dev")


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block (the stack's AIPROD_*
    settings while it starts; its emulator hosts while a test or bench talks to it),
    then put back exactly what was there."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, Any] | None:
    """The running stack's state (every part with its URL and pid), or None."""
    path = state_dir / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not _pid_alive(int(state["supervisor_pid"])):
        return None
    for part in state["parts"]:
        part["alive"] = part["pid"] is not None and _pid_alive(int(part["pid"]))
    return state


def up(state_dir: Path = DEFAULT_STATE_DIR, port_base: int = DEFAULT_PORT_BASE,
       sim_latency_s: float = 1.0, timeout: float = 120.0, render_capacity: int | None = None,
       max_delivery_attempts: int | None = None,
       lose_messages: float | None = None) -> dict[str, Any]:
    """Start the stack unless it runs already; return once everything answers.

    `render_capacity` caps each render function at that many requests at once (429
    beyond, as production when every instance is busy); `max_delivery_attempts`
    replaces functions.yaml's before Pub/Sub dead-letters (5..100); `lose_messages`
    loses that fraction of render messages (a dev-only fault, delivery.py; None:
    AIPROD_DEV_LOSE_MESSAGES, or none lost)."""
    running = status(state_dir)
    if running is not None and running.get("ready"):
        return running
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "error.txt").unlink(missing_ok=True)
    log = (state_dir / "supervisor.log").open("ab")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "aiprod_dev.localstack", "--state-dir", str(state_dir),
         "--port-base", str(port_base), "--sim-latency", str(sim_latency_s),
         *(["--render-capacity", str(render_capacity)] if render_capacity is not None else []),
         *(["--max-delivery-attempts", str(max_delivery_attempts)]
           if max_delivery_attempts is not None else []),
         *(["--lose-messages", str(lose_messages)] if lose_messages is not None else [])],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    log.close()

    def ready() -> bool:
        state = status(state_dir)
        return state is not None and bool(state.get("ready"))

    def alive() -> bool:
        return supervisor.poll() is None

    try:
        wait_until(ready, timeout, "the local stack", alive)
    except (RuntimeError, TimeoutError) as error:
        down(state_dir)
        reason = (state_dir / "error.txt")
        detail = reason.read_text().strip() if reason.exists() else str(error)
        raise RuntimeError(f"the local stack did not start: {detail} "
                           f"(see {state_dir / 'supervisor.log'} and {state_dir / 'logs'})"
                           ) from error
    state = status(state_dir)
    assert state is not None
    return state


def lose_messages(fraction: float, state_dir: Path = DEFAULT_STATE_DIR,
                  timeout: float = 10.0) -> None:
    """Change the fraction of render messages the running stack loses (a dev-only
    fault); returns once the supervisor has applied it."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a fraction of messages to lose is 0..1, not {fraction}")
    if status(state_dir) is None:
        raise RuntimeError("no local stack is running (start it with `aiprod dev up`)")
    path = state_dir / FAULTS_FILE
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"lose_messages": fraction}))
    partial.replace(path)

    def applied() -> bool:
        state = status(state_dir)
        return state is not None and state.get("lose_messages") == fraction

    wait_until(applied, timeout, "the supervisor applying the fault")


def down(state_dir: Path = DEFAULT_STATE_DIR, timeout: float = 30.0) -> bool:
    """Stop the stack; False if none was running."""
    path = state_dir / STATE_FILE
    try:
        pid = int(json.loads(path.read_text())["supervisor_pid"])
    except (FileNotFoundError, ValueError, KeyError):
        return False
    if not _pid_alive(pid):
        path.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if _pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True
