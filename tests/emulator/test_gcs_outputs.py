"""Outputs in Cloud Storage, exercised against a local storage emulator."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from aiprod.adapters.media import probe_video, render_test_video
from aiprod.adapters.storage import GcsOutputStore, output_store_for
from aiprod_dev.localstack.processes import free_port, http_ok, wait_until

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[storage.Client]:
    port = free_port()
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    log = (tmp_path_factory.mktemp("gcs") / "emulator.log").open("ab")
    process = subprocess.Popen([str(exe), "start", "--host=127.0.0.1", f"--port={port}",
                                "--in-memory"], stdout=log, stderr=subprocess.STDOUT)
    host = f"http://127.0.0.1:{port}"
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    try:
        wait_until(lambda: http_ok(f"{host}/storage/v1/b", any_status=True), 30,
                   "the storage emulator")
        client = storage.Client(project="aiprod-local", credentials=AnonymousCredentials())
        client.create_bucket("aiprod-outputs")
        yield client
    finally:
        process.terminate()
        process.wait(10)
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved


def test_an_output_is_stored_whole_and_can_be_downloaded(gcs: storage.Client,
                                                         tmp_path: Path) -> None:
    video = tmp_path / "output.mp4"
    video.write_bytes(render_test_video(2, "16:9"))
    store = GcsOutputStore("aiprod-outputs", "outputs", client=gcs)

    uri = store.put(video, "jobs/job_1/output.mp4", "video/mp4")

    assert uri == "gs://aiprod-outputs/outputs/jobs/job_1/output.mp4"
    blob = gcs.bucket("aiprod-outputs").get_blob("outputs/jobs/job_1/output.mp4")
    assert blob is not None
    assert blob.size == video.stat().st_size
    assert blob.content_type == "video/mp4"
    fetched = httpx.get(store.download_url(uri, dt.timedelta(hours=1)), timeout=30)
    assert fetched.status_code == 200
    assert hashlib.sha256(fetched.content).digest() == hashlib.sha256(
        video.read_bytes()).digest()
    assert probe_video(fetched.content).frames == 48


def test_storing_the_same_key_again_replaces_it(gcs: storage.Client, tmp_path: Path) -> None:
    store = GcsOutputStore("aiprod-outputs", client=gcs)
    first, second = tmp_path / "a.mp4", tmp_path / "b.mp4"
    first.write_bytes(render_test_video(1, "1:1"))
    second.write_bytes(render_test_video(2, "1:1"))
    store.put(first, "jobs/job_2/output.mp4", "video/mp4")
    store.put(second, "jobs/job_2/output.mp4", "video/mp4")
    names = [b.name for b in gcs.list_blobs("aiprod-outputs", prefix="jobs/job_2/")]
    assert names == ["jobs/job_2/output.mp4"]
    blob = gcs.bucket("aiprod-outputs").get_blob("jobs/job_2/output.mp4")
    assert blob is not None
    assert blob.size == second.stat().st_size


def test_the_output_uri_setting_chooses_the_store() -> None:
    with pytest.raises(ValueError, match="file://DIR or gs://BUCKET/PREFIX"):
        output_store_for("s3://elsewhere")


def test_a_gs_image_is_read_in_house_and_checked(gcs: storage.Client) -> None:
    from aiprod.adapters.images import load_image
    from aiprod.adapters.providers.base import ProviderError
    from tests.unit.test_images import png

    bucket = gcs.bucket("aiprod-outputs")
    bucket.blob("inputs/fox.png").upload_from_string(png(), content_type="image/png")
    bucket.blob("inputs/notes.txt").upload_from_string(b"not an image",
                                                       content_type="text/plain")

    assert load_image("gs://aiprod-outputs/inputs/fox.png", timeout_s=5) == (png(), "image/png")
    with pytest.raises(ProviderError, match="image_not_found"):
        load_image("gs://aiprod-outputs/inputs/missing.png", timeout_s=5)
    with pytest.raises(ProviderError, match="unsupported_image_type"):
        load_image("gs://aiprod-outputs/inputs/notes.txt", timeout_s=5)


def test_an_upload_is_staged_once_create_only_and_read_back(gcs: storage.Client) -> None:
    """Staging writes with ifGenerationMatch=0, so the api and intake functions need only
    roles/storage.objectCreator; a retry of the same content keeps the object."""
    from aiprod.domain.job import staged_key
    from tests.unit.test_images import png

    image = png(64, 64, noise=True)
    sha256 = hashlib.sha256(image).hexdigest()
    store = GcsOutputStore("aiprod-outputs", "outputs", client=gcs)
    key = staged_key("job_9", sha256, "image/png")

    uri = store.stage(image, key, "image/png")
    blob = gcs.bucket("aiprod-outputs").get_blob(f"outputs/jobs/job_9/input/{sha256}.png")
    assert blob is not None
    generation = blob.generation

    assert store.stage(image, key, "image/png") == uri  # a retried admission
    assert uri == f"gs://aiprod-outputs/outputs/jobs/job_9/input/{sha256}.png"
    again = gcs.bucket("aiprod-outputs").get_blob(f"outputs/jobs/job_9/input/{sha256}.png")
    assert again is not None
    # Production keeps the first object (412 on ifGenerationMatch=0; pinned in
    # tests/unit/test_uploads.py); this emulator ignores the precondition and rewrites.
    assert again.generation >= generation
    assert again.content_type == "image/png"
    assert store.read(uri) == image
    with pytest.raises(FileNotFoundError):
        store.read("gs://aiprod-outputs/outputs/jobs/job_9/input/missing.png")
