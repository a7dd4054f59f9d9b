"""What every provider simulator shares: tasks on a clock, faults, stats, files.

A simulator answers in its provider's own wire format (see the provider
modules); this module holds the parts that do not depend on the format: the
fault drawn for each create call, the task timeline (pending, running, then
a terminal state once the render time has passed), the `/_sim/*` control
routes, and the rendered MP4 files the output URLs point at.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import json
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from aiprod.adapters import media

FaultMode = Literal["ok", "error", "throttle", "moderation", "fail", "hang", "slow", "blank",
                    "lowres"]
# What a create call can end as: a fault mode, or refused before any fault is drawn.
Outcome = Literal["ok", "error", "throttle", "moderation", "fail", "hang", "slow", "blank",
                  "lowres", "invalid", "unauthenticated"]
# The modes that create a provider task (the others answer the create call with an error).
# `blank` succeeds with a video of flat black frames (a broken render); `lowres` with a
# smaller frame than asked for (a 1080p request answered at 720p).
TASK_MODES: frozenset[str] = frozenset({"ok", "moderation", "fail", "hang", "slow", "blank",
                                        "lowres"})
Phase = Literal["pending", "running", "succeeded", "moderation", "fail", "cancelled"]

DEFAULT_LATENCY_S = 1.0
DEFAULT_SLOW_S = 120.0
DEFAULT_RETRY_AFTER_S = 30
HANG_MAX_S = 3600.0
_PENDING_SHARE = 0.1  # the first tenth of the render time is spent queued
# Frames a second of the rendered clips. Providers deliver 24; the clips are real H.264
# at the provider's frame size (up to 1080p), and half the frames halves what making
# and checking them costs. Nothing AIPROD checks depends on the rate.
SIM_FPS = 12


class FaultRequest(BaseModel):
    """The body of POST /_sim/fault."""

    model_config = ConfigDict(extra="forbid")

    mode: FaultMode
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    latency_s: float | None = Field(default=None, ge=0.0)
    slow_s: float | None = Field(default=None, ge=0.0)
    retry_after_s: int | None = Field(default=None, ge=0)


@dataclass
class Fault:
    mode: FaultMode = "ok"
    rate: float = 1.0
    slow_s: float = DEFAULT_SLOW_S
    retry_after_s: int = DEFAULT_RETRY_AFTER_S


@dataclass
class Stats:
    requests: int = 0
    creates: int = 0
    polls: int = 0
    cancels: int = 0
    downloads: int = 0
    by_outcome: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(get_args(Outcome), 0))


@dataclass(frozen=True)
class TaskSpec:
    """A validated create request, in provider-neutral terms."""

    model: str
    prompt: str | None
    duration_s: float
    ratio: str          # the provider's own spelling ("16:9", "1280:720")
    render_ratio: str   # "W:H" for the rendered file
    render_short_side: int  # the rendered frame's shorter side, in pixels (720 at 720p)
    request: dict[str, Any] = field(default_factory=dict)  # the provider-specific body
    samples: int = 1
    image: str | None = None  # the input image as sent: a URL, or a base64 data/bytes string

    def image_summary(self) -> dict[str, Any] | None:
        """What tests need to know of the input image: its URL, or the hash of its bytes."""
        if self.image is None:
            return None
        if self.image.startswith(("https://", "http://", "gs://")):
            return {"url": self.image}
        payload = self.image.partition(",")[2] if self.image.startswith("data:") else self.image
        data = base64.b64decode(payload)
        return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@dataclass
class SimTask:
    id: str
    spec: TaskSpec
    outcome: FaultMode
    created_at: dt.datetime
    started: float       # monotonic
    render_s: float
    cancelled_at: float | None = None
    deleted: bool = False

    def phase(self, now: float) -> tuple[Phase, float]:
        """Where the task is at monotonic time `now`, and its progress (0..1)."""
        done_at = self.started + self.render_s
        if self.cancelled_at is not None and self.cancelled_at < done_at:
            return "cancelled", self._progress(self.cancelled_at)
        if now >= done_at:
            if self.outcome in ("moderation", "fail"):
                return self.outcome, 1.0
            return "succeeded", 1.0
        if now - self.started < self.render_s * _PENDING_SHARE:
            return "pending", 0.0
        return "running", self._progress(now)

    @property
    def cancelled_before_running(self) -> bool:
        """Whether a cancel reached the task while it was still queued."""
        return self.cancelled_at is not None and (
            self.cancelled_at - self.started < self.render_s * _PENDING_SHARE)

    def _progress(self, at: float) -> float:
        return round(min(1.0, (at - self.started) / self.render_s), 3) if self.render_s else 1.0

    def wall_time(self, at: float) -> dt.datetime:
        """The wall-clock time of monotonic instant `at`."""
        return self.created_at + dt.timedelta(seconds=at - self.started)

    @property
    def ends_at(self) -> float:
        return self.started + self.render_s


class DroppedConnection(Response):
    """Starts a response, then fails so the server closes the connection mid-way.

    Used when a hung create call outlives the server: the client must see a
    dropped connection (outcome unknown), never an error status that would
    suggest no task was created.
    """

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", b"4096")]})
        raise ConnectionAbortedError("simulated connection drop: the server is stopping")


def iso(moment: dt.datetime) -> str:
    """UTC timestamp with milliseconds and a Z, as these APIs print them."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def bearer_token(request: Request) -> str:
    """The token of an `Authorization: Bearer <token>` header, or "" when there is none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class ProviderSim(ABC):
    """One provider's simulator: shared state and control routes, plus the wire-format hooks."""

    provider: str

    def __init__(self, latency_s: float = DEFAULT_LATENCY_S, seed: int | None = None) -> None:
        self.default_latency_s = latency_s
        self.latency_s = latency_s
        self.fault = Fault()
        self.stats = Stats()
        self.tasks: dict[str, SimTask] = {}
        self.closing = False
        self._rng = random.Random(seed)
        self._videos: dict[tuple[float, str, int, bool], bytes] = {}
        self._video_lock = asyncio.Lock()

    # -- the provider's wire format --------------------------------------------------------

    @abstractmethod
    def provider_routes(self) -> list[BaseRoute]:
        """The provider's own API routes."""

    @abstractmethod
    def unauthenticated(self) -> Response:
        """401 in the provider's error shape."""

    @abstractmethod
    def server_error(self) -> Response:
        """5xx in the provider's error shape (no task created)."""

    @abstractmethod
    def throttled(self) -> Response:
        """429 in the provider's error shape (no task created)."""

    @abstractmethod
    def bad_request(self, message: str) -> Response:
        """400/422 in the provider's error shape, for a body that is not valid."""

    @abstractmethod
    def new_task_id(self) -> str:
        """A task id that looks like the provider's."""

    @abstractmethod
    def status_name(self, task: SimTask, now: float) -> str:
        """The task's status in the provider's own words (for /_sim/tasks)."""

    def check_auth(self, request: Request) -> Response | None:
        """None when the request carries credentials the provider would accept."""
        return None if bearer_token(request) else self.unauthenticated()

    # -- creating tasks ----------------------------------------------------------------------

    async def handle_create(
        self, request: Request,
        parse: Callable[[dict[str, Any]], TaskSpec | Response],
        respond: Callable[[SimTask], Awaitable[Response]],
    ) -> Response:
        """The create flow every provider shares: auth, validation, then the drawn fault."""
        self.stats.requests += 1
        refused = self.check_auth(request)
        if refused is not None:
            self._count("unauthenticated" if refused.status_code == 401 else "invalid")
            return refused
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            body = None
        parsed = parse(body) if isinstance(body, dict) else self.bad_request(
            "the request body must be a JSON object")
        if isinstance(parsed, Response):
            self._count("invalid")
            return parsed

        mode = self._draw()
        self._count(mode)
        if mode == "error":
            return self.server_error()
        if mode == "throttle":
            return self.throttled()
        task = self._new_task(parsed, mode)
        if mode == "hang":
            if await self._hang(request):
                return Response(status_code=504)  # the client is gone; nobody reads this
            return DroppedConnection()
        return await respond(task)

    def _draw(self) -> FaultMode:
        fault = self.fault
        if fault.mode != "ok" and self._rng.random() < fault.rate:
            return fault.mode
        return "ok"

    def _count(self, outcome: Outcome) -> None:
        self.stats.by_outcome[outcome] += 1

    def _new_task(self, spec: TaskSpec, mode: FaultMode) -> SimTask:
        task = SimTask(
            id=self.new_task_id(), spec=spec, outcome=mode,
            created_at=dt.datetime.now(dt.UTC), started=time.monotonic(),
            render_s=self.fault.slow_s if mode == "slow" else self.latency_s)
        self.tasks[task.id] = task
        self.stats.creates += 1
        return task

    async def _hang(self, request: Request) -> bool:
        """Hold the create call open until the client gives up (True) or the server stops."""
        deadline = time.monotonic() + HANG_MAX_S
        while not self.closing and time.monotonic() < deadline:
            if await request.is_disconnected():
                return True
            await asyncio.sleep(0.05)
        return False

    # -- reading tasks -----------------------------------------------------------------------

    def find(self, task_id: str) -> SimTask | None:
        task = self.tasks.get(task_id)
        return None if task is None or task.deleted else task

    def cancel(self, task: SimTask) -> None:
        """Cancel a task that has not finished yet (finished tasks stay as they are)."""
        self.stats.cancels += 1
        now = time.monotonic()
        if task.cancelled_at is None and now < task.ends_at:
            task.cancelled_at = now

    async def video(self, task: SimTask) -> bytes:
        """The task's rendered MP4, made once per (duration, ratio, size) in a worker
        thread, at the size the provider renders (a short clip: tests stay fast)."""
        spec = task.spec
        short_side = spec.render_short_side
        if task.outcome == "lowres":
            short_side = short_side * 2 // 3  # 1080p -> 720p, 720p -> 480p
        key = (spec.duration_s, spec.render_ratio, short_side, task.outcome == "blank")
        async with self._video_lock:
            if key not in self._videos:
                self._videos[key] = await run_in_threadpool(functools.partial(
                    media.render_test_video, key[0], key[1], fps=SIM_FPS, height=key[2],
                    blank=key[3],
                    label=f"aiprod {self.provider} simulator {key[0]:g}s {key[1]} "
                          f"{key[2]}p"))
            return self._videos[key]

    def file_url(self, request: Request, task: SimTask, query: str = "") -> str:
        url = str(request.url_for("sim_file", name=f"{task.id}.mp4"))
        return f"{url}?{query}" if query else url

    # -- control routes ----------------------------------------------------------------------

    def fault_state(self) -> dict[str, Any]:
        return {"mode": self.fault.mode, "rate": self.fault.rate, "latency_s": self.latency_s,
                "slow_s": self.fault.slow_s, "retry_after_s": self.fault.retry_after_s}

    async def _set_fault(self, request: Request) -> Response:
        try:
            wanted = FaultRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            problems = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                        for e in exc.errors(include_url=False)]
            return JSONResponse({"error": "invalid fault", "problems": problems},
                                status_code=400)
        self.fault = Fault(
            mode=wanted.mode, rate=wanted.rate,
            slow_s=wanted.slow_s if wanted.slow_s is not None else self.fault.slow_s,
            retry_after_s=(wanted.retry_after_s if wanted.retry_after_s is not None
                           else self.fault.retry_after_s))
        if wanted.latency_s is not None:
            self.latency_s = wanted.latency_s
        return JSONResponse(self.fault_state())

    async def _stats(self, request: Request) -> Response:
        s = self.stats
        return JSONResponse({
            "provider": self.provider, "requests": s.requests, "creates": s.creates,
            "by_outcome": s.by_outcome, "polls": s.polls, "cancels": s.cancels,
            "downloads": s.downloads, "tasks": len(self.tasks), "fault": self.fault_state()})

    async def _tasks(self, request: Request) -> Response:
        now = time.monotonic()
        return JSONResponse([
            {"id": t.id, "status": self.status_name(t, now), "phase": t.phase(now)[0],
             "outcome": t.outcome, "prompt": t.spec.prompt, "model": t.spec.model,
             "duration": t.spec.duration_s, "ratio": t.spec.ratio,
             "created_at": iso(t.created_at), "deleted": t.deleted,
             "image": t.spec.image_summary(),
             # Runway's body and Replicate's input carry it at the top, Veo's in parameters.
             "seed": t.spec.request.get("seed",
                                        (t.spec.request.get("parameters") or {}).get("seed"))}
            for t in self.tasks.values()])

    async def _reset(self, request: Request) -> Response:
        self.tasks.clear()
        self.stats = Stats()
        self.fault = Fault()
        self.latency_s = self.default_latency_s
        return JSONResponse({"reset": True, "fault": self.fault_state()})

    async def _file(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        task = self.find(name.removesuffix(".mp4"))
        if task is None or task.phase(time.monotonic())[0] != "succeeded":
            return JSONResponse({"error": "no such file"}, status_code=404)
        self.stats.downloads += 1
        return Response(await self.video(task), media_type="video/mp4")

    def control_routes(self) -> list[BaseRoute]:
        return [
            Route("/_sim/fault", self._set_fault, methods=["POST"]),
            Route("/_sim/stats", self._stats, methods=["GET"]),
            Route("/_sim/tasks", self._tasks, methods=["GET"]),
            Route("/_sim/reset", self._reset, methods=["POST"]),
            Route("/_sim/files/{name}", self._file, methods=["GET"], name="sim_file"),
        ]

    def app(self) -> Starlette:
        """The ASGI app; `app.state.sim` is this simulator."""
        application = Starlette(routes=self.control_routes() + self.provider_routes())
        application.state.sim = self
        return application
