"""Image-to-video end to end: the image reaches each provider the way it takes it."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from google.cloud import pubsub_v1

from aiprod.adapters.images import as_data_uri
from aiprod.http.entrypoints import intake_job_id
from tests.conftest import LocalStack
from tests.unit.test_images import png

pytestmark = pytest.mark.emulator

IMAGE = png(32, 18)


class ImageServer(http.server.BaseHTTPRequestHandler):
    fetches = 0

    def do_GET(self) -> None:
        type(self).fetches += 1
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(IMAGE)))
        self.end_headers()
        self.wfile.write(IMAGE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_url() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    ImageServer.fetches = 0
    yield f"http://127.0.0.1:{httpd.server_address[1]}/first-frame.png"
    httpd.shutdown()


def sent_image(stack: LocalStack, provider: str, prompt: str) -> dict[str, object]:
    [task] = [t for t in stack.sim_tasks(provider) if t["prompt"] == prompt]
    image = task["image"]
    assert isinstance(image, dict)
    return image


def test_an_uploaded_image_reaches_the_provider_unchanged(local: LocalStack) -> None:
    prompt = "the fox in this picture starts running"
    # min_quality 0.8 passes over gen4_turbo (0.78), cheaper, to the Replicate model.
    job = local.submit(prompt=prompt, image_url=as_data_uri(IMAGE, "image/png"),
                       min_quality=0.8)
    assert job["plan"][0] == "replicate-seedance"

    done = local.wait(job["id"])

    assert done["status"] == "SUCCEEDED"
    sha256 = hashlib.sha256(IMAGE).hexdigest()
    assert done["input_image"] == {"uri": done["request"]["image_url"], "sha256": sha256,
                                   "mime_type": "image/png", "bytes": len(IMAGE)}
    assert done["request"]["image_url"].endswith(f"/jobs/{job['id']}/input/{sha256}.png")
    assert sent_image(local, "replicate", prompt)["sha256"] == sha256


def test_veo_gets_the_bytes_of_an_image_url_fetched_under_the_address_rules(
        local: LocalStack, image_url: str) -> None:
    prompt = "the fox in this picture turns its head"
    job = local.submit(prompt=prompt, image_url=image_url, duration_seconds=6, min_quality=0.85)
    assert job["plan"][0] == "veo-31-fast"

    done = local.wait(job["id"])

    assert done["status"] == "SUCCEEDED", done["attempts"]
    assert ImageServer.fetches == 1  # AIPROD fetched it once, for Veo, which takes bytes
    sent = sent_image(local, "veo", prompt)
    assert sent == {"bytes": len(IMAGE), "sha256": hashlib.sha256(IMAGE).hexdigest()}


def test_runway_is_given_the_url_to_fetch_itself(local: LocalStack) -> None:
    prompt = "the fox in this picture jumps"
    job = local.submit(prompt=prompt, image_url=as_data_uri(IMAGE, "image/png"),
                       policy="fixed")
    assert job["plan"][0] == "runway-gen45"
    done = local.wait(job["id"])
    assert done["status"] == "SUCCEEDED"
    assert sent_image(local, "runway", prompt)["sha256"] == hashlib.sha256(IMAGE).hexdigest()


@pytest.mark.parametrize("url", ["https://10.0.0.7/fox.png", "https://169.254.169.254/x.png",
                                 "https://[::1]/fox.png", "https://localhost/fox.png"])
def test_an_image_url_at_an_internal_address_is_refused_at_admission(
        local: LocalStack, url: str) -> None:
    reply = httpx.post(f"{local.api}/v1/jobs", json={"prompt": "fox", "image_url": url},
                       headers=local.auth, timeout=30)
    assert reply.status_code == 400
    problem = reply.json()
    assert problem["type"] == "urn:aiprod:problem:unsafe-url"
    assert problem["field"] == "image_url"


def test_a_plain_http_image_url_is_refused_outside_development(local: LocalStack) -> None:
    reply = httpx.post(f"{local.api}/v1/jobs",
                       json={"prompt": "fox", "image_url": "http://images.example/fox.png"},
                       headers=local.auth, timeout=30)
    assert reply.status_code == 400
    assert reply.json()["field"] == "image_url"
    assert "https://" in reply.json()["detail"]


def test_an_upload_larger_than_the_json_cap_is_accepted_over_rest(local: LocalStack) -> None:
    # ~300 KB of PNG: over the 64 KiB body cap and Replicate's 256 KiB upload limit,
    # within Runway's 5 MB.
    big = png(320, 320, noise=True)
    assert len(big) > 262_144
    prompt = "the fox in this big picture"
    reply = httpx.post(f"{local.api}/v1/jobs", headers=local.auth, timeout=30, json={
        "prompt": prompt, "image_url": as_data_uri(big, "image/png")})
    assert reply.status_code == 201, reply.text
    assert reply.json()["plan"] == ["runway-gen4-turbo", "runway-gen45"]
    assert local.wait(reply.json()["id"])["status"] == "SUCCEEDED"
    assert sent_image(local, "runway", prompt)["sha256"] == hashlib.sha256(big).hexdigest()


def test_a_gs_image_from_a_bucket_not_listed_is_refused(local: LocalStack) -> None:
    """AIPROD reads gs:// images with its own identity: only buckets an operator lists."""
    reply = httpx.post(f"{local.api}/v1/jobs", headers=local.auth, timeout=30, json={
        "prompt": "fox", "image_url": "gs://aiprod-outputs/outputs/jobs/other/output.mp4"})
    assert reply.status_code == 400
    assert reply.json()["field"] == "image_url"
    assert "AIPROD_IMAGE_BUCKETS" in reply.json()["detail"]


