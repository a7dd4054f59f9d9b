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
from pathlib import Path

from aiprod.adapters import images, media
from aiprod.adapters.providers.base import (
    ProviderError,
    RenderSpec,
    StagedImage,
    TaskState,
    TaskStatus,
    VideoProvider,
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
    """One delivery of a render message: claim the attempt, then do what the claim
    says is left to do (every delivery may be a duplicate or a redelivery)."""
    backend = rt.catalog.get(message.backend)
    claimed = _claim(rt, backend, message, delivery_id)
    if claimed is None:
        return
    job, claim = claimed
    if _nothing_left_to_render(rt, job, claim):
        return
    _render(rt, backend, job, message, claim, rt.monotonic() + rt.settings.render_deadline_s)


def _claim(rt: Runtime, backend: Backend, message: RenderMessage,
           delivery_id: str) -> tuple[Job, lifecycle.Claim] | None:
    """Decide what this delivery may do with the attempt, and record it. Most duplicate
    deliveries are settled by a plain read; only claims that change the job take a
    transaction (which re-decides on fresh data). None: the job does not exist."""
    job = rt.store.get(message.job_id)
    if job is None:
        log(logger, logging.ERROR, "render message for an unknown job", job_id=message.job_id)
        return None
    estimate = pricing.estimate_usd(backend, job.request.duration_seconds, job.request.audio,
                                    job.request.resolution)

    def claim_on(candidate: Job) -> lifecycle.Claim:
        return lifecycle.claim_attempt(candidate, backend.name, message.attempt, delivery_id,
                                       rt.clock(), rt.settings.attempt_lease, estimate)

    claim = claim_on(job.model_copy(deep=True))
    if claim.kind.writes:
        claimed = rt.store.mutate(job.id, claim_on)
        if claimed is None:
            return None
        job, claim = claimed
    log(logger, logging.INFO, f"render claim: {claim.kind.value}", job_id=job.id,
        backend=backend.name, attempt=claim.attempt_index, delivery_id=delivery_id)
    return job, claim


def _nothing_left_to_render(rt: Runtime, job: Job, claim: lifecycle.Claim) -> bool:
    """Claims that leave nothing to render: the job or the attempt already ended, or
    another delivery holds it. Redo only what the first delivery may have died
    before finishing (closing the hold, announcing the end, handing the job on)."""
    index = claim.attempt_index
    if claim.kind is ClaimKind.JOB_DONE:
        if index < len(job.attempts):
            budget.close(rt, job, index)
        if index == len(job.attempts) - 1:
            emit_terminal(rt, job)  # the first delivery may have died before announcing it
        return True
    if claim.kind in (ClaimKind.STALE, ClaimKind.DUPLICATE):
        return True
    if claim.kind is ClaimKind.FINISHED:
        follow_up(rt, job, index)
        return True
    return False


def _render(rt: Runtime, backend: Backend, job: Job, message: RenderMessage,
            claim: lifecycle.Claim, deadline: float) -> None:
    """Create the task (once), resume the checkpointed one, or settle a create call
    whose outcome is unknown; then poll it until done or handed off."""
    if claim.kind is ClaimKind.UNKNOWN_OUTCOME:
        # The delivery that was creating the task died mid-call.
        _mark_unknown(rt, job, claim.attempt_index, AttemptError(
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
    """Reserve the budget, create the provider task, and checkpoint its id. None when
    the attempt ended, or went on to resolve an unknown outcome."""
    provider = _start_attempt(rt, backend, job, message.attempt)
    if provider is None:
        return None
    created = _send_create(rt, backend, job, message, provider, deadline)
    if created is None:
        return None
    task_id, ticket = created
    return _checkpoint(rt, backend, job, message.attempt, provider, task_id, ticket)


def _start_attempt(rt: Runtime, backend: Backend, job: Job, index: int) -> VideoProvider | None:
    """Announce the attempt and hold its estimated cost on the budget before any call
    goes out. None: the budget cannot hold it, and the backend is skipped."""
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
    return provider


def _send_create(rt: Runtime, backend: Backend, job: Job, message: RenderMessage,
                 provider: VideoProvider, deadline: float) -> tuple[str, gate.Pass] | None:
    """Create the task through the backend's gate, retrying (with jittered, doubling
    backoff, within the retry budget) only calls that surely created nothing: a
    transient error. Never resend a call whose outcome is unknown: the provider may
    be rendering (and billing) already. None when the attempt ended, or went on to
    resolve an unknown outcome."""
    index = message.attempt
    caller = health_policy.caller_id(job.id, index)
    retry_until = rt.monotonic() + rt.settings.transient_retry_budget_s
    delay = rt.settings.transient_retry_initial_s
    last_failure: AttemptError | None = None
    while True:
        ticket = _enter_gate(rt, backend, job, index, caller, last_failure)
        if ticket is None:
            return None
        try:
            return provider.create(_spec(rt, backend, job)), ticket
        except ProviderError as error:
            failure = _attempt_error(error)
            gate.after_call(rt, ticket, failure, error.throttled)
            if error.error_class is ErrorClass.UNKNOWN:  # never resend: see above
                _mark_unknown(rt, job, index, failure)
                _resolve_unknown(rt, backend, message, deadline)
                return None
            last_failure = failure
            wait = max(delay, error.retry_after_s or 0) * random.uniform(0.5, 1.0)
            if (error.error_class is not ErrorClass.TRANSIENT
                    or rt.monotonic() + wait >= retry_until):
                _fail(rt, job.id, index, failure)
                return None
            rt.sleep(wait)
            delay *= 2


def _enter_gate(rt: Runtime, backend: Backend, job: Job, index: int, caller: str,
                last_failure: AttemptError | None) -> gate.Pass | None:
    """A pass to call the backend, or None once the attempt has ended without one: the
    circuit is open or every call slot stayed taken (the backend is skipped), or our
    own failed calls opened the circuit (the attempt fails with what they met). A busy
    last backend raises BackendBusy instead: nothing to fall back to, so wait."""
    try:
        ticket = gate.enter(rt, backend.name, caller)
    except Exception:
        if last_failure is None:  # no call went out yet: a redelivery starts clean
            _abandon(rt, job, index)
        raise
    if not isinstance(ticket, AttemptError):
        return ticket
    if ticket.code == gate.BUSY and last_failure is None and lifecycle.next_backend(job) is None:
        # Busy is back-pressure, not a verdict: with no backend left to fall back
        # to, hand the claim and the hold back and let Pub/Sub redeliver later.
        _abandon(rt, job, index)
        raise BackendBusy(ticket.message)
    _fail(rt, job.id, index, last_failure or ticket, skipped=last_failure is None)
    return None


def _checkpoint(rt: Runtime, backend: Backend, job: Job, index: int, provider: VideoProvider,
                task_id: str, ticket: gate.Pass) -> str | None:
    """Record the task id before anything else can fail: a crash after this point
    resumes the task instead of facing an unknown outcome. None: the job ended while
    we were creating, so the task is cancelled (stop paying)."""
    checkpointed = rt.store.mutate(job.id, lambda j: lifecycle.record_task(
        j, index, task_id, rt.clock()))
    gate.after_call(rt, ticket, None)
    if checkpointed is None or not checkpointed[1]:
        provider.cancel(task_id)
        if checkpointed is not None:
            budget.close(rt, checkpointed[0], index)  # its ending found no hold yet
        return None
    log(logger, logging.INFO, "provider task created", job_id=job.id, backend=backend.name,
        attempt=index, provider_task_id=task_id)
    return task_id


def _attempt_error(error: ProviderError) -> AttemptError:
    """What the job records of a provider's error."""
    return AttemptError(error_class=error.error_class, code=error.code, message=error.message)


def _poll_until_done(rt: Runtime, backend: Backend, message: RenderMessage, task_id: str,
                     deadline: float) -> None:
    """Poll the task until it ends (then settle the attempt) or this invocation's
    deadline nears (then hand off to a continuation)."""
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
                _fail(rt, message.job_id, message.attempt, _attempt_error(error))
                return
            status = TaskStatus(state=TaskState.RUNNING)
        if status.state is TaskState.SUCCEEDED:
            _succeed(rt, backend, message, status, task_id)
            return
        if status.state is TaskState.FAILED:
            _task_failed(rt, backend, message, status)
            return
        if status.state is TaskState.CANCELLED:
            _fail(rt, message.job_id, message.attempt, AttemptError(
                error_class=ErrorClass.BACKEND, code="cancelled_by_provider",
                message="the provider cancelled the task"))
            return
        if not _wait_or_hand_off(rt, backend, message, deadline):
            return


def _task_failed(rt: Runtime, backend: Backend, message: RenderMessage,
                 status: TaskStatus) -> None:
    """The provider failed the task: a strike if that says the backend is unwell; if
    not (a refusal, a 429) and this attempt held the probe, another caller may probe.
    The attempt fails either way."""
    failure = status.error or ProviderError(ErrorClass.BACKEND, "failed", "task failed")
    verdict = _attempt_error(failure)
    if health_policy.is_strike(verdict.error_class, failure.throttled):
        gate.strike(rt, backend.name, verdict)
    else:
        gate.no_verdict(rt, backend.name, health_policy.caller_id(message.job_id, message.attempt))
    _fail(rt, message.job_id, message.attempt, verdict)


def _wait_or_hand_off(rt: Runtime, backend: Backend, message: RenderMessage,
                      deadline: float) -> bool:
    """Sleep one poll interval; or, if that would outlive this invocation's deadline,
    hand off to a continuation and return False."""
    if rt.monotonic() + rt.settings.poll_interval_s > deadline:
        _hand_off(rt, backend, message)
        return False
    rt.sleep(rt.settings.poll_interval_s)
    return True


def _abandon(rt: Runtime, job: Job, index: int) -> None:
    """Nothing reached the provider: hand the claim and the hold back, so the
    redelivery of this message starts clean instead of finding an unknown outcome."""
    rt.store.mutate(job.id, lambda j: lifecycle.abandon_claim(j, index))
    budget.release_unsent(rt, job, index)


def _mark_unknown(rt: Runtime, job: Job, index: int, error: AttemptError) -> None:
    """Record that the create call's outcome is unknown, so no delivery resends it."""
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
        if (rt.provider(backend.name).can_find_tasks
                and _search_provider(rt, backend, job, message, age, deadline)):
            return
        if age >= wait:
            _fail(rt, job.id, message.attempt, AttemptError(
                error_class=ErrorClass.UNKNOWN, code="create_outcome_unknown",
                message=f"no verdict from {backend.name} within its {wait:.0f} s task "
                        "timeout; counted as charged"), cost_usd=attempt.estimated_cost_usd)
            return
        if not _wait_or_hand_off(rt, backend, message, deadline):
            return


def _search_provider(rt: Runtime, backend: Backend, job: Job, message: RenderMessage,
                     age: float, deadline: float) -> bool:
    """Look for a task made for this attempt's spec: one found is adopted and polled;
    none found once the provider has surely recorded the cut-off call (the attempt,
    `age` seconds old when the search began, is older than twice the create timeout)
    means none exists, and the attempt fails at no charge. False: no verdict yet (or
    the search itself failed): look again shortly."""
    started_at = job.attempts[message.attempt].started_at
    try:
        found = rt.provider(backend.name).find_task(_spec(rt, backend, job), started_at)
    except ProviderError:
        return False
    if found is None:
        if age <= rt.settings.create_timeout_s * 2:
            return False
        _fail(rt, job.id, message.attempt, AttemptError(
            error_class=ErrorClass.TRANSIENT, code="create_not_received",
            message="the cut-off create call made no task at the provider"))
        return True
    if _adopt(rt, message, found):
        log(logger, logging.INFO, "unknown create resolved: the task exists",
            job_id=job.id, backend=backend.name, provider_task_id=found)
        _poll_until_done(rt, backend, message, found, deadline)
    return True


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
        _strike_and_fail(rt, backend, message, failure, attempt.estimated_cost_usd)
        return True
    return False


def _succeed(rt: Runtime, backend: Backend, message: RenderMessage, status: TaskStatus,
             task_id: str) -> None:
    """Copy the output into our storage at once (provider URLs expire), check it,
    and end the job with it. Memory stays bounded whatever the concurrency: the
    download streams to a file, the check decodes frame by frame, the upload
    streams from the file, and rt.output_checks bounds how many run at once."""
    try:
        job = rt.store.get(message.job_id)
        if job is None or job.status.terminal:
            return
        # At most output_checks_at_once outputs on disk (/tmp is memory on Cloud
        # Functions) and decoding at once in this process, however many renders it
        # serves. An inline output (Veo's) is on disk already: it does not wait for
        # its turn there; it is dropped, and polled again once its turn comes.
        if not rt.output_checks.acquire(blocking=False):
            if status.output_file is not None:
                status.output_file.unlink(missing_ok=True)
                status = TaskStatus(TaskState.RUNNING)
            rt.output_checks.acquire()
            job = rt.store.get(message.job_id)  # it may have ended while we waited
            if job is None or job.status.terminal:
                rt.output_checks.release()
                return
        try:
            if status.state is not TaskState.SUCCEEDED:
                status = _poll_again(rt, backend, message, task_id)
                if status.state is not TaskState.SUCCEEDED:
                    return
            done = _check_and_store(rt, backend, job, message, status)
        finally:
            rt.output_checks.release()
        if done is not None:
            _record_success(rt, backend, message, *done)
    finally:
        if status.output_file is not None:  # moved by a download, else dropped here
            status.output_file.unlink(missing_ok=True)


def _poll_again(rt: Runtime, backend: Backend, message: RenderMessage,
                task_id: str) -> TaskStatus:
    """The finished task's status once more, for an inline output dropped while it
    waited its turn; anything but a success hands the attempt to a continuation,
    which polls and settles it as usual."""
    try:
        status = rt.provider(backend.name).poll(task_id)
    except ProviderError as error:
        status = TaskStatus(TaskState.RUNNING, error=error)
    if status.state is not TaskState.SUCCEEDED:
        if status.output_file is not None:
            status.output_file.unlink(missing_ok=True)
        _hand_off(rt, backend, message)
    return status


def _check_and_store(rt: Runtime, backend: Backend, job: Job, message: RenderMessage,
                     status: TaskStatus) -> tuple[Output, float, float] | None:
    """Download, check and store the output (streamed to a file, never held whole):
    the output, its cost and score, or None when the attempt ended otherwise."""
    with tempfile.TemporaryDirectory(prefix="aiprod-") as tmp:
        path = Path(tmp) / "output.mp4"
        info = _fetch_output(rt, backend, job, message, status, path)
        if info is None:
            return None
        checked = _check_output(rt, backend, job, message, status, info)
        if checked is None:
            return None
        cost, score = checked
        return _store_output(rt, message, path, info), cost, score


def _fetch_output(rt: Runtime, backend: Backend, job: Job, message: RenderMessage,
                  status: TaskStatus, path: Path) -> media.VideoInfo | None:
    """Download the output to `path` and decode it whole (what catches a truncated
    download). None: the attempt ended (no output to be had, or none decodable), or
    was handed off to fetch it again later (a transient download error)."""
    rendered_cost = (status.cost_usd if status.cost_usd is not None
                     else job.attempts[message.attempt].estimated_cost_usd)
    try:
        rt.provider(backend.name).download(status, path)
        return media.probe_video(path)
    except ProviderError as error:
        if error.error_class is ErrorClass.TRANSIENT:
            # The render is done and paid for: fetch it again later, never re-render.
            log(logger, logging.WARNING, f"output download failed, will retry: {error}",
                job_id=message.job_id, backend=backend.name)
            _hand_off(rt, backend, message)
            return None
        _strike_and_fail(rt, backend, message, AttemptError(
            error_class=ErrorClass.OUTPUT_CHECK,
            code="output_too_large" if error.code == "output_too_large"
            else "output_unavailable", message=str(error)), rendered_cost)
    except media.InvalidVideo as error:
        _strike_and_fail(rt, backend, message, AttemptError(
            error_class=ErrorClass.OUTPUT_CHECK, code="undecodable_output",
            message=str(error)), rendered_cost)
    return None


def _check_output(rt: Runtime, backend: Backend, job: Job, message: RenderMessage,
                  status: TaskStatus, info: media.VideoInfo) -> tuple[float, float] | None:
    """What the render cost (the provider's figure, else our price for the seconds it
    delivered) and its quality score. None: it failed the output check, and the
    attempt ended charged (the provider rendered it)."""
    request = job.request
    billed_seconds = min(request.duration_seconds, max(1, round(info.duration_s)))
    cost = status.cost_usd if status.cost_usd is not None else pricing.estimate_usd(
        backend, billed_seconds, request.audio, request.resolution)
    verdict = quality.check(
        quality.Observed(info.width, info.height, info.duration_s, info.blank_fraction,
                         info.frozen_fraction),
        request.duration_seconds, request.aspect_ratio.value, backend.quality,
        request.resolution)
    if not verdict.passed:
        _strike_and_fail(rt, backend, message, AttemptError(
            error_class=ErrorClass.OUTPUT_CHECK, code="output_check_failed",
            message="the output " + "; ".join(verdict.problems)), cost,
            quality=verdict.score)
        return None
    return cost, verdict.score


def _store_output(rt: Runtime, message: RenderMessage, path: Path,
                  info: media.VideoInfo) -> Output:
    """Upload the checked output (streamed from the file) and describe it, with the
    digest a caller can verify their download by."""
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for chunk in iter(lambda: data.read(1024 * 1024), b""):
            digest.update(chunk)
    size = path.stat().st_size
    uri = rt.outputs.put(path, f"jobs/{message.job_id}/output.mp4", OUTPUT_CONTENT_TYPE)
    return Output(uri=uri, mime_type=OUTPUT_CONTENT_TYPE, duration_seconds=info.duration_s,
                  width=info.width, height=info.height, bytes=size, sha256=digest.hexdigest())


def _record_success(rt: Runtime, backend: Backend, message: RenderMessage, output: Output,
                    cost: float, score: float) -> None:
    """End the job with its output; only the delivery that changed the job settles the
    budget, closes the backend's circuit and announces the end."""
    done = rt.store.mutate(message.job_id, lambda j: lifecycle.succeed(
        j, message.attempt, output, cost, score, rt.clock()))
    if done is None:
        return
    job, changed = done
    if changed:
        log(logger, logging.INFO, "job succeeded", job_id=job.id, backend=backend.name,
            cost_usd=cost, output_uri=output.uri)
        telemetry.ended(job)
        stats.attempt_ended(rt, job, message.attempt, score)
        budget.close(rt, job, message.attempt)
        gate.rendered(rt, backend.name)
        emit_terminal(rt, job)


def _strike_and_fail(rt: Runtime, backend: Backend, message: RenderMessage,
                     failure: AttemptError, cost_usd: float,
                     quality: float | None = None) -> None:
    """The backend failed after rendering (an unusable output, a task past its
    timeout): a strike against its health, and the attempt ends charged `cost_usd`,
    since the provider bills what it rendered (and `quality`, what the check scored)."""
    gate.strike(rt, backend.name, failure)
    _fail(rt, message.job_id, message.attempt, failure, cost_usd=cost_usd, quality=quality)


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
