"""Choose the ordered fallback chain of backends for a job. Pure and deterministic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from aiprod.domain.catalog import Backend, Catalog
from aiprod.domain.job import JobRequest, Policy
from aiprod.domain.pricing import estimate_usd


class RejectionReason(StrEnum):
    UNSUPPORTED = "unsupported"          # no backend can render this request at all
    IMAGE_TOO_LARGE = "image_too_large"  # only the uploaded image's size stops every backend
    QUALITY = "quality"                  # capable backends exist, none meets min_quality
    UNHEALTHY = "unhealthy"              # every fitting backend's circuit is open
    OVER_JOB_CEILING = "over_job_ceiling"  # every fitting backend costs more than max_cost_usd
    BUDGET_EXHAUSTED = "budget_exhausted"  # the daily budget left cannot pay for any of them


@dataclass(frozen=True)
class Quote:
    backend: str
    estimated_cost_usd: float
    quality: float


@dataclass(frozen=True)
class Plan:
    """Backends in the order they will be tried, each with its estimate."""

    quotes: tuple[Quote, ...]

    @property
    def backends(self) -> list[str]:
        return [q.backend for q in self.quotes]

    @property
    def estimated_cost_usd(self) -> float:
        """What the job is expected to cost: its first choice."""
        return self.quotes[0].estimated_cost_usd


@dataclass(frozen=True)
class Rejection:
    reason: RejectionReason
    detail: str
    cheapest: Quote | None = None  # the cheapest option that would fit without that limit
    problems: Mapping[str, str] = field(default_factory=dict)  # backend -> why it was dropped
    limit_bytes: int | None = None  # IMAGE_TOO_LARGE: the largest upload a fitting backend takes


def capability_problem(backend: Backend, request: JobRequest) -> str | None:
    """Why this backend cannot render the request at all, or None if it can."""
    if request.backend is not None and request.backend != backend.name:
        return f"is not the backend asked for ({request.backend})"
    capability = backend.capabilities.get(request.mode)
    if capability is None:
        return f"does not do {request.mode.value}"
    if not capability.durations.allows(request.duration_seconds):
        return (f"renders {capability.durations.describe()} s, not "
                f"{request.duration_seconds} s")
    if request.aspect_ratio.value not in capability.aspect_ratios:
        return f"renders {', '.join(capability.aspect_ratios)}, not {request.aspect_ratio.value}"
    if request.audio and not capability.audio:
        return "renders no audio"
    if request.prompt is not None and len(request.prompt) > backend.limits.max_prompt_chars:
        return f"takes prompts of at most {backend.limits.max_prompt_chars} characters"
    return upload_problem(backend, request)


def upload_problem(backend: Backend, request: JobRequest) -> str | None:
    """Why this backend cannot take the request's uploaded image, or None."""
    uploaded = data_uri_bytes(request.image_url)
    if uploaded is not None and uploaded > backend.limits.max_image_data_uri_bytes:
        return (f"takes uploaded images of at most {backend.limits.max_image_data_uri_bytes} "
                f"bytes, not {uploaded}")
    return None


def _too_large(request: JobRequest, catalog: Catalog,
               problems: Mapping[str, str]) -> Rejection | None:
    """The rejection when every backend able to render the request refuses only its
    upload's size: it names the largest upload those backends take."""
    sized = [b for b in catalog.backends if problems.get(b.name) == upload_problem(b, request)
             and problems.get(b.name) is not None]
    if not sized:
        return None
    widest = max(sized, key=lambda b: b.limits.max_image_data_uri_bytes)
    return Rejection(RejectionReason.IMAGE_TOO_LARGE,
                     f"the uploaded image is {data_uri_bytes(request.image_url)} bytes; the "
                     f"backends that can render this request take at most "
                     f"{widest.limits.max_image_data_uri_bytes} bytes ({widest.name}); send a "
                     "smaller image, or an https URL", problems=problems,
                     limit_bytes=widest.limits.max_image_data_uri_bytes)


def data_uri_bytes(url: str | None) -> int | None:
    """The decoded size of an image uploaded as a base64 data: URI (None otherwise)."""
    if url is None or not url.startswith("data:"):
        return None
    payload = url.partition(",")[2].rstrip("=")
    return len(payload) * 3 // 4


