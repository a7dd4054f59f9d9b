"""Render one attempt of a job on one backend, then hand the job on.

One invocation claims the attempt, creates the provider task (once), checkpoints
its id, polls it, and on success copies and verifies the output. Failures move
the job to the next backend by publishing to that backend's topic; a render that
would outlive the function republishes a continuation to its own topic.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import random
import tempfile
import time
from pathlib import Path

from aiprod.adapters import images, media
from aiprod.adapters.providers.base import (
    ProviderError,
    RenderSpec,
    StagedImage,
    TaskState,
    TaskStatus,
)
from aiprod.domain import health as health_policy
from aiprod.domain import lifecycle, pricing, quality
from aiprod.domain.catalog import Backend
from aiprod.domain.events import EventType
from aiprod.domain.job import (
    AttemptError,
    AttemptStatus,
    ErrorClass,
    InputImage,
    Job,
    JobStatus,
    Output,
)
from aiprod.domain.lifecycle import ClaimKind
from aiprod.observability.logs import log
from aiprod.services import budget, gate, stats, telemetry
from aiprod.services.cancel import stop_task
from aiprod.services.messages import RenderMessage
from aiprod.services.publishing import dispatch, emit, emit_terminal
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)

OUTPUT_CONTENT_TYPE = "video/mp4"
# A provider given a signed URL to a staged upload may fetch it once the task leaves
# its queue: valid well past that (V4 signed URLs allow up to 7 days).
STAGED_IMAGE_URL_TTL = dt.timedelta(hours=12)


def handle_render(rt: Runtime, message: RenderMessage, delivery_id: str) -> None:
    backend = rt.catalog.get(message.backend)
    job = rt.store.get(message.job_id)
    if job is None:
        log(logger, logging.ERROR, "render message for an unknown job", job_id=message.job_id)
        return
    estimate = pricing.estimate_usd(backend, job.request.duration_seconds, job.request.audio,
                                    job.request.resolution)

    def claim_on(candidate: Job) -> lifecycle.Claim:
        return lifecycle.claim_attempt(candidate, backend.name, message.attempt, delivery_id,
                                       rt.clock(), rt.settings.attempt_lease, estimate)

    # Most duplicate deliveries are settled by a plain read; only claims that change
    # the job take a transaction (which re-decides on fresh data).
    claim = claim_on(job.model_copy(deep=True))
    if claim.kind.writes:
        claimed = rt.store.mutate(job.id, claim_on)
        if claimed is None:
            return
        job, claim = claimed
    index = claim.attempt_index
    log(logger, logging.INFO, f"render claim: {claim.kind.value}", job_id=job.id,
        backend=backend.name, attempt=index, delivery_id=delivery_id)

    if claim.kind is ClaimKind.JOB_DONE:
        if index < len(job.attempts):
            budget.close(rt, job, index)
        if index == len(job.attempts) - 1:
            emit_terminal(rt, job)  # the first delivery may have died before announcing it
        return
    if claim.kind in (ClaimKind.STALE, ClaimKind.DUPLICATE):
        return
    if claim.kind is ClaimKind.FINISHED:
        follow_up(rt, job, index)
        return
    deadline = time.monotonic() + rt.settings.render_deadline_s
    if claim.kind is ClaimKind.UNKNOWN_OUTCOME:
        # The delivery that was creating the task died mid-call.
        _mark_unknown(rt, job, index, AttemptError(
            error_class=ErrorClass.UNKNOWN, code="create_interrupted",
            message="the invocation creating the task died; the provider's verdict is unknown"))
        _resolve_unknown(rt, backend, message, deadline)
        return
    if claim.kind is ClaimKind.RESUME and claim.task_id is None:
        _resolve_unknown(rt, backend, message, deadline)
        return

    task_id = claim.task_id
    if claim.kind is ClaimKind.CREATE:
        task_id = _create(rt, backend, job, message, deadline)
        if task_id is None:
            return
    assert task_id is not None
    _poll_until_done(rt, backend, message, task_id, deadline)


class BackendBusy(Exception):
    """Every call slot of the job's last backend stayed taken: not the job's failure.
    Raised so the render message is redelivered (Pub/Sub's backoff), like a 429."""


def _spec(rt: Runtime, backend: Backend, job: Job) -> RenderSpec:
    request = job.request
    return RenderSpec(job_id=job.id, model=backend.model, prompt=request.prompt,
                      image_url=request.image_url, duration_seconds=request.duration_seconds,
                      aspect_ratio=request.aspect_ratio.value, audio=request.audio,
                      resolution=request.resolution.value,
                      image=_staged(rt, job.input_image) if job.input_image else None,
                      seed=request.seed if backend.accepts_seed else None)


def _staged(rt: Runtime, image: InputImage) -> StagedImage:
    """The staged upload, read or signed only if the provider's client needs it."""
    return StagedImage(
        uri=image.uri, sha256=image.sha256, mime_type=image.mime_type, size=image.bytes,
        read=lambda: images.read_staged(lambda: rt.outputs.read(image.uri), image.uri,
                                        image.sha256),
        signed_url=lambda: rt.outputs.download_url(image.uri, STAGED_IMAGE_URL_TTL))


def _create(rt: Runtime, backend: Backend, job: Job, message: RenderMessage,
            deadline: float) -> str | None:
    """Reserve the budget, then create the provider task through the backend's gate,
    retrying (with backoff) only calls that surely created nothing, and checkpoint
    its id. None when the attempt ended, or went on to resolve an unknown outcome."""
    index = message.attempt
    caller = f"{job.id}:{index}"
    try:
        emit(rt, job, EventType.ATTEMPT_STARTED, attempt=index)
        telemetry.attempt_started(job, index)
        reserved = budget.reserve(rt, job, index, job.attempts[index].estimated_cost_usd)
        provider = rt.provider(backend.name)
    except Exception:
        _abandon(rt, job, index)
        raise
    if reserved is None:
        _fail(rt, job.id, index, AttemptError(
            error_class=ErrorClass.SKIPPED, code="budget_exhausted",
            message=f"today's budget cannot hold {job.attempts[index].estimated_cost_usd} USD "
                    f"for {backend.name}"), skipped=True)
        return None
    retry_until = time.monotonic() + rt.settings.transient_retry_budget_s
    delay = rt.settings.transient_retry_initial_s
    last_failure: AttemptError | None = None
    while True:
        try:
            ticket = gate.enter(rt, backend.name, caller)
        except Exception:
            if last_failure is None:  # no call went out yet: a redelivery starts clean
                _abandon(rt, job, index)
            raise
        if isinstance(ticket, AttemptError):
            if (ticket.code == gate.BUSY and last_failure is None
                    and lifecycle.next_backend(job) is None):
                # Busy is back-pressure, not a verdict: with no backend left to fall back
                # to, hand the claim and the hold back and let Pub/Sub redeliver later.
                _abandon(rt, job, index)
                raise BackendBusy(ticket.message)
            # Our own failed calls may have opened the circuit: report what they met.
            _fail(rt, job.id, index, last_failure or ticket, skipped=last_failure is None)
            return None
        try:
            task_id = provider.create(_spec(rt, backend, job))
        except ProviderError as error:
            failure = AttemptError(error_class=error.error_class, code=error.code,
                                   message=error.message)
            gate.after_call(rt, ticket, failure, error.throttled)
            if error.error_class is ErrorClass.UNKNOWN:
                # Never resend: the provider may be rendering (and billing) already.
                _mark_unknown(rt, job, index, failure)
                _resolve_unknown(rt, backend, message, deadline)
                return None
            last_failure = failure
            wait = max(delay, error.retry_after_s or 0) * random.uniform(0.5, 1.0)
            if error.error_class is ErrorClass.TRANSIENT and time.monotonic() + wait < retry_until:
                rt.sleep(wait)
                delay *= 2
                continue
            _fail(rt, job.id, index, failure)
            return None
        break
    # Checkpoint the task id before anything else can fail: a crash after this point
    # resumes the task instead of facing an unknown outcome.
    checkpointed = rt.store.mutate(job.id, lambda j: lifecycle.record_task(
        j, index, task_id, rt.clock()))
    gate.after_call(rt, ticket, None)
    if checkpointed is None or not checkpointed[1]:
        provider.cancel(task_id)  # the job ended while we were creating: stop paying
        if checkpointed is not None:
            budget.close(rt, checkpointed[0], index)  # its ending found no hold yet
        return None
    log(logger, logging.INFO, "provider task created", job_id=job.id, backend=backend.name,
        attempt=index, provider_task_id=task_id)
    return task_id


def _poll_until_done(rt: Runtime, backend: Backend, message: RenderMessage, task_id: str,
                     deadline: float) -> None:
    provider = rt.provider(backend.name)
    first = True
    while True:
        # Between polls the job may have been cancelled: then stop, record nothing.
        if not first and _ended_elsewhere(rt, message, backend, task_id):
            return
        first = False
        try:
            status = provider.poll(task_id)
        except ProviderError as error:
            if error.error_class is not ErrorClass.TRANSIENT:
                _fail(rt, message.job_id, message.attempt, AttemptError(
                    error_class=error.error_class, code=error.code, message=error.message))
                return
            status = TaskStatus(state=TaskState.RUNNING)
        if status.state is TaskState.SUCCEEDED:
            _succeed(rt, backend, message, status)
            return
        if status.state is TaskState.FAILED:
            failure = status.error or ProviderError(ErrorClass.BACKEND, "failed", "task failed")
            verdict = AttemptError(error_class=failure.error_class, code=failure.code,
                                   message=failure.message)
            if health_policy.is_strike(verdict.error_class, failure.throttled):
                gate.strike(rt, backend.name, verdict)
            else:
                gate.no_verdict(rt, backend.name, f"{message.job_id}:{message.attempt}")
            _fail(rt, message.job_id, message.attempt, verdict)
            return
        if status.state is TaskState.CANCELLED:
            _fail(rt, message.job_id, message.attempt, AttemptError(
                error_class=ErrorClass.BACKEND, code="cancelled_by_provider",
                message="the provider cancelled the task"))
            return
        if time.monotonic() + rt.settings.poll_interval_s > deadline:
            _hand_off(rt, backend, message)
            return
        rt.sleep(rt.settings.poll_interval_s)


def _abandon(rt: Runtime, job: Job, index: int) -> None:
    """Nothing reached the provider: hand the claim and the hold back, so the
    redelivery of this message starts clean instead of finding an unknown outcome."""
    rt.store.mutate(job.id, lambda j: lifecycle.abandon_claim(j, index))
    budget.release_unsent(rt, job, index)


def _mark_unknown(rt: Runtime, job: Job, index: int, error: AttemptError) -> None:
    rt.store.mutate(job.id, lambda j: lifecycle.mark_unknown(j, index, error, rt.clock()))
    log(logger, logging.WARNING, f"create outcome unknown: {error.code}", job_id=job.id,
        attempt=index, backend=job.attempts[index].backend, error_message=error.message)


def _resolve_unknown(rt: Runtime, backend: Backend, message: RenderMessage,
                     deadline: float) -> None:
    """Settle an attempt whose create call was cut off, on a verified verdict only.

    Where the provider can be searched, a task made for this spec is adopted and
    polled; not finding one once the provider has surely recorded it means no
    task exists, and the job falls back at no charge. Where it cannot be
    searched, the reservation is kept until the provider's own task timeout has
    surely passed; the attempt then counts as charged (the provider may have
    rendered it) and the job falls back.
    """
    provider = rt.provider(backend.name)
    wait = rt.settings.unknown_outcome_wait_s or backend.limits.task_timeout_s
    while True:
        if _ended_elsewhere(rt, message):
            return
        job = rt.store.get(message.job_id)
        assert job is not None
        attempt = job.attempts[message.attempt]
        if attempt.provider_task_id:  # another delivery found or made it meanwhile
            _poll_until_done(rt, backend, message, attempt.provider_task_id, deadline)
            return
        age = (rt.clock() - attempt.started_at).total_seconds()
        if provider.can_find_tasks:
            try:
                found = provider.find_task(_spec(rt, backend, job), attempt.started_at)
            except ProviderError:
                found = None  # could not look: try again shortly
            else:
                if found is None and age > rt.settings.create_timeout_s * 2:
                    _fail(rt, job.id, message.attempt, AttemptError(
                        error_class=ErrorClass.TRANSIENT, code="create_not_received",
                        message="the cut-off create call made no task at the provider"))
                    return
            if found is not None:
                if _adopt(rt, message, found):
                    log(logger, logging.INFO, "unknown create resolved: the task exists",
                        job_id=job.id, backend=backend.name, provider_task_id=found)
                    _poll_until_done(rt, backend, message, found, deadline)
                return
        if age >= wait:
            _fail(rt, job.id, message.attempt, AttemptError(
                error_class=ErrorClass.UNKNOWN, code="create_outcome_unknown",
                message=f"no verdict from {backend.name} within its {wait:.0f} s task "
                        "timeout; counted as charged"), cost_usd=attempt.estimated_cost_usd)
            return
        if time.monotonic() + rt.settings.poll_interval_s > deadline:
            _hand_off(rt, backend, message)
            return
        rt.sleep(rt.settings.poll_interval_s)


def _adopt(rt: Runtime, message: RenderMessage, task_id: str) -> bool:
    """Checkpoint a task found at the provider as this attempt's task."""
    adopted = rt.store.mutate(message.job_id, lambda j: lifecycle.record_task(
        j, message.attempt, task_id, rt.clock()))
    return adopted is not None and adopted[1]


def _hand_off(rt: Runtime, backend: Backend, message: RenderMessage) -> None:
    """Before the platform's timeout: a continuation picks the attempt up."""
    rt.store.mutate(message.job_id, lambda j: lifecycle.release_lease(
        j, message.attempt, rt.clock()))
    rt.bus.publish(backend.topic, message.body(), {"job_id": message.job_id,
                                                         "continuation": "true"})
    log(logger, logging.INFO, "render continues in a new invocation",
        job_id=message.job_id, backend=backend.name)


def _ended_elsewhere(rt: Runtime, message: RenderMessage, backend: Backend | None = None,
                     task_id: str | None = None) -> bool:
    """The job was cancelled (or otherwise ended) while we rendered: stop the provider
    task (this deployment holds its credentials; the function that ended the job does
    not), settle what it cost and close the attempt's hold, record nothing else. With a
    task, also end a render that outlived the provider's own task timeout, so no job
    polls forever."""
    job = rt.store.get(message.job_id)
    if job is None or job.status.terminal or job.attempts[message.attempt].status.terminal:
        log(logger, logging.INFO, "render stopped: the job ended elsewhere",
            job_id=message.job_id, attempt=message.attempt)
        if job is not None:
            stop_task(rt, message)
        return True
    attempt = job.attempts[message.attempt]
    if backend is not None and task_id is not None and (
            (rt.clock() - attempt.started_at).total_seconds() > backend.limits.task_timeout_s):
        rt.provider(backend.name).cancel(task_id)
        failure = AttemptError(error_class=ErrorClass.BACKEND, code="task_timeout",
                               message=f"the task ran past {backend.name}'s "
                                       f"{backend.limits.task_timeout_s} s task timeout")
        gate.strike(rt, backend.name, failure)
        _fail(rt, message.job_id, message.attempt, failure,
              cost_usd=attempt.estimated_cost_usd)
        return True
    return False


def _succeed(rt: Runtime, backend: Backend, message: RenderMessage, status: TaskStatus) -> None:
    """Copy the output into our storage at once (provider URLs expire), check it,
    and end the job with it. Memory stays bounded whatever the concurrency: the
    download streams to a file, the check decodes frame by frame, the upload
    streams from the file, and rt.output_checks bounds how many run at once."""
    provider = rt.provider(backend.name)
    job = rt.store.get(message.job_id)
    if job is None or job.status.terminal:
        return
    request = job.request
    # Streamed to a file, never held whole; and at most output_checks_at_once outputs
    # on disk and decoding at once in this process, however many renders it serves.
    with rt.output_checks, tempfile.TemporaryDirectory(prefix="aiprod-") as tmp:
        path = Path(tmp) / "output.mp4"
        rendered_cost = (status.cost_usd if status.cost_usd is not None
                         else job.attempts[message.attempt].estimated_cost_usd)
        try:
            provider.download(status, path)
            info = media.probe_video(path)
        except ProviderError as error:
            if error.error_class is ErrorClass.TRANSIENT:
                # The render is done and paid for: fetch it again later, never re-render.
                log(logger, logging.WARNING, f"output download failed, will retry: {error}",
                    job_id=message.job_id, backend=backend.name)
                _hand_off(rt, backend, message)
                return
            failure = AttemptError(error_class=ErrorClass.OUTPUT_CHECK,
                                   code="output_unavailable", message=str(error))
            gate.strike(rt, backend.name, failure)
            _fail(rt, message.job_id, message.attempt, failure, cost_usd=rendered_cost)
            return
        except media.InvalidVideo as error:
            failure = AttemptError(error_class=ErrorClass.OUTPUT_CHECK,
                                   code="undecodable_output", message=str(error))
            gate.strike(rt, backend.name, failure)
            _fail(rt, message.job_id, message.attempt, failure, cost_usd=rendered_cost)
            return
        billed_seconds = min(request.duration_seconds, max(1, round(info.duration_s)))
        cost = status.cost_usd if status.cost_usd is not None else pricing.estimate_usd(
            backend, billed_seconds, request.audio, request.resolution)
        verdict = quality.check(
            quality.Observed(info.width, info.height, info.duration_s, info.blank_fraction,
                             info.frozen_fraction),
            request.duration_seconds, request.aspect_ratio.value, backend.quality,
            request.resolution)
        if not verdict.passed:
            failure = AttemptError(error_class=ErrorClass.OUTPUT_CHECK, code="output_check_failed",
                                   message="the output " + "; ".join(verdict.problems))
            gate.strike(rt, backend.name, failure)
            _fail(rt, message.job_id, message.attempt, failure, cost_usd=cost,
                  quality=verdict.score)
            return
        digest = hashlib.sha256()
        with path.open("rb") as data:
            for chunk in iter(lambda: data.read(1024 * 1024), b""):
                digest.update(chunk)
        size = path.stat().st_size
        uri = rt.outputs.put(path, f"jobs/{message.job_id}/output.mp4", OUTPUT_CONTENT_TYPE)
    output = Output(uri=uri, mime_type=OUTPUT_CONTENT_TYPE, duration_seconds=info.duration_s,
                    width=info.width, height=info.height, bytes=size, sha256=digest.hexdigest())
    done = rt.store.mutate(message.job_id, lambda j: lifecycle.succeed(
        j, message.attempt, output, cost, verdict.score, rt.clock()))
    if done is None:
        return
    job, changed = done
    if changed:
        log(logger, logging.INFO, "job succeeded", job_id=job.id, backend=backend.name,
            cost_usd=cost, output_uri=uri)
        telemetry.ended(job)
        stats.attempt_ended(rt, job, message.attempt, verdict.score)
        budget.close(rt, job, message.attempt)
        gate.rendered(rt, backend.name)
        emit_terminal(rt, job)


def _fail(rt: Runtime, job_id: str, index: int, error: AttemptError,
          skipped: bool = False, cost_usd: float = 0.0, quality: float | None = None) -> None:
    """End the attempt; `cost_usd` is what the provider charged anyway (a render
    that failed our check was still rendered), `quality` what the check scored it."""
    status = AttemptStatus.SKIPPED if skipped else AttemptStatus.FAILED
    done = rt.store.mutate(job_id, lambda j: lifecycle.fail_attempt(
        j, index, error, rt.clock(), rt.settings.fallback_on_refusal, status, cost_usd))
    if done is None:
        return
    job, outcome = done
    if not outcome.changed:
        return
    log(logger, logging.WARNING, f"attempt failed: {error.error_class.value} {error.code}",
        job_id=job_id, backend=job.attempts[index].backend, attempt=index,
        error_message=error.message, next_backend=outcome.next_backend)
    telemetry.attempt_failed(job, index, outcome.next_backend)
    stats.attempt_ended(rt, job, index, quality)
    emit(rt, job, EventType.ATTEMPT_FAILED, attempt=index)
    follow_up(rt, job, index)



def follow_up(rt: Runtime, job: Job, index: int) -> None:
    """After attempt `index` ended: hand the job to its next backend, or announce its end.

    Runs again on redelivery, so a crash between the state change and the
    publish loses nothing (the next render dedupes by its claim, and the
    ledger closes each reservation once).
    """
    budget.close(rt, job, index)
    if job.status.terminal:
        emit_terminal(rt, job)
        return
    following = lifecycle.next_backend(job)
    if job.status is JobStatus.RENDERING and index == len(job.attempts) - 1 and following:
        dispatch(rt, job, following, index + 1)
