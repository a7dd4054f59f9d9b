"""The render service's decisions, on in-memory fakes (tests/fakes.py): what a user
would notice of each (job status, attempts, ledger figures, messages published,
provider calls). The emulator suite keeps the end-to-end proofs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from aiprod.adapters.providers.base import ProviderError, TaskState, TaskStatus
from aiprod.domain import lifecycle
from aiprod.domain.budget import to_micros
from aiprod.domain.health import CircuitState, Health
from aiprod.domain.job import AttemptStatus, ErrorClass, JobStatus
from aiprod.services import budget
from aiprod.services.render import BackendBusy
from tests.fakes import Fakes, fake_runtime, sample_video
from tests.service_helpers import DAY, admit, deliver, figures, renders_sent

RUNNING = TaskStatus(TaskState.RUNNING, 0.5)


def test_a_render_creates_once_succeeds_and_settles_its_cost(fx: Fakes) -> None:
    job = admit(fx)
    backend = job.plan[0]
    fx.bus.clear()

    done = deliver(fx, job)

    assert done.status is JobStatus.SUCCEEDED
    assert fx.provider(backend).calls_of("create") == [job.id]
    assert done.output is not None
    assert Path(done.output.uri.removeprefix("file://")).exists()
    assert done.cost_usd == pytest.approx(done.attempts[0].estimated_cost_usd)
    day = figures(fx)
    assert day.spent_micros == to_micros(done.cost_usd)
    assert day.reserved_micros == 0
    assert fx.bus.event_types() == ["job.attempt_started", "job.succeeded"]


def test_a_second_delivery_while_the_first_holds_the_lease_stands_back(fx: Fakes) -> None:
    job = admit(fx)
    fx.store.mutate(job.id, lambda j: lifecycle.claim_attempt(
        j, job.plan[0], 0, "d1", fx.clock(), fx.rt.settings.attempt_lease, 0.32))
    fx.bus.clear()

    after = deliver(fx, job, delivery="d2")

    assert after.attempts[0].status is AttemptStatus.CREATING
    assert after.attempts[0].delivery_id == "d1"
    assert fx.provider(job.plan[0]).calls == []
    assert fx.bus.published == []


def test_a_redelivery_resumes_the_checkpointed_task_without_creating(fx: Fakes) -> None:
    job = admit(fx)
    backend = job.plan[0]
    fx.store.mutate(job.id, lambda j: lifecycle.claim_attempt(
        j, backend, 0, "d1", fx.clock(), fx.rt.settings.attempt_lease, 0.32))
    fx.store.mutate(job.id, lambda j: lifecycle.record_task(j, 0, "task-9", fx.clock()))
    fx.clock.advance(fx.rt.settings.attempt_lease.total_seconds() + 1)  # d1 died

    after = deliver(fx, job, delivery="d1-redelivered")

    assert after.status is JobStatus.SUCCEEDED
    assert fx.provider(backend).calls_of("create") == []
    assert fx.provider(backend).calls_of("poll") == ["task-9"]


def test_a_render_past_its_deadline_hands_off_to_a_continuation(tmp_path: Path) -> None:
    fx = fake_runtime(tmp_path, render_deadline_s=0.0)
    job = admit(fx)
    backend = job.plan[0]
    provider = fx.provider(backend)
    provider.creates = ["task-1"]
    provider.polls["task-1"] = [RUNNING, TaskStatus(TaskState.SUCCEEDED, 1.0)]
    fx.bus.clear()

    handed = deliver(fx, job)

    assert handed.status is JobStatus.RENDERING
    assert handed.attempts[0].provider_task_id == "task-1"
    continuation = [p for p in fx.bus.published if p.attributes.get("continuation") == "true"]
    assert [c.topic for c in continuation] == [fx.rt.catalog.get(backend).topic]

    done = deliver(fx, job, delivery="d2")  # the continuation message
    assert done.status is JobStatus.SUCCEEDED
    assert provider.calls_of("create") == [job.id]  # created once across both invocations


def test_a_fallback_whose_reservation_is_refused_skips_its_backend(fx: Fakes) -> None:
    """The first attempt renders on admission's hold; a fallback reserves its own."""
    job = admit(fx, plan=2)
    first, second = job.plan
    fx.provider(first).creates = [ProviderError(ErrorClass.BACKEND, "failed", "it failed")]
    deliver(fx, job)
    assert figures(fx).committed_micros == 0  # the first attempt's hold was released
    limit = to_micros(fx.rt.settings.daily_budget_usd)
    rival = limit - to_micros(0.01)
    assert fx.ledger.reserve(DAY, "someone-else", rival, [budget.global_scope(fx.rt)])

    after = deliver(fx, job, attempt=1, delivery="d2")

    attempt = after.attempts[1]
    assert attempt.status is AttemptStatus.SKIPPED
    assert attempt.error is not None
    assert attempt.error.code == "budget_exhausted"
    assert fx.provider(second).calls == []
    assert after.status is JobStatus.FAILED
    assert figures(fx).committed_micros == rival  # nothing of ours was held


