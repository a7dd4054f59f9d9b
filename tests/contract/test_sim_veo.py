"""The Veo simulator speaks Vertex AI's API to google-genai (Vertex mode), and the
aiprod client classifies every outcome it can produce."""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path

import av
import httpx
import pytest
from google import genai
from google.genai import errors, types
from google.oauth2.credentials import Credentials

from aiprod.adapters.media import probe_video
from aiprod.adapters.providers import make_provider
from aiprod.adapters.providers.base import ProviderError, RenderSpec, TaskState, VideoProvider
from aiprod.adapters.providers.veo import api_error, operation_error
from aiprod.domain.job import ErrorClass
from aiprod_dev.sim import control
from aiprod_dev.sim.core import SIM_FPS
from aiprod_dev.sim.testing import catalog_backend, provider_settings, seeds_received

PROVIDER = "veo"

MODEL = "veo-3.1-fast-generate-001"
TOKEN = "ya29.local-test-token"


@pytest.fixture
def sdk(sim: str) -> genai.Client:
    return genai.Client(vertexai=True, project="p", location="us-central1",
                        credentials=Credentials(token=TOKEN),  # type: ignore[no-untyped-call]
                        http_options=types.HttpOptions(base_url=sim))


def _provider(sim: str, create_timeout_s: float = 30.0) -> VideoProvider:
    """A client on the simulator (30 s: a poll or download may wait for the clip to
    be made, which takes seconds at 720p and up on a busy machine)."""
    return make_provider(catalog_backend("veo"),
                         provider_settings("veo", sim, create_timeout_s=create_timeout_s))


def _spec(**changes: object) -> RenderSpec:
    fields: dict[str, object] = dict(job_id="job-1", model=MODEL, prompt="waves at dusk",
                                     image_url=None, duration_seconds=4, aspect_ratio="16:9",
                                     audio=False)
    return RenderSpec(**(fields | changes))  # type: ignore[arg-type]


