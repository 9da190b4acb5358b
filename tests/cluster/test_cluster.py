"""The cluster of ``make cluster-up`` through its load balancer: tenants, sessions, nodes dying.

In file order, with every node up: tenant isolation (runs, memories, sessions on every node)
and MCP sessions staying on their node; then the bounded load test (locust, in
:mod:`tests.cluster.load`) during which node-2 is killed with SIGKILL and node-3 drained with
SIGTERM, and node-2 is started again under its id. The load test leaves the cluster without
node-3, so it comes last. The cluster is ``make cluster-test``'s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import docker
import httpx
import psycopg
import pytest

from athena.mcp.memory_api import MemoryAPI
from athena.service.client import RemoteMemoryAPI, RemoteSession
from orchestrator.backends.docker.owners import (
    LABEL_OWNER_HOST,
    LABEL_OWNER_NODE,
    LABEL_OWNER_PID,
    LABEL_OWNER_STARTED,
    LABEL_SANDBOX,
)
from orchestrator.errors import SessionEndedError
from tests.cluster.conftest import ROOT, Cluster, bearer, of_node, watchdogs
from tests.integration.test_mcp import data, http_session
from tests.integration.test_mcp_sessions import session_call

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

LOAD_SECONDS = 45.0
KILL_AT_S = 15.0  # node-2: SIGKILL
DRAIN_AT_S = 25.0  # node-3: SIGTERM
GRACE_S = 10.0  # the nodes' --grace (scripts/cluster.sh)
WATCHDOG_S = 5.0  # a killed node's containers are gone within this (about a second)
IMAGE = "athena-sandbox/python:latest"  # of a planted leftover container


def node_of(session_id: str) -> str:
    """The node a session id names (``<node-id>.<hex>``)."""
    return session_id.split(".", 1)[0]


@pytest.fixture(scope="module")
def alice(cluster: Cluster) -> Iterator[RemoteMemoryAPI]:
    """Tenant A: the token ``make cluster-up`` printed."""
    with MemoryAPI.connect(cluster.url, token=cluster.token, timeout=30) as api:
        yield api


@pytest.fixture(scope="module")
def bob_token(cluster: Cluster) -> str:
    """Tenant B's token, added to the shared tokens file (every node takes it)."""
    return cluster.add_tenant(f"bob-{uuid.uuid4().hex[:6]}", policies=["strict"])


@pytest.fixture(scope="module")
def bob(cluster: Cluster, bob_token: str) -> Iterator[RemoteMemoryAPI]:
    """Tenant B's client, through the load balancer."""
    with MemoryAPI.connect(cluster.url, token=bob_token, timeout=30) as api:
        yield api


@pytest.fixture(scope="module")
def alice_sessions(alice: RemoteMemoryAPI) -> Iterator[list[RemoteSession]]:
    """Sessions of A on every node (opened through the load balancer until each node has one)."""
    sessions: list[RemoteSession] = []
    for _ in range(30):
        session = alice.open_session()
        session.execute_code("secret = 'alice'")
        sessions.append(session)
        if {node_of(s.session_id) for s in sessions} == {"node-1", "node-2", "node-3"}:
            break
    yield sessions
    for session in sessions:
        session.close()


def test_sessions_spread_over_the_nodes(alice_sessions: list[RemoteSession]) -> None:
    """Sessions opened through the load balancer land on all three nodes, each id naming one."""
    assert {node_of(s.session_id) for s in alice_sessions} == {"node-1", "node-2", "node-3"}


def test_another_tenant_does_not_see_the_runs(alice: RemoteMemoryAPI, bob: RemoteMemoryAPI) -> None:
    """B gets None for A's execution ids (as for unknown ones); A gets its records."""
    ids = [alice.execute_code(f"print({n})")["execution_id"] for n in range(6)]
    for execution_id in ids:
        assert alice.get_execution(execution_id) is not None
        assert bob.get_execution(execution_id) is None


def test_another_tenant_does_not_recall_the_memories(
    alice: RemoteMemoryAPI, bob: RemoteMemoryAPI
) -> None:
    """A's memory is recalled by A and not by B, whichever nodes answer."""
    word = f"zebracode{uuid.uuid4().hex[:8]}"
    alice.remember(f"the deploy key is kept under {word}")
    for _ in range(3):  # three calls: leastconn spreads them
        found = alice.recall(word, kinds="memory")
        assert f"the deploy key is kept under {word}" in [m["content"] for m in found]
        assert word not in json.dumps(bob.recall(word, limit=50))


