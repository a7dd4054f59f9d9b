"""A message Pub/Sub gives up on reaches the dead-letter function, which ends its job."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

from aiprod.adapters.store import FirestoreJobStore
from aiprod.domain.deadletter import MAX_STARTED_REDRIVES
from aiprod.domain.job import Attempt, AttemptStatus, Job, JobRequest, JobStatus
from aiprod_dev.localstack.processes import free_port
from tests.conftest import LocalStack

pytestmark = pytest.mark.emulator
PROJECT = "aiprod-local"


class Broken(http.server.BaseHTTPRequestHandler):
    """A push endpoint that always fails, as a function with a persistent fault would."""

    deliveries = 0

    def do_POST(self) -> None:
        type(self).deliveries += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def broken_endpoint() -> Iterator[str]:
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Broken)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Broken.deliveries = 0
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


def test_a_render_dead_lettered_past_its_redrives_fails_its_job_and_counts_the_bill(
        local: LocalStack, broken_endpoint: str) -> None:
    """A render whose attempt started is re-driven from the dead letter a bounded number
    of times (the count travels in the message's attributes, through Pub/Sub's dead
    lettering); past it, a render failing on every delivery ends its job."""
    now = dt.datetime.now(dt.UTC)
    job = Job(id=f"job_{uuid.uuid4().hex}", owner="test", request=JobRequest(prompt="doomed"),
              plan=["replicate-seedance"], status=JobStatus.RENDERING, estimated_cost_usd=0.4,
              attempts=[Attempt(backend="replicate-seedance", status=AttemptStatus.RUNNING,
                                provider_task_id="task-in-flight", started_at=now,
                                estimated_cost_usd=0.4)],
              created_at=now, updated_at=now)
    assert FirestoreJobStore(local.firestore()).create(job)
    publisher, subscriber = PublisherClient(), SubscriberClient()
    name = f"broken-{uuid.uuid4().hex[:8]}"
    topic, dead = publisher.topic_path(PROJECT, name), publisher.topic_path(PROJECT, name + "-dl")
    publisher.create_topic(name=topic)
    publisher.create_topic(name=dead)
    subscriber.create_subscription(request={
        "name": subscriber.subscription_path(PROJECT, name), "topic": topic,
        "push_config": {"push_endpoint": broken_endpoint},
        "retry_policy": {"minimum_backoff": dt.timedelta(seconds=1),
                         "maximum_backoff": dt.timedelta(seconds=2)},
        "dead_letter_policy": {"dead_letter_topic": dead, "max_delivery_attempts": 5}})
    subscriber.create_subscription(request={
        "name": subscriber.subscription_path(PROJECT, name + "-dl"), "topic": dead,
        "push_config": {"push_endpoint": f"{local.url('dead-letter')}/{dead}"}})

    message = {"job_id": job.id, "backend": "replicate-seedance", "attempt": 0}
    publisher.publish(topic, json.dumps(message).encode(), job_id=job.id,
                      started_redrives=str(MAX_STARTED_REDRIVES)).result()

    store = FirestoreJobStore(local.firestore())
    deadline = time.monotonic() + 60
    while (done := store.get(job.id)) is not None and not done.status.terminal:
        assert time.monotonic() < deadline, "the dead-lettered job never ended"
        time.sleep(0.2)
    assert done is not None
    assert done.status is JobStatus.FAILED
    assert "dead-lettered" in done.status_reason
    assert "after 5 deliveries" in done.status_reason
    [attempt] = done.attempts
    assert attempt.status is AttemptStatus.FAILED
    assert attempt.error is not None
    assert attempt.error.code == "dead_lettered"
    assert attempt.cost_usd == 0.4  # the task may have been billed: counted
    time.sleep(1)
    assert Broken.deliveries == 5
