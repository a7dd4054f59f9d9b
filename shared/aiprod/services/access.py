"""Who may call the API, how often, and what a retried POST returns.

- API keys: created by operators (`aiprod keys create`, which writes Firestore
  directly), checked on every /v1 request with one document read.
- Rate limit: requests per minute per key, a fixed window counted in Firestore
  (adapters.access), so every API instance shares it. The window is spread over
  shard counters (domain.ratelimit), so no document takes more than about one
  write a second, and the cap stays exact: a key never gets more than its limit
  in a minute (margin 0), and is never refused below it.
- Idempotency-Key: the first POST with a key stores a record naming the job id
  it will create and a fingerprint of its body; any later POST with the same key
  (concurrent ones too: the record is created once) gets that job id, so
  admission (idempotent per job id) returns the same job; another body is a 422.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import random
import re
import threading
import uuid

from aiprod.adapters.access import AccessStore, IdempotencyRecord
from aiprod.domain import ratelimit
from aiprod.domain.apikeys import ApiKey, Principal, hash_key, key_id_of, matches, new_key
from aiprod.domain.job import JobRequest
from aiprod.domain.problems import Problem
from aiprod.wiring.runtime import Runtime

IDEMPOTENCY_TTL = dt.timedelta(hours=24)
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_BEARER = re.compile(r"Bearer[ \t]+(\S+)[ \t]*", re.IGNORECASE)
REALM = 'Bearer realm="aiprod"'


def create_key(store: AccessStore, name: str, *, daily_budget_usd: float | None = None,
               rate_limit_rpm: int | None = None,
               now: dt.datetime | None = None) -> tuple[ApiKey, str]:
    """Store a new key's hash; return the record and the key (shown once, never stored)."""
    key_id, key = new_key()
    record = ApiKey(id=key_id, name=name, hash=hash_key(key),
                    created_at=now or dt.datetime.now(dt.UTC),
                    daily_budget_usd=daily_budget_usd, rate_limit_rpm=rate_limit_rpm)
    store.create_key(record)
    return record, key


def _unauthorized(slug: str, title: str, detail: str, error: str | None = None) -> Problem:
    challenge = REALM + (f', error="{error}"' if error else "")
    return Problem(401, slug, title, detail, headers={"WWW-Authenticate": challenge},
                   field="Authorization")


def authenticate(rt: Runtime, authorization: str | None) -> Principal:
    """The caller named by an `Authorization: Bearer <key>` header, or a 401."""
    if not authorization or not authorization.strip():
        raise _unauthorized("unauthenticated", "Authentication required",
                            "send your API key in the header `Authorization: Bearer <key>`")
    match = _BEARER.fullmatch(authorization.strip())
    if match is None:
        raise _unauthorized("unauthenticated", "Authentication required",
                            "the Authorization header must be `Bearer <key>`", "invalid_request")
    token = match.group(1)
    key_id = key_id_of(token)
    key = rt.access.get_key(key_id) if key_id else None
    if key is None or not matches(token, key.hash):
        raise _unauthorized("invalid-api-key", "The API key is not valid",
                            "this API key is unknown; check it, or ask for a new one",
                            "invalid_token")
    if key.revoked_at is not None:
        raise _unauthorized("revoked-api-key", "The API key was revoked",
                            f"this API key was revoked at {key.revoked_at.isoformat()}",
                            "invalid_token")
    return Principal(key_id=key.id, name=key.name, daily_budget_usd=key.daily_budget_usd,
                     rate_limit_rpm=key.rate_limit_rpm or rt.settings.default_rate_limit_rpm)


