"""Shared fixtures. The local stack (real emulators, real function processes, the
simulators) starts once per session on free ports, only for tests that need it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.cloud import firestore, pubsub_v1

from aiprod.adapters.store import job_from_doc
from aiprod.domain.job import TERMINAL_JOB_STATUSES
from aiprod.domain.views import public_job
from aiprod_dev.localstack import control

TERMINAL = TERMINAL_JOB_STATUSES  # job["status"] strings compare equal to the members
# Deliveries before a message is dead-lettered on the tests' stack: Pub/Sub's
# minimum (production: functions.yaml), so dead-letter paths run in seconds.
MAX_DELIVERY_ATTEMPTS = 5
CIRCUIT_COOLDOWN_S = 3
RENDER_DEADLINE_S = 3
# How long a render waits for a backend's call slot (production: 30 s), so the
# busy-backend test sees a render handed back in seconds.
BACKEND_BUSY_WAIT_S = 5


@dataclass
class LocalStack:
    state: dict[str, Any]
    api_key: str = ""  # made by running_stack for the tests (aiprod keys create's code)
    # One connection pool for every call the tests make: a new httpx client per call
    # builds a TLS context each time, which costs more CPU than the call itself.
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))
    _client: firestore.Client | None = field(default=None, repr=False)

    @property
    def api(self) -> str:
        return str(self.state["api_url"])

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header every /v1 call needs."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def new_key(self, name: str, daily_budget_usd: float | None = None,
                rate_limit_rpm: int | None = None) -> str:
        """A new API key in this stack's Firestore, made the way `aiprod keys create` does."""
        from aiprod.adapters.access import FirestoreAccess
        from aiprod.services.access import create_key

        _, key = create_key(FirestoreAccess(self.firestore()), name,
                            daily_budget_usd=daily_budget_usd, rate_limit_rpm=rate_limit_rpm)
        return key

    @property
    def webhook_signing_key(self) -> str:
        return Path(self.state["webhook_signing_key_file"]).read_text().strip()

    def part(self, name: str) -> dict[str, Any]:
        return next(p for p in self.state["parts"] if p["name"] == name)

    def url(self, name: str) -> str:
        return str(self.part(name)["url"])

    def sim(self, provider: str) -> str:
        return self.url(f"sim-{provider}")

    def fault(self, provider: str, mode: str, rate: float = 1.0, **extra: float) -> None:
        self.http.post(f"{self.sim(provider)}/_sim/fault",
                   json={"mode": mode, "rate": rate, **extra}, timeout=10).raise_for_status()

    def gate(self, function: str) -> dict[str, int]:
        """The function's capacity gate: capacity, in flight, peak, admitted, refused (429)."""
        stats: dict[str, int] = self.http.get(f"{self.url(function)}/_gate/stats",
                                              timeout=10).json()
        return stats

    def set_capacity(self, function: str, capacity: int | None = None) -> None:
        """Requests the function serves at once (None: what the stack started with)."""
        if capacity is None:
            capacity = int(self.state["capacity"][function])
        self.http.post(f"{self.url(function)}/_gate/capacity", json={"capacity": capacity},
                       timeout=10).raise_for_status()

    def sim_stats(self, provider: str) -> dict[str, Any]:
        stats: dict[str, Any] = self.http.get(f"{self.sim(provider)}/_sim/stats", timeout=10).json()
        return stats

    def sim_tasks(self, provider: str) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = self.http.get(f"{self.sim(provider)}/_sim/tasks",
                                                timeout=10).json()
        return tasks

    def firestore(self) -> firestore.Client:
        """A client on this stack's Firestore emulator (tests may run two stacks)."""
        saved = os.environ.get("FIRESTORE_EMULATOR_HOST")
        os.environ["FIRESTORE_EMULATOR_HOST"] = self.state["env"]["FIRESTORE_EMULATOR_HOST"]
        try:
            return firestore.Client(project=self.state["project"])
        finally:
            if saved is None:
                os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
            else:
                os.environ["FIRESTORE_EMULATOR_HOST"] = saved

    def reset_health(self) -> None:
        """Forget every backend's strikes and open circuits."""
        client = self.firestore()
        for doc in client.collection("backend_health").list_documents():
            for slot in doc.collection("slots").list_documents():
                slot.delete()
            doc.delete()

    def reset_budget(self) -> None:
        """Start the day's ledger afresh."""
        client = self.firestore()
        client.recursive_delete(client.collection("budget_days"))

    def reset_sims(self) -> None:
        for provider in ("runway", "veo", "replicate"):
            self.http.post(f"{self.sim(provider)}/_sim/reset", timeout=10).raise_for_status()

    def submit(self, **body: Any) -> dict[str, Any]:
        response = self.http.post(f"{self.api}/v1/jobs", json=body, headers=self.auth, timeout=30)
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job

    def job(self, job_id: str, key: str | None = None) -> dict[str, Any]:
        """GET the job as the tests' key (or as `key`, for another caller's job)."""
        headers = {"Authorization": f"Bearer {key}"} if key else self.auth
        response = self.http.get(f"{self.api}/v1/jobs/{job_id}", headers=headers, timeout=30)
        if response.status_code == 404 and key is None:
            # A job no API key owns (published on the intake topic, or stored by a test
            # the way admission stores it) is nobody's to GET: read its document.
            if self._client is None:
                self._client = self.firestore()
            snapshot = self._client.collection("jobs").document(job_id).get()
            doc = snapshot.to_dict() or {}
            if snapshot.exists and not str(doc.get("owner", "")).startswith("key:"):
                return public_job(job_from_doc(doc))
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    def wait(self, job_id: str, timeout: float = 60, until: Callable[[dict[str, Any]], bool]
             = lambda job: job["status"] in TERMINAL, key: str | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id, key)
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: "
                                     f"{json.dumps(job['attempts'])}")
            time.sleep(0.1)

    def push(self, function: str, topic: str, payload: Any, message_id: str | None = None,
             attributes: dict[str, str] | None = None) -> httpx.Response:
        """POST a raw Pub/Sub push body to a function, exactly as the emulator (or
        production Pub/Sub) delivers it; the same message_id twice is a redelivery."""
        return self.push_to(self.url(function), topic, payload, message_id, attributes)

    def push_to(self, url: str, topic: str, payload: Any, message_id: str | None = None,
                attributes: dict[str, str] | None = None) -> httpx.Response:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        message_id = message_id or str(uuid.uuid4().int)[:16]
        body = {"subscription": f"projects/aiprod-local/subscriptions/{topic}",
                "message": {"data": base64.b64encode(data).decode(), "messageId": message_id,
                            "message_id": message_id, "attributes": attributes or {},
                            "publishTime": "2026-11-26T12:00:00.000Z"}}
        return self.http.post(f"{url}/projects/aiprod-local/topics/{topic}", json=body,
                          timeout=120)


