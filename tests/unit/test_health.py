"""The circuit breaker's decisions (aiprod.domain.health), and the circuit they make
through the gate service on fakes: a backend that keeps failing stops being called,
is tried again by one probe after its cool-down, and is closed or reopened by that
probe's outcome. Races between instances stay in the emulator suite
(tests/emulator/test_money_and_health.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from aiprod.domain.health import (
    CircuitState,
    Gate,
    Health,
    caller_id,
    cools_until,
    gate,
    healthy,
    is_strike,
    opens_on_strike,
)
from aiprod.domain.job import AttemptError, ErrorClass
from aiprod.services import gate as gate_service
from tests.fakes import T0, Fakes

COOLDOWN = dt.timedelta(minutes=5)
PROBE_TIMEOUT = dt.timedelta(minutes=10)
BROKEN = AttemptError(error_class=ErrorClass.BACKEND, code="http_500", message="broken")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


# -- the pure decisions ------------------------------------------------------------------------
@pytest.mark.parametrize(("error_class", "throttled", "strike"), [
    (ErrorClass.BACKEND, False, True),
    (ErrorClass.TRANSIENT, False, True),
    (ErrorClass.OUTPUT_CHECK, False, True),
    (ErrorClass.UNKNOWN, False, True),
    (ErrorClass.TRANSIENT, True, False),   # a 429 is back-pressure, not ill health
    (ErrorClass.CONTENT_REFUSED, False, False),  # the prompt's fault, not the backend's
    (ErrorClass.INVALID_INPUT, False, False),
    (ErrorClass.SKIPPED, False, False),
])
def test_only_failures_of_the_backend_itself_are_strikes(
        error_class: ErrorClass, throttled: bool, strike: bool) -> None:
    assert is_strike(error_class, throttled) is strike


def test_the_threshold_th_consecutive_strike_opens_the_circuit() -> None:
    closed = Health("b")
    assert [opens_on_strike(closed, n, threshold=3) for n in (1, 2, 3)] == [False, False, True]


def test_a_strike_on_an_open_circuit_does_not_reopen_it() -> None:
    """Late failures of calls made before it opened must not restart the cool-down."""
    opened = Health("b", CircuitState.OPEN, strikes=3, opened_at=T0)
    assert not opens_on_strike(opened, 4, threshold=3)


def test_a_failed_probe_reopens_the_circuit_at_once() -> None:
    probing = Health("b", CircuitState.HALF_OPEN, strikes=0, probe_owner="j:0",
                     probe_claimed_at=T0)
    assert opens_on_strike(probing, 1, threshold=3)


def test_a_closed_circuit_lets_every_caller_call() -> None:
    health = Health("b", strikes=2)
    assert gate(health, T0, COOLDOWN, PROBE_TIMEOUT, "j:0") is Gate.CALL
    assert healthy(health, T0, COOLDOWN)
    assert cools_until(health, COOLDOWN) is None


def test_an_open_circuit_keeps_callers_away_until_its_cool_down_ends() -> None:
    opened = Health("b", CircuitState.OPEN, strikes=3, opened_at=T0)
    assert cools_until(opened, COOLDOWN) == T0 + COOLDOWN
    assert gate(opened, at(299), COOLDOWN, PROBE_TIMEOUT, "j:0") is Gate.SKIP
    assert not healthy(opened, at(299), COOLDOWN)  # routing plans around it meanwhile
    assert gate(opened, at(300), COOLDOWN, PROBE_TIMEOUT, "j:0") is Gate.PROBE
    assert healthy(opened, at(300), COOLDOWN)
    assert opened.public(COOLDOWN)["probe_after"] == (T0 + COOLDOWN).isoformat()


def test_an_open_circuit_with_no_recorded_opening_lets_a_probe_go_now() -> None:
    opened = Health("b", CircuitState.OPEN, strikes=3, opened_at=None)
    assert gate(opened, T0, COOLDOWN, PROBE_TIMEOUT, "j:0") is Gate.PROBE
    assert healthy(opened, T0, COOLDOWN)
    assert opened.public(COOLDOWN)["probe_after"] is None


def test_while_half_open_only_the_probe_goes_on_until_it_outlives_its_timeout() -> None:
    probing = Health("b", CircuitState.HALF_OPEN, strikes=3, opened_at=T0,
                     probe_owner="j:0", probe_claimed_at=at(300))
    assert gate(probing, at(301), COOLDOWN, PROBE_TIMEOUT, "j:0") is Gate.PROBE
    assert gate(probing, at(301), COOLDOWN, PROBE_TIMEOUT, "k:0") is Gate.SKIP
    # The probe's invocation died without a verdict: another caller may probe.
    assert gate(probing, at(300 + 600), COOLDOWN, PROBE_TIMEOUT, "k:0") is Gate.PROBE


def test_an_attempt_is_the_same_caller_in_every_delivery_of_it() -> None:
    assert caller_id("job_1", 0) == caller_id("job_1", 0)
    assert len({caller_id("job_1", 0), caller_id("job_1", 1), caller_id("job_2", 0)}) == 3


# -- the circuit, through the gate service on fakes --------------------------------------------
def call_and_fail(fx: Fakes, backend: str, caller: str) -> bool:
    """One call that fails as a strike; False if the gate let no call go."""
    ticket = gate_service.enter(fx.rt, backend, caller)
    if isinstance(ticket, AttemptError):
        return False
    gate_service.after_call(fx.rt, ticket, BROKEN)
    return True


def opened_and_cooled(fx: Fakes, backend: str = "runway-gen45") -> str:
    """A backend whose circuit opened on its strikes and whose cool-down just ended:
    the next caller is its probe."""
    for n in range(fx.rt.settings.circuit_strikes):
        call_and_fail(fx, backend, f"job_{n}:0")
    fx.clock.advance(fx.rt.settings.circuit_cooldown_s)
    return backend


def test_a_backend_that_keeps_failing_stops_being_called_until_its_cool_down_ends(
        fx: Fakes) -> None:
    backend, strikes = "runway-gen45", fx.rt.settings.circuit_strikes
    calls = [call_and_fail(fx, backend, caller_id(f"job_{n}", 0)) for n in range(strikes + 3)]

    assert calls == [True] * strikes + [False] * 3
    refused = gate_service.enter(fx.rt, backend, "late:0")
    assert isinstance(refused, AttemptError)
    assert refused.code == "circuit_open"
    assert refused.error_class is ErrorClass.SKIPPED  # the job falls back, not fails

    fx.clock.advance(fx.rt.settings.circuit_cooldown_s)
    probe = gate_service.enter(fx.rt, backend, "probe:0")
    assert isinstance(probe, gate_service.Pass)
    # Only one caller tries the backend again: the others still fall back.
    other = gate_service.enter(fx.rt, backend, "other:0")
    assert isinstance(other, AttemptError)
    assert other.code == "circuit_open"


def test_a_successful_probe_closes_the_circuit_for_every_caller(fx: Fakes) -> None:
    backend, strikes = opened_and_cooled(fx), fx.rt.settings.circuit_strikes
    probe = gate_service.enter(fx.rt, backend, "probe:0")
    assert isinstance(probe, gate_service.Pass)

    gate_service.after_call(fx.rt, probe, None)
    gate_service.rendered(fx.rt, backend)

    assert fx.health.get(backend).state is CircuitState.CLOSED
    # Its failed calls no longer count: the full strike allowance is back.
    tickets = [gate_service.enter(fx.rt, backend, f"next_{n}:0") for n in range(strikes)]
    assert all(isinstance(t, gate_service.Pass) for t in tickets)


def test_a_failed_probe_reopens_the_circuit_for_a_new_cool_down(fx: Fakes) -> None:
    backend = opened_and_cooled(fx)

    assert call_and_fail(fx, backend, "probe:0")

    health = fx.health.get(backend)
    assert (health.state, health.opened_at) == (CircuitState.OPEN, fx.clock())
    assert not call_and_fail(fx, backend, "after:0")
    fx.clock.advance(fx.rt.settings.circuit_cooldown_s)
    assert call_and_fail(fx, backend, "next-probe:0")  # tried again after the new cool-down


def test_a_probe_that_met_no_verdict_lets_the_next_caller_probe(fx: Fakes) -> None:
    """A 429 says nothing of the backend's health: the next caller probes at once
    instead of waiting out the first probe's lease."""
    backend = opened_and_cooled(fx)
    probe = gate_service.enter(fx.rt, backend, "probe:0")
    assert isinstance(probe, gate_service.Pass)

    throttled = AttemptError(error_class=ErrorClass.TRANSIENT, code="http_429", message="slow")
    gate_service.after_call(fx.rt, probe, throttled, throttled=True)

    assert isinstance(gate_service.enter(fx.rt, backend, "next:0"), gate_service.Pass)
