"""Child processes of the local stack: start, probe, stop (whole process groups)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_ok(url: str, timeout: float = 1.0, any_status: bool = False) -> bool:
    """True when `url` answers 200 (or answers at all, with `any_status`)."""
    try:
        status = httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return False
    return any_status or status == 200


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not alive():
            raise RuntimeError(f"{what} exited while starting")
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not become ready within {timeout:.0f} s")


@dataclass
class ManagedProcess:
    """One child in its own process group, so stopping it stops its children too
    (gcloud starts the emulators' Java processes as children)."""

    name: str
    kind: str
    argv: list[str]
    url: str
    ready_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    answers_any_status: bool = False  # cloudevent functions answer GET with an error
    restarts: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env}, cwd=self.cwd, start_new_session=True)
        log.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill_group(self) -> None:
        """SIGKILL whatever is left of the process group (a dead server's children)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def wait_ready(self, timeout: float) -> None:
        wait_until(lambda: http_ok(self.ready_url, any_status=self.answers_any_status), timeout,
                   f"{self.name} (log: {self.log_path})", self.alive)

    def stop(self, grace: float = 5.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=grace)
        except ProcessLookupError:
            pass
