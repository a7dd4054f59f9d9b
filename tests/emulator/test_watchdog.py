"""No job stuck, whatever happens to its messages: the watchdog, on a real stack.

The Pub/Sub emulator stops redelivering push messages on a subscription with a
retry policy once pushes to it have failed (docs/local-stack.md), so after a
render process is killed some jobs lose their only message. The watchdog finds
them and re-drives them through the render function's own claims.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiprod.adapters.ledger import GLOBAL, FirestoreLedger, Scope
from aiprod.adapters.store import FirestoreJobStore
from aiprod.domain.budget import ledger_day
from aiprod.domain.job import Attempt, AttemptStatus, Job, JobRequest, JobStatus
from aiprod.wiring.config import Settings, load_catalog
from aiprod_dev.localstack import control
from tests.conftest import TERMINAL, LocalStack, running_stack

pytestmark = pytest.mark.emulator

INTERVAL_S = 1.0
STALE_S = 4.0
RENDER_DEADLINE_S = 3.0
CREATE_TIMEOUT_S = 3.0
SETTINGS = Settings(render_deadline_s=RENDER_DEADLINE_S, create_timeout_s=CREATE_TIMEOUT_S)
# The bound the README states: a job that stops moving is re-driven within
# max(stale, lease) + interval of its last change; a generous margin on top for
# the render itself and a loaded machine.
BOUND_S = max(STALE_S, SETTINGS.attempt_lease.total_seconds()) + INTERVAL_S
CATALOG = load_catalog()
RENDERS = ("render-replicate-seedance", "render-runway-gen45", "render-veo-31-fast")


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of its own, with a watchdog that runs every second and a short bound."""
    with running_stack(tmp_path_factory.mktemp("watchdog-stack"),
                       AIPROD_WATCHDOG_INTERVAL_S=str(INTERVAL_S),
                       AIPROD_WATCHDOG_STALE_S=str(STALE_S),
                       AIPROD_RENDER_DEADLINE_S=str(RENDER_DEADLINE_S),
                       AIPROD_CREATE_TIMEOUT_S=str(CREATE_TIMEOUT_S),
                       AIPROD_UNKNOWN_OUTCOME_WAIT_S="8") as started, \
            control.environment(started.state["env"]):
        yield started


@pytest.fixture
def stack(watched: LocalStack) -> LocalStack:
    watched.reset_sims()
    watched.reset_health()
    return watched


def reserved_usd(stack: LocalStack) -> float:
    figures = FirestoreLedger(stack.firestore()).figures(
        ledger_day(dt.datetime.now(dt.UTC)), Scope(GLOBAL, 0), 0)
    return figures.reserved_micros / 1e6


def watchdog_log(stack: LocalStack) -> str:
    return Path(stack.part("watchdog")["log"]).read_text()


