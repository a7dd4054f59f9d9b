"""Download URLs signed as production signs them: the runtime's compute-engine
credentials (a token from the metadata server) and IAM signBlob.

No emulator shows signBlob, so the test stands up the two endpoints google-auth
and google-cloud-storage really call: a metadata server (GCE_METADATA_HOST) and
iamcredentials.googleapis.com behind a local HTTPS proxy (HTTPS_PROXY, with a test
CA in REQUESTS_CA_BUNDLE), which refuses signBlob the way Google does when the IAM
Service Account Credentials API is not enabled (403 SERVICE_DISABLED,
https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/signBlob).
No request leaves the machine.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import logging
import socketserver
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.auth import compute_engine
from google.auth.compute_engine import _metadata
from google.cloud import storage
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from aiprod.adapters.access import FirestoreAccess
from aiprod.adapters.bus import PubSubBus
from aiprod.adapters.health import FirestoreHealth
from aiprod.adapters.ledger import FirestoreLedger
from aiprod.adapters.reuse import FirestoreReuseIndex
from aiprod.adapters.storage import GcsOutputStore, SigningUnavailable
from aiprod.adapters.store import FirestoreJobStore
from aiprod.domain.job import Job, JobRequest, JobStatus, Output
from aiprod.http import api
from aiprod.services.access import create_key
from aiprod.wiring.config import Settings
from aiprod.wiring.runtime import Runtime
from tests.conftest import LocalStack

pytestmark = pytest.mark.emulator

SERVICE_ACCOUNT = "aiprod-api@aiprod-test.iam.gserviceaccount.com"
TOKEN = "ya29.test-token-that-must-never-be-logged"
SERVICE_DISABLED = {"error": {
    "code": 403, "status": "PERMISSION_DENIED",
    "message": "IAM Service Account Credentials API has not been used in project 123 "
               "before or it is disabled.",
    "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                 "reason": "SERVICE_DISABLED", "domain": "googleapis.com"}]}}


@dataclass
class Seen:
    token_requests: int = 0
    sign_requests: list[str] = field(default_factory=list)  # Authorization headers
    sign_paths: list[str] = field(default_factory=list)


def _certificate(tmp: Path) -> tuple[Path, Path, Path]:
    """A test CA and a certificate for iamcredentials.googleapis.com it signed."""
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aiprod test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    host = "iamcredentials.googleapis.com"
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "leaf.pem", tmp / "leaf.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


def _metadata_server(seen: Seen) -> socketserver.TCPServer:
    """The two metadata paths compute_engine.Credentials.refresh reads."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert self.headers["Metadata-Flavor"] == "Google"
            path = self.path.split("?")[0]
            accounts = ("/service-accounts/default/", f"/service-accounts/{SERVICE_ACCOUNT}/")
            if path.endswith(accounts):
                body: dict[str, Any] = {"email": SERVICE_ACCOUNT, "aliases": ["default"],
                                        "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
            elif path.endswith("/token"):
                seen.token_requests += 1
                body = {"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"}
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Metadata-Flavor", "Google")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def _iam_proxy(seen: Seen, cert: Path, key: Path) -> socketserver.TCPServer:
    """An HTTPS proxy that is iamcredentials.googleapis.com for CONNECTs to it, and
    refuses signBlob with Google's SERVICE_DISABLED answer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            head = self.rfile.readline().decode()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            if not head.startswith("CONNECT iamcredentials.googleapis.com:443 "):
                self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            with context.wrap_socket(self.connection, server_side=True) as tls:
                reader = tls.makefile("rb")
                line = reader.readline().decode()
                headers: dict[str, str] = {}
                while (header := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                reader.read(int(headers.get("content-length", "0")))
                if ":signBlob" in line:
                    seen.sign_requests.append(headers.get("authorization", ""))
                    seen.sign_paths.append(line.split()[1].split("?")[0])
                data = json.dumps(SERVICE_DISABLED).encode()
                tls.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                            b"Connection: close\r\nContent-Length: "
                            + str(len(data)).encode() + b"\r\n\r\n" + data)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    return Server(("127.0.0.1", 0), Handler)


@pytest.fixture
def refusing_iam(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 stack: LocalStack) -> Iterator[Seen]:
    seen = Seen()
    ca, cert, key = _certificate(tmp_path)
    servers = [_metadata_server(seen), _iam_proxy(seen, cert, key)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    metadata_port = servers[0].server_address[1]
    proxy_port = servers[1].server_address[1]
    # GCE_METADATA_HOST is read when google-auth is imported: set what it would set.
    monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", f"127.0.0.1:{metadata_port}")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy_port}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    for name in ("NO_PROXY", "no_proxy", "https_proxy", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", stack.state["env"]["PUBSUB_EMULATOR_HOST"])
    try:
        yield seen
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _runtime(stack: LocalStack, outputs: GcsOutputStore) -> Runtime:
    db = stack.firestore()
    settings = Settings()
    return Runtime(settings=settings, catalog=settings.catalog(), store=FirestoreJobStore(db),
                   bus=PubSubBus(stack.state["project"]), outputs=outputs,
                   ledger=FirestoreLedger(db), health=FirestoreHealth(db),
                   access=FirestoreAccess(db), reuse=FirestoreReuseIndex(db))


def _finished_job(rt: Runtime, owner: str) -> Job:
    now = dt.datetime.now(dt.UTC)
    job = Job(id=f"job_{uuid.uuid4().hex}",
              owner=owner, request=JobRequest(prompt="a fox"), plan=["runway-gen4-turbo"],
              status=JobStatus.SUCCEEDED, estimated_cost_usd=0.25, cost_usd=0.25,
              output=Output(uri="gs://aiprod-outputs/outputs/jobs/x/output.mp4",
                            duration_seconds=5, width=1280, height=720, bytes=1000,
                            sha256="0" * 64),
              created_at=now, updated_at=now)
    assert rt.store.create(job)
    return job


def _get(rt: Runtime, path: str, key: str) -> tuple[int, dict[str, Any]]:
    environ = EnvironBuilder(path=path, headers={"Authorization": f"Bearer {key}"}).get_environ()
    response = api.handle(rt, Request(environ))
    return response.status_code, json.loads(response.get_data())


def test_a_refused_signature_still_answers_the_job_with_its_uri(
        refusing_iam: Seen, stack: LocalStack, caplog: pytest.LogCaptureFixture) -> None:
    credentials = compute_engine.Credentials()  # what the Cloud Functions runtime gives
    client = storage.Client(project="aiprod-test", credentials=credentials)
    rt = _runtime(stack, GcsOutputStore("aiprod-outputs", "outputs", client=client))
    record, key = create_key(rt.access, "signing-test")
    job = _finished_job(rt, record.owner)

    with caplog.at_level(logging.WARNING, logger="aiprod.http.api"):
        status, body = _get(rt, f"/v1/jobs/{job.id}", key)

    assert status == 200, body
    assert body["status"] == "SUCCEEDED"
    assert body["output"]["uri"] == "gs://aiprod-outputs/outputs/jobs/x/output.mp4"
    assert body["output"]["download_url"] is None
    assert refusing_iam.sign_requests == [f"Bearer {TOKEN}"]  # signBlob was really asked
    # ... as the function's own service account, not "default"
    assert refusing_iam.sign_paths == [
        f"/v1/projects/-/serviceAccounts/{SERVICE_ACCOUNT}:signBlob"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no download URL" in warnings[0].getMessage()
    assert "SERVICE_DISABLED" in warnings[0].getMessage()  # the operator learns why
    assert TOKEN not in caplog.text


def test_a_valid_token_is_not_refreshed_again(refusing_iam: Seen, stack: LocalStack) -> None:
    credentials = compute_engine.Credentials()
    client = storage.Client(project="aiprod-test", credentials=credentials)
    rt = _runtime(stack, GcsOutputStore("aiprod-outputs", "outputs", client=client))
    record, key = create_key(rt.access, "signing-test")
    job = _finished_job(rt, record.owner)

    for _ in range(3):
        assert _get(rt, f"/v1/jobs/{job.id}", key)[0] == 200
    assert len(refusing_iam.sign_requests) == 3
    assert refusing_iam.token_requests == 1  # one metadata round trip for three GETs

    in_use = client._credentials  # the client's scoped copy of `credentials`
    in_use.expiry = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=1)
    assert _get(rt, f"/v1/jobs/{job.id}", key)[0] == 200
    assert refusing_iam.token_requests == 2  # expired: refreshed once more


def test_concurrent_gets_share_one_refresh(refusing_iam: Seen, stack: LocalStack) -> None:
    credentials = compute_engine.Credentials()
    client = storage.Client(project="aiprod-test", credentials=credentials)
    store = GcsOutputStore("aiprod-outputs", "outputs", client=client)
    errors: list[BaseException] = []

    def sign() -> None:
        try:
            store.download_url("gs://aiprod-outputs/outputs/a.mp4", dt.timedelta(hours=1))
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=sign) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(errors) == 8
    assert all(isinstance(e, SigningUnavailable) for e in errors)
    assert refusing_iam.token_requests == 1


def _silent_proxy() -> socketserver.TCPServer:
    """A proxy that accepts every connection and never answers: an endpoint that
    cannot be reached in time."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            threading.Event().wait(60)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    return Server(("127.0.0.1", 0), Handler)


@pytest.mark.parametrize("endpoint", ["refused", "silent"])
def test_an_unreachable_signing_endpoint_degrades_at_once(
        refusing_iam: Seen, stack: LocalStack, monkeypatch: pytest.MonkeyPatch,
        endpoint: str) -> None:
    """iamcredentials.googleapis.com cannot be reached (connection refused, or no
    answer): the GET answers 200 with the uri and no download_url within the signing
    timeout. google-cloud-storage's own signBlob call retries such errors for 120 s
    and then raises RetryError, which the API answered with a 500."""
    from aiprod.adapters import storage as storage_adapter

    monkeypatch.setattr(storage_adapter, "SIGN_TIMEOUT_S", 1.0)
    if endpoint == "silent":
        silent = _silent_proxy()
        threading.Thread(target=silent.serve_forever, daemon=True).start()
        port = silent.server_address[1]
    else:
        with socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler) as probe:
            port = probe.server_address[1]  # closed again: nothing listens there
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    credentials = compute_engine.Credentials()
    client = storage.Client(project="aiprod-test", credentials=credentials)
    rt = _runtime(stack, GcsOutputStore("aiprod-outputs", "outputs", client=client))
    record, key = create_key(rt.access, "signing-test")
    job = _finished_job(rt, record.owner)

    started = time.monotonic()
    status, body = _get(rt, f"/v1/jobs/{job.id}", key)
    elapsed = time.monotonic() - started

    assert status == 200, body
    assert body["output"]["uri"] == "gs://aiprod-outputs/outputs/jobs/x/output.mp4"
    assert body["output"]["download_url"] is None
    assert elapsed < 15, elapsed  # google-auth retries 5xx only, a second or two apart
