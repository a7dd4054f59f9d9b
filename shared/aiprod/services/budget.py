"""Budget policy around the ledger: which scopes a job counts against, reserving
before a provider call, settling or releasing once after, and the daily
warning and critical thresholds."""

from __future__ import annotations

import logging

from aiprod.adapters.ledger import GLOBAL, Scope
from aiprod.domain import budget, lifecycle
from aiprod.domain import forecast as forecast_policy
from aiprod.domain.apikeys import key_of_owner
from aiprod.domain.budget import DayFigures, Threshold
from aiprod.domain.forecast import Forecast
from aiprod.domain.job import Attempt, AttemptStatus, Funding, Job
from aiprod.observability.logs import log
from aiprod.services import telemetry
from aiprod.services.publishing import emit_budget_threshold
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)


def global_scope(rt: Runtime) -> Scope:
    return Scope(GLOBAL, budget.to_micros(rt.settings.daily_budget_usd))


def key_scope(rt: Runtime, owner: str) -> Scope | None:
    """The daily budget of the API key behind `owner`, if it has one."""
    key_id = key_of_owner(owner)
    key = rt.access.get_key(key_id) if key_id else None
    if key is None or key.daily_budget_usd is None:
        return None
    return Scope(f"key:{key.id}", budget.to_micros(key.daily_budget_usd))


def scopes_for(rt: Runtime, job: Job) -> list[Scope]:
    """Every limit a job's money counts against: the day's, and its API key's."""
    return owner_scopes(rt, job.owner)


def owner_scopes(rt: Runtime, owner: str) -> list[Scope]:
    scopes = [global_scope(rt)]
    own = key_scope(rt, owner)
    if own is not None:
        scopes.append(own)
    return scopes


def fund(rt: Runtime, job_id: str, owner: str, amount_usd: float, attempt: int) -> Funding | None:
    """Hold a job's first attempt's money at admission, against every scope, or nothing.

    One hold id per (job, try): a retried admission of the same job meets its own hold
    (the ledger answers yes again while it is held), and a try at another amount never
    reuses a refused hold of a different size."""
    day = budget.ledger_day(rt.clock())
    funding = Funding(day=day, reservation_id=f"{job_id}-funding-{attempt}",
                      amount_usd=amount_usd)
    if not rt.ledger.reserve(day, funding.reservation_id, budget.to_micros(amount_usd),
                             owner_scopes(rt, owner), job_id=job_id):
        return None
    check_thresholds(rt, day)
    return funding


def close_all(rt: Runtime, job: Job) -> None:
    """What an ended job leaves to the ledger: every attempt's hold closed (released,
    or settled at what the provider may have billed) and admission's unused hold given
    back. Idempotent."""
    for index in range(len(job.attempts)):
        close(rt, job, index)
    release_funding(rt, job)


def release_funding(rt: Runtime, job: Job) -> bool:
    """Give back admission's hold of a job that ended before its first attempt took it
    (cancelled while queued, dead-lettered, ended by the watchdog). Idempotent."""
    if not job.status.terminal or job.funding is None or not lifecycle.funding_unused(job):
        return False
    if rt.ledger.release(job.funding.day, job.funding.reservation_id):
        log(logger, logging.INFO, "budget released: the job ended before rendering",
            job_id=job.id, released_usd=job.funding.amount_usd)
        return True
    return False


def reservation_id(job: Job, index: int) -> str:
    return job.attempts[index].reservation_id or f"{job.id}-{index}"


def today(rt: Runtime) -> DayFigures:
    return rt.ledger.figures(budget.ledger_day(rt.clock()), global_scope(rt),
                             budget.to_micros(rt.settings.daily_budget_warn_usd))


def key_today(rt: Runtime, owner: str) -> DayFigures | None:
    """Today's figures for the API key behind `owner`, if it has a daily budget."""
    scope = key_scope(rt, owner)
    if scope is None:
        return None
    return rt.ledger.figures(budget.ledger_day(rt.clock()), scope, scope.limit_micros)


def forecast(rt: Runtime, figures: DayFigures, scope: str = GLOBAL) -> Forecast:
    """Where `figures`' day is heading at the recent spend rate (aiprod.domain.forecast)."""
    return forecast_policy.forecast(rt.clock(), figures.limit_micros, figures.committed_micros,
                                    rt.ledger.hourly_spent(figures.day, scope))


def key_forecast(rt: Runtime, owner: str, figures: DayFigures) -> Forecast | None:
    scope = key_scope(rt, owner)
    return forecast(rt, figures, scope.name) if scope is not None else None


def reserve(rt: Runtime, job: Job, index: int, amount_usd: float) -> str | None:
    """Hold the attempt's estimate; the ledger day it was held on, or None if it cannot fit.
    A first attempt on admission's hold needs no call: the job was stored only once the
    ledger granted it, and only the job's end (or a job that was never stored) gives it
    back."""
    day = job.attempts[index].reservation_day or budget.ledger_day(rt.clock())
    if lifecycle.uses_funding(job, index):
        return day
    held = rt.ledger.reserve(day, reservation_id(job, index), budget.to_micros(amount_usd),
                             scopes_for(rt, job), job_id=job.id)
    if held:
        check_thresholds(rt, day)
    return day if held else None


def close(rt: Runtime, job: Job, index: int) -> bool:
    """Settle a succeeded attempt's cost or release any other attempt's hold. Idempotent:
    True only for the call that closed it. An attempt whose stopped task's charge is not
    known yet keeps its hold until it is."""
    attempt: Attempt = job.attempts[index]
    if attempt.reservation_day is None or not attempt.status.terminal or attempt.cost_pending:
        return False
    rid = reservation_id(job, index)
    if attempt.status is AttemptStatus.SUCCEEDED or attempt.cost_usd > 0:
        if rt.ledger.settle(attempt.reservation_day, rid, budget.to_micros(attempt.cost_usd)):
            log(logger, logging.INFO, "budget settled", job_id=job.id, cost_usd=attempt.cost_usd)
            check_thresholds(rt, attempt.reservation_day)
            return True
    elif rt.ledger.release(attempt.reservation_day, rid):
        log(logger, logging.INFO, "budget released", job_id=job.id,
            released_usd=attempt.estimated_cost_usd)
        return True
    return False


def release_unsent(rt: Runtime, job: Job, index: int) -> None:
    """Give back a hold whose attempt never called the provider. Admission's hold stays:
    the redelivery that claims the attempt again uses it."""
    day = job.attempts[index].reservation_day
    if day is not None and not lifecycle.uses_funding(job, index):
        rt.ledger.release(day, reservation_id(job, index))


def check_thresholds(rt: Runtime, day: str) -> Threshold:
    """Announce the day's warning and critical thresholds, once each."""
    figures = rt.ledger.figures(day, global_scope(rt),
                                budget.to_micros(rt.settings.daily_budget_warn_usd))
    today = budget.ledger_day(rt.clock())
    telemetry.budget_level(figures, today=today)
    if day == today:
        telemetry.budget_forecast(forecast(rt, figures))
    level = figures.threshold
    if level is not Threshold.OK and rt.ledger.first_crossing(day, level.value):
        log(logger, logging.WARNING if level is Threshold.WARNING else logging.ERROR,
            f"daily budget {level.value}: {budget.to_usd(figures.committed_micros)} USD of "
            f"{budget.to_usd(figures.limit_micros)} committed", event="budget_threshold",
            **figures.public())
        emit_budget_threshold(rt, figures)
    return level
