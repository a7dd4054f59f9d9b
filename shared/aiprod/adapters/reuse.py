"""The reuse index in Firestore: for each request key, the one job that renders it.

`render_cache/{key}` names the leader and its state. Electing a leader is a
document create (one winner however many identical requests race, with no
transaction to fail under contention); replacing a failed or expired entry is an
update guarded by its update time, so that too has one winner. Jobs that join a
leader in flight each create their own `render_cache/{key}/followers/{job id}`
document, so joining contends on nothing. Both collections carry `expires_at`,
the TTL field of terraform/firestore.tf.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from google.api_core import exceptions as gexc
from google.cloud import firestore

CACHE = "render_cache"
FOLLOWERS = "followers"


class EntryState(StrEnum):
    RENDERING = "RENDERING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # the leader ended without output: the next request leads anew


@dataclass(frozen=True)
class Entry:
    key: str
    leader: str  # the job id rendering (or that rendered) this key
    state: EntryState
    expires_at: dt.datetime

    def live(self, now: dt.datetime) -> bool:
        return self.state is not EntryState.FAILED and now < self.expires_at


class ReuseIndex(Protocol):
    def get(self, key: str) -> Entry | None: ...

    def lead(self, key: str, job_id: str, now: dt.datetime, expires_at: dt.datetime) -> Entry:
        """Make `job_id` the leader of `key` unless a live entry stands; the entry that
        stands after (compare its leader with `job_id`)."""
        ...

    def follow(self, key: str, job_id: str, expires_at: dt.datetime) -> None: ...

    def finish(self, key: str, leader: str, state: EntryState,
               expires_at: dt.datetime) -> bool: ...

    def followers(self, key: str) -> list[str]: ...


def _entry(key: str, data: dict[str, object]) -> Entry:
    expires_at = data["expires_at"]
    assert isinstance(expires_at, dt.datetime)
    return Entry(key, str(data["leader"]), EntryState(str(data["state"])), expires_at)


class FirestoreReuseIndex:
    def __init__(self, client: firestore.Client) -> None:
        self._client = client

    def _doc(self, key: str) -> firestore.DocumentReference:
        ref: firestore.DocumentReference = self._client.collection(CACHE).document(key)
        return ref

    def get(self, key: str) -> Entry | None:
        data = self._doc(key).get().to_dict()
        return _entry(key, data) if data else None

    def lead(self, key: str, job_id: str, now: dt.datetime, expires_at: dt.datetime) -> Entry:
        ref = self._doc(key)
        fields = {"leader": job_id, "state": EntryState.RENDERING.value, "led_at": now,
                  "expires_at": expires_at}
        while True:
            try:
                ref.create(fields)
                return Entry(key, job_id, EntryState.RENDERING, expires_at)
            except gexc.AlreadyExists:
                pass
            snapshot = ref.get()
            data = snapshot.to_dict()
            if not data:
                continue  # deleted (its TTL) meanwhile: create again
            standing = _entry(key, data)
            if standing.live(now) or standing.leader == job_id:
                return standing
            try:  # a failed or expired entry: take it over, once
                ref.update(fields, option=self._client.write_option(
                    last_update_time=snapshot.update_time))
                return Entry(key, job_id, EntryState.RENDERING, expires_at)
            except (gexc.FailedPrecondition, gexc.NotFound):
                continue  # someone else took it over (or it expired away): look again

    def follow(self, key: str, job_id: str, expires_at: dt.datetime) -> None:
        self._doc(key).collection(FOLLOWERS).document(job_id).set(
            {"job_id": job_id, "expires_at": expires_at})

    def finish(self, key: str, leader: str, state: EntryState,
               expires_at: dt.datetime) -> bool:
        """Record the leader's end, if it still leads (a later leader's entry stays)."""
        ref = self._doc(key)
        while True:
            snapshot = ref.get()
            data = snapshot.to_dict()
            if not data or data.get("leader") != leader:
                return False
            if data.get("state") == state.value:
                return True
            try:
                ref.update({"state": state.value, "expires_at": expires_at},
                           option=self._client.write_option(
                               last_update_time=snapshot.update_time))
                return True
            except (gexc.FailedPrecondition, gexc.NotFound):
                continue

    def followers(self, key: str) -> list[str]:
        return [doc.id for doc in self._doc(key).collection(FOLLOWERS).list_documents()]
