"""Provider clients (Runway, Veo on Vertex AI, Replicate) behind one interface.

`make_provider(backend, settings)` picks the client for `backend.provider`.
The helpers below are shared by the clients: how a transport failure is
classified (a create that may have reached the provider is UNKNOWN, never
resent), how Retry-After is read, how outputs are downloaded and how input
images are fetched. Clients import this package; it imports them lazily.
"""

from __future__ import annotations

import email.utils
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import httpx2

from aiprod.adapters.providers.base import (
    ProviderError,
    RenderSpec,
    TaskState,
    TaskStatus,
    VideoProvider,
)
from aiprod.domain.catalog import Backend
from aiprod.domain.job import ErrorClass
from aiprod.wiring.config import Settings

__all__ = [
    "MAX_DOWNLOAD_BYTES",
    "ProviderError",
    "RenderSpec",
    "TaskState",
    "TaskStatus",
    "VideoProvider",
    "download_output",
    "make_provider",
]

logger = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 2 * 1024**3
MAX_MESSAGE_CHARS = 1000

# google-genai talks through httpx2, a fork of httpx with its own (unrelated) classes;
# runwayml and replicate use httpx. Transport failures are recognised from both.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, httpx2.HTTPError)
_NEVER_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
    httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)
_TIMEOUTS: tuple[type[Exception], ...] = (httpx.TimeoutException, httpx2.TimeoutException)


def make_provider(backend: Backend, settings: Settings) -> VideoProvider:
    """The client for `backend.provider`, configured from settings (base URL, key, timeout)."""
    if backend.provider == "runway":
        from aiprod.adapters.providers.runway import RunwayProvider
        return RunwayProvider(settings)
    if backend.provider == "replicate":
        from aiprod.adapters.providers.replicate import ReplicateProvider
        return ReplicateProvider(settings, backend.inputs)
    if backend.provider == "veo":
        from aiprod.adapters.providers.veo import VeoProvider
        return VeoProvider(settings)
    raise ValueError(f"no client for provider {backend.provider!r}")


# -- classification shared by the clients ------------------------------------------------------


def clip(message: object) -> str:
    """A provider message, bounded so one odd reply cannot bloat a job document."""
    text = str(message).strip()
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


def status_class(status: int) -> ErrorClass:
    """Our class for an HTTP error status from a provider API call."""
    if status in (408, 429) or status >= 500:
        return ErrorClass.TRANSIENT
    if status in (400, 409, 413, 422):
        return ErrorClass.INVALID_INPUT
    return ErrorClass.BACKEND  # 401/403 credentials, 404 unknown model or task, others


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    if (ms := lowered.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def transport_error(exc: BaseException, *, create: bool) -> ProviderError:
    """Classify a failure below HTTP (connect, timeout, dropped connection).

    A failure to connect means the request never left, so it is TRANSIENT.
    Anything after that, on a create call, is UNKNOWN: the provider may have
    created (and will bill) the task, so the caller must not send it again.
    On idempotent calls (poll, cancel) everything here is TRANSIENT.
    """
    never_sent = isinstance(exc, _NEVER_SENT)
    kind = "timeout" if isinstance(exc, _TIMEOUTS) else "connection"
    if never_sent or not create:
        return ProviderError(ErrorClass.TRANSIENT, f"{kind}_error", clip(repr(exc)))
    return ProviderError(ErrorClass.UNKNOWN, f"create_{kind}_lost",
                         f"the create call failed after it was sent ({exc!r}); the provider "
                         "may have created the task")


# -- files ------------------------------------------------------------------------------------


def download_output(status: TaskStatus, dest: Path, timeout_s: float,
                    max_bytes: int = MAX_DOWNLOAD_BYTES) -> None:
    """Write a finished task's video to `dest` (inline bytes, or streamed from its URL).

    The file appears at `dest` only when complete (written beside it, then
    renamed). Raises ProviderError: TRANSIENT for network trouble or 5xx (the
    URL can be fetched again, or refreshed by polling), BACKEND otherwise.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        if status.output_bytes is not None:
            if len(status.output_bytes) > max_bytes:
                raise ProviderError(ErrorClass.BACKEND, "output_too_large",
                                    f"the output is larger than {max_bytes} bytes")
            partial.write_bytes(status.output_bytes)
        elif status.output_url and status.output_url.startswith(("https://", "http://")):
            _stream_to(status.output_url, partial, timeout_s, max_bytes)
        else:
            raise ProviderError(ErrorClass.BACKEND, "no_output",
                                f"the task has no downloadable output ({status.output_url!r})")
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def _stream_to(url: str, path: Path, timeout_s: float, max_bytes: int) -> None:
    try:
        with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as response:
            if response.status_code != 200:
                error_class = (ErrorClass.TRANSIENT if response.status_code >= 500
                               else ErrorClass.BACKEND)
                raise ProviderError(error_class, f"http_{response.status_code}",
                                    f"downloading the output answered {response.status_code}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ProviderError(ErrorClass.BACKEND, "output_too_large",
                                    f"the output is {declared} bytes, over {max_bytes}")
            written = 0
            with path.open("wb") as out:
                for chunk in response.iter_bytes(1024 * 1024):
                    written += len(chunk)
                    if written > max_bytes:
                        raise ProviderError(ErrorClass.BACKEND, "output_too_large",
                                            f"the output is over {max_bytes} bytes")
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise ProviderError(ErrorClass.TRANSIENT, "download_failed", clip(repr(exc))) from exc


def not_configured(variable: str) -> ProviderError:
    """The error for a provider whose credentials are not set (a deployment fault)."""
    return ProviderError(ErrorClass.BACKEND, "not_configured", f"{variable} is not set")
