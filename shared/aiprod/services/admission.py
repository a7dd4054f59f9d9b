"""Admission: the one path every job takes in, over HTTP or from the intake topic."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from aiprod.adapters import images, netsafety
from aiprod.adapters.providers.base import ProviderError
from aiprod.domain import budget as budget_policy
from aiprod.domain import health as health_policy
from aiprod.domain import routing
from aiprod.domain.events import EventType
from aiprod.domain.job import (
    Funding,
    InputImage,
    Job,
    JobRequest,
    JobStatus,
    Reuse,
    staged_key,
)
from aiprod.observability.logs import log
from aiprod.services import budget, reuse, stats, telemetry
from aiprod.services.publishing import dispatch, emit
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)


class InvalidUpload(Exception):
    """The image uploaded as a data: URI is not a base64 PNG or JPEG: the caller's to fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Admitted:
    job: Job
    created: bool  # False: this job id already existed (a retried submission)


def quote(rt: Runtime, request: JobRequest,
          owner: str | None = None) -> routing.Plan | routing.Rejection:
    """The plan for `request` given every backend's health, today's budget and, for
    a caller whose API key has one, that key's daily budget."""
    now = rt.clock()
    healthy = {name: health_policy.healthy(state, now, rt.settings.circuit_cooldown)
               for name, state in rt.health.all(rt.catalog.names).items()}
    left_micros = budget.today(rt).left_micros
    own = budget.key_today(rt, owner) if owner else None
    if own is not None:
        left_micros = min(left_micros, own.left_micros)
    return routing.plan(request, rt.catalog, healthy, budget_policy.to_usd(left_micros),
                        stats.observed(rt), rt.settings.routing_min_samples)


def url_problem(rt: Runtime, request: JobRequest) -> tuple[str, str] | None:
    """The field and reason of a URL AIPROD may not call (aiprod.adapters.netsafety): the
    webhook_url, or an https image_url (checked again when it is fetched)."""
    if request.image_url is not None and request.image_url.startswith("gs://"):
        bucket = request.image_url.removeprefix("gs://").partition("/")[0]
        if bucket not in netsafety.parse_allow_hosts(rt.settings.image_buckets):
            return "image_url", (f"gs://{bucket} is not a bucket AIPROD may read images from "
                                 "(an operator lists them in AIPROD_IMAGE_BUCKETS)")
    urls = [("webhook_url", request.webhook_url, rt.settings.webhook_allow_hosts)]
    if request.image_url is not None and request.image_url.startswith(("https://", "http://")):
        urls.append(("image_url", request.image_url, rt.settings.image_allow_hosts))
    for field, url, allowed in urls:
        if url is None:
            continue
        try:
            netsafety.check_url(url, allow_hosts=netsafety.parse_allow_hosts(allowed))
        except netsafety.UnsafeURL as unsafe:
            return field, str(unsafe)
        except netsafety.ResolverUnavailable:
            continue  # cannot judge it now; it is checked again before any request
    return None