class RateLimiter:
    """Counts requests in the key's shard counters. Remembers, per API instance, the
    shards it saw over quota in the current minute: counts only grow within a
    window, so they stay full, and a key past its limit costs this instance at most
    one write per shard a minute, then none."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window: dt.datetime | None = None
        self._full: dict[str, set[int]] = {}  # key id -> shards over quota this window

    def _known_full(self, key_id: str, window: dt.datetime) -> frozenset[int]:
        with self._lock:
            if window != self._window:
                self._window, self._full = window, {}
            return frozenset(self._full.get(key_id, ()))

    def _mark_full(self, key_id: str, window: dt.datetime, shard: int) -> None:
        with self._lock:
            if window == self._window:
                self._full.setdefault(key_id, set()).add(shard)

    def admit(self, store: AccessStore, key_id: str, limit: int, window: dt.datetime,
              expires_at: dt.datetime) -> bool:
        """Take a slot in one shard of the key's minute; False once all are taken.

        Shards are tried in a random order (the load spreads evenly), skipping
        those known full. Each admitted request is one write on one shard."""
        quotas = ratelimit.shard_quotas(limit)
        order = list(range(len(quotas)))
        random.shuffle(order)
        for shard in order:
            if shard in self._known_full(key_id, window):  # learnt meanwhile, maybe
                continue
            if store.count_request(key_id, window, shard, expires_at) <= quotas[shard]:
                return True
            self._mark_full(key_id, window, shard)
        return False


LIMITER = RateLimiter()  # one per process: an API instance


def check_rate(rt: Runtime, principal: Principal, limiter: RateLimiter = LIMITER) -> None:
    """Count this request against the key's minute; a 429 past its limit."""
    now = rt.clock()
    window = now.astimezone(dt.UTC).replace(second=0, microsecond=0)
    resets = window + dt.timedelta(minutes=1)
    limit = principal.rate_limit_rpm
    if not limiter.admit(rt.access, principal.key_id, limit, window,
                         resets + dt.timedelta(minutes=1)):
        wait = max(1, math.ceil((resets - now).total_seconds()))
        raise Problem(429, "rate-limited", "Too many requests",
                      f"this API key may make {limit} requests a minute; the limit resets at "
                      f"{resets.isoformat()} (in {wait} s)",
                      headers={"Retry-After": str(wait), "RateLimit-Limit": str(limit),
                               "RateLimit-Remaining": "0", "RateLimit-Reset": str(wait)},
                      limit="requests_per_minute", limit_value=limit,
                      resets_at=resets.isoformat())


_BASE64_DATA_URI = re.compile(r"data:image/(?:png|jpeg);base64,[A-Za-z0-9+/]*={0,2}")
_HASH_SLICE_CHARS = 1024 * 1024


def fingerprint(request: JobRequest) -> str:
    """Equal for bodies that ask for the same job (key order and spacing aside): the
    SHA-256 of the request's canonical JSON. An image uploaded as a data: URI (up to
    27 MB of text) is hashed in place, a slice at a time, rather than copied into the
    canonical text and again into its bytes: the same digest, since JSON writes such
    a URI's characters as they are."""
    dumped = request.model_dump(mode="json")
    image = dumped.get("image_url")
    if not (isinstance(image, str) and len(image) > _HASH_SLICE_CHARS
            and _BASE64_DATA_URI.fullmatch(image)):
        canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
    marker = f"aiprod-image-{uuid.uuid4().hex}"
    before, after = json.dumps(dumped | {"image_url": marker}, sort_keys=True,
                               separators=(",", ":")).split(marker)
    digest = hashlib.sha256(before.encode())
    for at in range(0, len(image), _HASH_SLICE_CHARS):
        digest.update(image[at:at + _HASH_SLICE_CHARS].encode("ascii"))
    digest.update(after.encode())
    return digest.hexdigest()


def check_idempotency_key(value: str) -> str:
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise Problem(400, "invalid-idempotency-key", "The Idempotency-Key is not valid",
                      "an Idempotency-Key is 1 to 255 visible ASCII characters, e.g. a UUID",
                      field="Idempotency-Key")
    return value


def job_id_for(rt: Runtime, owner: str, idempotency_key: str | None,
               request: JobRequest) -> tuple[str, bool]:
    """The job id for this POST, and whether an earlier POST with the same key chose it."""
    if idempotency_key is None:
        return f"job_{uuid.uuid4().hex}", False
    now = rt.clock()
    record_id = hashlib.sha256(f"{owner}\n{idempotency_key}".encode()).hexdigest()
    wanted = IdempotencyRecord(owner=owner, fingerprint=fingerprint(request),
                               job_id=f"job_{uuid.uuid4().hex}", created_at=now,
                               expires_at=now + IDEMPOTENCY_TTL)
    stored = rt.access.claim_idempotency(record_id, wanted, now)
    if stored.fingerprint != wanted.fingerprint:
        raise Problem(422, "idempotency-key-reused", "The Idempotency-Key was used for "
                      "another request",
                      "this Idempotency-Key was first used with a different body (until "
                      f"{stored.expires_at.isoformat()}); use a new key for a new job",
                      field="Idempotency-Key", job_id=stored.job_id)
    return stored.job_id, stored.job_id != wanted.job_id
