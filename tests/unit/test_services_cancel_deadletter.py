"""Cancel and dead-letter decisions, on in-memory fakes (tests/fakes.py)."""

from __future__ import annotations

from pathlib import Path

from aiprod.adapters.providers.base import TaskState, TaskStatus
from aiprod.domain import lifecycle
from aiprod.domain.budget import to_micros
from aiprod.domain.deadletter import MAX_STARTED_REDRIVES
from aiprod.domain.job import AttemptStatus, Job, JobStatus
from aiprod.services.cancel import cancel_job, stop_task
from aiprod.services.deadletter import STARTED_REDRIVES, handle_dead_letter
from aiprod.services.messages import RenderMessage
from tests.fakes import Fakes, fake_runtime
from tests.service_helpers import admit, deliver, figures, message, renders_sent

RUNNING = TaskStatus(TaskState.RUNNING, 0.5)
DEAD = {"CloudPubSubDeadLetterSourceSubscription": "render-x-push",
        "CloudPubSubDeadLetterSourceDeliveryCount": "5"}


def rendering(tmp_path: Path) -> tuple[Fakes, str]:
    """A job whose first attempt's task runs (its render handed off to a continuation)."""
    fx = fake_runtime(tmp_path, render_deadline_s=0.0)
    job = admit(fx)
    provider = fx.provider(job.plan[0])
    provider.creates = ["task-1"]
    provider.polls["task-1"] = [RUNNING]
    assert deliver(fx, job).attempts[0].status is AttemptStatus.RUNNING
    fx.bus.clear()
    return fx, job.id


def cancels_sent(fx: Fakes, backend: str) -> list[dict[str, object]]:
    return [p for p in fx.bus.on(fx.rt.catalog.get(backend).topic)
            if p.get("action") == "cancel"]


def test_cancel_mid_render_ends_the_job_and_has_its_backend_stop_the_task(
        tmp_path: Path) -> None:
    fx, job_id = rendering(tmp_path)

    cancelled = cancel_job(fx.rt, job_id)

    assert cancelled is not None
    assert cancelled.status is JobStatus.CANCELLED
    backend = cancelled.attempts[0].backend
    assert cancels_sent(fx, backend) == [
        {"job_id": job_id, "backend": backend, "attempt": 0, "action": "cancel"}]
    assert fx.bus.event_types() == ["job.cancelled"]
    assert fx.provider(backend).calls_of("cancel") == []  # not here: the backend's deployment
    assert figures(fx).reserved_micros > 0  # the hold waits for the task's charge


def test_stop_task_cancels_at_the_provider_and_settles_its_charge_once(
        tmp_path: Path) -> None:
    fx, job_id = rendering(tmp_path)
    cancelled = cancel_job(fx.rt, job_id)
    assert cancelled is not None
    backend = cancelled.attempts[0].backend
    provider = fx.provider(backend)
    provider.polls["task-1"] = [RUNNING, TaskStatus(TaskState.CANCELLED, cost_usd=0.1)]
    stop = RenderMessage(job_id=job_id, backend=backend, attempt=0, action="cancel")

    stop_task(fx.rt, stop)
    calls = len(provider.calls)
    stop_task(fx.rt, stop)  # a redelivery, or the in-flight render noticing the end
    assert len(provider.calls) == calls  # settled: the provider is not asked again

    assert provider.calls_of("cancel") == ["task-1"]
    job = fx.store.get(job_id)
    assert job is not None
    assert not job.attempts[0].cost_pending
    assert job.attempts[0].cost_usd == 0.1
    day = figures(fx)
    assert (day.spent_micros, day.reserved_micros) == (to_micros(0.1), 0)


def test_a_render_message_dead_lettered_before_its_attempt_started_is_redriven(
        fx: Fakes) -> None:
    job = admit(fx)
    fx.bus.clear()

    handle_dead_letter(fx.rt, message(job).body(), DEAD | {"job_id": job.id})

    sent = renders_sent(fx, job.plan[0])
    assert [RenderMessage.model_validate(p) for p in sent] == [message(job)]
    assert fx.bus.published[0].attributes["redrives"] == "1"
    after = fx.store.get(job.id)
    assert after is not None
    assert after.status is JobStatus.QUEUED


def continued(fx: Fakes, job_id: str) -> Job:
    """The continuation of a rendering job claims its attempt: a live lease again."""
    job = fx.store.get(job_id)
    assert job is not None
    backend = fx.rt.catalog.get(job.plan[0])
    done = fx.store.mutate(job_id, lambda j: lifecycle.claim_attempt(
        j, backend.name, 0, "continuation", fx.rt.clock(), fx.rt.settings.attempt_lease, 0.0))
    assert done is not None
    assert done[1].kind is lifecycle.ClaimKind.RESUME
    return done[0]


def test_a_dead_lettered_duplicate_of_a_render_under_a_live_lease_leaves_it_alone(
        tmp_path: Path) -> None:
    """The watchdog's copy of a dispatch that waited in the capacity backlog is
    dead-lettered while the original copy renders: acknowledged, nothing else."""
    fx, job_id = rendering(tmp_path)
    job = continued(fx, job_id)
    held = figures(fx).reserved_micros

    handle_dead_letter(fx.rt, message(job).body(), DEAD | {"job_id": job_id})

    assert fx.store.get(job_id) == job
    assert fx.bus.published == []  # no cancel, no event, no re-drive
    assert figures(fx).reserved_micros == held > 0


