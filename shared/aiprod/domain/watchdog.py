"""What the watchdog does with a job that stopped moving: a pure decision, no I/O.

A job moves on messages (render-<backend> topics). When a message is lost (a
push subscription that stopped redelivering, a publish that died with its
process), nothing else would move the job. The watchdog re-drives it through
the same idempotent claims the render function uses (lifecycle.claim_attempt),
so a re-drive that races a late delivery renders nothing twice: one of the two
deliveries claims, the other stands back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from aiprod.domain.job import Job, JobStatus
from aiprod.domain.lifecycle import falls_back, next_backend

# The statuses a job can be stuck in; the watchdog's query reads only these.
OPEN_STATUSES = (JobStatus.QUEUED, JobStatus.RENDERING)


class Action(StrEnum):
    NONE = "none"            # moving, terminal, or its attempt's lease is live: leave it
    RESUME = "resume"        # republish the open attempt's render message (lease expired)
    DISPATCH = "dispatch"    # QUEUED with no attempt: send it to its first backend again
    FOLLOW_UP = "follow_up"  # its last attempt ended but it was never handed on
    END = "end"              # no backend is left, or the one it needs left the catalog:
    #                          end it FAILED
    END_FOLLOWER = "end_follower"  # joined an identical render whose end it missed (or
    #                                whose job was never stored): ended with it


@dataclass(frozen=True)
class Verdict:
    action: Action
    backend: str | None = None   # where to publish (RESUME, DISPATCH, FOLLOW_UP)
    attempt: int | None = None   # the render message's attempt index (RESUME, DISPATCH,
    #                              FOLLOW_UP: the attempt that ended)
    reason: str = ""
    code: str = "no_backend_left"  # END: the error code of an attempt it ends


def decide(job: Job, now: dt.datetime, stale: dt.timedelta,
           fallback_on_refusal: bool = False,
           backends: Collection[str] | None = None) -> Verdict:
    """What to do with `job`, read fresh, at `now`.

    A job is left alone while it moved within `stale`. An open attempt is left
    alone while its lease lives, however long ago the job moved: a live render
    polling a long task changes nothing in the job but holds an unexpired lease
    (it hands off to a continuation, which renews it, before the lease runs out).

    A re-drive to a backend not in `backends` (the catalog: removed from
    backends.yaml since the job was planned) could only fail, on every run, and
    no render function would ever take the job: it is ended instead, saying why.
    """
    verdict = _decide(job, now, stale, fallback_on_refusal)
    if backends is not None and verdict.backend is not None \
            and verdict.backend not in backends:
        return Verdict(Action.END, attempt=verdict.attempt, code="backend_removed",
                       reason=f"backend {verdict.backend} is no longer in the catalog; "
                              f"the watchdog could not {verdict.action.value} the job "
                              "there")
    return verdict


def _decide(job: Job, now: dt.datetime, stale: dt.timedelta,
            fallback_on_refusal: bool) -> Verdict:
    if job.status.terminal:
        return Verdict(Action.NONE, reason="terminal")
    if now - job.updated_at < stale:
        return Verdict(Action.NONE, reason="moved recently")
    last = job.current_attempt
    if last is None:
        return Verdict(Action.DISPATCH, job.plan[0], 0, "queued, never claimed")
    index = len(job.attempts) - 1
    if not last.status.terminal:
        if last.lease_expires_at is not None and now < last.lease_expires_at:
            return Verdict(Action.NONE, reason="its render holds a live lease")
        return Verdict(Action.RESUME, last.backend, index,
                       f"attempt {index} on {last.backend} is {last.status.value} "
                       "and its lease expired")
    following = next_backend(job)
    if last.error is not None and not falls_back(last.error.error_class, fallback_on_refusal):
        following = None
    if following is None:
        return Verdict(Action.END, attempt=index,
                       reason=f"attempt {index} on {last.backend} ended {last.status.value} "
                              "and no backend is left in the plan")
    return Verdict(Action.FOLLOW_UP, following, index,
                   f"attempt {index} on {last.backend} ended {last.status.value}; "
                   f"{following} never received the job")


def mark_redriven(job: Job, now: dt.datetime, stale: dt.timedelta, action: Action,
                  fallback_on_refusal: bool = False,
                  backends: Collection[str] | None = None) -> bool:
    """Record a re-drive in the job, if the job still calls for it (read fresh, in a
    transaction): the job was handed to a render again, so it counts as a move.
    A job whose re-drive is not delivered either (a backlog, a stalled subscription)
    is re-driven again only after another `stale`, not on every run, and two
    watchdog runs never re-drive the same job twice."""
    if decide(job, now, stale, fallback_on_refusal, backends).action is not action:
        return False
    job.updated_at = now
    return True


def ended_attempts(job: Job) -> list[int]:
    """The attempts whose ledger holds should be closed (closing is idempotent)."""
    return [i for i, attempt in enumerate(job.attempts)
            if attempt.status.terminal and attempt.reservation_day is not None]


@dataclass(frozen=True)
class HoldVerdict:
    close_attempt: int | None = None  # close this ended attempt's hold (settle or release)
    release: bool = False             # no attempt owns the hold: nothing was sent, give it back


def leftover_hold(job: Job | None, reservation_id: str) -> HoldVerdict:
    """What to do with a ledger hold left HELD past the stale bound.

    Its attempt ended (the process that ended it died before closing the hold,
    and the message that would have closed it was lost): close it as that
    attempt's end says. No attempt owns it (a claim handed back before calling
    the provider, whose release died with its process): release it. An open
    attempt keeps its hold: its render, or a re-drive of it, closes it; a job not
    yet claimed keeps the hold admission took for its first attempt."""
    if job is None:
        return HoldVerdict(release=True)
    for index, attempt in enumerate(job.attempts):
        if (attempt.reservation_id or f"{job.id}-{index}") == reservation_id:
            return HoldVerdict(close_attempt=index) if attempt.status.terminal else HoldVerdict()
    if (job.funding is not None and job.funding.reservation_id == reservation_id
            and not job.status.terminal):
        return HoldVerdict()  # admission's hold, waiting for the first attempt to take it
    return HoldVerdict(release=True)
