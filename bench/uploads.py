"""What a large upload costs the API's memory, and what bounds it (part of `make bench`;
runs alone too: `python bench/uploads.py`).

An image of up to 20 MiB may come as a base64 data: URI inside the JSON body of
POST /v1/jobs (27 MB of text). The API parses it, decodes it and stages it in
Cloud Storage; an api instance serves functions.yaml's `concurrency` requests at
once in `memory`. Each scenario runs the real routes (aiprod.http.api) on the
unit tests' in-memory fakes, in a server process of its own fed over HTTP by
this one, and reports that process's peak resident memory (its high-water mark,
ru_maxrss) against the same process at rest after one small request:

- small: one small request (the baseline);
- one upload: one 20 MiB upload (each with an Idempotency-Key, as clients should);
- burst: `concurrency` 20 MiB uploads at once, with AIPROD_UPLOADS_AT_ONCE at its
  default (the bound) and with it lifted to the concurrency (no bound); and the
  bound without aiprod.http.entrypoints.return_large_buffers (glibc's own malloc
  settings, under which the threads' arenas keep every upload's peak).

Plus the Python allocations' peak for one upload (tracemalloc, in this process),
the figure the code's copies decide.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IMAGE_BYTES = 20 * 2**20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _image() -> bytes:
    """A PNG's first bytes, then noise: 20 MiB that decode as an upload does (the
    routes check the signature; the bytes' content costs nothing more)."""
    return PNG_MAGIC + os.urandom(IMAGE_BYTES - len(PNG_MAGIC) - 1024)


def _upload_body(image: bytes) -> bytes:
    return json.dumps({"prompt": "bench upload", "duration_seconds": 4,
                       "image_url": "data:image/png;base64," + base64.b64encode(image).decode(),
                       }).encode()


def _api_kind() -> dict[str, Any]:
    kinds: dict[str, Any] = yaml.safe_load((ROOT / "functions.yaml").read_text())["kinds"]
    return dict(kinds["api"])


def _mib(value: float) -> float:
    return round(value / 2**20, 1)


# -- the server process ---------------------------------------------------------------------

def serve(port: int, uploads_at_once: int, tuned: bool) -> None:
    """The API routes on fakes, threaded like functions-framework's gunicorn."""
    sys.path.insert(0, str(ROOT))
    import psutil
    from flask import Flask, Response, request
    from tests.fakes import fake_runtime
    from werkzeug.serving import make_server

    from aiprod.http import api
    from aiprod.services.access import create_key

    if tuned:  # what the deployed function does (importing entrypoints does it too)
        from aiprod.http import entrypoints
        entrypoints.return_large_buffers()
    fx = fake_runtime(Path(tempfile.mkdtemp(prefix="aiprod-bench-uploads-")),
                      uploads_at_once=uploads_at_once, upload_wait_s=120.0)
    key = create_key(fx.access, "bench", rate_limit_rpm=100_000)[1]
    app = Flask("bench-uploads")

    @app.route("/__bench/key")
    def bench_key() -> Response:
        return Response(key)

    @app.route("/__bench/memory")
    def memory() -> Response:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return Response(json.dumps({"peak_rss": peak_kib * 1024,
                                    "rss": psutil.Process().memory_info().rss}))

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
    @app.route("/<path:path>", methods=["GET", "POST"])
    def route(path: str) -> Response:
        return api.handle(fx.rt, request)

    make_server("127.0.0.1", port, app, threaded=True).serve_forever()


# -- the scenarios ----------------------------------------------------------------------------

