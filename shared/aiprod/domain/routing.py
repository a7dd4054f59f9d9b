"""Choose the ordered fallback chain of backends for a job. Pure and deterministic.

Capable backends are quoted, then pass through a table of named filter stages
(`STAGES`: quality, health, the job's ceiling, the budget), each of which records
why it left a backend out; the survivors are ordered by the job's policy. Observed
statistics (aiprod.domain.stats) are an input: with enough samples, a backend's
quality is what its outputs scored, its cost is the expected cost of a successful
render, and its speed is its observed p95 render time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from aiprod.domain.catalog import Backend, Catalog, ModeCapability
from aiprod.domain.job import JobRequest, Policy
from aiprod.domain.pricing import estimate_usd
from aiprod.domain.stats import BackendStats, expected_cost_usd

# Samples a backend needs before its observations replace the catalog's figures
# (AIPROD_ROUTING_MIN_SAMPLES).
DEFAULT_MIN_SAMPLES = 20


class RejectionReason(StrEnum):
    UNSUPPORTED = "unsupported"          # no backend can render this request at all
    IMAGE_TOO_LARGE = "image_too_large"  # only the uploaded image's size stops every backend
    QUALITY = "quality"                  # capable backends exist, none meets min_quality
    UNHEALTHY = "unhealthy"              # every fitting backend's circuit is open
    OVER_JOB_CEILING = "over_job_ceiling"  # every fitting backend costs more than max_cost_usd
    BUDGET_EXHAUSTED = "budget_exhausted"  # the daily budget left cannot pay for any of them


@dataclass(frozen=True)
class Quote:
    """One backend's figures for one request: what the plan was ranked by."""

    backend: str
    estimated_cost_usd: float   # list price of this request: what a hold reserves
    quality: float              # effective quality: observed when `quality_source` says so
    # Expected cost of a successful render (list price when nothing is observed yet).
    expected_cost_usd: float | None = None
    p95_s: float | None = None  # observed p95 render time, else the catalog's typical latency
    success_rate: float | None = None  # observed; None: not enough samples
    quality_source: str = "catalog"    # "observed" once the backend has enough scored outputs
    latency_source: str = "catalog"
    catalog_quality: float | None = None
    samples: int = 0                   # attempts observed in the statistics window

    @property
    def rank_cost_usd(self) -> float:
        return self.estimated_cost_usd if self.expected_cost_usd is None else (
            self.expected_cost_usd)

    def figures(self) -> dict[str, object]:
        """What `/v1/quote` shows for this backend."""
        expected = self.rank_cost_usd
        return {"backend": self.backend, "estimated_cost_usd": self.estimated_cost_usd,
                "expected_cost_usd": None if math.isinf(expected) else round(expected, 6),
                "quality": self.quality, "quality_source": self.quality_source,
                "catalog_quality": self.catalog_quality, "success_rate": self.success_rate,
                "p95_s": self.p95_s, "latency_source": self.latency_source,
                "samples": self.samples}


@dataclass(frozen=True)
class Plan:
    """Backends in the order they will be tried, each with its figures, and why each
    other backend was left out."""

    quotes: tuple[Quote, ...]
    problems: Mapping[str, str] = field(default_factory=dict)  # backend -> why it was left out
    stages: Mapping[str, str] = field(default_factory=dict)    # backend -> stage that did it

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
    stages: Mapping[str, str] = field(default_factory=dict)  # backend -> stage that dropped it


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
    if (problem := resolution_problem(capability, request)) is not None:
        return problem
    if request.aspect_ratio.value not in capability.aspect_ratios:
        return f"renders {', '.join(capability.aspect_ratios)}, not {request.aspect_ratio.value}"
    if request.audio and not capability.audio:
        return "renders no audio"
    if request.prompt is not None and len(request.prompt) > backend.limits.max_prompt_chars:
        return f"takes prompts of at most {backend.limits.max_prompt_chars} characters"
    return upload_problem(backend, request)