def wait_terminal(stack: LocalStack, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    while True:
        for job_id in ids:
            if job_id not in done and (job := stack.job(job_id))["status"] in TERMINAL:
                done[job_id] = job
        if len(done) == len(ids):
            return done
        if time.monotonic() > deadline:
            stuck = {i: stack.job(i)["status"] for i in ids if i not in done}
            raise AssertionError(f"{len(stuck)} jobs not terminal after {timeout:.0f} s: "
                                 f"{stuck}")
        time.sleep(0.5)


def kill_renders(stack: LocalStack, times: int, every_s: float) -> int:
    """SIGKILL every render process `times` times (the stack restarts them)."""
    killed: set[int] = set()
    state_dir = Path(stack.state["state_dir"])
    for _ in range(times):
        time.sleep(every_s)
        state = control.status(state_dir)
        assert state is not None
        for part in state["parts"]:
            if part["name"] in RENDERS and part["alive"] and part["pid"] not in killed:
                os.kill(part["pid"], signal.SIGKILL)
                killed.add(part["pid"])
    return len(killed)


def test_a_burst_with_repeated_render_kills_ends_every_job_once_and_frees_its_money(
        stack: LocalStack) -> None:
    stack.fault("replicate", "ok", latency_s=3.0)
    prompts = [f"a fox, burst {i} {uuid.uuid4().hex[:6]}" for i in range(20)]
    started = time.monotonic()
    ids = [stack.submit(prompt=p)["id"] for p in prompts]

    kills = kill_renders(stack, times=5, every_s=1.5)
    killed_at = time.monotonic()
    # Within the bound of the last kill, plus one more: a re-drive's own message may
    # wait in the emulator too (pushes on a subscription whose pushes failed were
    # seen to take up to 40 s), and is then re-driven again after STALE_S.
    done = wait_terminal(stack, ids, timeout=2 * BOUND_S + 30)
    elapsed, after_kills = time.monotonic() - started, time.monotonic() - killed_at

    assert kills >= 5
    statuses = Counter(job["status"] for job in done.values())
    assert set(statuses) <= {"SUCCEEDED", "FAILED"}, statuses
    # Each provider task was created once: one task per attempt that has one, and
    # no prompt was sent twice to one provider.
    made: Counter[str] = Counter()
    for job in done.values():
        for attempt in job["attempts"]:
            if attempt["provider_task_id"]:
                made[CATALOG.get(attempt["backend"]).provider] += 1
        succeeded = [a for a in job["attempts"] if a["status"] == "SUCCEEDED"]
        assert len(succeeded) == (1 if job["status"] == "SUCCEEDED" else 0), job["attempts"]
    for provider in ("replicate", "runway", "veo"):
        tasks = stack.sim_tasks(provider)
        per_prompt = Counter(str(t["prompt"]) for t in tasks)
        assert all(n == 1 for n in per_prompt.values()), (provider, per_prompt)
        assert stack.sim_stats(provider)["creates"] == made[provider] == len(tasks), provider
    assert made["replicate"] >= 1
    # Every hold was settled or released.
    deadline = time.monotonic() + 30
    while reserved_usd(stack) != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert reserved_usd(stack) == 0
    redrives = Counter(line.split('"action": "')[1].split('"')[0]
                       for line in watchdog_log(stack).splitlines()
                       if '"metric": "watchdog_redriven"' in line)
    print(f"\n20 jobs {dict(statuses)} in {elapsed:.0f} s, {after_kills:.0f} s after the last "
          f"of {kills} render kills (bound {BOUND_S:.0f} s); watchdog re-drives: "
          f"{dict(redrives)}")


def store_job(stack: LocalStack, status: JobStatus, age_s: float, prompt: str) -> Job:
    """A job stored the way admission stores it, whose dispatch was lost."""
    then = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_s)
    job = Job(id=f"job_{uuid.uuid4().hex}", owner="test", request=JobRequest(prompt=prompt),
              plan=["replicate-seedance"], status=status, estimated_cost_usd=0.4,
              created_at=then, updated_at=then)
    assert FirestoreJobStore(stack.firestore()).create(job)
    return job


def test_a_job_whose_dispatch_was_lost_is_dispatched_and_a_late_copy_renders_nothing_more(
        stack: LocalStack) -> None:
    prompt = f"a fox, lost dispatch {uuid.uuid4().hex[:6]}"
    job = store_job(stack, JobStatus.QUEUED, age_s=STALE_S * 2, prompt=prompt)

    # Pushes on a subscription whose earlier pushes failed (the burst's kills) may
    # wait a while in the emulator: a generous timeout.
    claimed = stack.wait(job.id, timeout=BOUND_S, until=lambda j: bool(j["attempts"]))
    # The lost dispatch arrives after all, while the re-driven one renders.
    late = stack.push("render-replicate-seedance", "render-replicate-seedance",
                      {"job_id": job.id, "backend": "replicate-seedance", "attempt": 0})
    done = stack.wait(job.id, timeout=60)

    assert claimed["status"] in {"RENDERING", "SUCCEEDED"}
    assert late.status_code < 300  # acknowledged: a duplicate that stood back
    assert done["status"] == "SUCCEEDED"
    assert len(done["attempts"]) == 1
    assert [t["prompt"] for t in stack.sim_tasks("replicate")].count(prompt) == 1
    assert '"action": "dispatch"' in watchdog_log(stack)


