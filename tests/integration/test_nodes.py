"""Nodes of a cluster (``serve --node-id``): pinned sessions proxied, ids held, sweeps.

Two real servers share one store (a SQLite file: the node directory lives beside the records)
and this machine's engine, as the cluster's nodes do; requests go to one node or the other
directly, as a load balancer would send them.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from athena.api import MemoryAPI
from athena.service.nodes import NodeDirectory, SQLiteDatabase
from orchestrator.backends.docker.owners import LABEL_OWNER_NODE, LABEL_SANDBOX
from orchestrator.errors import SessionEndedError
from tests.service_server import ServiceServer, running_server

pytestmark = pytest.mark.docker

TENANTS = {"alice": {"policies": ["strict"]}, "bob": {"policies": ["strict"]}}


@pytest.fixture
def nodes(tmp_path: Path, sandbox_images: Any) -> Iterator[tuple[ServiceServer, ServiceServer]]:
    """Nodes node-a and node-b sharing a store and a tokens file; neither leaves a container."""
    with running_server(tmp_path / "a", tenants=TENANTS, args=["--node-id", "node-a"]) as a:
        shared = ["--db", str(a.db_path), "--tokens", str(a.tokens_file)]
        with running_server(tmp_path / "b", args=[*shared, "--node-id", "node-b"]) as b:
            b.tokens, b.token = a.tokens, a.token
            yield a, b
            assert b.stop() == 0, b.log()
            assert b.containers() == [], b.log()
        if a.process.poll() is None:
            assert a.stop() == 0, a.log()
        assert a.containers() == [], a.log()


def _open(server: ServiceServer, tenant: str = "alice") -> str:
    with server.client(tenant) as client:
        answer = client.post("/v1/sessions", json={"language": "python"})
    assert answer.status_code == 201, answer.text
    session_id: str = answer.json()["session_id"]
    return session_id


def _call(server: ServiceServer, session_id: str, code: str, tenant: str = "alice") -> Any:
    with server.client(tenant) as client:
        return client.post(f"/v1/sessions/{session_id}/execute", json={"code": code})


def test_a_session_id_names_its_node(nodes: tuple[ServiceServer, ServiceServer]) -> None:
    """A node's session ids begin with its node id and a dot, then 32 hex digits."""
    a, _b = nodes
    node, _, unique = _open(a).partition(".")
    assert node == "node-a" and len(unique) == 32 and int(unique, 16) >= 0


