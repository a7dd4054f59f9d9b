"""Trace context: one trace id follows a job through every function.

An HTTP request brings it (`traceparent`, W3C, or Google's
`X-Cloud-Trace-Context`); Pub/Sub messages carry it in a `traceparent`
attribute, which every publish adds (aiprod.adapters.bus); a message without
one starts a trace derived from its message id, so redeliveries share it.
Every log line written during an invocation carries the trace in Cloud
Logging's fields (`logging.googleapis.com/trace`, `.../spanId`,
`.../trace_sampled`), and the job id when the message names it, so a job's
whole story reads back with one query: `jsonPayload.job_id="job_..."` or
`trace="projects/P/traces/T"`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiprod.observability import logs

TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"
SAMPLED_FIELD = "logging.googleapis.com/trace_sampled"
ATTRIBUTE = "traceparent"

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_CLOUD_TRACE = re.compile(r"^([0-9a-fA-F]{32})(?:/(\d{1,20}))?(?:;o=([01]))?$")
_ZERO_TRACE = "0" * 32


@dataclass(frozen=True)
class TraceContext:
    trace_id: str   # 32 lowercase hex digits
    span_id: str    # 16 lowercase hex digits: this invocation's span
    sampled: bool = False

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def child(self) -> TraceContext:
        """The same trace, with a span of its own (one per invocation)."""
        return TraceContext(self.trace_id, _new_span(), self.sampled)

    def log_fields(self, project: str) -> dict[str, Any]:
        return {TRACE_FIELD: f"projects/{project}/traces/{self.trace_id}",
                SPAN_FIELD: self.span_id, SAMPLED_FIELD: self.sampled}


_CURRENT: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "aiprod_trace", default=None)


def _new_span() -> str:
    span = secrets.token_hex(8)
    return span if span != "0" * 16 else "0" * 15 + "1"


def parse_traceparent(value: str | None) -> TraceContext | None:
    match = _TRACEPARENT.fullmatch((value or "").strip().lower())
    if match is None or match.group(1) == "ff" or match.group(2) == _ZERO_TRACE:
        return None
    return TraceContext(match.group(2), match.group(3), int(match.group(4), 16) & 1 == 1)


def parse_cloud_trace(value: str | None) -> TraceContext | None:
    """`X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1` (the span id is decimal)."""
    match = _CLOUD_TRACE.fullmatch((value or "").strip())
    if match is None or match.group(1) == _ZERO_TRACE:
        return None
    span = int(match.group(2) or 0) & (2**64 - 1)
    return TraceContext(match.group(1).lower(), f"{span:016x}" if span else _new_span(),
                        match.group(3) == "1")


def from_headers(headers: Mapping[str, str]) -> TraceContext | None:
    return (parse_traceparent(headers.get("traceparent"))
            or parse_cloud_trace(headers.get("X-Cloud-Trace-Context")))


def from_attributes(attributes: Mapping[str, str]) -> TraceContext | None:
    return (parse_traceparent(attributes.get(ATTRIBUTE))
            or parse_traceparent(attributes.get("googclient_traceparent")))


def new_trace(seed: str | None = None) -> TraceContext:
    """A new trace; derived from `seed` (a message id) when given, so it is stable."""
    trace_id = (hashlib.sha256(seed.encode()).hexdigest()[:32] if seed
                else secrets.token_hex(16))
    return TraceContext(trace_id, _new_span())


def current() -> TraceContext | None:
    return _CURRENT.get()


def outgoing() -> dict[str, str]:
    """Attributes that carry the current trace on a message being published."""
    context = _CURRENT.get()
    return {ATTRIBUTE: context.traceparent()} if context is not None else {}


def _project() -> str:
    return os.environ.get("GOOGLE_CLOUD_PROJECT") or "aiprod-local"


@contextlib.contextmanager
def scope(context: TraceContext, **fields: Any) -> Iterator[TraceContext]:
    """Run an invocation in `context`: its logs carry the trace (and `fields`)."""
    token = _CURRENT.set(context)
    try:
        with logs.bind(**context.log_fields(_project()), **fields):
            yield context
    finally:
        _CURRENT.reset(token)


R = TypeVar("R")


def http_entry(handler: Callable[[Any], R]) -> Callable[[Any], R]:
    """For an HTTP function: continue the caller's trace, or start one."""
    @functools.wraps(handler)
    def run(request: Any) -> R:
        incoming = from_headers(getattr(request, "headers", {}) or {})
        context = incoming.child() if incoming is not None else new_trace()
        with scope(context):
            return handler(request)
    return run


def event_entry(handler: Callable[[Any], R]) -> Callable[[Any], R]:
    """For a Pub/Sub-driven function: continue the message's trace (or derive one
    from its id) and log the job id the message names in its attributes."""
    @functools.wraps(handler)
    def run(event: Any) -> R:
        data = getattr(event, "data", None)
        message: dict[str, Any] = data.get("message", {}) if isinstance(data, dict) else {}
        attributes: dict[str, str] = message.get("attributes") or {}
        incoming = from_attributes(attributes)
        message_id = message.get("messageId") or message.get("message_id")
        context = (incoming.child() if incoming is not None
                   else new_trace(f"pubsub:{message_id}" if message_id else None))
        with scope(context, job_id=attributes.get("job_id")):
            return handler(event)
    return run
