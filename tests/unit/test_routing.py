"""Routing: filters by capability, quality, health, ceiling and budget; orders by policy."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from aiprod.domain import routing
from aiprod.domain.catalog import Catalog, Resolution, parse_catalog
from aiprod.domain.job import JobRequest
from aiprod.domain.pricing import estimate_usd
from aiprod.wiring.config import load_catalog

CATALOG = load_catalog()


def test_default_request_goes_to_the_cheapest_backend_that_can_render_5_seconds() -> None:
    plan = routing.plan(JobRequest(prompt="fox"), CATALOG)
    assert isinstance(plan, routing.Plan)
    # Veo renders 4, 6 or 8 s only, so it cannot take a 5 s job.
    assert plan.backends == ["replicate-seedance", "runway-gen45"]
    assert plan.estimated_cost_usd == 0.4  # 5 s at 0.08 USD/s


def test_best_quality_puts_the_highest_score_first() -> None:
    plan = routing.plan(JobRequest(prompt="fox", duration_seconds=6, policy="best_quality"),
                        CATALOG)
    assert isinstance(plan, routing.Plan)
    assert plan.backends == ["runway-gen45", "veo-31", "veo-31-fast", "replicate-seedance"]


def test_fixed_follows_the_catalog_order() -> None:
    plan = routing.plan(JobRequest(prompt="fox", duration_seconds=6, policy="fixed"), CATALOG)
    assert isinstance(plan, routing.Plan)
    # Those that render 6 s of 720p from text, in catalog order.
    assert plan.backends == ["runway-gen45", "veo-31-fast", "replicate-seedance", "veo-31"]
    assert plan.backends == [name for name in CATALOG.names if name in plan.backends]


def test_audio_uses_the_audio_price() -> None:
    plan = routing.plan(JobRequest(prompt="fox", duration_seconds=8, audio=True,
                                   policy="fixed"), CATALOG)
    assert isinstance(plan, routing.Plan)
    assert "runway-gen45" not in plan.backends  # gen4.5 renders no audio
    veo = next(q for q in plan.quotes if q.backend == "veo-31-fast")
    assert veo.estimated_cost_usd == 1.2  # 8 s at 0.15 USD/s with audio


def test_unsupported_request_says_why_per_backend() -> None:
    rejection = routing.plan(JobRequest(prompt="fox", duration_seconds=40), CATALOG)
    assert isinstance(rejection, routing.Rejection)
    assert rejection.reason is routing.RejectionReason.UNSUPPORTED
    assert "runway-gen45 renders 2-10 s, not 40 s" in rejection.detail


def test_over_the_job_ceiling_quotes_the_cheapest() -> None:
    rejection = routing.plan(JobRequest(prompt="fox", max_cost_usd=0.1), CATALOG)
    assert isinstance(rejection, routing.Rejection)
    assert rejection.reason is routing.RejectionReason.OVER_JOB_CEILING
    assert rejection.cheapest is not None
    assert rejection.cheapest.backend == "replicate-seedance"


def test_budget_exhausted_is_its_own_reason() -> None:
    rejection = routing.plan(JobRequest(prompt="fox"), CATALOG, budget_left_usd=0.2)
    assert isinstance(rejection, routing.Rejection)
    assert rejection.reason is routing.RejectionReason.BUDGET_EXHAUSTED


def test_open_circuits_are_skipped_and_all_open_is_a_rejection() -> None:
    plan = routing.plan(JobRequest(prompt="fox"), CATALOG, {"replicate-seedance": False})
    assert isinstance(plan, routing.Plan)
    assert plan.backends == ["runway-gen45"]
    rejection = routing.plan(JobRequest(prompt="fox"), CATALOG,
                             {"replicate-seedance": False, "runway-gen45": False})
    assert isinstance(rejection, routing.Rejection)
    assert rejection.reason is routing.RejectionReason.UNHEALTHY


def test_quality_floor() -> None:
    plan = routing.plan(JobRequest(prompt="fox", min_quality=0.85), CATALOG)
    assert isinstance(plan, routing.Plan)
    assert plan.backends == ["runway-gen45"]
    rejection = routing.plan(JobRequest(prompt="fox", min_quality=0.99), CATALOG)
    assert isinstance(rejection, routing.Rejection)
    assert rejection.reason is routing.RejectionReason.QUALITY


# -- properties over random catalogs and requests -------------------------------------
RATIOS = ["16:9", "9:16", "1:1"]
RESOLUTIONS = ["720p", "768p", "1080p"]


@st.composite
def catalogs(draw: st.DrawFn) -> Catalog:
    count = draw(st.integers(1, 6))
    backends = []
    for i in range(count):
        modes = draw(st.sets(st.sampled_from(["text_to_video", "image_to_video"]), min_size=1))
        low = draw(st.integers(1, 10))
        caps = {mode: {"durations": {"min": low, "max": low + draw(st.integers(0, 10))},
                       "aspect_ratios": draw(st.lists(st.sampled_from(RATIOS), min_size=1,
                                                      unique=True)),
                       "audio": draw(st.booleans()),
                       "resolutions": draw(st.lists(st.sampled_from(RESOLUTIONS), min_size=1,
                                                    unique=True))} for mode in modes}
        offered = sorted({r for cap in caps.values() for r in cap["resolutions"]})
        by_resolution = {r: {"usd_per_second": draw(st.floats(0.01, 1))}
                         for r in draw(st.lists(st.sampled_from(offered), unique=True))}
        backends.append({
            "name": f"b{i}-x", "provider": draw(st.sampled_from(["runway", "veo", "replicate"])),
            "model": "m", "quality": draw(st.floats(0, 1)), "typical_latency_s": 10,
            "price": {"usd_per_second": draw(st.floats(0.01, 1)), "source": "s", "as_of": "d",
                      "by_resolution": by_resolution},
            "capabilities": caps,
            "limits": {"max_prompt_chars": 5000, "max_image_data_uri_bytes": 1000,
                       "task_timeout_s": 3600}})
    return parse_catalog(json.dumps({"version": 1, "backends": backends}))


requests = st.builds(
    JobRequest, prompt=st.just("p"),
    image_url=st.one_of(st.none(), st.just("https://example.com/i.png")),
    duration_seconds=st.integers(1, 25), aspect_ratio=st.sampled_from(RATIOS),
    resolution=st.sampled_from(RESOLUTIONS), audio=st.booleans(), min_quality=st.floats(0, 1),
    max_cost_usd=st.one_of(st.none(), st.floats(0.05, 20)),
    policy=st.sampled_from(["cheapest", "best_quality", "fixed", "fastest"]))


@settings(max_examples=400, deadline=None)
@given(catalogs(), requests, st.dictionaries(st.sampled_from([f"b{i}-x" for i in range(6)]),
                                             st.booleans()),
       st.one_of(st.none(), st.floats(0, 30)))
def test_a_plan_never_breaks_a_constraint_and_follows_the_policy(
        catalog: Catalog, request: JobRequest, healthy: dict[str, bool],
        budget: float | None) -> None:
    result = routing.plan(request, catalog, healthy, budget)
    if isinstance(result, routing.Rejection):
        # A rejection is only right when no backend passes every filter.
        for backend in catalog.backends:
            cost = estimate_usd(backend, request.duration_seconds, request.audio,
                                request.resolution)
            fits = (routing.capability_problem(backend, request) is None
                    and backend.quality >= request.min_quality
                    and healthy.get(backend.name, True)
                    and (request.max_cost_usd is None or cost <= request.max_cost_usd)
                    and (budget is None or cost <= budget))
            assert not fits, f"{backend.name} fits but the request was rejected"
        return
    assert result.backends, "a plan is never empty"
    assert len(set(result.backends)) == len(result.backends)
    for quote in result.quotes:
        backend = catalog.get(quote.backend)
        assert routing.capability_problem(backend, request) is None
        assert request.resolution in backend.capabilities[request.mode].resolutions
        assert quote.estimated_cost_usd == estimate_usd(
            backend, request.duration_seconds, request.audio, request.resolution)
        assert backend.quality >= request.min_quality
        assert healthy.get(backend.name, True)
        assert request.max_cost_usd is None or quote.estimated_cost_usd <= request.max_cost_usd
        assert budget is None or quote.estimated_cost_usd <= budget
    costs = [q.estimated_cost_usd for q in result.quotes]
    qualities = [q.quality for q in result.quotes]
    if request.policy == "cheapest":
        assert costs == sorted(costs)
    elif request.policy == "best_quality":
        assert qualities == sorted(qualities, reverse=True)
    elif request.policy == "fastest":
        latencies = [q.p95_s for q in result.quotes]
        assert latencies == sorted(latencies)  # type: ignore[type-var]
    else:
        order = [catalog.names.index(name) for name in result.backends]
        assert order == sorted(order)


def test_an_uploaded_image_too_big_for_a_backend_rules_it_out() -> None:
    # 300 KB: over Replicate's 256 KiB data-URI limit, within Runway's 5 MB.
    image = "data:image/png;base64," + "A" * 400_000
    plan = routing.plan(JobRequest(prompt="fox", image_url=image), CATALOG)
    assert isinstance(plan, routing.Plan)
    assert "replicate-seedance" not in plan.backends
    assert "runway-gen45" in plan.backends
    # 20 MB: only Veo (20 MiB) takes it, and Veo renders 4, 6 or 8 s, not 5.
    huge = "data:image/png;base64," + "A" * 27_000_000
    rejection = routing.plan(JobRequest(prompt="fox", image_url=huge), CATALOG)
    assert isinstance(rejection, routing.Rejection)
    # Only the upload's size stops the backends that could render 5 s: it says which limit.
    assert rejection.reason is routing.RejectionReason.IMAGE_TOO_LARGE
    assert rejection.limit_bytes == 5242880
    assert "at most 5242880 bytes (runway-gen45)" in rejection.detail
    assert "takes uploaded images of at most 5242880 bytes" in rejection.problems["runway-gen45"]


def test_an_upload_over_every_limit_names_the_widest_limit() -> None:
    huge = "data:image/png;base64," + "A" * 27_990_000  # 20.99 MB: over Veo's 20 MiB too
    rejection = routing.plan(JobRequest(prompt="fox", image_url=huge, duration_seconds=6),
                             CATALOG)
    assert isinstance(rejection, routing.Rejection)
    assert rejection.reason is routing.RejectionReason.IMAGE_TOO_LARGE
    assert rejection.limit_bytes == 20971520
    assert "(veo-31-fast)" in rejection.detail


def test_an_upload_is_not_blamed_when_another_field_rules_every_backend_out() -> None:
    big = "data:image/png;base64," + "A" * 8_000_000  # 6 MB: over Runway's, within Veo's
    rejection = routing.plan(JobRequest(prompt="fox", image_url=big, duration_seconds=40),
                             CATALOG)
    assert isinstance(rejection, routing.Rejection)
    assert rejection.reason is routing.RejectionReason.UNSUPPORTED
    assert rejection.limit_bytes is None


# -- resolution ---------------------------------------------------------------------------


def test_a_1080p_request_goes_only_to_backends_that_render_1080p() -> None:
    plan = routing.plan(JobRequest(prompt="fox", duration_seconds=6, resolution="1080p"),
                        CATALOG)
    assert isinstance(plan, routing.Plan)
    # Runway's gen4.5 and Seedance 2.0 Fast render 720p only; Hailuo's 1080p costs more
    # than its 768p (0.08 USD/s, not 0.045).
    assert plan.backends == ["replicate-hailuo", "veo-31-fast", "veo-31"]
    assert plan.quotes[0].estimated_cost_usd == 0.48
    assert "runway-gen45" not in plan.backends


def test_a_resolution_no_backend_renders_is_unsupported_and_says_so() -> None:
    plan = routing.plan(JobRequest(prompt="fox", resolution="1080p"), CATALOG)
    assert isinstance(plan, routing.Plan)  # Kling renders 5 s at 1080p
    assert plan.backends == ["replicate-kling"]
    rejection = routing.plan(JobRequest(prompt="fox", resolution="1080p",
                                        duration_seconds=3), CATALOG)
    assert isinstance(rejection, routing.Rejection)
    assert rejection.reason is routing.RejectionReason.UNSUPPORTED
    assert rejection.problems["runway-gen45"] == "renders 720p, not 1080p"
    assert rejection.problems["replicate-hailuo"] == "renders 6, 10 s, not 3 s"


def test_durations_can_be_narrower_at_one_resolution() -> None:
    # Hailuo 02 renders 10 s at 768p, and only 6 s at 1080p.
    at_768 = routing.plan(JobRequest(prompt="fox", duration_seconds=10, resolution="768p"),
                          CATALOG)
    assert isinstance(at_768, routing.Plan)
    assert at_768.backends == ["replicate-hailuo"]
    assert at_768.estimated_cost_usd == 0.45
    at_1080 = routing.plan(JobRequest(prompt="fox", duration_seconds=10, resolution="1080p"),
                           CATALOG)
    assert isinstance(at_1080, routing.Plan)
    assert at_1080.backends == ["replicate-kling"]
    assert at_1080.estimated_cost_usd == 0.7


def test_the_price_follows_the_resolution_where_the_provider_prices_by_it() -> None:
    hailuo = CATALOG.get("replicate-hailuo")
    assert estimate_usd(hailuo, 6, False, Resolution.P768) == 0.27
    assert estimate_usd(hailuo, 6, False, Resolution.P1080) == 0.48
    veo = CATALOG.get("veo-31-fast")  # Vertex prices 720p and 1080p alike
    assert estimate_usd(veo, 8, True, Resolution.P720) == estimate_usd(
        veo, 8, True, Resolution.P1080) == 1.2


def test_an_image_only_backend_takes_no_text_only_request() -> None:
    image = routing.plan(JobRequest(prompt="fox", image_url="https://example.com/i.png"),
                         CATALOG)
    assert isinstance(image, routing.Plan)
    assert image.backends[0] == "runway-gen4-turbo"  # 5 credits/s
    text = routing.plan(JobRequest(prompt="fox"), CATALOG)
    assert isinstance(text, routing.Plan)
    assert "runway-gen4-turbo" not in text.backends
