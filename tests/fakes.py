"""In-memory fakes behind the Runtime's seams, for service tests that run in milliseconds.

Each fake keeps the guarantees of the adapter it stands for (read the real one
before changing a fake): the job store's create-once and whole-job `mutate`,
the ledger's exact micros and once-per-reservation closing, the health
document's strikes, circuit and call slots. They are single-process and
lock-guarded, not concurrent like Firestore: races stay in the emulator suite.
Providers are scripted (what each create and poll answers); a download writes
a real MP4 from aiprod.adapters.media, so the output check decodes a real video.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

from aiprod.adapters import media
from aiprod.adapters.ledger import Held, ReservationState, Scope
from aiprod.adapters.providers.base import ProviderError, RenderSpec, TaskState, TaskStatus
from aiprod.adapters.reuse import Entry, EntryState
from aiprod.adapters.storage import LocalOutputStore
from aiprod.adapters.store import job_from_doc, job_to_doc
from aiprod.domain.apikeys import ApiKey
from aiprod.domain.budget import DayFigures, fits
from aiprod.domain.health import CircuitState, Gate, Health, gate, opens_on_strike
from aiprod.domain.job import Job, JobStatus
from aiprod.wiring.config import Settings
from aiprod.wiring.runtime import Runtime

T = TypeVar("T")

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


# -- clock ---------------------------------------------------------------------------------
@dataclass
class ManualClock:
    """The runtime's clock, sleep and monotonic: sleeping advances the clock, never waits."""

    now: dt.datetime = T0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> dt.datetime:
        return self.now

    def monotonic(self) -> float:
        """The runtime's deadline clock: moves with `now`, so sleeping runs deadlines out."""
        return self.now.timestamp()

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


