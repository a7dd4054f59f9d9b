"""Large uploads on the API: parsed once, decoded a slice at a time, and at most
AIPROD_UPLOADS_AT_ONCE of them at once per process (the rest wait, then get a 503
uploads-busy), through api.handle on in-memory fakes. bench/uploads.py measures
the memory this bounds."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Request, Response
from werkzeug.test import EnvironBuilder

from aiprod.adapters import images
from aiprod.adapters.providers.base import ProviderError
from aiprod.domain.job import JobStatus
from aiprod.http import api
from aiprod.services.access import create_key
from tests.fakes import Fakes, fake_runtime
from tests.unit.test_images import png

IMAGE = png(200, 200, noise=True)  # about 120 KB: its body is over the 64 KiB of a plain body


def post(fx: Fakes, key: str, body: bytes, path: str = "/v1/jobs") -> Response:
    environ = EnvironBuilder(method="POST", path=path, data=body,
                             content_type="application/json",
                             headers={"Authorization": f"Bearer {key}"}).get_environ()
    return api.handle(fx.rt, Request(environ))


def upload(**extra: Any) -> bytes:
    return json.dumps({"prompt": "fox", "image_url": images.as_data_uri(IMAGE, "image/png")}
                      | extra).encode()


def problem(response: Response) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(response.get_data())
    return parsed


def bounded(tmp_path: Path, at_once: int, wait_s: float) -> tuple[Fakes, str]:
    fx = fake_runtime(tmp_path, uploads_at_once=at_once, upload_wait_s=wait_s)
    return fx, create_key(fx.access, "uploads", rate_limit_rpm=100_000)[1]


def test_no_more_uploads_than_the_bound_are_decoded_and_staged_at_once(tmp_path: Path) -> None:
    fx, key = bounded(tmp_path, at_once=2, wait_s=30.0)
    inside, most = 0, 0
    lock = threading.Lock()
    stage = fx.rt.outputs.stage

    def slow_stage(*args: Any, **kwargs: Any) -> str:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)  # long enough for every other request to arrive meanwhile
        with lock:
            inside -= 1
        return stage(*args, **kwargs)

    fx.rt.outputs.stage = slow_stage  # type: ignore[method-assign]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: post(fx, key, upload()), range(8)))
    assert [r.status_code for r in replies] == [201] * 8  # they waited their turn
    assert most == 2
    assert len(fx.store.docs) == 8


def test_an_upload_that_waits_too_long_is_a_503_with_retry_after_and_creates_nothing(
        tmp_path: Path) -> None:
    fx, key = bounded(tmp_path, at_once=1, wait_s=0.05)
    assert fx.rt.uploads.acquire(blocking=False)  # another upload is being decoded
    try:
        busy = post(fx, key, upload())
        small = post(fx, key, b'{"prompt": "a small body is never held up"}')
    finally:
        fx.rt.uploads.release()
    assert busy.status_code == 503
    assert busy.mimetype == "application/problem+json"
    assert busy.headers["Retry-After"] == "1"
    assert problem(busy)["type"] == "urn:aiprod:problem:uploads-busy"
    assert problem(busy)["field"] == "image_url"
    assert small.status_code == 201
    assert len(fx.store.docs) == 1
    assert post(fx, key, upload()).status_code == 201  # its turn, once the other is done


def test_the_openai_route_takes_its_turn_too(tmp_path: Path) -> None:
    fx, key = bounded(tmp_path, at_once=1, wait_s=0.05)
    body = json.dumps({"prompt": "fox", "input_reference": {
        "image_url": images.as_data_uri(IMAGE, "image/png")}}).encode()
    assert fx.rt.uploads.acquire(blocking=False)
    try:
        busy = post(fx, key, body, "/v1/videos")
    finally:
        fx.rt.uploads.release()
    assert busy.status_code == 503
    assert json.loads(busy.get_data())["error"]["code"] == "uploads-busy"
    assert post(fx, key, body, "/v1/videos").status_code == 200


def test_a_large_body_is_still_refused_unless_the_image_makes_it_large(fx: Fakes) -> None:
    key = create_key(fx.access, "uploads", rate_limit_rpm=100_000)[1]
    padded = upload()[:-1] + b" " * (70 * 1024) + b"}"  # valid JSON, 70 KiB besides the image
    assert problem(post(fx, key, padded))["type"] == "urn:aiprod:problem:body-too-large"
    invalid = upload(prompt="f" * (70 * 1024))  # invalid and large besides the image
    assert problem(post(fx, key, invalid))["type"] == "urn:aiprod:problem:body-too-large"
    unparsable = upload()[:-1]
    assert problem(post(fx, key, unparsable))["type"] == "urn:aiprod:problem:malformed-json"
    listed = b"[" + upload() + b"]"
    assert problem(post(fx, key, listed))["type"] == "urn:aiprod:problem:malformed-json"
    bad_field = upload(duration_seconds="5")  # strict, as for a small body
    assert problem(post(fx, key, bad_field))["field"] == "duration_seconds"
    assert fx.store.docs == {}
    ok = post(fx, key, upload())
    assert ok.status_code == 201
    job = fx.store.get(json.loads(ok.get_data())["id"])
    assert job is not None
    assert job.status is JobStatus.QUEUED
    assert job.input_image is not None
    assert job.input_image.bytes == len(IMAGE)


def test_an_upload_decodes_a_slice_at_a_time_to_the_same_bytes() -> None:
    big = png(700, 700, noise=True)  # over a MiB: several slices
    assert len(big) * 4 // 3 > images.DECODE_SLICE_CHARS
    uri = images.as_data_uri(big, "image/png")
    assert images.load_image(uri, timeout_s=1) == (big, "image/png")
    at = len("data:image/png;base64,") + images.DECODE_SLICE_CHARS + 8  # in a later slice
    for bad in ("!", "é", "="):
        with pytest.raises(ProviderError) as refused:
            images.load_image(uri[:at] + bad + uri[at + 1:], timeout_s=1)
        assert refused.value.code == "invalid_image"
    with pytest.raises(ProviderError) as unpadded:
        images.load_image(uri[:-1] if uri.endswith("=") else uri + "A", timeout_s=1)
    assert unpadded.value.code == "invalid_image"
    encoded = base64.b64encode(big).decode()
    assert images.load_image("data:image/png;base64," + encoded, timeout_s=1)[0] == big


# bench/uploads.py, 2026-12-02 (2-core AMD EPYC VM, Python 3.12.1): an api process at
# rest after one request, and what one 20 MiB upload adds to its peak.
MEASURED_REST_MIB = 123
MEASURED_PER_UPLOAD_MIB = 54


def test_the_default_bound_fits_the_api_instance_functions_yaml_gives() -> None:
    """uploads_at_once uploads at their measured peak, beside the process at rest, fit
    the api instance's memory with a quarter to spare (for the small requests it
    serves meanwhile and the allocator's slack)."""
    import yaml

    from aiprod.wiring.config import Settings

    kinds = yaml.safe_load((Path(__file__).parents[2] / "functions.yaml").read_text())["kinds"]
    memory = kinds["api"]["memory"]
    assert memory.endswith("Mi")
    at_once = Settings.model_fields["uploads_at_once"].default
    assert at_once < kinds["api"]["concurrency"]  # else the bound would bound nothing
    assert MEASURED_REST_MIB + at_once * MEASURED_PER_UPLOAD_MIB <= 0.75 * int(memory[:-2])


