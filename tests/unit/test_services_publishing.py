"""Events on job-events, on in-memory fakes (tests/fakes.py): every kind carries the
attributes subscribers filter and dedupe on, built in one place."""

from __future__ import annotations

from pathlib import Path

from aiprod.domain.budget import Threshold, to_micros
from aiprod.domain.events import EventType
from aiprod.services import budget
from aiprod.services.publishing import emit, emit_rejected
from tests.fakes import Fakes, fake_runtime
from tests.service_helpers import DAY, admit


def test_a_job_event_names_its_job_type_status_and_id(fx: Fakes) -> None:
    job = admit(fx)
    fx.bus.clear()

    emit(fx.rt, job, EventType.QUEUED)

    [event] = fx.bus.published
    assert event.topic == "job-events"
    assert event.attributes == {"job_id": job.id, "type": "job.queued", "status": "QUEUED",
                                "event_id": f"{job.id}:job.queued"}
    assert event.payload["event_id"] == event.attributes["event_id"]


def test_an_intake_refusal_carries_the_publishers_correlation_id(fx: Fakes) -> None:
    emit_rejected(fx.rt, "job_x", "order-7", "duration_seconds: too long", "unsupported")

    [event] = fx.bus.published
    assert event.attributes == {"job_id": "job_x", "type": "job.rejected",
                                "status": "REJECTED", "event_id": "job_x:job.rejected",
                                "correlation_id": "order-7"}
    assert event.payload["code"] == "unsupported"
    assert event.payload["correlation_id"] == "order-7"


def test_a_budget_threshold_is_announced_once_with_its_day_and_level(tmp_path: Path) -> None:
    fx = fake_runtime(tmp_path, daily_budget_usd=1.0, daily_budget_warn_usd=0.5)
    scopes = [budget.global_scope(fx.rt)]
    assert fx.ledger.reserve(DAY, "r1", to_micros(0.6), scopes)

    assert budget.check_thresholds(fx.rt, DAY) is Threshold.WARNING
    assert budget.check_thresholds(fx.rt, DAY) is Threshold.WARNING

    [event] = fx.bus.published
    assert event.topic == "job-events"
    assert event.attributes == {"type": "budget.warning", "event_id": f"budget:{DAY}:warning"}
    assert event.payload["type"] == "budget.warning"
    assert event.payload["day"] == DAY
    assert event.payload["committed_usd"] == 0.6
