"""`python -m aiprod_dev.localstack.serve`: one function of the local stack, served as
production serves it, behind the capacity production would give it.

Development only (never deployed: tools/package.py ships functions/main.py and the
aiprod package's runtime code, and Terraform runs functions-framework itself).

- The app is functions-framework's own (`create_app`), under functions-framework's
  own gunicorn server with threads, as Cloud Functions runs Python with a
  concurrency above 1 (https://cloud.google.com/functions/docs/configuring/concurrency).
- A capacity gate admits at most `capacity` requests at once (the deployment's
  max_instances x concurrency, from functions.yaml, or less with
  `aiprod dev up --render-capacity N`) and answers any request beyond with 429,
  as Cloud Run does when every instance is busy. Pub/Sub treats that like any
  failed push: it redelivers, then dead-letters, so those are the paths local
  runs exercise. The server runs more threads than the capacity, so an excess
  request reaches the gate and is refused rather than queued.
- `GET /_gate/stats` reports admitted, refused (429), in flight and the peak;
  `POST /_gate/capacity {"capacity": N}` changes the capacity (tests use it to
  make a deployment full). Both are answered even when the gate is full.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable, Iterable
from typing import Any

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
EXTRA_THREADS = 16  # requests beyond the capacity still get a thread, and a 429


class CapacityGate:
    """WSGI middleware: at most `capacity` requests in flight, 429 beyond."""

    def __init__(self, app: WsgiApp, capacity: int) -> None:
        self.app = app
        self.capacity = capacity
        self._lock = threading.Lock()
        self.in_flight = self.peak = self.admitted = self.refused = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"capacity": self.capacity, "in_flight": self.in_flight,
                    "peak_in_flight": self.peak, "admitted": self.admitted,
                    "refused": self.refused}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_gate/"):
            return self._control(path, environ, start_response)
        with self._lock:
            full = self.in_flight >= self.capacity
            if full:
                self.refused += 1
            else:
                self.in_flight += 1
                self.admitted += 1
                self.peak = max(self.peak, self.in_flight)
        if full:
            body = b"Rate exceeded: every instance is busy (local capacity gate)\n"
            start_response("429 Too Many Requests", [("Content-Type", "text/plain"),
                                                      ("Content-Length", str(len(body)))])
            return [body]
        try:
            result = self.app(environ, start_response)
            try:
                return [b"".join(result)]  # the request ends when its body is complete
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            with self._lock:
                self.in_flight -= 1

    def _control(self, path: str, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        if path == "/_gate/capacity" and environ.get("REQUEST_METHOD") == "POST":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(size) or b"{}")
            with self._lock:
                self.capacity = max(0, int(body["capacity"]))
        elif path != "/_gate/stats":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        data = json.dumps(self.stats()).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(data)))])
        return [data]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m aiprod_dev.localstack.serve")
    parser.add_argument("--target", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--capacity", type=int, required=True,
                        help="requests in flight at once before 429")
    args = parser.parse_args()

    from functions_framework import create_app
    from functions_framework._http.gunicorn import GunicornApplication

    app = create_app(args.target, args.source)  # type: ignore[no-untyped-call]
    app.wsgi_app = CapacityGate(app.wsgi_app, args.capacity)
    GunicornApplication(app, args.host, args.port, False,  # type: ignore[no-untyped-call]
                        threads=args.capacity + EXTRA_THREADS).run()


if __name__ == "__main__":
    main()
