"""Replicate client (official models), through the official `replicate` 1.x SDK.

The SDK never resends a POST, so a create goes out once. Two SDK gaps are
closed with httpx event hooks: 1.0.7 sends a create without `wait` with
`timeout=None`, which turns every timeout off (a hung create would block
forever), so a request hook puts ours back; and its exception does not keep a
429's Retry-After header, so a response hook notes it.
Moderation has no platform code on Replicate: a refused prediction fails with
a model-specific `error` text, which is classified by its wording.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from replicate.client import Client as ReplicateClient
from replicate.exceptions import ReplicateError

from aiprod.adapters import images
from aiprod.adapters.providers import (
    clip,
    download_output,
    not_configured,
    retry_after_s,
    status_class,
    transport_error,
)
from aiprod.adapters.providers.base import ProviderError, RenderSpec, TaskState, TaskStatus
from aiprod.domain.catalog import ModelInputs
from aiprod.domain.job import ErrorClass
from aiprod.wiring.config import Settings

logger = logging.getLogger(__name__)

# Clocks differ: look a little before the attempt started.
LOOKUP_SLACK = timedelta(seconds=60)
# "Use a data URL only for files <=256 KB"; larger files go by URL
# (https://replicate.com/docs/topics/predictions/create-a-prediction, providers.md 2.1).
MAX_DATA_URI_BYTES = 256 * 1024


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))

_REFUSAL = re.compile(r"sensitive|nsfw|flagged|\bE005\b", re.IGNORECASE)
_ERROR_CODE = re.compile(r"\b(E\d{3,4})\b")


def failure_class(error: str) -> ErrorClass:
    """Our class for a failed prediction's `error` text (providers.md 2.7)."""
    if _REFUSAL.search(error):
        return ErrorClass.CONTENT_REFUSED
    if "input validation error" in error.lower():
        return ErrorClass.INVALID_INPUT
    return ErrorClass.BACKEND