def _png_data_uri() -> str:
    """A real 32x32 PNG as a data URI (made with PyAV, so no imaging library is needed)."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = 32, 32, "rgb24"
    frame = av.VideoFrame(32, 32, "rgb24")
    frame.planes[0].update(bytes(range(256)) * (frame.planes[0].buffer_size // 256))
    data = b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None))
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _operation(sdk: genai.Client, name: str) -> types.GenerateVideosOperation:
    return sdk.operations.get(types.GenerateVideosOperation.model_validate({"name": name}))


# -- the official SDK against the simulator ------------------------------------------------------


def test_sdk_generate_then_poll_returns_inline_video(sdk: genai.Client, sim: str) -> None:
    operation = sdk.models.generate_videos(
        model=MODEL, source=types.GenerateVideosSource(prompt="waves at dusk"),
        config=types.GenerateVideosConfig(number_of_videos=1, duration_seconds=6,
                                          aspect_ratio="9:16"))
    assert operation.name is not None
    assert operation.name.startswith(
        f"projects/p/locations/us-central1/publishers/google/models/{MODEL}/operations/")
    assert not operation.done
    done = _operation(sdk, operation.name)
    assert done.done is True
    assert done.error is None
    assert done.response is not None
    assert done.response.generated_videos
    video = done.response.generated_videos[0].video
    assert video is not None
    assert video.mime_type == "video/mp4"
    assert video.video_bytes is not None
    info = probe_video(video.video_bytes)
    assert (info.width, info.height, info.frames) == (720, 1280, 6 * SIM_FPS)  # 720p, the default
    stats = control.stats(sim)
    assert (stats["requests"], stats["creates"], stats["polls"]) == (1, 1, 1)


def test_sdk_image_to_video_sends_the_image(sdk: genai.Client, sim: str) -> None:
    data = base64.b64decode(_png_data_uri().partition(",")[2])
    operation = sdk.models.generate_videos(
        model=MODEL, source=types.GenerateVideosSource(
            image=types.Image(image_bytes=data, mime_type="image/png")),
        config=types.GenerateVideosConfig(duration_seconds=4))
    assert operation.name is not None
    assert _operation(sdk, operation.name).done is True
    (task,) = control.tasks(sim)
    assert task["prompt"] is None
    assert task["duration"] == 4


def test_sdk_sees_no_done_while_running(sdk: genai.Client, sim: str) -> None:
    control.set_fault(sim, "ok", latency_s=5)
    operation = sdk.models.generate_videos(
        model=MODEL, source=types.GenerateVideosSource(prompt="slow waves"))
    assert operation.name is not None
    running = _operation(sdk, operation.name)
    assert running.done is None
    assert running.response is None
    assert running.error is None


def test_rest_v1_paths_are_served_too(sim: str) -> None:
    base = f"{sim}/v1/projects/p/locations/us-central1/publishers/google/models/{MODEL}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    created = httpx.post(f"{base}:predictLongRunning", headers=headers, json={
        "instances": [{"prompt": "waves"}],
        "parameters": {"durationSeconds": 8, "aspectRatio": "16:9", "sampleCount": 2}})
    assert created.status_code == 200
    name = created.json()["name"]
    fetched = httpx.post(f"{base}:fetchPredictOperation", headers=headers, timeout=60,
                         json={"operationName": name}).json()  # renders the clips first
    assert fetched["done"] is True
    assert fetched["response"]["@type"] == (
        "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse")
    assert fetched["response"]["raiMediaFilteredCount"] == 0
    assert len(fetched["response"]["videos"]) == 2
    assert httpx.get(f"{sim}/v1/{name}", headers=headers).json() == fetched


def test_missing_token_gets_401_in_googles_envelope(sim: str) -> None:
    response = httpx.post(f"{sim}/v1beta1/projects/p/locations/us-central1/publishers/google/"
                          f"models/{MODEL}:predictLongRunning",
                          json={"instances": [{"prompt": "waves"}]})
    assert response.status_code == 401
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"
    assert control.stats(sim)["by_outcome"]["unauthenticated"] == 1


@pytest.mark.parametrize("config", [
    types.GenerateVideosConfig(duration_seconds=5),
    types.GenerateVideosConfig(aspect_ratio="1:1"),
    types.GenerateVideosConfig(number_of_videos=5)])
def test_sdk_bad_parameters_get_400_invalid_argument(sdk: genai.Client,
                                                     config: types.GenerateVideosConfig) -> None:
    with pytest.raises(errors.ClientError) as caught:
        sdk.models.generate_videos(model=MODEL, source=types.GenerateVideosSource(prompt="x"),
                                   config=config)
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")


# -- the aiprod client: every outcome classified -------------------------------------------------


def test_client_success_downloads_the_inline_video(sim: str, tmp_path: Path) -> None:
    provider = _provider(sim)
    task_id = provider.create(_spec(duration_seconds=8))
    status = provider.poll(task_id)
    assert status.state is TaskState.SUCCEEDED
    assert status.output_file is not None  # written to a file by the poll, not held
    assert status.output_file.stat().st_size > 0
    assert status.output_url is None
    provider.download(status, tmp_path / "v.mp4")
    assert not status.output_file.exists()  # moved, not copied
    info = probe_video(tmp_path / "v.mp4")
    assert (info.width, info.height, info.frames) == (1280, 720, 8 * SIM_FPS)


def test_client_image_to_video_from_a_data_uri(sim: str) -> None:
    provider = _provider(sim)
    status = provider.poll(provider.create(_spec(prompt=None, image_url=_png_data_uri())))
    assert status.state is TaskState.SUCCEEDED


@pytest.mark.parametrize(("mode", "error_class", "code", "text"), [
    ("moderation", ErrorClass.CONTENT_REFUSED, "RAI_MEDIA_FILTERED", "Support codes: 42237218"),
    ("fail", ErrorClass.BACKEND, "INTERNAL", "Internal error"),
])
def test_client_classifies_failed_operations(sim: str, mode: str, error_class: ErrorClass,
                                             code: str, text: str) -> None:
    control.set_fault(sim, mode)
    provider = _provider(sim)
    status = provider.poll(provider.create(_spec()))
    assert status.state is TaskState.FAILED
    assert status.error is not None
    assert (status.error.error_class, status.error.code) == (error_class, code)
    assert text in status.error.message
    assert control.stats(sim)["creates"] == 1


@pytest.mark.parametrize(("mode", "code"), [
    ("throttle", "RESOURCE_EXHAUSTED"), ("error", "UNAVAILABLE")])
def test_client_create_refusals_are_transient_and_create_nothing(sim: str, mode: str,
                                                                 code: str) -> None:
    control.set_fault(sim, mode)
    with pytest.raises(ProviderError) as caught:
        _provider(sim).create(_spec())
    assert (caught.value.error_class, caught.value.code) == (ErrorClass.TRANSIENT, code)
    stats = control.stats(sim)
    assert (stats["requests"], stats["creates"], stats["by_outcome"][mode]) == (1, 0, 1)


def test_client_hung_create_is_unknown_and_not_resent(sim: str) -> None:
    control.set_fault(sim, "hang")
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        _provider(sim, create_timeout_s=0.5).create(_spec(prompt="hung waves"))
    assert time.monotonic() - started < 3
    assert caught.value.error_class is ErrorClass.UNKNOWN
    assert caught.value.code == "create_timeout_lost"
    stats = control.stats(sim)
    assert (stats["requests"], stats["creates"]) == (1, 1)
    assert [t["prompt"] for t in control.tasks(sim)] == ["hung waves"]


@pytest.mark.parametrize(("change", "error_class"), [
    ({"duration_seconds": 5}, ErrorClass.INVALID_INPUT),
    ({"aspect_ratio": "1:1"}, ErrorClass.INVALID_INPUT),
    ({"image_url": "ftp://example.com/a.png"}, ErrorClass.INVALID_INPUT),
    ({"image_url": "data:image/gif;base64,R0lGODlh"}, ErrorClass.INVALID_INPUT),
    ({"model": "imagen-4"}, ErrorClass.BACKEND),  # our catalog is wrong
])
def test_client_bad_requests_are_classified(sim: str, change: dict[str, object],
                                            error_class: ErrorClass) -> None:
    with pytest.raises(ProviderError) as caught:
        _provider(sim).create(_spec(**change))
    assert caught.value.error_class is error_class
    assert control.stats(sim)["creates"] == 0


def test_client_cancel_stops_a_slow_operation(sim: str) -> None:
    control.set_fault(sim, "slow")
    provider = _provider(sim)
    task_id = provider.create(_spec())
    assert provider.poll(task_id).state is TaskState.RUNNING
    provider.cancel(task_id)
    assert provider.poll(task_id).state is TaskState.CANCELLED
    assert control.stats(sim)["cancels"] == 1


def test_client_unknown_operation_is_a_backend_error(sim: str) -> None:
    name = f"projects/p/locations/us-central1/publishers/google/models/{MODEL}/operations/nope"
    with pytest.raises(ProviderError) as caught:
        _provider(sim).poll(name)
    assert (caught.value.error_class, caught.value.code) == (ErrorClass.BACKEND, "NOT_FOUND")


def test_synchronous_safety_refusal_is_content_refused() -> None:
    refusal = errors.ClientError(400, {"error": {
        "code": 400, "status": "INVALID_ARGUMENT",
        "message": "Veo could not generate videos because the input image violates Vertex "
                   "AI's usage guidelines. Support codes: 15236754"}})
    assert api_error(refusal, create=True).error_class is ErrorClass.CONTENT_REFUSED
    plain = errors.ClientError(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                               "message": "durationSeconds is invalid"}})
    assert api_error(plain, create=True).error_class is ErrorClass.INVALID_INPUT


def test_operation_errors_are_classified() -> None:
    assert operation_error({"code": 1, "message": "CANCELLED"}).state is TaskState.CANCELLED
    safety = operation_error({"code": 3, "message": "blocked. Support codes: 58061214"})
    assert safety.error is not None
    assert safety.error.error_class is ErrorClass.CONTENT_REFUSED
    invalid = operation_error({"code": 3, "message": "bad image"})
    assert invalid.error is not None
    assert invalid.error.error_class is ErrorClass.INVALID_INPUT
    internal = operation_error({"code": 13, "message": "oops"})
    assert internal.error is not None
    assert (internal.error.error_class, internal.error.code) == (ErrorClass.BACKEND, "INTERNAL")


def test_client_connection_refused_is_transient() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ProviderError) as caught:
        _provider(f"http://127.0.0.1:{port}").create(_spec())
    assert (caught.value.error_class, caught.value.code) == (ErrorClass.TRANSIENT,
                                                             "connection_error")


def test_a_seed_reaches_the_provider_and_none_is_sent_without_one(sim: str) -> None:
    """Issue 14: the job's seed is passed where the catalog says the backend takes one."""
    assert catalog_backend("veo").accepts_seed
    provider = _provider(sim)
    made = [provider.create(_spec(seed=4_294_967_295)), provider.create(_spec())]
    assert seeds_received(sim, made) == [4_294_967_295, None]


@pytest.mark.parametrize(("model", "ratio", "size"), [
    ("veo-3.1-generate-001", "16:9", (1920, 1080)),       # the premium model (veo-31)
    ("veo-3.1-fast-generate-001", "9:16", (1080, 1920)),
])
def test_client_asks_for_1080p_and_gets_1080p(sim: str, tmp_path: Path, model: str,
                                               ratio: str, size: tuple[int, int]) -> None:
    provider = _provider(sim)
    task_id = provider.create(_spec(model=model, aspect_ratio=ratio, resolution="1080p"))
    (task,) = control.tasks(sim)
    assert task["model"] == model
    status = provider.poll(task_id)
    assert status.state is TaskState.SUCCEEDED
    provider.download(status, tmp_path / "v.mp4")
    info = probe_video(tmp_path / "v.mp4")
    assert (info.width, info.height, info.frames) == (*size, 4 * SIM_FPS)
