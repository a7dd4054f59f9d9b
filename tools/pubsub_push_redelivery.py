"""Does the Pub/Sub emulator redeliver push messages after a short outage?

Usage: python tools/pubsub_push_redelivery.py [OUTAGE_S] [RUN_S] [MESSAGES]

Starts the emulator alone (gcloud beta emulators pubsub start) and two plain
HTTP endpoints: `down` does not listen for the first OUTAGE_S seconds (like a
killed function process), `err` answers 503 for that long. Each endpoint has two
push subscriptions, one with a retry policy (1 s to 10 s backoff) and one
without. MESSAGES are published at once on both topics, one more message a
minute later; the script prints, per subscription, the push attempts and the
deliveries answered 200. What it showed is recorded in docs/local-stack.md.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PROJECT = "repro"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Emulator:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        with log.open("w") as out:
            self.process = subprocess.Popen(
                ["gcloud", "beta", "emulators", "pubsub", "start", f"--project={PROJECT}",
                 f"--host-port=127.0.0.1:{self.port}", "--quiet"],
                stdout=out, stderr=subprocess.STDOUT)
        for _ in range(240):
            try:
                self.call("GET", "/topics")
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the emulator did not start")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/projects/{PROJECT}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (local)
            return json.loads(response.read() or b"{}")

    def publish(self, topic: str, count: int) -> None:
        self.call("POST", f"/topics/{topic}:publish", {"messages": [
            {"data": base64.b64encode(f"m{i}".encode()).decode()} for i in range(count)]})


def main(outage_s: float, run_s: float, count: int) -> dict[str, Any]:
    start = time.monotonic()
    seen: list[tuple[float, str, int]] = []
    lock = threading.Lock()

    class Endpoint(BaseHTTPRequestHandler):
        failing = False

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            status = 503 if self.failing and time.monotonic() - start < outage_s else 200
            with lock:
                seen.append((round(time.monotonic() - start, 1), self.path.strip("/"), status))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return

    class Failing(Endpoint):
        failing = True

    def serve(port: int, handler: type[Endpoint]) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()

    with tempfile.TemporaryDirectory() as tmp:
        emulator = Emulator(Path(tmp) / "emulator.log")
        try:
            ports = {"down": free_port(), "err": free_port()}
            for endpoint, port in ports.items():
                emulator.call("PUT", f"/topics/{endpoint}", {})
                for variant in ("retry", "noretry"):
                    body: dict[str, Any] = {
                        "topic": f"projects/{PROJECT}/topics/{endpoint}",
                        "ackDeadlineSeconds": 30,
                        "pushConfig": {
                            "pushEndpoint": f"http://127.0.0.1:{port}/{endpoint}-{variant}"}}
                    if variant == "retry":
                        body["retryPolicy"] = {"minimumBackoff": "1s", "maximumBackoff": "10s"}
                    emulator.call("PUT", f"/subscriptions/{endpoint}-{variant}", body)
            serve(ports["err"], Failing)
            start = time.monotonic()
            for endpoint in ports:
                emulator.publish(endpoint, count)
            time.sleep(outage_s)
            serve(ports["down"], Endpoint)  # back up after the outage
            time.sleep(max(0.0, 60 - outage_s))
            for endpoint in ports:
                emulator.publish(endpoint, 1)  # a new message after the outage
            time.sleep(max(0.0, run_s - 60))
        finally:
            emulator.process.terminate()
    summary: dict[str, dict[str, Any]] = {}
    for at, subscription, status in seen:
        entry = summary.setdefault(subscription, {"pushes": 0, "delivered": 0,
                                                  "delivered_at": []})
        entry["pushes"] += 1
        if status == 200:
            entry["delivered"] += 1
            entry["delivered_at"].append(at)
    return {"outage_s": outage_s, "run_s": run_s, "published_at_0": count,
            "published_at_60": 1, "by_subscription": summary}


if __name__ == "__main__":
    args = [float(a) for a in sys.argv[1:4]]
    outage, run, messages = (args + [6.0, 120.0, 10.0][len(args):])[:3]
    print(json.dumps(main(outage, run, int(messages)), indent=1))
