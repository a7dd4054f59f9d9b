"""The public doors, through the real stack: API keys, per-key limits, callers'
own jobs, Idempotency-Key, strict bodies, webhook address rules, the intake
topic's answers, and signed webhooks retried through Pub/Sub."""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from google.cloud import firestore, pubsub_v1

from aiprod_dev.cli.main import main as cli
from tests.conftest import LocalStack

pytestmark = pytest.mark.emulator

PROVIDERS = ("runway", "veo", "replicate")
V1_ROUTES = [("POST", "/v1/jobs"), ("GET", "/v1/jobs/job_" + "0" * 32),
             ("POST", "/v1/jobs/job_" + "0" * 32 + ":cancel"), ("GET", "/v1/quote?prompt=fox"),
             ("GET", "/v1/backends"), ("GET", "/v1/budget"), ("GET", "/v1/nothing-here")]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def jobs_with_prompt(stack: LocalStack, prompt: str) -> list[dict[str, Any]]:
    query = stack.firestore().collection("jobs").where(
        filter=firestore.FieldFilter("request.prompt", "==", prompt))
    return [d.to_dict() or {} for d in query.stream()]


def all_jobs(stack: LocalStack) -> int:
    return int(stack.firestore().collection("jobs").count().get()[0][0].value)


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"urn:aiprod:problem:{slug}", problem
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    return problem


# --- Callers ---------------------------------------------------------------------------

@pytest.mark.parametrize(("authorization", "slug"), [
    (None, "unauthenticated"),
    ("", "unauthenticated"),
    ("Bearer", "unauthenticated"),
    ("Basic dXNlcjpwYXNz", "unauthenticated"),
    ("Bearer not-a-key", "invalid-api-key"),
    ("Bearer aiprod_0123456789ab_" + "A" * 43, "invalid-api-key"),  # well-formed, unknown
])
def test_a_call_without_a_valid_key_gets_401_and_creates_nothing(
        local: LocalStack, authorization: str | None, slug: str) -> None:
    before = all_jobs(local)
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in V1_ROUTES:
        response = httpx.request(method, f"{local.api}{path}", headers=headers, timeout=30,
                                 json={"prompt": "a fox nobody pays for"})
        problem = assert_problem(response, 401, slug)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert problem["field"] == "Authorization"
    assert all_jobs(local) == before
    assert all(local.sim_stats(p)["requests"] == 0 for p in PROVIDERS)


def test_health_and_the_openapi_document_need_no_key(local: LocalStack) -> None:
    assert httpx.get(f"{local.api}/healthz", timeout=30).json() == {"status": "ok"}
    document = httpx.get(f"{local.api}/v1/openapi.json", timeout=30)
    assert document.status_code == 200
    assert document.json()["openapi"] == "3.1.0"


