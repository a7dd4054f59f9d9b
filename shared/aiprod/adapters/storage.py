"""Durable output storage: provider URLs expire, so every output is copied here.

`file://DIR` keeps outputs in a local folder (development); `gs://BUCKET/PREFIX`
keeps them in Cloud Storage (production, or the storage emulator in tests).

Uploaded input images are staged here too, under the job's own prefix
(jobs/<job id>/input/<sha256>.<ext>), so the bucket's lifecycle rule removes them
with the job's output and a job document never holds the bytes.

A download URL is a convenience beside the output's `uri`: when it cannot be
signed, `download_url` raises `SigningUnavailable` and the caller answers without
one (a 403 from IAM signBlob, e.g. iamcredentials.googleapis.com not enabled, must
not turn `GET /v1/jobs/{id}` into a 500).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlparse

# One signBlob request may take this long (google-auth's Signer retries a 5xx twice
# more, with a second or two between): a download URL is a convenience, never worth
# holding a GET for.
SIGN_TIMEOUT_S = 10.0


class SigningUnavailable(Exception):
    """No download URL could be signed (IAM signBlob refused or unreachable, or the
    access token could not be refreshed). The message carries no token."""


class OutputStore(Protocol):
    def put(self, source: Path, key: str, content_type: str) -> str:
        """Copy `source` to `key` (idempotent: the same key overwrites); return its URI."""
        ...

    def download_url(self, uri: str, expires_in: dt.timedelta) -> str:
        """A URL a caller can fetch the output from, valid for `expires_in`; raises
        `SigningUnavailable` when none can be signed."""
        ...

    def stage(self, data: bytes, key: str, content_type: str) -> str:
        """Write `data` to `key` once (a content-addressed key: an object already
        there is the same bytes, and is kept); return its URI."""
        ...

    def read(self, uri: str) -> bytes:
        """The whole object at `uri` (a staged input: at most a few MB)."""
        ...


class LocalOutputStore:
    def __init__(self, root: Path) -> None:
        self._root = root.resolve()

    def put(self, source: Path, key: str, content_type: str) -> str:
        target = self._root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".partial-",
                                         delete=False) as partial, source.open("rb") as data:
            shutil.copyfileobj(data, partial)
        Path(partial.name).replace(target)  # atomic: readers never see half a file
        return target.as_uri()

    def download_url(self, uri: str, expires_in: dt.timedelta) -> str:
        return uri  # a local file needs no signature

    def stage(self, data: bytes, key: str, content_type: str) -> str:
        target = self._root / key
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".partial-",
                                             delete=False) as partial:
                partial.write(data)
            Path(partial.name).replace(target)
        return target.as_uri()

    def read(self, uri: str) -> bytes:
        path = Path(urlparse(uri).path).resolve()
        if not path.is_relative_to(self._root):
            raise FileNotFoundError(f"{uri} is not in this store")
        return path.read_bytes()


class GcsOutputStore:
    """Cloud Storage (or the storage emulator when STORAGE_EMULATOR_HOST is set)."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        from google.cloud.storage import Client

        self._client = client or Client()
        self._bucket = self._client.bucket(bucket)
        self._prefix = prefix.strip("/")
        self._token_lock = threading.Lock()  # one refresh at a time across request threads

    def put(self, source: Path, key: str, content_type: str) -> str:
        name = f"{self._prefix}/{key}" if self._prefix else key
        blob = self._bucket.blob(name)
        # crc32c: the upload is verified end to end, or it raises.
        blob.upload_from_filename(str(source), content_type=content_type, checksum="crc32c")
        return f"gs://{self._bucket.name}/{name}"

    def stage(self, data: bytes, key: str, content_type: str) -> str:
        from google.api_core import exceptions as gexc

        name = f"{self._prefix}/{key}" if self._prefix else key
        # if_generation_match=0: create only, so the writer needs no delete permission
        # (roles/storage.objectCreator); crc32c checks the upload. PreconditionFailed:
        # already staged (the key is the content's sha256).
        with contextlib.suppress(gexc.PreconditionFailed):
            self._bucket.blob(name).upload_from_string(
                data, content_type=content_type, checksum="crc32c", if_generation_match=0)
        return f"gs://{self._bucket.name}/{name}"

    def read(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        if parsed.netloc != self._bucket.name:
            raise FileNotFoundError(f"{uri} is not in this store")
        from google.api_core import exceptions as gexc

        try:
            data: bytes = self._bucket.blob(parsed.path.lstrip("/")).download_as_bytes(
                checksum="crc32c")
        except gexc.NotFound as gone:
            raise FileNotFoundError(uri) from gone
        return data

    def download_url(self, uri: str, expires_in: dt.timedelta) -> str:
        name = urlparse(uri).path.lstrip("/")
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator:  # the emulator serves media without signatures
            return (f"{emulator.rstrip('/')}/download/storage/v1/b/{self._bucket.name}/o/"
                    f"{quote(name, safe='')}?alt=media")
        blob = self._bucket.blob(name)
        credentials = self._client._credentials
        if not hasattr(credentials, "sign_bytes") or not getattr(credentials, "signer", None):
            # On Cloud Functions the runtime's credentials cannot sign locally: sign
            # through IAM signBlob as the function's own service account.
            from google.auth.exceptions import GoogleAuthError

            token = None
            try:
                token = self._access_token(credentials)
                url: str = blob.generate_signed_url(
                    version="v4", expiration=expires_in, method="GET",
                    credentials=self._iam_signing(credentials))
            except GoogleAuthError as error:
                reason = f"{type(error).__name__}: {error}"[:500]
                if token:
                    reason = reason.replace(token, "<token>")
                raise SigningUnavailable(reason) from None
            return url
        signed: str = blob.generate_signed_url(version="v4", expiration=expires_in,
                                               method="GET")
        return signed

    def _iam_signing(self, credentials: Any) -> Any:
        """Signing credentials whose signature is IAM signBlob of the runtime's own
        service account (iamcredentials.googleapis.com, google.auth.iam.Signer), each
        call bounded by SIGN_TIMEOUT_S. google-cloud-storage's own path
        (service_account_email= with access_token=) retries an unreachable endpoint
        for up to 120 s and then raises RetryError: a GET would hang two minutes and
        answer 500 instead of degrading at once."""
        import functools

        import google.auth.transport.requests
        from google.auth import iam
        from google.oauth2 import service_account

        request = functools.partial(google.auth.transport.requests.Request(),
                                    timeout=SIGN_TIMEOUT_S)
        email = credentials.service_account_email
        signer = iam.Signer(request, credentials, email)  # type: ignore[no-untyped-call]
        return service_account.Credentials(  # type: ignore[no-untyped-call]
            signer, email, "https://oauth2.googleapis.com/token")

    def _access_token(self, credentials: Any) -> str:
        """The runtime's token, refreshed only when google-auth says it is no longer
        valid (missing, or within its clock-skew margin of expiry): a refresh is a
        metadata-server round trip, not something to pay on every GET."""
        import google.auth.transport.requests

        with self._token_lock:
            if not credentials.valid:
                credentials.refresh(google.auth.transport.requests.Request())
            token: str = credentials.token
            return token


def output_store_for(uri: str) -> OutputStore:
    parsed = urlparse(uri)
    if parsed.scheme == "gs":
        return GcsOutputStore(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalOutputStore(Path(parsed.netloc + parsed.path))
    raise ValueError(f"AIPROD_OUTPUT_URI must be file://DIR or gs://BUCKET/PREFIX, not {uri!r}")