def _order(quotes: list[Quote], policy: Policy, catalog_order: Mapping[str, int]) -> list[Quote]:
    if policy is Policy.CHEAPEST:
        return sorted(quotes, key=lambda q: (q.estimated_cost_usd, -q.quality,
                                             catalog_order[q.backend]))
    if policy is Policy.BEST_QUALITY:
        return sorted(quotes, key=lambda q: (-q.quality, q.estimated_cost_usd,
                                             catalog_order[q.backend]))
    return sorted(quotes, key=lambda q: catalog_order[q.backend])


def plan(
    request: JobRequest,
    catalog: Catalog,
    healthy: Mapping[str, bool] | None = None,
    budget_left_usd: float | None = None,
) -> Plan | Rejection:
    """The fallback chain for `request`, or exactly why there is none.

    `healthy` maps backend names to False when their circuit is open (missing
    means healthy). `budget_left_usd` is what today's budget can still commit
    (None: no budget check).
    """
    healthy = healthy or {}
    catalog_order = {b.name: i for i, b in enumerate(catalog.backends)}
    problems: dict[str, str] = {}

    capable: list[Quote] = []
    for backend in catalog.backends:
        problem = capability_problem(backend, request)
        if problem:
            problems[backend.name] = problem
            continue
        capable.append(Quote(backend.name,
                             estimate_usd(backend, request.duration_seconds, request.audio),
                             backend.quality))
    if not capable:
        too_large = _too_large(request, catalog, problems)
        if too_large is not None:
            return too_large
        return Rejection(RejectionReason.UNSUPPORTED,
                         "no backend can render this request: " + "; ".join(
                             f"{name} {why}" for name, why in problems.items()),
                         problems=problems)

    def cheapest(quotes: list[Quote]) -> Quote:
        return min(quotes, key=lambda q: (q.estimated_cost_usd, catalog_order[q.backend]))

    good = [q for q in capable if q.quality >= request.min_quality]
    for q in capable:
        if q not in good:
            problems[q.backend] = f"quality {q.quality} is below min_quality {request.min_quality}"
    if not good:
        best = max(q.quality for q in capable)
        return Rejection(RejectionReason.QUALITY,
                         f"no backend that can render this request reaches min_quality "
                         f"{request.min_quality}; the best reaches {best}",
                         cheapest=cheapest(capable), problems=problems)

    up = [q for q in good if healthy.get(q.backend, True)]
    for q in good:
        if q not in up:
            problems[q.backend] = "circuit open"
    if not up:
        return Rejection(RejectionReason.UNHEALTHY,
                         "every backend that fits this request is failing right now; "
                         "retry in a few minutes", cheapest=cheapest(good), problems=problems)

    ceiling = request.max_cost_usd
    affordable = [q for q in up if ceiling is None or q.estimated_cost_usd <= ceiling]
    for q in up:
        if q not in affordable:
            problems[q.backend] = f"costs {q.estimated_cost_usd} USD, over max_cost_usd {ceiling}"
    if not affordable:
        low = cheapest(up)
        return Rejection(RejectionReason.OVER_JOB_CEILING,
                         f"the cheapest fitting backend, {low.backend}, costs "
                         f"{low.estimated_cost_usd} USD, over max_cost_usd {ceiling}",
                         cheapest=low, problems=problems)

    fundable = [q for q in affordable
                if budget_left_usd is None or q.estimated_cost_usd <= budget_left_usd]
    for q in affordable:
        if q not in fundable:
            problems[q.backend] = (f"costs {q.estimated_cost_usd} USD, more than the "
                                   f"{budget_left_usd} USD left in today's budget")
    if not fundable:
        low = cheapest(affordable)
        return Rejection(RejectionReason.BUDGET_EXHAUSTED,
                         f"today's budget has {budget_left_usd} USD left; the cheapest fitting "
                         f"backend, {low.backend}, costs {low.estimated_cost_usd} USD",
                         cheapest=low, problems=problems)

    return Plan(tuple(_order(fundable, request.policy, catalog_order)))
