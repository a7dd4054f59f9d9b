"""The public shape of a job (GET /v1/jobs/{id} and terminal events)."""

from __future__ import annotations

from typing import Any

from aiprod.domain.job import Job


def public_job(job: Job, download_url: str | None = None) -> dict[str, Any]:
    attempts = [
        {
            "backend": a.backend,
            "status": a.status.value,
            "provider_task_id": a.provider_task_id,
            "started_at": a.started_at.isoformat(),
            "ended_at": a.ended_at.isoformat() if a.ended_at else None,
            "error": a.error.model_dump(mode="json", by_alias=True) if a.error else None,
            "estimated_cost_usd": a.estimated_cost_usd,
            "cost_usd": a.cost_usd,
        }
        for a in job.attempts
    ]
    output = None
    if job.output is not None:
        output = job.output.model_dump(mode="json") | {"download_url": download_url}
    return {
        "id": job.id,
        "status": job.status.value,
        "status_reason": job.status_reason or None,
        "plan": job.plan,
        "estimated_cost_usd": job.estimated_cost_usd,
        "cost_usd": job.cost_usd,
        "reused_from": job.reused_from,
        "attempts": attempts,
        "output": output,
        "quality_score": job.quality_score,
        # An upload is shown by its reference (request.image_url is its uri), never its bytes.
        "request": job.request.model_dump(mode="json", exclude_none=True),
        "input_image": job.input_image.model_dump(mode="json") if job.input_image else None,
        "metadata": job.request.metadata,
        "correlation_id": job.correlation_id,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
    }
