"""The egress proxy: the only way out of an ``allowlist`` sandbox, and its network.

Sandboxes whose policy has ``network.mode: allowlist`` sit on an internal Docker network
(``athena-egress``: no route out, containers cannot reach each other) whose gateway is this
host. :class:`EgressProxy` listens on that gateway and takes HTTP requests and HTTPS CONNECTs,
allowing only what the run's own allowlist allows (see :mod:`orchestrator.egress_rules`); it is
also the only resolver those sandboxes have (their DNS points at nothing that forwards). Each
refusal is kept for the run that caused it, by the sandbox's address, and becomes a
``network:`` violation. When we are root, an iptables rule drops everything else the bridge
sends to this host, so no other host service is reachable from it.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import socketserver
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog

from orchestrator.backends.docker.compile import EgressRoute
from orchestrator.backends.docker.errors import map_docker_errors
from orchestrator.egress_rules import address_verdict, name_verdict

log = structlog.get_logger(__name__)

NETWORK = "athena-egress"
BRIDGE = "athena-egress0"
_HEAD_LIMIT = 16 * 1024
_TIMEOUT_S = 15.0
_IDLE_S = 300.0


@dataclass(frozen=True)
class Refusal:
    """One destination the proxy refused for a sandbox."""

    host: str
    port: int
    reason: str


@dataclass
class _Client:
    allowed: tuple[str, ...]
    refusals: list[Refusal] = field(default_factory=list)


class EgressProxy:
    """An HTTP(S) proxy that applies each sandbox's allowlist.

    Args:
        bind: the address to listen on (the egress network's gateway).
        pinned: names resolved to fixed addresses instead of DNS (test-only: servers of our own,
            exempt from the public-address check).
    """

    def __init__(self, bind: str, pinned: Mapping[str, str] | None = None) -> None:
        self._pinned = {name.lower(): ip for name, ip in (pinned or {}).items()}
        self._clients: dict[str, _Client] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request, self.client_address[0])

        self._server = socketserver.ThreadingTCPServer((bind, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="athena-egress", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the proxy listens on."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def admit(self, client: str, allowed: Sequence[str]) -> None:
        """Let a sandbox's address use the proxy under its run's allowlist."""
        with self._lock:
            self._clients[client] = _Client(tuple(allowed))

    def release(self, client: str) -> list[Refusal]:
        """Stop serving a sandbox's address; return what was refused to it."""
        with self._lock:
            entry = self._clients.pop(client, None)
        return entry.refusals if entry else []

    def close(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ one connection

    def _serve(self, conn: socket.socket, client: str) -> None:
        conn.settimeout(_TIMEOUT_S)
        try:
            head, rest = _read_head(conn)
            method, target = _parse_head(head)
            host, port = _destination(method, target)
        except (OSError, ValueError) as exc:
            _reply(conn, 400, f"bad proxy request: {exc}")
            return
        verdict_reason, upstream = self._open(client, host, port)
        if upstream is None:
            self._refuse(client, host, port, verdict_reason)
            _reply(conn, 403, f"refused by the sandbox's egress policy: {verdict_reason}")
            return
        with upstream:
            if method == "CONNECT":
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.sendall(_origin_form(head, target) + rest)
            _tunnel(conn, upstream)

    def _open(self, client: str, host: str, port: int) -> tuple[str, socket.socket | None]:
        with self._lock:
            entry = self._clients.get(client)
        if entry is None:
            return "this address is not a sandbox of this orchestrator", None
        verdict = name_verdict(host, port, entry.allowed)
        if not verdict.allowed:
            return verdict.reason, None
        pinned = self._pinned.get(host.lower().rstrip("."))
        try:
            addresses = [pinned] if pinned else _resolve(host, port)
        except OSError:
            addresses = []
        verdict = address_verdict(host, addresses, pinned=bool(pinned))
        if not verdict.allowed or verdict.address is None:
            return verdict.reason, None
        try:
            return "", socket.create_connection((verdict.address, port), timeout=_TIMEOUT_S)
        except OSError as exc:
            return f"{host}:{port} could not be reached ({exc.strerror or exc})", None

    def _refuse(self, client: str, host: str, port: int, reason: str) -> None:
        log.info("egress refused", client=client, host=host, port=port, reason=reason)
        with self._lock:
            entry = self._clients.get(client)
            if entry is not None and len(entry.refusals) < 100:
                entry.refusals.append(Refusal(host, port, reason))


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise ValueError("the request ended before its headers did")
        data += chunk
        if len(data) > _HEAD_LIMIT:
            raise ValueError("request headers too large")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _parse_head(head: bytes) -> tuple[str, str]:
    first = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = first.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError(f"not an HTTP request line: {first[:80]!r}")
    return parts[0].upper(), parts[1]


def _destination(method: str, target: str) -> tuple[str, int]:
    if method == "CONNECT":
        parsed = urlsplit("//" + target)
    elif target.lower().startswith("http://"):
        parsed = urlsplit(target)
    else:
        raise ValueError("only absolute http:// URLs and CONNECT are proxied")
    if not parsed.hostname:
        raise ValueError(f"no host in {target[:80]!r}")
    return parsed.hostname, parsed.port or (443 if method == "CONNECT" else 80)


def _origin_form(head: bytes, target: str) -> bytes:
    """Rewrite the request line to origin form and close the connection after one exchange."""
    lines = head.split(b"\r\n")
    method, _, version = lines[0].split(b" ")
    parsed = urlsplit(target)
    path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    kept = [line for line in lines[1:] if not line.lower().startswith((b"proxy-", b"connection:"))]
    first = method + b" " + path.encode() + b" " + version
    return b"\r\n".join([first, *kept, b"Connection: close", b"", b""])


def _tunnel(a: socket.socket, b: socket.socket) -> None:
    """Relay bytes both ways until either side closes or both stay idle too long."""
    sockets = [a, b]
    while True:
        readable, _, _ = select.select(sockets, [], [], _IDLE_S)
        if not readable:
            return
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            (b if sock is a else a).sendall(data)


def _reply(conn: socket.socket, status: int, message: str) -> None:
    body = message.encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {'Forbidden' if status == 403 else 'Bad Request'}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"X-Athena-Refused: {message[:200]}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        conn.sendall(head.encode("latin-1", errors="replace") + body)


# --------------------------------------------------------------------------- the network


def ensure_network(api: Any) -> str:
    """Create the internal egress network if it is missing; return its gateway address."""
    if not api.networks(names=[NETWORK]):
        api.create_network(
            NETWORK,
            driver="bridge",
            internal=True,
            options={
                # Sandboxes cannot reach each other, only this host's gateway.
                "com.docker.network.bridge.enable_icc": "false",
                "com.docker.network.bridge.name": BRIDGE,
            },
            labels={"athena.sandbox.network": "egress"},
            check_duplicate=True,
        )
    details = api.inspect_network(NETWORK)
    return str(details["IPAM"]["Config"][0]["Gateway"])


def _accept_rule(gateway: str, port: int) -> list[str]:
    return ["INPUT", "-i", BRIDGE, "-p", "tcp", "-d", gateway, "--dport", str(port), "-j", "ACCEPT"]


# Replies to the proxy's own connections (to servers on the network, in tests) come back in.
_REPLIES = ["INPUT", "-i", BRIDGE, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]
_DROP = ["INPUT", "-i", BRIDGE, "-j", "DROP"]


def shield_host(gateway: str, port: int) -> bool:
    """Drop all the bridge sends to this host but the proxy's port (needs root and iptables).

    Returns:
        Whether the rules are in place.
    """
    try:
        for rule, add in ((_DROP, "-A"), ([*_REPLIES, "-j", "ACCEPT"], "-I")):
            present = subprocess.run(["iptables", "-C", *rule], capture_output=True, check=False)
            if present.returncode != 0:
                subprocess.run(["iptables", add, *rule], check=True, capture_output=True)
        accept = ["iptables", "-I", *_accept_rule(gateway, port)]
        subprocess.run(accept, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        log.warning("cannot shield the host from the egress network", error=str(exc))
        return False
    return True


def unshield_host(gateway: str, port: int) -> None:
    """Remove this proxy's accept rule (the drop rule stays for the next one)."""
    remove = ["iptables", "-D", *_accept_rule(gateway, port)]
    subprocess.run(remove, capture_output=True, check=False)


# --------------------------------------------------------------------------- the set-up


@dataclass(frozen=True)
class _Installed:
    route: EgressRoute
    proxy: EgressProxy
    shielded: bool

    def remove(self) -> None:
        self.proxy.close()
        if self.shielded:
            host, port = self.proxy.address
            unshield_host(host, port)


class EgressSetup:
    """The egress network and this process's proxy on its gateway, set up at the first need.

    Thread-safe: ``_lock`` guards ``_installed``.

    Args:
        pinned: names the proxy resolves to fixed addresses (see :class:`EgressProxy`).
    """

    def __init__(self, pinned: Mapping[str, str] | None = None) -> None:
        self._pinned = pinned
        self._lock = threading.Lock()
        self._installed: _Installed | None = None

    def route(self, gateway: Callable[[], str]) -> EgressRoute:
        """The route to the proxy, setting up network, proxy and shield once.

        Args:
            gateway: creates the egress network if needed and returns its gateway address.

        Raises:
            SandboxError: the engine could not set up the network.
        """
        with self._lock:
            if self._installed is not None:
                return self._installed.route
        with map_docker_errors("set up the egress network"):
            address = gateway()
        proxy = EgressProxy(address, pinned=self._pinned)
        host, port = proxy.address
        shielded = os.geteuid() == 0 and shield_host(address, port)
        mine = _Installed(EgressRoute(NETWORK, f"http://{host}:{port}"), proxy, shielded)
        with self._lock:
            if self._installed is None:
                self._installed = mine
                return mine.route
            theirs = self._installed
        mine.remove()  # another thread won the race
        return theirs.route

    def admit(self, client: str, allowed: Sequence[str]) -> None:
        """Let a sandbox's address use the proxy under its run's allowlist."""
        with self._lock:
            installed = self._installed
        if installed is not None:
            installed.proxy.admit(client, allowed)

    def release(self, client: str) -> list[Refusal]:
        """Stop serving a sandbox's address; return what was refused to it."""
        with self._lock:
            installed = self._installed
        return installed.proxy.release(client) if installed is not None else []

    def close(self) -> None:
        """Stop the proxy and remove its shield rule."""
        with self._lock:
            installed, self._installed = self._installed, None
        if installed is not None:
            installed.remove()
