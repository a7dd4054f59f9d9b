"""Structured JSON logs in Cloud Logging's format: one object per line on stdout.

`severity` and `message` are the fields Cloud Logging reads; everything passed
in `extra={"fields": {...}}` lands in jsonPayload, so `job_id` follows a job
through every function.

Fields bound with `bind()` (the invocation's job id and trace, see
aiprod.observability.tracing) are added to every line written inside it, under the fields
the line gives itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

# Fields of the invocation in progress (per thread: functions-framework serves each
# request on its own thread).
_BOUND: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "aiprod_log_fields", default=MappingProxyType({}))

_SEVERITY = {"WARNING": "WARNING", "ERROR": "ERROR", "CRITICAL": "CRITICAL",
             "INFO": "INFO", "DEBUG": "DEBUG"}


class CloudLoggingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelname, "DEFAULT"),
            "message": record.getMessage(),
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "logger": record.name,
        }
        bound = _BOUND.get()
        entry.update(bound)
        for key, value in getattr(record, "fields", {}).items():
            if value is not None or key not in bound:  # job_id=None keeps the bound id
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure() -> None:
    root = logging.getLogger()
    if any(isinstance(h.formatter, CloudLoggingFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CloudLoggingFormatter())
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "urllib3", "google", "runwayml", "replicate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    logger.log(level, message, extra={"fields": fields})


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add `fields` (None values left out) to every line logged inside the block."""
    token = _BOUND.set({**_BOUND.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _BOUND.reset(token)


def bound() -> dict[str, Any]:
    """The fields bound now."""
    return dict(_BOUND.get())
