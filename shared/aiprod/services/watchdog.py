"""The watchdog: no job stays stuck, whatever happens to its messages.

Run on a schedule (Cloud Scheduler in production, the local stack's timer in
development). It reads the jobs that have not moved within
AIPROD_WATCHDOG_STALE_S (a cheap query: two statuses, oldest first, a page at a
time) and re-drives each through the same idempotent paths the functions use:
the render message of an attempt whose lease expired (the render's claim takes
the attempt over), the dispatch of a job never claimed, the hand-off of a job
whose attempt ended, and the end of a job with no backend left (or whose next
backend was removed from the catalog: re-driving it there could only fail, every
run). Then it closes ledger holds left behind by attempts that ended. Every action
is safe to race a late delivery: the claims and the ledger decide who acts, once.
A job or hold it fails on is counted (watchdog_redriven, action=error) and skipped:
the run goes on with the others.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter

from aiprod.adapters.ledger import Held
from aiprod.domain import budget as budget_policy
from aiprod.domain import lifecycle
from aiprod.domain import watchdog as policy
from aiprod.domain.job import Job
from aiprod.domain.watchdog import Action
from aiprod.observability.logs import log
from aiprod.services import admission, budget, render, reuse, telemetry
from aiprod.services.messages import RenderMessage
from aiprod.services.publishing import emit_terminal, request_stop
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)

PAGE = 100  # jobs read per query; a run reads pages until none is left or time is up
HOLD_PAGE = 100  # old ledger holds read per query, likewise


def sweep(rt: Runtime) -> dict[str, int]:
    """One watchdog run; what it did, by action (and `holds_closed`)."""
    now = rt.clock()
    stale = dt.timedelta(seconds=rt.settings.watchdog_stale_s)
    stop_at = rt.monotonic() + rt.settings.watchdog_interval_s
    done: Counter[str] = Counter()
    cursor: object | None = None
    while True:
        jobs, cursor = rt.store.unmoved(policy.OPEN_STATUSES, now - stale, PAGE, cursor)
        for job in jobs:
            try:
                done[redrive(rt, job, now, stale).value] += 1
            except Exception as error:  # one job's fault must not stop the others
                logger.exception("watchdog could not re-drive a job", extra={"fields": {
                    "job_id": job.id, "error_type": type(error).__name__}})
                telemetry.watchdog_redriven(job.id, "error")  # alerted on, like a re-drive
                done["errors"] += 1
        if cursor is None or rt.monotonic() > stop_at:
            break
    done["holds_closed"] = close_leftover_holds(rt, now, stale, stop_at)
    done.pop(Action.NONE.value, None)
    summary = dict(done)
    log(logger, logging.WARNING if sum(summary.values()) else logging.INFO,
        "watchdog run", **summary)
    return summary


def redrive(rt: Runtime, job: Job, now: dt.datetime, stale: dt.timedelta) -> Action:
    """Act on one job the query found (its verdict is taken on the data just read;
    each action re-checks under the same claims a late delivery would meet)."""
    if job.reused_from is not None:  # it renders nothing: it ends with the job it joined
        if not reuse.settle_follower(rt, job):
            return Action.NONE  # its leader is still rendering (or it ended meanwhile)
        log(logger, logging.WARNING, "watchdog ended a job with the identical job it joined",
            job_id=job.id, reused_from=job.reused_from)
        telemetry.watchdog_redriven(job.id, Action.END_FOLLOWER.value)
        return Action.END_FOLLOWER
    refusal = rt.settings.fallback_on_refusal
    backends = rt.catalog.names
    verdict = policy.decide(job, now, stale, refusal, backends)
    if verdict.action is Action.NONE:
        return Action.NONE
    if verdict.action is not Action.END:
        marked = rt.store.mutate(job.id, lambda j: policy.mark_redriven(
            j, now, stale, verdict.action, refusal, backends))
        if marked is None or not marked[1]:
            return Action.NONE  # it moved meanwhile, or another run took it
        job = marked[0]
    log(logger, logging.WARNING, f"watchdog re-drives a job: {verdict.action.value}",
        job_id=job.id, reason=verdict.reason, backend=verdict.backend,
        attempt=verdict.attempt)
    if verdict.action is Action.RESUME:
        assert verdict.backend is not None
        assert verdict.attempt is not None
        message = RenderMessage(job_id=job.id, backend=verdict.backend, attempt=verdict.attempt)
        rt.bus.publish(rt.catalog.get(verdict.backend).topic, message.body(),
                       {"job_id": job.id, "redrive": "watchdog"})
    elif verdict.action is Action.DISPATCH:
        admission.ensure_dispatched(rt, job)
    elif verdict.action is Action.FOLLOW_UP:
        assert verdict.attempt is not None
        render.follow_up(rt, job, verdict.attempt)
    elif verdict.action is Action.END:
        _end(rt, job, now, stale)
    for index in policy.ended_attempts(job):
        budget.close(rt, job, index)
    telemetry.watchdog_redriven(job.id, verdict.action.value)
    return verdict.action


def _end(rt: Runtime, job: Job, now: dt.datetime, stale: dt.timedelta) -> None:
    def end(fresh: Job) -> bool:
        verdict = policy.decide(fresh, now, stale, rt.settings.fallback_on_refusal,
                                rt.catalog.names)
        if verdict.action is not Action.END:
            return False  # it moved meanwhile
        return lifecycle.fail_job(fresh, verdict.reason, now, verdict.code)

    done = rt.store.mutate(job.id, end)
    if done is None or not done[1]:
        return
    ended = done[0]
    budget.close_all(rt, ended)
    telemetry.ended(ended)
    emit_terminal(rt, ended)


def close_leftover_holds(rt: Runtime, now: dt.datetime, stale: dt.timedelta,
                         stop_at: float | None = None) -> int:
    """Close holds that outlived their attempt (yesterday's and today's ledger days:
    no render lasts longer). Returns how many were closed.

    Every queued job holds its admission money, so under a backlog the days hold
    thousands of holds. The run reads only those older than `stale`, oldest first, a
    page at a time, and starts no page after `stop_at` (its first page excepted):
    while more old holds wait than a run can read, the newest of them wait for a
    later run (their money stays counted as reserved meanwhile: never overspent)."""
    closed = 0
    days = dict.fromkeys(budget_policy.ledger_day(now - d)
                         for d in (dt.timedelta(days=1), dt.timedelta(0)))
    pages = 0
    for day in days:
        cursor: object | None = None
        while True:
            if pages and stop_at is not None and rt.monotonic() > stop_at:
                return closed
            holds, cursor = rt.ledger.held_before(day, now - stale, HOLD_PAGE, cursor)
            pages += 1
            for held in holds:
                try:
                    closed += _close_leftover(rt, held, now)
                except Exception as error:  # one hold's fault must not stop the others
                    logger.exception("watchdog could not close a leftover hold", extra={
                        "fields": {"job_id": held.job_id, "reservation_id": held.reservation_id,
                                   "error_type": type(error).__name__}})
                    telemetry.watchdog_redriven(held.job_id, "error")
            if cursor is None:
                break
    return closed


def _close_leftover(rt: Runtime, held: Held, now: dt.datetime) -> bool:
    """Close one hold left HELD past the bound if its job calls for it; True if closed."""
    job = rt.store.get(held.job_id) if held.job_id else None
    verdict = policy.leftover_hold(job, held.reservation_id)
    if verdict.close_attempt is not None and job is not None:
        index = verdict.close_attempt
        attempt = job.attempts[index]
        if attempt.cost_pending and attempt.backend not in rt.catalog.names:
            # Its backend was removed from the catalog: no deployment is left to stop
            # the task and read its charge. Count the estimate (the conservative rule,
            # as for a cancel Pub/Sub gave up on), then close the hold at it.
            settled = rt.store.mutate(job.id, lambda j: lifecycle.settle_stopped_task(
                j, index, j.attempts[index].estimated_cost_usd, now))
            if settled is None:
                return False
            job = settled[0]
            log(logger, logging.ERROR, "task of a backend no longer in the catalog: its "
                "estimate counted as charged", job_id=job.id, backend=attempt.backend,
                attempt=index, cost_usd=attempt.estimated_cost_usd)
        if job.attempts[verdict.close_attempt].cost_pending:
            # Ended from outside while its task ran; the cancel message that has
            # the backend stop the task and settle its charge was lost: ask again
            # (idempotent there). The hold closes once the charge is known.
            request_stop(rt, job)
            telemetry.watchdog_redriven(held.job_id, "stop_task")
            log(logger, logging.WARNING, "watchdog asked again to stop a task",
                job_id=held.job_id, reservation_id=held.reservation_id, day=held.day)
            return False
        if not budget.close(rt, job, verdict.close_attempt):
            return False
    elif not (verdict.release and rt.ledger.release(held.day, held.reservation_id)):
        return False
    telemetry.watchdog_redriven(held.job_id, "close_hold")
    log(logger, logging.WARNING, "watchdog closed a leftover budget hold",
        job_id=held.job_id, reservation_id=held.reservation_id, day=held.day)
    return True