class ReplicateProvider:
    """VideoProvider for a Replicate official model (`owner/name` as the backend's model).

    Every model has its own input schema; `inputs` (the backend's catalog entry)
    says which of its inputs each request field fills, so no model is special here.
    """

    def __init__(self, settings: Settings, inputs: ModelInputs | None = None) -> None:
        self._model_inputs = inputs
        self._max_output_bytes = settings.output_max_bytes
        self._timeout_s = settings.create_timeout_s
        self._last_retry_after = threading.local()
        token = settings.replicate_api_token.get_secret_value()
        self._client: Any = None
        self._timeout = httpx.Timeout(settings.create_timeout_s,
                                      connect=min(5.0, settings.create_timeout_s))
        if token:
            self._client = ReplicateClient(
                api_token=token, base_url=settings.replicate_base_url, timeout=self._timeout,
                event_hooks={"request": [self._enforce_timeout],
                             "response": [self._note_retry_after]})

    def _enforce_timeout(self, request: httpx.Request) -> None:
        """Fill in every timeout the SDK left unset with ours."""
        given = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            kind: given.get(kind) if given.get(kind) is not None else ours
            for kind, ours in self._timeout.as_dict().items()}

    def _note_retry_after(self, response: httpx.Response) -> None:
        self._last_retry_after.value = retry_after_s(response.headers)

    def _sdk(self) -> Any:
        if self._client is None:
            raise not_configured("AIPROD_REPLICATE_API_TOKEN")
        return self._client

    def _api_error(self, exc: Exception, *, create: bool) -> ProviderError:
        if isinstance(exc, ReplicateError):
            status = exc.status or 0
            message = exc.detail or exc.title or f"HTTP {status}"
            retry_after = (getattr(self._last_retry_after, "value", None)
                           if status == 429 else None)
            return ProviderError(status_class(status), f"http_{status}", clip(message),
                                 retry_after_s=retry_after)
        if isinstance(exc, httpx.HTTPError):
            return transport_error(exc, create=create)
        # The SDK could not read the reply (e.g. a prediction missing required fields).
        return ProviderError(ErrorClass.UNKNOWN if create else ErrorClass.TRANSIENT,
                             "unreadable_response", clip(repr(exc)))

    def _inputs(self, spec: RenderSpec) -> dict[str, Any]:
        if self._model_inputs is None:
            raise ProviderError(ErrorClass.BACKEND, "not_configured",
                                f"the catalog names no inputs for {spec.model}")
        image: str | None = None
        if spec.image is not None:
            image = images.staged_for_provider(
                spec.image, provider="Replicate", inline=spec.image.size <= MAX_DATA_URI_BYTES)
        elif spec.image_url:
            if not spec.image_url.startswith(("https://", "http://", "data:", "gs://")):
                raise ProviderError(ErrorClass.INVALID_INPUT, "unsupported_image_url",
                                    "Replicate takes the image as an http(s) URL or a data URI")
            image = images.url_for_provider(spec.image_url, timeout_s=self._timeout_s)
        try:
            return self._model_inputs.build({
                "prompt": spec.prompt or None, "image": image,
                "duration": spec.duration_seconds, "aspect_ratio": spec.aspect_ratio,
                "resolution": spec.resolution, "audio": spec.audio, "seed": spec.seed})
        except ValueError as exc:  # a request value the model has no spelling for
            raise ProviderError(ErrorClass.INVALID_INPUT, "unsupported_input",
                                clip(exc)) from exc

    def create(self, spec: RenderSpec) -> str:
        inputs = self._inputs(spec)
        client = self._sdk()
        try:
            prediction = client.models.predictions.create(model=spec.model, input=inputs)
        except (ReplicateError, httpx.HTTPError, ValueError) as exc:
            raise self._api_error(exc, create=True) from exc
        return str(prediction.id)

    def poll(self, task_id: str) -> TaskStatus:
        try:
            prediction = self._sdk().predictions.get(task_id)
        except (ReplicateError, httpx.HTTPError, ValueError) as exc:
            raise self._api_error(exc, create=False) from exc
        status = prediction.status
        if status == "succeeded":
            output = prediction.output
            url = output[0] if isinstance(output, list) and output else output
            if not isinstance(url, str) or not url:
                return TaskStatus(TaskState.FAILED, error=ProviderError(
                    ErrorClass.BACKEND, "no_output",
                    "the prediction succeeded without an output URL (outputs are deleted "
                    "an hour after an API prediction finishes)"))
            return TaskStatus(TaskState.SUCCEEDED, progress=1.0, output_url=url)
        if status == "failed":
            error = str(prediction.error or "the prediction failed")
            code = match.group(1) if (match := _ERROR_CODE.search(error)) else "failed"
            return TaskStatus(TaskState.FAILED,
                              error=ProviderError(failure_class(error), code, clip(error)))
        if status == "aborted":
            # "For public models, you're only charged for predictions with a canceled
            # status, not for aborted ones" (replicate.com/changelog/2025-10-16-prediction-
            # deadlines). `canceled` is billed, by an amount the API does not report.
            return TaskStatus(TaskState.CANCELLED, cost_usd=0.0)
        if status == "canceled":
            return TaskStatus(TaskState.CANCELLED)
        progress = prediction.progress
        return TaskStatus(TaskState.RUNNING,
                          progress=progress.percentage if progress is not None else None)

    def cancel(self, task_id: str) -> None:
        """Ask Replicate to cancel the prediction (best effort; failures are logged)."""
        try:
            self._sdk().predictions.cancel(task_id)
        except (ReplicateError, httpx.HTTPError, ValueError) as exc:
            logger.warning("replicate: cancelling prediction %s failed: %s", task_id,
                           self._api_error(exc, create=False))
        except ProviderError as exc:
            logger.warning("replicate: cancelling prediction %s failed: %s", task_id, exc)

    can_find_tasks = True

    def find_task(self, spec: RenderSpec, since: datetime) -> str | None:
        """Search recent predictions (newest first) for one made from this spec."""
        wanted = self._inputs(spec)
        client = self._sdk()
        try:
            page = client.predictions.list()
            while True:
                for prediction in page.results:
                    created = _parse_time(prediction.created_at)
                    if created is not None and created < since - LOOKUP_SLACK:
                        return None  # older than the attempt: stop looking
                    same_input = all((prediction.input or {}).get(k) == v
                                     for k, v in wanted.items())
                    if prediction.model == spec.model and same_input:
                        return str(prediction.id)
                if not page.next:
                    return None
                page = client.predictions.list(cursor=page.next)
        except (ReplicateError, httpx.HTTPError, ValueError) as exc:
            raise self._api_error(exc, create=False) from exc

    def download(self, status: TaskStatus, dest: Path) -> None:
        download_output(status, dest, self._timeout_s, self._max_output_bytes)
