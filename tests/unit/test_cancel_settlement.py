"""What a task stopped from outside costs, and settling it exactly once.

The rule (docs/budget-ledger.md, "Cancelled renders"): the provider's own figure
where it reports one (Runway's final `cost`; Replicate's `aborted`, documented free),
nothing for a task that failed, else the full estimate (the charge is unknowable).
"""

from __future__ import annotations

import datetime as dt

import pytest

from aiprod.domain import lifecycle
from aiprod.domain.job import Attempt, AttemptStatus, Job, JobRequest, JobStatus

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
ESTIMATE = 0.6


@pytest.mark.parametrize(("state", "reported", "charged"), [
    ("CANCELLED", 0.0, 0.0),        # Runway: cancelled before it ran, refunded
    ("CANCELLED", 0.6, 0.6),        # Runway: cancelled while RUNNING, not refunded
    ("SUCCEEDED", 0.6, 0.6),        # finished before the cancel landed: paid in full
    ("CANCELLED", None, ESTIMATE),  # Replicate `canceled`, Veo: billed, amount unreported
    ("RUNNING", None, ESTIMATE),    # still running after the cancel: unknowable
    (None, None, ESTIMATE),         # could not read the task at all
    ("FAILED", None, 0.0),          # a failed render costs nothing, as everywhere
])
def test_the_charge_of_a_stopped_task(state: str | None, reported: float | None,
                                      charged: float) -> None:
    assert lifecycle.stopped_task_charge(state, reported, ESTIMATE) == charged


def running_job() -> Job:
    return Job(id="job_1", owner="o", request=JobRequest(prompt="fox"), plan=["a", "b"],
               status=JobStatus.RENDERING, estimated_cost_usd=ESTIMATE,
               attempts=[Attempt(backend="a", status=AttemptStatus.RUNNING,
                                 provider_task_id="task-1", started_at=T0,
                                 estimated_cost_usd=ESTIMATE, reservation_day="2026-11-26")],
               created_at=T0, updated_at=T0)


def test_a_cancel_holds_the_estimate_until_the_backend_reports_the_charge() -> None:
    job = running_job()
    assert lifecycle.cancel(job, "by caller", T0).open_attempt == 0
    [attempt] = job.attempts
    assert (attempt.status, attempt.cost_pending) == (AttemptStatus.CANCELLED, True)
    assert job.cost_usd == ESTIMATE  # shown (and held) conservatively meanwhile

    assert lifecycle.settle_stopped_task(job, 0, 0.0, T0)
    assert (attempt.cost_usd, attempt.cost_pending, job.cost_usd) == (0.0, False, 0.0)
    # The cancel message and the in-flight render race: the second settles nothing.
    assert not lifecycle.settle_stopped_task(job, 0, ESTIMATE, T0)
    assert job.cost_usd == 0.0


def test_a_dead_lettered_running_task_is_left_for_its_backend_to_settle() -> None:
    job = running_job()
    assert lifecycle.fail_job(job, "dead-lettered", T0)
    assert job.attempts[0].cost_pending


def test_an_attempt_without_a_task_is_settled_at_once_at_its_estimate() -> None:
    job = running_job()
    job.attempts[0].provider_task_id = None
    job.attempts[0].status = AttemptStatus.CREATING  # the create call may be in flight
    lifecycle.cancel(job, "by caller", T0)
    assert not job.attempts[0].cost_pending  # no task to ask about: the estimate, now
    assert job.cost_usd == ESTIMATE
    assert not lifecycle.settle_stopped_task(job, 0, 0.0, T0)


def test_an_attempt_that_ended_by_itself_is_never_resettled() -> None:
    job = running_job()
    lifecycle.fail_attempt(job, 0, lifecycle.AttemptError(
        error_class=lifecycle.ErrorClass.BACKEND, code="x", message="boom"), T0)
    assert not lifecycle.settle_stopped_task(job, 0, ESTIMATE, T0)


def test_old_render_messages_stay_valid_and_render_messages_keep_their_shape() -> None:
    from aiprod.services.messages import RenderMessage

    old = RenderMessage.model_validate({"job_id": "j", "backend": "a", "attempt": 0})
    assert old.action == "render"
    assert old.body() == {"job_id": "j", "backend": "a", "attempt": 0}
    cancel = RenderMessage(job_id="j", backend="a", attempt=0, action="cancel")
    assert RenderMessage.model_validate(cancel.body()) == cancel
