"""The address rules for URLs AIPROD calls (webhooks, image URLs): every class of
internal address is refused, as an IP literal and behind a name; the checked
address is the one connected to."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from aiprod.adapters import netsafety
from aiprod.adapters.netsafety import UnsafeURL, address_problem, check_url

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"

# (address, the class the refusal names)
REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.0.1", "private"),
    ("192.168.255.255", "private"),
    ("169.254.169.254", "metadata"),
    ("169.254.1.1", "link-local"),
    ("100.64.0.1", "shared"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "private"),
    ("224.0.0.251", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.10", "private"),       # documentation (TEST-NET-1)
    ("198.18.0.1", "private"),       # benchmarking
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "private"),
    ("fd12:3456:789a::1", "private"),
    ("fe80::1", "link-local"),
    ("febf::1", "link-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "private"),      # documentation
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 form of 169.254.169.254
    ("2002:0a00:0001::1", "private"),    # 6to4 form of 10.0.0.1
    ("::127.0.0.1", "loopback"),         # IPv4-compatible
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
]


@pytest.mark.parametrize(("address", "kind"), REFUSED)
def test_every_internal_address_class_is_refused(address: str, kind: str) -> None:
    problem = address_problem(ipaddress.ip_address(address))
    assert problem is not None
    assert kind in problem


@pytest.mark.parametrize("address", [PUBLIC_V4, "8.8.8.8", "1.1.1.1", PUBLIC_V6,
                                     "::ffff:8.8.8.8", "172.32.0.1", "192.169.0.1",
                                     "11.0.0.1", "100.128.0.1"])
def test_public_unicast_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


def resolver(table: dict[str, list[str]]) -> netsafety.Resolver:
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise UnsafeURL(f"the host {host!r} does not resolve")
        return table[host]
    return resolve


PUBLIC = resolver({"hooks.example.com": [PUBLIC_V4, PUBLIC_V6]})


@pytest.mark.parametrize(("url", "kind"), [
    ("https://127.0.0.1/hook", "loopback"),
    ("https://10.0.0.1/hook", "private"),
    ("https://172.16.0.1/hook", "private"),
    ("https://192.168.1.1/hook", "private"),
    ("https://169.254.169.254/computeMetadata/v1/", "metadata"),
    ("https://[::1]/hook", "loopback"),
    ("https://[fc00::1]/hook", "private"),
    ("https://[fe80::1]/hook", "link-local"),
    ("https://[::ffff:127.0.0.1]/hook", "loopback"),
    ("https://0.0.0.0:8443/", "unspecified"),
])
def test_ip_literals_of_each_class_are_refused(url: str, kind: str) -> None:
    with pytest.raises(UnsafeURL, match=kind):
        check_url(url, resolver=PUBLIC)


@pytest.mark.parametrize(("answer", "kind"), [
    (["127.0.0.1"], "loopback"),
    (["10.1.2.3"], "private"),
    (["172.20.0.5"], "private"),
    (["192.168.0.10"], "private"),
    (["169.254.169.254"], "metadata"),
    (["::1"], "loopback"),
    (["fd00::5"], "private"),
    ([PUBLIC_V4, "10.0.0.1"], "private"),  # one bad answer among good ones is enough
    ([PUBLIC_V6, "::ffff:192.168.0.1"], "private"),
])
def test_a_name_that_resolves_to_an_internal_address_is_refused(answer: list[str],
                                                                 kind: str) -> None:
    with pytest.raises(UnsafeURL, match=f"resolves to .*{kind}"):
        check_url("https://rebind.example.net/hook",
                  resolver=resolver({"rebind.example.net": answer}))


def test_localhost_is_refused_through_the_real_resolver() -> None:
    """A name resolving to loopback, resolved by the system (/etc/hosts)."""
    with pytest.raises(UnsafeURL, match="loopback"):
        check_url("https://localhost/hook")


@pytest.mark.parametrize("url", [
    "https://2130706433/",         # 127.0.0.1 as one decimal number
    "https://0x7f.0.0.1/",         # hexadecimal
    "https://0177.0.0.1/",         # octal
    "https://127.1/",              # short form
])
def test_obscure_spellings_of_loopback_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURL):
        check_url(url)


@pytest.mark.parametrize(("url", "message"), [
    ("http://hooks.example.com/hook", "https"),
    ("ftp://hooks.example.com/hook", "https"),
    ("javascript:alert(1)", "https"),
    ("hooks.example.com/hook", "https"),
    ("https://user:secret@hooks.example.com/hook", "user name or password"),
    ("https://hooks.example.com@10.0.0.1/", "user name or password"),
    ("https:///hook", "no host"),
    ("https://hooks.example.com:99999/", "cannot be parsed"),
    ("https://hooks.example.com:0/", "port"),
    ("https://hooks.example.com/a b", "spaces or control"),
    ("https://hooks.example.com/\x00", "spaces or control"),
    ("", "empty"),
    ("https://" + "a" * 2100 + ".com/", "longer than"),
    ("https://nowhere.invalid/", "does not resolve"),
    ("https://bad..name/", "not a valid name"),
])
def test_malformed_or_plain_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(UnsafeURL, match=message):
        check_url(url, resolver=PUBLIC)


def test_a_public_https_url_passes_with_every_address_checked() -> None:
    target = check_url("https://Hooks.Example.com:8443/a/b?x=1#frag", resolver=PUBLIC)
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 8443)
    assert target.target == "/a/b?x=1"
    assert target.addresses == (PUBLIC_V4, PUBLIC_V6)
    assert target.host_header == "hooks.example.com:8443"
    assert target.url_for(PUBLIC_V6) == f"https://[{PUBLIC_V6}]:8443/a/b?x=1"


def test_the_development_override_names_exact_hosts_only() -> None:
    allow = netsafety.parse_allow_hosts(" 127.0.0.1 , ")
    target = check_url("http://127.0.0.1:9/hook", allow_hosts=allow)
    assert (target.scheme, target.addresses) == ("http", ("127.0.0.1",))
    for other in ("http://localhost:9/hook", "https://127.0.0.2/", "https://[::1]/"):
        with pytest.raises(UnsafeURL):
            check_url(other, allow_hosts=allow)
    with pytest.raises(UnsafeURL, match="https"):
        check_url("http://hooks.example.com/", allow_hosts=allow, resolver=PUBLIC)


# --- post: the checked address is the one connected to ---------------------------

class Receiver(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []
    status = 200

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        Receiver.seen.append({"path": self.path, "host": self.headers.get("Host", "")})
        self.send_response(Receiver.status)
        if Receiver.status in (301, 302, 307, 308):
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[int]:
    Receiver.seen = []
    Receiver.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_post_connects_to_the_checked_address_not_a_new_lookup(receiver: int) -> None:
    """The name resolves to 127.0.0.1 at check time and to an internal address later
    ("DNS rebinding"): the request still goes to the address that was checked."""
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])

    def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    target = check_url(f"http://hooks.test:{receiver}/hook?x=1", allow_hosts={"hooks.test"},
                       resolver=rebinding)
    response = netsafety.post(target, b"{}", {"Content-Type": "application/json"})
    assert response.status_code == 200
    assert Receiver.seen == [{"path": "/hook?x=1", "host": f"hooks.test:{receiver}"}]


def test_post_follows_no_redirect(receiver: int) -> None:
    Receiver.status = 302
    target = check_url(f"http://127.0.0.1:{receiver}/hook", allow_hosts={"127.0.0.1"})
    response = netsafety.post(target, b"{}", {})
    assert response.status_code == 302
    assert len(Receiver.seen) == 1  # the Location was not followed


def test_post_raises_when_no_address_answers() -> None:
    target = check_url("http://127.0.0.1:1/hook", allow_hosts={"127.0.0.1"})
    with pytest.raises(httpx.ConnectError):
        netsafety.post(target, b"{}", {}, timeout=2)


@pytest.mark.parametrize("address", ["64:ff9b:1::808:808", "fec0::1"])
def test_ipv6_ranges_that_reach_inside_a_network_are_refused_even_around_a_public_ipv4(
        address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is not None
