"""The Replicate simulator speaks Replicate's API to the official 1.x SDK, and the
aiprod client classifies every outcome it can produce."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from replicate.client import Client
from replicate.exceptions import ReplicateError

from aiprod.adapters.media import probe_video
from aiprod.adapters.providers import make_provider
from aiprod.adapters.providers.base import ProviderError, RenderSpec, TaskState, VideoProvider
from aiprod.adapters.providers.replicate import failure_class
from aiprod.domain.job import ErrorClass
from aiprod_dev.sim import control
from aiprod_dev.sim.core import SIM_FPS
from aiprod_dev.sim.testing import catalog_backend, provider_settings, seeds_received

PROVIDER = "replicate"

MODEL = "bytedance/seedance-2.0-fast"
TOKEN = "r8_" + "1" * 37
INPUT: dict[str, Any] = {"prompt": "a heron takes off", "duration": 5, "aspect_ratio": "9:16",
                         "generate_audio": False}


@pytest.fixture
def sdk(sim: str) -> Client:
    return Client(api_token=TOKEN, base_url=sim)


def _provider(sim: str, create_timeout_s: float = 30.0) -> VideoProvider:
    """A client on the simulator (30 s: a poll or download may wait for the clip to
    be made, which takes seconds at 720p and up on a busy machine)."""
    return make_provider(catalog_backend("replicate"),
                         provider_settings("replicate", sim, create_timeout_s=create_timeout_s))


def _spec(**changes: object) -> RenderSpec:
    fields: dict[str, object] = dict(job_id="job-1", model=MODEL, prompt="a heron takes off",
                                     image_url=None, duration_seconds=5, aspect_ratio="16:9",
                                     audio=True)
    return RenderSpec(**(fields | changes))  # type: ignore[arg-type]


# -- the official SDK against the simulator ------------------------------------------------------


def test_sdk_create_then_get_succeeds_with_a_playable_output(sdk: Client, sim: str) -> None:
    created = sdk.models.predictions.create(model=MODEL, input=INPUT)
    assert created.status == "starting"
    assert (created.model, created.version) == (MODEL, "hidden")
    assert created.input == INPUT
    assert created.output is None
    assert created.error is None
    assert created.urls["get"] == f"{sim}/v1/predictions/{created.id}"
    done = sdk.predictions.get(created.id)
    assert done.status == "succeeded"
    assert isinstance(done.output, str)
    assert done.output.startswith(f"{sim}/_sim/files/")
    assert done.metrics is not None
    assert "predict_time" in done.metrics
    assert done.completed_at is not None
    info = probe_video(httpx.get(done.output).content)
    assert (info.width, info.height, info.frames) == (720, 1280, 5 * SIM_FPS)  # 720p, the default
    stats = control.stats(sim)
    assert (stats["requests"], stats["creates"], stats["polls"]) == (1, 1, 1)


def test_create_answers_201_with_a_location(sim: str) -> None:
    response = httpx.post(f"{sim}/v1/models/{MODEL}/predictions",
                          headers={"Authorization": f"Bearer {TOKEN}"}, json={"input": INPUT})
    assert response.status_code == 201
    assert response.headers["location"] == f"{sim}/v1/predictions/{response.json()['id']}"


def test_sdk_versioned_create_on_the_generic_endpoint(sdk: Client) -> None:
    created = sdk.predictions.create(version=f"{MODEL}:{'a' * 64}", input=INPUT)
    assert created.model == MODEL
    assert sdk.predictions.get(created.id).status == "succeeded"


def test_sdk_prefer_wait_holds_until_done(sdk: Client, sim: str) -> None:
    control.set_fault(sim, "ok", latency_s=0.4)
    started = time.monotonic()
    created = sdk.models.predictions.create(model=MODEL, input=INPUT, wait=5)
    assert created.status == "succeeded"
    assert 0.3 < time.monotonic() - started < 3


def test_sdk_prefer_wait_gives_up_after_n_seconds(sdk: Client, sim: str) -> None:
    control.set_fault(sim, "slow", slow_s=30)
    started = time.monotonic()
    created = sdk.models.predictions.create(model=MODEL, input=INPUT, wait=1)
    assert created.status in ("starting", "processing")
    assert 0.9 < time.monotonic() - started < 3


def test_sdk_sees_progress_then_cancels(sdk: Client, sim: str) -> None:
    control.set_fault(sim, "ok", latency_s=3.0)
    created = sdk.models.predictions.create(model=MODEL, input=INPUT)
    time.sleep(0.5)
    running = sdk.predictions.get(created.id)
    assert running.status == "processing"
    assert running.progress is not None
    assert 0.1 < running.progress.percentage < 0.5
    cancelled = sdk.predictions.cancel(created.id)
    assert cancelled.status == "canceled"
    assert sdk.predictions.get(created.id).status == "canceled"
    assert control.stats(sim)["cancels"] == 1


def test_sdk_invalid_input_gets_422_problem_details(sdk: Client, sim: str) -> None:
    with pytest.raises(ReplicateError) as caught:
        sdk.models.predictions.create(model=MODEL, input=INPUT | {"duration": 99})
    assert caught.value.status == 422
    assert caught.value.title == "Input validation failed"
    assert caught.value.detail is not None
    assert "input.duration" in caught.value.detail
    stats = control.stats(sim)
    assert (stats["requests"], stats["creates"], stats["by_outcome"]["invalid"]) == (1, 0, 1)


def test_sdk_without_token_gets_401(sim: str) -> None:
    response = httpx.post(f"{sim}/v1/models/{MODEL}/predictions", json={"input": INPUT})
    assert response.status_code == 401
    assert response.json()["title"] == "Unauthenticated"


def test_sdk_throttled_create_carries_retry_after(sdk: Client, sim: str) -> None:
    control.set_fault(sim, "throttle", retry_after_s=12)
    response = httpx.post(f"{sim}/v1/models/{MODEL}/predictions",
                          headers={"Authorization": f"Bearer {TOKEN}"}, json={"input": INPUT})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "12"
    assert response.json() == {
        "detail": "Request was throttled. Your rate limit resets in ~12s."}


# -- the aiprod client: every outcome classified -------------------------------------------------


def test_client_success_downloads_the_video(sim: str, tmp_path: Path) -> None:
    provider = _provider(sim)
    status = provider.poll(provider.create(_spec(aspect_ratio="1:1", duration_seconds=3)))
    assert status.state is TaskState.SUCCEEDED
    provider.download(status, tmp_path / "v.mp4")
    info = probe_video(tmp_path / "v.mp4")
    assert (info.width, info.height, info.frames) == (720, 720, 3 * SIM_FPS)
    (task,) = control.tasks(sim)
    assert (task["model"], task["ratio"], task["duration"]) == (MODEL, "1:1", 3)


def test_client_sends_the_models_inputs(sim: str) -> None:
    provider = _provider(sim)
    provider.create(_spec(image_url="https://example.com/heron.png"))
    response = httpx.get(f"{sim}/_sim/tasks")
    assert response.json()[0]["prompt"] == "a heron takes off"
    prediction = Client(api_token=TOKEN, base_url=sim).predictions.get(response.json()[0]["id"])
    assert prediction.input == {"prompt": "a heron takes off", "duration": 5,
                                "aspect_ratio": "16:9", "resolution": "720p",
                                "generate_audio": True, "image": "https://example.com/heron.png"}


@pytest.mark.parametrize(("mode", "error_class", "code"), [
    ("moderation", ErrorClass.CONTENT_REFUSED, "E005"),
    ("fail", ErrorClass.BACKEND, "failed"),
])
def test_client_classifies_failed_predictions(sim: str, mode: str, error_class: ErrorClass,
                                              code: str) -> None:
    control.set_fault(sim, mode)
    provider = _provider(sim)
    status = provider.poll(provider.create(_spec()))
    assert status.state is TaskState.FAILED
    assert status.error is not None
    assert (status.error.error_class, status.error.code) == (error_class, code)
    assert control.stats(sim)["creates"] == 1


@pytest.mark.parametrize(("mode", "code", "retry_after"), [
    ("throttle", "http_429", 30.0), ("error", "http_500", None)])
def test_client_create_refusals_are_transient_and_create_nothing(
        sim: str, mode: str, code: str, retry_after: float | None) -> None:
    control.set_fault(sim, mode)
    with pytest.raises(ProviderError) as caught:
        _provider(sim).create(_spec())
    assert (caught.value.error_class, caught.value.code) == (ErrorClass.TRANSIENT, code)
    assert caught.value.retry_after_s == retry_after
    assert TOKEN not in str(caught.value)
    stats = control.stats(sim)
    assert (stats["requests"], stats["creates"], stats["by_outcome"][mode]) == (1, 0, 1)


def test_client_hung_create_is_unknown_and_not_resent(sim: str) -> None:
    control.set_fault(sim, "hang")
    with pytest.raises(ProviderError) as caught:
        _provider(sim, create_timeout_s=0.5).create(_spec(prompt="hung heron"))
    assert caught.value.error_class is ErrorClass.UNKNOWN
    assert caught.value.code == "create_timeout_lost"
    stats = control.stats(sim)
    assert (stats["requests"], stats["creates"]) == (1, 1)
    assert [t["prompt"] for t in control.tasks(sim)] == ["hung heron"]


@pytest.mark.parametrize(("change", "error_class"), [
    ({"duration_seconds": 20}, ErrorClass.INVALID_INPUT),
    ({"aspect_ratio": "2:1"}, ErrorClass.INVALID_INPUT),
    ({"image_url": "ftp://example.com/heron.png"}, ErrorClass.INVALID_INPUT),
    ({"model": "nobody/no-such-model"}, ErrorClass.BACKEND),  # our catalog is wrong
])
def test_client_bad_requests_are_classified(sim: str, change: dict[str, object],
                                            error_class: ErrorClass) -> None:
    with pytest.raises(ProviderError) as caught:
        _provider(sim).create(_spec(**change))
    assert caught.value.error_class is error_class
    assert control.stats(sim)["creates"] == 0


def test_client_cancel_stops_a_slow_prediction(sim: str) -> None:
    control.set_fault(sim, "slow")
    provider = _provider(sim)
    task_id = provider.create(_spec())
    assert provider.poll(task_id).state is TaskState.RUNNING
    provider.cancel(task_id)
    assert provider.poll(task_id).state is TaskState.CANCELLED


def test_client_cancel_of_an_unknown_prediction_does_not_raise(sim: str) -> None:
    _provider(sim).cancel("doesnotexist")  # best effort: logged, not raised
    assert control.stats(sim)["cancels"] == 0


def test_error_texts_are_classified() -> None:
    assert failure_class("Prediction failed: output flagged as NSFW") is \
        ErrorClass.CONTENT_REFUSED
    assert failure_class("The input or output was flagged as sensitive") is \
        ErrorClass.CONTENT_REFUSED
    assert failure_class("Input validation error: could not fetch image") is \
        ErrorClass.INVALID_INPUT
    assert failure_class("CUDA out of memory") is ErrorClass.BACKEND


def test_client_connection_refused_is_transient() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ProviderError) as caught:
        _provider(f"http://127.0.0.1:{port}").create(_spec())
    assert (caught.value.error_class, caught.value.code) == (ErrorClass.TRANSIENT,
                                                             "connection_error")


def test_sdk_lists_predictions_newest_first(sim: str, sdk: Client) -> None:
    first = sdk.models.predictions.create(model=MODEL, input=INPUT)
    second = sdk.models.predictions.create(model=MODEL, input=INPUT | {"prompt": "later"})
    page = sdk.predictions.list()
    assert [p.id for p in page.results] == [second.id, first.id]


def test_client_finds_the_task_a_cut_off_create_made(sim: str) -> None:
    """A create whose answer was lost: the task is found by its inputs, not made again."""
    import datetime as dt

    since = dt.datetime.now(dt.UTC)
    provider = _provider(sim)
    made = provider.create(_spec(prompt="a heron, answer lost"))
    provider.create(_spec(prompt="another heron"))

    assert provider.can_find_tasks
    assert provider.find_task(_spec(prompt="a heron, answer lost"), since) == made
    assert provider.find_task(_spec(prompt="a heron, never sent"), since) is None
    assert provider.find_task(_spec(prompt="a heron, answer lost", duration_seconds=8),
                              since) is None
    assert control.stats(sim)["creates"] == 2


def test_a_seed_reaches_the_provider_and_none_is_sent_without_one(sim: str) -> None:
    """Issue 14: the job's seed is passed where the catalog says the backend takes one."""
    assert catalog_backend("replicate").accepts_seed
    provider = _provider(sim)
    made = [provider.create(_spec(seed=4_294_967_295)), provider.create(_spec())]
    assert seeds_received(sim, made) == [4_294_967_295, None]
