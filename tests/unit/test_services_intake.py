"""Intake decisions (a job published on the video-jobs topic), on in-memory fakes
(tests/fakes.py): admitted, redelivered, republished, rejected on job-events, or
handed back to Pub/Sub while every backend cools down."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from aiprod.domain.health import CircuitState, Health
from aiprod.domain.job import JobStatus
from aiprod.services import admission, intake
from aiprod.services.intake import IntakeMessage, Rejected, TemporarilyRefused
from tests.fakes import Fakes, Published, fake_runtime
from tests.service_helpers import renders_sent

REQUEST = {"prompt": "a red fox in snow", "duration_seconds": 4}


def published(body: Any = REQUEST, message_id: str = "m-1", **attributes: str) -> IntakeMessage:
    """A message as Pub/Sub delivers it: a JSON body (or raw bytes), base64-encoded."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return IntakeMessage(message_id, attributes, base64.b64encode(raw))


def rejected_events(fx: Fakes) -> list[Published]:
    return [p for p in fx.bus.published
            if p.topic == "job-events" and p.payload["type"] == "job.rejected"]


def test_a_valid_message_becomes_a_job_owned_by_its_publisher(fx: Fakes) -> None:
    result = intake.handle(fx.rt, published(publisher="shop", correlation_id="order-1"))

    assert isinstance(result, admission.Admitted)
    assert result.created
    job = fx.store.get(result.job.id)
    assert job is not None
    assert job.owner == "pubsub:shop"
    assert job.correlation_id == "order-1"
    assert job.status is JobStatus.QUEUED
    assert len(renders_sent(fx, job.plan[0])) == 1
    [queued] = [p for p in fx.bus.published if p.topic == "job-events"]
    assert queued.payload["type"] == "job.queued"
    assert queued.payload["correlation_id"] == "order-1"
    assert queued.attributes == {"job_id": job.id, "type": "job.queued", "status": "QUEUED",
                                 "event_id": f"{job.id}:job.queued",
                                 "correlation_id": "order-1"}


@pytest.mark.parametrize("publisher", ["", "shop floor", "a/b", "x" * 65])
def test_a_publisher_attribute_that_is_not_a_name_is_recorded_as_unnamed(
        fx: Fakes, publisher: str) -> None:
    result = intake.handle(fx.rt, published(publisher=publisher))

    assert isinstance(result, admission.Admitted)
    assert result.job.owner == "pubsub:unnamed"


def test_a_redelivered_message_admits_one_job(fx: Fakes) -> None:
    first = intake.handle(fx.rt, published())
    again = intake.handle(fx.rt, published())

    assert isinstance(first, admission.Admitted)
    assert isinstance(again, admission.Admitted)
    assert first.created
    assert not again.created
    assert again.job.id == first.job.id
    assert len(fx.store.docs) == 1
    assert rejected_events(fx) == []


def test_republishing_with_the_same_idempotency_key_admits_one_job(fx: Fakes) -> None:
    first = intake.handle(fx.rt, published(message_id="m-1", idempotency_key="order-9"))
    again = intake.handle(fx.rt, published(message_id="m-2", idempotency_key="order-9"))
    other = intake.handle(fx.rt, published(message_id="m-3", idempotency_key="order-10"))

    assert isinstance(first, admission.Admitted)
    assert isinstance(again, admission.Admitted)
    assert isinstance(other, admission.Admitted)
    assert again.job.id == first.job.id
    assert not again.created
    assert other.created
    assert other.job.id != first.job.id
    assert len(fx.store.docs) == 2
    assert rejected_events(fx) == []


def test_an_idempotency_key_reused_for_another_request_is_rejected_and_the_first_kept(
        fx: Fakes) -> None:
    first = intake.handle(fx.rt, published(message_id="m-1", idempotency_key="order-9"))
    assert isinstance(first, admission.Admitted)
    fx.bus.clear()

    reused = intake.handle(fx.rt, published(REQUEST | {"prompt": "a wolf"}, message_id="m-2",
                                            idempotency_key="order-9",
                                            correlation_id="order-9b"))

    assert reused == Rejected("idempotency-key-reused", "idempotency_key was already used "
                              "for another job request; use a new key for a new job")
    [event] = rejected_events(fx)
    assert event.payload["job_id"] == first.job.id
    assert event.payload["correlation_id"] == "order-9b"
    stored = fx.store.get(first.job.id)
    assert stored is not None
    assert stored.request.prompt == "a red fox in snow"


def _not_base64() -> IntakeMessage:
    return IntakeMessage("m-1", {"correlation_id": "order-1"}, b"{not base64!")


