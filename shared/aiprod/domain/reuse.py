"""Reuse of identical requests (`"reuse": "cached"`): what makes two requests the same
render, whether an earlier job's output may serve a new one, and how a job that
joined an identical one in flight ends with it. Pure: the index lives in
aiprod.adapters.reuse, the use case in aiprod.services.reuse.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable

from aiprod.domain.catalog import Backend
from aiprod.domain.job import Job, JobRequest, JobStatus
from aiprod.domain.pricing import estimate_usd

# Request fields that do not change the video rendered: they are not part of the key.
NOT_RENDERED = frozenset({"schema_version", "metadata", "webhook_url", "policy", "min_quality",
                          "max_cost_usd", "reuse", "image_url"})


def request_key(request: JobRequest, image_sha256: str | None, scope: str) -> str:
    """The canonical hash of what a request renders, within a scope (an API key's owner,
    or the whole deployment).

    Every request field that shapes the video is in it (prompt, duration, aspect
    ratio, audio, seed, and any such field added later, e.g. resolution); an uploaded
    image counts by its content hash, an image URL by the URL itself (its content is
    not fetched at admission). Routing preferences are not: a backend meeting the
    request's floor and ceiling is checked when an output is reused."""
    rendered = {name: value for name, value in request.model_dump(mode="json").items()
                if name not in NOT_RENDERED}
    rendered["image"] = (f"sha256:{image_sha256}" if image_sha256 is not None
                         else request.image_url)
    canonical = json.dumps({"scope": scope, "request": rendered}, sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def serves(backend: Backend, request: JobRequest) -> bool:
    """Whether a render on `backend` meets the request's quality floor and cost ceiling."""
    if backend.quality < request.min_quality:
        return False
    return request.max_cost_usd is None or (
        estimate_usd(backend, request.duration_seconds, request.audio, request.resolution)
        <= request.max_cost_usd)


def reusable(original: Job, request: JobRequest, backends: Iterable[Backend],
             now: dt.datetime, ttl: dt.timedelta) -> bool:
    """Whether `original`'s output may serve `request`: it SUCCEEDED within the TTL on a
    backend that meets the request's floor and ceiling."""
    if original.status is not JobStatus.SUCCEEDED or original.output is None:
        return False
    if not original.attempts or now - original.updated_at > ttl:
        return False
    rendered_on = original.attempts[-1].backend
    return any(b.name == rendered_on and serves(b, request) for b in backends)


def joinable(leader: Job, request: JobRequest, backends: Iterable[Backend]) -> bool:
    """Whether a request may attach to `leader`, still rendering: whichever backend of its
    plan renders it must meet the request's floor and ceiling."""
    if leader.status.terminal:
        return False
    by_name = {b.name: b for b in backends}
    return all(name in by_name and serves(by_name[name], request) for name in leader.plan)


def serve_from(job: Job, original: Job, now: dt.datetime) -> bool:
    """End `job` SUCCEEDED with `original`'s stored output, at no cost. False if it had
    already ended."""
    if job.status.terminal or original.output is None:
        return False
    job.status = JobStatus.SUCCEEDED
    job.output = original.output
    job.quality_score = original.quality_score
    job.cost_usd = 0.0
    job.reused_from = original.id
    if original.attempts:
        job.plan = [original.attempts[-1].backend]
    job.status_reason = f"served from job {original.id}, an identical request"
    job.updated_at = now
    return True


def end_with(job: Job, leader: Job, now: dt.datetime) -> bool:
    """End a job that joined `leader` in flight as `leader` ended: its output if it
    succeeded, else FAILED saying why (nothing was charged to this job either way)."""
    if job.status.terminal or not leader.status.terminal:
        return False
    if leader.status is JobStatus.SUCCEEDED:
        return serve_from(job, leader, now)
    job.status = JobStatus.FAILED
    job.status_reason = (f"the identical job {leader.id} it joined ended "
                         f"{leader.status.value}: {leader.status_reason}")
    job.updated_at = now
    return True


def orphaned(job: Job, now: dt.datetime) -> bool:
    """End a job whose leader is gone (never stored): FAILED, so nothing waits forever."""
    if job.status.terminal:
        return False
    job.status = JobStatus.FAILED
    job.status_reason = f"the identical job {job.reused_from} it joined does not exist"
    job.updated_at = now
    return True
