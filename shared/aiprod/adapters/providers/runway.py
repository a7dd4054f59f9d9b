"""Runway developer API client, through the official `runwayml` SDK.

Creates are sent once (max_retries=0): the SDK would otherwise resend a
create after a timeout, and a second task would be billed. Polls and cancels
are idempotent, so they keep the SDK's own short retries.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import runwayml
from runwayml import RunwayML
from runwayml.types.task_retrieve_response import Cancelled, Failed, Running, Succeeded

from aiprod.adapters import images
from aiprod.adapters.providers import (
    clip,
    download_output,
    not_configured,
    retry_after_s,
    status_class,
    transport_error,
)
from aiprod.adapters.providers.base import (
    NoTaskSearch,
    ProviderError,
    RenderSpec,
    TaskState,
    TaskStatus,
)
from aiprod.domain.job import ErrorClass
from aiprod.wiring.config import Settings

logger = logging.getLogger(__name__)

USD_PER_CREDIT = 0.01
# "A data URI must be under 5 MB (1024x1024x5 bytes) after base64 encoding"; by https
# URL Runway takes images up to 16 MB (https://docs.dev.runwayml.com/assets/inputs/,
# shared/reference/providers.md 1.2).
MAX_DATA_URI_CHARS = 5 * 1024 * 1024
POLL_RETRIES = 2
# Runway names output sizes, not shapes: (aspect ratio, resolution) -> `ratio`. The 720p
# sizes are gen4.5's and gen4_turbo's (a 1:1 frame of 720p's pixel count); only the Veo
# models Runway resells take the 1080p ones (docs.dev.runwayml.com/api, providers.md 1.2).
RATIOS = {("16:9", "720p"): "1280:720", ("9:16", "720p"): "720:1280",
          ("1:1", "720p"): "960:960",
          ("16:9", "1080p"): "1920:1080", ("9:16", "1080p"): "1080:1920"}


def failure_class(failure_code: str | None) -> ErrorClass:
    """Our class for a FAILED task's failureCode (docs.dev.runwayml.com/errors/task-failures)."""
    code = failure_code or ""
    if code.startswith(("SAFETY.", "INPUT_PREPROCESSING.SAFETY")):
        return ErrorClass.CONTENT_REFUSED
    if code.startswith("ASSET.INVALID"):
        return ErrorClass.INVALID_INPUT
    return ErrorClass.BACKEND  # INTERNAL.*, INPUT_PREPROCESSING.INTERNAL, unknown codes


def _api_error(exc: runwayml.RunwayMLError, *, create: bool) -> ProviderError:
    """Classify anything the SDK raised."""
    if isinstance(exc, runwayml.APIStatusError):
        body = exc.body
        message = body.get("error", exc.message) if isinstance(body, dict) else exc.message
        return ProviderError(status_class(exc.status_code), f"http_{exc.status_code}",
                             clip(message), retry_after_s=retry_after_s(exc.response.headers))
    if isinstance(exc, runwayml.APIConnectionError):
        cause = exc.__cause__
        if isinstance(cause, httpx.HTTPError):
            return transport_error(cause, create=create)
        if isinstance(exc, runwayml.APITimeoutError):
            return transport_error(httpx.ReadTimeout(str(exc)), create=create)
        return transport_error(httpx.RemoteProtocolError(str(exc)), create=create)
    # A reply the SDK could not read: on a create, the task may exist.
    return ProviderError(ErrorClass.UNKNOWN if create else ErrorClass.TRANSIENT,
                         "unreadable_response", clip(exc))


def _charged(task: Failed | Cancelled) -> float | None:
    """A terminal task's final cost in USD, as Runway reports it."""
    cost = getattr(task, "cost", None)
    return cost.credits * USD_PER_CREDIT if cost is not None else None


