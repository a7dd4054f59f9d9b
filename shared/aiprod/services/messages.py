"""Message bodies on AIPROD's own topics."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class RenderMessage(BaseModel):
    """On render-<backend>: render attempt `attempt` of job `job_id` on `backend`, or
    (`action: cancel`) stop that attempt's provider task and settle what it cost. Only
    the backend's render deployment holds the provider's credentials, so a cancel
    decided elsewhere (the API, the dead-letter handler) is carried out there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    backend: str
    attempt: int
    action: Literal["render", "cancel"] = "render"

    def body(self) -> dict[str, Any]:
        """The published JSON: a render message stays exactly what it always was, so
        instances still running older code read it during a rollout."""
        return self.model_dump(exclude_defaults=True)


def intake_job_id(attributes: dict[str, str], message_id: str) -> str:
    """The job id of a message on the intake topic: stable per message (or per
    publisher idempotency key), so a redelivery admits once."""
    key = attributes.get("idempotency_key")
    scoped = (f"key:{attributes.get('publisher', '')}:{key}" if key
              else f"message:{message_id}")
    return "job_" + hashlib.sha256(f"pubsub:{scoped}".encode()).hexdigest()[:32]
