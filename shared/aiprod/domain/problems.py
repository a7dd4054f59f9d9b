"""RFC 9457 problem details: every API error has a stable `type`, a `title`, a
human `detail`, and where it applies the offending field(s).

Pure data, so services raise them and aiprod.http renders them (problem+json)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    def __init__(self, status: int, slug: str, title: str, detail: str,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.headers = headers or {}
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.extra = extra

    @property
    def type(self) -> str:
        return f"urn:aiprod:problem:{self.slug}"

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "title": self.title,
                                "status": self.status, "detail": self.detail}
        if instance:
            body["instance"] = instance
        return body | self.extra


def invalid_request(error: ValidationError) -> Problem:
    """A 400 naming every offending field, in JSON-pointer-ish dotted form."""
    errors = []
    for item in error.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in item["loc"]) or "body"
        message = item["msg"]
        if item["type"] == "string_pattern_mismatch" and field == "prompt":
            message = "the prompt must not contain control characters (tab and newline are fine)"
        errors.append({"field": field, "message": message})
    first = errors[0] if errors else {"field": "body", "message": "invalid"}
    detail = f"{first['field']}: {first['message']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return Problem(400, "invalid-request", "The request is not valid", detail,
                   field=first["field"], errors=errors)


def malformed_json(message: str) -> Problem:
    return Problem(400, "malformed-json", "The body is not JSON",
                   f"the body could not be parsed as a JSON object: {message}", field="body")