def test_keys_are_created_listed_and_revoked_with_the_cli(local: LocalStack) -> None:
    runner = CliRunner()
    created = runner.invoke(cli, ["keys", "create", "--name", "partner-a", "--rpm", "50",
                                  "--daily-budget", "3"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    key_id = key.split("_")[1]
    assert httpx.get(f"{local.api}/v1/backends", headers=bearer(key), timeout=30).is_success

    listed = runner.invoke(cli, ["keys", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    mine = next(k for k in json.loads(listed.stdout) if k["id"] == key_id)
    assert (mine["name"], mine["rate_limit_rpm"], mine["daily_budget_usd"]) == (
        "partner-a", 50, 3.0)
    assert mine["revoked_at"] is None
    # Firestore keeps the hash only: neither the key nor its secret part is stored anywhere.
    stored = local.firestore().collection("api_keys").document(key_id).get().to_dict() or {}
    assert stored["hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in json.dumps(stored, default=str)
    assert key not in listed.stdout
    assert key.split("_", 2)[2] not in json.dumps(stored, default=str)

    revoked = runner.invoke(cli, ["keys", "revoke", key_id])
    assert revoked.exit_code == 0, revoked.output
    response = httpx.get(f"{local.api}/v1/backends", headers=bearer(key), timeout=30)
    assert_problem(response, 401, "revoked-api-key")
    before = all_jobs(local)
    refused = httpx.post(f"{local.api}/v1/jobs", json={"prompt": "after revocation"},
                         headers=bearer(key), timeout=30)
    assert_problem(refused, 401, "revoked-api-key")
    assert all_jobs(local) == before


def test_callers_see_only_their_own_jobs(local: LocalStack) -> None:
    alice, bob = local.new_key("alice"), local.new_key("bob")
    created = httpx.post(f"{local.api}/v1/jobs", json={"prompt": "alice's fox"},
                         headers=bearer(alice), timeout=30)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    seen_by_bob = httpx.get(f"{local.api}/v1/jobs/{job_id}", headers=bearer(bob), timeout=30)
    problem = assert_problem(seen_by_bob, 404, "job-not-found")
    assert alice not in seen_by_bob.text
    assert "alice" not in problem["detail"]
    cancelled_by_bob = httpx.post(f"{local.api}/v1/jobs/{job_id}:cancel", headers=bearer(bob),
                                  timeout=30)
    assert_problem(cancelled_by_bob, 404, "job-not-found")

    done = local.wait(job_id, key=alice)
    assert done["status"] == "SUCCEEDED"  # bob's cancel did nothing


def test_a_key_over_its_rate_limit_gets_429_until_the_minute_ends(local: LocalStack) -> None:
    key = local.new_key("slow partner", rate_limit_rpm=3)
    second = dt.datetime.now(dt.UTC).second
    if second > 45:  # keep all four requests inside one fixed window
        time.sleep(61 - second)
    replies = [httpx.get(f"{local.api}/v1/backends", headers=bearer(key), timeout=30)
               for _ in range(4)]
    assert [r.status_code for r in replies[:3]] == [200, 200, 200]
    problem = assert_problem(replies[3], 429, "rate-limited")
    assert problem["limit"] == "requests_per_minute"
    assert problem["limit_value"] == 3
    resets = dt.datetime.fromisoformat(problem["resets_at"])
    assert resets.second == 0
    assert resets > dt.datetime.now(dt.UTC)
    assert 1 <= int(replies[3].headers["Retry-After"]) <= 60
    # another key is not slowed down by this one
    assert httpx.get(f"{local.api}/v1/backends", headers=local.auth, timeout=30).is_success


def test_a_key_over_its_daily_budget_gets_429_naming_that_budget(local: LocalStack) -> None:
    key = local.new_key("frugal partner", daily_budget_usd=0.5)
    first = httpx.post(f"{local.api}/v1/jobs", json={"prompt": "a frugal fox"},
                       headers=bearer(key), timeout=30)
    assert first.status_code == 201, first.text
    assert first.json()["estimated_cost_usd"] == pytest.approx(0.4)
    done = local.wait(first.json()["id"], key=key)
    assert done["status"] == "SUCCEEDED"

    second = httpx.post(f"{local.api}/v1/jobs", json={"prompt": "one fox too many"},
                        headers=bearer(key), timeout=30)
    problem = assert_problem(second, 429, "rejected-budget-exhausted")
    assert problem["limit"] == "key_daily_budget"
    assert problem["budget"]["limit_usd"] == 0.5
    assert problem["budget"]["spent_usd"] == pytest.approx(0.4)
    assert dt.datetime.fromisoformat(problem["resets_at"]).time() == dt.time(0, 0)
    assert int(second.headers["Retry-After"]) > 0
    assert jobs_with_prompt(local, "one fox too many") == []
    figures = httpx.get(f"{local.api}/v1/budget", headers=bearer(key), timeout=30).json()
    assert figures["key"]["left_usd"] == pytest.approx(0.1)
    # the same job from a key without its own budget still goes through
    assert httpx.post(f"{local.api}/v1/jobs", json={"prompt": "one fox too many"},
                      headers=local.auth, timeout=30).status_code == 201


# --- Idempotency-Key --------------------------------------------------------------------

def test_a_retry_with_the_same_idempotency_key_returns_the_same_job(local: LocalStack) -> None:
    prompt = f"an idempotent fox {uuid.uuid4().hex[:6]}"
    headers = local.auth | {"Idempotency-Key": str(uuid.uuid4())}
    first = httpx.post(f"{local.api}/v1/jobs", json={"prompt": prompt, "duration_seconds": 5},
                       headers=headers, timeout=30)
    assert first.status_code == 201, first.text
    # the same body, spelled differently, is the same request
    again = httpx.post(f"{local.api}/v1/jobs", content=json.dumps(
        {"duration_seconds": 5, "prompt": prompt}, indent=2),
        headers=headers | {"Content-Type": "application/json"}, timeout=30)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == f"/v1/jobs/{first.json()['id']}"

    other = httpx.post(f"{local.api}/v1/jobs", json={"prompt": prompt, "duration_seconds": 6},
                       headers=headers, timeout=30)
    problem = assert_problem(other, 422, "idempotency-key-reused")
    assert problem["field"] == "Idempotency-Key"

    done = local.wait(first.json()["id"])
    assert done["status"] == "SUCCEEDED"
    assert len(jobs_with_prompt(local, prompt)) == 1
    tasks = [t for t in local.sim_tasks("replicate") if t["prompt"] == prompt]
    assert len(tasks) == 1  # rendered, and charged, once
    assert done["cost_usd"] == pytest.approx(0.4)
    record = next(iter(local.firestore().collection("idempotency_keys").where(
        filter=firestore.FieldFilter("job_id", "==", done["id"])).stream())).to_dict() or {}
    assert record["expires_at"] - record["created_at"] == dt.timedelta(hours=24)

    # Idempotency keys belong to their caller: another key's same value is another job.
    stranger = local.new_key("stranger")
    theirs = httpx.post(f"{local.api}/v1/jobs", json={"prompt": prompt, "duration_seconds": 5},
                        headers=bearer(stranger) | {"Idempotency-Key": headers[
                            "Idempotency-Key"]}, timeout=30)
    assert theirs.status_code == 201
    assert theirs.json()["id"] != done["id"]


def test_concurrent_retries_with_one_idempotency_key_make_one_job(local: LocalStack) -> None:
    prompt = f"a fox sent eight times at once {uuid.uuid4().hex[:6]}"
    headers = local.auth | {"Idempotency-Key": f"order-{uuid.uuid4()}"}

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{local.api}/v1/jobs", json={"prompt": prompt}, headers=headers,
                          timeout=60)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(post, range(8)))

    assert sorted(r.status_code for r in replies) == [200] * 7 + [201], [r.text for r in replies]
    assert len({r.json()["id"] for r in replies}) == 1
    done = local.wait(replies[0].json()["id"])
    assert done["status"] == "SUCCEEDED"
    assert len(jobs_with_prompt(local, prompt)) == 1
    assert len([t for t in local.sim_tasks("replicate") if t["prompt"] == prompt]) == 1


@pytest.mark.parametrize("value", ["", "x" * 256, "has a space"])
def test_a_malformed_idempotency_key_is_a_400(local: LocalStack, value: str) -> None:
    response = httpx.post(f"{local.api}/v1/jobs", json={"prompt": "fox"},
                          headers=local.auth | {"Idempotency-Key": value}, timeout=30)
    assert assert_problem(response, 400, "invalid-idempotency-key")["field"] == "Idempotency-Key"


# --- Strict requests --------------------------------------------------------------------

@pytest.mark.parametrize(("body", "content_type", "status", "slug", "field"), [
    (b'{"prompt": "' + b"f" * (64 * 1024) + b'"}', "application/json", 413, "body-too-large",
     "body"),
    (b'{"prompt": "fox"}', "text/plain", 415, "unsupported-media-type", "Content-Type"),
    (b"prompt=fox", "application/x-www-form-urlencoded", 415, "unsupported-media-type",
     "Content-Type"),
    (b'["prompt", "fox"]', "application/json", 400, "malformed-json", "body"),
    (b'{"prompt": "fox", "audio": "yes"}', "application/json", 400, "invalid-request", "audio"),
    (b'{"prompt": "fox", "duration_seconds": 5.5}', "application/json", 400,
     "invalid-request", "duration_seconds"),
    (b'{"prompt": "fox\\u0000"}', "application/json", 400, "invalid-request", "prompt"),
    (b'{"prompt": "fox", "metadata": {"k": 1}}', "application/json", 400, "invalid-request",
     "metadata.k"),
    (json.dumps({"prompt": "f" * 2600}).encode(), "application/json", 422,
     "rejected-unsupported", "prompt"),  # longer than every backend takes (Kling: 2500)
    (b'{"prompt": "fox", "duration_seconds": 45}', "application/json", 422,
     "rejected-unsupported", "duration_seconds"),
    (b'{"prompt": "fox", "min_quality": 0.99}', "application/json", 422, "rejected-quality",
     "min_quality"),
    (b'{"prompt": "fox", "max_cost_usd": 0.01}', "application/json", 422,
     "rejected-over-job-ceiling", "max_cost_usd"),
])
def test_a_bad_body_gets_a_problem_naming_the_field_and_creates_nothing(
        local: LocalStack, body: bytes, content_type: str, status: int, slug: str,
        field: str) -> None:
    before = all_jobs(local)
    response = httpx.post(f"{local.api}/v1/jobs", content=body,
                          headers=local.auth | {"Content-Type": content_type}, timeout=30)
    assert assert_problem(response, status, slug)["field"] == field
    assert all_jobs(local) == before
    assert all(local.sim_stats(p)["requests"] == 0 for p in PROVIDERS)


@pytest.mark.parametrize(("url", "kind"), [
    ("http://example.com/hook", "https"),
    # (127.0.0.1 itself is the test stack's webhook receiver host: the dev override)
    ("https://127.0.0.2/hook", "loopback"),
    ("https://10.0.0.1/hook", "private"),
    ("https://172.16.5.4/hook", "private"),
    ("https://192.168.1.1/hook", "private"),
    ("https://169.254.169.254/computeMetadata/v1/", "metadata"),
    ("https://[::1]/hook", "loopback"),
    ("https://[fc00::1]/hook", "private"),
    ("https://localhost/hook", "loopback"),  # a name that resolves to 127.0.0.1
    ("https://user:pw@example.com/hook", "password"),
])
def test_a_webhook_url_to_an_internal_address_is_refused(local: LocalStack, url: str,
                                                        kind: str) -> None:
    before = all_jobs(local)
    response = httpx.post(f"{local.api}/v1/jobs", json={"prompt": "fox", "webhook_url": url},
                          headers=local.auth, timeout=30)
    problem = assert_problem(response, 400, "unsafe-url")
    assert problem["field"] == "webhook_url"
    assert kind in problem["detail"]
    assert all_jobs(local) == before


# --- Intake -----------------------------------------------------------------------------

def pull_events(subscriber: pubsub_v1.SubscriberClient, path: str, wanted: set[str],
                done: Callable[[list[dict[str, Any]]], bool], settle: float = 0,
                timeout: float = 30) -> list[dict[str, Any]]:
    """Events whose correlation_id is wanted: pulled until `done` says so, then for
    `settle` seconds more (to see any redelivery)."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    finished = False
    while time.monotonic() < deadline:
        if not finished and done(found):
            finished = True
            deadline = min(deadline, time.monotonic() + settle)
        reply = subscriber.pull(subscription=path, max_messages=100, timeout=5)
        if reply.received_messages:
            subscriber.acknowledge(subscription=path,
                                   ack_ids=[m.ack_id for m in reply.received_messages])
        for received in reply.received_messages:
            event = json.loads(received.message.data)
            if event.get("correlation_id") in wanted:
                found.append(event | {"attributes": dict(received.message.attributes)})
        time.sleep(0.2)
    return found


def test_an_invalid_intake_message_is_acknowledged_and_answered_rejected(
        local: LocalStack, job_events: tuple[pubsub_v1.SubscriberClient, str]) -> None:
    subscriber, path = job_events
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path("aiprod-local", "video-jobs")
    run = uuid.uuid4().hex[:8]
    cases = {
        f"{run}-not-json": (b"{this is not json", "invalid-request", "not a JSON job request"),
        f"{run}-unknown-field": (json.dumps({"prompt": "fox", "colour": "red"}).encode(),
                                 "invalid-request", "colour"),
        f"{run}-wrong-type": (json.dumps({"prompt": "fox", "duration_seconds": "5"}).encode(),
                              "invalid-request", "duration_seconds"),
        f"{run}-unsafe-webhook": (json.dumps({"prompt": "fox",
                                              "webhook_url": "https://10.1.1.1/"}).encode(),
                                  "unsafe-url", "private"),
        f"{run}-unsupported": (json.dumps({"prompt": "fox", "duration_seconds": 45}).encode(),
                               "unsupported", "no backend"),
    }
    before = all_jobs(local)
    for correlation_id, (data, _, _) in cases.items():
        publisher.publish(topic, data, correlation_id=correlation_id).result(timeout=30)

    events = pull_events(subscriber, path, set(cases),
                         lambda found: {e["correlation_id"] for e in found} == set(cases),
                         settle=3)

    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_id.setdefault(event["correlation_id"], []).append(event)
    assert set(by_id) == set(cases), events
    for correlation_id, (_, code, reason) in cases.items():
        [event] = by_id[correlation_id]  # acknowledged: answered once, not retried
        assert event["type"] == "job.rejected"
        assert event["status"] == "REJECTED"
        assert event["code"] == code
        assert reason in event["reason"], event["reason"]
        assert event["schema"] == "urn:aiprod:schema:job-request:v1"
        assert event["attributes"]["correlation_id"] == correlation_id
    assert all_jobs(local) == before


def test_a_valid_intake_message_is_owned_by_its_publisher(
        local: LocalStack, job_events: tuple[pubsub_v1.SubscriberClient, str]) -> None:
    subscriber, path = job_events
    publisher = pubsub_v1.PublisherClient()
    correlation_id = f"order-{uuid.uuid4().hex[:8]}"
    prompt = f"a fox from the shop system {correlation_id}"
    publisher.publish(publisher.topic_path("aiprod-local", "video-jobs"),
                      json.dumps({"prompt": prompt}).encode(), correlation_id=correlation_id,
                      publisher="shop").result(timeout=30)
    events = pull_events(subscriber, path, {correlation_id},
                         lambda found: any(e["type"] == "job.queued" for e in found))
    assert "job.queued" in {e["type"] for e in events}
    [job] = jobs_with_prompt(local, prompt)
    assert job["owner"] == "pubsub:shop"
    # an HTTP caller cannot read a job another system published
    assert httpx.get(f"{local.api}/v1/jobs/{job['id']}", headers=local.auth,
                     timeout=30).status_code == 404


# --- Webhooks ---------------------------------------------------------------------------

@dataclass
class Receiver:
    """A webhook receiver that fails its first `failures` deliveries."""

    failures: int
    deliveries: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    status = 503 if len(receiver.deliveries) < receiver.failures else 204
                    receiver.deliveries.append((status, dict(self.headers.items()), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver(failures=2)
    server = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/hooks/aiprod?tenant=7"
    server.shutdown()
    server.server_close()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """docs/webhooks.md's recipe, written out independently of aiprod's own code."""
    lower = {k.lower(): v for k, v in headers.items()}
    signed = f"{lower['webhook-id']}.{lower['webhook-timestamp']}.".encode() + body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, sig.split(",", 1)[1])
               for sig in lower["webhook-signature"].split() if sig.startswith("v1,"))


def test_a_receiver_that_fails_twice_gets_one_verifiable_delivery(
        local: LocalStack, receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    job = local.submit(prompt="a fox with a webhook", webhook_url=url, metadata={"order": "7"})
    done = local.wait(job["id"])
    assert done["status"] == "SUCCEEDED"

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(s == 204 for s, _, _ in state.deliveries):
        time.sleep(0.2)
    time.sleep(3)  # nothing more arrives after the success

    statuses = [s for s, _, _ in state.deliveries]
    assert statuses == [503, 503, 204], statuses
    ids = {h["webhook-id"] for _, h, _ in state.deliveries}
    assert ids == {f"{job['id']}:job.succeeded"}  # one logical delivery, one stable id
    secret = local.webhook_signing_key
    for _, headers, body in state.deliveries:
        assert verify(secret, headers, body)
        assert not verify(secret, headers, body + b" ")
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 120
        assert headers["Content-Type"] == "application/json"
    payload = json.loads(state.deliveries[-1][2])
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job["id"]
    assert payload["data"]["status"] == "SUCCEEDED"
    assert payload["data"]["metadata"] == {"order": "7"}
    assert payload["data"]["output"]["sha256"] == done["output"]["sha256"]
    # the signing key never reaches the job document or the API
    stored = local.firestore().collection("jobs").document(job["id"]).get().to_dict()
    assert secret not in json.dumps(stored, default=str)
    assert secret not in json.dumps(done)


def test_doubled_slashes_do_not_skip_the_key_check(local: LocalStack) -> None:
    for path in ("//v1/backends", "//v1//budget", "/v1//jobs/x"):
        response = httpx.get(f"{local.api}{path}", timeout=30)
        assert response.status_code == 401, path
