"""Provider errors and 429s, counted where every provider call passes.

`metered(provider, backend)` wraps a provider client: each ProviderError a call
raises (create, poll, find_task, download), and each task the provider reports
FAILED, is counted as `provider_errors` (by error class) or, for a 429 or a
THROTTLED verdict, as `provider_throttles`, then passed on unchanged. The
client and the render service stay as they are.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from aiprod.adapters.providers.base import (
    ProviderError,
    RenderSpec,
    TaskState,
    TaskStatus,
    VideoProvider,
)
from aiprod.domain.catalog import Backend
from aiprod.observability import metrics


class MeteredProvider:
    def __init__(self, inner: VideoProvider, backend: Backend) -> None:
        self.inner = inner
        self._backend = backend.name
        self._provider = backend.provider

    def _count(self, error: ProviderError, job_id: str | None = None) -> None:
        if error.throttled:
            metrics.count("provider_throttles", job_id=job_id, backend=self._backend,
                          provider=self._provider)
        else:
            metrics.count("provider_errors", job_id=job_id, backend=self._backend,
                          provider=self._provider, error_class=error.error_class.value)

    def create(self, spec: RenderSpec) -> str:
        try:
            return self.inner.create(spec)
        except ProviderError as error:
            self._count(error, spec.job_id)
            raise

    def poll(self, task_id: str) -> TaskStatus:
        try:
            status = self.inner.poll(task_id)
        except ProviderError as error:
            self._count(error)
            raise
        if status.state is TaskState.FAILED and status.error is not None:
            self._count(status.error)
        return status

    def cancel(self, task_id: str) -> None:
        self.inner.cancel(task_id)

    @property
    def can_find_tasks(self) -> bool:
        return self.inner.can_find_tasks

    def find_task(self, spec: RenderSpec, since: datetime) -> str | None:
        try:
            return self.inner.find_task(spec, since)
        except ProviderError as error:
            self._count(error, spec.job_id)
            raise

    def download(self, status: TaskStatus, dest: Path) -> None:
        try:
            self.inner.download(status, dest)
        except ProviderError as error:
            self._count(error)
            raise

    def __getattr__(self, name: str) -> Any:
        """Anything else the client offers, unchanged."""
        return getattr(self.inner, name)


def metered(provider: VideoProvider, backend: Backend) -> VideoProvider:
    return MeteredProvider(provider, backend)