# --- Uploads larger than a Firestore document (1 MiB) ---------------------------------

JOB_DOC_MAX = 64 * 1024  # a job document stays small whatever the upload


def job_doc_size(stack: LocalStack, job_id: str) -> int:
    """The stored job document's size, as JSON (Firestore's own count is close)."""
    snapshot = stack.firestore().collection("jobs").document(job_id).get()
    assert snapshot.exists
    return len(json.dumps(snapshot.to_dict(), default=str))


def assert_uploaded_by_reference(stack: LocalStack, job: dict[str, Any], image: bytes) -> None:
    sha256 = hashlib.sha256(image).hexdigest()
    assert job["input_image"]["sha256"] == sha256
    assert job["input_image"]["bytes"] == len(image)
    body = json.dumps(job)
    assert len(body) < JOB_DOC_MAX
    assert "base64" not in body
    assert job_doc_size(stack, job["id"]) < JOB_DOC_MAX
    staged = Path(job["input_image"]["uri"].removeprefix("file://"))
    assert staged.name == f"{sha256}.png"
    assert staged.parent.parent.name == job["id"]  # jobs/<id>/input/: goes with the output
    assert hashlib.sha256(staged.read_bytes()).hexdigest() == sha256


def test_a_1_4_mib_upload_reaches_runway_whole(local: LocalStack) -> None:
    """Over Firestore's 1 MiB document limit (a 500 before staging), within Runway's 5 MB:
    Runway gets it as a data URI (its base64 is under Runway's 5 MB data-URI limit)."""
    image = png(700, 700, noise=True)
    assert 1.3 * 2**20 < len(image) < 1.5 * 2**20
    prompt = "the fox in this 1.4 MiB picture leaps"
    reply = httpx.post(f"{local.api}/v1/jobs", headers=local.auth, timeout=60, json={
        "prompt": prompt, "image_url": as_data_uri(image, "image/png"), "policy": "fixed"})
    assert reply.status_code == 201, reply.text
    assert reply.json()["plan"][0] == "runway-gen45"

    done = local.wait(reply.json()["id"])

    assert done["status"] == "SUCCEEDED", done["attempts"]
    assert sent_image(local, "runway", prompt) == {
        "bytes": len(image), "sha256": hashlib.sha256(image).hexdigest()}
    assert_uploaded_by_reference(local, done, image)


def test_a_multi_mb_upload_reaches_veo_as_bytes(local: LocalStack) -> None:
    """6 MiB: over Runway's 5 MB, within Veo's 20 MB, which gets the bytes."""
    image = png(1450, 1450, noise=True)
    assert len(image) > 6 * 2**20
    prompt = "the fox in this 6 MiB picture turns"
    reply = httpx.post(f"{local.api}/v1/jobs", headers=local.auth, timeout=120, json={
        "prompt": prompt, "image_url": as_data_uri(image, "image/png"),
        "duration_seconds": 6})
    assert reply.status_code == 201, reply.text
    assert reply.json()["plan"] == ["veo-31-fast", "veo-31"]
    assert_uploaded_by_reference(local, reply.json(), image)

    done = local.wait(reply.json()["id"], timeout=120)

    assert done["status"] == "SUCCEEDED", done["attempts"]
    assert sent_image(local, "veo", prompt) == {
        "bytes": len(image), "sha256": hashlib.sha256(image).hexdigest()}
    assert_uploaded_by_reference(local, done, image)


