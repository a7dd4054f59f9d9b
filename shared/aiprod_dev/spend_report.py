"""`aiprod report`: what real jobs cost, per backend, against the hindsight route.

From the job records alone (Firestore `jobs`): per backend, the jobs that had an
attempt on it, their attempts, failures (and how many of those were billed
anyway), what it was paid, the mean quality score of the videos it delivered and
the p95 render time of its successful attempts. The hindsight figure for the same
jobs is what they would have cost sent straight to the backend that delivered
them: the records only know the outcomes that happened, so this is the money
spent on attempts that failed (and were billed) or were routed in vain; a job that
failed everywhere would have cost nothing in hindsight.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiprod.domain.job import Attempt, AttemptStatus, Job

COUNTED = (AttemptStatus.SUCCEEDED, AttemptStatus.FAILED, AttemptStatus.CANCELLED)


def nearest_rank(ordered: Sequence[float], share: float) -> float:
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _render_s(attempt: Attempt) -> float | None:
    if attempt.ended_at is None:
        return None
    return max(0.0, (attempt.ended_at - attempt.started_at).total_seconds())


def _hindsight_usd(job: Job) -> float:
    """The job sent straight to the backend that delivered it: that attempt's cost."""
    return sum(a.cost_usd for a in job.attempts if a.status is AttemptStatus.SUCCEEDED)


@dataclass
class _Row:
    jobs: set[str] = field(default_factory=set)
    attempts: int = 0
    succeeded: int = 0
    failures: int = 0
    charged_failures: int = 0
    spend_usd: float = 0.0
    qualities: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    hindsight_usd: float = 0.0

    def as_json(self) -> dict[str, Any]:
        times = sorted(self.times)
        return {"jobs": len(self.jobs), "attempts": self.attempts, "succeeded": self.succeeded,
                "failures": self.failures, "charged_failures": self.charged_failures,
                "spend_usd": round(self.spend_usd, 6),
                "mean_quality": (round(sum(self.qualities) / len(self.qualities), 4)
                                 if self.qualities else None),
                "p95_time_s": round(nearest_rank(times, 0.95), 1) if times else None,
                "hindsight_usd": round(self.hindsight_usd, 6)}


def report(jobs: Iterable[Job]) -> dict[str, Any]:
    """Per backend and in total; each job's hindsight counted once per backend it touched
    (and once in the total)."""
    rows: dict[str, _Row] = {}
    total = _Row()
    for job in jobs:
        tried = [a for a in job.attempts if a.status in COUNTED]
        if not tried:
            continue
        hindsight = _hindsight_usd(job)
        total.jobs.add(job.id)
        total.hindsight_usd += hindsight
        for backend in {a.backend for a in tried}:
            row = rows.setdefault(backend, _Row())
            row.jobs.add(job.id)
            row.hindsight_usd += hindsight
        for attempt in tried:
            for row in (rows[attempt.backend], total):
                row.attempts += 1
                row.spend_usd += attempt.cost_usd
                if attempt.status is AttemptStatus.SUCCEEDED:
                    row.succeeded += 1
                    seconds = _render_s(attempt)
                    if seconds is not None:
                        row.times.append(seconds)
                    if job.quality_score is not None:
                        row.qualities.append(job.quality_score)
                elif attempt.status is AttemptStatus.FAILED:
                    row.failures += 1
                    row.charged_failures += attempt.cost_usd > 0
    return {"backends": {name: rows[name].as_json() for name in sorted(rows)},
            "total": total.as_json()}
