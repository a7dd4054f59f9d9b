"""The budget ledger in Firestore: exact caps without a transaction per reservation.

A transaction on one hot document serialises every job and fails under bursts
(the Python client gives up after 5 attempts; see docs/budget-ledger.md). So a
reservation is an atomic batch of server-side increments: it creates the
reservation's own document and adds its amount to `held` on every scope it
counts against (the day, the API key), reading the counters back in the same
write. If any scope would go over its limit (counting every hold, even those
about to be given back), the amount is given back (`refunded`) and the caller
goes no further; otherwise it is marked `granted` and the caller may spend it.
So money committed to provider calls never exceeds a limit.

A caller refused only because others' refused amounts were in the counter for
a moment must not be turned away: it re-reads `granted - returned` (money that
really went ahead, never overstated) and tries again unless even that leaves
no room. Settling and releasing change the reservation document (guarded by
its update time) in the same batch as the counters, so each happens once.

Counters per scope: held (every hold), refunded (holds given back at once),
granted (holds that went ahead), returned (unspent parts of granted holds),
spent (settled costs). Committed money = granted - returned.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from aiprod.domain.budget import DayFigures, fits

DAYS = "budget_days"
RESERVATIONS = "reservations"
KEYS = "keys"
SPEND_HOURS = "spend_hours"  # budget_days/{day}/spend_hours/{scope}: spent per UTC hour
GLOBAL = "global"
RESERVATION_TTL = dt.timedelta(days=8)
COUNTERS = ("granted", "held", "refunded", "returned", "spent")
# The watchdog's query of old holds (FirestoreLedger.held_before): an equality on
# state with a range and order on created_at, which production Firestore serves only
# from the composite index of terraform/firestore.tf (tests/infra pins the two).
HELD_QUERY_FIELDS = ("state", "created_at")


def _hour_of(day: str, at: dt.datetime) -> int:
    """The UTC hour of `day` a settlement counts in: a late settlement of an earlier
    day's hold counts in that day's last hour."""
    return at.hour if at.date().isoformat() == day else 23


def _gross(counters: dict[str, int]) -> int:
    """Every hold not yet given back, including ones about to be: never understated."""
    return counters["held"] - counters["refunded"] - counters["returned"]


class ReservationState(StrEnum):
    HELD = "HELD"
    REFUSED = "REFUSED"
    SETTLED = "SETTLED"
    RELEASED = "RELEASED"


@dataclass(frozen=True)
class Scope:
    """A counter a reservation is checked against: "global" or "key:<id>"."""

    name: str
    limit_micros: int


@dataclass(frozen=True)
class _Written:
    """What a guarded ledger write left: the counters after it, and the reservation's
    update time (the precondition of the next write to it)."""

    counters: dict[str, dict[str, int]]
    version: dt.datetime


class Ledger(Protocol):
    def reserve(self, day: str, reservation_id: str, micros: int, scopes: Sequence[Scope],
                **labels: str) -> bool: ...

    def settle(self, day: str, reservation_id: str, actual_micros: int) -> bool: ...

    def release(self, day: str, reservation_id: str) -> bool: ...

    def figures(self, day: str, scope: Scope, warn_micros: int) -> DayFigures: ...

    def first_crossing(self, day: str, threshold: str) -> bool: ...

    def held(self, day: str) -> list[Held]: ...

    def held_before(self, day: str, before: dt.datetime, limit: int,
                    cursor: object | None = None) -> tuple[list[Held], object | None]:
        """The day's holds still HELD that were taken before `before`, oldest first,
        `limit` at a time; pass the returned cursor back for the next page (None: no
        more)."""
        ...

    def hourly_spent(self, day: str, scope: str) -> list[int]: ...


@dataclass(frozen=True)
class Held:
    """A reservation still held: money set aside for a render not yet settled."""

    day: str
    reservation_id: str
    job_id: str
    created_at: dt.datetime


class FirestoreLedger:
    def __init__(self, client: firestore.Client, recheck_attempts: int = 40) -> None:
        self._client = client
        self._recheck_attempts = recheck_attempts

    # -- paths ------------------------------------------------------------------------
    def _counter(self, day: str, scope: str) -> firestore.DocumentReference:
        day_doc: firestore.DocumentReference = self._client.collection(DAYS).document(day)
        if scope == GLOBAL:
            return day_doc
        key_doc: firestore.DocumentReference = day_doc.collection(KEYS).document(
            scope.removeprefix("key:"))
        return key_doc

    def _reservation(self, day: str, reservation_id: str) -> firestore.DocumentReference:
        ref: firestore.DocumentReference = (self._client.collection(DAYS).document(day)
                                            .collection(RESERVATIONS).document(reservation_id))
        return ref

    # -- reserve ----------------------------------------------------------------------
    def reserve(self, day: str, reservation_id: str, micros: int, scopes: Sequence[Scope],
                **labels: str) -> bool:
        """Hold `micros` against every scope, or nothing. Idempotent per reservation id."""
        reservation = self._reservation(day, reservation_id)
        now = dt.datetime.now(dt.UTC)
        written: _Written | None
        try:
            written = self._write(reservation, None, {
                "state": ReservationState.HELD.value, "granted": False, "micros": micros,
                "scopes": [s.name for s in scopes], "created_at": now,
                "expires_at": now + RESERVATION_TTL, **labels}, day, scopes, held=micros)
        except gexc.AlreadyExists:
            data = reservation.get().to_dict() or {}
            if data.get("state") != ReservationState.REFUSED.value:
                # Still held and granted: the same hold (a retried call). Closed: spent.
                return bool(data.get("granted")) and data.get("state") == (
                    ReservationState.HELD.value)
            written = None  # refused before: look again below
        for attempt in range(self._recheck_attempts):
            if written is not None:
                try:
                    if all(fits(_gross(written.counters[s.name]), s.limit_micros)
                           for s in scopes):
                        self._write(reservation, written.version, {"granted": True},
                                    day, scopes, granted=micros)
                        return True
                    self._write(reservation, written.version,
                                {"state": ReservationState.REFUSED.value},
                                day, scopes, refunded=micros)
                except gexc.FailedPrecondition:
                    return False  # closed elsewhere meanwhile (and refunded there)
            if any(self._granted_net(day, s.name) + micros > s.limit_micros for s in scopes):
                return False  # even the money that surely went ahead leaves no room
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            written = self._rehold(reservation, day, micros, scopes)
        return False

    def _rehold(self, reservation: firestore.DocumentReference, day: str, micros: int,
                scopes: Sequence[Scope]) -> _Written | None:
        snapshot = reservation.get()
        if (snapshot.to_dict() or {}).get("state") != ReservationState.REFUSED.value:
            return None
        try:
            return self._write(reservation, snapshot.update_time,
                               {"state": ReservationState.HELD.value}, day, scopes, held=micros)
        except gexc.FailedPrecondition:
            return None

    def _write(self, reservation: firestore.DocumentReference, version: dt.datetime | None,
               change: dict[str, Any], day: str, scopes: Sequence[Scope],
               spent_hour: int | None = None, **increments: int) -> _Written:
        """One atomic batch: `change` on the reservation (created if `version` is None,
        else updated only if its update time is still `version`) and `increments` on
        each scope's counters.

        The client retries a Commit whose answer was lost (UNAVAILABLE; see
        docs/budget-ledger.md), and a batch of increments applied twice would count
        twice. The precondition makes a replay fail as a whole, and the fresh `op` id
        written with the change tells "our first try landed" (go on, with the
        counters read now) from a write by someone else (AlreadyExists or
        FailedPrecondition, raised to the caller)."""
        op = uuid.uuid4().hex
        batch = self._client.batch()
        if version is None:
            batch.create(reservation, change | {"op": op})
        else:
            batch.update(reservation, change | {"op": op},
                         option=self._client.write_option(last_update_time=version))
        if spent_hour is not None and increments.get("spent"):
            # What settled this hour, per scope (the spend forecast's history), in the
            # same atomic batch: written once with the settlement, or not at all.
            for scope in scopes:
                batch.set(self._client.collection(DAYS).document(day)
                          .collection(SPEND_HOURS).document(scope.name),
                          {f"h{spent_hour:02d}": firestore.Increment(increments["spent"])},
                          merge=True)
        try:
            counters, written_at = self._commit_counters(batch, day, scopes, **increments)
            return _Written(counters, written_at)
        except (gexc.AlreadyExists, gexc.FailedPrecondition):
            snapshot = reservation.get()
            if (snapshot.to_dict() or {}).get("op") != op:
                raise
            # Our first try landed; its replay was refused. Counters read after our
            # write count every hold that our write would have seen, so the check
            # against them is at least as strict.
            return _Written(self._read_counters(day, scopes), snapshot.update_time)

    def _commit_counters(self, batch: firestore.WriteBatch, day: str, scopes: Sequence[Scope],
                         **increments: int) -> tuple[dict[str, dict[str, int]], dt.datetime]:
        """Add to each scope's counters in `batch`; return every counter of every scope
        as it stands after this write, and the update time of the batch's first write."""
        names = sorted(COUNTERS)  # transform results come in field-path order
        for scope in scopes:
            batch.set(self._counter(day, scope.name),
                      {name: firestore.Increment(increments.get(name, 0)) for name in names}
                      | {"day": day, "scope": scope.name}, merge=True)
        results = batch.commit()
        counters = {scope.name: {name: int(value.integer_value)
                                 for name, value in zip(names, result.transform_results,
                                                        strict=True)}
                    for scope, result in zip(scopes, results[-len(scopes):], strict=True)}
        return counters, results[0].update_time

    def _read_counters(self, day: str, scopes: Sequence[Scope]) -> dict[str, dict[str, int]]:
        refs = {self._counter(day, scope.name).path: scope.name for scope in scopes}
        read = {refs[snapshot.reference.path]: snapshot.to_dict() or {}
                for snapshot in self._client.get_all(
                    [self._counter(day, scope.name) for scope in scopes])}
        return {name: {counter: int(read.get(name, {}).get(counter, 0)) for counter in COUNTERS}
                for name in refs.values()}

    def _granted_net(self, day: str, scope: str) -> int:
        data = self._counter(day, scope).get().to_dict() or {}
        return int(data.get("granted", 0)) - int(data.get("returned", 0))

    # -- settle / release ---------------------------------------------------------------
    def settle(self, day: str, reservation_id: str, actual_micros: int) -> bool:
        """Charge the actual cost; give back the rest. False if already settled or released."""
        return self._close(day, reservation_id, ReservationState.SETTLED, actual_micros)

    def release(self, day: str, reservation_id: str) -> bool:
        """Give the whole reservation back (the render failed or never ran)."""
        return self._close(day, reservation_id, ReservationState.RELEASED, 0)

    def _close(self, day: str, reservation_id: str, state: ReservationState,
               spent: int) -> bool:
        reservation = self._reservation(day, reservation_id)
        while True:
            snapshot = reservation.get()
            data = snapshot.to_dict() or {}
            if data.get("state") != ReservationState.HELD.value:
                return False
            micros = int(data["micros"])
            scopes = [Scope(name, 0) for name in data["scopes"]]
            if data.get("granted"):
                changes = {"returned": micros - spent, "spent": spent}
            else:  # its holder died before going ahead: nothing was spent
                changes = {"refunded": micros}
            closed_at = dt.datetime.now(dt.UTC)
            try:
                self._write(reservation, snapshot.update_time,
                            {"state": state.value, "spent": spent, "closed_at": closed_at},
                            day, scopes, spent_hour=_hour_of(day, closed_at), **changes)
            except gexc.FailedPrecondition:
                continue  # changed under us: look again
            return True

    def first_crossing(self, day: str, threshold: str) -> bool:
        """True for exactly one caller per day and threshold (a create-once marker)."""
        marker = self._client.collection(DAYS).document(day).collection("alerts").document(
            threshold)
        op = uuid.uuid4().hex  # a replayed create (lost answer) is still our crossing
        try:
            marker.create({"at": dt.datetime.now(dt.UTC), "op": op})
        except gexc.AlreadyExists:
            return (marker.get().to_dict() or {}).get("op") == op
        return True

    def held(self, day: str) -> list[Held]:
        """Every reservation of the day still HELD, in one read: one per render in
        flight and one per queued job (admission's hold), so thousands under a
        backlog. For tests and inspection; the watchdog pages with `held_before`."""
        query = (self._client.collection(DAYS).document(day).collection(RESERVATIONS)
                 .where(filter=FieldFilter("state", "==", ReservationState.HELD.value)))
        return [Held(day, s.id, str(data.get("job_id", "")), data["created_at"])
                for s in query.stream() if (data := s.to_dict() or {})]

    def held_before(self, day: str, before: dt.datetime, limit: int,
                    cursor: object | None = None) -> tuple[list[Held], object | None]:
        # An equality on state with a range and order on created_at: production
        # Firestore serves it only from the composite index (state, created_at) in
        # terraform/firestore.tf; the emulator needs none (tests/infra pins it).
        state, created = HELD_QUERY_FIELDS
        query = (self._client.collection(DAYS).document(day).collection(RESERVATIONS)
                 .where(filter=FieldFilter(state, "==", ReservationState.HELD.value))
                 .where(filter=FieldFilter(created, "<", before))
                 .order_by(created).limit(limit))
        if isinstance(cursor, firestore.DocumentSnapshot):
            query = query.start_after(cursor)
        snapshots = list(query.stream())
        holds = [Held(day, s.id, str(data.get("job_id", "")), data[created])
                 for s in snapshots if (data := s.to_dict() or {})]
        return holds, (snapshots[-1] if len(snapshots) == limit else None)

    def hourly_spent(self, day: str, scope: str) -> list[int]:
        """What settled in each UTC hour of `day` against `scope` (24 figures, micros)."""
        data = (self._client.collection(DAYS).document(day).collection(SPEND_HOURS)
                .document(scope).get().to_dict() or {})
        return [int(data.get(f"h{hour:02d}", 0)) for hour in range(24)]

    # -- figures -----------------------------------------------------------------------
    def figures(self, day: str, scope: Scope, warn_micros: int) -> DayFigures:
        data = self._counter(day, scope.name).get().to_dict() or {}
        return DayFigures(day=day, limit_micros=scope.limit_micros, warn_micros=warn_micros,
                          granted_micros=int(data.get("granted", 0)),
                          returned_micros=int(data.get("returned", 0)),
                          spent_micros=int(data.get("spent", 0)))
