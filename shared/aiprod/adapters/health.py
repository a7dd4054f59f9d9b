"""Backend health documents in Firestore (backend_health/{backend}), shared by every
instance, and the call slots that bound calls of unknown outcome while closed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, Protocol

from google.api_core import exceptions as gexc
from google.cloud import firestore

from aiprod.domain.health import CircuitState, Health, opens_on_strike

HEALTH = "backend_health"
SLOTS = "slots"


def _health(backend: str, data: dict[str, Any]) -> Health:
    return Health(backend=backend, state=CircuitState(data.get("state", "closed")),
                  strikes=int(data.get("strikes", 0)), opened_at=data.get("opened_at"),
                  probe_owner=data.get("probe_owner"),
                  probe_claimed_at=data.get("probe_claimed_at"))


class HealthStore(Protocol):
    """What the services need of backend health: the seam a fake stands behind in
    unit tests (FirestoreHealth below is the real one)."""

    def get(self, backend: str) -> Health: ...

    def all(self, backends: Iterable[str]) -> dict[str, Health]: ...

    def claim_probe(self, backend: str, caller: str, now: dt.datetime,
                    cooldown: dt.timedelta, probe_timeout: dt.timedelta) -> bool: ...

    def take_slot(self, backend: str, caller: str, slots: int, now: dt.datetime,
                  lease: dt.timedelta) -> str | None: ...

    def release_probe(self, backend: str, caller: str) -> None: ...

    def release_slot(self, backend: str, slot: str) -> None: ...

    def fail_slot(self, backend: str, slot: str) -> None: ...

    def record_success(self, backend: str) -> bool: ...

    def record_failure(self, backend: str, now: dt.datetime, threshold: int) -> bool: ...


class FirestoreHealth:
    def __init__(self, client: firestore.Client) -> None:
        self._client = client
        self._health = client.collection(HEALTH)

    def get(self, backend: str) -> Health:
        return _health(backend, self._health.document(backend).get().to_dict() or {})

    def all(self, backends: Iterable[str]) -> dict[str, Health]:
        refs = [self._health.document(b) for b in backends]
        found = {s.id: _health(s.id, s.to_dict() or {}) for s in self._client.get_all(refs)}
        return {ref.id: found.get(ref.id, Health(ref.id)) for ref in refs}

    def claim_probe(self, backend: str, caller: str, now: dt.datetime,
                    cooldown: dt.timedelta, probe_timeout: dt.timedelta) -> bool:
        """Half-open the circuit for this caller alone (a transaction: one winner)."""
        from aiprod.domain.health import Gate, gate

        ref = self._health.document(backend)

        @firestore.transactional
        def claim(transaction: firestore.Transaction) -> bool:
            health = _health(backend, ref.get(transaction=transaction).to_dict() or {})
            if health.state is CircuitState.CLOSED:
                return False
            if gate(health, now, cooldown, probe_timeout, caller) is not Gate.PROBE:
                return False
            transaction.set(ref, {"state": CircuitState.HALF_OPEN.value, "probe_owner": caller,
                                  "probe_claimed_at": now}, merge=True)
            return True

        try:
            won: bool = claim(self._client.transaction(max_attempts=10))
        except ValueError:  # the transaction lost every retry to other claimants
            return False
        return won

    # -- call slots --------------------------------------------------------------------
    def take_slot(self, backend: str, caller: str, slots: int, now: dt.datetime,
                  lease: dt.timedelta) -> str | None:
        """One of `slots` call slots, held until released or the lease runs out."""
        collection = self._health.document(backend).collection(SLOTS)
        for index in range(slots):
            ref = collection.document(str(index))
            try:
                ref.create({"owner": caller, "expires_at": now + lease})
                return str(ref.id)
            except gexc.AlreadyExists:
                snapshot = ref.get()
                data = snapshot.to_dict() or {}
                if data.get("owner") == caller and not data.get("failed"):
                    return str(ref.id)
                if snapshot.exists and data.get("expires_at") and data["expires_at"] < now:
                    try:  # a crashed caller's slot: free it, then try it again
                        ref.delete(option=self._client.write_option(
                            last_update_time=snapshot.update_time))
                        ref.create({"owner": caller, "expires_at": now + lease})
                        return str(ref.id)
                    except (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.NotFound):
                        continue
        return None

    def release_probe(self, backend: str, caller: str) -> None:
        """A probe that met no verdict on health (a 429, a refusal): reopen the circuit,
        its cool-down already over, so the next caller probes instead of waiting out
        this probe's lease."""
        ref = self._health.document(backend)
        health = _health(backend, ref.get().to_dict() or {})
        if health.state is CircuitState.HALF_OPEN and health.probe_owner == caller:
            ref.set({"state": CircuitState.OPEN.value, "probe_owner": None}, merge=True)

    def release_slot(self, backend: str, slot: str) -> None:
        self._health.document(backend).collection(SLOTS).document(slot).delete()

    def fail_slot(self, backend: str, slot: str) -> None:
        """Keep the slot taken: a failed call counts until the backend recovers."""
        self._health.document(backend).collection(SLOTS).document(slot).update({"failed": True})

    # -- outcomes ----------------------------------------------------------------------
    def record_success(self, backend: str) -> bool:
        """Close the circuit and clear strikes; True if that changed anything."""
        ref = self._health.document(backend)
        health = _health(backend, ref.get().to_dict() or {})
        if health.state is CircuitState.CLOSED and health.strikes == 0:
            return False
        ref.set({"state": CircuitState.CLOSED.value, "strikes": 0, "probe_owner": None,
                 "opened_at": None}, merge=True)
        failed = ref.collection(SLOTS).where(filter=firestore.FieldFilter("failed", "==", True))
        for slot in failed.stream():
            slot.reference.delete()
        return health.state is not CircuitState.CLOSED

    def record_failure(self, backend: str, now: dt.datetime, threshold: int) -> bool:
        """Count a strike; open the circuit at the threshold or when a probe fails.
        True if this call opened it."""
        ref = self._health.document(backend)
        result = ref.set({"strikes": firestore.Increment(1)}, merge=True)
        strikes = int(result.transform_results[0].integer_value)
        health = _health(backend, ref.get().to_dict() or {})
        if opens_on_strike(health, strikes, threshold):
            ref.set({"state": CircuitState.OPEN.value, "opened_at": now, "probe_owner": None},
                    merge=True)
            return True
        return False