def test_a_job_that_moved_recently_is_left_alone(stack: LocalStack) -> None:
    job = store_job(stack, JobStatus.QUEUED, age_s=0, prompt="a fox, just admitted")
    time.sleep(INTERVAL_S * 2)
    assert stack.job(job.id)["attempts"] == []  # within the bound: not re-driven yet
    done = stack.wait(job.id, timeout=BOUND_S)  # past it: re-driven, rendered
    assert done["status"] == "SUCCEEDED"


def test_a_hold_its_ended_attempt_left_open_is_closed(stack: LocalStack) -> None:
    """The render settled the job, then died before closing the hold, and the
    message that would have closed it was lost: the watchdog settles it."""
    now = dt.datetime.now(dt.UTC)
    day = ledger_day(now)
    job = Job(id=f"job_{uuid.uuid4().hex}", owner="test", request=JobRequest(prompt="a fox"),
              plan=["replicate-seedance"], status=JobStatus.SUCCEEDED, estimated_cost_usd=0.4,
              cost_usd=0.3, created_at=now, updated_at=now,
              attempts=[Attempt(backend="replicate-seedance", status=AttemptStatus.SUCCEEDED,
                                provider_task_id="t", started_at=now, ended_at=now,
                                estimated_cost_usd=0.4, cost_usd=0.3, reservation_day=day,
                                reservation_id=f"hold-{uuid.uuid4().hex}")])
    assert FirestoreJobStore(stack.firestore()).create(job)
    ledger = FirestoreLedger(stack.firestore())
    rid = job.attempts[0].reservation_id
    before = reserved_usd(stack)
    assert ledger.reserve(day, rid, 400_000, [Scope(GLOBAL, 100_000_000)], job_id=job.id)
    assert reserved_usd(stack) == pytest.approx(before + 0.4)

    deadline = time.monotonic() + BOUND_S
    while any(h.reservation_id == rid for h in ledger.held(day)):
        assert time.monotonic() < deadline, "the leftover hold was never closed"
        time.sleep(0.5)
    assert reserved_usd(stack) == pytest.approx(before)
    snapshot = (stack.firestore().collection("budget_days").document(day)
                .collection("reservations").document(rid).get().to_dict() or {})
    assert (snapshot["state"], snapshot["spent"]) == ("SETTLED", 300_000)
    assert '"action": "close_hold"' in watchdog_log(stack)


def test_a_cancel_whose_stop_message_was_lost_is_asked_again_and_settled(
        stack: LocalStack) -> None:
    """The API ended the job CANCELLED while its task ran (the charge pending), then
    its stop message to the render deployment was lost: the watchdog asks again, the
    backend settles the task (here one the provider cannot find: its estimate, the
    conservative rule) and the hold is closed."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=STALE_S * 2)
    day = ledger_day(now)
    rid = f"hold-{uuid.uuid4().hex}"
    job = Job(id=f"job_{uuid.uuid4().hex}", owner="test", request=JobRequest(prompt="a fox"),
              plan=["replicate-seedance"], status=JobStatus.CANCELLED, estimated_cost_usd=0.4,
              cost_usd=0.4, created_at=now, updated_at=now,
              attempts=[Attempt(backend="replicate-seedance", status=AttemptStatus.CANCELLED,
                                provider_task_id="no-such-prediction", started_at=now,
                                ended_at=now, estimated_cost_usd=0.4, cost_usd=0.4,
                                cost_pending=True, reservation_day=day, reservation_id=rid)])
    assert FirestoreJobStore(stack.firestore()).create(job)
    ledger = FirestoreLedger(stack.firestore())
    before = reserved_usd(stack)
    assert ledger.reserve(day, rid, 400_000, [Scope(GLOBAL, 100_000_000)], job_id=job.id)

    deadline = time.monotonic() + BOUND_S + 30
    while any(h.reservation_id == rid for h in ledger.held(day)):
        assert time.monotonic() < deadline, "the pending cancel was never settled"
        time.sleep(0.5)
    stored = FirestoreJobStore(stack.firestore()).get(job.id)
    assert stored is not None
    assert not stored.attempts[0].cost_pending
    assert stored.cost_usd == pytest.approx(0.4)
    assert reserved_usd(stack) == pytest.approx(before)
    assert '"action": "stop_task"' in watchdog_log(stack)