def admit(rt: Runtime, request: JobRequest, *, job_id: str, owner: str,
          correlation_id: str | None = None) -> Admitted | routing.Rejection:
    """Validate against the catalog, plan the route, store the job and dispatch it.

    Idempotent for a given job_id: a retry finds the stored job and makes sure
    it was dispatched, so a crash between storing and publishing loses nothing.
    """
    existing = rt.store.get(job_id)
    if existing is not None:
        ensure_dispatched(rt, existing)
        return Admitted(existing, created=False)

    reuse_key = reuse.key_for(rt, request, owner) if request.reuse is Reuse.CACHED else None
    decision = quote(rt, request, owner)
    stats.note_quality_changes(rt, decision, job_id)
    input_image = None
    if ((reuse_key is not None or not isinstance(decision, routing.Rejection))
            and request.image_url is not None and request.image_url.startswith("data:")):
        input_image = stage_upload(rt, job_id, request.image_url)
    now = rt.clock()
    job = Job(id=job_id, owner=owner, request=request.model_copy(
                  update={"image_url": input_image.uri}) if input_image else request,
              plan=[], status=JobStatus.QUEUED, estimated_cost_usd=0.0,
              input_image=input_image, correlation_id=correlation_id, reuse_key=reuse_key,
              created_at=now, updated_at=now)
    if reuse_key is not None:  # an identical request's output, before any money is held
        served = reuse.before_money(rt, job)
        if served is not None:
            return Admitted(*served)
    funded = decision if isinstance(decision, routing.Rejection) else _fund(
        rt, request, job_id, owner, decision)
    if isinstance(funded, routing.Rejection):
        log(logger, logging.INFO, f"job rejected: {funded.detail}", job_id=job_id,
            reason=funded.reason.value, owner=owner, correlation_id=correlation_id)
        telemetry.rejected(funded.reason.value, job_id)
        return funded
    decision, funding = funded
    job = job.model_copy(update={"plan": decision.backends, "funding": funding,
                                 "estimated_cost_usd": decision.estimated_cost_usd})
    if reuse_key is not None:  # lead the key, unless an identical job got there first
        served = reuse.after_money(rt, job)
        if served is not None:
            rt.ledger.release(funding.day, funding.reservation_id)
            return Admitted(*served)
    if not rt.store.create(job):  # a concurrent retry stored it first
        stored = rt.store.get(job_id)
        assert stored is not None
        if stored.funding is None or stored.funding.reservation_id != funding.reservation_id:
            rt.ledger.release(funding.day, funding.reservation_id)  # ours went unused
        ensure_dispatched(rt, stored)
        return Admitted(stored, created=False)
    log(logger, logging.INFO, "job admitted", job_id=job_id, plan=job.plan, owner=owner,
        estimated_cost_usd=job.estimated_cost_usd, correlation_id=correlation_id)
    telemetry.admitted(job)
    dispatch(rt, job, job.plan[0], 0)
    emit(rt, job, EventType.QUEUED)
    return Admitted(job, created=True)


def _fund(rt: Runtime, request: JobRequest, job_id: str, owner: str, decision: routing.Plan,
          ) -> tuple[routing.Plan, Funding] | routing.Rejection:
    """Hold the first attempt's money in the ledger's one atomic operation, or say why
    the job cannot be accepted: a job told yes is funded.

    The plan was drawn from the budget as last read; when the ledger refuses the hold
    (others took the money meanwhile), the plan is drawn again from what is left, so a
    cheaper backend that still fits is held instead, and a job that no backend can be
    funded for is refused now rather than failed later."""
    refused = decision.quotes[0]
    for attempt in range(len(rt.catalog.backends) + 1):
        if attempt:
            again = quote(rt, request, owner)
            if isinstance(again, routing.Rejection):
                return again
            decision = again
        first = decision.quotes[0]
        funding = budget.fund(rt, job_id, owner, first.estimated_cost_usd, attempt)
        if funding is not None:
            return decision, funding
        refused = first
    return routing.Rejection(
        routing.RejectionReason.BUDGET_EXHAUSTED,
        f"the budget left cannot hold {refused.estimated_cost_usd} USD for {refused.backend}",
        cheapest=refused)


def stage_upload(rt: Runtime, job_id: str, data_uri: str) -> InputImage:
    """Decode and check an uploaded image and stage it in the output store; the job
    keeps only the returned reference (raises InvalidUpload for a bad image; a store
    fault propagates, so the caller gets a 5xx or Pub/Sub redelivers)."""
    try:
        data, mime = images.load_image(data_uri, timeout_s=rt.settings.create_timeout_s)
    except ProviderError as bad:
        raise InvalidUpload(bad.code, bad.message) from bad
    sha256 = hashlib.sha256(data).hexdigest()
    uri = rt.outputs.stage(data, staged_key(job_id, sha256, mime), mime)
    return InputImage(uri=uri, sha256=sha256, mime_type=mime, bytes=len(data))


def ensure_dispatched(rt: Runtime, job: Job) -> None:
    """A job still QUEUED with no attempt may have missed its dispatch: send it again.

    The render function claims attempts in a transaction, so a duplicate
    dispatch renders nothing twice.
    """
    if job.status is JobStatus.QUEUED and not job.attempts and job.reused_from is None:
        dispatch(rt, job, job.plan[0], 0)
        emit(rt, job, EventType.QUEUED)  # same event id: receivers see it once
