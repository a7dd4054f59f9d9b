"""Every Replicate model in the catalog, through the aiprod client, against the
simulator's copy of that model's own input schema: what the catalog says a backend
renders, its `inputs` mapping turns into inputs the model accepts, and the video
comes back at the resolution asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from replicate.client import Client
from replicate.exceptions import ReplicateError

from aiprod.adapters.media import probe_video
from aiprod.adapters.providers import make_provider
from aiprod.adapters.providers.base import RenderSpec, TaskState
from aiprod.domain import quality
from aiprod.domain.catalog import Backend, Resolution
from aiprod.wiring.config import load_catalog
from aiprod_dev.sim import control
from aiprod_dev.sim.core import SIM_FPS
from aiprod_dev.sim.testing import provider_settings

PROVIDER = "replicate"
TOKEN = "r8_" + "2" * 37
IMAGE = "https://example.com/heron.png"
REPLICATE = [b for b in load_catalog().backends if b.provider == "replicate"]


def _spec(backend: Backend, **changes: Any) -> RenderSpec:
    fields: dict[str, Any] = dict(job_id="job-1", model=backend.model, prompt="a heron",
                                  image_url=None, duration_seconds=5, aspect_ratio="16:9",
                                  audio=False)
    return RenderSpec(**(fields | changes))


def _offered(backend: Backend) -> list[dict[str, Any]]:
    """Every request shape the catalog lets routing send this backend (the ends of
    each duration range, every aspect ratio and resolution, audio where offered)."""
    shapes = []
    for mode, capability in backend.capabilities.items():
        for resolution in capability.resolutions:
            durations = capability.durations_for(resolution)
            seconds = durations.values or (durations.min, durations.max)
            for duration in seconds:
                for ratio in capability.aspect_ratios:
                    for audio in {False, capability.audio}:
                        shapes.append({
                            "image_url": IMAGE if mode == "image_to_video" else None,
                            "duration_seconds": duration, "aspect_ratio": ratio,
                            "resolution": resolution.value, "audio": audio})
    return shapes


@pytest.mark.parametrize("backend", REPLICATE, ids=lambda b: b.name)
def test_every_request_the_catalog_routes_to_a_model_is_an_input_it_accepts(
        backend: Backend, sim: str) -> None:
    provider = make_provider(backend, provider_settings("replicate", sim))
    shapes = _offered(backend)
    for shape in shapes:
        provider.create(_spec(backend, **shape))  # a 422 would raise ProviderError
    assert control.stats(sim)["creates"] == len(shapes)


@pytest.mark.parametrize(("name", "resolution", "duration", "size"), [
    ("replicate-kling", Resolution.P1080, 5, (1920, 1080)),
    ("replicate-hailuo", Resolution.P768, 6, (1366, 768)),
    ("replicate-hailuo", Resolution.P1080, 6, (1920, 1080)),
    ("replicate-seedance", Resolution.P720, 2, (1280, 720)),
])
def test_each_model_renders_the_resolution_asked_for(
        name: str, resolution: Resolution, duration: int, size: tuple[int, int], sim: str,
        tmp_path: Path) -> None:
    backend = load_catalog().get(name)
    provider = make_provider(backend, provider_settings("replicate", sim))
    status = provider.poll(provider.create(_spec(backend, duration_seconds=duration,
                                                 resolution=resolution.value)))
    assert status.state is TaskState.SUCCEEDED
    provider.download(status, tmp_path / "v.mp4")
    info = probe_video(tmp_path / "v.mp4")
    assert (info.width, info.height, info.frames) == (*size, duration * SIM_FPS)
    observed = quality.Observed(info.width, info.height, info.duration_s,
                                info.blank_fraction, info.frozen_fraction)
    assert quality.check(observed, duration, "16:9", backend.quality, resolution).passed


@pytest.mark.parametrize(("name", "sent"), [
    ("replicate-kling", {"prompt": "a heron", "start_image": IMAGE, "duration": 5,
                         "aspect_ratio": "16:9"}),
    ("replicate-hailuo", {"prompt": "a heron", "first_frame_image": IMAGE, "duration": 6,
                          "resolution": "1080p", "prompt_optimizer": False}),
    ("replicate-seedance", {"prompt": "a heron", "image": IMAGE, "duration": 5,
                            "aspect_ratio": "16:9", "resolution": "720p",
                            "generate_audio": False}),
])
def test_the_client_sends_each_model_its_own_input_names(name: str, sent: dict[str, Any],
                                                         sim: str) -> None:
    backend = load_catalog().get(name)
    provider = make_provider(backend, provider_settings("replicate", sim))
    task_id = provider.create(_spec(backend, image_url=IMAGE, duration_seconds=sent["duration"],
                                    resolution="720p" if name == "replicate-seedance"
                                    else "1080p"))
    prediction = Client(api_token=TOKEN, base_url=sim).predictions.get(task_id)
    assert (prediction.model, prediction.input) == (backend.model, sent)


@pytest.mark.parametrize(("model", "given", "field", "kind"), [
    # Kling takes no audio input; Seedance calls its first frame `image`, not start_image.
    ("kwaivgi/kling-v2.5-turbo-pro", {"prompt": "p", "generate_audio": False},
     "input", "additional_property_not_allowed"),
    ("bytedance/seedance-2.0-fast", {"prompt": "p", "start_image": IMAGE},
     "input", "additional_property_not_allowed"),
    ("minimax/hailuo-02", {"prompt": "p", "duration": 10, "resolution": "1080p"},
     "input.duration", "invalid"),
    ("minimax/hailuo-02", {"prompt": "p", "aspect_ratio": "16:9"},
     "input", "additional_property_not_allowed"),
    ("kwaivgi/kling-v2.5-turbo-pro", {"prompt": "p", "duration": 6}, "input.duration", "enum"),
    ("minimax/hailuo-02", {"duration": 6}, "input.prompt", "required"),
])
def test_inputs_a_model_does_not_take_are_a_422_naming_the_field(
        model: str, given: dict[str, Any], field: str, kind: str, sim: str) -> None:
    with pytest.raises(ReplicateError) as caught:
        Client(api_token=TOKEN, base_url=sim).models.predictions.create(model=model,
                                                                        input=given)
    assert (caught.value.status, caught.value.title) == (422, "Input validation failed")
    assert (caught.value.detail or "").startswith(f"- {field}: ")
    reply = httpx.post(f"{sim}/v1/models/{model}/predictions", json={"input": given},
                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert [(f["field"], f["type"]) for f in reply.json()["invalid_fields"]] == [(field, kind)]
    assert control.stats(sim)["creates"] == 0
