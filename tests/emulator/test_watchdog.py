"""No job stuck, whatever happens to its messages: the watchdog, on a real stack.

The stack's relay (shared/aiprod_dev/localstack/delivery.py) pushes like
production: a render killed mid-request fails its push, and the message comes
back after the subscription's backoff. So the burst below also loses messages
outright, with the stack's dev-only fault (`aiprod dev lose-messages`): a lost
render message (a publish that died, a subscription that stopped delivering)
leaves its job with nothing to move it, and only the watchdog can. It re-drives
such jobs through the render function's own claims.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
import uuid
from collections import Counter, defaultdict
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
from aiprod_dev.localstack.processes import http_ok
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
LOSE = 0.3  # of the render messages, during the burst
REDRIVES = {"dispatch", "resume", "follow_up", "end"}  # the watchdog moving a job


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of its own, with a watchdog that runs every second and a short bound,
    and production's delivery attempts (functions.yaml: 100), not the 5 of the other
    tests' stack: with backoffs scaled to seconds, 5 attempts give up on a message
    within 15 s, less than a few killed render instances take to restart on a loaded
    machine, and the burst would end in dead-letters instead of the watchdog."""
    with running_stack(tmp_path_factory.mktemp("watchdog-stack"), max_delivery_attempts=None,
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


def supervisor_log(stack: LocalStack) -> Path:
    return Path(stack.state["state_dir"]) / "supervisor.log"


def json_lines(text: str) -> Iterator[dict[str, Any]]:
    """The JSON objects logged in `text`, one a line (the supervisor prefixes its own
    with a timestamp, level and logger name)."""
    for line in text.splitlines():
        brace = line.find("{")
        if brace < 0:
            continue
        try:
            record = json.loads(line[brace:])
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def wait_terminal(stack: LocalStack, ids: list[str], timeout: float,
                  ended_at: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """Every job, once terminal; `ended_at` gets when each was first seen terminal."""
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    while True:
        for job_id in ids:
            if job_id not in done and (job := stack.job(job_id))["status"] in TERMINAL:
                done[job_id] = job
                if ended_at is not None:
                    ended_at[job_id] = time.monotonic()
        if len(done) == len(ids):
            return done
        if time.monotonic() > deadline:
            stuck = {i: stack.job(i)["status"] for i in ids if i not in done}
            raise AssertionError(f"{len(stuck)} jobs not terminal after {timeout:.0f} s: "
                                 f"{stuck}")
        time.sleep(0.5)


def serving_renders(stack: LocalStack, timeout: float) -> list[dict[str, Any]]:
    """The RENDERS instances, once each is up and answering HTTP (a killed one is
    restarted by the stack: on a loaded machine that takes seconds)."""
    state_dir = Path(stack.state["state_dir"])
    deadline = time.monotonic() + timeout
    while True:
        state = control.status(state_dir)
        assert state is not None
        parts = [p for p in state["parts"] if p["name"] in RENDERS]
        if all(p["alive"] and http_ok(p["url"], any_status=True) for p in parts):
            return parts
        assert time.monotonic() < deadline, f"render instances not back after {timeout} s"
        time.sleep(0.2)


def kill_renders(stack: LocalStack, rounds: int, every_s: float) -> tuple[int, list[float]]:
    """`rounds` times, once every render instance serves again: SIGKILL each one that
    has requests in flight (at least the first backend's, where every job starts),
    whole (server and worker, its process group), as a crashed instance dies with
    the requests it was serving. Returns the kills and each round's wait for the
    restarted instances (seconds: a restart imports the whole function)."""
    killed, waits = 0, []
    for _ in range(rounds):
        time.sleep(every_s)
        waited = time.monotonic()
        parts = serving_renders(stack, timeout=120)
        waits.append(time.monotonic() - waited)
        busy = [p for p in parts if p["name"] == RENDERS[0] or stack.gate(p["name"])["in_flight"]]
        for part in busy:
            os.killpg(part["pid"], signal.SIGKILL)
            killed += 1
    return killed, waits


def test_a_burst_with_render_kills_and_lost_messages_ends_every_job_once_and_frees_its_money(
        stack: LocalStack) -> None:
    stack.fault("replicate", "ok", latency_s=3.0)
    state_dir = Path(stack.state["state_dir"])
    supervisor_from = supervisor_log(stack).stat().st_size
    watchdog_from = len(watchdog_log(stack))
    prompts = [f"a fox, burst {i} {uuid.uuid4().hex[:6]}" for i in range(20)]
    control.lose_messages(LOSE, state_dir)
    try:
        started = time.monotonic()
        ids = [stack.submit(prompt=p)["id"] for p in prompts]
        kills, restarts = kill_renders(stack, rounds=5, every_s=1.5)
        killed_at = time.monotonic()
        # A lost message costs its job one re-drive, within BOUND_S of its last move;
        # the re-drive's own message may be lost too (LOSE of them are), and a killed
        # render's message comes back only after the subscription's backoff.
        ended_at: dict[str, float] = {}
        done = wait_terminal(stack, ids, timeout=2 * BOUND_S + 30, ended_at=ended_at)
        elapsed, after_kills = time.monotonic() - started, time.monotonic() - killed_at
    finally:
        control.lose_messages(0.0, state_dir)

    assert kills >= 5
    statuses = Counter(job["status"] for job in done.values())
    assert set(statuses) <= {"SUCCEEDED", "FAILED"}, statuses
    # Each provider task was created once: the simulator made one task per attempt
    # that records one, no two attempts share a task, and each job's prompt reached
    # a provider once per attempt of it on that provider (a job may fall back to a
    # second backend of the same provider).
    made: Counter[str] = Counter()
    per_job: dict[str, Counter[str]] = {}  # tasks each job's attempts record, by provider
    task_ids: list[str] = []
    for job in done.values():
        per_job[job["id"]] = Counter(CATALOG.get(a["backend"]).provider
                                     for a in job["attempts"] if a["provider_task_id"])
        made += per_job[job["id"]]
        task_ids += [a["provider_task_id"] for a in job["attempts"] if a["provider_task_id"]]
        succeeded = [a for a in job["attempts"] if a["status"] == "SUCCEEDED"]
        assert len(succeeded) == (1 if job["status"] == "SUCCEEDED" else 0), job["attempts"]
    assert len(task_ids) == len(set(task_ids)), task_ids
    for provider in ("replicate", "runway", "veo"):
        tasks = stack.sim_tasks(provider)
        assert stack.sim_stats(provider)["creates"] == made[provider] == len(tasks), provider
        sent = Counter(str(t["prompt"]) for t in tasks)
        for job_id, prompt in zip(ids, prompts, strict=True):
            assert sent[prompt] == per_job[job_id][provider], (
                provider, job_id, done[job_id]["attempts"])
    assert made["replicate"] >= 1
    # Every hold was settled or released.
    deadline = time.monotonic() + 30
    while reserved_usd(stack) != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert reserved_usd(stack) == 0

    # Messages were lost, and the watchdog moved every job that lost one, unless a
    # redelivery of another of its messages (a killed render's, retried after the
    # backoff) came after the loss and moved it first.
    relayed = list(json_lines(supervisor_log(stack).read_bytes()[supervisor_from:].decode()))
    lost = [r for r in relayed if r.get("event") == "message_lost"]
    redelivered_after: dict[str, bool] = defaultdict(bool)
    for record in relayed:
        if record.get("event") == "message_lost":
            redelivered_after[record["job_id"]] = False
        elif record.get("event") == "redelivered" and record.get("job_id") in redelivered_after:
            redelivered_after[record["job_id"]] = True
    redriven: dict[str, set[str]] = defaultdict(set)
    for record in json_lines(watchdog_log(stack)[watchdog_from:]):
        if record.get("metric") == "watchdog_redriven":
            redriven[str(record.get("job_id"))].add(record["metric_labels"]["action"])
    moved = {job_id for job_id, actions in redriven.items() if actions & REDRIVES}
    lost_jobs = {r["job_id"] for r in lost}
    assert lost_jobs <= set(ids), lost_jobs - set(ids)
    assert all("/subscriptions/render-" in r["subscription"] for r in lost), lost
    assert len(lost) >= 3  # at least 0.3 x the 20 dispatches, over three subscriptions
    assert moved, "messages were lost but the watchdog re-drove no job"
    unexplained = {j for j in lost_jobs if j not in moved and not redelivered_after[j]}
    assert not unexplained, (unexplained, lost)
    kinds = Counter("watchdog" if r.get("redrive") else "continuation" if r.get("continuation")
                    else "dispatch" if r.get("attempt") == 0 else "hand-on" for r in lost)
    actions = Counter(a for job_id in moved for a in redriven[job_id])
    print(f"\n20 jobs {dict(statuses)} in {elapsed:.0f} s, {after_kills:.0f} s after the last "
          f"of {kills} render kills (restarts waited {[round(w) for w in restarts]} s; "
          f"bound {BOUND_S:.0f} s); {len(lost)} render messages lost "
          f"{dict(kinds)} of {len(lost_jobs)} jobs; {len(moved)} jobs re-driven "
          f"{dict(actions)}; "
          f"{sum(1 for r in relayed if r.get('event') == 'redelivered')} redeliveries; "
          f"last job {max(ended_at, key=ended_at.__getitem__)} ended at "
          f"{max(ended_at.values()) - started:.0f} s")


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

    claimed = stack.wait(job.id, timeout=BOUND_S, until=lambda j: bool(j["attempts"]))
    # The lost dispatch arrives after all, while the re-driven one renders. (This push
    # was once reset by the peer: the burst's killed gunicorn masters left workers that
    # held the port, queued new connections and reset them on exit; the stack now
    # kills a dead function's whole process group before restarting it.)
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