def test_an_open_circuit_skips_the_backend_and_falls_back(fx: Fakes) -> None:
    job = admit(fx)
    first, second = job.plan[:2]
    fx.health.docs[first] = Health(first, CircuitState.OPEN, strikes=3, opened_at=fx.clock())

    after = deliver(fx, job)

    attempt = after.attempts[0]
    assert attempt.status is AttemptStatus.SKIPPED
    assert attempt.error is not None
    assert attempt.error.code == "circuit_open"
    assert fx.provider(first).calls == []
    assert len(renders_sent(fx, second)) == 1
    assert figures(fx).reserved_micros == 0  # its hold was released


def test_transient_create_errors_are_retried_until_the_circuit_opens_then_fall_back(
        fx: Fakes) -> None:
    job = admit(fx)
    first, second = job.plan[:2]
    down = ProviderError(ErrorClass.TRANSIENT, "http_503", "unavailable")
    fx.provider(first).creates = [down] * 10

    after = deliver(fx, job)

    strikes = fx.rt.settings.circuit_strikes
    assert len(fx.provider(first).calls_of("create")) == strikes
    # Backed off between calls (doubling, jittered), on the fake clock: no real wait.
    initial = fx.rt.settings.transient_retry_initial_s
    assert len(fx.clock.slept) == strikes
    for n, slept in enumerate(fx.clock.slept):
        assert initial * 2**n * 0.5 <= slept <= initial * 2**n
    attempt = after.attempts[0]
    assert attempt.status is AttemptStatus.FAILED
    assert attempt.error is not None
    assert attempt.error.code == "http_503"
    assert fx.health.get(first).state is CircuitState.OPEN
    assert len(renders_sent(fx, second)) == 1
    assert figures(fx).committed_micros == 0


def test_an_unknown_create_outcome_is_never_resent_and_counts_as_charged(
        tmp_path: Path) -> None:
    fx = fake_runtime(tmp_path, unknown_outcome_wait_s=60.0)
    job = admit(fx)
    first, second = job.plan[:2]
    fx.provider(first).can_find_tasks = False
    fx.provider(first).creates = [ProviderError(ErrorClass.UNKNOWN, "timeout", "cut off")]

    after = deliver(fx, job)

    assert fx.provider(first).calls_of("create") == [job.id]
    attempt = after.attempts[0]
    assert attempt.status is AttemptStatus.FAILED
    assert attempt.error is not None
    assert attempt.error.code == "create_outcome_unknown"
    assert attempt.cost_usd == attempt.estimated_cost_usd
    assert figures(fx).spent_micros == to_micros(attempt.estimated_cost_usd)
    assert fx.clock() - attempt.started_at >= dt.timedelta(seconds=60)
    assert len(renders_sent(fx, second)) == 1


def test_an_unknown_create_outcome_found_at_the_provider_is_adopted(fx: Fakes) -> None:
    job = admit(fx)
    first = job.plan[0]
    provider = fx.provider(first)
    provider.can_find_tasks = True
    provider.creates = [ProviderError(ErrorClass.UNKNOWN, "timeout", "cut off")]
    provider.found = "task-found"

    after = deliver(fx, job)

    assert after.status is JobStatus.SUCCEEDED
    assert after.attempts[0].provider_task_id == "task-found"
    assert provider.calls_of("create") == [job.id]
    assert provider.calls_of("poll") == ["task-found"]