def test_another_tenants_session_is_unknown_on_every_node(
    cluster: Cluster, bob_token: str, alice_sessions: list[RemoteSession]
) -> None:
    """B using A's session id, on the owner or another node, gets the 410 of an unknown id."""
    for session in alice_sessions:
        node = node_of(session.session_id)
        unknown = f"{node}.{uuid.uuid4().hex}"
        for url in [cluster.url, *(cluster.node_url(n) for n in cluster.nodes)]:
            for path in ("", "/execute"):
                answers = []
                for sid in (session.session_id, unknown):
                    body = {"code": "print(secret)"} if path else None
                    method = "POST" if path else "GET"
                    response = httpx.request(
                        method,
                        f"{url}/v1/sessions/{sid}{path}",
                        json=body,
                        headers=bearer(bob_token),
                        timeout=30,
                    )
                    error = response.json()["error"]
                    answers.append(
                        (response.status_code, error["type"], error["message"].replace(sid, "ID"))
                    )
                assert answers[0] == answers[1], (url, path, answers)
                assert answers[0][:2] == (410, "SessionEndedError")


def test_another_tenant_lists_no_sessions_and_cannot_end_them(
    cluster: Cluster, bob_token: str, bob: RemoteMemoryAPI, alice_sessions: list[RemoteSession]
) -> None:
    """Every node and the load balancer list all of A's sessions to A, none to B; A's outlive B."""
    mine = {s.session_id for s in alice_sessions}
    for url in [cluster.node_url(node) for node in cluster.nodes] + [cluster.url]:
        listed = {}
        for tenant, token in (("alice", cluster.token), ("bob", bob_token)):
            response = httpx.get(f"{url}/v1/sessions", headers=bearer(token), timeout=30)
            listed[tenant] = {s["session_id"] for s in response.json()["sessions"]}
        assert mine <= listed["alice"] and listed["bob"].isdisjoint(mine), url
    for session in alice_sessions:
        with pytest.raises(SessionEndedError):
            bob.session(session.session_id)
        assert session.execute_code("print(secret)")["stdout"] == "alice\n"


def test_a_session_answers_through_any_node(
    cluster: Cluster, alice_sessions: list[RemoteSession]
) -> None:
    """A's session is reached through every node (proxied to its owner), state and all."""
    for session in alice_sessions:
        for node in cluster.nodes:
            response = httpx.post(
                f"{cluster.node_url(node)}/v1/sessions/{session.session_id}/execute",
                json={"code": "print(secret)"},
                headers=bearer(cluster.token),
                timeout=30,
            )
            assert response.status_code == 200, response.text
            assert response.json()["stdout"] == "alice\n"


def test_mcp_sessions_stick_to_their_node(cluster: Cluster) -> None:
    """MCP clients through the load balancer keep their MCP session (and a sandbox session)."""

    async def one_client(seen: list[tuple[str, list[Any]]]) -> None:
        async with http_session(cluster.url, cluster.token, mode="legacy") as client:
            sid = data(await client.call_tool("open_session", {}))["session_id"]
            outputs = []
            for n in range(5):
                code = "x = 0" if n == 0 else "x += 1\noutput = x"
                result = data(await session_call(client, sid, code))
                outputs.append(result["output"])
                assert data(await client.call_tool("execute_code", {"code": "print(1)"}))["success"]
            seen.append((node_of(sid), outputs))

    async def main() -> list[tuple[str, list[Any]]]:
        seen: list[tuple[str, list[Any]]] = []
        async with anyio.create_task_group() as group:
            for _ in range(6):
                group.start_soon(one_client, seen)
        return seen

    seen = anyio.run(main)
    assert [outputs for _node, outputs in seen] == [[None, 1, 2, 3, 4]] * 6
    assert len({node for node, _outputs in seen}) > 1, "all MCP sessions on one node"


# ------------------------------------------------------------------------------ the load test


def plant_leftover(node: str, pid: int) -> str:
    """A created container labelled as a dead process's of ``node``: the next start sweeps it."""
    client = docker.from_env()
    try:
        container = client.containers.create(
            IMAGE,
            command=["true"],
            labels={
                LABEL_SANDBOX: "1",
                LABEL_OWNER_NODE: node,
                LABEL_OWNER_HOST: os.uname().nodename,
                LABEL_OWNER_PID: str(pid),
                LABEL_OWNER_STARTED: "1",
            },
            network_disabled=True,
        )
        return str(container.id)
    finally:
        client.close()


def exists(container_id: str) -> bool:
    """Whether a container is still on the engine."""
    client = docker.from_env()
    try:
        return any(c["Id"] == container_id for c in client.api.containers(all=True))
    finally:
        client.close()


