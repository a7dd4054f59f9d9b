"""The Runway simulator speaks Runway's API to the official SDK, and the aiprod client
classifies every outcome it can produce. Also covers the control routes every
simulator shares."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import runwayml
from pydantic import SecretStr
from runwayml import RunwayML

from aiprod.adapters.media import probe_video
from aiprod.adapters.providers import make_provider, status_class
from aiprod.adapters.providers.base import (
    ProviderError,
    RenderSpec,
    TaskState,
    VideoProvider,
)
from aiprod.adapters.providers.runway import failure_class
from aiprod.domain.job import ErrorClass
from aiprod.wiring.config import Settings, load_catalog
from aiprod_dev.sim import control
from aiprod_dev.sim.core import SIM_FPS
from aiprod_dev.sim.testing import catalog_backend, provider_settings, seeds_received

PROVIDER = "runway"

KEY = "key_" + "0" * 128


@pytest.fixture
def sdk(sim: str) -> RunwayML:
    return RunwayML(api_key=KEY, base_url=sim, max_retries=0)


def _provider(sim: str, create_timeout_s: float = 30.0) -> VideoProvider:
    """A client on the simulator (30 s: a poll or download may wait for the clip to
    be made, which takes seconds at 720p and up on a busy machine)."""
    return make_provider(catalog_backend("runway"),
                         provider_settings("runway", sim, create_timeout_s=create_timeout_s))


def _spec(**changes: object) -> RenderSpec:
    fields: dict[str, object] = dict(job_id="job-1", model="gen4.5", prompt="a red fox in snow",
                                     image_url=None, duration_seconds=5, aspect_ratio="16:9",
                                     audio=False)
    return RenderSpec(**(fields | changes))  # type: ignore[arg-type]


# -- the official SDK against the simulator ------------------------------------------------------


def test_sdk_text_to_video_succeeds_with_a_playable_output(sdk: RunwayML, sim: str) -> None:
    created = sdk.text_to_video.create(model="gen4.5", prompt_text="a red fox",
                                       ratio="1280:720", duration=5)
    task = sdk.tasks.retrieve(created.id)
    assert task.status == "SUCCEEDED"
    assert task.id == created.id
    assert task.created_at is not None
    assert task.cost.credits == 60  # 12 credits/s
    url = task.output[0]
    assert url.startswith(f"{sim}/_sim/files/")
    assert "_jwt=" in url
    response = httpx.get(url)
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content)
    info = probe_video(response.content)
    assert (info.width, info.height, info.frames) == (1280, 720, 5 * SIM_FPS)
    stats = control.stats(sim)
    assert (stats["requests"], stats["creates"], stats["polls"]) == (1, 1, 1)
    assert stats["by_outcome"]["ok"] == 1


def test_sdk_image_to_video_square(sdk: RunwayML) -> None:
    created = sdk.image_to_video.create(model="gen4.5", prompt_text="the fox turns",
                                        prompt_image="https://example.com/fox.png",
                                        ratio="960:960", duration=2)
    task = sdk.tasks.retrieve(created.id)
    assert task.status == "SUCCEEDED"
    info = probe_video(httpx.get(task.output[0]).content)
    assert (info.width, info.height, info.frames) == (960, 960, 2 * SIM_FPS)  # `ratio` is the size


def test_sdk_sees_pending_then_running_then_cancelled(sdk: RunwayML, sim: str) -> None:
    control.set_fault(sim, "ok", latency_s=4.0)  # queued for the first 0.4 s
    created = sdk.text_to_video.create(model="gen4.5", prompt_text="slow fox",
                                       ratio="720:1280", duration=4)
    assert sdk.tasks.retrieve(created.id).status == "PENDING"
    time.sleep(0.6)
    running = sdk.tasks.retrieve(created.id)
    assert running.status == "RUNNING"
    assert 0.1 < running.progress < 0.6
    sdk.tasks.delete(created.id)
    assert sdk.tasks.retrieve(created.id).status == "CANCELLED"
    assert control.stats(sim)["cancels"] == 1
    assert [t["status"] for t in control.tasks(sim)] == ["CANCELLED"]


def test_deleting_a_finished_task_deletes_it(sdk: RunwayML) -> None:
    created = sdk.text_to_video.create(model="gen4.5", prompt_text="fox",
                                       ratio="1280:720", duration=2)
    sdk.tasks.delete(created.id)
    with pytest.raises(runwayml.NotFoundError):
        sdk.tasks.retrieve(created.id)


def test_missing_version_header_gets_400(sim: str) -> None:
    response = httpx.post(f"{sim}/v1/text_to_video", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "gen4.5", "promptText": "fox", "ratio": "1280:720",
                                "duration": 5})
    assert response.status_code == 400
    assert "X-Runway-Version" in response.json()["error"]
    assert control.stats(sim)["creates"] == 0


def test_missing_bearer_token_gets_401_in_runways_shape(sim: str) -> None:
    response = httpx.post(f"{sim}/v1/text_to_video", headers={"X-Runway-Version": "2024-11-06"},
                          json={"model": "gen4.5", "promptText": "fox", "ratio": "1280:720",
                                "duration": 5})
    assert response.status_code == 401
    assert "error" in response.json()
    stats = control.stats(sim)
    assert (stats["requests"], stats["creates"]) == (1, 0)
    assert stats["by_outcome"]["unauthenticated"] == 1


@pytest.mark.parametrize(("body", "field"), [
    ({"model": "gen4.5", "promptText": "fox", "ratio": "1280:720", "duration": 11}, "duration"),
    ({"model": "gen4.5", "promptText": "fox", "ratio": "960:960", "duration": 5}, "ratio"),
    ({"model": "gen4.5", "ratio": "1280:720", "duration": 5}, "promptText"),
    ({"model": "gen3", "promptText": "fox", "ratio": "1280:720", "duration": 5}, "model"),
])
def test_sdk_bad_input_gets_400_naming_the_field(sdk: RunwayML, body: dict[str, object],
                                                 field: str) -> None:
    with pytest.raises(runwayml.BadRequestError) as caught:
        sdk.post("/v1/text_to_video", body=body, cast_to=object)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"].startswith(field)


def test_image_must_be_https_or_data_uri(sdk: RunwayML) -> None:
    with pytest.raises(runwayml.BadRequestError, match="HTTPS"):
        sdk.image_to_video.create(model="gen4.5", prompt_text="fox", ratio="1280:720",
                                  duration=5, prompt_image="http://example.com/fox.png")


# -- the aiprod client: every outcome classified -------------------------------------------------


def test_client_success_reports_cost_and_downloads_the_video(sim: str, tmp_path: Path) -> None:
    provider = _provider(sim)
    task_id = provider.create(_spec())
    status = provider.poll(task_id)
    assert status.state is TaskState.SUCCEEDED
    assert status.cost_usd == pytest.approx(0.60)
    dest = tmp_path / "out" / "video.mp4"
    provider.download(status, dest)
    assert probe_video(dest).frames == 5 * SIM_FPS
    assert list(dest.parent.iterdir()) == [dest]  # no partial file left behind


def test_client_maps_aspect_ratios_to_runway_sizes(sim: str) -> None:
    provider = _provider(sim)
    provider.create(_spec(aspect_ratio="9:16"))
    provider.create(_spec(aspect_ratio="1:1", image_url="https://example.com/a.png"))
    assert [t["ratio"] for t in control.tasks(sim)] == ["720:1280", "960:960"]


@pytest.mark.parametrize(("mode", "error_class", "code"), [
    ("moderation", ErrorClass.CONTENT_REFUSED, "SAFETY.INPUT.TEXT"),
    ("fail", ErrorClass.BACKEND, "INTERNAL.BAD_OUTPUT.CODE01"),
])
def test_client_classifies_failed_tasks(sim: str, mode: str, error_class: ErrorClass,
                                        code: str) -> None:
    control.set_fault(sim, mode)
    provider = _provider(sim)
    status = provider.poll(provider.create(_spec()))
    assert status.state is TaskState.FAILED
    assert status.error is not None
    assert (status.error.error_class, status.error.code) == (error_class, code)
    assert status.error.message
    assert control.stats(sim)["creates"] == 1


@pytest.mark.parametrize(("mode", "code", "retry_after"), [
    ("throttle", "http_429", 30.0), ("error", "http_503", None)])
def test_client_create_refusals_are_transient_and_create_nothing(
        sim: str, mode: str, code: str, retry_after: float | None) -> None:
    control.set_fault(sim, mode)
    with pytest.raises(ProviderError) as caught:
        _provider(sim).create(_spec())
    assert caught.value.error_class is ErrorClass.TRANSIENT
    assert caught.value.code == code
    assert caught.value.retry_after_s == retry_after
    assert KEY not in str(caught.value)
    assert KEY not in repr(caught.value.__cause__)
    stats = control.stats(sim)
    assert (stats["requests"], stats["creates"], stats["by_outcome"][mode]) == (1, 0, 1)
    assert control.tasks(sim) == []


def test_client_hung_create_is_unknown_and_not_resent(sim: str) -> None:
    control.set_fault(sim, "hang")
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        _provider(sim, create_timeout_s=0.5).create(_spec(prompt="hung fox"))
    assert time.monotonic() - started < 3
    assert caught.value.error_class is ErrorClass.UNKNOWN
    assert caught.value.code == "create_timeout_lost"
    stats = control.stats(sim)
    assert (stats["requests"], stats["creates"], stats["by_outcome"]["hang"]) == (1, 1, 1)
    assert [t["prompt"] for t in control.tasks(sim)] == ["hung fox"]  # it exists, once


@pytest.mark.parametrize("change", [
    {"duration_seconds": 11}, {"aspect_ratio": "1:1"}, {"prompt": "x" * 1001},
    {"image_url": "ftp://example.com/a.png"}, {"aspect_ratio": "4:3"}])
def test_client_bad_input_is_invalid_input(sim: str, change: dict[str, object]) -> None:
    with pytest.raises(ProviderError) as caught:
        _provider(sim).create(_spec(**change))
    assert caught.value.error_class is ErrorClass.INVALID_INPUT
    assert control.stats(sim)["creates"] == 0


def test_client_slow_task_runs_until_cancelled(sim: str) -> None:
    control.set_fault(sim, "slow", slow_s=60)
    provider = _provider(sim)
    task_id = provider.create(_spec())
    assert provider.poll(task_id).state is TaskState.RUNNING
    provider.cancel(task_id)
    assert provider.poll(task_id).state is TaskState.CANCELLED


def test_a_cancelled_task_reports_what_it_cost_refunded_only_before_it_ran(sim: str) -> None:
    """Runway's rule (runwayml SDK `tasks.delete`, from Runway's API reference): "If that
    check observes RUNNING, cancellation does not refund credits"; every terminal task
    reports its final `cost` (0 when refunded). The client passes it on in USD."""
    control.set_fault(sim, "ok", latency_s=4.0)  # queued for the first 0.4 s
    provider = _provider(sim)
    queued = provider.create(_spec(duration_seconds=5))
    provider.cancel(queued)
    refunded = provider.poll(queued)
    assert (refunded.state, refunded.cost_usd) == (TaskState.CANCELLED, 0.0)

    running = provider.create(_spec(duration_seconds=5))
    time.sleep(0.6)
    assert provider.poll(running).state is TaskState.RUNNING
    provider.cancel(running)
    charged = provider.poll(running)
    assert charged.state is TaskState.CANCELLED
    assert charged.cost_usd == pytest.approx(5 * 12 * 0.01)  # gen4.5: 12 credits/s, no refund


def test_client_unknown_task_is_a_backend_error(sim: str) -> None:
    with pytest.raises(ProviderError) as caught:
        _provider(sim).poll("00000000-0000-0000-0000-000000000000")
    assert (caught.value.error_class, caught.value.code) == (ErrorClass.BACKEND, "http_404")


def test_client_without_a_key_is_a_backend_error(sim: str) -> None:
    missing = Settings(runway_base_url=sim, runway_api_key=SecretStr(""))
    with pytest.raises(ProviderError) as caught:
        make_provider(catalog_backend("runway"), missing).create(_spec())
    assert (caught.value.error_class, caught.value.code) == (ErrorClass.BACKEND, "not_configured")
    assert control.stats(sim)["requests"] == 0


@pytest.mark.parametrize(("status", "error_class"), [
    (400, ErrorClass.INVALID_INPUT), (422, ErrorClass.INVALID_INPUT), (401, ErrorClass.BACKEND),
    (403, ErrorClass.BACKEND), (404, ErrorClass.BACKEND), (429, ErrorClass.TRANSIENT),
    (500, ErrorClass.TRANSIENT), (503, ErrorClass.TRANSIENT)])
def test_http_statuses_are_classified(status: int, error_class: ErrorClass) -> None:
    assert status_class(status) is error_class


def test_client_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ProviderError) as caught:
        _provider(f"http://127.0.0.1:{port}").create(_spec())
    assert (caught.value.error_class, caught.value.code) == (ErrorClass.TRANSIENT,
                                                             "connection_error")


def test_failure_codes_are_classified_per_runway_docs() -> None:
    assert failure_class("SAFETY.OUTPUT.VIDEO") is ErrorClass.CONTENT_REFUSED
    assert failure_class("INPUT_PREPROCESSING.SAFETY.TEXT") is ErrorClass.CONTENT_REFUSED
    assert failure_class("ASSET.INVALID") is ErrorClass.INVALID_INPUT
    assert failure_class("INPUT_PREPROCESSING.INTERNAL") is ErrorClass.BACKEND
    assert failure_class(None) is ErrorClass.BACKEND


# -- the control routes every simulator shares -----------------------------------------------------


@pytest.mark.parametrize("body", [
    {"mode": "explode"}, {"mode": "error", "rate": 1.5}, {"rate": 0.5},
    {"mode": "ok", "latency_s": -1}, {"mode": "ok", "surprise": True}])
def test_fault_route_rejects_bad_bodies(sim: str, body: dict[str, object]) -> None:
    response = httpx.post(f"{sim}/_sim/fault", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid fault"
    assert control.stats(sim)["fault"]["mode"] == "ok"


def test_fault_rate_applies_to_that_share_of_creates(sim: str, sdk: RunwayML) -> None:
    state = control.set_fault(sim, "throttle", rate=0.5)
    assert (state["mode"], state["rate"]) == ("throttle", 0.5)
    throttled = 0
    for _ in range(40):
        try:
            sdk.text_to_video.create(model="gen4.5", prompt_text="fox", ratio="1280:720",
                                     duration=2)
        except runwayml.RateLimitError:
            throttled += 1
    stats = control.stats(sim)
    assert 8 <= throttled <= 32
    assert stats["requests"] == 40
    assert stats["creates"] == 40 - throttled == stats["by_outcome"]["ok"]


def test_reset_forgets_tasks_stats_and_fault(sim: str, sdk: RunwayML) -> None:
    control.set_fault(sim, "fail", latency_s=9)
    sdk.text_to_video.create(model="gen4.5", prompt_text="fox", ratio="1280:720", duration=2)
    control.reset(sim)
    stats = control.stats(sim)
    assert (stats["requests"], stats["creates"], stats["fault"]["mode"]) == (0, 0, "ok")
    assert stats["fault"]["latency_s"] == 0.0
    assert control.tasks(sim) == []


def test_files_of_unfinished_tasks_are_not_served(sim: str, sdk: RunwayML) -> None:
    control.set_fault(sim, "slow")
    created = sdk.text_to_video.create(model="gen4.5", prompt_text="fox", ratio="1280:720",
                                       duration=2)
    assert httpx.get(f"{sim}/_sim/files/{created.id}.mp4").status_code == 404


def test_a_seed_reaches_the_provider_and_none_is_sent_without_one(sim: str) -> None:
    """Issue 14: the job's seed is passed where the catalog says the backend takes one."""
    assert catalog_backend("runway").accepts_seed
    provider = _provider(sim)
    made = [provider.create(_spec(seed=4_294_967_295)), provider.create(_spec())]
    assert seeds_received(sim, made) == [4_294_967_295, None]


def test_client_animates_an_image_with_gen4_turbo(sim: str, tmp_path: Path) -> None:
    provider = make_provider(load_catalog().get("runway-gen4-turbo"),
                             provider_settings("runway", sim))
    status = provider.poll(provider.create(_spec(
        model="gen4_turbo", prompt=None, image_url="https://example.com/fox.png",
        aspect_ratio="9:16", duration_seconds=2)))
    assert status.state is TaskState.SUCCEEDED
    provider.download(status, tmp_path / "v.mp4")
    info = probe_video(tmp_path / "v.mp4")
    assert (info.width, info.height, info.frames) == (720, 1280, 2 * SIM_FPS)


@pytest.mark.parametrize(("changes", "message"), [
    ({"model": "gen4_turbo"}, "model: Invalid discriminator value"),  # no text-only renders
    ({"resolution": "1080p"}, "ratio: Invalid enum value"),  # gen4.5 renders 720p only
])
def test_what_runway_models_do_not_render_is_invalid_input(sim: str, changes: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(ProviderError) as caught:
        _provider(sim).create(_spec(**changes))
    assert caught.value.error_class is ErrorClass.INVALID_INPUT
    assert message in caught.value.message
