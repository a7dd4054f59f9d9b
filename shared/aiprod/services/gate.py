"""Whether a call may go to a backend now: its shared circuit breaker and call slots.

A backend has `circuit_strikes` call slots shared by every instance. Each create
call takes one; a call that succeeds gives it back, a call that fails as a
strike keeps it (marked failed) until the backend renders successfully again or
the slot's lease runs out. So however many instances call a backend that fails
every call, at most `circuit_strikes` calls reach it before its circuit opens.
Retries take a slot like any call.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from dataclasses import dataclass

from aiprod.domain import health as policy
from aiprod.domain.job import AttemptError, ErrorClass
from aiprod.observability.logs import log
from aiprod.services import telemetry
from aiprod.wiring.runtime import Runtime

logger = logging.getLogger(__name__)

BUSY = "backend_busy"  # no call slot came free in time: back-pressure, not a strike


@dataclass(frozen=True)
class Pass:
    """Leave to make one call to the backend (a probe holds no slot: it is alone)."""

    backend: str
    caller: str
    slot: str | None


def _slot_lease(rt: Runtime) -> dt.timedelta:
    """A failed call's slot counts against the backend this long at most."""
    return dt.timedelta(seconds=rt.settings.create_timeout_s * 2 + 30)


def enter(rt: Runtime, backend: str, caller: str) -> Pass | AttemptError:
    """A pass for one call to `backend`, or why not (the job then falls back)."""
    deadline = rt.monotonic() + rt.settings.backend_busy_wait_s
    while True:
        now = rt.clock()
        health = rt.health.get(backend)
        cooldown = rt.settings.circuit_cooldown
        probe_lease = rt.settings.attempt_lease  # a probe is a whole render
        verdict = policy.gate(health, now, cooldown, probe_lease, caller)
        if verdict is policy.Gate.PROBE:
            if rt.health.claim_probe(backend, caller, now, cooldown, probe_lease):
                log(logger, logging.INFO, f"circuit half-open for {backend}: probing",
                    backend=backend, event="circuit_state", state="half_open", caller=caller)
                telemetry.circuit(backend, "half_open")
                return Pass(backend, caller, None)
            verdict = policy.Gate.SKIP
        if verdict is policy.Gate.SKIP:
            return AttemptError(error_class=ErrorClass.SKIPPED, code="circuit_open",
                                message=f"{backend} is failing; its circuit is open")
        slot = rt.health.take_slot(backend, caller, rt.settings.circuit_strikes, now,
                                   _slot_lease(rt))
        if slot is not None:
            return Pass(backend, caller, slot)
        if rt.monotonic() > deadline:
            return AttemptError(error_class=ErrorClass.SKIPPED, code=BUSY,
                                message=f"{backend} had no free call slot for "
                                        f"{rt.settings.backend_busy_wait_s:.0f} s")
        rt.sleep(random.uniform(0.02, 0.1))


def after_call(rt: Runtime, ticket: Pass, error: AttemptError | None,
               throttled: bool = False) -> None:
    """Give the slot back, or keep it as a strike."""
    if error is not None and policy.is_strike(error.error_class, throttled):
        if ticket.slot is not None:
            rt.health.fail_slot(ticket.backend, ticket.slot)
        strike(rt, ticket.backend, error)
    elif ticket.slot is not None:
        rt.health.release_slot(ticket.backend, ticket.slot)
    elif error is not None:
        rt.health.release_probe(ticket.backend, ticket.caller)


def strike(rt: Runtime, backend: str, error: AttemptError) -> None:
    if rt.health.record_failure(backend, rt.clock(), rt.settings.circuit_strikes):
        log(logger, logging.WARNING, f"circuit opened for {backend}", backend=backend,
            event="circuit_state", state="open", code=error.code)
        telemetry.circuit(backend, "open")


def no_verdict(rt: Runtime, backend: str, caller: str) -> None:
    """A render ended in a way that says nothing of the backend's health: if it was
    the probe, let another caller probe."""
    rt.health.release_probe(backend, caller)


def rendered(rt: Runtime, backend: str) -> None:
    """A render succeeded: the backend is healthy again."""
    if rt.health.record_success(backend):
        log(logger, logging.INFO, f"circuit closed for {backend}", backend=backend,
            event="circuit_state", state="closed")
        telemetry.circuit(backend, "closed")
