"""May AIPROD call this URL? Outbound requests to addresses a caller chose
(webhooks, input image URLs) must never reach AIPROD's own network.

The rules, applied by `check_url`:
- https only; no user:password@ part; a host and, if given, a valid port;
- the host (an IP literal, or every address its name resolves to) must be a
  public unicast address: loopback, private (10/8, 172.16/12, 192.168/16,
  fc00::/7), shared (100.64/10), link-local (169.254/16 with the metadata
  server 169.254.169.254, fe80::/10), multicast, reserved, unspecified and
  documentation ranges are refused, as are IPv6 forms that embed one of those
  IPv4 addresses (::ffff:a.b.c.d, 6to4, NAT64);
- a name that resolves to any refused address is refused (every address is
  checked, not just the first, so a mixed answer cannot slip one in).

`post` (webhooks) and `get` (images) then connect to an address that passed
the check, never resolving the name again (so a DNS answer that changes
between check and use, "DNS rebinding", cannot redirect it), send the original
name as Host and as the TLS server name (so certificates are verified against
the name), follow no redirects and ignore proxy settings.

Development override: hosts named in `allow_hosts` (exactly as written in the
URL, e.g. 127.0.0.1) skip the address rules and may use plain http. The
emulator tests set it (AIPROD_WEBHOOK_ALLOW_HOSTS, AIPROD_IMAGE_ALLOW_HOSTS) for
their webhook receivers and image servers on this machine; production never does.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 2048
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_METADATA = ipaddress.IPv4Address("169.254.169.254")


T = TypeVar("T")


class UnsafeURL(ValueError):
    """The URL breaks an address rule; the message says which, for the caller."""


class ResolverUnavailable(OSError):
    """The name could not be looked up just now (not "it does not exist"): try later."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host` (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        if error.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None)):
            raise ResolverUnavailable(f"looking up {host!r} failed for now") from error
        raise UnsafeURL(f"the host {host!r} does not resolve") from error
    except UnicodeError as error:
        raise UnsafeURL(f"the host {host!r} does not resolve") from error
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        if address not in seen:
            seen.append(address)
    return seen


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64, compatible)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why AIPROD must not connect to `ip`, or None for a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:
            return "a Teredo tunnel address"
        if ip in _NAT64_LOCAL:  # reaches a translator inside someone's own network
            return "a local-use NAT64 address"
        if ip.is_site_local:
            return "a site-local address"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner = address_problem(embedded)
            return f"an IPv6 form of {embedded}, {inner}" if inner else None
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip == _METADATA:
        return "the cloud metadata server"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


def _parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class Target:
    """A URL that passed the rules, with the addresses it may be reached at."""

    url: str
    scheme: str
    host: str          # as the URL names it (lowercase; IDNA for names)
    port: int
    target: str        # path and query, as sent in the request line
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return shown if self.port == default else f"{shown}:{self.port}"

    def url_for(self, address: str) -> str:
        shown = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{shown}:{self.port}{self.target}"


def parse_allow_hosts(value: str) -> frozenset[str]:
    """A comma-separated list of hosts (AIPROD_WEBHOOK_ALLOW_HOSTS and
    AIPROD_IMAGE_ALLOW_HOSTS, development only) or of buckets (AIPROD_IMAGE_BUCKETS)."""
    return frozenset(h.strip().lower().strip("[]") for h in value.split(",") if h.strip())


