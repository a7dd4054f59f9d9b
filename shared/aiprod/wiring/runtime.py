"""Wires adapters to settings once per process, so warm invocations reuse clients.

One instance serves many requests at once (render functions run with a
concurrency above 1, each request on its own thread), so everything here is
shared between threads: the Firestore, Pub/Sub and provider clients are
thread-safe (gRPC channels and httpx clients), and what this module caches is
built under a lock.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiprod.adapters.access import AccessStore, FirestoreAccess
from aiprod.adapters.bus import Bus, PubSubBus
from aiprod.adapters.health import FirestoreHealth, HealthStore
from aiprod.adapters.ledger import FirestoreLedger, Ledger
from aiprod.adapters.metered import metered
from aiprod.adapters.providers import make_provider
from aiprod.adapters.providers.base import VideoProvider
from aiprod.adapters.reuse import FirestoreReuseIndex, ReuseIndex
from aiprod.adapters.stats import FirestoreStats, MemoryStats, StatsStore
from aiprod.adapters.storage import OutputStore, output_store_for
from aiprod.adapters.store import FirestoreJobStore, JobStore
from aiprod.domain.catalog import Catalog
from aiprod.wiring.config import Settings, get_settings


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Runtime:
    settings: Settings
    catalog: Catalog
    store: JobStore
    bus: Bus
    outputs: OutputStore
    ledger: Ledger
    health: HealthStore
    access: AccessStore  # API keys, request counters, Idempotency-Key records
    reuse: ReuseIndex  # which job renders each identical request (reuse "cached")
    # Observed backend statistics (in memory unless wired to Firestore below).
    stats: StatsStore = field(default_factory=MemoryStats)
    clock: Callable[[], dt.datetime] = utcnow
    sleep: Callable[[float], None] = time.sleep
    # Seconds for deadlines within one invocation (never jumps, unlike the wall clock);
    # a seam so a test's clock moves it when its sleep "waits".
    monotonic: Callable[[], float] = time.monotonic
    _providers: dict[str, VideoProvider] = field(default_factory=dict)
    _providers_lock: threading.Lock = field(default_factory=threading.Lock)
    # At most settings.output_checks_at_once outputs downloaded and decoded at once in
    # this process, whatever the concurrency: what bounds memory (and /tmp).
    output_checks: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(2))
    # At most settings.uploads_at_once large bodies (uploads) parsed and decoded at once
    # in this process: what bounds the API's memory (http/api.py).
    uploads: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(3))

    def provider(self, backend: str) -> VideoProvider:
        with self._providers_lock:  # one client per backend, shared by every request
            if backend not in self._providers:
                spec = self.catalog.get(backend)
                self._providers[backend] = metered(make_provider(spec, self.settings), spec)
            return self._providers[backend]


_RUNTIME: Runtime | None = None
_RUNTIME_LOCK = threading.Lock()


def get_runtime() -> Runtime:
    """The process's runtime, built once (concurrent first requests wait for it)."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        if _RUNTIME is None:
            _RUNTIME = _build_runtime()
        return _RUNTIME


def _build_runtime() -> Runtime:
    from google.cloud import firestore

    settings = get_settings()
    client = firestore.Client(project=settings.project, database=settings.firestore_database)
    return Runtime(
        settings=settings,
        catalog=settings.catalog(),
        store=FirestoreJobStore(client),
        bus=PubSubBus(settings.project),
        outputs=output_store_for(settings.output_uri),
        ledger=FirestoreLedger(client),
        health=FirestoreHealth(client),
        access=FirestoreAccess(client),
        stats=FirestoreStats(client),
        reuse=FirestoreReuseIndex(client),
        output_checks=threading.BoundedSemaphore(settings.output_checks_at_once),
        uploads=threading.BoundedSemaphore(settings.uploads_at_once),
    )