def _scenario(bodies: list[bytes], uploads_at_once: int, tuned: bool = True) -> dict[str, Any]:
    """Start a server, send one small request (then read its memory at rest), send
    `bodies` at once, and read its peak."""
    from aiprod_dev.localstack.processes import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port),
                               str(uploads_at_once), str(int(tuned))], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                key = httpx.get(f"{url}/__bench/key", timeout=2).text
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the bench API server did not start")
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        small = httpx.post(f"{url}/v1/jobs", content=b'{"prompt": "bench small"}',
                           headers=auth, timeout=60)
        small.raise_for_status()
        rest = httpx.get(f"{url}/__bench/memory").json()
        started = time.perf_counter()

        def send(body: bytes) -> int:  # with an Idempotency-Key, as clients should
            return httpx.post(f"{url}/v1/jobs", content=body, timeout=300,
                              headers=auth | {"Idempotency-Key": uuid.uuid4().hex}
                              ).status_code

        with concurrent.futures.ThreadPoolExecutor(max(1, len(bodies))) as pool:
            statuses = list(pool.map(send, bodies))
        seconds = time.perf_counter() - started
        after = httpx.get(f"{url}/__bench/memory").json()
    finally:
        server.terminate()
        server.wait(10)
    return {"requests": len(bodies), "statuses": sorted(statuses),
            "seconds": round(seconds, 2),
            "rest_rss_mib": _mib(rest["rss"]), "peak_rss_mib": _mib(after["peak_rss"]),
            "peak_over_rest_mib": _mib(after["peak_rss"] - rest["rss"])}


def _python_peak_one_upload(body: bytes) -> float:
    """The Python allocations' peak for one upload through the routes, in MiB."""
    sys.path.insert(0, str(ROOT))
    from flask import Request
    from tests.fakes import fake_runtime
    from werkzeug.test import EnvironBuilder

    from aiprod.http import api
    from aiprod.services.access import create_key

    fx = fake_runtime(Path(tempfile.mkdtemp(prefix="aiprod-bench-uploads-")))
    key = create_key(fx.access, "bench", rate_limit_rpm=100_000)[1]

    def call(data: bytes) -> int:
        environ = EnvironBuilder(method="POST", path="/v1/jobs", data=data,
                                 content_type="application/json",
                                 headers={"Authorization": f"Bearer {key}",
                                          "Idempotency-Key": uuid.uuid4().hex}).get_environ()
        return api.handle(fx.rt, Request(environ)).status_code

    call(b'{"prompt": "warm up"}')
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        status = call(body)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    if status != 201:
        raise RuntimeError(f"the upload answered {status}")
    return _mib(peak)


def measure() -> dict[str, Any]:
    from aiprod.wiring.config import Settings

    kind = _api_kind()
    concurrency = int(kind["concurrency"])
    bound = Settings.model_fields["uploads_at_once"].default
    body = _upload_body(_image())
    small = _scenario([], bound)
    one = _scenario([body], bound)
    bounded = _scenario([body] * concurrency, bound)
    unbounded = _scenario([body] * concurrency, concurrency)
    # The bound without return_large_buffers (glibc's adjusting threshold): the
    # threads' arenas keep what each thread once held.
    untuned = _scenario([body] * concurrency, bound, tuned=False)
    per_upload = one["peak_over_rest_mib"]
    return {
        "api_instance": {"memory": kind["memory"], "concurrency": concurrency,
                         "uploads_at_once": bound},
        "upload": {"image_mib": _mib(IMAGE_BYTES), "body_mib": _mib(len(body))},
        "python_peak_mib_one_upload": _python_peak_one_upload(body),
        "small_request": small,
        "one_upload": one,
        f"{concurrency}_uploads_bounded": bounded,
        f"{concurrency}_uploads_unbounded": unbounded,
        f"{concurrency}_uploads_bounded_glibc_default": untuned,
        "ratios": {
            "one_upload_peak_vs_small": round(one["peak_rss_mib"] / small["peak_rss_mib"], 2),
            "bounded_peak_vs_small": round(bounded["peak_rss_mib"] / small["peak_rss_mib"], 2),
            "unbounded_peak_vs_small": round(unbounded["peak_rss_mib"]
                                             / small["peak_rss_mib"], 2),
            "glibc_default_peak_vs_small": round(untuned["peak_rss_mib"]
                                                 / small["peak_rss_mib"], 2),
            "bounded_over_rest_in_uploads": round(bounded["peak_over_rest_mib"] / per_upload, 1)
            if per_upload > 0 else None,
        },
    }


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1")
    else:
        print(json.dumps(measure(), indent=2))
