"""The OpenAI-shaped /v1/videos routes on in-memory fakes: the field mapping, the video
object, the error body, and the routes through api.handle (the emulator test drives
them with the official SDK)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Request, Response
from werkzeug.test import EnvironBuilder

from aiprod.domain import routing
from aiprod.domain.job import AttemptError, ErrorClass, JobRequest, JobStatus, Output
from aiprod.domain.problems import Problem
from aiprod.http import api, openapi, videos
from aiprod.services.access import create_key
from tests.fakes import Fakes
from tests.service_helpers import admit

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")


def call(fx: Fakes, method: str, path: str, key: str | None, **kwargs: Any) -> Response:
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    environ = EnvironBuilder(method=method, path=path, headers=headers, **kwargs).get_environ()
    return api.handle(fx.rt, Request(environ))


@pytest.fixture
def key(fx: Fakes) -> str:
    return create_key(fx.access, "videos", rate_limit_rpm=600)[1]


def body(response: Response) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(response.get_data())
    return parsed


# -- size and fields --------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "ratio"), [
    ("1280x720", "16:9"), ("720x1280", "9:16"), ("1920x1080", "16:9"), ("1792x1024", "16:9"),
    ("1024x1792", "9:16"), ("720x720", "1:1"), ("1080x1080", "1:1")])
def test_a_size_names_the_aspect_ratio_it_is_within_3_percent_of(size: str, ratio: str) -> None:
    assert videos.size_fields(size)["aspect_ratio"] == ratio


@pytest.mark.parametrize("size", ["800x600", "1280", "1280x720x3", "wide", "0x720", "1280*720"])
def test_a_size_that_is_no_frame_or_no_offered_ratio_is_a_400_on_size(size: str) -> None:
    with pytest.raises(Problem) as refused:
        videos.size_fields(size)
    assert refused.value.status == 400
    assert refused.value.extra["field"] == "size"


def test_size_gives_the_smallest_resolution_that_holds_the_frame() -> None:
    assert videos.size_fields("1792x1024") == {"aspect_ratio": "16:9", "resolution": "1080p"}
    assert videos.size_fields("1280x720")["resolution"] == "720p"
    assert videos.size_fields("854x480")["resolution"] == "720p"  # none smaller offered
    assert videos.size_fields("1366x768")["resolution"] == "768p"  # Hailuo's own size
    with pytest.raises(Problem) as refused:
        videos.size_fields("3840x2160")
    assert refused.value.extra["field"] == "size"


def test_model_is_a_routing_alias_or_pins_a_backend(fx: Fakes) -> None:
    cheapest = videos.job_request(fx.rt, {"prompt": "fox", "model": "aiprod/cheapest"})
    assert cheapest.policy.value == "cheapest"
    assert cheapest.backend is None
    best = videos.job_request(fx.rt, {"prompt": "fox", "model": "aiprod/best-quality"})
    assert best.policy.value == "best_quality"
    name = fx.rt.catalog.names[0]
    pinned = videos.job_request(fx.rt, {"prompt": "fox", "model": name})
    assert pinned.backend == name
    with pytest.raises(Problem) as unknown:
        videos.job_request(fx.rt, {"prompt": "fox", "model": "sora-2"})
    assert (unknown.value.status, unknown.value.extra["field"]) == (400, "model")
    assert "aiprod/cheapest" in unknown.value.detail


def test_a_pinned_backend_is_the_whole_plan_and_an_unfitting_one_is_refused(fx: Fakes) -> None:
    names = fx.rt.catalog.names
    for name in names:
        decision = routing.plan(JobRequest(prompt="fox", backend=name, policy="best_quality"),
                                fx.rt.catalog)
        if isinstance(decision, routing.Plan):
            assert decision.backends == [name]
    refused = routing.plan(JobRequest(prompt="fox", backend="nope"), fx.rt.catalog)
    assert isinstance(refused, routing.Rejection)
    assert refused.reason is routing.RejectionReason.UNSUPPORTED


def test_form_values_are_lax_and_extra_body_fields_pass_through(fx: Fakes) -> None:
    request = videos.job_request(fx.rt, {
        "prompt": "fox", "seconds": "8", "size": "720x1280", "min_quality": "0.5",
        "max_cost_usd": "3", "audio": "false", "metadata": {"order": "1042"}})
    assert request.duration_seconds == 8
    assert request.aspect_ratio.value == "9:16"
    assert (request.min_quality, request.max_cost_usd, request.audio) == (0.5, 3.0, False)
    assert request.metadata == {"order": "1042"}


@pytest.mark.parametrize(("given", "param"), [
    ({"seconds": "four"}, "seconds"),
    ({"seconds": "4", "duration_seconds": 8}, "duration_seconds"),
    ({"size": "1280x720", "aspect_ratio": "16:9"}, "aspect_ratio"),
    ({"colour": "red"}, "colour"),
    ({"min_quality": "high"}, "min_quality"),
    ({"input_reference": {"file_id": "file_1"}}, "input_reference"),
])
def test_a_bad_or_doubled_field_is_a_400_naming_it(fx: Fakes, given: dict[str, Any],
                                                   param: str) -> None:
    with pytest.raises(Problem) as refused:
        videos.job_request(fx.rt, {"prompt": "fox", **given})
    assert refused.value.status == 400
    assert refused.value.extra["field"] == param


# -- the video object -------------------------------------------------------------------------

def test_a_job_as_a_video_through_its_life(fx: Fakes) -> None:
    job = admit(fx, prompt="a fox", aspect_ratio="9:16")
    queued = videos.video(fx.rt, job)
    assert queued["object"] == "video"
    assert (queued["status"], queued["progress"], queued["seconds"]) == ("queued", 0, "4")
    assert queued["size"] == "720x1280"
    assert queued["model"] == "aiprod/cheapest"
    assert queued["completed_at"] is None
    assert queued["created_at"] == int(job.created_at.timestamp())
    done = job.model_copy(update={
        "status": JobStatus.SUCCEEDED,
        "output": Output(uri="file:///x.mp4", duration_seconds=5, width=704, height=1280,
                         bytes=10, sha256="0" * 64)})
    completed = videos.video(fx.rt, done)
    assert (completed["status"], completed["progress"]) == ("completed", 100)
    assert completed["size"] == "704x1280"  # the real frame
    assert completed["completed_at"] == int(done.updated_at.timestamp())
    cancelled = videos.video(fx.rt, job.model_copy(update={"status": JobStatus.CANCELLED}))
    assert cancelled["status"] == "failed"
    assert cancelled["error"]["code"] == "cancelled"
    for shown in (queued, completed, cancelled):  # the documented shape (docs/openapi.json)
        openapi.VideoView.model_validate(shown)


def test_a_failed_video_carries_the_last_attempts_error_code(fx: Fakes) -> None:
    job = admit(fx, prompt="a fox")
    attempt = job.attempts[-1] if job.attempts else None
    if attempt is None:
        from aiprod.domain.job import Attempt, AttemptStatus
        attempt = Attempt(backend=job.plan[0], status=AttemptStatus.FAILED,
                          started_at=job.created_at, estimated_cost_usd=1.0)
    failed_attempt = attempt.model_copy(update={"error": AttemptError(
        error_class=ErrorClass.CONTENT_REFUSED, code="moderation", message="refused")})
    failed = job.model_copy(update={"status": JobStatus.FAILED, "attempts": [failed_attempt],
                                    "status_reason": "every backend refused the prompt"})
    shown = videos.video(fx.rt, failed)
    assert shown["status"] == "failed"
    assert shown["error"] == {"code": "moderation",
                              "message": "every backend refused the prompt"}
    assert shown["model"] == failed_attempt.backend


def test_errors_take_the_openai_shape_with_the_callers_param_names() -> None:
    problem = Problem(422, "rejected-unsupported", "No backend can take this job",
                      "no backend renders 60 s", field="duration_seconds", reason="unsupported")
    response = videos.error_response(problem)
    assert response.status_code == 422
    assert response.content_type == "application/json"
    error = body(response)["error"]
    assert error["message"] == "no backend renders 60 s"
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", "seconds", "rejected-unsupported")
    assert error["aiprod"]["reason"] == "unsupported"
    openapi.OpenAIErrorView.model_validate(body(response))


def test_a_retry_with_the_same_idempotency_key_is_the_same_video(fx: Fakes, key: str) -> None:
    headers = {"Idempotency-Key": "order-1042"}
    first = call(fx, "POST", "/v1/videos", key, headers=headers, data={"prompt": "fox"})
    again = call(fx, "POST", "/v1/videos", key, headers=headers, data={"prompt": "fox"})
    assert body(first)["id"] == body(again)["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(fx.store.docs) == 1
    other = call(fx, "POST", "/v1/videos", key, headers=headers, data={"prompt": "otter"})
    assert (other.status_code, body(other)["error"]["code"]) == (422, "idempotency-key-reused")


# -- the routes, through api.handle ------------------------------------------------------------

def test_create_by_multipart_form_read_list_and_see_it_as_a_job(fx: Fakes, key: str) -> None:
    created = call(fx, "POST", "/v1/videos", key, data={
        "prompt": "a red fox", "seconds": "5", "size": "1280x720",
        "model": "aiprod/cheapest", "metadata[order]": "7"})
    assert created.status_code == 200, created.get_data()
    video = body(created)
    assert video["status"] == "queued"
    as_job = body(call(fx, "GET", f"/v1/jobs/{video['id']}", key))
    assert as_job["request"]["metadata"] == {"order": "7"}
    assert as_job["status"] == "QUEUED"
    read = call(fx, "GET", f"/v1/videos/{video['id']}", key)
    assert body(read)["id"] == video["id"]
    assert int(read.headers["openai-poll-after-ms"]) >= 1000
    listed = body(call(fx, "GET", "/v1/videos", key))
    assert [v["id"] for v in listed["data"]] == [video["id"]]
    assert listed["object"] == "list"
    assert listed["has_more"] is False


def test_an_uploaded_input_reference_becomes_an_image_to_video_job(fx: Fakes, key: str) -> None:
    import io

    created = call(fx, "POST", "/v1/videos", key, data={
        "prompt": "the fox runs", "input_reference": (io.BytesIO(PNG), "fox.png", "image/png")})
    assert created.status_code == 200, created.get_data()
    job = fx.store.get(body(created)["id"])
    assert job is not None
    assert job.input_image is not None  # staged like a data: URI sent to POST /v1/jobs
    assert job.input_image.mime_type == "image/png"
    assert job.request.mode.value == "image_to_video"
    text = call(fx, "POST", "/v1/videos", key, data={
        "prompt": "x", "input_reference": (io.BytesIO(b"not an image"), "a.txt", "text/plain")})
    assert text.status_code == 400
    assert body(text)["error"]["param"] == "input_reference"


def test_jobs_made_either_way_are_listed_newest_first_with_a_cursor(fx: Fakes,
                                                                     key: str) -> None:
    ids = []
    for n in range(5):
        fx.clock.advance(1)
        if n % 2:
            response = call(fx, "POST", "/v1/jobs", key, json={"prompt": f"fox {n}"})
        else:
            response = call(fx, "POST", "/v1/videos", key, json={"prompt": f"fox {n}"})
        assert response.status_code in (200, 201), response.get_data()
        ids.append(body(response)["id"])
    other = create_key(fx.access, "someone else")[1]
    call(fx, "POST", "/v1/videos", other, json={"prompt": "not yours"})
    first = body(call(fx, "GET", "/v1/videos?limit=2", key))
    assert [v["id"] for v in first["data"]] == ids[::-1][:2]
    assert (first["has_more"], first["last_id"]) == (True, ids[3])
    rest = body(call(fx, "GET", f"/v1/videos?limit=10&after={first['last_id']}", key))
    assert [v["id"] for v in rest["data"]] == ids[::-1][2:]
    assert rest["has_more"] is False
    oldest = body(call(fx, "GET", "/v1/videos?order=asc&limit=1", key))
    assert [v["id"] for v in oldest["data"]] == ids[:1]
    bad = call(fx, "GET", "/v1/videos?limit=0", key)
    assert (bad.status_code, body(bad)["error"]["param"]) == (400, "limit")


def test_delete_cancels_a_running_video_and_hides_it_but_keeps_the_job(fx: Fakes,
                                                                      key: str) -> None:
    ids = []
    for n in range(3):
        fx.clock.advance(1)
        ids.append(body(call(fx, "POST", "/v1/videos", key, json={"prompt": f"fox {n}"}))["id"])
    deleted = body(call(fx, "DELETE", f"/v1/videos/{ids[1]}", key))
    assert deleted == {"id": ids[1], "object": "video.deleted", "deleted": True}
    job = fx.store.get(ids[1])
    assert job is not None
    assert job.status is JobStatus.CANCELLED  # nothing more is spent on it
    for path in (f"/v1/videos/{ids[1]}", f"/v1/videos/{ids[1]}/content"):
        gone = call(fx, "GET", path, key)
        assert (gone.status_code, body(gone)["error"]["code"]) == (404, "video-not-found")
    assert call(fx, "DELETE", f"/v1/videos/{ids[1]}", key).status_code == 404
    assert body(call(fx, "GET", f"/v1/jobs/{ids[1]}", key))["status"] == "CANCELLED"
    # The list skips it without coming up short: one deleted in a page of 2.
    page = body(call(fx, "GET", "/v1/videos?limit=1&order=asc", key))
    assert [v["id"] for v in page["data"]] == [ids[0]]
    rest = body(call(fx, "GET", f"/v1/videos?limit=1&order=asc&after={ids[0]}", key))
    assert [v["id"] for v in rest["data"]] == [ids[2]]
    assert rest["has_more"] is False


def test_content_before_completion_and_errors_of_every_kind(fx: Fakes, key: str) -> None:
    video_id = body(call(fx, "POST", "/v1/videos", key, json={"prompt": "fox"}))["id"]
    early = call(fx, "GET", f"/v1/videos/{video_id}/content", key)
    assert (early.status_code, body(early)["error"]["code"]) == (404, "video-not-ready")
    unauthenticated = call(fx, "GET", "/v1/videos", "aiprod_nope")
    assert unauthenticated.status_code == 401
    assert body(unauthenticated)["error"]["type"] == "authentication_error"
    assert "WWW-Authenticate" in unauthenticated.headers
    missing = call(fx, "GET", "/v1/videos/job_" + "0" * 32, key)
    assert (missing.status_code, body(missing)["error"]["param"]) == (404, "video_id")
    not_json = call(fx, "POST", "/v1/videos", key, data="prompt=x", content_type="text/plain")
    assert not_json.status_code == 415
    assert body(not_json)["error"]["code"] == "unsupported-media-type"
    wrong_method = call(fx, "PUT", "/v1/videos", key)
    assert wrong_method.status_code == 405
    assert "error" in body(wrong_method)
    # AIPROD's own routes keep problem+json.
    assert call(fx, "GET", "/v1/jobs/job_" + "0" * 32, key).content_type == \
        "application/problem+json"


def test_content_redirects_to_a_signed_url_or_sends_the_bytes(fx: Fakes, key: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Any) -> None:
    video_id = body(call(fx, "POST", "/v1/videos", key, json={"prompt": "fox"}))["id"]
    mp4 = tmp_path / "out.mp4"
    mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    uri = fx.rt.outputs.put(mp4, f"jobs/{video_id}/output.mp4", "video/mp4")

    def succeed(job: Any) -> None:
        job.status = JobStatus.SUCCEEDED
        job.output = Output(uri=uri, duration_seconds=5, width=1280, height=720,
                            bytes=mp4.stat().st_size, sha256="0" * 64)
    fx.store.mutate(video_id, succeed)

    local = call(fx, "GET", f"/v1/videos/{video_id}/content", key)  # file://: no URL to sign
    assert local.status_code == 200
    assert local.mimetype == "video/mp4"
    assert local.get_data() == mp4.read_bytes()
    signed = "https://storage.googleapis.com/outputs/x.mp4?X-Goog-Signature=ab"
    monkeypatch.setattr(fx.rt.outputs, "download_url", lambda uri, ttl: signed)
    redirected = call(fx, "GET", f"/v1/videos/{video_id}/content", key)
    assert redirected.status_code == 302
    assert redirected.headers["Location"] == signed
    thumbnail = call(fx, "GET", f"/v1/videos/{video_id}/content?variant=thumbnail", key)
    assert (thumbnail.status_code, body(thumbnail)["error"]["param"]) == (400, "variant")


def test_input_reference_as_the_sdks_object_or_a_url_is_the_image_url(fx: Fakes) -> None:
    url = "https://images.example.com/fox.png"
    for given in ({"image_url": url}, url):
        request = videos.job_request(fx.rt, {"prompt": "fox", "input_reference": given})
        assert request.image_url == url
        assert request.mode.value == "image_to_video"
    form = call(fx, "POST", "/v1/videos", create_key(fx.access, "f")[1],
                data={"prompt": "fox", "input_reference[image_url]": "ftp://x/fox.png"})
    assert (form.status_code, body(form)["error"]["param"]) == (400, "input_reference")


def test_progress_while_rendering_is_the_attempts_time_over_the_backends_latency(
        fx: Fakes) -> None:
    from aiprod.domain.job import Attempt, AttemptStatus

    job = admit(fx, prompt="a fox")
    backend = fx.rt.catalog.get(job.plan[0])
    started = fx.clock()
    rendering = job.model_copy(update={"status": JobStatus.RENDERING, "attempts": [Attempt(
        backend=backend.name, status=AttemptStatus.RUNNING, started_at=started,
        estimated_cost_usd=job.estimated_cost_usd)]})
    fx.clock.advance(backend.typical_latency_s / 2)
    halfway = videos.video(fx.rt, rendering)
    assert (halfway["status"], halfway["progress"], halfway["model"]) == (
        "in_progress", 50, backend.name)
    fx.clock.advance(backend.typical_latency_s * 2)
    assert videos.video(fx.rt, rendering)["progress"] == 95  # never 100 before it is done
