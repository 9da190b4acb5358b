"""The egress allowlist: the rules (pure) and the proxy itself on loopback."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from orchestrator.backends.docker.egress import EgressProxy
from orchestrator.egress_rules import address_verdict, is_public, name_verdict

ALLOWED = ("pypi.org", "*.github.com", "api.example.com:8443")


@pytest.mark.parametrize(
    ("host", "port", "allowed"),
    [
        ("pypi.org", 443, True),
        ("PyPI.org.", 80, True),
        ("files.pypi.org", 443, False),  # exact names do not cover subdomains
        ("api.github.com", 443, True),
        ("github.com", 443, False),  # "*.github.com" is subdomains only
        ("evilgithub.com", 443, False),
        ("pypi.org", 22, False),  # only 80 and 443 unless the entry says
        ("api.example.com", 8443, True),
        ("api.example.com", 443, False),
        ("1.2.3.4", 443, False),  # IP literals are never allowed
        ("::1", 443, False),
        ("evil.test", 443, False),
    ],
)
def test_names_and_ports(host: str, port: int, allowed: bool) -> None:
    """Exact names, *.suffix and host:port entries decide; IP literals never pass."""
    assert name_verdict(host, port, ALLOWED).allowed is allowed


def test_refusal_reasons_say_what_to_change() -> None:
    """Each refusal names its cause: not listed, port, or IP literal."""
    assert "not in the policy's allowed_domains" in name_verdict("evil.test", 443, ALLOWED).reason
    assert "port 22 is not allowed" in name_verdict("pypi.org", 22, ALLOWED).reason
    assert "IP addresses are not allowed" in name_verdict("10.0.0.1", 443, ALLOWED).reason


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.17.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    """Loopback, private, link-local (metadata), CGNAT, multicast and mapped forms are not public."""
    assert not is_public(address)
    verdict = address_verdict("pypi.org", [address])
    assert not verdict.allowed and "private, loopback or link-local" in verdict.reason


def test_the_first_public_address_is_dialled() -> None:
    """A name with a private and a public address is dialled at the public one only."""
    verdict = address_verdict("pypi.org", ["10.0.0.5", "151.101.0.223"])
    assert verdict.allowed and verdict.address == "151.101.0.223"
    assert address_verdict("x", []).reason == "x does not resolve"
    assert address_verdict("pinned", ["172.18.0.5"], pinned=True).address == "172.18.0.5"


# --------------------------------------------------------------------------- the proxy


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.headers['Host']} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[int]:
    """A web server of our own on loopback; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def proxy() -> Iterator[EgressProxy]:
    """A proxy on loopback with the test names pinned to loopback."""
    egress = EgressProxy(
        "127.0.0.1", pinned={"allowed.test": "127.0.0.1", "other.test": "127.0.0.1"}
    )
    yield egress
    egress.close()


def _ask(proxy: EgressProxy, request: bytes) -> bytes:
    with socket.create_connection(proxy.address, timeout=5) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data


def test_plain_http_to_an_allowed_name_is_forwarded(proxy: EgressProxy, origin: int) -> None:
    """GET http://allowed.test:<port>/x reaches the origin, in origin form."""
    proxy.admit("127.0.0.1", [f"allowed.test:{origin}"])
    reply = _ask(
        proxy,
        f"GET http://allowed.test:{origin}/x?y=1 HTTP/1.1\r\nHost: allowed.test\r\n\r\n".encode(),
    )
    assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"/x?y=1")
    assert proxy.release("127.0.0.1") == []


def test_connect_tunnels_to_an_allowed_name(proxy: EgressProxy, origin: int) -> None:
    """CONNECT opens a tunnel; the bytes after it reach the origin unchanged."""
    proxy.admit("127.0.0.1", [f"allowed.test:{origin}"])
    with socket.create_connection(proxy.address, timeout=5) as conn:
        conn.sendall(f"CONNECT allowed.test:{origin} HTTP/1.1\r\n\r\n".encode())
        assert conn.recv(1024).startswith(b"HTTP/1.1 200")
        conn.sendall(b"GET /t HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
        assert b"hello from allowed.test /t" in reply


def test_refusals_are_kept_for_the_client_that_caused_them(proxy: EgressProxy, origin: int) -> None:
    """Names, IPs and ports outside the allowlist get 403 and are recorded for that client."""
    proxy.admit("127.0.0.1", [f"allowed.test:{origin}"])
    for request in (
        f"CONNECT other.test:{origin} HTTP/1.1\r\n\r\n",
        f"CONNECT 127.0.0.1:{origin} HTTP/1.1\r\n\r\n",
        "GET http://allowed.test:25/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
    ):
        assert _ask(proxy, request.encode()).startswith(b"HTTP/1.1 403")
    refused = proxy.release("127.0.0.1")
    assert [(r.host, r.port) for r in refused] == [
        ("other.test", origin),
        ("127.0.0.1", origin),
        ("allowed.test", 25),
    ]
    assert proxy.release("127.0.0.1") == []


def test_an_unknown_client_gets_nothing(proxy: EgressProxy, origin: int) -> None:
    """A client that is not an admitted sandbox is refused everything."""
    reply = _ask(proxy, f"CONNECT allowed.test:{origin} HTTP/1.1\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 403") and b"not a sandbox" in reply


def test_garbage_is_a_bad_request_not_a_crash(proxy: EgressProxy) -> None:
    """Malformed requests get 400 and the proxy keeps serving."""
    proxy.admit("127.0.0.1", ["allowed.test"])
    assert _ask(proxy, b"\x00\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _ask(proxy, b"GET /relative HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _ask(proxy, b"CONNECT allowed.test:443 HTTP/1.1\r\n\r\n")  # still answering
