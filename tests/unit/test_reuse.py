"""Never pay twice for the same video (issue 14): the reuse key, the opt-in cache and
in-flight joining, on in-memory fakes. The race through the whole stack is in
tests/emulator/test_reuse.py."""

from __future__ import annotations

import base64
from pathlib import Path
from unittest import mock

from aiprod.adapters.providers.base import ProviderError
from aiprod.domain import routing
from aiprod.domain.budget import to_micros
from aiprod.domain.job import AspectRatio, ErrorClass, JobRequest, JobStatus
from aiprod.domain.reuse import request_key
from aiprod.observability import metrics
from aiprod.services import admission, budget, cancel, reuse, watchdog
from tests.fakes import Fakes, fake_runtime
from tests.service_helpers import deliver, figures

CACHED = {"prompt": "a red fox in snow", "duration_seconds": 4, "reuse": "cached", "seed": 7}


def submit(fx: Fakes, job_id: str, owner: str = "key:aaaaaaaaaaaa",
           **fields: object) -> admission.Admitted | routing.Rejection:
    request = JobRequest.model_validate(CACHED | fields)
    return admission.admit(fx.rt, request, job_id=job_id, owner=owner)


def admitted(decision: admission.Admitted | routing.Rejection) -> admission.Admitted:
    assert isinstance(decision, admission.Admitted), decision
    return decision


# -- the key -------------------------------------------------------------------------------
def test_the_key_covers_what_is_rendered_and_nothing_else() -> None:
    base = JobRequest.model_validate(CACHED)
    key = request_key(base, None, "o")

    same = [base.model_copy(update=u) for u in (
        {"metadata": {"order": "7"}}, {"webhook_url": "https://example.com/h"},
        {"min_quality": 0.5}, {"max_cost_usd": 3.0})]
    assert {request_key(r, None, "o") for r in same} == {key}
    different = [base.model_copy(update=u) for u in (
        {"prompt": "a red fox in rain"}, {"seed": 8}, {"seed": None}, {"duration_seconds": 5},
        {"audio": True}, {"aspect_ratio": AspectRatio.PORTRAIT})]
    keys = {request_key(r, None, "o") for r in different}
    assert key not in keys
    assert len(keys) == len(different)
    assert request_key(base, None, "other-owner") != key  # scoped


def test_an_uploaded_image_counts_by_its_content() -> None:
    png = base64.b64encode(b"\x89PNG fake image bytes").decode()
    one = JobRequest(prompt="p", image_url=f"data:image/png;base64,{png}")
    assert reuse.upload_sha256(one.image_url) is not None
    other = JobRequest(prompt="p", image_url="data:image/png;base64," + base64.b64encode(
        b"\x89PNG other bytes").decode())
    assert (request_key(one, reuse.upload_sha256(one.image_url), "o")
            != request_key(other, reuse.upload_sha256(other.image_url), "o"))


# -- the cache -----------------------------------------------------------------------------
def test_an_identical_cached_request_is_served_at_once_at_no_cost(fx: Fakes) -> None:
    first = admitted(submit(fx, "job_1")).job
    done = deliver(fx, first)
    assert done.status is JobStatus.SUCCEEDED
    spent = figures(fx).spent_micros
    fx.bus.clear()

    with mock.patch.object(metrics, "count", wraps=metrics.count) as counted:
        again = admitted(submit(fx, "job_2", metadata={"run": "2"}))

    job = again.job
    assert again.created
    assert job.status is JobStatus.SUCCEEDED
    assert job.reused_from == "job_1"
    assert job.cost_usd == 0
    assert job.output == done.output  # the same stored video (uri, sha256)
    assert job.funding is None
    assert len(fx.provider(first.plan[0]).calls_of("create")) == 1
    assert figures(fx).spent_micros == spent
    assert figures(fx).reserved_micros == 0  # no reservation either
    assert fx.bus.event_types() == ["job.succeeded"]
    counted.assert_any_call("cache_hits", job_id="job_2", kind="served")


def test_reuse_is_opt_in_and_scoped_to_the_api_key(fx: Fakes) -> None:
    deliver(fx, admitted(submit(fx, "job_1")).job)

    never = admitted(submit(fx, "job_2", reuse="never")).job
    other_key = admitted(submit(fx, "job_3", owner="key:bbbbbbbbbbbb")).job

    assert never.status is JobStatus.QUEUED
    assert never.reused_from is None
    assert other_key.status is JobStatus.QUEUED
    assert other_key.reused_from is None


def test_the_deployment_scope_shares_across_keys(tmp_path: Path) -> None:
    fx = fake_runtime(tmp_path, cache_scope="deployment")
    deliver(fx, admitted(submit(fx, "job_1")).job)

    other_key = admitted(submit(fx, "job_2", owner="key:bbbbbbbbbbbb")).job

    assert other_key.status is JobStatus.SUCCEEDED
    assert other_key.reused_from == "job_1"


def test_an_output_older_than_the_ttl_is_rendered_again(fx: Fakes) -> None:
    deliver(fx, admitted(submit(fx, "job_1")).job)
    fx.clock.advance(fx.rt.settings.cache_ttl_s + 1)

    later = admitted(submit(fx, "job_2")).job

    assert later.status is JobStatus.QUEUED
    assert later.reused_from is None
    assert deliver(fx, later).status is JobStatus.SUCCEEDED
    assert admitted(submit(fx, "job_3")).job.reused_from == "job_2"  # the new one serves