class RunwayProvider(NoTaskSearch):
    """VideoProvider for Runway (text_to_video, image_to_video, tasks)."""

    def __init__(self, settings: Settings) -> None:
        self._max_output_bytes = settings.output_max_bytes
        self._timeout_s = settings.create_timeout_s
        key = settings.runway_api_key.get_secret_value()
        self._client: RunwayML | None = None
        if key:
            self._client = RunwayML(api_key=key, base_url=settings.runway_base_url,
                                    max_retries=0, timeout=settings.create_timeout_s)

    def _sdk(self, retries: int = 0) -> RunwayML:
        if self._client is None:
            raise not_configured("AIPROD_RUNWAY_API_KEY")
        return self._client if retries == 0 else self._client.with_options(max_retries=retries)

    def create(self, spec: RenderSpec) -> str:
        ratio = RATIOS.get((spec.aspect_ratio, spec.resolution))
        if ratio is None:
            raise ProviderError(ErrorClass.INVALID_INPUT, "unsupported_aspect_ratio",
                                f"Runway has no size for aspect ratio {spec.aspect_ratio} "
                                f"at {spec.resolution}")
        params: dict[str, Any] = {"model": spec.model, "ratio": ratio,
                                  "duration": spec.duration_seconds}
        if spec.prompt:
            params["prompt_text"] = spec.prompt
        if spec.seed is not None:
            params["seed"] = spec.seed
        if spec.audio and spec.model.startswith("veo3.1"):
            params["audio"] = True
        client = self._sdk()
        try:
            if spec.image is not None:
                image = images.staged_for_provider(
                    spec.image, provider="Runway",
                    inline=images.data_uri_chars(spec.image.size) <= MAX_DATA_URI_CHARS)
                created = client.image_to_video.create(prompt_image=image, **params)
            elif spec.image_url:
                if not spec.image_url.startswith(("https://", "data:image/", "gs://")):
                    raise ProviderError(ErrorClass.INVALID_INPUT, "unsupported_image_url",
                                        "Runway takes the image as an https URL or a data URI")
                image = images.url_for_provider(spec.image_url, timeout_s=self._timeout_s)
                created = client.image_to_video.create(prompt_image=image, **params)
            else:
                created = client.text_to_video.create(**params)
        except runwayml.RunwayMLError as exc:
            raise _api_error(exc, create=True) from exc
        return created.id

    def poll(self, task_id: str) -> TaskStatus:
        try:
            task = self._sdk(POLL_RETRIES).tasks.retrieve(task_id)
        except runwayml.RunwayMLError as exc:
            raise _api_error(exc, create=False) from exc
        if isinstance(task, Succeeded):
            if not task.output:
                return TaskStatus(TaskState.FAILED, error=ProviderError(
                    ErrorClass.BACKEND, "no_output", "the task succeeded without an output URL"))
            credits = task.cost.credits if getattr(task, "cost", None) else None
            return TaskStatus(TaskState.SUCCEEDED, progress=1.0, output_url=task.output[0],
                              cost_usd=credits * USD_PER_CREDIT if credits is not None else None)
        if isinstance(task, Failed):
            code = task.failure_code or "FAILED"
            return TaskStatus(TaskState.FAILED, error=ProviderError(
                failure_class(task.failure_code), code, clip(task.failure)),
                cost_usd=_charged(task))
        if isinstance(task, Cancelled):
            # Every terminal task reports its final `cost` (0 when refunded: a cancel the
            # server saw before RUNNING; one seen RUNNING is not refunded; see cancel()).
            return TaskStatus(TaskState.CANCELLED, cost_usd=_charged(task))
        if isinstance(task, Running):
            return TaskStatus(TaskState.RUNNING, progress=task.progress)
        return TaskStatus(TaskState.RUNNING, progress=0.0)  # PENDING, THROTTLED

    def cancel(self, task_id: str) -> None:
        """DELETE the task: cancels it if it runs (best effort; failures are logged).

        Per the SDK's `tasks.delete` (generated from Runway's API reference): "Refund
        eligibility is based on the task status observed by the server during
        cancellation. If that check observes RUNNING, cancellation does not refund
        credits"; deleting a finished task deletes it (and refunds nothing)."""
        try:
            self._sdk(POLL_RETRIES).tasks.delete(task_id)
        except runwayml.RunwayMLError as exc:
            logger.warning("runway: cancelling task %s failed: %s", task_id,
                           _api_error(exc, create=False))
        except ProviderError as exc:
            logger.warning("runway: cancelling task %s failed: %s", task_id, exc)

    def download(self, status: TaskStatus, dest: Path) -> None:
        download_output(status, dest, self._timeout_s, self._max_output_bytes)
