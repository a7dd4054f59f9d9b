"""The public contract in files: the OpenAPI document and the intake schema are
generated from the code and checked in; API keys and webhook signatures have
the documented formats."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from aiprod.domain.apikeys import hash_key, key_id_of, matches, new_key
from aiprod.domain.job import (
    Attempt,
    AttemptError,
    AttemptStatus,
    ErrorClass,
    Job,
    JobRequest,
    JobStatus,
    Output,
)
from aiprod.domain.views import public_job
from aiprod.http import openapi
from aiprod.services import webhooks
from aiprod.services.access import fingerprint

REGENERATE = "run `make openapi` and commit the result"


def test_the_checked_in_openapi_document_is_the_codes() -> None:
    checked_in = openapi.OPENAPI_PATH.read_text()
    assert checked_in == openapi.render(openapi.document()), REGENERATE


def test_the_checked_in_intake_schema_is_the_codes() -> None:
    checked_in = openapi.JOB_REQUEST_SCHEMA.read_text()
    assert checked_in == openapi.render(openapi.job_request_schema()), REGENERATE


def test_the_drift_check_notices_a_change(tmp_path: Path) -> None:
    (written, _) = openapi.write(tmp_path)
    assert written.read_text() == openapi.render(openapi.document())
    changed = json.loads(written.read_text())
    changed["paths"].pop("/v1/budget")
    assert openapi.render(changed) != openapi.render(openapi.document())


def test_the_document_is_openapi_31_with_every_route_and_bearer_auth() -> None:
    document = openapi.document()
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}:cancel",
                                      "/v1/quote", "/v1/backends", "/v1/budget", "/healthz",
                                      "/v1/openapi.json", "/v1/videos", "/v1/videos/{video_id}",
                                      "/v1/videos/{video_id}/content"}
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert document["paths"]["/healthz"]["get"]["security"] == []
    create = document["paths"]["/v1/jobs"]["post"]
    assert {"200", "201", "400", "401", "413", "415", "422", "429"} <= set(create["responses"])
    assert create["parameters"][0]["name"] == "Idempotency-Key"


def test_the_intake_schema_is_versioned_and_as_strict_as_the_api() -> None:
    schema = openapi.job_request_schema()
    assert schema["$id"].endswith(":v1")
    assert schema["additionalProperties"] is False
    assert schema["properties"]["schema_version"]["const"] == 1


def a_job(**changes: object) -> Job:
    now = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
    job = Job(id="job_" + "a" * 32, owner="key:0123456789ab",
              request=JobRequest(prompt="a fox", webhook_url="https://example.com/hook",
                                 metadata={"k": "v"}),
              plan=["replicate-seedance", "runway-gen45"], status=JobStatus.SUCCEEDED,
              attempts=[Attempt(backend="replicate-seedance", status=AttemptStatus.FAILED,
                                started_at=now, ended_at=now, estimated_cost_usd=0.4,
                                error=AttemptError(error_class=ErrorClass.TRANSIENT,
                                                   code="http_503", message="down")),
                        Attempt(backend="runway-gen45", status=AttemptStatus.SUCCEEDED,
                                provider_task_id="t1", started_at=now, ended_at=now,
                                estimated_cost_usd=0.6, cost_usd=0.6)],
              output=Output(uri="gs://b/o.mp4", duration_seconds=5, width=1280, height=720,
                            bytes=1000, sha256="0" * 64),
              estimated_cost_usd=0.4, cost_usd=0.6, quality_score=0.9, created_at=now,
              updated_at=now)
    return job.model_copy(update=changes)


@pytest.mark.parametrize("job", [a_job(), a_job(output=None, attempts=[], cost_usd=0.0,
                                                status=JobStatus.QUEUED, quality_score=None)])
def test_the_public_job_matches_its_documented_schema(job: Job) -> None:
    """JobView forbids unknown fields: public_job() cannot drift from the document."""
    openapi.JobView.model_validate(public_job(job, "https://signed.example/url"))


def test_the_documented_schema_would_notice_an_undocumented_field() -> None:
    body = public_job(a_job()) | {"secret_owner": "key:0123456789ab"}
    with pytest.raises(ValidationError):
        openapi.JobView.model_validate(body)


def test_an_api_key_is_random_and_only_its_hash_is_needed() -> None:
    key_id, key = new_key()
    other_id, other = new_key()
    assert key.startswith(f"aiprod_{key_id}_")
    assert key_id != other_id
    assert key != other
    assert len(key) == len("aiprod_") + 12 + 1 + 43
    assert key_id_of(key) == key_id
    assert matches(key, hash_key(key))
    assert not matches(other, hash_key(key))
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    for bad in ("", "aiprod_", key + "x", key.replace("aiprod_", "other_"), key[:-1]):
        assert key_id_of(bad) is None


def test_the_idempotency_fingerprint_ignores_key_order_not_content() -> None:
    a = JobRequest.model_validate_json('{"prompt": "fox", "duration_seconds": 5}')
    b = JobRequest.model_validate_json('{"duration_seconds": 5,   "prompt": "fox"}')
    c = JobRequest.model_validate_json('{"prompt": "fox", "duration_seconds": 6}')
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_signatures_match_the_standard_webhooks_reference_example() -> None:
    """The example from the Standard Webhooks specification."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = webhooks.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                              b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_receiver_verifies_and_rejects_a_tampered_body() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = b'{"type":"job.succeeded"}'
    headers = {"webhook-id": "job_1:job.succeeded", "webhook-timestamp": "1700000000",
               "webhook-signature": webhooks.sign(secret, "job_1:job.succeeded", 1700000000,
                                                  body)}
    assert webhooks.verify(secret, headers, body)
    assert not webhooks.verify(secret, headers, body.replace(b"succeeded", b"failed"))
    # the same computation a receiver writes by hand (docs/webhooks.md)
    mac = hmac.new(base64.b64decode(secret[6:]), b"job_1:job.succeeded.1700000000." + body,
                   hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_a_weak_or_malformed_signing_key_is_refused() -> None:
    with pytest.raises(ValueError, match="base64"):
        webhooks.secret_bytes("whsec_not base64!")
    with pytest.raises(ValueError, match="24"):
        webhooks.secret_bytes("whsec_" + base64.b64encode(b"short").decode())


def test_the_documented_verification_snippet_verifies_aiprod_signatures() -> None:
    """docs/webhooks.md's Python snippet, run as written, against a real signature."""
    text = (openapi.REPO_ROOT / "docs" / "webhooks.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(snippet, "docs/webhooks.md", "exec"), namespace)  # noqa: S102 (our own doc)
    verify_webhook = namespace["verify_webhook"]
    assert callable(verify_webhook)
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    body = b'{"type":"job.failed","data":{}}'
    now = int(time.time())
    headers = {"Webhook-Id": "job_2:job.failed", "Webhook-Timestamp": str(now),
               "Webhook-Signature": "v1,bogus " + webhooks.sign(secret, "job_2:job.failed",
                                                                now, body)}
    assert verify_webhook(secret, headers, body)
    assert not verify_webhook(secret, headers, body[:-1])
    assert not verify_webhook("whsec_" + base64.b64encode(b"t" * 32).decode(), headers, body)
    stale = headers | {"Webhook-Timestamp": str(now - 3600),
                       "Webhook-Signature": webhooks.sign(secret, "job_2:job.failed",
                                                          now - 3600, body)}
    assert not verify_webhook(secret, stale, body)