def check_url(url: str, *, allow_hosts: Collection[str] = (),
              resolver: Resolver = system_resolver) -> Target:
    """The checked target for `url`, or UnsafeURL saying which rule it breaks."""
    if not isinstance(url, str) or not url:
        raise UnsafeURL("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if _CONTROL.search(url):
        raise UnsafeURL("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port_given = parts.port
    except ValueError as error:
        raise UnsafeURL(f"the URL cannot be parsed: {error}") from error
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UnsafeURL("the URL must start with https://")
    if "@" in parts.netloc:
        raise UnsafeURL("the URL must not carry a user name or password")
    raw_host = (parts.hostname or "").rstrip(".")
    if not raw_host:
        raise UnsafeURL("the URL has no host")
    allowed = raw_host.lower() in {h.lower() for h in allow_hosts}
    if scheme != "https" and not allowed:
        raise UnsafeURL("the URL must start with https:// (plain http is refused)")
    port = port_given if port_given is not None else (443 if scheme == "https" else 80)
    if port == 0:
        raise UnsafeURL("the URL's port must be between 1 and 65535")
    literal = _parse_ip(raw_host)
    if literal is not None:
        host = literal.compressed
        addresses = [host]
    else:
        if "%" in raw_host or ":" in raw_host:
            raise UnsafeURL("the URL's host is not a valid name or address")
        try:
            host = raw_host.encode("idna").decode("ascii").lower()
        except UnicodeError as error:
            raise UnsafeURL("the URL's host is not a valid name") from error
        if not re.fullmatch(r"[a-z0-9_.-]+", host) or ".." in host or len(host) > 253:
            raise UnsafeURL("the URL's host is not a valid name")
        addresses = resolver(host, port)
        if not addresses:
            raise UnsafeURL(f"the host {host!r} does not resolve")
    if not allowed:
        for address in addresses:
            ip = _parse_ip(address)
            if ip is None:
                raise UnsafeURL(f"the host {host!r} resolves to something that is not an address")
            problem = address_problem(ip)
            if problem:
                where = "is" if literal is not None else f"resolves to {address}, which is"
                raise UnsafeURL(f"the URL's host {where} {problem}; only public addresses "
                                f"are allowed")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(url=url, scheme=scheme, host=host, port=port, target=target,
                  addresses=tuple(addresses))


def _at_checked_address(target: Target, headers: Mapping[str, str], timeout: float,
                        verify: bool | str,
                        call: Callable[[httpx.Client, str, dict[str, str], dict[str, Any]], T],
                        ) -> T:
    """Run `call` against one of the target's checked addresses: no redirects, no
    proxies, no second DNS lookup; the name is sent as Host and as the TLS server
    name. Raises httpx.HTTPError when no address answers."""
    error: httpx.HTTPError | None = None
    send_headers = {**headers, "Host": target.host_header}
    with httpx.Client(follow_redirects=False, trust_env=False, timeout=timeout,
                      verify=verify) as client:
        for address in target.addresses:
            extensions: dict[str, Any] = {"sni_hostname": target.host} if (
                target.scheme == "https" and _parse_ip(target.host) is None) else {}
            try:
                return call(client, target.url_for(address), send_headers, extensions)
            except (httpx.ConnectError, httpx.ConnectTimeout) as failed:
                error = failed  # try the next address
    assert error is not None
    raise error


def post(target: Target, body: bytes, headers: Mapping[str, str], *,
         timeout: float = 10.0, verify: bool | str = True) -> httpx.Response:
    """POST to a checked target (see _at_checked_address)."""
    return _at_checked_address(
        target, headers, timeout, verify,
        lambda client, url, sent, ext: client.post(url, content=body, headers=sent,
                                                   extensions=ext))


class FetchRefused(ValueError):
    """The answer to a GET is not something AIPROD will take (status, size, redirect)."""


def get(target: Target, *, max_bytes: int, timeout: float = 10.0,
        verify: bool | str = True) -> tuple[bytes, str]:
    """GET a checked target (see _at_checked_address), reading at most `max_bytes`.
    Returns the body and its content type; FetchRefused for a redirect, an error
    status or a body over the cap."""

    def fetch(client: httpx.Client, url: str, sent: dict[str, str],
              ext: dict[str, Any]) -> tuple[bytes, str]:
        with client.stream("GET", url, headers=sent, extensions=ext) as response:
            if response.is_redirect:
                raise FetchRefused(f"the URL redirects ({response.status_code}); redirects are "
                                   "not followed")
            if response.status_code != 200:
                raise FetchRefused(f"fetching the URL answered {response.status_code}")
            declared = int(response.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise FetchRefused(f"the body is {declared} bytes, over {max_bytes}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise FetchRefused(f"the body is over {max_bytes} bytes")
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            return bytes(body), kind

    return _at_checked_address(target, {"User-Agent": "aiprod"}, timeout, verify, fetch)
