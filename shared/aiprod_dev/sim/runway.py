"""Runway developer API simulator (POST /v1/*_to_video, GET/DELETE /v1/tasks/{id}).

Wire format from shared/reference/providers.md section 1 and the runwayml SDK's
types: create answers `{"id": uuid}`; a task is PENDING, RUNNING{progress},
then SUCCEEDED{output: [url]}, FAILED{failure, failureCode} or CANCELLED,
always with `id`, `status` and `createdAt`; errors are `{"error": "..."}`.
"""

from __future__ import annotations

import base64
import math
import secrets
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aiprod_dev.sim.core import ProviderSim, SimTask, TaskSpec, iso

RUNWAY_VERSION = "2024-11-06"
CREDIT_USD = 0.01
MAX_PROMPT_UTF16 = 1000
MAX_DATA_URI_BYTES = 5 * 1024 * 1024

_GEN45_I2V_RATIOS = ("1280:720", "720:1280", "1104:832", "960:960", "832:1104", "1584:672")
_VEO_RATIOS = ("1280:720", "720:1280", "1080:1920", "1920:1080")


class _ModelRule:
    """What one model accepts on one endpoint (providers.md 1.2)."""

    def __init__(self, ratios: tuple[str, ...], durations: tuple[int, ...],
                 duration_required: bool, default_duration: int, credits_per_s: float,
                 prompt_required: bool = True) -> None:
        self.ratios = ratios
        self.durations = durations
        self.duration_required = duration_required
        self.default_duration = default_duration
        self.credits_per_s = credits_per_s
        self.prompt_required = prompt_required


_TEXT_TO_VIDEO: dict[str, _ModelRule] = {
    "gen4.5": _ModelRule(("1280:720", "720:1280"), tuple(range(2, 11)), True, 5, 12),
    "veo3": _ModelRule(_VEO_RATIOS, (8,), True, 8, 40),
    "veo3.1": _ModelRule(_VEO_RATIOS, (4, 6, 8), False, 8, 40),
    "veo3.1_fast": _ModelRule(_VEO_RATIOS, (4, 6, 8), False, 8, 15),
}
_IMAGE_TO_VIDEO: dict[str, _ModelRule] = {
    "gen4.5": _ModelRule(_GEN45_I2V_RATIOS, tuple(range(2, 11)), True, 5, 12),
    "gen4_turbo": _ModelRule(_GEN45_I2V_RATIOS, tuple(range(2, 11)), False, 5, 5,
                             prompt_required=False),
    "veo3": _ModelRule(_VEO_RATIOS, (8,), True, 8, 40, prompt_required=False),
    "veo3.1": _ModelRule(_VEO_RATIOS, (4, 6, 8), False, 8, 40, prompt_required=False),
    "veo3.1_fast": _ModelRule(_VEO_RATIOS, (4, 6, 8), False, 8, 15, prompt_required=False),
}


def _image_problem(value: Any) -> str | None:
    """Why a promptImage would be refused, per Runway's input asset rules; None if fine."""
    uris: list[Any]
    if isinstance(value, str):
        uris = [value]
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        uris = [v.get("uri") for v in value]
        if any(v.get("position", "first") not in ("first", "last") for v in value):
            return "promptImage: position must be 'first' or 'last'."
    else:
        return "promptImage: Required a string or an array of {uri, position}."
    for uri in uris:
        if not isinstance(uri, str) or not uri:
            return "promptImage: Required a non-empty URI."
        if len(uri) > 2048 and not uri.startswith("data:"):
            return "promptImage: URL is longer than 2048 characters."
        if uri.startswith("data:"):
            head, _, payload = uri.partition(",")
            if not head.startswith("data:image/") or ";base64" not in head:
                return "promptImage: Invalid data URI."
            if len(payload) > MAX_DATA_URI_BYTES:
                return "promptImage: Data URI is larger than 5MB."
            try:
                base64.b64decode(payload, validate=True)
            except ValueError:
                return "promptImage: Invalid data URI."
        elif not uri.startswith(("https://", "runway://")):
            return "promptImage: Only HTTPS URLs are allowed."
    return None