def test_an_output_failing_the_check_strikes_is_charged_and_falls_back(fx: Fakes) -> None:
    job = admit(fx)
    first, second = job.plan[:2]
    fx.provider(first).video = sample_video(4, blank=True)

    after = deliver(fx, job)

    attempt = after.attempts[0]
    assert attempt.status is AttemptStatus.FAILED
    assert attempt.error is not None
    assert attempt.error.error_class is ErrorClass.OUTPUT_CHECK
    assert attempt.cost_usd > 0  # it was rendered: the provider charged it
    assert figures(fx).spent_micros == to_micros(attempt.cost_usd)
    assert fx.health.get(first).strikes == 1
    assert after.output is None
    assert len(renders_sent(fx, second)) == 1


def test_a_busy_last_backend_hands_the_claim_back_and_keeps_its_funding(fx: Fakes) -> None:
    job = admit(fx, plan=1)
    backend = job.plan[0]
    for _ in range(fx.rt.settings.circuit_strikes):  # every call slot held by others
        assert fx.health.take_slot(backend, f"other-{_}", fx.rt.settings.circuit_strikes,
                                   fx.clock(), dt.timedelta(hours=1)) is not None

    with pytest.raises(BackendBusy):
        deliver(fx, job)

    after = fx.store.get(job.id)
    assert after is not None
    assert after.status is JobStatus.QUEUED
    assert after.attempts == []
    assert fx.provider(backend).calls == []
    # Admission's hold stays for the redelivery, which claims the attempt again.
    assert figures(fx).committed_micros == to_micros(job.estimated_cost_usd)


def test_a_duplicate_delivery_of_a_finished_job_publishes_nothing_new(fx: Fakes) -> None:
    job = admit(fx)
    deliver(fx, job)
    fx.bus.clear()
    spent = figures(fx).spent_micros

    after = deliver(fx, job, delivery="d-late")

    assert after.status is JobStatus.SUCCEEDED
    assert len(fx.provider(job.plan[0]).calls_of("create")) == 1
    assert figures(fx).spent_micros == spent
    # The first delivery may have died before announcing the end: announced again (same id).
    assert fx.bus.event_types() == ["job.succeeded"]




def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes_the_circuit(
        fx: Fakes) -> None:
    job = admit(fx)
    first = job.plan[0]
    opened = fx.clock() - dt.timedelta(seconds=fx.rt.settings.circuit_cooldown_s + 1)
    fx.health.docs[first] = Health(first, CircuitState.OPEN, strikes=3, opened_at=opened)

    after = deliver(fx, job)

    assert after.status is JobStatus.SUCCEEDED
    assert fx.provider(first).calls_of("create") == [job.id]
    health = fx.health.get(first)
    assert (health.state, health.strikes, health.probe_owner) == (CircuitState.CLOSED, 0, None)


def test_a_failed_probe_reopens_the_circuit_and_falls_back(fx: Fakes) -> None:
    job = admit(fx)
    first, second = job.plan[:2]
    opened = fx.clock() - dt.timedelta(seconds=fx.rt.settings.circuit_cooldown_s + 1)
    fx.health.docs[first] = Health(first, CircuitState.OPEN, strikes=3, opened_at=opened)
    fx.provider(first).creates = [ProviderError(ErrorClass.BACKEND, "http_500", "broken")]

    deliver(fx, job)

    health = fx.health.get(first)
    assert health.state is CircuitState.OPEN
    assert health.opened_at == fx.clock()  # a new cool-down from now
    assert len(fx.provider(first).calls_of("create")) == 1
    assert len(renders_sent(fx, second)) == 1


def test_crossing_the_warning_threshold_is_announced_once(tmp_path: Path) -> None:
    fx = fake_runtime(tmp_path, daily_budget_usd=1.0, daily_budget_warn_usd=0.5)
    for n in range(3):
        job = admit(fx, job_id=f"job_{n}")
        deliver(fx, job)

    warnings = [p for p in fx.bus.published if p.payload.get("type") == "budget.warning"]
    assert len(warnings) == 1
    assert warnings[0].payload["day"] == DAY