# -- jobs ----------------------------------------------------------------------------------
class FakeStore:
    """JobStore: documents kept as dicts (what Firestore keeps), so a change made outside
    `mutate` never leaks in; `mutate` writes only when the job changed."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.writes = 0
        self._lock = threading.RLock()

    def create(self, job: Job) -> bool:
        with self._lock:
            if job.id in self.docs:
                return False
            self.docs[job.id] = job_to_doc(job)
            self.writes += 1
            return True

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            doc = self.docs.get(job_id)
            return job_from_doc(dict(doc)) if doc is not None else None

    def mutate(self, job_id: str, change: Callable[[Job], T]) -> tuple[Job, T] | None:
        with self._lock:
            before = self.docs.get(job_id)
            if before is None:
                return None
            job = job_from_doc(dict(before))
            result = change(job)
            after = job_to_doc(job)
            if after != job_to_doc(job_from_doc(dict(before))):
                self.docs[job_id] = after
                self.writes += 1
            return job, result

    def unmoved(self, statuses: Sequence[JobStatus], before: dt.datetime, limit: int,
                cursor: object | None = None) -> tuple[list[Job], object | None]:
        with self._lock:
            jobs = sorted((job_from_doc(dict(d)) for d in self.docs.values()),
                          key=lambda j: (j.updated_at, j.id))
        wanted = [j for j in jobs if j.status in statuses and j.updated_at < before
                  and (cursor is None or (j.updated_at, j.id) > cursor)]
        page = wanted[:limit]
        last = (page[-1].updated_at, page[-1].id) if len(page) == limit else None
        return page, last

    def owned(self, owner: str, limit: int, after: str | None = None,
              newest_first: bool = True) -> tuple[list[Job], bool]:
        with self._lock:
            jobs = sorted((job_from_doc(dict(d)) for d in self.docs.values()
                           if d["owner"] == owner),
                          key=lambda j: (j.created_at, j.id), reverse=newest_first)
        if after is not None:
            ids = [j.id for j in jobs]
            if after not in ids:
                return [], False
            jobs = jobs[ids.index(after) + 1:]
        return jobs[:limit], len(jobs) > limit

    def put(self, job: Job) -> None:
        """Test setup: store a job in a given state."""
        with self._lock:
            self.docs[job.id] = job_to_doc(job)


# -- bus -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Published:
    topic: str
    payload: dict[str, Any]
    attributes: dict[str, str]


class FakeBus:
    def __init__(self) -> None:
        self.published: list[Published] = []
        self._ids = itertools.count(1)

    def publish(self, topic: str, payload: dict[str, Any],
                attributes: dict[str, str] | None = None) -> str:
        self.published.append(Published(topic, payload, dict(attributes or {})))
        return str(next(self._ids))

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [p.payload for p in self.published if p.topic == topic]

    def event_types(self, topic: str = "job-events") -> list[str]:
        return [str(p.payload["type"]) for p in self.published if p.topic == topic]

    def clear(self) -> None:
        self.published.clear()


# -- ledger --------------------------------------------------------------------------------
COUNTERS = ("granted", "held", "refunded", "returned", "spent")


@dataclass
class _Reservation:
    day: str
    micros: int
    scopes: list[Scope]
    state: ReservationState
    granted: bool
    created_at: dt.datetime
    labels: dict[str, str]
    spent: int = 0


class FakeLedger:
    """Ledger with the counters of adapters/ledger.py (held, refunded, granted, returned,
    spent per scope, in integer micros): a hold goes ahead only if every scope's gross
    holds fit its limit, and each reservation is settled or released once."""

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self.counters: dict[tuple[str, str], dict[str, int]] = {}
        self.reservations: dict[tuple[str, str], _Reservation] = {}
        self.crossed: set[tuple[str, str]] = set()
        self.hours: dict[tuple[str, str], list[int]] = {}
        self.holds_read = 0  # holds returned by queries: what a watchdog run reads

    def _add(self, day: str, scopes: Iterable[Scope], **increments: int) -> None:
        for scope in scopes:
            counters = self.counters.setdefault((day, scope.name), dict.fromkeys(COUNTERS, 0))
            for name, amount in increments.items():
                counters[name] += amount

    def _gross(self, day: str, scope: str) -> int:
        c = self.counters.get((day, scope), dict.fromkeys(COUNTERS, 0))
        return c["held"] - c["refunded"] - c["returned"]

    def reserve(self, day: str, reservation_id: str, micros: int, scopes: Sequence[Scope],
                **labels: str) -> bool:
        with self._lock:
            existing = self.reservations.get((day, reservation_id))
            if existing is not None and existing.state is not ReservationState.REFUSED:
                return existing.granted and existing.state is ReservationState.HELD
            self._add(day, scopes, held=micros)
            ok = all(fits(self._gross(day, s.name), s.limit_micros) for s in scopes)
            if ok:
                self._add(day, scopes, granted=micros)
            else:
                self._add(day, scopes, refunded=micros)
            self.reservations[(day, reservation_id)] = _Reservation(
                day, micros, list(scopes),
                ReservationState.HELD if ok else ReservationState.REFUSED, ok,
                existing.created_at if existing else self._clock(), dict(labels))
            return ok

    def settle(self, day: str, reservation_id: str, actual_micros: int) -> bool:
        return self._close(day, reservation_id, ReservationState.SETTLED, actual_micros)

    def release(self, day: str, reservation_id: str) -> bool:
        return self._close(day, reservation_id, ReservationState.RELEASED, 0)

    def _close(self, day: str, reservation_id: str, state: ReservationState,
               spent: int) -> bool:
        with self._lock:
            found = self.reservations.get((day, reservation_id))
            if found is None or found.state is not ReservationState.HELD:
                return False
            if found.granted:
                self._add(day, found.scopes, returned=found.micros - spent, spent=spent)
                now = self._clock()
                hour = now.hour if now.date().isoformat() == day else 23
                for scope in found.scopes:
                    self.hours.setdefault((day, scope.name), [0] * 24)[hour] += spent
            else:
                self._add(day, found.scopes, refunded=found.micros)
            found.state, found.spent = state, spent
            return True

    def figures(self, day: str, scope: Scope, warn_micros: int) -> DayFigures:
        c = self.counters.get((day, scope.name), dict.fromkeys(COUNTERS, 0))
        return DayFigures(day=day, limit_micros=scope.limit_micros, warn_micros=warn_micros,
                          granted_micros=c["granted"], returned_micros=c["returned"],
                          spent_micros=c["spent"])

    def first_crossing(self, day: str, threshold: str) -> bool:
        with self._lock:
            if (day, threshold) in self.crossed:
                return False
            self.crossed.add((day, threshold))
            return True

    def held(self, day: str) -> list[Held]:
        with self._lock:
            found = [Held(day, rid, r.labels.get("job_id", ""), r.created_at)
                     for (d, rid), r in self.reservations.items()
                     if d == day and r.state is ReservationState.HELD]
            self.holds_read += len(found)
            return found

    def held_before(self, day: str, before: dt.datetime, limit: int,
                    cursor: object | None = None) -> tuple[list[Held], object | None]:
        with self._lock:
            holds = sorted((Held(day, rid, r.labels.get("job_id", ""), r.created_at)
                            for (d, rid), r in self.reservations.items()
                            if d == day and r.state is ReservationState.HELD),
                           key=lambda h: (h.created_at, h.reservation_id))
            wanted = [h for h in holds if h.created_at < before
                      and (cursor is None or (h.created_at, h.reservation_id) > cursor)]
            page = wanted[:limit]
            self.holds_read += len(page)
        last = (page[-1].created_at, page[-1].reservation_id) if len(page) == limit else None
        return page, last

    def hourly_spent(self, day: str, scope: str) -> list[int]:
        return list(self.hours.get((day, scope), [0] * 24))

    def state(self, day: str, reservation_id: str) -> ReservationState | None:
        found = self.reservations.get((day, reservation_id))
        return found.state if found else None


# -- health --------------------------------------------------------------------------------
@dataclass
class _Slot:
    owner: str
    expires_at: dt.datetime
    failed: bool = False


class FakeHealth:
    """HealthStore with the semantics of adapters/health.py's FirestoreHealth."""

    def __init__(self) -> None:
        self.docs: dict[str, Health] = {}
        self.slots: dict[str, dict[str, _Slot]] = {}
        self._lock = threading.RLock()

    def get(self, backend: str) -> Health:
        return self.docs.get(backend, Health(backend))

    def all(self, backends: Iterable[str]) -> dict[str, Health]:
        return {b: self.get(b) for b in backends}

    def _set(self, backend: str, **changes: Any) -> None:
        self.docs[backend] = dataclasses.replace(self.get(backend), **changes)

    def claim_probe(self, backend: str, caller: str, now: dt.datetime,
                    cooldown: dt.timedelta, probe_timeout: dt.timedelta) -> bool:
        with self._lock:
            health = self.get(backend)
            if health.state is CircuitState.CLOSED:
                return False
            if gate(health, now, cooldown, probe_timeout, caller) is not Gate.PROBE:
                return False
            self._set(backend, state=CircuitState.HALF_OPEN, probe_owner=caller,
                      probe_claimed_at=now)
            return True

    def take_slot(self, backend: str, caller: str, slots: int, now: dt.datetime,
                  lease: dt.timedelta) -> str | None:
        with self._lock:
            taken = self.slots.setdefault(backend, {})
            for index in map(str, range(slots)):
                slot = taken.get(index)
                if slot is not None and slot.owner == caller and not slot.failed:
                    return index
                if slot is None or slot.expires_at < now:  # free, or a crashed caller's
                    taken[index] = _Slot(caller, now + lease)
                    return index
            return None

    def release_probe(self, backend: str, caller: str) -> None:
        with self._lock:
            health = self.get(backend)
            if health.state is CircuitState.HALF_OPEN and health.probe_owner == caller:
                self._set(backend, state=CircuitState.OPEN, probe_owner=None)

    def release_slot(self, backend: str, slot: str) -> None:
        with self._lock:
            self.slots.get(backend, {}).pop(slot, None)

    def fail_slot(self, backend: str, slot: str) -> None:
        with self._lock:
            self.slots[backend][slot].failed = True  # KeyError like update() on a missing doc

    def record_success(self, backend: str) -> bool:
        with self._lock:
            health = self.get(backend)
            if health.state is CircuitState.CLOSED and health.strikes == 0:
                return False
            self._set(backend, state=CircuitState.CLOSED, strikes=0, probe_owner=None,
                      opened_at=None)
            self.slots[backend] = {k: s for k, s in self.slots.get(backend, {}).items()
                                   if not s.failed}
            return health.state is not CircuitState.CLOSED

    def record_failure(self, backend: str, now: dt.datetime, threshold: int) -> bool:
        with self._lock:
            health = self.get(backend)
            strikes = health.strikes + 1
            self._set(backend, strikes=strikes)
            if opens_on_strike(health, strikes, threshold):
                self._set(backend, state=CircuitState.OPEN, opened_at=now, probe_owner=None)
                return True
            return False