@pytest.mark.parametrize(("message", "reason"), [
    (_not_base64(), "the message is not a JSON job request"),
    (published(b"{this is not json", correlation_id="order-1"),
     "the message is not a JSON job request"),
    (published(b"\x80abc", correlation_id="order-1"), "the message is not a JSON job request"),
    (published([REQUEST], correlation_id="order-1"), "expected a JSON object"),
    (published({"prompt": "fox", "colour": "red"}, correlation_id="order-1"), "colour: "),
    (published({"prompt": "fox", "duration_seconds": "5"}, correlation_id="order-1"),
     "duration_seconds: "),
    (published({"prompt": "fox\x07"}, correlation_id="order-1"),
     "prompt: the prompt must not contain control characters"),
    (published({"duration_seconds": 4}, correlation_id="order-1"),
     "give a prompt, an image_url, or both"),
], ids=["not-base64", "not-json", "not-utf8", "not-an-object", "unknown-field", "wrong-type",
        "control-character", "no-prompt"])
def test_an_invalid_message_is_answered_with_job_rejected_and_stores_nothing(
        fx: Fakes, message: IntakeMessage, reason: str) -> None:
    result = intake.handle(fx.rt, message)

    assert isinstance(result, Rejected)
    assert result.code == "invalid-request"
    assert reason in result.reason, result.reason
    [event] = fx.bus.published  # the answer, and nothing dispatched
    assert event.topic == "job-events"
    assert event.payload["type"] == "job.rejected"
    assert event.payload["status"] == "REJECTED"
    assert event.payload["code"] == "invalid-request"
    assert event.payload["reason"] == result.reason
    assert event.payload["schema"] == "urn:aiprod:schema:job-request:v1"
    assert event.payload["correlation_id"] == "order-1"
    assert event.attributes == {"job_id": message.job_id, "type": "job.rejected",
                                "status": "REJECTED",
                                "event_id": f"{message.job_id}:job.rejected",
                                "correlation_id": "order-1"}
    assert fx.store.docs == {}


def test_a_webhook_url_aiprod_may_not_call_is_rejected(fx: Fakes) -> None:
    result = intake.handle(fx.rt, published(REQUEST | {"webhook_url": "https://10.1.1.1/"}))

    assert isinstance(result, Rejected)
    assert result.code == "unsafe-url"
    assert result.reason.startswith("webhook_url: ")
    assert "private" in result.reason
    assert [e.payload["code"] for e in rejected_events(fx)] == ["unsafe-url"]
    assert fx.store.docs == {}


def test_an_upload_that_is_not_an_image_is_rejected(fx: Fakes) -> None:
    upload = "data:image/png;base64," + base64.b64encode(b"not a png at all").decode()

    result = intake.handle(fx.rt, published(REQUEST | {"image_url": upload}))

    assert isinstance(result, Rejected)
    assert result.code == "invalid-image"
    assert result.reason.startswith("image_url: ")
    assert [e.payload["code"] for e in rejected_events(fx)] == ["invalid-image"]
    assert fx.store.docs == {}


def test_a_request_no_backend_can_render_is_rejected_with_the_routing_reason(
        fx: Fakes) -> None:
    result = intake.handle(fx.rt, published(REQUEST | {"duration_seconds": 45}))

    assert isinstance(result, Rejected)
    assert result.code == "unsupported"
    assert "no backend" in result.reason
    assert [e.payload["code"] for e in rejected_events(fx)] == ["unsupported"]
    assert fx.store.docs == {}


def test_a_job_the_days_budget_cannot_pay_is_rejected(tmp_path: Path) -> None:
    fx = fake_runtime(tmp_path, daily_budget_usd=0.1, daily_budget_warn_usd=0.09)

    result = intake.handle(fx.rt, published())

    assert isinstance(result, Rejected)
    assert result.code == "budget_exhausted"
    assert [e.payload["code"] for e in rejected_events(fx)] == ["budget_exhausted"]
    assert fx.store.docs == {}


def test_while_every_backend_cools_down_the_message_is_handed_back_not_rejected(
        fx: Fakes) -> None:
    for name in fx.rt.catalog.names:
        fx.health.docs[name] = Health(name, CircuitState.OPEN, strikes=3,
                                      opened_at=fx.clock())

    with pytest.raises(TemporarilyRefused):
        intake.handle(fx.rt, published())

    assert fx.bus.published == []  # no final answer: Pub/Sub redelivers with backoff
    assert fx.store.docs == {}
    fx.clock.advance(fx.rt.settings.circuit_cooldown_s)
    redelivered = intake.handle(fx.rt, published())
    assert isinstance(redelivered, admission.Admitted)
    assert redelivered.created
