"""Replicate HTTP API simulator (predictions on official models).

Wire format from shared/reference/providers.md section 2: create answers 201
with the whole prediction object (`model` and `version` always present, as
the 1.x SDK requires); status goes starting -> processing -> succeeded |
failed | canceled; errors are RFC 7807 problem details, except the 429 body
`{"detail": "Request was throttled. ..."}`. `Prefer: wait[=N]` holds the
create call until the prediction finishes or N seconds pass.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aiprod_dev.sim.core import ProviderSim, SimTask, TaskSpec, iso

MAX_WAIT_S = 60
MODERATION_ERROR = ("E005: The input or output was flagged as sensitive. "
                    "Please try again with different inputs.")
FAILURE_ERROR = "Prediction failed: the model exited unexpectedly (CUDA error: out of memory)."


@dataclass(frozen=True)
class _Input:
    """One property of a model's input schema (its replicate.com/<model>/api page)."""

    kind: Literal["string", "uri", "integer", "boolean"]
    default: Any = None
    enum: tuple[Any, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    required: bool = False


@dataclass(frozen=True)
class _VideoModel:
    """A hosted video model: its input schema, and how its inputs shape the video.

    `image` names the first-frame input. The output's shorter side comes from the
    `resolution` input's value through `sizes`, or is `fixed_size` for a model that
    renders one resolution; `aspect_ratio` None means the model renders 16:9 only.
    `rule` checks what the schema cannot say (Hailuo: 10 s only at 768p)."""

    inputs: dict[str, _Input]
    image: str
    aspect_ratio: str | None = "aspect_ratio"
    resolution: str | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    fixed_size: int = 720
    rule: Callable[[dict[str, Any]], tuple[str, str] | None] = lambda given: None

    def value(self, given: dict[str, Any], name: str | None, fallback: Any = None) -> Any:
        if name is None:
            return fallback
        return given.get(name, self.inputs[name].default)


def _hailuo_rule(given: dict[str, Any]) -> tuple[str, str] | None:
    resolution = given.get("resolution", "1080p")
    if given.get("duration", 6) == 10 and resolution != "768p":
        return "input.duration", "10 seconds is only available for 768p resolution"
    if resolution == "512p" and not given.get("first_frame_image"):
        return "input.resolution", "512p needs a first_frame_image"
    return None


_RATIOS = ("16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive")
MODELS: dict[str, _VideoModel] = {
    # replicate.com/bytedance/seedance-2.0-fast/api (the fast model: 480p or 720p).
    "bytedance/seedance-2.0-fast": _VideoModel(
        inputs={"prompt": _Input("string", required=True), "image": _Input("uri"),
                "last_frame_image": _Input("uri"),
                "duration": _Input("integer", 5, minimum=2, maximum=15),
                "resolution": _Input("string", "720p", enum=("480p", "720p")),
                "aspect_ratio": _Input("string", "16:9", enum=_RATIOS),
                "generate_audio": _Input("boolean", True), "seed": _Input("integer")},
        image="image", resolution="resolution", sizes={"480p": 480, "720p": 720}),
    # replicate.com/kwaivgi/kling-v2.5-turbo-pro/api: 1080p; the frame follows a start image.
    "kwaivgi/kling-v2.5-turbo-pro": _VideoModel(
        inputs={"prompt": _Input("string", required=True), "negative_prompt": _Input("string"),
                "start_image": _Input("uri"), "image": _Input("uri"),
                "aspect_ratio": _Input("string", "16:9", enum=("16:9", "9:16", "1:1")),
                "duration": _Input("integer", 5, enum=(5, 10))},
        image="start_image", fixed_size=1080),
    # replicate.com/minimax/hailuo-02/api: 16:9 from text, or the first frame's shape.
    "minimax/hailuo-02": _VideoModel(
        inputs={"prompt": _Input("string", required=True), "first_frame_image": _Input("uri"),
                "last_frame_image": _Input("uri"),
                "duration": _Input("integer", 6, enum=(6, 10)),
                "resolution": _Input("string", "1080p", enum=("512p", "768p", "1080p")),
                "prompt_optimizer": _Input("boolean", True)},
        image="first_frame_image", aspect_ratio=None, resolution="resolution",
        sizes={"512p": 512, "768p": 768, "1080p": 1080}, rule=_hailuo_rule),
}


def _problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"title": title, "detail": detail, "status": status, **extra},
                        status_code=status, media_type="application/problem+json")


def _wait_seconds(prefer: str) -> float | None:
    """Seconds asked for by a `Prefer: wait` or `Prefer: wait=N` header, else None."""
    match = re.search(r"(?:^|[,;\s])wait(?:\s*=\s*(\d+))?\s*(?:$|[,;])", prefer)
    if match is None:
        return None
    return float(min(MAX_WAIT_S, max(1, int(match.group(1) or MAX_WAIT_S))))