def test_transient_create_errors_are_given_up_on_when_the_retry_budget_runs_out(
        tmp_path: Path) -> None:
    """The budget bounds the time spent retrying, not only the strike count: on the
    runtime's clock, so the backoff's sleeps use it up."""
    fx = fake_runtime(tmp_path, transient_retry_budget_s=5.0, circuit_strikes=10)
    job = admit(fx)
    first, second = job.plan[:2]
    fx.provider(first).creates = [ProviderError(ErrorClass.TRANSIENT, "http_503", "later")] * 10

    after = deliver(fx, job)

    assert 3 <= len(fx.provider(first).calls_of("create")) <= 4  # backoff 1, 2, 4 s (jittered)
    assert sum(fx.clock.slept) < 5.0
    assert after.attempts[0].error is not None
    assert after.attempts[0].error.code == "http_503"
    assert fx.health.get(first).state is CircuitState.CLOSED
    assert len(renders_sent(fx, second)) == 1


def test_a_cut_off_create_the_provider_never_received_falls_back_at_no_charge(
        fx: Fakes) -> None:
    job = admit(fx)
    first, second = job.plan[:2]
    provider = fx.provider(first)
    provider.can_find_tasks = True
    provider.creates = [ProviderError(ErrorClass.UNKNOWN, "timeout", "cut off")]
    provider.found = None

    after = deliver(fx, job)

    attempt = after.attempts[0]
    assert attempt.error is not None
    assert attempt.error.code == "create_not_received"
    assert attempt.cost_usd == 0
    # Not before the provider has surely recorded the call (twice the create timeout).
    assert fx.clock() - attempt.started_at > dt.timedelta(
        seconds=2 * fx.rt.settings.create_timeout_s)
    assert provider.calls_of("create") == [job.id]
    assert figures(fx).committed_micros == 0
    assert len(renders_sent(fx, second)) == 1


def test_a_job_cancelled_while_its_task_was_created_cancels_the_task(fx: Fakes) -> None:
    job = admit(fx)
    provider = fx.provider(job.plan[0])

    def create_while_cancelled(spec: object) -> str:
        fx.store.mutate(job.id, lambda j: lifecycle.cancel(j, "by the caller", fx.clock()))
        return "task-1"

    provider.create = create_while_cancelled  # type: ignore[method-assign,assignment]

    after = deliver(fx, job)

    assert after.status is JobStatus.CANCELLED
    assert provider.calls_of("cancel") == ["task-1"]  # stop paying for it
    assert provider.calls_of("poll") == []
    assert figures(fx).reserved_micros == 0