def test_an_uploads_idempotency_fingerprint_is_the_canonical_jsons_digest() -> None:
    """Hashed in place, the fingerprint of an upload is still the SHA-256 of the
    request's canonical JSON (what records stored before were made with)."""
    import hashlib

    from aiprod.domain.job import JobRequest
    from aiprod.services.access import fingerprint

    big = png(700, 700, noise=True)  # over a MiB of base64: hashed a slice at a time
    for image in (big, IMAGE):
        request = JobRequest(prompt="fox", image_url=images.as_data_uri(image, "image/png"),
                             metadata={"k": "v"})
        canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True,
                               separators=(",", ":"))
        assert fingerprint(request) == hashlib.sha256(canonical.encode()).hexdigest()
    other = JobRequest(prompt="fox", image_url=images.as_data_uri(big[:-1] + b"!", "image/png"))
    same = JobRequest(prompt="fox", image_url=images.as_data_uri(big, "image/png"))
    assert fingerprint(other) != fingerprint(same)


def test_an_uploads_content_hash_is_taken_a_slice_at_a_time() -> None:
    """What a retried intake message and a cached request compare uploads by."""
    import hashlib

    from aiprod.domain.job import upload_sha256

    big = png(700, 700, noise=True)
    uri = images.as_data_uri(big, "image/png")
    assert upload_sha256(uri) == hashlib.sha256(big).hexdigest()
    at = len("data:image/png;base64,") + 1024 * 1024 + 8  # in a later slice
    assert upload_sha256(uri[:at] + "!" + uri[at + 1:]) is None
    assert upload_sha256("https://example.com/fox.png") is None
    assert upload_sha256("data:image/png;base64") is None


def test_the_function_processes_fix_the_mmap_threshold() -> None:
    """Without it, each request thread keeps the largest buffers it ever held and the
    bound bounds nothing (bench/uploads.py, README Performance). The deployed
    functions run on glibc (Ubuntu-based Python runtimes), as this machine does."""
    import platform

    from aiprod.http import entrypoints

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert entrypoints.return_large_buffers() is True