class ReplicateSim(ProviderSim):
    provider = "replicate"

    def provider_routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/models/{owner}/{name}/predictions", self._create_for_model,
                  methods=["POST"]),
            Route("/v1/predictions", self._create, methods=["POST"]),
            Route("/v1/predictions", self._list, methods=["GET"]),
            Route("/v1/predictions/{prediction_id}", self._get, methods=["GET"],
                  name="prediction"),
            Route("/v1/predictions/{prediction_id}/cancel", self._cancel, methods=["POST"],
                  name="prediction_cancel"),
        ]

    # -- error shapes ------------------------------------------------------------------------

    def unauthenticated(self) -> Response:
        return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")

    def server_error(self) -> Response:
        return _problem(500, "Internal Server Error",
                        "An unexpected error occurred. Please try again.")

    def throttled(self) -> Response:
        seconds = self.fault.retry_after_s
        return JSONResponse(
            {"detail": f"Request was throttled. Your rate limit resets in ~{seconds}s."},
            status_code=429, headers={"Retry-After": str(seconds)})

    def bad_request(self, message: str) -> Response:
        return _problem(400, "Bad request", message)

    def _invalid_input(self, field: str, kind: str, description: str) -> Response:
        return _problem(422, "Input validation failed", f"- {field}: {description}\n",
                        invalid_fields=[{"type": kind, "field": field,
                                         "description": description}])

    def new_task_id(self) -> str:
        return base64.b32encode(secrets.token_bytes(16)).decode().lower().rstrip("=")

    # -- creating ----------------------------------------------------------------------------

    async def _create_for_model(self, request: Request) -> Response:
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        return await self.handle_create(
            request, lambda body: self._parse(model, body),
            lambda task: self._created(request, task))

    async def _create(self, request: Request) -> Response:
        def parse(body: dict[str, Any]) -> TaskSpec | Response:
            version = body.get("version")
            if not isinstance(version, str) or not version:
                return self._invalid_input("version", "required", "version is required")
            model = version.split(":", 1)[0]
            if "/" not in model:
                return _problem(422, "Invalid version",
                                "The specified version does not exist (or perhaps you "
                                "don't have permission to use it?)")
            return self._parse(model, body)

        return await self.handle_create(request, parse,
                                        lambda task: self._created(request, task))

    def _parse(self, model_name: str, body: dict[str, Any]) -> TaskSpec | Response:
        model = MODELS.get(model_name)
        if model is None:
            return _problem(404, "Not found", f"The model {model_name} does not exist.")
        given = body.get("input")
        if not isinstance(given, dict):
            return self._invalid_input("input", "required", "input is required")
        refused = self._validate(model, given)
        if refused is not None:
            return refused
        ratio = model.value(given, model.aspect_ratio, "16:9")
        if ratio == "adaptive":
            ratio = "16:9"
        size = model.sizes.get(model.value(given, model.resolution), model.fixed_size)
        image = given.get(model.image)
        return TaskSpec(model=model_name, prompt=given.get("prompt"),
                        duration_s=float(model.value(given, "duration")), ratio=ratio,
                        render_ratio=ratio, render_short_side=size, request=given,
                        image=image)

    def _validate(self, model: _VideoModel, given: dict[str, Any]) -> Response | None:
        """Check `given` against the model's input schema as Replicate does: every
        problem is a 422 naming the field. An input the schema does not name is
        refused too (stricter than a model that would ignore it: a catalog mapping
        naming the wrong input fails here, not silently in production)."""
        for name in given:
            if name not in model.inputs:
                return self._invalid_input("input", "additional_property_not_allowed",
                                           f"Additional property {name} is not allowed")
        for name, schema in model.inputs.items():
            field_name = f"input.{name}"
            value = given.get(name)
            if value is None:
                if schema.required:
                    return self._invalid_input(field_name, "required", f"{name} is required")
                continue
            if schema.kind in ("string", "uri"):
                if not isinstance(value, str) or (schema.required and not value.strip()):
                    return self._invalid_input(field_name, "invalid_type",
                                               "Invalid type. Expected: string, given: "
                                               f"{type(value).__name__}")
                if schema.kind == "uri" and not value.startswith(("http://", "https://",
                                                                   "data:")):
                    return self._invalid_input(field_name, "format",
                                               "Does not match format 'uri'")
            elif schema.kind == "boolean":
                if not isinstance(value, bool):
                    return self._invalid_input(field_name, "invalid_type",
                                               "Invalid type. Expected: boolean")
            elif isinstance(value, bool) or not isinstance(value, int):
                return self._invalid_input(field_name, "invalid_type", "Invalid type. "
                                           f"Expected: integer, given: {type(value).__name__}")
            if schema.enum is not None and value not in schema.enum:
                allowed = ", ".join(f'"{v}"' if isinstance(v, str) else str(v)
                                    for v in schema.enum)
                return self._invalid_input(field_name, "enum", f"{field_name} must be one "
                                           f"of the following: {allowed}")
            if schema.minimum is not None and isinstance(value, int) and value < schema.minimum:
                return self._invalid_input(field_name, "number_gte",
                                           f"Must be greater than or equal to {schema.minimum}")
            if schema.maximum is not None and isinstance(value, int) and value > schema.maximum:
                return self._invalid_input(field_name, "number_lte",
                                           f"Must be less than or equal to {schema.maximum}")
        broken = model.rule(given)
        if broken is not None:
            return self._invalid_input(broken[0], "invalid", broken[1])
        return None

    async def _created(self, request: Request, task: SimTask) -> Response:
        headers = {"Location": str(request.url_for("prediction", prediction_id=task.id))}
        wait = _wait_seconds(request.headers.get("prefer", ""))
        if wait is not None:
            headers["Preference-Applied"] = "wait"
            until = min(time.monotonic() + wait, task.ends_at)
            while time.monotonic() < until and task.cancelled_at is None and not self.closing:
                await asyncio.sleep(min(0.05, max(0.0, until - time.monotonic())))
        # Without `Prefer: wait` the answer is immediate, and a new prediction is "starting".
        return JSONResponse(self._prediction(request, task, just_created=wait is None),
                            status_code=201, headers=headers)

    # -- reading -----------------------------------------------------------------------------

    def status_name(self, task: SimTask, now: float) -> str:
        return {"pending": "starting", "running": "processing", "succeeded": "succeeded",
                "moderation": "failed", "fail": "failed",
                "cancelled": "canceled"}[task.phase(now)[0]]

    def _prediction(self, request: Request, task: SimTask,
                    just_created: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        phase, progress = ("pending", 0.0) if just_created else task.phase(now)
        started = task.started + task.render_s * 0.1
        ended = task.cancelled_at if phase == "cancelled" else task.ends_at
        terminal = phase not in ("pending", "running")
        percent = round(progress * 100)
        logs = "" if phase == "pending" else (  # tqdm's format, which the SDK parses
            f"Generating video...\n{percent:3d}%|{'#' * (percent // 10):<10}| {percent}/100\n")
        body: dict[str, Any] = {
            "id": task.id, "model": task.spec.model, "version": "hidden",
            "input": task.spec.request, "logs": logs, "output": None, "error": None,
            "status": "starting" if just_created else self.status_name(task, now),
            "data_removed": False, "source": "api",
            "created_at": iso(task.created_at),
            "started_at": iso(task.wall_time(started))
            if phase != "pending" and not task.cancelled_before_running else None,
            "completed_at": iso(task.wall_time(ended)) if terminal and ended else None,
            "urls": {
                "get": str(request.url_for("prediction", prediction_id=task.id)),
                "cancel": str(request.url_for("prediction_cancel", prediction_id=task.id)),
                "web": f"https://replicate.com/p/{task.id}",
            },
        }
        if phase == "succeeded":
            body["output"] = self.file_url(request, task)
            body["metrics"] = {"predict_time": round(task.render_s * 0.9, 6),
                               "total_time": round(task.render_s, 6),
                               "video_output_duration_seconds": task.spec.duration_s}
        elif phase == "moderation":
            body["error"] = MODERATION_ERROR
        elif phase == "fail":
            body["error"] = FAILURE_ERROR
        elif phase == "cancelled" and not task.cancelled_before_running and ended:
            # A prediction canceled while it ran is billed (it is `canceled`, not
            # `aborted`); the API reports its run time, never an amount.
            body["metrics"] = {"predict_time": round(ended - started, 6),
                               "total_time": round(ended - task.started, 6)}
        if terminal and "metrics" not in body:
            body["metrics"] = {"total_time": round((ended or now) - task.started, 6)}
        return body

    def _lookup(self, request: Request) -> SimTask | Response:
        refused = self.check_auth(request)
        if refused is not None:
            return refused
        task = self.find(request.path_params["prediction_id"])
        if task is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        return task

    async def _list(self, request: Request) -> Response:
        """GET /v1/predictions: every prediction, newest first, in one page."""
        refused = self.check_auth(request)
        if refused is not None:
            return refused
        tasks = sorted((t for t in self.tasks.values() if not t.deleted),
                       key=lambda t: t.created_at, reverse=True)
        return JSONResponse({"next": None, "previous": None,
                             "results": [self._prediction(request, t) for t in tasks]})

    async def _get(self, request: Request) -> Response:
        self.stats.polls += 1
        task = self._lookup(request)
        if isinstance(task, Response):
            return task
        return JSONResponse(self._prediction(request, task))

    async def _cancel(self, request: Request) -> Response:
        task = self._lookup(request)
        if isinstance(task, Response):
            return task
        self.cancel(task)
        return JSONResponse(self._prediction(request, task))
