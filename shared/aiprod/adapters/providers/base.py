"""The one small interface every provider client implements.

Clients translate between AIPROD's RenderSpec and a provider's own API (through
its official SDK) and classify every outcome into an ErrorClass. They decide no
policy: whether to retry, fall back or strike is the render service's call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from aiprod.domain.job import ErrorClass


@dataclass(frozen=True)
class StagedImage:
    """An image uploaded to AIPROD, staged in its output store at admission: each
    client hands it over in the form its provider takes (bytes, data URI, a signed
    URL or the gs:// URI itself)."""

    uri: str  # gs://… in production, file://… on the local stack
    sha256: str
    mime_type: str
    size: int
    read: Callable[[], bytes]  # the bytes, checked against sha256
    signed_url: Callable[[], str]  # https (signed) in production; the local folder gives file://


@dataclass(frozen=True)
class RenderSpec:
    """What to render, in provider-neutral terms."""

    job_id: str
    model: str
    prompt: str | None
    image_url: str | None  # https URL, gs:// URI or data: URI (image-to-video)
    duration_seconds: int
    aspect_ratio: str  # "16:9" | "9:16" | "1:1"
    audio: bool
    image: StagedImage | None = None  # an upload (then image_url is its uri)
    seed: int | None = None  # set only for a backend whose catalog entry says accepts_seed
    resolution: str = "720p"  # "720p" | "768p" | "1080p": the frame's shorter side


class TaskState(StrEnum):
    RUNNING = "RUNNING"      # queued, throttled or rendering: poll again later
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


THROTTLE_CODES = frozenset({"http_429", "RESOURCE_EXHAUSTED", "THROTTLED"})


class ProviderError(Exception):
    """A classified provider outcome: the provider's own code and message are kept."""

    def __init__(self, error_class: ErrorClass, code: str, message: str,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{error_class.value}: {code}: {message}")
        self.error_class = error_class
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def throttled(self) -> bool:
        """A 429 is back-pressure: retry later, and no strike against the backend."""
        return self.code in THROTTLE_CODES


@dataclass(frozen=True)
class TaskStatus:
    state: TaskState
    progress: float | None = None
    output_url: str | None = None     # where to download the video (http(s) or gs://)
    # The video, when the provider inlines it in the poll's answer: written to this
    # temporary file as soon as it was decoded, never held as bytes; download moves
    # it to its destination, and whoever drops the status unlinks it.
    output_file: Path | None = None
    error: ProviderError | None = None  # set when state is FAILED
    cost_usd: float | None = None      # what the provider reports it charged, if it does


class NoTaskSearch:
    """For providers whose API cannot list or search tasks (Runway, Vertex AI)."""

    can_find_tasks = False

    def find_task(self, spec: RenderSpec, since: datetime) -> str | None:
        return None


class VideoProvider(Protocol):
    """A provider's API, as AIPROD needs it."""

    def create(self, spec: RenderSpec) -> str:
        """Start a render; return the provider's task id. Raises ProviderError.

        A create whose outcome cannot be known (the request may have reached the
        provider) raises ProviderError with ErrorClass.UNKNOWN, never retries.
        """
        ...

    def poll(self, task_id: str) -> TaskStatus:
        """The task's state now. Raises ProviderError for call failures."""
        ...

    def cancel(self, task_id: str) -> None:
        """Ask the provider to stop the task (best effort)."""
        ...

    @property
    def can_find_tasks(self) -> bool:
        """Whether find_task can search the provider's recent tasks."""
        ...

    def find_task(self, spec: RenderSpec, since: datetime) -> str | None:
        """The id of a task created for `spec` since `since`, if the provider lists
        tasks (None when it cannot tell); for resolving a create cut off mid-call."""
        ...

    def download(self, status: TaskStatus, dest: Path) -> None:
        """Write the finished video to `dest`."""
        ...
