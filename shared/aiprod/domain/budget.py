"""The daily budget, in integer micro-dollars so counters never drift.

Money committed to provider calls is `granted - returned` (settled spend plus
live reservations); `granted - returned - spent` is what is reserved right now.
See aiprod.adapters.ledger for how the counters move.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

MICROS = 1_000_000


def to_micros(usd: float) -> int:
    return round(usd * MICROS)


def to_usd(micros: int) -> float:
    return round(micros / MICROS, 6)


def ledger_day(now: dt.datetime) -> str:
    """Budgets reset at midnight UTC."""
    return now.astimezone(dt.UTC).date().isoformat()


def resets_at(now: dt.datetime) -> dt.datetime:
    tomorrow = now.astimezone(dt.UTC).date() + dt.timedelta(days=1)
    return dt.datetime.combine(tomorrow, dt.time(), tzinfo=dt.UTC)


class Threshold(StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class DayFigures:
    day: str
    limit_micros: int
    warn_micros: int
    granted_micros: int = 0
    returned_micros: int = 0
    spent_micros: int = 0

    @property
    def committed_micros(self) -> int:
        return self.granted_micros - self.returned_micros

    @property
    def reserved_micros(self) -> int:
        return self.committed_micros - self.spent_micros

    @property
    def left_micros(self) -> int:
        return max(0, self.limit_micros - self.committed_micros)

    @property
    def threshold(self) -> Threshold:
        return threshold(self.committed_micros, self.warn_micros, self.limit_micros)

    def public(self) -> dict[str, object]:
        return {"day": self.day, "limit_usd": to_usd(self.limit_micros),
                "warning_usd": to_usd(self.warn_micros), "spent_usd": to_usd(self.spent_micros),
                "reserved_usd": to_usd(self.reserved_micros),
                "committed_usd": to_usd(self.committed_micros),
                "left_usd": to_usd(self.left_micros), "threshold": self.threshold.value}


def threshold(committed_micros: int, warn_micros: int, limit_micros: int) -> Threshold:
    if committed_micros >= limit_micros:
        return Threshold.CRITICAL
    if committed_micros >= warn_micros:
        return Threshold.WARNING
    return Threshold.OK


def fits(committed_after_micros: int, limit_micros: int) -> bool:
    """A reservation stands if, counting it, committed money stays within the limit."""
    return committed_after_micros <= limit_micros
