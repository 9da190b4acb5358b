"""The engine client: FastEngine and DockerEngine (either client behind it) against a fake engine socket."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import docker
import pytest

from orchestrator.backends.docker.engine import DockerEngine
from orchestrator.backends.docker.errors import is_transient, map_docker_errors
from orchestrator.backends.docker.fastpath import EngineError, FastEngine
from orchestrator.errors import BackendUnavailableError, ImageNotFoundError, SandboxFailedError


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    seen: list[tuple[str, str, bytes]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the engine does

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.command, self.path, body))  # type: ignore[attr-defined]
        if self.path.endswith("/containers/create"):
            if json.loads(body)["Image"] == "missing":
                return self._json(404, {"message": "No such image: missing"})
            return self._json(201, {"Id": "abc123", "Warnings": []})
        if self.path.endswith("/start"):
            if "/containers/boom/" in self.path:
                return self._json(500, {"message": "engine hiccup"})
            self.send_response(204)
            self.end_headers()
            return None
        if "/attach?" in self.path:
            self.send_response(101)
            self.send_header("Upgrade", "tcp")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            self.connection.sendall(self.connection.recv(100).upper())  # echo the stream back
            return None
        return self._json(404, {"message": "page not found"})

    def _json(self, status: int, value: object) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[FastEngine, _Server]]:
    path = str(tmp_path / "engine.sock")
    server = _Server(path, _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield FastEngine(path, "1.41", timeout=5), server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_create_and_start_send_the_engine_api_calls(engine: tuple[FastEngine, _Server]) -> None:
    """create posts the body to /v1.41/containers/create and returns the id; start posts."""
    fast, server = engine
    assert fast.create({"Image": "img", "Labels": {"a": "b"}}) == "abc123"
    fast.start("abc123")
    (method, path, body), (_, start_path, _) = server.seen
    assert (method, path) == ("POST", "/v1.41/containers/create")
    assert json.loads(body) == {"Image": "img", "Labels": {"a": "b"}}
    assert start_path == "/v1.41/containers/abc123/start"


def test_attach_hands_over_the_raw_stream(engine: tuple[FastEngine, _Server]) -> None:
    """attach upgrades the connection and returns a socket carrying the stream both ways."""
    fast, server = engine
    sock = fast.attach("abc123")
    try:
        assert isinstance(sock, socket.socket)
        sock.sendall(b"hello")
        assert sock.recv(100) == b"HELLO"
    finally:
        sock.close()
    assert "stdin=1&stdout=1&stderr=1&stream=1" in server.seen[0][1]


def test_errors_keep_the_engines_message_and_map_to_ours(
    engine: tuple[FastEngine, _Server],
) -> None:
    """A 404 for an image becomes ImageNotFoundError; a 500 is transient and a SandboxFailedError."""
    fast, _ = engine
    with (
        pytest.raises(ImageNotFoundError, match="make images"),
        map_docker_errors("create", "missing"),
    ):
        fast.create({"Image": "missing"})
    with pytest.raises(EngineError) as caught:
        fast.start("boom")
    assert caught.value.status_code == 500 and caught.value.explanation == "engine hiccup"
    assert is_transient(caught.value)
    with pytest.raises(SandboxFailedError, match="engine hiccup"), map_docker_errors("start"):
        fast.start("boom")


def test_a_dead_engine_socket_is_an_os_error(tmp_path: Path) -> None:
    """With nothing listening, a call fails with an OSError, which maps to BackendUnavailableError."""
    fast = FastEngine(str(tmp_path / "nothing.sock"), "1.41", timeout=2)
    with pytest.raises(OSError):
        fast.create({"Image": "img"})
    with (
        pytest.raises(BackendUnavailableError, match="make docker-up"),
        map_docker_errors("create"),
    ):
        fast.create({"Image": "img"})


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "docker-py"])
def test_the_docker_engine_sends_the_same_calls_through_either_client(
    engine: tuple[FastEngine, _Server], fast: bool
) -> None:
    """DockerEngine creates, attaches and starts with the same Engine API calls whether the
    fast path or docker-py carries them."""
    fast_engine, server = engine
    socket_path = server.server_address
    client = docker.DockerClient(base_url=f"unix://{socket_path}", version="1.41", timeout=5)
    docker_engine = DockerEngine(client, fast_engine if fast else None)
    try:
        assert docker_engine.create({"Image": "img", "Labels": {}}) == "abc123"
        sock, attached = docker_engine.attach("abc123")
        sock.sendall(b"hello")
        assert sock.recv(100) == b"HELLO"
        attached.close()
        sock.close()
        docker_engine.start("abc123")
    finally:
        docker_engine.close()
    paths = [path.split("?")[0] for _, path, _ in server.seen]
    assert paths == [
        "/v1.41/containers/create",
        "/v1.41/containers/abc123/attach",
        "/v1.41/containers/abc123/start",
    ]