def test_an_output_below_the_requests_floor_is_not_reused(fx: Fakes) -> None:
    first = deliver(fx, admitted(submit(fx, "job_1")).job)
    rendered_on = fx.rt.catalog.get(first.attempts[-1].backend)

    pickier = admitted(submit(fx, "job_2", min_quality=rendered_on.quality + 0.01)).job

    assert pickier.reused_from is None


def test_a_cache_hit_is_served_even_when_the_budget_is_spent(tmp_path: Path) -> None:
    fx = fake_runtime(tmp_path)
    first = deliver(fx, admitted(submit(fx, "job_1")).job)
    rest = to_micros(fx.rt.settings.daily_budget_usd) - figures(fx).committed_micros
    assert fx.ledger.reserve(figures(fx).day, "rival", rest, [budget.global_scope(fx.rt)])

    again = admitted(submit(fx, "job_2")).job
    fresh = submit(fx, "job_3", prompt="something new")

    assert again.status is JobStatus.SUCCEEDED
    assert again.reused_from == first.id
    assert isinstance(fresh, routing.Rejection)


# -- joining a render in flight ------------------------------------------------------------
def test_identical_requests_in_flight_render_once_and_end_together(fx: Fakes) -> None:
    leader = admitted(submit(fx, "job_1")).job
    followers = [admitted(submit(fx, f"job_{n}")).job for n in (2, 3, 4)]

    for follower in followers:
        assert follower.status is JobStatus.QUEUED
        assert follower.reused_from == "job_1"
        assert follower.funding is None
    assert figures(fx).reserved_micros == to_micros(leader.estimated_cost_usd)  # one hold

    done = deliver(fx, leader)

    assert done.status is JobStatus.SUCCEEDED
    assert len(fx.provider(leader.plan[0]).calls_of("create")) == 1
    for follower in followers:
        ended = fx.store.get(follower.id)
        assert ended is not None
        assert ended.status is JobStatus.SUCCEEDED
        assert ended.output == done.output
        assert ended.cost_usd == 0
    assert figures(fx).spent_micros == to_micros(done.cost_usd)
    succeeded = [p.payload["job_id"] for p in fx.bus.published
                 if p.payload.get("type") == "job.succeeded"]
    assert sorted(succeeded) == ["job_1", "job_2", "job_3", "job_4"]


def test_followers_of_a_failed_leader_fail_with_it_and_the_next_request_leads(
        fx: Fakes) -> None:
    leader = admitted(submit(fx, "job_1")).job
    follower = admitted(submit(fx, "job_2")).job
    broken = ProviderError(ErrorClass.INVALID_INPUT, "bad", "the provider refused it")
    fx.provider(leader.plan[0]).creates = [broken]

    assert deliver(fx, leader).status is JobStatus.FAILED

    ended = fx.store.get(follower.id)
    assert ended is not None
    assert ended.status is JobStatus.FAILED
    assert "job_1" in ended.status_reason
    assert ended.cost_usd == 0
    assert figures(fx).committed_micros == 0
    again = admitted(submit(fx, "job_3")).job
    assert again.reused_from is None  # leads anew, renders
    assert again.funding is not None


def test_cancelling_a_follower_leaves_its_leader_rendering(fx: Fakes) -> None:
    leader = admitted(submit(fx, "job_1")).job
    follower = admitted(submit(fx, "job_2")).job

    cancelled = cancel.cancel_job(fx.rt, follower.id)

    assert cancelled is not None
    assert cancelled.status is JobStatus.CANCELLED
    done = deliver(fx, leader)
    assert done.status is JobStatus.SUCCEEDED
    after = fx.store.get(follower.id)
    assert after is not None
    assert after.status is JobStatus.CANCELLED


def test_the_watchdog_ends_a_follower_whose_leaders_end_was_missed(fx: Fakes) -> None:
    leader = admitted(submit(fx, "job_1")).job
    follower = admitted(submit(fx, "job_2")).job
    fx.rt.reuse.followers = lambda key: []  # type: ignore[method-assign]  # the hook missed it
    deliver(fx, leader)
    assert (fx.store.get(follower.id) or follower).status is JobStatus.QUEUED
    fx.clock.advance(fx.rt.settings.watchdog_stale_s + 1)

    watchdog.sweep(fx.rt)

    after = fx.store.get(follower.id)
    assert after is not None
    assert after.status is JobStatus.SUCCEEDED
    assert after.reused_from == leader.id
    assert len(fx.provider(leader.plan[0]).calls_of("create")) == 1  # never dispatched


def test_a_key_whose_leaders_end_was_never_recorded_is_led_anew(fx: Fakes) -> None:
    leader = admitted(submit(fx, "job_1")).job
    fx.rt.reuse.finish = lambda *a, **k: False  # type: ignore[method-assign]  # lost
    fx.provider(leader.plan[0]).creates = [
        ProviderError(ErrorClass.INVALID_INPUT, "bad", "the provider refused it")]
    assert deliver(fx, leader).status is JobStatus.FAILED
    del fx.rt.reuse.finish  # type: ignore[attr-defined]  # the index works again

    again = admitted(submit(fx, "job_2")).job

    assert again.reused_from is None
    assert again.funding is not None
    entry = fx.rt.reuse.get(again.reuse_key or "")
    assert entry is not None
    assert entry.leader == "job_2"