def test_another_nodes_session_is_served_through_the_node_asked(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """Calls, a streamed call, info and close sent to node-b reach node-a's session, state kept."""
    a, b = nodes
    session_id = _open(a)
    assert _call(b, session_id, "x = 41").json()["success"]
    answer = _call(b, session_id, "print(x + 1)")
    assert answer.status_code == 200 and answer.json()["stdout"] == "42\n", answer.text
    with b.client("alice") as client:
        info = client.get(f"/v1/sessions/{session_id}")
        assert info.status_code == 200 and info.json()["session_id"] == session_id
        body = {"code": "print(x * 2)"}
        with client.stream(
            "POST", f"/v1/sessions/{session_id}/execute/stream", json=body
        ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            text = stream.read().decode()
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
        printed = "".join(e["text"] for e in events if e["type"] == "stdout")  # chunks may split
        assert printed == "82\n" and events[-1]["type"] == "exit"
        closed = client.delete(f"/v1/sessions/{session_id}")
        assert closed.status_code == 200 and closed.json()["state"] == "ended"
    assert _call(b, session_id, "print(x)").status_code == 410
    assert _call(a, session_id, "print(x)").status_code == 410


def test_the_list_of_sessions_holds_those_of_every_node(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """Listing through either node gives the tenant's sessions of both, and no one else's."""
    a, b = nodes
    mine = {_open(a), _open(b)}
    _open(b, tenant="bob")
    for server in (a, b):
        with server.client("alice") as client:
            listed = client.get("/v1/sessions").json()["sessions"]
        assert {info["session_id"] for info in listed} == mine
        assert [info["created_at"] for info in listed] == sorted(i["created_at"] for i in listed)


def test_the_remote_client_keeps_a_session_on_any_node(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """RemoteSession calls work when the client's server is not the session's node."""
    a, b = nodes
    session_id = _open(a)
    with MemoryAPI.connect(b.url, token=a.tokens["alice"]) as remote:
        session = remote.session(session_id)
        session.execute_code("y = [1, 2]")
        assert session.execute_code("print(sum(y))")["stdout"] == "3\n"
        session.close()


def test_another_tenants_session_on_another_node_is_unknown(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """Bob's request for alice's session, through the other node, is the 410 of an unknown id."""
    a, b = nodes
    session_id = _open(a)
    answer = _call(b, session_id, "print(1)", tenant="bob")
    assert answer.status_code == 410 and answer.json()["error"]["type"] == "SessionEndedError"
    assert "no open session" in answer.json()["error"]["message"]


def test_a_session_of_a_killed_node_ends_at_once(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """Node-a killed with SIGKILL: its session answers 410 through node-b at once, no hang."""
    a, b = nodes
    session_id = _open(a)
    a.process.send_signal(signal.SIGKILL)
    a.process.wait(10)
    started = time.monotonic()
    with (
        pytest.raises(SessionEndedError, match="node 'node-a'") as raised,
        MemoryAPI.connect(b.url, token=a.tokens["alice"]) as remote,
    ):
        remote.session(session_id).execute_code("print(1)")
    assert time.monotonic() - started < 10
    assert "replay" in str(raised.value)
    _wait_gone(a)  # its watchdog removes its containers


def test_an_unknown_node_in_a_session_id_answers_410(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """A session id naming no registered node (or a forged one) is the 410 of an ended session."""
    _a, b = nodes
    for forged in ("nowhere.0123456789abcdef0123456789abcdef", "node-b.00", "node-a.x/../y"):
        answer = _call(b, forged, "print(1)")
        assert answer.status_code in {404, 410}, (forged, answer.text)
        if answer.status_code == 410:
            assert answer.json()["error"]["type"] == "SessionEndedError"


def test_a_second_process_cannot_take_a_live_node_id(
    nodes: tuple[ServiceServer, ServiceServer], tmp_path: Path
) -> None:
    """Serving as node-a while node-a runs exits 2 and names the id and the holder's pid."""
    a, _b = nodes
    command = [sys.executable, "-m", "athena.cli", "serve", "--port", "0", "--node-id", "node-a"]
    command += ["--db", str(a.db_path), "--tokens", str(a.tokens_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert f"node id 'node-a' is in use by another process on this host (pid {a.process.pid})" in (
        done.stderr
    )


def test_a_bad_node_id_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """A node id with a dot or a slash exits 2 saying what a node id may hold."""
    command = [sys.executable, "-m", "athena.cli", "serve", "--node-id", "a.b"]
    command += ["--db", str(tmp_path / "m.db")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "letters, digits, '-' or '_'" in done.stderr


def test_a_restarted_node_removes_what_its_earlier_life_left(
    tmp_path: Path, sandbox_images: Any
) -> None:
    """Containers labelled with a node's id but another owner go when that node starts."""
    client = docker.from_env()
    left = _leftover(client, "node-r")
    try:
        with running_server(tmp_path, args=["--node-id", "node-r"]) as server:
            _wait_removed(client, left.id)
            assert server.stop() == 0
    finally:
        _remove(client, left.id)


def test_live_nodes_sweep_the_containers_of_a_dead_one(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """A node whose heartbeat stopped a minute before the others' loses its containers."""
    a, _b = nodes
    client = docker.from_env()
    left = _leftover(client, "node-dead")
    try:
        directory = NodeDirectory(SQLiteDatabase(a.db_path))
        now = time.time()
        directory._db.execute(
            "INSERT INTO athena_nodes VALUES (?, ?, ?, ?, ?, ?)",
            ("node-dead", "http://127.0.0.1:9", "elsewhere", 1, now - 600, now - 120),
        )
        assert "node-dead" in directory.dead_nodes()
        _wait_removed(client, left.id, timeout=25)  # a sweep every 10 s of heartbeats
    finally:
        _remove(client, left.id)


# --------------------------------------------------------------------------- helpers


def _leftover(client: docker.DockerClient, node: str) -> Any:
    """A created (never started) sandbox container of ``node`` owned by a process long gone."""
    labels = {
        LABEL_SANDBOX: "1",
        LABEL_OWNER_NODE: node,
        "athena.owner.host": "a-pod-that-is-gone",
        "athena.owner.pid": "1",
        "athena.owner.started": "1",
    }
    return client.containers.create("athena-sandbox/python:latest", labels=labels)


def _wait_removed(client: docker.DockerClient, container_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client.api.containers(all=True, filters={"id": container_id}):
            return
        time.sleep(0.5)
    raise AssertionError(f"container {container_id[:12]} is still there after {timeout:g} s")


def _remove(client: docker.DockerClient, container_id: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.api.remove_container(container_id, force=True)


def _wait_gone(server: ServiceServer, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while server.containers() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert server.containers() == [], "the killed node's watchdog left containers"
