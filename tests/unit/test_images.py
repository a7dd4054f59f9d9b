"""Input images: read from data URIs, gs:// and https under the address rules."""

from __future__ import annotations

import base64
import http.server
import os
import struct
import threading
import zlib
from collections.abc import Iterator

import pytest

from aiprod.adapters.images import as_data_uri, load_image
from aiprod.adapters.providers.base import ProviderError
from aiprod.domain.job import ErrorClass


def png(width: int = 2, height: int = 2, noise: bool = False) -> bytes:
    """A real PNG: one colour, or random pixels (which do not compress) with `noise`."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + (os.urandom(3 * width) if noise else b"\x80\x40\x20" * width)
                   for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                             0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


class Images(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/fox.png":
            body = png()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/moved.png":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data")
            self.end_headers()
        elif self.path == "/page.png":
            body = b"<html>not an image</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def refused(url: str, code: str, **kwargs: object) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        load_image(url, timeout_s=5, **kwargs)  # type: ignore[arg-type]
    assert caught.value.error_class is ErrorClass.INVALID_INPUT
    assert caught.value.code == code
    return caught.value


def test_a_data_uri_image_is_decoded_and_its_type_checked() -> None:
    data, mime = load_image(as_data_uri(png(), "image/png"), timeout_s=5)
    assert (data, mime) == (png(), "image/png")
    refused("data:image/png;base64," + base64.b64encode(b"GIF89a...").decode(),
            "unsupported_image_type")
    refused(as_data_uri(png(), "image/jpeg"), "unsupported_image_type")
    refused("data:image/png;base64,@@@", "invalid_image")
    refused(as_data_uri(png(64, 64), "image/png"), "image_too_large", max_bytes=100)


def test_an_allowed_host_is_fetched(server: str) -> None:
    data, mime = load_image(f"{server}/fox.png", timeout_s=5, allow_hosts={"127.0.0.1"})
    assert data == png()
    assert mime == "image/png"


def test_internal_addresses_redirects_and_non_images_are_refused(server: str) -> None:
    error = refused(f"{server}/fox.png", "image_url_refused")  # loopback, not allowed
    assert "https" in error.message or "loopback" in error.message
    refused("https://10.1.2.3/fox.png", "image_url_refused")
    refused("https://169.254.169.254/computeMetadata/v1/", "image_url_refused")
    refused("https://[::1]/fox.png", "image_url_refused")
    error = refused(f"{server}/moved.png", "image_url_refused", allow_hosts={"127.0.0.1"})
    assert "redirect" in error.message
    refused(f"{server}/page.png", "unsupported_image_type", allow_hosts={"127.0.0.1"})
    refused(f"{server}/missing.png", "image_url_refused", allow_hosts={"127.0.0.1"})
    refused("ftp://example.com/fox.png", "unsupported_image_url")