def resolution_problem(capability: ModeCapability, request: JobRequest) -> str | None:
    """Why this capability cannot render the request's resolution at its duration
    (some render long clips at a lower resolution only), or None."""
    wanted = request.resolution
    if wanted not in capability.resolutions:
        return (f"renders {', '.join(r.value for r in capability.resolutions)}, "
                f"not {wanted.value}")
    durations = capability.durations_for(wanted)
    if not durations.allows(request.duration_seconds):
        return (f"renders {durations.describe()} s at {wanted.value}, not "
                f"{request.duration_seconds} s")
    return None


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
    # Counted in place: slicing the payload out would copy an upload of up to 27 MB.
    comma = url.find(",")
    chars = len(url) - comma - 1 if comma >= 0 else 0
    tail = url[-2:]  # base64 pads with at most two "="
    padding = len(tail) - len(tail.rstrip("="))
    return (chars - padding) * 3 // 4


def quote_for(backend: Backend, request: JobRequest, observed: BackendStats | None,
              min_samples: int) -> Quote:
    """The backend's figures for this request: the catalog's, replaced one by one by
    observations once each has `min_samples` samples."""
    price = estimate_usd(backend, request.duration_seconds, request.audio, request.resolution)
    stats = observed or BackendStats()
    quality, quality_source = backend.quality, "catalog"
    if stats.quality_n >= min_samples and stats.mean_quality is not None:
        quality, quality_source = stats.mean_quality, "observed"
    expected, success = price, None
    if stats.judged >= min_samples and stats.success_rate is not None:
        success = round(stats.success_rate, 4)
        expected = expected_cost_usd(price, stats.success_rate, stats.charged_share or 0.0)
        expected = expected if math.isinf(expected) else round(expected, 6)
    p95, latency_source = float(backend.typical_latency_s), "catalog"
    if sum(stats.latency.values()) >= min_samples and stats.p95_s is not None:
        p95, latency_source = stats.p95_s, "observed"
    return Quote(backend.name, price, quality, expected_cost_usd=expected, p95_s=p95,
                 success_rate=success, quality_source=quality_source,
                 latency_source=latency_source, catalog_quality=backend.quality,
                 samples=stats.attempts)


@dataclass(frozen=True)
class Context:
    """What the filter stages judge a quote against."""

    request: JobRequest
    healthy: Mapping[str, bool]
    budget_left_usd: float | None
    catalog_order: Mapping[str, int]

    def cheapest(self, quotes: list[Quote]) -> Quote:
        return min(quotes, key=lambda q: (q.estimated_cost_usd, self.catalog_order[q.backend]))


def _quality_problem(q: Quote, ctx: Context) -> str | None:
    floor = ctx.request.min_quality
    if q.quality >= floor:
        return None
    if q.quality_source == "observed":
        return (f"observed quality {q.quality} is below min_quality {floor} "
                f"(catalog: {q.catalog_quality})")
    return f"quality {q.quality} is below min_quality {floor}"


def _quality_rejection(left: list[Quote], ctx: Context) -> tuple[str, Quote | None]:
    best = max(q.quality for q in left)
    return (f"no backend that can render this request reaches min_quality "
            f"{ctx.request.min_quality}; the best reaches {best}", ctx.cheapest(left))


def _health_problem(q: Quote, ctx: Context) -> str | None:
    return None if ctx.healthy.get(q.backend, True) else "circuit open"


def _health_rejection(left: list[Quote], ctx: Context) -> tuple[str, Quote | None]:
    return ("every backend that fits this request is failing right now; retry in a few "
            "minutes", ctx.cheapest(left))


def _ceiling_problem(q: Quote, ctx: Context) -> str | None:
    ceiling = ctx.request.max_cost_usd
    if ceiling is None or q.estimated_cost_usd <= ceiling:
        return None
    return f"costs {q.estimated_cost_usd} USD, over max_cost_usd {ceiling}"


def _ceiling_rejection(left: list[Quote], ctx: Context) -> tuple[str, Quote | None]:
    low = ctx.cheapest(left)
    return (f"the cheapest fitting backend, {low.backend}, costs {low.estimated_cost_usd} "
            f"USD, over max_cost_usd {ctx.request.max_cost_usd}", low)


