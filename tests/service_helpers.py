"""Shared steps of the service tests: admit a job through the real admission path,
and deliver the render message it dispatched."""

from __future__ import annotations

from aiprod.domain import budget as budget_policy
from aiprod.domain.job import Job, JobRequest
from aiprod.services import admission
from aiprod.services.messages import RenderMessage
from aiprod.services.render import handle_render
from tests.fakes import Fakes

DAY = "2026-11-26"  # the ledger day of tests.fakes.T0


def admit(fx: Fakes, job_id: str = "job_1", plan: int | None = None, **request: object) -> Job:
    """A job admitted for 4 s of video (every backend can do it), optionally with its
    plan cut to its first `plan` backends."""
    fields: dict[str, object] = {"prompt": "a red fox in snow", "duration_seconds": 4} | request
    admitted = admission.admit(fx.rt, JobRequest.model_validate(fields), job_id=job_id,
                               owner="tester")
    assert isinstance(admitted, admission.Admitted), admitted
    if plan is not None:
        def cut(job: Job) -> None:
            job.plan = job.plan[:plan]
        fx.store.mutate(job_id, cut)
    job = fx.store.get(job_id)
    assert job is not None
    return job


def message(job: Job, attempt: int = 0) -> RenderMessage:
    return RenderMessage(job_id=job.id, backend=job.plan[attempt], attempt=attempt)


def deliver(fx: Fakes, job: Job, attempt: int = 0, delivery: str = "d1") -> Job:
    handle_render(fx.rt, message(job, attempt), delivery)
    after = fx.store.get(job.id)
    assert after is not None
    return after


def renders_sent(fx: Fakes, backend: str) -> list[dict[str, object]]:
    """Render messages published to a backend's topic (not cancels)."""
    topic = fx.rt.catalog.get(backend).topic
    return [p for p in fx.bus.on(topic) if p.get("action", "render") == "render"]


def figures(fx: Fakes) -> budget_policy.DayFigures:
    from aiprod.services import budget
    return fx.rt.ledger.figures(DAY, budget.global_scope(fx.rt), 0)
