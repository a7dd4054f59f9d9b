"""Image-to-video end to end: the image reaches each provider the way it takes it."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest

from aiprod.adapters.images import as_data_uri
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
    job = local.submit(prompt=prompt, image_url=as_data_uri(IMAGE, "image/png"))
    assert job["plan"][0] == "replicate-seedance"

    done = local.wait(job["id"])

    assert done["status"] == "SUCCEEDED"
    assert done["request"]["image_url"].startswith("data:image/png;base64,")
    assert sent_image(local, "replicate", prompt)["sha256"] == hashlib.sha256(IMAGE).hexdigest()


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
    assert reply.json()["plan"] == ["runway-gen45"]
    assert local.wait(reply.json()["id"])["status"] == "SUCCEEDED"
    assert sent_image(local, "runway", prompt)["sha256"] == hashlib.sha256(big).hexdigest()


def test_a_gs_image_from_a_bucket_not_listed_is_refused(local: LocalStack) -> None:
    """AIPROD reads gs:// images with its own identity: only buckets an operator lists."""
    reply = httpx.post(f"{local.api}/v1/jobs", headers=local.auth, timeout=30, json={
        "prompt": "fox", "image_url": "gs://aiprod-outputs/outputs/jobs/other/output.mp4"})
    assert reply.status_code == 400
    assert reply.json()["field"] == "image_url"
    assert "AIPROD_IMAGE_BUCKETS" in reply.json()["detail"]