def test_a_dead_lettered_continuation_nobody_holds_is_resumed_on_the_same_task(
        tmp_path: Path) -> None:
    """A long render handed off to a continuation that never got an instance (429 on
    every delivery): it goes back on its render topic, and its claim resumes the
    checkpointed task; nothing is created twice."""
    fx, job_id = rendering(tmp_path)  # handed off: its lease was released
    job = fx.store.get(job_id)
    assert job is not None

    handle_dead_letter(fx.rt, message(job).body(), DEAD | {"job_id": job_id})

    [sent] = fx.bus.published
    assert RenderMessage.model_validate(sent.payload) == message(job)
    assert sent.attributes[STARTED_REDRIVES] == "1"
    after = fx.store.get(job_id)
    assert after is not None
    assert after.status is JobStatus.RENDERING
    provider = fx.provider(job.plan[0])
    provider.polls["task-1"] = [TaskStatus(TaskState.SUCCEEDED, 1.0)]
    done = deliver(fx, after, delivery="redriven")
    assert done.status is JobStatus.SUCCEEDED
    assert provider.calls_of("create") == [job_id]
    assert provider.calls_of("cancel") == []


def test_a_render_dead_lettered_again_after_its_redrives_fails_the_job_and_stops_the_task(
        tmp_path: Path) -> None:
    """A render that fails on every delivery still ends, as any dead-lettered render
    did before: FAILED, its holds closed, its task stopped by its backend."""
    fx, job_id = rendering(tmp_path)
    job = fx.store.get(job_id)
    assert job is not None

    handle_dead_letter(fx.rt, message(job).body(), DEAD | {
        "job_id": job_id, STARTED_REDRIVES: str(MAX_STARTED_REDRIVES)})

    after = fx.store.get(job_id)
    assert after is not None
    assert after.status is JobStatus.FAILED
    assert f"re-driven {MAX_STARTED_REDRIVES} times" in after.status_reason
    assert len(cancels_sent(fx, job.plan[0])) == 1
    assert fx.bus.event_types() == ["job.failed"]
    assert renders_sent(fx, job.plan[0]) == []
    assert renders_sent(fx, job.plan[1]) == []  # no fallback: the task may be rendering


def test_a_render_dead_lettered_past_the_job_age_bound_fails_the_job(tmp_path: Path) -> None:
    fx, job_id = rendering(tmp_path)
    job = continued(fx, job_id)
    fx.clock.advance(fx.rt.settings.redrive_max_age_s + 1)

    handle_dead_letter(fx.rt, message(job).body(), DEAD | {"job_id": job_id})

    after = fx.store.get(job_id)
    assert after is not None
    assert after.status is JobStatus.FAILED
    assert len(cancels_sent(fx, job.plan[0])) == 1


def test_a_dead_lettered_render_whose_attempt_ended_unhanded_is_handed_on(fx: Fakes) -> None:
    """The render ended its attempt and died before publishing to the next backend."""
    job = admit(fx)
    fx.provider(job.plan[0]).video = b"not a video"
    deliver(fx, job)  # attempt 0 fails its output check; attempt 1 dispatched ...
    fx.bus.clear()    # ... and that publish is lost

    handle_dead_letter(fx.rt, message(job).body(), DEAD | {"job_id": job.id})

    sent = renders_sent(fx, job.plan[1])
    assert [RenderMessage.model_validate(p) for p in sent] == [message(job, 1)]
    after = fx.store.get(job.id)
    assert after is not None
    assert after.status is JobStatus.RENDERING


def test_a_stale_dead_lettered_copy_leaves_the_job_alone(fx: Fakes) -> None:
    job = admit(fx)
    fx.provider(job.plan[0]).video = b"not a video"
    deliver(fx, job)  # attempt 0 fails its output check; attempt 1 dispatched
    before = fx.store.get(job.id)
    assert before is not None
    assert len(before.attempts) == 1
    deliver(fx, before, attempt=1)
    moved = fx.store.get(job.id)
    assert moved is not None
    assert len(moved.attempts) == 2
    fx.bus.clear()

    handle_dead_letter(fx.rt, message(job, 0).body(), DEAD | {"job_id": job.id})

    assert fx.store.get(job.id) == moved
    assert fx.bus.published == []


def test_a_dead_lettered_cancel_counts_the_estimate_and_closes_the_hold(
        tmp_path: Path) -> None:
    fx, job_id = rendering(tmp_path)
    cancelled = cancel_job(fx.rt, job_id)
    assert cancelled is not None
    attempt = cancelled.attempts[0]
    stop = RenderMessage(job_id=job_id, backend=attempt.backend, attempt=0, action="cancel")

    handle_dead_letter(fx.rt, stop.body(), DEAD | {"job_id": job_id})

    after = fx.store.get(job_id)
    assert after is not None
    assert after.attempts[0].cost_usd == attempt.estimated_cost_usd
    assert not after.attempts[0].cost_pending
    day = figures(fx)
    assert day.spent_micros == to_micros(attempt.estimated_cost_usd)
    assert day.reserved_micros == 0


def test_a_dead_lettered_intake_message_is_answered_with_job_rejected(fx: Fakes) -> None:
    attributes = DEAD | {"correlation_id": "order-7"}

    handle_dead_letter(fx.rt, {"prompt": "fox", "duration_seconds": 4}, attributes,
                       message_id="m-1")

    [event] = fx.bus.published
    assert event.payload["type"] == "job.rejected"
    assert event.payload["correlation_id"] == "order-7"
    assert event.attributes["status"] == "REJECTED"
    assert fx.store.docs == {}
