"""Veo on Vertex AI simulator (predictLongRunning / fetchPredictOperation).

Wire format from shared/reference/providers.md section 3: create answers
`{"name": ".../operations/<id>"}`; polling is a POST to the model's
`:fetchPredictOperation` with `{"operationName": ...}` and answers an
Operation with no `done` while running, then `done: true` with either a
GenerateVideoResponse (videos inline as base64, or RAI-filtered with none) or
a google.rpc.Status `error`. HTTP errors use the Google error envelope. Both
`/v1` (REST docs) and `/v1beta1` (google-genai's default) are served.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aiprod_dev.sim.core import ProviderSim, SimTask, TaskSpec

RESPONSE_TYPE = "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"
DURATIONS = (4, 6, 8)
ASPECT_RATIOS = ("16:9", "9:16")
RESOLUTIONS = {"720p": 720, "1080p": 1080}  # the frame's shorter side
RAI_REASON = ("Veo could not generate 1 videos based on the prompt provided. You will not be "
              "charged for this request. Try rephrasing your prompt. If you think this was an "
              "error, send feedback. Support codes: 42237218")
_MODEL_PATH = ("/{version}/projects/{project}/locations/{location}"
               "/publishers/google/models/{model}")


def google_error(code: int, status: str, message: str) -> JSONResponse:
    """The standard Google API error envelope."""
    return JSONResponse({"error": {"code": code, "message": message, "status": status}},
                        status_code=code)


class VeoSim(ProviderSim):
    provider = "veo"

    def __init__(self, latency_s: float = 1.0, seed: int | None = None) -> None:
        super().__init__(latency_s, seed)
        self.operation_names: dict[str, str] = {}

    async def _reset(self, request: Request) -> Response:
        self.operation_names.clear()
        return await super()._reset(request)

    def provider_routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = []
        for version in ("v1", "v1beta1"):
            base = _MODEL_PATH.replace("{version}", version)
            routes += [
                Route(base + ":predictLongRunning", self._predict, methods=["POST"]),
                Route(base + ":fetchPredictOperation", self._fetch, methods=["POST"]),
                Route(base + "/operations/{op_id}:cancel", self._cancel, methods=["POST"]),
                Route(base + "/operations/{op_id}", self._get_operation, methods=["GET"]),
            ]
        return routes

    # -- error shapes ------------------------------------------------------------------------

    def unauthenticated(self) -> Response:
        return google_error(
            401, "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential.")

    def server_error(self) -> Response:
        return google_error(503, "UNAVAILABLE", "The service is currently unavailable.")

    def throttled(self) -> Response:
        return google_error(
            429, "RESOURCE_EXHAUSTED",
            "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_"
            "model with base model: veo. Please submit a quota increase request.")

    def bad_request(self, message: str) -> Response:
        return google_error(400, "INVALID_ARGUMENT", message)

    def new_task_id(self) -> str:
        return str(uuid.uuid4())

    # -- routes ------------------------------------------------------------------------------

    @staticmethod
    def _model_name(request: Request) -> str:
        p = request.path_params
        return (f"projects/{p['project']}/locations/{p['location']}"
                f"/publishers/google/models/{p['model']}")

    async def _predict(self, request: Request) -> Response:
        model_name = self._model_name(request)
        if not request.path_params["model"].startswith("veo-"):
            self.stats.requests += 1
            self.stats.by_outcome["invalid"] += 1
            return google_error(404, "NOT_FOUND", f"Publisher Model `{model_name}` was not "
                                "found or your project does not have access to it.")

        async def created(task: SimTask) -> Response:
            name = f"{model_name}/operations/{task.id}"
            self.operation_names[task.id] = name
            return JSONResponse({"name": name})

        return await self.handle_create(
            request, lambda body: self._parse(request.path_params["model"], body), created)

    def _parse(self, model: str, body: dict[str, Any]) -> TaskSpec | Response:
        instances = body.get("instances")
        if not isinstance(instances, list) or len(instances) != 1 \
                or not isinstance(instances[0], dict):
            return self.bad_request("instances must hold exactly one instance.")
        instance = instances[0]
        prompt = instance.get("prompt")
        image = instance.get("image")
        if prompt is not None and not isinstance(prompt, str):
            return self.bad_request("instances[0].prompt must be a string.")
        if not prompt and image is None:
            return self.bad_request("A prompt or an input image is required.")
        if image is not None:
            if not isinstance(image, dict) or not (image.get("bytesBase64Encoded")
                                                   or image.get("gcsUri")):
                return self.bad_request(
                    "instances[0].image needs bytesBase64Encoded or gcsUri.")
            if image.get("mimeType") not in ("image/jpeg", "image/png"):
                return self.bad_request("instances[0].image.mimeType must be image/jpeg or "
                                        "image/png.")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            return self.bad_request("parameters must be an object.")
        duration = params.get("durationSeconds", 8)
        if isinstance(duration, bool) or duration not in DURATIONS:
            return self.bad_request(f"Unsupported durationSeconds {duration!r}: supported "
                                    f"values are {', '.join(map(str, DURATIONS))}.")
        ratio = params.get("aspectRatio", "16:9")
        if ratio not in ASPECT_RATIOS:
            return self.bad_request(f"Unsupported aspectRatio {ratio!r}: supported values "
                                    f"are {', '.join(ASPECT_RATIOS)}.")
        samples = params.get("sampleCount", 1)
        if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 4:
            return self.bad_request("sampleCount must be between 1 and 4.")
        seed = params.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or not 0 <= seed <= 4_294_967_295):
            return self.bad_request("seed must be an integer from 0 to 4294967295 (uint32).")
        resolution = params.get("resolution", "720p")  # Veo 3.1's default
        if resolution not in RESOLUTIONS:
            return self.bad_request("resolution must be 720p or 1080p.")
        sent = (image or {}).get("bytesBase64Encoded") or (image or {}).get("gcsUri")
        return TaskSpec(model=model, prompt=prompt, duration_s=float(duration), ratio=ratio,
                        render_ratio=ratio, render_short_side=RESOLUTIONS[resolution],
                        request=body, samples=samples, image=sent)

    def status_name(self, task: SimTask, now: float) -> str:
        phase = task.phase(now)[0]
        return {"pending": "RUNNING", "running": "RUNNING", "succeeded": "DONE",
                "moderation": "DONE_FILTERED", "fail": "DONE_ERROR",
                "cancelled": "CANCELLED"}[phase]

    async def _operation(self, task: SimTask) -> dict[str, Any]:
        phase = task.phase(time.monotonic())[0]
        op: dict[str, Any] = {"name": self.operation_names[task.id]}
        if phase in ("pending", "running"):
            return op  # `done` is omitted while running, as the proto default is
        op["done"] = True
        if phase == "succeeded":
            encoded = base64.b64encode(await self.video(task)).decode()
            op["response"] = {
                "@type": RESPONSE_TYPE, "raiMediaFilteredCount": 0,
                "videos": [{"bytesBase64Encoded": encoded, "mimeType": "video/mp4"}
                           for _ in range(task.spec.samples)]}
        elif phase == "moderation":
            op["response"] = {"@type": RESPONSE_TYPE,
                              "raiMediaFilteredCount": task.spec.samples,
                              "raiMediaFilteredReasons": [RAI_REASON]}
        elif phase == "fail":
            op["error"] = {"code": 13, "message": "Internal error encountered while "
                                                  "generating the video."}
        else:
            op["error"] = {"code": 1, "message": "CANCELLED"}
        return op

    def _task_for(self, request: Request, name: object) -> SimTask | Response:
        refused = self.check_auth(request)
        if refused is not None:
            return refused
        if not isinstance(name, str) or "/operations/" not in name:
            return self.bad_request("operationName must be an operation resource name.")
        op_id = name.rpartition("/operations/")[2]
        task = self.find(op_id)
        if task is None or self.operation_names.get(op_id) != name:
            return google_error(404, "NOT_FOUND", f"Operation {name} not found.")
        return task

    async def _fetch(self, request: Request) -> Response:
        self.stats.polls += 1
        try:
            body = await request.json()
        except ValueError:
            body = None
        name = body.get("operationName") if isinstance(body, dict) else None
        task = self._task_for(request, name)
        if isinstance(task, Response):
            return task
        return JSONResponse(await self._operation(task))

    async def _get_operation(self, request: Request) -> Response:
        self.stats.polls += 1
        name = f"{self._model_name(request)}/operations/{request.path_params['op_id']}"
        task = self._task_for(request, name)
        if isinstance(task, Response):
            return task
        return JSONResponse(await self._operation(task))

    async def _cancel(self, request: Request) -> Response:
        name = f"{self._model_name(request)}/operations/{request.path_params['op_id']}"
        task = self._task_for(request, name)
        if isinstance(task, Response):
            return task
        self.cancel(task)
        return JSONResponse({})
