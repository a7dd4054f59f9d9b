"""Input images for image-to-video, from wherever the caller put them.

An https URL is fetched under the address rules of aiprod.adapters.netsafety (public
addresses only, the checked address connected to, no redirects, size capped);
a gs:// URI is read with the function's own identity; a data: URI is decoded.
Every image must really be PNG or JPEG (its first bytes are checked, not just
its declared type). Failures are classified like provider outcomes: a bad or
unreachable-by-rule image is the caller's (INVALID_INPUT), a network blip is
TRANSIENT.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from collections.abc import Callable, Collection

import httpx

from aiprod.adapters import netsafety
from aiprod.adapters.providers.base import ProviderError, StagedImage
from aiprod.adapters.storage import SigningUnavailable
from aiprod.domain.job import ErrorClass

MAX_IMAGE_BYTES = 20 * 1024**2
# A data: URI's head ("data:image/png;base64,") is looked for within its first characters.
DATA_URI_HEAD_CHARS = 256
DECODE_SLICE_CHARS = 1024 * 1024  # a multiple of 4: base64 decodes in 4-character groups
SIGNATURES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}


def _invalid(code: str, message: str) -> ProviderError:
    return ProviderError(ErrorClass.INVALID_INPUT, code, message)


def load_image(url: str, *, timeout_s: float, max_bytes: int = MAX_IMAGE_BYTES,
               allow_hosts: Collection[str] = ()) -> tuple[bytes, str]:
    """The image's bytes and MIME type (image/png or image/jpeg)."""
    if url.startswith("data:"):
        head, _, _ = url[:DATA_URI_HEAD_CHARS].partition(",")
        declared = head.removeprefix("data:").split(";")[0].lower()
        if ";base64" not in head or len(head) == len(url[:DATA_URI_HEAD_CHARS]):
            raise _invalid("invalid_image", "the image data URI must be base64-encoded")
        if (len(url) - len(head) - 1) * 3 // 4 > max_bytes:
            raise _invalid("image_too_large", f"the image is over {max_bytes} bytes")
        data = _decode_base64(url, len(head) + 1)
    elif url.startswith("gs://"):
        data, declared = _from_gcs(url, max_bytes)
    elif url.startswith(("https://", "http://")):
        try:
            target = netsafety.check_url(url, allow_hosts=allow_hosts)
            data, declared = netsafety.get(target, max_bytes=max_bytes, timeout=timeout_s)
        except (netsafety.UnsafeURL, netsafety.FetchRefused) as refused:
            raise _invalid("image_url_refused", str(refused)) from refused
        except (httpx.HTTPError, netsafety.ResolverUnavailable) as exc:
            raise ProviderError(ErrorClass.TRANSIENT, "image_fetch_failed",
                                f"fetching the image failed: {type(exc).__name__}") from exc
    else:
        raise _invalid("unsupported_image_url",
                       "the image must be an https URL, a gs:// URI or a data: URI")
    return data, _check_type(data, declared)


def _decode_base64(text: str, start: int) -> bytes:
    """The base64 in text[start:], decoded a slice at a time: an upload of up to 20 MiB
    is held once as text and once as bytes, never as a second copy of its text (as
    slicing the payload out, or b64decode's own ASCII copy of a str, would make)."""
    out = io.BytesIO()
    try:
        for at in range(start, len(text), DECODE_SLICE_CHARS):
            out.write(binascii.a2b_base64(text[at:at + DECODE_SLICE_CHARS].encode("ascii"),
                                          strict_mode=True))
    except (binascii.Error, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise _invalid("invalid_image", "the image data URI is not valid base64") from exc
    return out.getvalue()  # the buffer itself, not a copy


def _check_type(data: bytes, declared: str) -> str:
    for mime, signature in SIGNATURES.items():
        if data.startswith(signature):
            if declared not in ("", "application/octet-stream", "binary/octet-stream", mime):
                raise _invalid("unsupported_image_type",
                               f"the image says it is {declared} but is {mime}")
            return mime
    raise _invalid("unsupported_image_type",
                   f"the image must be PNG or JPEG, not {declared or 'something else'}")


def _from_gcs(url: str, max_bytes: int) -> tuple[bytes, str]:
    import google.auth.exceptions
    from google.api_core import exceptions as gexc
    from google.cloud.storage import Client

    bucket, _, name = url.removeprefix("gs://").partition("/")
    try:
        blob = Client().bucket(bucket).get_blob(name)
        if blob is None:
            raise _invalid("image_not_found", f"there is no {url}")
        if (blob.size or 0) > max_bytes:
            raise _invalid("image_too_large", f"{url} is over {max_bytes} bytes")
        return blob.download_as_bytes(checksum="crc32c"), (blob.content_type or "")
    except (gexc.Forbidden, gexc.NotFound) as exc:
        raise _invalid("image_not_readable", f"AIPROD cannot read {url}") from exc
    except google.auth.exceptions.GoogleAuthError as exc:  # a deployment fault, not the caller's
        raise ProviderError(ErrorClass.BACKEND, "storage_credentials",
                            "no credentials to read Cloud Storage") from exc


def as_data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def url_for_provider(url: str, *, timeout_s: float) -> str:
    """For providers that fetch images themselves (Runway, Replicate): an https URL or
    data URI passes through (they fetch it, outside our network); a gs:// image,
    which they cannot read, is read here and sent inline."""
    if url.startswith("gs://"):
        return as_data_uri(*load_image(url, timeout_s=timeout_s))
    return url


def data_uri_chars(size: int) -> int:
    """The length of the base64 payload of a data URI holding `size` bytes."""
    return 4 * ((size + 2) // 3)


def staged_for_provider(image: StagedImage, *, inline: bool, provider: str) -> str:
    """For providers that take a data URI or fetch a URL (Runway, Replicate): the data
    URI when the provider takes it that large (`inline`), else a signed https URL to
    the staged copy. The local output folder cannot give one: such an image is refused
    there as the caller's (it would work in production)."""
    if inline:
        return as_data_uri(image.read(), image.mime_type)
    try:
        url = image.signed_url()
    except SigningUnavailable as error:
        # Before any call to the provider: nothing was created, and the backend is not
        # at fault (no strike); the job falls back to a backend that takes the bytes.
        raise ProviderError(ErrorClass.SKIPPED, "image_url_unsigned",
                            f"no signed URL for the staged image could be made: {error}"
                            ) from None
    if url.startswith("https://"):
        return url
    raise _invalid("image_too_large_for_data_uri",
                   f"{provider} takes an image of {image.size} bytes only by https URL, "
                   "and this deployment's output store cannot sign one")


def read_staged(read: Callable[[], bytes], uri: str, sha256: str) -> bytes:
    """A staged upload's bytes, checked against the hash taken at admission."""
    try:
        data = read()
    except FileNotFoundError as exc:
        raise _invalid("image_not_found", f"the staged image {uri} is gone") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ProviderError(ErrorClass.BACKEND, "staged_image_corrupt",
                            f"the staged image {uri} does not match its sha256")
    return data
