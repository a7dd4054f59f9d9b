"""Capacity never fails a job, even through the dead-letter topic: a render message
dead-lettered while its job renders (a duplicate copy that found the deployment full
on every delivery) leaves the render alone."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path

import pytest

from aiprod.adapters.store import FirestoreJobStore
from aiprod.domain.job import Job
from aiprod.wiring.config import Settings
from tests.conftest import MAX_DELIVERY_ATTEMPTS, LocalStack

pytestmark = pytest.mark.emulator
BACKEND = "replicate-seedance"


def test_a_dead_lettered_duplicate_of_a_live_render_leaves_it_to_succeed_once(
        local: LocalStack) -> None:
    """E.g. the watchdog's copy of the dispatch of a job that waited in the capacity
    backlog longer than AIPROD_WATCHDOG_STALE_S, while the original copy was claimed
    and renders: the copy's dead letter must not fail the job nor cancel its task."""
    local.fault("replicate", "ok", latency_s=12.0)  # renders across several continuations
    prompt = f"rendering while its copy is dead-lettered {uuid.uuid4().hex[:8]}"
    job = local.submit(prompt=prompt)
    assert job["plan"][0] == BACKEND
    local.wait(job["id"], until=lambda j: bool(j["attempts"])
               and j["attempts"][0]["status"] == "RUNNING", timeout=30)
    store = FirestoreJobStore(local.firestore())
    before = store.get(job["id"])
    assert before is not None
    lease = before.attempts[0].lease_expires_at
    assert lease is not None
    assert lease > dt.datetime.now(dt.UTC)  # held: a render is on it

    # Pub/Sub's dead letter of a copy of the render message, with production's attributes.
    response = local.push("dead-letter", f"render-{BACKEND}-dead-letter", {
        "job_id": job["id"], "backend": BACKEND, "attempt": 0}, attributes={
        "job_id": job["id"],
        "CloudPubSubDeadLetterSourceDeliveryCount": str(MAX_DELIVERY_ATTEMPTS),
        "CloudPubSubDeadLetterSourceSubscription": f"render-{BACKEND}"})
    assert response.status_code == 200, response.text

    after = store.get(job["id"])
    assert after is not None
    assert after.status.value == "RENDERING", after.status_reason
    done = local.wait(job["id"], timeout=90)
    assert done["status"] == "SUCCEEDED", done
    assert [a["backend"] for a in done["attempts"]] == [BACKEND]
    tasks = [t for t in local.sim_tasks("replicate") if t["prompt"] == prompt]
    assert [t["phase"] for t in tasks] == ["succeeded"]  # one task, never cancelled
    # The dead-letter function saw the live lease (unless a hand-off happened to
    # release it at that very moment: then it re-drove the attempt, which the render
    # claim absorbed; the outcome above is the same).
    if after.attempts[0].lease_expires_at == lease:
        assert left_alone(Path(local.part("dead-letter")["log"]), job["id"])


def left_alone(log: Path, job_id: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("the job is left alone" in line and job_id in line
               for line in log.read_text().splitlines()):
            return True
        time.sleep(0.2)
    return False


def age_past_redrive_bound(local: LocalStack, job_id: str) -> None:
    """Make a job older than AIPROD_REDRIVE_MAX_AGE_S: the one bound under which a
    dead-lettered render ends a job whose attempt a render holds (a render crashing on
    every delivery renews its lease at each claim, so its own dead letter meets it)."""
    def older(job: Job) -> None:
        job.created_at -= dt.timedelta(seconds=Settings().redrive_max_age_s + 60)

    assert FirestoreJobStore(local.firestore()).mutate(job_id, older) is not None