def test_an_upload_over_every_fitting_backends_limit_is_a_413_naming_it(
        local: LocalStack) -> None:
    image = png(1450, 1450, noise=True)  # 6 MiB: over Runway's 5 MiB
    reply = httpx.post(f"{local.api}/v1/jobs", headers=local.auth, timeout=120, json={
        "prompt": "fox", "image_url": as_data_uri(image, "image/png"),
        "duration_seconds": 5})  # Veo, the only one taking 6 MiB, renders 4, 6 or 8 s
    assert reply.status_code == 413, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    problem = reply.json()
    assert problem["type"] == "urn:aiprod:problem:rejected-image-too-large"
    assert problem["field"] == "image_url"
    assert problem["limit"] == "max_image_data_uri_bytes"
    assert problem["limit_bytes"] == 5 * 2**20
    assert "5242880" in problem["detail"]


def test_an_upload_that_is_not_an_image_is_a_422(local: LocalStack) -> None:
    reply = httpx.post(f"{local.api}/v1/jobs", headers=local.auth, timeout=30, json={
        "prompt": "fox",
        "image_url": "data:image/png;base64," + base64.b64encode(b"GIF89a" * 50).decode()})
    assert reply.status_code == 422, reply.text
    assert reply.json()["type"] == "urn:aiprod:problem:invalid-image"
    assert reply.json()["field"] == "image_url"


PROJECT = "aiprod-local"


@pytest.fixture
def events_tap() -> Iterator[tuple[pubsub_v1.SubscriberClient, str]]:
    """A pull subscription on job-events: what publishers subscribed there receive."""
    subscriber = pubsub_v1.SubscriberClient()
    name = subscriber.subscription_path(PROJECT, f"tap-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(request={
        "name": name, "topic": f"projects/{PROJECT}/topics/job-events"})
    try:
        yield subscriber, name
    finally:
        subscriber.delete_subscription(request={"subscription": name})
        subscriber.close()


def pull_event(tap: tuple[pubsub_v1.SubscriberClient, str], job_id: str,
               kind: str) -> dict[str, Any]:
    subscriber, name = tap
    for _ in range(30):
        reply = subscriber.pull(request={"subscription": name, "max_messages": 50}, timeout=10)
        for received in reply.received_messages:
            message = received.message
            if message.attributes.get("job_id") == job_id and \
                    message.attributes.get("type") == kind:
                event: dict[str, Any] = json.loads(message.data)
                return event
    raise AssertionError(f"no {kind} event for {job_id} on job-events")


def published_job_id(message_id: str) -> str:
    return intake_job_id(SimpleNamespace(id=message_id, attributes={}))  # type: ignore[arg-type]


def test_an_upload_over_intake_is_staged_and_oversize_is_rejected(
        local: LocalStack, events_tap: tuple[pubsub_v1.SubscriberClient, str]) -> None:
    image = png(700, 700, noise=True)  # 1.4 MiB: a message well under Pub/Sub's 10 MB
    prompt = "the fox in this published picture leaps"
    body = {"prompt": prompt, "image_url": as_data_uri(image, "image/png"), "policy": "fixed"}
    message_id = f"upload-{uuid.uuid4().hex[:8]}"
    assert local.push("intake", "video-jobs", body, message_id=message_id).status_code < 300
    job_id = published_job_id(message_id)
    done = local.wait(job_id)
    assert done["status"] == "SUCCEEDED", done["attempts"]
    assert sent_image(local, "runway", prompt)["sha256"] == hashlib.sha256(image).hexdigest()
    assert_uploaded_by_reference(local, done, image)
    # A redelivery of the same message is the same job, not an idempotency-key clash.
    assert local.push("intake", "video-jobs", body, message_id=message_id).status_code < 300
    succeeded = pull_event(events_tap, job_id, "job.succeeded")
    assert "base64" not in json.dumps(succeeded)  # events carry the reference only

    big = png(1450, 1450, noise=True)  # 6 MiB (8 MB as base64): over Runway's 5 MiB
    oversize = {"prompt": "fox", "image_url": as_data_uri(big, "image/png"),
                "aspect_ratio": "1:1"}  # and Veo renders no 1:1
    other_id = f"upload-{uuid.uuid4().hex[:8]}"
    assert local.push("intake", "video-jobs", oversize, message_id=other_id).status_code < 300
    rejected = pull_event(events_tap, published_job_id(other_id), "job.rejected")
    assert rejected["code"] == "image_too_large"
    assert "5242880" in rejected["reason"]