@contextlib.contextmanager
def running_stack(state_dir: Path, max_delivery_attempts: int | None = MAX_DELIVERY_ATTEMPTS,
                  **settings: str) -> Iterator[LocalStack]:
    """A whole local stack on free ports; `settings` are AIPROD_* variables for it
    (`max_delivery_attempts` None: functions.yaml's, production's)."""
    with control.environment(settings):
        state = control.up(state_dir, port_base=0, sim_latency_s=0.3,
                           max_delivery_attempts=max_delivery_attempts)
    try:
        started = LocalStack(state)
        started.api_key = started.new_key("tests", rate_limit_rpm=1_000_000)
        yield started
    finally:
        control.down(state_dir)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # A short circuit cool-down, so tests can watch a circuit close again.
    # A short render deadline, so long renders hand off to continuations in seconds.
    with running_stack(tmp_path_factory.mktemp("stack"),
                       AIPROD_CIRCUIT_COOLDOWN_S=str(CIRCUIT_COOLDOWN_S),
                       AIPROD_RENDER_DEADLINE_S=str(RENDER_DEADLINE_S),
                       AIPROD_CREATE_TIMEOUT_S="3",
                       AIPROD_BACKEND_BUSY_WAIT_S=str(BACKEND_BUSY_WAIT_S),
                       # Webhook tests run receivers on this machine (docs/webhooks.md).
                       AIPROD_WEBHOOK_ALLOW_HOSTS="127.0.0.1",
                       # Image-to-video tests serve input images from this machine too.
                       AIPROD_IMAGE_ALLOW_HOSTS="127.0.0.1",
                       AIPROD_UNKNOWN_OUTCOME_WAIT_S="8") as started, \
            control.environment(started.state["env"]):
        yield started


@pytest.fixture
def local(stack: LocalStack) -> Iterator[LocalStack]:
    """The stack with every simulator and backend healthy before each test."""
    stack.reset_sims()
    stack.reset_health()
    yield stack
    stack.reset_sims()


@pytest.fixture
def output_path() -> Callable[[dict[str, Any]], Path]:
    def path(job: dict[str, Any]) -> Path:
        return Path(job["output"]["uri"].removeprefix("file://"))
    return path


@pytest.fixture
def job_events(stack: LocalStack) -> Iterator[tuple[pubsub_v1.SubscriberClient, str]]:
    """A pull subscription on job-events, as another system would have."""
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path("aiprod-local", f"test-events-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=path, topic="projects/aiprod-local/topics/job-events")
    yield subscriber, path
    subscriber.delete_subscription(subscription=path)
