"""Message bodies on AIPROD's own topics."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RenderMessage(BaseModel):
    """On render-<backend>: render attempt `attempt` of job `job_id` on `backend`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    backend: str
    attempt: int
