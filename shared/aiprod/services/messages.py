"""Message bodies on AIPROD's own topics."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict


class RenderMessage(BaseModel):
    """On render-<backend>: render attempt `attempt` of job `job_id` on `backend`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    backend: str
    attempt: int


def intake_job_id(attributes: dict[str, str], message_id: str) -> str:
    """The job id of a message on the intake topic: stable per message (or per
    publisher idempotency key), so a redelivery admits once."""
    key = attributes.get("idempotency_key")
    scoped = (f"key:{attributes.get('publisher', '')}:{key}" if key
              else f"message:{message_id}")
    return "job_" + hashlib.sha256(f"pubsub:{scoped}".encode()).hexdigest()[:32]
