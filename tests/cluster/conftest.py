"""The cluster of ``make cluster-up`` as the tests see it: its load balancer, nodes and store.

These tests do not start a cluster: ``make cluster-test`` (``scripts/cluster.sh test``) starts
one, runs them with ATHENA_URL, ATHENA_TOKEN and ATHENA_CLUSTER_DIR set, and stops it. Without
them the tests fail (a plain ``pytest`` leaves this directory out).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from athena.service.tokens import TokenFile
from orchestrator.backends.docker.owners import LABEL_OWNER_NODE, LABEL_OWNER_PID

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Cluster:
    """A running cluster: the load balancer's URL and token, its state directory, its nodes."""

    url: str
    token: str
    state: Path
    port: int
    nodes: tuple[str, ...] = ("node-1", "node-2", "node-3")

    @property
    def db_url(self) -> str:
        """The PostgreSQL URL the nodes share."""
        return (self.state / "db-url").read_text().strip()

    def node_url(self, node: str) -> str:
        """A node's own URL (node N listens on the load balancer's port + N)."""
        return f"http://127.0.0.1:{self.port + int(node.removeprefix('node-'))}"

    def pid(self, node: str) -> int:
        """The pid of a node's process (from its pid file)."""
        return int((self.state / f"{node}.pid").read_text())

    def signal(self, node: str, signum: signal.Signals) -> int:
        """Send a node a signal; return its pid."""
        pid = self.pid(node)
        os.kill(pid, signum)
        return pid

    def start(self, node: str) -> None:
        """(Re)start a node with the cluster's script and wait until its /readyz is 200."""
        subprocess.run(
            ["bash", "scripts/cluster.sh", "start-node", node],
            cwd=ROOT,
            check=True,
            timeout=90,
            env={**os.environ, "CLUSTER_DIR": str(self.state), "CLUSTER_PORT": str(self.port)},
        )

    def ready(self, node: str) -> int:
        """The status of a node's /readyz (0 when nothing answers)."""
        try:
            return httpx.get(f"{self.node_url(node)}/readyz", timeout=2).status_code
        except httpx.TransportError:
            return 0

    def add_tenant(self, tenant: str, **options: Any) -> str:
        """Add a tenant's token to the shared tokens file; return it once every node takes it."""
        _info, token = TokenFile(self.state / "tokens.json").add(tenant, **options)
        deadline = time.monotonic() + 15
        for node in self.nodes:
            if self.ready(node) != 200:
                continue
            url = f"{self.node_url(node)}/v1/whoami"
            while httpx.get(url, headers=bearer(token), timeout=5).status_code != 200:
                assert time.monotonic() < deadline, f"{node} did not load the new token"
                time.sleep(0.2)
        return token


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a token."""
    return {"Authorization": f"Bearer {token}"}


def containers(**labels: str) -> list[dict[str, Any]]:
    """The containers on the engine (running or not) carrying all these labels."""
    client = docker.from_env()
    try:
        wanted = [f"{key}={value}" for key, value in labels.items()]
        return list(client.api.containers(all=True, filters={"label": wanted}))
    finally:
        client.close()


def of_node(node: str, pid: int | None = None) -> list[dict[str, Any]]:
    """The sandbox containers of a node (of one process of it, when ``pid`` is given)."""
    if pid is None:
        return containers(**{LABEL_OWNER_NODE: node})
    return containers(**{LABEL_OWNER_NODE: node, LABEL_OWNER_PID: str(pid)})


def watchdogs(pid: int) -> list[int]:
    """The container watchdogs of a node process still running (their arguments name it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or gone meanwhile
            continue
        if any(a.endswith(b"docker/watcher.py") for a in args) and (
            f"{LABEL_OWNER_PID}={pid}".encode() in args
        ):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The cluster ``make cluster-test`` started; missing, the tests fail (never skip)."""
    url, token = os.environ.get("ATHENA_URL"), os.environ.get("ATHENA_TOKEN")
    state = os.environ.get("ATHENA_CLUSTER_DIR")
    if not (url and token and state):
        pytest.fail(
            "tests/cluster runs against a cluster: run `make cluster-test` "
            "(it sets ATHENA_URL, ATHENA_TOKEN and ATHENA_CLUSTER_DIR)",
            pytrace=False,
        )
    port = int(url.rsplit(":", 1)[1].rstrip("/"))
    yield Cluster(url=url, token=token, state=Path(state), port=port)
