"""Firestore documents that decide who gets in: hashed API keys, per-key request
counters, and Idempotency-Key records. Reads and writes; decides nothing.

- `api_keys/{id}`: the key's hash, name, limits, revocation (domain.apikeys).
- `rate_limits/{id}-{YYYYMMDDHHMM}-s{shard}`: fixed-window counters per key,
  minute and shard (domain.ratelimit spreads a key's minute over shards so no
  document takes more than about one write a second), each bumped with a
  server-side increment whose result comes back in the same write, so concurrent
  requests never lose a count and need no transaction. `expires_at` lets the TTL
  policy delete old windows.
- `idempotency_keys/{sha256(owner, key)}`: the first request's fingerprint and
  job id; created once (create fails for every later writer), replaced only
  once expired. `expires_at` (24 h) is the field the TTL policy deletes on
  (terraform/firestore.tf).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from google.api_core import exceptions as gexc
from google.cloud import firestore

from aiprod.adapters.retries import COMMIT_RETRY
from aiprod.domain.apikeys import ApiKey

API_KEYS = "api_keys"
RATE_LIMITS = "rate_limits"
IDEMPOTENCY_KEYS = "idempotency_keys"


@dataclass(frozen=True)
class IdempotencyRecord:
    owner: str
    fingerprint: str
    job_id: str
    created_at: dt.datetime
    expires_at: dt.datetime


class AccessStore(Protocol):
    def create_key(self, key: ApiKey) -> None: ...

    def get_key(self, key_id: str) -> ApiKey | None: ...

    def list_keys(self) -> list[ApiKey]: ...

    def revoke_key(self, key_id: str, at: dt.datetime) -> ApiKey | None: ...

    def count_request(self, key_id: str, window: dt.datetime, shard: int,
                      expires_at: dt.datetime) -> int:
        """Add one request to a shard of the key's window; that shard's count
        including it."""
        ...

    def claim_idempotency(self, record_id: str, record: IdempotencyRecord,
                          now: dt.datetime) -> IdempotencyRecord:
        """Store `record` unless a live one exists; the record that stands."""
        ...


class FirestoreAccess:
    def __init__(self, client: firestore.Client) -> None:
        self._client = client

    # -- API keys --------------------------------------------------------------------
    def create_key(self, key: ApiKey) -> None:
        self._client.collection(API_KEYS).document(key.id).create(key.model_dump())

    def get_key(self, key_id: str) -> ApiKey | None:
        snapshot = self._client.collection(API_KEYS).document(key_id).get()
        return ApiKey.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def list_keys(self) -> list[ApiKey]:
        keys = [ApiKey.model_validate(s.to_dict())
                for s in self._client.collection(API_KEYS).stream()]
        return sorted(keys, key=lambda k: k.created_at)

    def revoke_key(self, key_id: str, at: dt.datetime) -> ApiKey | None:
        ref = self._client.collection(API_KEYS).document(key_id)

        @firestore.transactional
        def run(transaction: firestore.Transaction) -> ApiKey | None:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                return None
            key = ApiKey.model_validate(snapshot.to_dict())
            if key.revoked_at is None:
                key = key.model_copy(update={"revoked_at": at})
                transaction.update(ref, {"revoked_at": at})
            return key

        revoked: ApiKey | None = run(self._client.transaction())
        return revoked

    # -- rate limits -----------------------------------------------------------------
    def count_request(self, key_id: str, window: dt.datetime, shard: int,
                      expires_at: dt.datetime) -> int:
        ref = self._client.collection(RATE_LIMITS).document(
            f"{key_id}-{window.strftime('%Y%m%d%H%M')}-s{shard}")
        batch = self._client.batch()
        batch.set(ref, {"count": firestore.Increment(1), "key_id": key_id, "shard": shard,
                        "window_start": window, "expires_at": expires_at}, merge=True)
        (result,) = batch.commit(retry=COMMIT_RETRY)
        return int(result.transform_results[0].integer_value)

    # -- idempotency -----------------------------------------------------------------
    def claim_idempotency(self, record_id: str, record: IdempotencyRecord,
                          now: dt.datetime) -> IdempotencyRecord:
        ref = self._client.collection(IDEMPOTENCY_KEYS).document(record_id)
        data = {"owner": record.owner, "fingerprint": record.fingerprint,
                "job_id": record.job_id, "created_at": record.created_at,
                "expires_at": record.expires_at}
        while True:
            try:
                ref.create(data)
                return record
            except gexc.AlreadyExists:
                pass
            snapshot = ref.get()
            if not snapshot.exists:
                continue  # deleted (TTL) in between: try again
            stored = snapshot.to_dict() or {}
            if stored["expires_at"] > now:
                return IdempotencyRecord(**{k: stored[k] for k in data})
            try:  # expired but not yet deleted by the TTL policy: replace it, once
                ref.update(data, option=self._client.write_option(
                    last_update_time=snapshot.update_time))
                return record
            except (gexc.FailedPrecondition, gexc.NotFound):
                continue
