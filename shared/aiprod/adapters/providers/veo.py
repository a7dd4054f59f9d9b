"""Veo on Vertex AI client, through the official `google-genai` SDK (Vertex mode).

The task id is the operation's full resource name, so a poll needs nothing
else: `operations.get` is given a GenerateVideosOperation built from it. With
`AIPROD_VEO_BASE_URL` / `AIPROD_VEO_ACCESS_TOKEN` set (the local simulator)
the client uses that URL and a fixed token; otherwise Google's regional
endpoint and Application Default Credentials. The SDK does not retry by
default, so a create goes out once. Videos come back inline (no storageUri),
written to a temporary file by the poll that gets them.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

import google.auth
import google.auth.exceptions
from google import genai
from google.auth.credentials import Credentials
from google.auth.transport.requests import AuthorizedSession
from google.genai import errors, types
from google.oauth2.credentials import Credentials as TokenCredentials

from aiprod.adapters import images, netsafety
from aiprod.adapters.providers import (
    TRANSPORT_ERRORS,
    clip,
    download_output,
    inline_output,
    retry_after_s,
    status_class,
    transport_error,
)
from aiprod.adapters.providers.base import (
    NoTaskSearch,
    ProviderError,
    RenderSpec,
    StagedImage,
    TaskState,
    TaskStatus,
)
from aiprod.domain.job import ErrorClass
from aiprod.wiring.config import Settings

logger = logging.getLogger(__name__)

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
API_VERSION = "v1beta1"  # what google-genai uses on Vertex
# google.rpc.Code names, for the `error` of a finished operation.
RPC_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
             "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
             "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
             "UNAUTHENTICATED")
# Veo's safety refusals name a support code or the usage guidelines.
_SAFETY = re.compile(r"support codes?:|usage guidelines", re.IGNORECASE)


def _is_safety(message: str | None) -> bool:
    return bool(message and _SAFETY.search(message))


def operation_error(error: dict[str, Any]) -> TaskStatus:
    """The status of an operation that finished with a google.rpc.Status `error`."""
    code = error.get("code")
    message = str(error.get("message") or "the operation failed")
    name = RPC_CODES[code] if isinstance(code, int) and 0 <= code < len(RPC_CODES) \
        else str(code)
    if name == "CANCELLED":
        return TaskStatus(TaskState.CANCELLED)
    if _is_safety(message):
        error_class = ErrorClass.CONTENT_REFUSED
    elif name in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE"):
        error_class = ErrorClass.INVALID_INPUT
    else:
        error_class = ErrorClass.BACKEND
    return TaskStatus(TaskState.FAILED, error=ProviderError(error_class, name, clip(message)))


def api_error(exc: Exception, *, create: bool) -> ProviderError:
    """Classify anything the SDK (or credential lookup) raised on a call."""
    if isinstance(exc, errors.APIError):
        code = exc.code or 0
        message = exc.message or str(exc)
        error_class = status_class(code)
        if code == 400 and _is_safety(message):
            error_class = ErrorClass.CONTENT_REFUSED
        headers = getattr(exc.response, "headers", None)
        return ProviderError(error_class, exc.status or f"http_{code}", clip(message),
                             retry_after_s=retry_after_s(dict(headers) if headers else None))
    if isinstance(exc, TRANSPORT_ERRORS):
        return transport_error(exc, create=create)
    if isinstance(exc, google.auth.exceptions.TransportError):
        return ProviderError(ErrorClass.TRANSIENT, "credentials_refresh", clip(exc))
    if isinstance(exc, google.auth.exceptions.GoogleAuthError):
        return ProviderError(ErrorClass.BACKEND, "credentials", clip(exc))
    # Anything else (an unreadable reply; requests' errors when the SDK uses mTLS):
    # on a create, the task may exist.
    return ProviderError(ErrorClass.UNKNOWN if create else ErrorClass.TRANSIENT,
                         "unexpected_error", clip(repr(exc)))


class VeoProvider(NoTaskSearch):
    """VideoProvider for Veo models on Vertex AI (predictLongRunning operations)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._timeout_s = settings.create_timeout_s
        self._lock = threading.Lock()
        self._client: genai.Client | None = None
        self._session: AuthorizedSession | None = None

    # -- plumbing ----------------------------------------------------------------------------

    def _credentials(self) -> Credentials | None:
        token = self._settings.veo_access_token.get_secret_value()
        if token:
            return TokenCredentials(token=token)  # type: ignore[no-untyped-call]
        return None  # Application Default Credentials

    def _sdk(self) -> genai.Client:
        """The genai client, made on first use (ADC lookups can be slow or fail)."""
        with self._lock:
            if self._client is None:
                s = self._settings
                try:
                    self._client = genai.Client(
                        vertexai=True, project=s.project, location=s.veo_location,
                        credentials=self._credentials(),
                        http_options=types.HttpOptions(
                            base_url=s.veo_base_url or None,
                            timeout=round(s.create_timeout_s * 1000)))
                except google.auth.exceptions.GoogleAuthError as exc:
                    raise ProviderError(ErrorClass.BACKEND, "credentials",
                                        clip(exc)) from exc
            return self._client

    def _endpoint(self) -> str:
        if self._settings.veo_base_url:
            return self._settings.veo_base_url.rstrip("/")
        location = self._settings.veo_location
        if location == "global":
            return "https://aiplatform.googleapis.com"
        return f"https://{location}-aiplatform.googleapis.com"

    # -- VideoProvider -----------------------------------------------------------------------

    def _image(self, url: str) -> types.Image:
        if url.startswith("gs://"):
            mime = "image/png" if url.lower().endswith(".png") else "image/jpeg"
            return types.Image(gcs_uri=url, mime_type=mime)
        data, mime = images.load_image(
            url, timeout_s=self._timeout_s,
            allow_hosts=netsafety.parse_allow_hosts(self._settings.image_allow_hosts))
        return types.Image(image_bytes=data, mime_type=mime)

    def _staged(self, image: StagedImage) -> types.Image:
        """Veo reads a gs:// input itself (instances[].image.gcsUri, as the project's
        Vertex AI service agent); from any other store it gets the bytes
        (bytesBase64Encoded). Up to 20 MB either way (providers.md 3.1, 3.2)."""
        if image.uri.startswith("gs://"):
            return types.Image(gcs_uri=image.uri, mime_type=image.mime_type)
        return types.Image(image_bytes=image.read(), mime_type=image.mime_type)

    def create(self, spec: RenderSpec) -> str:
        image = None
        if spec.image is not None:
            image = self._staged(spec.image)
        elif spec.image_url:
            image = self._image(spec.image_url)
        source = types.GenerateVideosSource(prompt=spec.prompt or None, image=image)
        config = types.GenerateVideosConfig(
            number_of_videos=1, duration_seconds=spec.duration_seconds,
            aspect_ratio=spec.aspect_ratio, generate_audio=spec.audio, seed=spec.seed,
            resolution=spec.resolution)
        client = self._sdk()
        try:
            operation = client.models.generate_videos(model=spec.model, source=source,
                                                      config=config)
        except Exception as exc:  # every SDK failure is classified; none may escape raw
            raise api_error(exc, create=True) from exc
        if not operation.name:
            raise ProviderError(ErrorClass.UNKNOWN, "no_operation_name",
                                "predictLongRunning answered without an operation name")
        return operation.name

    def poll(self, task_id: str) -> TaskStatus:
        client = self._sdk()
        try:
            operation = client.operations.get(
                types.GenerateVideosOperation.model_validate({"name": task_id}))
        except Exception as exc:  # every SDK failure is classified; none may escape raw
            raise api_error(exc, create=False) from exc
        if not operation.done:
            return TaskStatus(TaskState.RUNNING)
        if operation.error:
            return operation_error(operation.error)
        response = operation.response or operation.result
        videos = (response.generated_videos or []) if response else []
        for generated in videos:
            video = generated.video
            if video is not None and video.video_bytes:
                # To a file now: the bytes go when this returns, not when the output
                # check gets to them (README, "Renders in flight").
                return TaskStatus(TaskState.SUCCEEDED, progress=1.0,
                                  output_file=inline_output(video.video_bytes))
            if video is not None and video.uri:
                return TaskStatus(TaskState.SUCCEEDED, progress=1.0, output_url=video.uri)
        filtered = response.rai_media_filtered_count if response else None
        if filtered:
            reasons = (response.rai_media_filtered_reasons or []) if response else []
            return TaskStatus(TaskState.FAILED, error=ProviderError(
                ErrorClass.CONTENT_REFUSED, "RAI_MEDIA_FILTERED",
                clip(" ".join(reasons) or f"{filtered} video(s) filtered by safety checks")))
        return TaskStatus(TaskState.FAILED, error=ProviderError(
            ErrorClass.BACKEND, "NO_VIDEOS", "the operation finished without videos"))

    def cancel(self, task_id: str) -> None:
        """POST the operation's `:cancel` (best effort: Veo may ignore it; failures are logged)."""
        try:
            with self._lock:
                if self._session is None:
                    credentials = self._credentials()
                    if credentials is None:
                        credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
                    self._session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
                session = self._session
            url = f"{self._endpoint()}/{API_VERSION}/{task_id}:cancel"
            response = session.post(url, json={}, timeout=self._timeout_s)
            if response.status_code >= 400:
                logger.warning("veo: cancelling %s answered %s", task_id, response.status_code)
        except (google.auth.exceptions.GoogleAuthError, OSError) as exc:  # requests' too
            logger.warning("veo: cancelling %s failed: %r", task_id, exc)

    def download(self, status: TaskStatus, dest: Path) -> None:
        download_output(status, dest, self._timeout_s, self._settings.output_max_bytes)
