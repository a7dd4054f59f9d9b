"""`aiprod report`: per-backend spend from job records, on hand-built jobs."""

from __future__ import annotations

import datetime as dt

from aiprod.domain.job import Attempt, AttemptError, AttemptStatus, ErrorClass, Job, JobRequest
from aiprod.domain.job import JobStatus as S
from aiprod_dev.spend_report import report

T0 = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)


def _attempt(backend: str, status: AttemptStatus, cost: float, seconds: float,
             error_class: ErrorClass | None = None) -> Attempt:
    error = (AttemptError(error_class=error_class, code="x", message="x")
             if error_class else None)
    return Attempt(backend=backend, status=status, started_at=T0,
                   ended_at=T0 + dt.timedelta(seconds=seconds), error=error,
                   estimated_cost_usd=cost, cost_usd=cost)


def _job(job_id: str, status: S, attempts: list[Attempt], quality: float | None) -> Job:
    return Job(id=job_id, owner="key:k", request=JobRequest(prompt="fox"),
               plan=[a.backend for a in attempts], status=status, attempts=attempts,
               estimated_cost_usd=0.4, cost_usd=sum(a.cost_usd for a in attempts),
               quality_score=quality, created_at=T0, updated_at=T0)


def test_spend_per_backend_and_the_hindsight_route() -> None:
    ok, failed = AttemptStatus.SUCCEEDED, AttemptStatus.FAILED
    jobs = [
        # Replicate rendered a blank clip (billed 0.40), Veo delivered (0.48).
        _job("a", S.SUCCEEDED, [_attempt("replicate", failed, 0.40, 30, ErrorClass.OUTPUT_CHECK),
                                _attempt("veo", ok, 0.48, 100)], 0.8),
        # Replicate failed unbilled, Veo delivered.
        _job("b", S.SUCCEEDED, [_attempt("replicate", failed, 0.0, 5, ErrorClass.BACKEND),
                                _attempt("veo", ok, 0.48, 120)], 0.9),
        # Replicate delivered at once.
        _job("c", S.SUCCEEDED, [_attempt("replicate", ok, 0.40, 60)], 0.7),
        # Failed everywhere, one billed failure: nothing would have worked.
        _job("d", S.FAILED, [_attempt("veo", failed, 0.48, 50, ErrorClass.OUTPUT_CHECK)], None),
        # Skipped without a call: not counted.
        _job("e", S.FAILED, [_attempt("veo", AttemptStatus.SKIPPED, 0.0, 0)], None),
    ]
    result = report(jobs)
    assert result["backends"]["replicate"] == {
        "jobs": 3, "attempts": 3, "succeeded": 1, "failures": 2, "charged_failures": 1,
        "spend_usd": 0.8, "mean_quality": 0.7, "p95_time_s": 60.0,
        # a, b and c sent straight where they succeeded: 0.48 + 0.48 + 0.40.
        "hindsight_usd": 1.36}
    assert result["backends"]["veo"] == {
        "jobs": 3, "attempts": 3, "succeeded": 2, "failures": 1, "charged_failures": 1,
        "spend_usd": 1.44, "mean_quality": 0.85, "p95_time_s": 120.0,
        "hindsight_usd": 0.96}   # a and b: 0.48 each; d: nothing
    total = result["total"]
    assert (total["jobs"], total["spend_usd"], total["hindsight_usd"]) == (4, 2.24, 1.36)
    assert (total["failures"], total["charged_failures"]) == (3, 2)
    assert total["mean_quality"] == 0.8   # (0.8 + 0.9 + 0.7) / 3