# -- access --------------------------------------------------------------------------------
class FakeAccess:
    """API keys, rate-limit counters and Idempotency-Key records, in memory."""

    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}
        self.counts: dict[tuple[str, dt.datetime, int], int] = {}
        self.idempotency: dict[str, Any] = {}

    def create_key(self, key: ApiKey) -> None:
        self.keys[key.id] = key

    def get_key(self, key_id: str) -> ApiKey | None:
        return self.keys.get(key_id)

    def list_keys(self) -> list[ApiKey]:
        return list(self.keys.values())

    def revoke_key(self, key_id: str, at: dt.datetime) -> ApiKey | None:
        raise NotImplementedError("not needed by the service tests")

    def count_request(self, key_id: str, window: dt.datetime, shard: int,
                      expires_at: dt.datetime) -> int:
        slot = (key_id, window, shard)
        self.counts[slot] = self.counts.get(slot, 0) + 1
        return self.counts[slot]

    def claim_idempotency(self, record_id: str, record: Any, now: dt.datetime) -> Any:
        stored = self.idempotency.get(record_id)
        if stored is None or stored.expires_at <= now:
            self.idempotency[record_id] = stored = record
        return stored


# -- reuse index ---------------------------------------------------------------------------
class FakeReuseIndex:
    """ReuseIndex with adapters/reuse.py's semantics: one leader per key (a live entry
    stands; a failed or expired one is taken over), followers recorded per key."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.following: dict[str, list[str]] = {}
        self._lock = threading.RLock()

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def lead(self, key: str, job_id: str, now: dt.datetime, expires_at: dt.datetime) -> Entry:
        with self._lock:
            standing = self.entries.get(key)
            if standing is not None and (standing.live(now) or standing.leader == job_id):
                return standing
            self.entries[key] = Entry(key, job_id, EntryState.RENDERING, expires_at)
            return self.entries[key]

    def follow(self, key: str, job_id: str, expires_at: dt.datetime) -> None:
        with self._lock:
            self.following.setdefault(key, []).append(job_id)

    def finish(self, key: str, leader: str, state: EntryState,
               expires_at: dt.datetime) -> bool:
        with self._lock:
            standing = self.entries.get(key)
            if standing is None or standing.leader != leader:
                return False
            self.entries[key] = Entry(key, leader, state, expires_at)
            return True

    def followers(self, key: str) -> list[str]:
        return list(self.following.get(key, []))


# -- providers -----------------------------------------------------------------------------
@functools.cache
def sample_video(duration_s: float, aspect_ratio: str = "16:9", blank: bool = False) -> bytes:
    """A real 720p MP4 (made once per process): what the output check decodes."""
    return media.render_test_video(duration_s, aspect_ratio, fps=8, height=720, blank=blank)


Outcome = str | ProviderError | BaseException


class FakeProvider:
    """A VideoProvider whose answers a test scripts.

    `creates`: what each create call does in turn: a task id to return, or an
    exception to raise; once used up, every create returns a fresh task id.
    `polls[task_id]`: the statuses polls return in turn, the last one repeated
    (a task with no script succeeds at once). `video`: what download writes."""

    def __init__(self, name: str, *, can_find_tasks: bool = False,
                 video: bytes | None = None) -> None:
        self.name = name
        self.can_find_tasks = can_find_tasks
        self.creates: list[Outcome] = []
        self.polls: dict[str, list[TaskStatus | ProviderError]] = {}
        self.found: str | None = None
        self.video = video
        self.calls: list[tuple[str, str]] = []  # (operation, task id or job id)
        self._ids = itertools.count(1)

    def calls_of(self, operation: str) -> list[str]:
        return [arg for op, arg in self.calls if op == operation]

    def create(self, spec: RenderSpec) -> str:
        self.calls.append(("create", spec.job_id))
        outcome: Outcome = (self.creates.pop(0) if self.creates
                            else f"{self.name}-task-{next(self._ids)}")
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def poll(self, task_id: str) -> TaskStatus:
        self.calls.append(("poll", task_id))
        script = self.polls.get(task_id) or [TaskStatus(TaskState.SUCCEEDED, 1.0)]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, ProviderError):
            raise answer
        return answer

    def cancel(self, task_id: str) -> None:
        self.calls.append(("cancel", task_id))

    def find_task(self, spec: RenderSpec, since: dt.datetime) -> str | None:
        self.calls.append(("find_task", spec.job_id))
        return self.found

    def download(self, status: TaskStatus, dest: Path) -> None:
        self.calls.append(("download", status.output_url or ""))
        dest.write_bytes(self.video if self.video is not None else sample_video(4))


# -- the runtime ---------------------------------------------------------------------------
@dataclass
class Fakes:
    """A Runtime on fakes, and the fakes, for a test to script and inspect."""

    rt: Runtime
    clock: ManualClock
    store: FakeStore
    bus: FakeBus
    ledger: FakeLedger
    health: FakeHealth
    access: FakeAccess
    providers: dict[str, FakeProvider]
    reuse: FakeReuseIndex

    def provider(self, backend: str) -> FakeProvider:
        return self.providers[backend]


def fake_runtime(tmp: Path, **settings: Any) -> Fakes:
    """The real catalog (backends.yaml) and Settings, every seam faked. Settings default
    to the production defaults except the few waits that bound a test's real time."""
    values: dict[str, Any] = {"output_uri": f"file://{tmp}", "backend_busy_wait_s": 0.0,
                              "transient_retry_budget_s": 30.0} | settings
    # Production defaults, whatever this process's environment says (a local stack's
    # variables must not leak into a unit test).
    own = {k: v for k, v in os.environ.items()
           if not k.startswith("AIPROD_") and k not in ("BACKEND", "GOOGLE_CLOUD_PROJECT")}
    with mock.patch.dict(os.environ, own, clear=True):
        config = Settings(**values)
    catalog = config.catalog()
    clock = ManualClock()
    store, bus, ledger = FakeStore(), FakeBus(), FakeLedger(clock)
    health, access, reuse = FakeHealth(), FakeAccess(), FakeReuseIndex()
    providers = {b.name: FakeProvider(b.name) for b in catalog.backends}
    rt = Runtime(settings=config, catalog=catalog, store=store, bus=bus,
                 outputs=LocalOutputStore(tmp), ledger=ledger, health=health, access=access,
                 reuse=reuse,
                 clock=clock, sleep=clock.sleep, monotonic=clock.monotonic,
                 _providers=dict(providers),
                 output_checks=threading.BoundedSemaphore(config.output_checks_at_once),
                 uploads=threading.BoundedSemaphore(config.uploads_at_once))
    return Fakes(rt, clock, store, bus, ledger, health, access, providers, reuse)

