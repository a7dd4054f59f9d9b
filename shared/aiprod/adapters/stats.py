"""Backend statistics counters in Firestore: backend_stats/{backend}__{bucket}__{shard}.

Each finished attempt adds server-side increments (firestore.Increment) to one of
`shards` documents of its backend's current time bucket, picked at random, so a
burst of attempts spreads over several documents instead of one hot document
(Firestore sustains about one write a second per document:
https://cloud.google.com/firestore/docs/best-practices#high_read_write_and_delete_rates_to_a_narrow_document_range),
and nothing is read before it is written. Reading a window is one query on the
`bucket` field; the caller sums the counters (aiprod.domain.stats).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from aiprod.domain.stats import add

STATS = "backend_stats"
_META = ("backend", "bucket", "shard", "expires_at")


class StatsStore(Protocol):
    """Where attempt counters accumulate: the seam MemoryStats stands behind in unit
    tests and in the replay bench (FirestoreStats below is the real one)."""

    def add(self, backend: str, bucket: str, shard: int, counters: Mapping[str, float],
            expires_at: dt.datetime) -> None:
        """Add `counters` into one shard of a bucket (`expires_at`: when the document
        may go, its bucket having left every window; Firestore's TTL policy deletes it)."""
        ...

    def since(self, bucket: str, backends: Iterable[str],
              ) -> dict[str, dict[str, dict[str, float]]]:
        """Each backend's counters per bucket (shards summed), from `bucket` on."""
        ...


class MemoryStats:
    """StatsStore in memory, with the Firestore store's semantics."""

    def __init__(self) -> None:
        self.docs: dict[tuple[str, str, int], dict[str, float]] = {}
        self._lock = threading.Lock()

    def add(self, backend: str, bucket: str, shard: int, counters: Mapping[str, float],
            expires_at: dt.datetime) -> None:
        with self._lock:
            add(self.docs.setdefault((backend, bucket, shard), {}), counters)

    def since(self, bucket: str, backends: Iterable[str],
              ) -> dict[str, dict[str, dict[str, float]]]:
        totals: dict[str, dict[str, dict[str, float]]] = {name: {} for name in backends}
        with self._lock:
            for (backend, at, _), counters in self.docs.items():
                if backend in totals and at >= bucket:
                    add(totals[backend].setdefault(at, {}), counters)
        return totals


class FirestoreStats:
    def __init__(self, client: firestore.Client) -> None:
        self._stats = client.collection(STATS)

    def add(self, backend: str, bucket: str, shard: int, counters: Mapping[str, float],
            expires_at: dt.datetime) -> None:
        fields: dict[str, Any] = {name: firestore.Increment(value)
                                  for name, value in counters.items()}
        fields |= {"backend": backend, "bucket": bucket, "shard": shard,
                   "expires_at": expires_at}
        self._stats.document(f"{backend}__{bucket}__{shard}").set(fields, merge=True)

    def since(self, bucket: str, backends: Iterable[str],
              ) -> dict[str, dict[str, dict[str, float]]]:
        totals: dict[str, dict[str, dict[str, float]]] = {name: {} for name in backends}
        query = self._stats.where(filter=FieldFilter("bucket", ">=", bucket))
        for snapshot in query.stream():
            data = snapshot.to_dict() or {}
            backend, at = data.get("backend"), data.get("bucket")
            if backend in totals and isinstance(at, str):
                add(totals[backend].setdefault(at, {}),
                    {k: v for k, v in data.items() if k not in _META})
        return totals
