"""Webhooks: on each terminal state of a job that names a `webhook_url`, POST the
job there, signed the way Standard Webhooks (standardwebhooks.com) signs.

- `webhook-id`: the job event's id (`<job id>:<event type>`), the same on every
  retry, so a receiver that stores the ids it has handled processes each
  outcome once;
- `webhook-timestamp`: seconds since the epoch when this try was sent
  (receivers refuse old ones, which stops replays);
- `webhook-signature`: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
  keyed with the secret `whsec_<base64>` (AIPROD_WEBHOOK_SIGNING_KEY, from
  Secret Manager).

The notifier function gets every job event from its push subscription on
job-events. A failed delivery raises, so Pub/Sub redelivers with backoff (the
subscription's retry policy) and dead-letters after its delivery attempts. The
address is checked again before every try (aiprod.adapters.netsafety): a URL that has
become unsafe is dropped, not retried. See docs/webhooks.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import httpx

from aiprod.adapters import netsafety
from aiprod.domain.events import TERMINAL_EVENTS
from aiprod.observability.logs import log
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix, not a secret)
USER_AGENT = "AIPROD-Webhooks/1"
WEBHOOK_EVENTS = frozenset(e.value for e in TERMINAL_EVENTS.values())


class WebhookFailed(Exception):
    """The receiver did not take the delivery; Pub/Sub will try again."""


def secret_bytes(secret: str) -> bytes:
    """The key inside a `whsec_<base64>` secret."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError as error:
        raise ValueError("the webhook signing key must be whsec_ followed by base64") from error
    if len(key) < 24:
        raise ValueError("the webhook signing key must hold at least 24 random bytes")
    return key


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one delivery."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does (docs/webhooks.md has the same in a few lines)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    expected = sign(secret, lowered["webhook-id"], int(lowered["webhook-timestamp"]), body)
    return any(hmac.compare_digest(expected, candidate)
               for candidate in lowered["webhook-signature"].split())


def payload_of(event: dict[str, Any]) -> bytes:
    """The body a receiver gets: the event type, when it happened, and the job."""
    return json.dumps({"type": event["type"], "timestamp": event["at"], "data": event["job"]},
                      separators=(",", ":"), default=str).encode()


def deliver(rt: Runtime, event: dict[str, Any]) -> None:
    """Send one job event to its job's webhook, if it is a terminal one and there is one."""
    if event.get("type") not in WEBHOOK_EVENTS or not isinstance(event.get("job"), dict):
        return
    job: dict[str, Any] = event["job"]
    url = (job.get("request") or {}).get("webhook_url")
    if not url:
        return
    webhook_id = str(event["event_id"])
    secret = rt.settings.webhook_signing_key.get_secret_value()
    if not secret:
        raise WebhookFailed("AIPROD_WEBHOOK_SIGNING_KEY is not set: webhooks cannot be signed")
    host = urlsplit(url).hostname or "?"
    try:
        target = netsafety.check_url(url, allow_hosts=netsafety.parse_allow_hosts(
            rt.settings.webhook_allow_hosts))
    except netsafety.UnsafeURL as unsafe:
        log(logger, logging.WARNING, f"webhook dropped: {unsafe}", job_id=job.get("id"),
            webhook_id=webhook_id, webhook_host=host)
        return
    except netsafety.ResolverUnavailable as blip:  # DNS trouble: Pub/Sub retries
        raise WebhookFailed(str(blip)) from blip
    body = payload_of(event)
    timestamp = int(rt.clock().timestamp())
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(secret, webhook_id, timestamp, body)}
    try:
        response = netsafety.post(target, body, headers, timeout=rt.settings.webhook_timeout_s)
    except httpx.HTTPError as error:
        log(logger, logging.WARNING, f"webhook delivery failed: {type(error).__name__}",
            job_id=job.get("id"), webhook_id=webhook_id, webhook_host=host)
        raise WebhookFailed(f"{host} did not answer: {type(error).__name__}") from error
    if not response.is_success:
        log(logger, logging.WARNING, f"webhook delivery refused: HTTP {response.status_code}",
            job_id=job.get("id"), webhook_id=webhook_id, webhook_host=host,
            status_code=response.status_code)
        raise WebhookFailed(f"{host} answered HTTP {response.status_code}"
                            + (" (redirects are not followed)"
                               if response.is_redirect else ""))
    log(logger, logging.INFO, "webhook delivered", job_id=job.get("id"),
        webhook_id=webhook_id, webhook_host=host, status_code=response.status_code)