def _budget_problem(q: Quote, ctx: Context) -> str | None:
    left = ctx.budget_left_usd
    if left is None or q.estimated_cost_usd <= left:
        return None
    return f"costs {q.estimated_cost_usd} USD, more than the {left} USD left in today's budget"


def _budget_rejection(left: list[Quote], ctx: Context) -> tuple[str, Quote | None]:
    low = ctx.cheapest(left)
    return (f"today's budget has {ctx.budget_left_usd} USD left; the cheapest fitting "
            f"backend, {low.backend}, costs {low.estimated_cost_usd} USD", low)


@dataclass(frozen=True)
class Stage:
    """One filter: why it leaves a backend out (None: it stays), and the rejection
    when it leaves none (its detail and the cheapest quote that got that far)."""

    name: str
    reason: RejectionReason
    problem: Callable[[Quote, Context], str | None]
    rejection: Callable[[list[Quote], Context], tuple[str, Quote | None]]


# In order; a new filter is one entry here.
STAGES: tuple[Stage, ...] = (
    Stage("quality", RejectionReason.QUALITY, _quality_problem, _quality_rejection),
    Stage("health", RejectionReason.UNHEALTHY, _health_problem, _health_rejection),
    Stage("ceiling", RejectionReason.OVER_JOB_CEILING, _ceiling_problem, _ceiling_rejection),
    Stage("budget", RejectionReason.BUDGET_EXHAUSTED, _budget_problem, _budget_rejection),
)


def _order(quotes: list[Quote], policy: Policy, catalog_order: Mapping[str, int]) -> list[Quote]:
    if policy is Policy.CHEAPEST:
        return sorted(quotes, key=lambda q: (q.rank_cost_usd, q.estimated_cost_usd, -q.quality,
                                             catalog_order[q.backend]))
    if policy is Policy.BEST_QUALITY:
        return sorted(quotes, key=lambda q: (-q.quality, q.rank_cost_usd,
                                             catalog_order[q.backend]))
    if policy is Policy.FASTEST:
        return sorted(quotes, key=lambda q: (math.inf if q.p95_s is None else q.p95_s,
                                             q.rank_cost_usd, catalog_order[q.backend]))
    return sorted(quotes, key=lambda q: catalog_order[q.backend])


def plan(
    request: JobRequest,
    catalog: Catalog,
    healthy: Mapping[str, bool] | None = None,
    budget_left_usd: float | None = None,
    observed: Mapping[str, BackendStats] | None = None,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> Plan | Rejection:
    """The fallback chain for `request`, or exactly why there is none.

    `healthy` maps backend names to False when their circuit is open (missing
    means healthy). `budget_left_usd` is what today's budget can still commit
    (None: no budget check). `observed` holds each backend's statistics over the
    window (missing: none yet); each figure counts once it has `min_samples`.
    """
    observed = observed or {}
    ctx = Context(request, healthy or {}, budget_left_usd,
                  {b.name: i for i, b in enumerate(catalog.backends)})
    problems: dict[str, str] = {}
    stages: dict[str, str] = {}

    survivors: list[Quote] = []
    for backend in catalog.backends:
        problem = capability_problem(backend, request)
        if problem:
            problems[backend.name] = problem
            stages[backend.name] = "capability"
            continue
        survivors.append(quote_for(backend, request, observed.get(backend.name), min_samples))
    if not survivors:
        too_large = _too_large(request, catalog, problems)
        if too_large is not None:
            return replace(too_large, stages=stages)
        return Rejection(RejectionReason.UNSUPPORTED,
                         "no backend can render this request: " + "; ".join(
                             f"{name} {why}" for name, why in problems.items()),
                         problems=problems, stages=stages)

    for stage in STAGES:
        kept = []
        for q in survivors:
            problem = stage.problem(q, ctx)
            if problem is None:
                kept.append(q)
            else:
                problems[q.backend] = problem
                stages[q.backend] = stage.name
        if not kept:
            detail, cheapest = stage.rejection(survivors, ctx)
            return Rejection(stage.reason, detail, cheapest=cheapest, problems=problems,
                             stages=stages)
        survivors = kept

    return Plan(tuple(_order(survivors, request.policy, ctx.catalog_order)), problems, stages)
