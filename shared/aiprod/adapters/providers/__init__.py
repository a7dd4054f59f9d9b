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
import shutil
import tempfile
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
    "inline_output",
    "make_provider",
]

logger = logging.getLogger(__name__)

# The largest output a render process takes, unless told (Settings.output_max_bytes,
# AIPROD_OUTPUT_MAX_BYTES, sized from the render instance's memory: /tmp is memory on
# Cloud Functions).
MAX_DOWNLOAD_BYTES = 256 * 1024**2
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
    """Write a finished task's video to `dest` (moved from the file the poll wrote an
    inline video to, or streamed from its URL), at most `max_bytes` of it.

    The file appears at `dest` only when complete (written beside it, then
    renamed). Raises ProviderError: TRANSIENT for network trouble or 5xx (the
    URL can be fetched again, or refreshed by polling), BACKEND otherwise
    (`output_too_large` past max_bytes).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        if status.output_file is not None:
            if not status.output_file.exists():
                raise ProviderError(ErrorClass.TRANSIENT, "output_file_gone",
                                    "the inline output's file is gone; poll again")
            size = status.output_file.stat().st_size
            if size > max_bytes:
                raise ProviderError(ErrorClass.BACKEND, "output_too_large",
                                    f"the output is {size} bytes, over {max_bytes}")
            shutil.move(status.output_file, partial)
        elif status.output_url and status.output_url.startswith(("https://", "http://")):
            _stream_to(status.output_url, partial, timeout_s, max_bytes)
        else:
            raise ProviderError(ErrorClass.BACKEND, "no_output",
                                f"the task has no downloadable output ({status.output_url!r})")
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def inline_output(video: bytes) -> Path:
    """A video a provider answered inline, written to a temporary file at once so that
    it is not held as bytes while it waits for its output check (download_output
    moves it; the caller unlinks it if it drops the status instead)."""
    handle, name = tempfile.mkstemp(prefix="aiprod-inline-", suffix=".mp4")
    with os.fdopen(handle, "wb") as out:
        out.write(video)
    return Path(name)


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
