"""Where today's spend is heading: a forecast of the money committed by the end of the
UTC day, and when the daily limit would be reached. Pure; the clock is an argument.

How: the spend rate is an exponentially weighted rate over the day's hours so far,
from the ledger's spend per UTC hour (settled costs, by the hour they settled):

    rate = sum(w_i * spent_i) / sum(w_i * observed_i),   w_i = 0.5 ** (age_i / half_life)

where hour i is `age_i` whole hours before the current one (the current hour has
age 0 and counts for the part of it elapsed, `observed_i` < 1 h; earlier hours
count 1 h each), over at most `window_h` hours and never before midnight. Recent
hours weigh most: with the default half-life of 1 h, an hour ago counts half as
much as now. The forecast adds to what is already committed (spent plus reserved
now, the money renders in flight hold) the rate times the hours left in the day:

    projected = committed + rate * hours_left

and the limit is reached `(limit - committed) / rate` hours from now, if that is
before midnight (null otherwise; now if committed already reached it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from aiprod.domain.budget import resets_at, to_usd

HOURS = 24
HALF_LIFE_H = 1.0
WINDOW_H = 6


@dataclass(frozen=True)
class Forecast:
    projected_micros: int           # committed by the end of the UTC day, at this rate
    rate_micros_per_hour: float     # the exponentially weighted spend rate
    limit_reached_at: dt.datetime | None
    limit_micros: int

    @property
    def exceeds(self) -> bool:
        return self.projected_micros >= self.limit_micros

    def public(self) -> dict[str, object]:
        return {"projected_usd": to_usd(self.projected_micros),
                "rate_usd_per_hour": to_usd(round(self.rate_micros_per_hour)),
                "limit_reached_at": (self.limit_reached_at.isoformat()
                                     if self.limit_reached_at else None),
                "exceeds_limit": self.exceeds,
                "method": f"committed now + spend rate x hours left; rate: spend per hour "
                          f"over the last {WINDOW_H} h of the UTC day, exponentially "
                          f"weighted (half-life {HALF_LIFE_H:g} h)"}


def spend_rate(now: dt.datetime, hourly_spent: Sequence[int], half_life_h: float = HALF_LIFE_H,
               window_h: int = WINDOW_H) -> float:
    """Micro-dollars per hour (see the module docstring). `hourly_spent[h]` is what
    settled during UTC hour h of today."""
    now = now.astimezone(dt.UTC)
    current = now.hour
    into_hour = (now.minute * 60 + now.second + now.microsecond / 1e6) / 3600
    spent = weight_time = 0.0
    for age in range(min(window_h, current + 1)):
        hour = current - age
        weight = 0.5 ** (age / half_life_h)
        observed = into_hour if age == 0 else 1.0
        spent += weight * (hourly_spent[hour] if hour < len(hourly_spent) else 0)
        weight_time += weight * observed
    return spent / weight_time if weight_time > 0 else 0.0


def forecast(now: dt.datetime, limit_micros: int, committed_micros: int,
             hourly_spent: Sequence[int], half_life_h: float = HALF_LIFE_H,
             window_h: int = WINDOW_H) -> Forecast:
    rate = spend_rate(now, hourly_spent, half_life_h, window_h)
    end = resets_at(now)
    hours_left = (end - now).total_seconds() / 3600
    projected = committed_micros + round(rate * hours_left)
    reached: dt.datetime | None = None
    if committed_micros >= limit_micros:
        reached = now
    elif rate > 0:
        at = now + dt.timedelta(hours=(limit_micros - committed_micros) / rate)
        reached = at if at < end else None
    return Forecast(projected, rate, reached, limit_micros)