class RunwaySim(ProviderSim):
    provider = "runway"

    def provider_routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/text_to_video", self._text_to_video, methods=["POST"]),
            Route("/v1/image_to_video", self._image_to_video, methods=["POST"]),
            Route("/v1/tasks/{task_id}", self._retrieve, methods=["GET"]),
            Route("/v1/tasks/{task_id}", self._delete, methods=["DELETE"]),
        ]

    # -- error shapes ------------------------------------------------------------------------

    def unauthenticated(self) -> Response:
        return JSONResponse({"error": "Invalid API key. Check the Authorization header."},
                            status_code=401)

    def server_error(self) -> Response:
        return JSONResponse({"error": "Service Unavailable: the API is shedding load. "
                                      "Retry with exponential backoff."}, status_code=503)

    def throttled(self) -> Response:
        seconds = self.fault.retry_after_s
        return JSONResponse(
            {"error": "You have exceeded the maximum daily generations for this model. "
                      "Try again later."},
            status_code=429, headers={"Retry-After": str(seconds)})

    def bad_request(self, message: str) -> Response:
        return JSONResponse({"error": message}, status_code=400)

    def check_auth(self, request: Request) -> Response | None:
        refused = super().check_auth(request)
        if refused is None and not request.headers.get("x-runway-version"):
            return self.bad_request(
                "The X-Runway-Version header is required. Set it to a supported version, "
                f"e.g. {RUNWAY_VERSION}.")
        return refused

    def new_task_id(self) -> str:
        return str(uuid.uuid4())

    # -- routes ------------------------------------------------------------------------------

    async def _text_to_video(self, request: Request) -> Response:
        return await self.handle_create(
            request, lambda body: self._parse(body, _TEXT_TO_VIDEO, image=False), self._created)

    async def _image_to_video(self, request: Request) -> Response:
        return await self.handle_create(
            request, lambda body: self._parse(body, _IMAGE_TO_VIDEO, image=True), self._created)

    def _parse(self, body: dict[str, Any], rules: dict[str, _ModelRule],
               image: bool) -> TaskSpec | Response:
        model = body.get("model")
        if not isinstance(model, str) or model not in rules:
            return self.bad_request(
                f"model: Invalid discriminator value. Expected {' | '.join(rules)}.")
        rule = rules[model]
        prompt = body.get("promptText")
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            return self.bad_request("promptText: Must be a non-empty string.")
        if prompt is None and rule.prompt_required:
            return self.bad_request("promptText: Required.")
        if isinstance(prompt, str) and len(prompt.encode("utf-16-le")) // 2 > MAX_PROMPT_UTF16:
            return self.bad_request(
                f"promptText: Must be at most {MAX_PROMPT_UTF16} characters.")
        if image:
            problem = _image_problem(body.get("promptImage"))
            if problem:
                return self.bad_request(problem)
        ratio = body.get("ratio")
        if ratio not in rule.ratios:
            return self.bad_request(f"ratio: Invalid enum value. Expected "
                                    f"{' | '.join(rule.ratios)}, received {ratio!r}.")
        duration = body.get("duration")
        if duration is None and not rule.duration_required:
            duration = rule.default_duration
        if isinstance(duration, bool) or not isinstance(duration, int) \
                or duration not in rule.durations:
            allowed = (f"an integer from {rule.durations[0]} to {rule.durations[-1]}"
                       if len(rule.durations) > 3 else " or ".join(map(str, rule.durations)))
            return self.bad_request(f"duration: Must be {allowed}, received {duration!r}.")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or not 0 <= seed <= 4_294_967_295):
            return self.bad_request("seed: Must be an integer from 0 to 4294967295.")
        sent = body.get("promptImage")
        if isinstance(sent, list):
            sent = next((i.get("uri") for i in sent if i.get("position") == "first"), None)
        # Runway's `ratio` is the output's size in pixels ("1280:720").
        width, height = (int(side) for side in ratio.split(":"))
        return TaskSpec(model=model, prompt=prompt, duration_s=float(duration),
                        ratio=ratio, render_ratio=ratio, render_short_side=min(width, height),
                        request=body,
                        image=sent if isinstance(sent, str) else None)

    async def _created(self, task: SimTask) -> Response:
        return JSONResponse({"id": task.id})

    def _credits(self, task: SimTask) -> int:
        rule = _TEXT_TO_VIDEO.get(task.spec.model) or _IMAGE_TO_VIDEO[task.spec.model]
        return math.ceil(rule.credits_per_s * task.spec.duration_s)

    def status_name(self, task: SimTask, now: float) -> str:
        return {"pending": "PENDING", "running": "RUNNING", "succeeded": "SUCCEEDED",
                "moderation": "FAILED", "fail": "FAILED",
                "cancelled": "CANCELLED"}[task.phase(now)[0]]

    def _task_json(self, request: Request, task: SimTask) -> dict[str, Any]:
        now = time.monotonic()
        phase, progress = task.phase(now)
        body: dict[str, Any] = {"id": task.id, "status": self.status_name(task, now),
                                "createdAt": iso(task.created_at)}
        credits = self._credits(task)
        if phase in ("pending", "running"):
            body["estimatedCost"] = {"credits": credits}
        if phase == "running":
            body["progress"] = progress
        elif phase == "succeeded":
            body["cost"] = {"credits": credits}
            body["output"] = [self.file_url(request, task, f"_jwt={secrets.token_urlsafe(24)}")]
        elif phase == "moderation":
            body["cost"] = {"credits": 0}
            body["failure"] = ("The prompt text was flagged by our content moderation "
                               "system. Please revise it and try again.")
            body["failureCode"] = "SAFETY.INPUT.TEXT"
        elif phase == "fail":
            body["cost"] = {"credits": 0}
            body["failure"] = "An unexpected error occurred while generating the output."
            body["failureCode"] = "INTERNAL.BAD_OUTPUT.CODE01"
        elif phase == "cancelled":
            # Runway's rule (runwayml SDK, tasks.delete): a cancel the server sees while
            # the task is RUNNING refunds nothing; one seen before (PENDING, THROTTLED)
            # is refunded, and the task reports its final cost.
            body["cost"] = {"credits": 0 if task.cancelled_before_running else credits}
        return body

    def _lookup(self, request: Request) -> SimTask | Response:
        refused = self.check_auth(request)
        if refused is not None:
            return refused
        task = self.find(request.path_params["task_id"])
        if task is None:
            return JSONResponse({"error": "Task not found."}, status_code=404)
        return task

    async def _retrieve(self, request: Request) -> Response:
        self.stats.polls += 1
        task = self._lookup(request)
        if isinstance(task, Response):
            return task
        return JSONResponse(self._task_json(request, task))

    async def _delete(self, request: Request) -> Response:
        """Running tasks become CANCELLED; finished ones are deleted (later GETs 404)."""
        task = self._lookup(request)
        if isinstance(task, Response):
            return task
        if task.phase(time.monotonic())[0] in ("pending", "running"):
            self.cancel(task)
        else:
            self.stats.cancels += 1
            task.deleted = True
        return Response(status_code=204)
