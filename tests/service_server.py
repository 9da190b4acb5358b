"""A real ``athena-sandbox serve`` in a subprocess, for tests that talk to the HTTP API.

Usage::

    from tests.service_server import running_server

    with running_server(tmp_path, tenants={"alice": {}, "bob": {"max_in_flight": 1}}) as server:
        url, token, process = server          # or server.url, server.token, server.process
        httpx.get(f"{url}/v1/policies", headers=server.headers())     # alice's token
        httpx.get(f"{url}/v1/policies", headers=server.headers("bob"))

``running_server`` starts ``python -m athena.cli serve`` on 127.0.0.1 with a free port, a fresh
SQLite store in ``directory`` (a temporary directory when None, removed afterwards) and, when
``tenants`` is given, a tokens file holding one token per tenant (``TokenFile.add`` keyword
arguments per tenant: ``policies``, ``max_in_flight``); ``server.token`` is the first tenant's
token (None without tenants: the server then runs in no-token mode, tenant ``default``) and
``server.tokens`` maps every tenant to its token. It waits until ``/healthz`` answers, yields a
:class:`ServiceServer`, and on exit sends SIGTERM, waits up to ``grace + 20`` seconds, then kills.
``server.stop()`` does the same early and returns the exit code (tests of the drain call it
themselves). ``server.log()`` is the server's stderr so far; ``server.containers()`` lists the
sandbox containers the server process owns (Docker labels: warm pool ones included), so a test
can assert none is left once it stopped; ``server.container_exists(sandbox_id)`` tells whether
one run's container (the ``sandbox_id`` of its begin event) is still there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

START_TIMEOUT_S = 60.0


@dataclass
class ServiceServer:
    """A running server: where it listens, its tokens, its process and files."""

    url: str
    token: str | None
    process: subprocess.Popen[bytes]
    tokens: dict[str, str] = field(default_factory=dict)
    db_path: Path | None = None
    tokens_file: Path | None = None
    log_path: Path | None = None
    grace: float = 10.0

    def __iter__(self) -> Iterator[Any]:
        """Unpack as ``url, token, process``."""
        return iter((self.url, self.token, self.process))

    def headers(self, tenant: str | None = None) -> dict[str, str]:
        """The Authorization header of ``tenant`` (default: the first); empty without tokens."""
        token = self.token if tenant is None else self.tokens[tenant]
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    def client(self, tenant: str | None = None, timeout: float = 120.0) -> httpx.Client:
        """An httpx client on the server's URL with ``tenant``'s token."""
        return httpx.Client(base_url=self.url, headers=self.headers(tenant), timeout=timeout)

    def log(self) -> str:
        """The server's stderr so far."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def containers(self) -> list[dict[str, Any]]:
        """The sandbox containers (low-level list entries) this server process owns."""
        import docker

        client = docker.from_env()
        try:
            return list(
                client.api.containers(
                    all=True, filters={"label": f"athena.owner.pid={self.process.pid}"}
                )
            )
        finally:
            client.close()

    def container_exists(self, sandbox_id: str) -> bool:
        """Whether the container of a run (the ``sandbox_id`` of its begin event) still exists."""
        return any(c["Id"].startswith(sandbox_id) for c in self.containers())

    def stop(self, timeout: float | None = None) -> int:
        """Send SIGTERM, wait (``grace + 20`` s by default), kill if needed; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.grace + 20 if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_tokens(path: Path, tenants: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    from athena.service.tokens import TokenFile

    tokens_file = TokenFile(path)
    made: dict[str, str] = {}
    for tenant, options in tenants.items():
        _info, token = tokens_file.add(tenant, **dict(options))
        made[tenant] = token
    return made


def _wait_healthy(server: ServiceServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {server.process.returncode}:\n{server.log()}"
            )
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not answer /healthz within {timeout:g} s:\n{server.log()}")


@contextmanager
def running_server(
    directory: Path | None = None,
    *,
    tenants: Mapping[str, Mapping[str, Any]] | None = None,
    grace: float = 10.0,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[ServiceServer]:
    """Start ``athena-sandbox serve`` on 127.0.0.1, yield it once ``/healthz`` answers, stop it.

    Args:
        directory: where the store, tokens file and log go (None: a temporary directory).
        tenants: tenant name -> ``TokenFile.add`` keyword arguments; None: no-token mode.
        grace: the server's ``--grace`` seconds.
        args: more ``serve`` arguments.
        env: more environment variables for the server.

    Raises:
        RuntimeError: the server exited or did not answer ``/healthz`` in time.
    """
    owned = directory is None
    base = Path(tempfile.mkdtemp(prefix="athena-serve-")) if directory is None else directory
    base.mkdir(parents=True, exist_ok=True)
    db_path = base / "memory.db"
    tokens_file = base / "tokens.json" if tenants else None
    tokens = _write_tokens(tokens_file, tenants) if tokens_file is not None and tenants else {}
    port = free_port()
    command = [sys.executable, "-m", "athena.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--db", str(db_path), "--grace", str(grace)]
    if tokens_file is not None:
        command += ["--tokens", str(tokens_file)]
    command += list(args)
    child_env = {k: v for k, v in os.environ.items() if k != "ATHENA_TOKENS_FILE"}
    child_env.update(env or {})
    log_path = base / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=child_env
        )
    server = ServiceServer(
        url=f"http://127.0.0.1:{port}",
        token=next(iter(tokens.values()), None),
        process=process,
        tokens=tokens,
        db_path=db_path,
        tokens_file=tokens_file,
        log_path=log_path,
        grace=grace,
    )
    try:
        _wait_healthy(server, START_TIMEOUT_S)
        yield server
    finally:
        server.stop()
        if owned:
            shutil.rmtree(base, ignore_errors=True)
