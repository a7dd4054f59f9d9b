"""Uploaded images: staged by reference, never kept or shown as bytes (pure parts)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from aiprod.adapters import images
from aiprod.adapters.providers import replicate, runway
from aiprod.adapters.providers.base import ProviderError, StagedImage
from aiprod.adapters.storage import LocalOutputStore, SigningUnavailable
from aiprod.adapters.store import job_from_doc, job_to_doc
from aiprod.domain.health import is_strike
from aiprod.domain.job import (
    ErrorClass,
    InputImage,
    Job,
    JobRequest,
    JobStatus,
    same_request,
    staged_key,
)
from aiprod.domain.lifecycle import falls_back
from aiprod.domain.views import public_job
from tests.unit.test_images import png

NOW = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
IMAGE = png(64, 64, noise=True)
SHA = hashlib.sha256(IMAGE).hexdigest()


def staged_job(uri: str = f"file:///tmp/out/jobs/job_1/input/{SHA}.png") -> Job:
    return Job(id="job_1", owner="o", plan=["runway-gen45"], status=JobStatus.QUEUED,
               request=JobRequest(prompt="fox", image_url=images.as_data_uri(
                   IMAGE, "image/png")).model_copy(update={"image_url": uri}),
               input_image=InputImage(uri=uri, sha256=SHA, mime_type="image/png",
                                      bytes=len(IMAGE)),
               estimated_cost_usd=0.6, created_at=NOW, updated_at=NOW)


def test_an_upload_is_staged_under_the_jobs_prefix_by_content() -> None:
    assert staged_key("job_1", SHA, "image/png") == f"jobs/job_1/input/{SHA}.png"
    assert staged_key("job_1", SHA, "image/jpeg") == f"jobs/job_1/input/{SHA}.jpg"


def test_a_stored_job_may_name_its_staged_file_but_a_caller_may_not() -> None:
    job = staged_job()
    assert job_from_doc(job_to_doc(job)) == job
    with pytest.raises(ValidationError, match="image_url"):
        JobRequest(prompt="fox", image_url="file:///etc/passwd")


def test_the_public_job_shows_the_reference_never_the_bytes() -> None:
    body = json.dumps(public_job(staged_job()))
    assert len(body) < 4096
    assert "base64" not in body
    view = public_job(staged_job())
    assert view["input_image"] == {"uri": f"file:///tmp/out/jobs/job_1/input/{SHA}.png",
                                   "sha256": SHA, "mime_type": "image/png",
                                   "bytes": len(IMAGE)}
    assert view["request"]["image_url"] == view["input_image"]["uri"]


def test_a_redelivered_upload_is_the_same_request_and_another_image_is_not() -> None:
    job = staged_job()
    again = JobRequest(prompt="fox", image_url=images.as_data_uri(IMAGE, "image/png"))
    assert same_request(job, again)
    other = JobRequest(prompt="fox", image_url=images.as_data_uri(png(3, 3), "image/png"))
    assert not same_request(job, other)
    assert not same_request(job, again.model_copy(update={"prompt": "cat"}))


def test_the_local_store_stages_once_and_reads_back(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path)
    uri = store.stage(IMAGE, staged_key("job_1", SHA, "image/png"), "image/png")
    assert uri == (tmp_path / "jobs/job_1/input" / f"{SHA}.png").as_uri()
    assert store.stage(IMAGE, staged_key("job_1", SHA, "image/png"), "image/png") == uri
    assert store.read(uri) == IMAGE
    with pytest.raises(FileNotFoundError):
        store.read("file:///etc/hostname")


def staged(size: int, url: str = "file:///x") -> StagedImage:
    data = b"\x89PNG\r\n\x1a\n" + bytes(size - 8)
    return StagedImage(uri="file:///x", sha256="", mime_type="image/png", size=size,
                       read=lambda: data, signed_url=lambda: url)


def test_runway_takes_a_data_uri_up_to_5_mb_of_base64_and_a_url_beyond() -> None:
    # Runway: "a data URI must be under 5 MB (1024x1024x5 bytes) after base64 encoding".
    fits = 5 * 1024 * 1024 * 3 // 4
    assert images.data_uri_chars(fits) <= runway.MAX_DATA_URI_CHARS
    assert images.data_uri_chars(fits + 3) > runway.MAX_DATA_URI_CHARS
    assert images.staged_for_provider(staged(100), inline=True, provider="Runway").startswith(
        "data:image/png;base64,")
    signed = "https://storage.googleapis.com/b/jobs/job_1/input/x.png?X-Goog-Signature=1"
    assert images.staged_for_provider(staged(100, signed), inline=False,
                                      provider="Runway") == signed
    # The local folder cannot sign an https URL: refused as input, never a 5xx.
    with pytest.raises(ProviderError, match="image_too_large_for_data_uri"):
        images.staged_for_provider(staged(100), inline=False, provider="Runway")


def test_replicate_data_uri_limit_is_its_documented_256_kb() -> None:
    assert replicate.MAX_DATA_URI_BYTES == 262_144


def test_a_staged_image_that_changed_is_not_sent() -> None:
    with pytest.raises(ProviderError, match="staged_image_corrupt"):
        images.read_staged(lambda: b"other", "file:///x", SHA)
    assert images.read_staged(lambda: IMAGE, "file:///x", SHA) == IMAGE

    def gone() -> bytes:
        raise FileNotFoundError("x")
    with pytest.raises(ProviderError, match="image_not_found"):
        images.read_staged(gone, "file:///x", SHA)


class _Blob:
    def __init__(self, exists: bool) -> None:
        self.exists = exists
        self.calls: list[dict[str, object]] = []

    def upload_from_string(self, data: bytes, **kwargs: object) -> None:
        from google.api_core import exceptions as gexc

        self.calls.append(kwargs)
        if self.exists and kwargs.get("if_generation_match") == 0:
            raise gexc.PreconditionFailed("At least one of the pre-conditions did not hold.")


class _Bucket:
    name = "b"

    def __init__(self, blob: _Blob) -> None:
        self._blob = blob

    def blob(self, name: str) -> _Blob:
        return self._blob


class _Client:
    def __init__(self, blob: _Blob) -> None:
        self._blob = blob

    def bucket(self, name: str) -> _Bucket:
        return _Bucket(self._blob)


@pytest.mark.parametrize("exists", [False, True])
def test_staging_in_cloud_storage_is_create_only(exists: bool) -> None:
    """ifGenerationMatch=0 makes the write create-only (a 412 when the object exists:
    https://cloud.google.com/storage/docs/request-preconditions), so roles/
    storage.objectCreator is enough for api and intake; the storage emulator ignores
    preconditions, hence this check of what is sent."""
    from aiprod.adapters.storage import GcsOutputStore

    blob = _Blob(exists)
    store = GcsOutputStore("b", "outputs", client=_Client(blob))
    uri = store.stage(IMAGE, staged_key("job_1", SHA, "image/png"), "image/png")
    assert uri == f"gs://b/outputs/jobs/job_1/input/{SHA}.png"
    assert blob.calls == [{"content_type": "image/png", "checksum": "crc32c",
                           "if_generation_match": 0}]


def test_an_image_url_that_cannot_be_signed_falls_back_without_a_strike() -> None:
    """IAM signBlob refused (e.g. iamcredentials.googleapis.com disabled) before any
    provider call: the attempt is skipped-class (no circuit strike, the job falls
    back to a backend that takes bytes), never an exception that looks like a
    create cut off mid-call."""
    def refused() -> str:
        raise SigningUnavailable("403 SERVICE_DISABLED")

    image = StagedImage(uri="gs://b/x.png", sha256="", mime_type="image/png", size=100,
                        read=lambda: b"", signed_url=refused)
    with pytest.raises(ProviderError) as caught:
        images.staged_for_provider(image, inline=False, provider="Runway")
    assert caught.value.error_class is ErrorClass.SKIPPED
    assert caught.value.code == "image_url_unsigned"
    assert not is_strike(caught.value.error_class)
    assert falls_back(caught.value.error_class, fallback_on_refusal=False)
