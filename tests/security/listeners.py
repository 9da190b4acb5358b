"""Listeners on the host's addresses: any connection or datagram that reaches one is a hit.

A sandbox must never reach the host's network stack: the session listens on 127.0.0.1, ::1, the
primary address and every Docker bridge gateway, TCP and UDP, plus the fixed loopback ports the
RedCode-Exec corpus uses.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Hit:
    """Something reached one of our listeners."""

    proto: str
    local: str
    peer: str
    data: bytes
    at: float


class Listeners:
    """TCP and UDP listeners on host addresses; any connection or datagram is a hit.

    Args:
        addresses: host addresses to listen on (an ephemeral port each, TCP and UDP).
        fixed: extra (proto, address, port) to listen on (the corpus's ports, DNS); a port
            already taken elsewhere is skipped and noted in ``unavailable``.
    """

    def __init__(self, addresses: Iterable[str], fixed: Iterable[tuple[str, str, int]] = ()):
        self.hits: list[Hit] = []
        self.unavailable: list[str] = []
        self.tcp: list[tuple[str, int]] = []
        self.udp: list[tuple[str, int]] = []
        self._selector = selectors.DefaultSelector()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        for address in addresses:
            self._bind("tcp", address, 0)
            self._bind("udp", address, 0)
        for proto, address, port in fixed:
            self._bind(proto, address, port)
        self._thread = threading.Thread(target=self._serve, name="sec-listeners", daemon=True)
        self._thread.start()

    def _bind(self, proto: str, address: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(family, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            if proto == "tcp":
                sock.listen(64)
        except OSError as exc:
            sock.close()
            self.unavailable.append(f"{proto} {address}:{port} ({exc.strerror})")
            return
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, proto)
        self._sockets.append(sock)
        (self.tcp if proto == "tcp" else self.udp).append((address, sock.getsockname()[1]))

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.2):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                with contextlib.suppress(OSError):
                    self._take(sock, key.data)

    def _take(self, sock: socket.socket, proto: str) -> None:
        local = "{}:{}".format(*sock.getsockname()[:2])
        if proto == "udp":
            data, peer = sock.recvfrom(65536)
            self._record("udp", local, peer, data)
            return
        conn, peer = sock.accept()
        with conn:
            conn.settimeout(0.3)
            data = b""
            with contextlib.suppress(OSError):
                data = conn.recv(1024)
        self._record("tcp", local, peer, data)

    def _record(self, proto: str, local: str, peer: object, data: bytes) -> None:
        with self._lock:
            self.hits.append(Hit(proto, local, str(peer), data[:200], time.monotonic()))

    def hits_since(self, mark: float) -> list[Hit]:
        """Hits that arrived after ``mark`` (a time.monotonic() value)."""
        with self._lock:
            return [hit for hit in self.hits if hit.at >= mark]

    def close(self) -> None:
        """Stop serving and close every socket."""
        self._stop.set()
        self._thread.join(5)
        for sock in self._sockets:
            sock.close()
        self._selector.close()