def wait_until(condition: Callable[[], object], seconds: float) -> float:
    """Poll ``condition`` until true; return how long it took (fails after ``seconds``)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - start


def recorded_ids(cluster: Cluster, tenant: str) -> set[str]:
    """The execution ids the shared PostgreSQL store holds for a tenant."""
    with psycopg.connect(cluster.db_url) as conn:
        rows = conn.execute("SELECT execution_id FROM executions WHERE tenant = %s", (tenant,))
        return {row[0] for row in rows}


class Chaos:
    """What the load test did to the nodes and saw of them, with the times it took."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.seen: dict[str, Any] = {}
        self.drained_at = 0.0

    def kill_node_2(self) -> None:
        """SIGKILL node-2; its watchdog removes its containers within seconds, and exits."""
        pid = self.cluster.signal("node-2", signal.SIGKILL)
        self.seen["node-2 pid"] = pid
        self.seen["watchdog s"] = wait_until(lambda: not of_node("node-2", pid), WATCHDOG_S)
        wait_until(lambda: not watchdogs(pid), WATCHDOG_S)

    def drain_node_3(self) -> None:
        """SIGTERM node-3: /readyz is 503 at once (the load balancer stops sending to it)."""
        pid = self.cluster.signal("node-3", signal.SIGTERM)
        self.seen["node-3 pid"], self.drained_at = pid, time.monotonic()
        self.seen["readyz 503 s"] = wait_until(lambda: self.cluster.ready("node-3") in (0, 503), 2)

    def restart_node_2(self) -> None:
        """Start node-2 again under its id: it sweeps what a dead process of node-2 left."""
        planted = plant_leftover("node-2", self.seen["node-2 pid"])
        start = time.monotonic()
        self.cluster.start("node-2")
        self.seen["restart s"] = time.monotonic() - start
        self.seen["sweep s"] = wait_until(lambda: not exists(planted), 10)
        assert of_node("node-2", self.seen["node-2 pid"]) == []

    def node_3_gone(self) -> None:
        """node-3 exits within its grace and leaves no container."""
        pid = self.seen["node-3 pid"]
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), GRACE_S + 10)
        self.seen["drain s"] = time.monotonic() - self.drained_at
        wait_until(lambda: not of_node("node-3") and not watchdogs(pid), WATCHDOG_S)


def at(t0: float, seconds: float) -> None:
    """Sleep until ``seconds`` after ``t0``."""
    time.sleep(max(0.0, t0 + seconds - time.monotonic()))


def summary(calls: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """Calls counted by kind and outcome (ok, failed, or the error's class)."""
    return Counter((c["kind"], c.get("error") or ("ok" if c["ok"] else "failed")) for c in calls)


def load_with_chaos(cluster: Cluster, token: str, out: Path) -> tuple[dict[str, Any], Chaos]:
    """Run the load (its own process) while killing, draining and restarting nodes on time."""
    command = [sys.executable, "-m", "tests.cluster.load", cluster.url, token, str(out)]
    command += ["--users", "12", "--seconds", str(LOAD_SECONDS)]
    chaos = Chaos(cluster)
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as load:
        assert load.stdout is not None and load.stdout.readline() == "started\n"
        t0 = time.monotonic()
        try:
            at(t0, KILL_AT_S)
            chaos.kill_node_2()
            at(t0, DRAIN_AT_S)
            chaos.drain_node_3()
            chaos.node_3_gone()
            chaos.restart_node_2()
        finally:
            load.wait(LOAD_SECONDS + 60)
    assert load.returncode == 0
    return json.loads(out.read_text()), chaos


def show(report: dict[str, Any], chaos: Chaos) -> None:
    """Print the calls by kind and outcome, each error message once, and the chaos timings."""
    calls = report["calls"]
    counts = dict(summary(calls))
    print(f"\nload: {report['seconds']} s, {len(calls)} calls: {counts}; {chaos.seen}")
    for kind, error, message in sorted(
        {(c["kind"], c["error"], c["message"]) for c in calls if "error" in c}
    ):
        print(f"  {kind}: {error}: {message}")


def test_load_with_a_node_killed_and_one_drained(cluster: Cluster, tmp_path: Path) -> None:
    """Under load, SIGKILL node-2 and drain node-3: every call answered, no record lost.

    Failed calls are ServiceUnavailableError or SessionEndedError only (runs and sessions of the
    dead or draining node), node-1's sessions keep their state throughout, node-2 comes back
    under its id and sweeps a dead predecessor's container, and no container of the dead or
    drained process stays.
    """
    tenant = f"load-{uuid.uuid4().hex[:6]}"
    token = cluster.add_tenant(tenant, policies=["strict"], max_in_flight=64)
    report, chaos = load_with_chaos(cluster, token, tmp_path / "load.json")
    show(report, chaos)
    calls: list[dict[str, Any]] = report["calls"]
    assert report["pending"] == [], "calls never answered"
    errors = Counter(c["error"] for c in calls if "error" in c)
    assert set(errors) <= {"ServiceUnavailableError", "SessionEndedError"}, errors
    assert all(c["ok"] for c in calls if "error" not in c), "an answered call failed"
    node_1 = [c for c in calls if c["kind"] == "session" and node_of(c["session_id"]) == "node-1"]
    assert node_1 and all(c["ok"] and c["state_ok"] and "error" not in c for c in node_1)
    completed = {c["execution_id"] for c in calls if c.get("execution_id") and c["ok"]}
    assert completed, "no run completed"
    assert completed <= recorded_ids(cluster, tenant), "a completed run's record is missing"
    assert of_node("node-2", chaos.seen["node-2 pid"]) == [] and of_node("node-3") == []
    assert cluster.ready("node-2") == 200 and cluster.ready("node-1") == 200
