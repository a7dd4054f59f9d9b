"""API keys: their format, how they are hashed, and who a key makes the caller.

A key is `aiprod_<id>_<secret>`: `id` is 12 hex characters, public, and names
the key's document (so checking a key is one document read); `secret` is 32
random bytes (256 bits, URL-safe base64). Firestore keeps the SHA-256 of the
whole key, never the key: a fast hash is the right tool for a random secret this
long (no dictionary or brute force can reach it), unlike for a password.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

KEY_PREFIX = "aiprod_"
_KEY = re.compile(r"aiprod_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
KEY_ID = re.compile(r"[0-9a-f]{12}")


def new_key() -> tuple[str, str]:
    """A fresh (key id, key); show the key once, store only its hash."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The id a well-formed key names, or None."""
    match = _KEY.fullmatch(key)
    return match.group(1) if match else None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), stored_hash)


class ApiKey(BaseModel):
    """The document `api_keys/{id}`."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=KEY_ID.pattern)
    name: str = Field(min_length=1, max_length=100)
    hash: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None
    daily_budget_usd: float | None = Field(default=None, gt=0)
    rate_limit_rpm: int | None = Field(default=None, ge=1)

    @property
    def owner(self) -> str:
        return owner_of(self.id)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public(self) -> dict[str, object]:
        """What `aiprod keys list` shows: never the hash."""
        return {"id": self.id, "name": self.name, "prefix": f"{KEY_PREFIX}{self.id}_",
                "created_at": self.created_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
                "daily_budget_usd": self.daily_budget_usd, "rate_limit_rpm": self.rate_limit_rpm}


def owner_of(key_id: str) -> str:
    """The owner recorded on a job submitted with this key."""
    return f"key:{key_id}"


def key_of_owner(owner: str) -> str | None:
    """The key id behind a job's owner, if a key submitted it."""
    return owner.removeprefix("key:") if owner.startswith("key:") else None


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    key_id: str
    name: str
    rate_limit_rpm: int
    daily_budget_usd: float | None

    @property
    def owner(self) -> str:
        return owner_of(self.key_id)
