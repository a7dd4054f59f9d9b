"""What the dead-letter handler does with a render message Pub/Sub gave up on: a pure
decision, no I/O.

Capacity is never a reason to fail a job. A render message is dead-lettered when
every delivery in its subscription's retry window failed, and on a full deployment
each of them was a 429 (every instance busy) without the render ever running. So the
message says nothing about the job by itself: the job, read fresh, does. Its
attempt held under a live lease is rendering (the dead letter was a duplicate copy,
e.g. the watchdog's dispatch of a job that waited in the backlog); its attempt with
an expired lease has nobody on it (a continuation that never got an instance): put
it back to work; its ended attempt that was never handed on: hand it on. The same
reading the watchdog takes (domain.watchdog.decide, with no staleness: the dead
letter itself says the job stopped moving).

What bounds it: the job's age (AIPROD_REDRIVE_MAX_AGE_S) for everything, and
MAX_STARTED_REDRIVES for an attempt that started, since a render that crashes on
every delivery must still end FAILED, with its holds closed and its task stopped.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from aiprod.domain import watchdog
from aiprod.domain.job import Job
from aiprod.domain.watchdog import Action

# Re-drives of one render message whose attempt had started and whose lease had
# expired (nobody on it) when it was dead-lettered. A full deployment explains one or
# two (a continuation, then its re-drive, stuck behind a backlog for a whole retry
# window each); a third means the render itself keeps failing where no lease is left
# live, so the job ends FAILED as any dead-lettered render did before. With
# production's render retry window (100 deliveries, hours) the job's age bound comes
# first; this bounds a deployment configured with a short window.
MAX_STARTED_REDRIVES = 3


class DeadLetterAction(StrEnum):
    IGNORE = "ignore"          # a stale copy, or its attempt is rendering: acknowledge it
    REDRIVE = "redrive"        # put the attempt's render message back on its topic
    FOLLOW_UP = "follow_up"    # its attempt ended but the job was never handed on
    END = "end"                # end the job FAILED (settle the holds, stop the task)


@dataclass(frozen=True)
class DeadLetterVerdict:
    action: DeadLetterAction
    backend: str | None = None   # REDRIVE: where to publish
    attempt: int | None = None   # REDRIVE: the message's attempt; FOLLOW_UP: the one that ended
    started: bool = False        # REDRIVE: the attempt had started (counts against the cap)
    reason: str = ""


def decide(job: Job | None, attempt: int, now: dt.datetime, max_age: dt.timedelta,
           started_redrives: int, fallback_on_refusal: bool = False) -> DeadLetterVerdict:
    """What to do with a dead-lettered render message for attempt `attempt` of `job`
    (read fresh), which was already re-driven `started_redrives` times while its
    attempt had started."""
    if job is None:
        return DeadLetterVerdict(DeadLetterAction.END, reason="unknown job")
    if attempt < len(job.attempts) - 1:
        return DeadLetterVerdict(DeadLetterAction.IGNORE,
                                 reason=f"a stale copy: the job moved past attempt {attempt}")
    if job.status.terminal:
        # Ended: close what may still be open (holds, a running task), as before.
        return DeadLetterVerdict(DeadLetterAction.END, reason="the job already ended")
    too_old = now - job.created_at > max_age
    seen = watchdog.decide(job, now, dt.timedelta(0), fallback_on_refusal)
    if seen.action is Action.NONE:
        if too_old:  # a render crashing on every delivery renews its lease each time
            return DeadLetterVerdict(DeadLetterAction.END, reason=(
                f"under a live lease, but older than the re-drive bound ({max_age})"))
        return DeadLetterVerdict(DeadLetterAction.IGNORE, reason=seen.reason)
    if seen.action is Action.END:
        return DeadLetterVerdict(DeadLetterAction.END, reason=seen.reason)
    if too_old:
        return DeadLetterVerdict(DeadLetterAction.END, reason=(
            f"older than the re-drive bound ({max_age}): not re-driven; {seen.reason}"))
    if seen.action is Action.FOLLOW_UP:
        return DeadLetterVerdict(DeadLetterAction.FOLLOW_UP, seen.backend, seen.attempt,
                                 reason=seen.reason)
    started = seen.action is Action.RESUME
    if started and started_redrives >= MAX_STARTED_REDRIVES:
        return DeadLetterVerdict(DeadLetterAction.END, reason=(
            f"re-driven {started_redrives} times after its attempt started "
            f"({seen.reason})"))
    return DeadLetterVerdict(DeadLetterAction.REDRIVE, seen.backend, seen.attempt,
                             started=started, reason=seen.reason)
