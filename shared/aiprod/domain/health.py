"""Backend health: a circuit breaker shared by every function instance.

Consecutive backend-level failures (strikes) open the circuit for a cool-down;
then exactly one probe is let through (half-open); its success closes the
circuit, its failure reopens it. While closed, at most `threshold - strikes`
calls whose outcome is not yet known may be in flight, so a backend that fails
every call receives no more than `threshold` calls before its circuit opens,
however many instances call it at once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from aiprod.domain.job import ErrorClass

STRIKE_CLASSES = frozenset({ErrorClass.BACKEND, ErrorClass.TRANSIENT, ErrorClass.OUTPUT_CHECK,
                            ErrorClass.UNKNOWN})


def is_strike(error_class: ErrorClass, throttled: bool = False) -> bool:
    """Back-pressure (429), content refusals and invalid input say nothing about the
    backend's health; everything else that fails is a strike."""
    return not throttled and error_class in STRIKE_CLASSES


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Health:
    backend: str
    state: CircuitState = CircuitState.CLOSED
    strikes: int = 0
    opened_at: dt.datetime | None = None
    probe_owner: str | None = None
    probe_claimed_at: dt.datetime | None = None

    def public(self, cooldown: dt.timedelta) -> dict[str, object]:
        probe_after = cools_until(self, cooldown)
        return {"state": self.state.value, "strikes": self.strikes,
                "opened_at": self.opened_at.isoformat() if self.opened_at else None,
                "probe_after": probe_after.isoformat() if probe_after else None}


def cools_until(health: Health, cooldown: dt.timedelta) -> dt.datetime | None:
    """When an open circuit's cool-down ends and a probe may go; None when the circuit
    is not cooling (closed, half-open, or open since an unrecorded time: probe now).
    The one place the cool-down is reckoned: what the gate lets through, what routing
    plans and what GET /v1/backends shows must agree."""
    if health.state is CircuitState.OPEN and health.opened_at is not None:
        return health.opened_at + cooldown
    return None


def caller_id(job_id: str, attempt: int) -> str:
    """Who calls a backend (owns a call slot or the probe): one attempt of one job, the
    same in every delivery and continuation of it, so the invocation that sees the
    probe's render end (perhaps a continuation) is known as the probe's owner."""
    return f"{job_id}:{attempt}"


class Gate(StrEnum):
    CALL = "call"      # closed: take a call slot and go
    PROBE = "probe"    # cool-down over: try to claim the one probe
    SKIP = "skip"      # open (or someone else is probing): fall back


def gate(health: Health, now: dt.datetime, cooldown: dt.timedelta, probe_timeout: dt.timedelta,
         caller: str) -> Gate:
    """What a caller may do with this backend now."""
    if health.state is CircuitState.CLOSED:
        return Gate.CALL
    if health.state is CircuitState.OPEN:
        return Gate.PROBE if healthy(health, now, cooldown) else Gate.SKIP
    # Half-open: only the probe's owner goes on, unless the probe died.
    if health.probe_owner == caller:
        return Gate.PROBE
    if health.probe_claimed_at is None or now >= health.probe_claimed_at + probe_timeout:
        return Gate.PROBE
    return Gate.SKIP


def opens_on_strike(health: Health, strikes: int, threshold: int) -> bool:
    """Whether a strike (bringing the count to `strikes`) opens the circuit: the
    threshold-th consecutive one, or any met by the probe. An open circuit stays as it
    is: late strikes from calls made before it opened do not restart its cool-down."""
    if health.state is CircuitState.OPEN:
        return False
    return strikes >= threshold or health.state is CircuitState.HALF_OPEN


def healthy(health: Health, now: dt.datetime, cooldown: dt.timedelta) -> bool:
    """For routing: a backend is worth planning unless its circuit is open and cooling."""
    until = cools_until(health, cooldown)
    return until is None or now >= until
