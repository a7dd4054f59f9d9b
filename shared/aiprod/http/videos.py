"""The video API the official `openai` SDK and LiteLLM speak, served beside AIPROD's
own by the same `api` function (docs/openai-compatible.md).

`POST /v1/videos` maps the OpenAI fields onto a JobRequest and admits it through
the same path as `POST /v1/jobs` (api.submit: keys, rate limits, Idempotency-Key,
budgets, routing); a video *is* a job: its id is the job id, so a job made either
way is seen either way. The shapes follow the SDK's own types (openai/types/video.py,
video_delete_response.py, pagination.SyncConversationCursorPage) and errors its
`{"error": {...}}` body, with AIPROD's status codes, which the SDK maps to its
exception classes (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError,
422 UnprocessableEntityError, 429 RateLimitError).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from typing import Any

from flask import Request, Response
from pydantic import ValidationError
from werkzeug.routing import Rule

from aiprod.adapters.storage import SigningUnavailable
from aiprod.domain.catalog import Resolution
from aiprod.domain.job import TERMINAL_JOB_STATUSES, AspectRatio, Job, JobRequest, JobStatus, Policy
from aiprod.domain.problems import Problem, invalid_request
from aiprod.http import api
from aiprod.services import access
from aiprod.services import cancel as cancellation
from aiprod.wiring.runtime import Runtime

PREFIX = "/v1/videos"
OPENAI_FIELDS = ("prompt", "model", "seconds", "size", "input_reference")
# Where an AIPROD field came from in the OpenAI request: errors name the caller's field.
PARAMS = {"duration_seconds": "seconds", "aspect_ratio": "size", "resolution": "size",
          "image_url": "input_reference", "policy": "model", "backend": "model",
          "job_id": "video_id"}
STATUSES = {JobStatus.QUEUED: "queued", JobStatus.RENDERING: "in_progress",
            JobStatus.SUCCEEDED: "completed", JobStatus.FAILED: "failed",
            JobStatus.CANCELLED: "failed", JobStatus.REJECTED: "failed"}
RATIOS = {AspectRatio.LANDSCAPE: 16 / 9, AspectRatio.PORTRAIT: 9 / 16, AspectRatio.SQUARE: 1.0}
RATIO_TOLERANCE = 0.03  # 1792x1024 (7:4, a Sora size) is within 2 % of 16:9
# The resolutions a request can ask for, by the frame's short side (the catalog's).
RESOLUTIONS = sorted(r.short_side for r in Resolution)
SIZE = re.compile(r"([1-9][0-9]{1,4})x([1-9][0-9]{1,4})")
BRACKETED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\[([^\[\]]+)\]")  # the SDK's form nesting
LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX = 20, 100
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
# Cloud Functions answers at most 32 MB; a video too large to stream is redirected to.
MAX_STREAMED_BYTES = 30 * 1024 * 1024
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               429: "rate_limit_error"}


def serves(path: str) -> bool:
    """Whether a request path is one of these routes (their errors take this shape)."""
    path = re.sub(r"/{2,}", "/", path)
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_response(problem: Problem) -> Response:
    """A problem as the OpenAI error body: `message`, `type`, `param`, `code` (the
    problem's stable slug), and AIPROD's details (`aiprod`) for callers that look."""
    extra = {k: v for k, v in problem.extra.items() if k != "field"}
    field = problem.extra.get("field")
    param = PARAMS.get(field, field) if isinstance(field, str) else None
    kind = ERROR_TYPES.get(problem.status,
                           "server_error" if problem.status >= 500 else "invalid_request_error")
    if problem.slug.startswith("rejected-budget"):
        kind = "insufficient_quota"
    body = {"error": {"message": problem.detail, "type": kind, "param": param,
                      "code": problem.slug, "aiprod": {"type": problem.type,
                                                        "title": problem.title} | extra}}
    return Response(json.dumps(body, default=str), status=problem.status,
                    headers=problem.headers, content_type="application/json")


def _own_video(rt: Runtime, request: Request, video_id: str) -> Job:
    """The caller's job, unless it was deleted as a video: else a 404."""
    job = api._own_job(rt, request, video_id)
    if job.video_deleted_at is not None:
        raise Problem(404, "video-not-found", "No such video",
                      f"video {video_id} was deleted (the job stays at /v1/jobs/{video_id})",
                      field="video_id")
    return job


def _bad(param: str, message: str, slug: str = "invalid-request") -> Problem:
    return Problem(400, slug, "The request is not valid", f"{param}: {message}", field=param)


# -- the video object ---------------------------------------------------------------------

def policy_aliases() -> dict[str, Policy]:
    """`model` names of the routing policies: aiprod/cheapest, aiprod/best-quality, ...
    (every Policy, so a new one gets its alias)."""
    return {f"aiprod/{p.value.replace('_', '-')}": p for p in Policy}


def _nominal_size(request: JobRequest) -> str:
    """The frame a request asks for, as WIDTHxHEIGHT, before a video exists."""
    short = request.resolution.short_side
    long = round(short * 16 / 9 / 2) * 2
    if request.aspect_ratio is AspectRatio.LANDSCAPE:
        return f"{long}x{short}"
    if request.aspect_ratio is AspectRatio.PORTRAIT:
        return f"{short}x{long}"
    return f"{short}x{short}"


def _progress(rt: Runtime, job: Job) -> int:
    """Percent done: 100 once it succeeded; while rendering, the time the attempt has
    run over its backend's typical latency, capped at 95."""
    if job.status is JobStatus.SUCCEEDED:
        return 100
    attempt = job.current_attempt
    if job.status is not JobStatus.RENDERING or attempt is None:
        return 0
    try:
        latency = rt.catalog.get(attempt.backend).typical_latency_s
    except KeyError:
        return 0
    elapsed = (rt.clock() - attempt.started_at).total_seconds()
    return max(0, min(95, int(100 * elapsed / latency)))


def _error(job: Job) -> dict[str, str] | None:
    if STATUSES[job.status] != "failed":
        return None
    attempt = job.current_attempt
    last = attempt.error if attempt is not None else None
    if job.status is JobStatus.FAILED and last is not None:
        return {"code": last.code, "message": job.status_reason or last.message}
    return {"code": job.status.value.lower(),
            "message": job.status_reason or f"the job was {job.status.value.lower()}"}


def video(rt: Runtime, job: Job) -> dict[str, Any]:
    """A job as the OpenAI `video` object. `model`: the pinned backend, else the one
    rendering (or that rendered) it, else the routing alias. `size`: the video's real
    frame once rendered. AIPROD's own view of the job is under `aiprod`."""
    attempt = job.current_attempt
    model = job.request.backend or (attempt.backend if attempt is not None else
                                    f"aiprod/{job.request.policy.value.replace('_', '-')}")
    size = (f"{job.output.width}x{job.output.height}" if job.output is not None
            else _nominal_size(job.request))
    terminal = job.status in TERMINAL_JOB_STATUSES
    return {
        "id": job.id, "object": "video", "status": STATUSES[job.status],
        "progress": _progress(rt, job), "model": model, "prompt": job.request.prompt,
        "seconds": str(job.request.duration_seconds), "size": size,
        "created_at": int(job.created_at.timestamp()),
        "completed_at": int(job.updated_at.timestamp()) if terminal else None,
        "expires_at": None, "remixed_from_video_id": None, "error": _error(job),
        "aiprod": {"status": job.status.value, "plan": job.plan,
                   "estimated_cost_usd": job.estimated_cost_usd, "cost_usd": job.cost_usd,
                   "job": f"/v1/jobs/{job.id}"},
    }


# -- the request ----------------------------------------------------------------------------

def size_fields(size: str) -> dict[str, str]:
    """`size` (WIDTHxHEIGHT) as job request fields: the aspect ratio it is within 3 % of,
    and the smallest resolution offered at least as tall as the frame's short side
    (1280x720: 720p; 1792x1024: 1080p)."""
    match = SIZE.fullmatch(size.strip())
    if match is None:
        raise _bad("size", f"give WIDTHxHEIGHT, e.g. 1280x720, not {size!r}")
    width, height = int(match[1]), int(match[2])
    ratio = next((r for r, value in RATIOS.items()
                  if abs(width / height / value - 1) <= RATIO_TOLERANCE), None)
    if ratio is None:
        raise _bad("size", f"{size} is not 16:9, 9:16 or 1:1; give e.g. 1280x720, 720x1280 "
                           "or 720x720")
    fields = {"aspect_ratio": ratio.value}
    short = next((r for r in RESOLUTIONS if r >= min(width, height)), None)
    if short is None:
        raise _bad("size", f"{size} is larger than any resolution offered")
    fields["resolution"] = f"{short}p"
    return fields


def _model_fields(rt: Runtime, model: str) -> dict[str, str]:
    aliases = policy_aliases()
    if model in aliases:
        return {"policy": aliases[model].value}
    if model in rt.catalog.names:
        return {"backend": model}
    raise Problem(400, "unknown-model", "The request is not valid",
                  f"model: {model!r} is neither a backend nor a routing alias; give one of "
                  f"{', '.join([*aliases, *rt.catalog.names])}", field="model")


def _image(upload: bytes) -> str:
    """An uploaded input_reference file as the data: URI a job request takes."""
    mime = next((m for magic, m in IMAGE_MAGIC.items() if upload.startswith(magic)), None)
    if mime is None:
        raise _bad("input_reference", "upload a PNG or JPEG image")
    return f"data:{mime};base64,{base64.b64encode(upload).decode()}"


def _reference(value: Any) -> str:
    """input_reference given as a URL, or as the SDK's {"image_url": ...} object."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"image_url"} and isinstance(
            value["image_url"], str):
        return value["image_url"]
    raise _bad("input_reference", "give an image file, or {\"image_url\": URL or data: URI} "
                                  "(file_id is not supported)")


def _form(request: Request) -> dict[str, Any]:
    """A multipart or urlencoded body as a dict: the SDK sends nested values (extra_body
    metadata, input_reference objects) as `name[key]` fields."""
    body: dict[str, Any] = {}
    for name, values in request.form.lists():
        if len(values) > 1:
            raise _bad(name, f"given {len(values)} times")
        nested = BRACKETED.fullmatch(name)
        if nested is None:
            body[name] = values[0]
            continue
        outer = body.setdefault(nested[1], {})
        if not isinstance(outer, dict):
            raise _bad(nested[1], "given both as a value and as an object")
        outer[nested[2]] = values[0]
    for name, files in request.files.lists():
        if name != "input_reference" or len(files) > 1 or name in body:
            raise _bad(name, "only one file, input_reference, may be uploaded")
        body[name] = _image(files[0].read(api.MAX_UPLOAD_BODY_BYTES + 1))
    return body


def _body(request: Request) -> dict[str, Any]:
    too_large = Problem(413, "body-too-large", "The body is too large",
                        f"bodies are limited to {api.MAX_UPLOAD_BODY_BYTES} bytes", field="body")
    if request.content_length is not None and request.content_length > api.MAX_UPLOAD_BODY_BYTES:
        raise too_large
    request.max_content_length = api.MAX_UPLOAD_BODY_BYTES
    request.max_form_memory_size = api.MAX_UPLOAD_BODY_BYTES  # a data: URI in a form field
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return _form(request)
    if request.mimetype != "application/json":
        raise Problem(415, "unsupported-media-type", "The body must be a form or JSON",
                      "send multipart/form-data (as the OpenAI SDK does) or application/json, "
                      f"not {request.mimetype or 'nothing'}", field="Content-Type")
    raw = request.get_data(cache=False)
    if len(raw) > api.MAX_UPLOAD_BODY_BYTES:
        raise too_large
    return api.json_object(raw)


def job_request(rt: Runtime, body: dict[str, Any]) -> JobRequest:
    """The job an OpenAI create-video body asks for. Fields beyond OpenAI's (the SDK's
    extra_body: min_quality, max_cost_usd, audio, metadata, seed, ...) are job request
    fields, passed through as they are; a field OpenAI's also sets may not be given
    twice. Form values are text, so validation is lax (\"0.5\" is 0.5)."""
    fields = {k: v for k, v in body.items() if k not in OPENAI_FIELDS}
    mapped: dict[str, Any] = {"prompt": body.get("prompt")}
    if body.get("model") not in (None, ""):
        mapped |= _model_fields(rt, str(body["model"]))
    if body.get("seconds") not in (None, ""):
        seconds = str(body["seconds"]).strip()
        if not seconds.isdigit():
            raise _bad("seconds", f"give a whole number of seconds, not {body['seconds']!r}")
        mapped["duration_seconds"] = int(seconds)
    if body.get("size") not in (None, ""):
        mapped |= size_fields(str(body["size"]))
    if body.get("input_reference") not in (None, ""):
        mapped["image_url"] = _reference(body["input_reference"])
    if mapped["prompt"] is None:
        del mapped["prompt"]
    for name in set(fields) & set(mapped):
        raise _bad(name, f"set by {PARAMS.get(name, name)}; give one or the other")
    try:
        return JobRequest.model_validate(fields | mapped)
    except ValidationError as error:
        raise invalid_request(error) from error


# -- the routes -----------------------------------------------------------------------------

def _poll_after_ms(request: Request) -> str:
    """How long the SDK's poll helper waits between reads (it obeys this header): half
    the key's rate limit at most, never under a second."""
    return str(max(1000, 2 * 60_000 // max(1, api.caller(request).rate_limit_rpm)))


def create_video(rt: Runtime, request: Request, _: dict[str, str]) -> Response:
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None:
        access.check_idempotency_key(idempotency_key)
    with api.upload_slot(rt, request):
        job, created = api.submit(rt, request, job_request(rt, _body(request)))
    headers = {"Location": f"{PREFIX}/{job.id}"}
    if idempotency_key is not None and not created:
        headers["Idempotent-Replayed"] = "true"
    return api._json(video(rt, job), 200, headers)


def get_video(rt: Runtime, request: Request, args: dict[str, str]) -> Response:
    job = _own_video(rt, request, args["video_id"])
    headers = {} if job.status.terminal else {"openai-poll-after-ms": _poll_after_ms(request)}
    return api._json(video(rt, job), headers=headers)


def list_videos(rt: Runtime, request: Request, _: dict[str, str]) -> Response:
    """The caller's videos (jobs made either way), newest first unless `order=asc`,
    `limit` at a time; `after` (the last id of a page) gives the next page."""
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise _bad("order", "give asc or desc")
    raw_limit = request.args.get("limit", str(LIST_LIMIT_DEFAULT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= LIST_LIMIT_MAX:
        raise _bad("limit", f"give a whole number from 1 to {LIST_LIMIT_MAX}")
    after = request.args.get("after")
    owner = api.caller(request).owner
    if after is not None:
        cursor = rt.store.get(after) if api.JOB_ID.fullmatch(after) else None
        if cursor is None or cursor.owner != owner:
            raise _bad("after", f"there is no video {after}")
    limit, more, last = int(raw_limit), True, after
    shown: list[Job] = []
    while len(shown) < limit and more:  # deleted videos are skipped, not counted
        jobs, more = rt.store.owned(owner, limit, last, newest_first=order == "desc")
        if not jobs:
            break
        shown += [job for job in jobs if job.video_deleted_at is None]
        last = jobs[-1].id
    more = more or len(shown) > limit
    data = [video(rt, job) for job in shown[:limit]]
    return api._json({"object": "list", "data": data,
                      "first_id": data[0]["id"] if data else None,
                      "last_id": data[-1]["id"] if data else None, "has_more": more})


def delete_video(rt: Runtime, request: Request, args: dict[str, str]) -> Response:
    """A video still queued or rendering is cancelled first (as POST
    /v1/jobs/{id}:cancel), so nothing more is spent on it. Then it is gone from the
    videos API (retrieve, list, content: 404), as the OpenAI shape promises; the job
    stays at /v1/jobs/{id}, the billing record, and its MP4 in the bucket until the
    bucket's retention (output_retention_days) removes it."""
    job = _own_video(rt, request, args["video_id"])
    if not job.status.terminal:
        with contextlib.suppress(cancellation.NotCancellable):  # it ended meanwhile
            cancellation.cancel_job(rt, job.id)
    now = rt.clock()

    def hide(stored: Job) -> None:
        stored.video_deleted_at = stored.video_deleted_at or now
    rt.store.mutate(job.id, hide)
    return api._json({"id": job.id, "object": "video.deleted", "deleted": True})


def video_content(rt: Runtime, request: Request, args: dict[str, str]) -> Response:
    """The MP4: a redirect to a signed URL (the SDK follows it, and drops the API key on
    the way to another host), or the bytes where no URL can be signed."""
    variant = request.args.get("variant", "video")
    if variant != "video":
        raise _bad("variant", f"only the video is kept, not a {variant}")
    job = _own_video(rt, request, args["video_id"])
    if job.output is None:
        raise Problem(404, "video-not-ready", "The video is not ready",
                      f"video {job.id} is {STATUSES[job.status]}; its content exists once it "
                      "is completed", field="video_id", status_now=STATUSES[job.status])
    try:
        url = rt.outputs.download_url(job.output.uri, api.DOWNLOAD_URL_TTL)
    except SigningUnavailable:
        url = ""
    if url.startswith(("https://", "http://")):
        return Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})
    if job.output.bytes > MAX_STREAMED_BYTES:
        raise Problem(503, "download-unavailable", "The video cannot be served now",
                      "no download URL could be signed and the video is too large to send "
                      "inline; retry later", headers={"Retry-After": "60"})
    data = rt.outputs.read(job.output.uri)
    return Response(data, status=200, mimetype=job.output.mime_type,
                    headers={"Content-Disposition": f'attachment; filename="{job.id}.mp4"'})


ROUTES: dict[str, api.Handler] = {
    "create_video": create_video,
    "list_videos": list_videos,
    "get_video": get_video,
    "delete_video": delete_video,
    "video_content": video_content,
}


def rules() -> list[Rule]:
    return [
        Rule(PREFIX, methods=["POST"], endpoint="create_video"),
        Rule(PREFIX, methods=["GET"], endpoint="list_videos"),
        Rule(f"{PREFIX}/<segment:video_id>", methods=["GET"], endpoint="get_video"),
        Rule(f"{PREFIX}/<segment:video_id>", methods=["DELETE"], endpoint="delete_video"),
        Rule(f"{PREFIX}/<segment:video_id>/content", methods=["GET"], endpoint="video_content"),
    ]

