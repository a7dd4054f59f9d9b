"""Trace context: read from HTTP headers and message attributes, written on every
log line of the invocation and on every message it publishes."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from aiprod.adapters.bus import PubSubBus
from aiprod.observability import logs, tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.CloudLoggingFormatter())
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    # setLevel, not `.level =`: it clears the loggers' cached isEnabledFor answers
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.setLevel(saved[0])
        root.handlers = saved[1]


def entries(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize(("headers", "trace", "sampled"), [
    ({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}, TRACE, True),
    ({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-00"}, TRACE, False),
    ({"X-Cloud-Trace-Context": f"{TRACE.upper()}/12345;o=1"}, TRACE, True),
    ({"X-Cloud-Trace-Context": TRACE}, TRACE, False),
])
def test_incoming_trace_headers_are_read(headers: dict[str, str], trace: str,
                                         sampled: bool) -> None:
    context = tracing.from_headers(headers)
    assert context is not None
    assert (context.trace_id, context.sampled) == (trace, sampled)
    assert len(context.span_id) == 16


@pytest.mark.parametrize("value", [
    "", "garbage", f"00-{'0' * 32}-00f067aa0ba902b7-01", f"ff-{TRACE}-00f067aa0ba902b7-01",
    f"00-{TRACE[:-1]}-00f067aa0ba902b7-01"])
def test_malformed_trace_headers_are_ignored(value: str) -> None:
    assert tracing.from_headers({"traceparent": value}) is None


def test_an_http_invocation_logs_the_callers_trace_and_a_span_of_its_own(
        logged: io.StringIO) -> None:
    logger = logging.getLogger("test")

    @tracing.http_entry
    def handler(request: Any) -> str:
        logs.log(logger, logging.INFO, "inside", job_id="job_1")
        return "ok"

    request = SimpleNamespace(headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    assert handler(request) == "ok"
    logs.log(logger, logging.INFO, "outside")
    inside, outside = entries(logged)
    assert inside["logging.googleapis.com/trace"] == f"projects/aiprod-local/traces/{TRACE}"
    assert inside["logging.googleapis.com/spanId"] != "00f067aa0ba902b7"
    assert inside["logging.googleapis.com/trace_sampled"] is True
    assert inside["job_id"] == "job_1"
    assert "logging.googleapis.com/trace" not in outside  # the scope ended


def test_a_request_without_a_trace_starts_one(logged: io.StringIO) -> None:
    seen = []

    @tracing.http_entry
    def handler(request: Any) -> None:
        seen.append(tracing.current())

    handler(SimpleNamespace(headers={}))
    handler(SimpleNamespace(headers={}))
    assert seen[0] is not None
    assert seen[1] is not None
    assert seen[0].trace_id != seen[1].trace_id


def _event(attributes: dict[str, str], message_id: str = "m1") -> Any:
    return SimpleNamespace(data={"message": {"attributes": attributes, "messageId": message_id,
                                             "data": ""}})


def test_a_message_continues_its_trace_and_names_its_job(logged: io.StringIO) -> None:
    @tracing.event_entry
    def handler(event: Any) -> None:
        logs.log(logging.getLogger("test"), logging.WARNING, "rendering")

    handler(_event({"job_id": "job_9", "traceparent": f"00-{TRACE}-00f067aa0ba902b7-00"}))
    (entry,) = entries(logged)
    assert entry["job_id"] == "job_9"
    assert entry["severity"] == "WARNING"
    assert entry["logging.googleapis.com/trace"].endswith(TRACE)


def test_a_message_without_a_trace_gets_one_stable_across_redeliveries() -> None:
    traces = []

    @tracing.event_entry
    def handler(event: Any) -> None:
        context = tracing.current()
        assert context is not None
        traces.append(context.trace_id)

    handler(_event({}, "42"))
    handler(_event({}, "42"))
    handler(_event({}, "43"))
    assert traces[0] == traces[1] != traces[2]


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[dict[str, str]] = []

    def publish(self, topic: str, data: bytes, **attributes: str) -> Any:
        self.sent.append(attributes)
        return SimpleNamespace(result=lambda timeout: "id")


def test_every_publish_carries_the_trace_on_to_the_next_function() -> None:
    publisher = FakePublisher()
    bus = PubSubBus("p", publisher)  # type: ignore[arg-type]
    bus.publish("render-x", {"job_id": "j"}, {"job_id": "j"})
    context = tracing.TraceContext(TRACE, "00f067aa0ba902b7", True)
    with tracing.scope(context):
        bus.publish("render-x", {"job_id": "j"}, {"job_id": "j"})
    assert publisher.sent[0] == {"job_id": "j"}
    assert publisher.sent[1] == {"job_id": "j",
                                 "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
    assert tracing.from_attributes(publisher.sent[1]) == context
