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
        retry_at = None
        if self.state is CircuitState.OPEN and self.opened_at is not None:
            retry_at = (self.opened_at + cooldown).isoformat()
        return {"state": self.state.value, "strikes": self.strikes,
                "opened_at": self.opened_at.isoformat() if self.opened_at else None,
                "probe_after": retry_at}


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
        if health.opened_at is None or now >= health.opened_at + cooldown:
            return Gate.PROBE
        return Gate.SKIP
    # Half-open: only the probe's owner goes on, unless the probe died.
    if health.probe_owner == caller:
        return Gate.PROBE
    if health.probe_claimed_at is None or now >= health.probe_claimed_at + probe_timeout:
        return Gate.PROBE
    return Gate.SKIP


def call_slots(health: Health, threshold: int) -> int:
    """How many calls of unknown outcome may be in flight while closed."""
    return max(1, threshold - health.strikes)


def healthy(health: Health, now: dt.datetime, cooldown: dt.timedelta) -> bool:
    """For routing: a backend is worth planning unless its circuit is open and cooling."""
    if health.state is CircuitState.OPEN and health.opened_at is not None:
        return now >= health.opened_at + cooldown
    return True
