"""A burst bigger than the deployment: the local stack refuses what production
would refuse (429 when every instance is busy), Pub/Sub retries and dead-letters,
and no job fails or is lost for it."""

from __future__ import annotations

import collections
import concurrent.futures
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import pubsub_v1

from aiprod.adapters.store import FirestoreJobStore
from aiprod.domain.job import Job, JobRequest, JobStatus
from tests.conftest import BACKEND_BUSY_WAIT_S, MAX_DELIVERY_ATTEMPTS, LocalStack
from tests.emulator.test_public_api import pull_events

pytestmark = pytest.mark.emulator
RENDER_FUNCTIONS = ("render-runway-gen45", "render-veo-31-fast", "render-replicate-seedance")


@pytest.fixture
def render_capacity(local: LocalStack) -> Iterator[None]:
    """Each render function serves at most 2 requests at once (--render-capacity 2)."""
    for function in RENDER_FUNCTIONS:
        local.set_capacity(function, 2)
    yield
    for function in RENDER_FUNCTIONS:
        local.set_capacity(function)


def refused(local: LocalStack, functions: tuple[str, ...] = RENDER_FUNCTIONS) -> int:
    return sum(local.gate(f)["refused"] for f in functions)


def test_a_burst_over_render_capacity_fails_no_job_and_renders_each_once(
        local: LocalStack, render_capacity: None) -> None:
    refused_before = refused(local)
    run = uuid.uuid4().hex[:8]
    prompts = [f"burst {run} {n}" for n in range(20)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        jobs = list(pool.map(lambda prompt: local.submit(prompt=prompt)["id"], prompts))

    done = [local.wait(job_id, timeout=180) for job_id in jobs]

    assert [job["status"] for job in done] == ["SUCCEEDED"] * 20, [
        (job["status"], job.get("status_reason")) for job in done]
    # The deployment was full: pushes were refused (and retried), never run over capacity.
    assert refused(local) > refused_before
    assert all(local.gate(f)["peak_in_flight"] <= 2 for f in RENDER_FUNCTIONS)
    # Each job was rendered by exactly one provider task.
    assert all(len(job["attempts"]) == 1 for job in done)
    tasks = collections.Counter(task["prompt"] for provider in ("runway", "veo", "replicate")
                                for task in local.sim_tasks(provider))
    assert {prompt: tasks[prompt] for prompt in prompts} == dict.fromkeys(prompts, 1)


def test_a_render_dead_lettered_before_it_started_goes_back_to_work(local: LocalStack) -> None:
    function = "render-replicate-seedance"
    before = local.gate(function)["refused"]
    local.set_capacity(function, 0)  # every instance busy, for as long as it takes
    try:
        job = local.submit(prompt=f"waits for capacity {uuid.uuid4().hex[:8]}")
        assert job["plan"][0] == "replicate-seedance"
        # More refusals than one message's deliveries: it was dead-lettered and re-driven.
        deadline = time.monotonic() + 60
        while local.gate(function)["refused"] - before <= MAX_DELIVERY_ATTEMPTS + 1:
            assert time.monotonic() < deadline, local.gate(function)
            assert local.job(job["id"])["status"] == "QUEUED"
            time.sleep(0.5)
    finally:
        local.set_capacity(function)

    done = local.wait(job["id"], timeout=60)
    assert done["status"] == "SUCCEEDED", done
    assert [a["backend"] for a in done["attempts"]] == ["replicate-seedance"]


def test_an_intake_message_that_dead_letters_ends_with_job_rejected(
        local: LocalStack, job_events: tuple[pubsub_v1.SubscriberClient, str]) -> None:
    subscriber, path = job_events
    publisher = pubsub_v1.PublisherClient()
    correlation_id = f"never-admitted-{uuid.uuid4().hex[:8]}"
    before = local.gate("intake")["refused"]
    local.set_capacity("intake", 0)  # the intake deployment stays full
    try:
        publisher.publish(publisher.topic_path("aiprod-local", "video-jobs"),
                          json.dumps({"prompt": "a fox"}).encode(),
                          correlation_id=correlation_id).result(timeout=30)
        events = pull_events(subscriber, path, {correlation_id}, lambda found: bool(found),
                             timeout=60)
    finally:
        local.set_capacity("intake")

    [event] = events
    assert event["type"] == "job.rejected"
    assert event["status"] == "REJECTED"
    assert event["code"] == "dead-lettered"
    assert f"{MAX_DELIVERY_ATTEMPTS} deliveries" in event["reason"]
    assert event["attributes"]["correlation_id"] == correlation_id
    assert local.gate("intake")["refused"] - before == MAX_DELIVERY_ATTEMPTS


def test_a_job_older_than_the_redrive_bound_ends_failed_when_dead_lettered(
        local: LocalStack) -> None:
    """The re-drive is bounded by the job's age (AIPROD_REDRIVE_MAX_AGE_S, a day)."""
    created = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    job = Job(id=f"job_{uuid.uuid4().hex}", owner="test", request=JobRequest(prompt="too old"),
              plan=["replicate-seedance"], status=JobStatus.QUEUED, estimated_cost_usd=0.4,
              created_at=created, updated_at=created)
    assert FirestoreJobStore(local.firestore()).create(job)
    dead = "render-replicate-seedance-dead-letter"
    response = local.push("dead-letter", dead, {
        "job_id": job.id, "backend": "replicate-seedance", "attempt": 0}, attributes={
        "job_id": job.id, "CloudPubSubDeadLetterSourceDeliveryCount": "100",
        "CloudPubSubDeadLetterSourceSubscription": "render-replicate-seedance"})
    assert response.status_code == 200

    done = local.wait(job.id, timeout=30)
    assert done["status"] == "FAILED"
    assert "dead-lettered" in done["status_reason"]


def test_a_busy_last_backend_hands_the_job_back_instead_of_failing_it(
        local: LocalStack) -> None:
    """Every call slot of the only backend a job can use stays taken for longer than
    AIPROD_BACKEND_BUSY_WAIT_S: the render answers 429 (back-pressure, like Cloud
    Run's own), Pub/Sub redelivers, and the job renders once a slot frees, instead of
    ending FAILED with backend_busy."""
    from aiprod.adapters.health import FirestoreHealth
    from aiprod.domain import routing
    from aiprod.domain.job import JobRequest
    from aiprod.wiring.config import Settings, load_catalog

    catalog = load_catalog()
    # The cheapest backend that can render the job: under its price, no other can.
    first = routing.plan(JobRequest(prompt="busy backend"), catalog)
    assert isinstance(first, routing.Plan)
    cheapest = catalog.get(first.backends[0])
    ceiling = first.estimated_cost_usd
    health = FirestoreHealth(local.firestore())
    now = dt.datetime.now(dt.UTC)
    slots = [health.take_slot(cheapest.name, f"test-holder-{n}", Settings().circuit_strikes,
                              now, dt.timedelta(minutes=10))
             for n in range(Settings().circuit_strikes)]
    assert all(slots), "the test could not take every call slot"
    log = Path(local.part(f"render-{cheapest.name}")["log"])
    try:
        started = time.monotonic()
        job = local.submit(prompt=f"busy backend {uuid.uuid4().hex[:8]}", max_cost_usd=ceiling)
        assert job["plan"] == [cheapest.name]
        # Past the busy wait (the stack's AIPROD_BACKEND_BUSY_WAIT_S): the render was
        # handed back, and the job never failed meanwhile.
        deadline = started + BACKEND_BUSY_WAIT_S + 60
        while not handed_back(log, job["id"]):
            current = local.job(job["id"])
            assert current["status"] in {"QUEUED", "RENDERING"}, current
            assert time.monotonic() < deadline, "the render was never handed back"
            time.sleep(0.5)
        assert time.monotonic() - started >= BACKEND_BUSY_WAIT_S
        current = local.job(job["id"])
        assert current["status"] in {"QUEUED", "RENDERING"}, current
    finally:
        for slot in slots:
            assert slot is not None
            health.release_slot(cheapest.name, slot)
    done = local.wait(job["id"], timeout=120)
    assert done["status"] == "SUCCEEDED", done
    assert len(done["attempts"]) == 1


def handed_back(render_log: Path, job_id: str) -> bool:
    """The render function logged that it handed this job's message back (429)."""
    return any("render handed back" in line and job_id in line
               for line in render_log.read_text().splitlines())
