"""The budget forecast (issue 14), with a controllable clock and spend histories whose
arithmetic is worked out by hand in each test."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from aiprod.domain.budget import to_micros
from aiprod.domain.forecast import forecast, spend_rate
from aiprod.services import budget
from tests.fakes import fake_runtime
from tests.service_helpers import admit, deliver

USD = 1_000_000


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 12, 2, hour, minute, tzinfo=dt.UTC)


def hours(**spent_usd: float) -> list[int]:
    """24 hourly figures in micros from h09=8.0 style arguments."""
    figures = [0] * 24
    for name, usd in spent_usd.items():
        figures[int(name.removeprefix("h"))] = to_micros(usd)
    return figures


def test_the_rate_weighs_recent_hours_most_and_counts_the_current_hour_for_its_part() -> None:
    # At 11:30, half-life 1 h, window 3 h: hours 11 (age 0, weight 1, 0.5 h observed),
    # 10 (age 1, weight 0.5) and 9 (age 2, weight 0.25).
    #   weighted spend = 1*3 + 0.5*8 + 0.25*8      = 9 USD
    #   weighted time  = 1*0.5 + 0.5*1 + 0.25*1    = 1.25 h
    #   rate           = 9 / 1.25                  = 7.2 USD/h
    history = hours(h08=50, h09=8, h10=8, h11=3)  # h08 is outside the window
    assert spend_rate(at(11, 30), history, half_life_h=1, window_h=3) == pytest.approx(7.2 * USD)


def test_the_forecast_projects_to_midnight_and_says_when_the_limit_is_reached() -> None:
    # committed 40 USD at 11:30, rate 7.2 USD/h (above), 12.5 h left:
    #   projected = 40 + 7.2 * 12.5 = 130 USD
    #   limit 100 reached after (100 - 40) / 7.2 = 8 h 20 min, at 19:50
    ahead = forecast(at(11, 30), to_micros(100), to_micros(40),
                     hours(h09=8, h10=8, h11=3), half_life_h=1, window_h=3)

    assert ahead.projected_micros == to_micros(130)
    assert ahead.limit_reached_at == at(19, 50)
    assert ahead.exceeds
    public = ahead.public()
    assert public["projected_usd"] == 130
    assert public["rate_usd_per_hour"] == 7.2
    assert public["limit_reached_at"] == "2026-12-02T19:50:00+00:00"


def test_a_limit_the_rate_does_not_reach_before_midnight_is_null() -> None:
    # committed 40, rate 7.2 USD/h, limit 200: 40 + 90 = 130 by midnight, under 200.
    ahead = forecast(at(11, 30), to_micros(200), to_micros(40),
                     hours(h09=8, h10=8, h11=3), half_life_h=1, window_h=3)

    assert ahead.projected_micros == to_micros(130)
    assert ahead.limit_reached_at is None
    assert not ahead.exceeds


def test_the_window_never_reaches_back_past_midnight() -> None:
    # At 00:30 only hour 0 exists: 1 USD in 0.5 h is 2 USD/h; 23.5 h left:
    #   projected = 5 + 2 * 23.5 = 52 USD
    ahead = forecast(at(0, 30), to_micros(100), to_micros(5), hours(h00=1))

    assert ahead.rate_micros_per_hour == pytest.approx(2 * USD)
    assert ahead.projected_micros == to_micros(52)
    assert ahead.limit_reached_at is None


def test_no_spend_projects_what_is_committed_and_a_spent_limit_is_reached_now() -> None:
    quiet = forecast(at(15), to_micros(100), to_micros(12), [0] * 24)
    assert (quiet.projected_micros, quiet.limit_reached_at) == (to_micros(12), None)

    spent = forecast(at(15), to_micros(100), to_micros(100), [0] * 24)
    assert spent.limit_reached_at == at(15)


def test_the_service_forecasts_from_what_the_ledger_settled_each_hour(tmp_path: Path) -> None:
    fx = fake_runtime(tmp_path)
    costs = []
    for n in range(3):  # one job settled at 12:00, 12:20 and 12:40 (the fakes' T0 is 12:00)
        done = deliver(fx, admit(fx, job_id=f"job_{n}"))
        costs.append(done.cost_usd)
        fx.clock.advance(20 * 60)
    today = budget.today(fx.rt)
    # Now 13:00: hour 12 spent sum(costs) in a whole hour; the current hour (age 0) has
    # not started. With the default window (6 h) and half-life (1 h) only hour 12 has
    # any spend, so
    #   rate = 0.5 * spent / (0 + 0.5*1 + 0.25 + 0.125 + 0.0625 + 0.03125)
    #        = spent / 1.9375 per hour
    # (hours 8 to 11 observed and empty count against it), and 11 h are left.
    spent = sum(costs)
    rate = spent / 1.9375
    ahead = budget.forecast(fx.rt, today)

    assert today.committed_micros == to_micros(spent)
    assert ahead.rate_micros_per_hour == pytest.approx(rate * USD, rel=1e-9)
    assert ahead.projected_micros == pytest.approx(to_micros(spent + rate * 11), abs=1)