def test_a_transient_download_error_fetches_the_output_again_and_never_re_renders(
        fx: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    job = admit(fx)
    backend = job.plan[0]
    provider = fx.provider(backend)
    failures = [ProviderError(ErrorClass.TRANSIENT, "http_503", "storage busy")]
    real = provider.download

    def download(status: TaskStatus, dest: Path) -> None:
        if failures:
            raise failures.pop(0)
        real(status, dest)

    monkeypatch.setattr(provider, "download", download)

    handed = deliver(fx, job)
    assert handed.status is JobStatus.RENDERING
    assert [p.topic for p in fx.bus.published if p.attributes.get("continuation")] == [
        fx.rt.catalog.get(backend).topic]

    done = deliver(fx, job, delivery="d2")  # the continuation
    assert done.status is JobStatus.SUCCEEDED
    assert provider.calls_of("create") == [job.id]
    assert fx.health.get(backend).strikes == 0


@pytest.mark.parametrize(("broken", "code"), [
    (ProviderError(ErrorClass.BACKEND, "http_404", "output gone"), "output_unavailable"),
    (b"not a video at all", "undecodable_output"),
])
def test_an_output_that_cannot_be_had_strikes_is_charged_and_falls_back(
        fx: Fakes, monkeypatch: pytest.MonkeyPatch, broken: ProviderError | bytes,
        code: str) -> None:
    job = admit(fx)
    first, second = job.plan[:2]
    provider = fx.provider(first)
    if isinstance(broken, bytes):
        provider.video = broken
    else:
        def download(status: TaskStatus, dest: Path) -> None:
            raise broken
        monkeypatch.setattr(provider, "download", download)

    after = deliver(fx, job)

    attempt = after.attempts[0]
    assert attempt.error is not None
    assert (attempt.error.error_class, attempt.error.code) == (ErrorClass.OUTPUT_CHECK, code)
    assert attempt.cost_usd == attempt.estimated_cost_usd  # rendered: the provider charged it
    assert figures(fx).spent_micros == to_micros(attempt.cost_usd)
    assert fx.health.get(first).strikes == 1
    assert len(renders_sent(fx, second)) == 1


def test_a_task_past_the_providers_timeout_is_cancelled_struck_and_charged(fx: Fakes) -> None:
    job = admit(fx)
    first, second = job.plan[:2]
    provider = fx.provider(first)
    provider.polls["task-9"] = [RUNNING]
    fx.store.mutate(job.id, lambda j: lifecycle.claim_attempt(
        j, first, 0, "d1", fx.clock(), fx.rt.settings.attempt_lease, 0.32))
    fx.store.mutate(job.id, lambda j: lifecycle.record_task(j, 0, "task-9", fx.clock()))
    fx.clock.advance(fx.rt.catalog.get(first).limits.task_timeout_s + 1)

    after = deliver(fx, job, delivery="d-late")

    attempt = after.attempts[0]
    assert attempt.error is not None
    assert attempt.error.code == "task_timeout"
    assert attempt.cost_usd == attempt.estimated_cost_usd
    assert provider.calls_of("cancel") == ["task-9"]
    assert fx.health.get(first).strikes == 1
    assert len(renders_sent(fx, second)) == 1


def test_a_probe_refused_for_its_content_lets_the_next_caller_probe_at_once(
        fx: Fakes) -> None:
    """A refusal says nothing of the backend's health: the circuit neither closes nor
    starts a new cool-down, and the probe (owned by this attempt, in whichever
    invocation ends it) is released for another job."""
    job = admit(fx)
    first = job.plan[0]
    opened = fx.clock() - dt.timedelta(seconds=fx.rt.settings.circuit_cooldown_s + 1)
    fx.health.docs[first] = Health(first, CircuitState.OPEN, strikes=3, opened_at=opened)
    fx.provider(first).creates = ["task-1"]
    fx.provider(first).polls["task-1"] = [TaskStatus(TaskState.FAILED, error=ProviderError(
        ErrorClass.CONTENT_REFUSED, "moderation", "refused"))]

    after = deliver(fx, job)

    assert after.attempts[0].error is not None
    assert after.attempts[0].error.code == "moderation"
    health = fx.health.get(first)
    assert (health.state, health.strikes, health.probe_owner, health.opened_at) == (
        CircuitState.OPEN, 3, None, opened)
    other = admit(fx, job_id="job_2")
    assert deliver(fx, other).status is JobStatus.SUCCEEDED  # it probed, and closed it
    assert fx.health.get(first).state is CircuitState.CLOSED


def test_a_busy_backend_with_another_to_fall_back_to_is_waited_for_then_skipped(
        tmp_path: Path) -> None:
    fx = fake_runtime(tmp_path, backend_busy_wait_s=30.0)
    job = admit(fx)
    first, second = job.plan[:2]
    for n in range(fx.rt.settings.circuit_strikes):  # every call slot held by others
        fx.health.take_slot(first, f"other-{n}", fx.rt.settings.circuit_strikes, fx.clock(),
                            dt.timedelta(hours=1))

    after = deliver(fx, job)

    attempt = after.attempts[0]
    assert attempt.status is AttemptStatus.SKIPPED
    assert attempt.error is not None
    assert attempt.error.code == "backend_busy"
    assert 30.0 <= sum(fx.clock.slept) < 31.0  # waited the busy wait out, on the runtime's clock
    assert fx.provider(first).calls == []
    assert fx.health.get(first).strikes == 0  # back-pressure, not a strike
    assert len(renders_sent(fx, second)) == 1
