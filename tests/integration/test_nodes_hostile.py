"""Hostile tests of the cluster's nodes: the session proxy, the node directory and the sweeps.

Two real nodes share one store (a SQLite file) and this machine's engine, as in
``test_nodes.py``; a tenant crafts what a load balancer would pass on to them. The node ids carry
a random suffix: another test run on this machine (``node-a``) must not share them, since a node
sweeps every container of its id that it does not own.

Each test states the behaviour the cluster promises; a test that fails names a bug.
"""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from athena.api import MemoryAPI
from athena.service.nodes import LOCK_DIR, STALE_SECONDS, NodeDirectory, SQLiteDatabase
from tests.integration.test_nodes import _open
from tests.service_server import ServiceServer, running_server

pytestmark = pytest.mark.docker

TENANTS = {"alice": {"policies": ["strict"]}, "bob": {"policies": ["strict"]}}
_SUFFIX = uuid.uuid4().hex[:6]
NODE_A, NODE_B = f"hx{_SUFFIX}-a", f"hx{_SUFFIX}-b"
HEX = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, sandbox_images: Any
) -> Iterator[tuple[ServiceServer, ServiceServer]]:
    """Two nodes sharing a store and a tokens file; neither leaves a container."""
    base = tmp_path_factory.mktemp("hostile-nodes")
    try:
        with running_server(base / "a", tenants=TENANTS, args=["--node-id", NODE_A]) as a:
            shared = ["--db", str(a.db_path), "--tokens", str(a.tokens_file)]
            with running_server(base / "b", args=[*shared, "--node-id", NODE_B]) as b:
                b.tokens, b.token = a.tokens, a.token
                yield a, b
                assert b.stop() == 0, b.log()
                assert b.containers() == [], b.log()
            assert a.stop() == 0, a.log()
            assert a.containers() == [], a.log()
    finally:
        for node in (NODE_A, NODE_B):  # a node leaves its lock file; these ids are used once
            (LOCK_DIR / f"{node}.lock").unlink(missing_ok=True)


@pytest.fixture
def blackhole() -> Iterator[str]:
    """The URL of a socket that takes connections (the kernel does) and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def _rows(server: ServiceServer) -> dict[str, tuple[Any, ...]]:
    assert server.db_path is not None
    with closing(sqlite3.connect(server.db_path, timeout=10)) as conn:
        rows = conn.execute("SELECT node_id, url, host, pid, started_at, seen_at FROM athena_nodes")
        return {str(row[0]): tuple(row) for row in rows}


def _execute(server: ServiceServer, sql: str, args: tuple[object, ...]) -> None:
    assert server.db_path is not None
    with closing(sqlite3.connect(server.db_path, timeout=10)) as conn, conn:
        conn.execute(sql, args)


def _as_is(
    server: ServiceServer, method: str, target: str, body: bytes | None = None
) -> tuple[int, str]:
    """Send ``target`` exactly as written (httpx would remove its dot segments), as alice."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        headers = {**server.headers("alice"), "content-type": "application/json"}
        connection.request(method, target, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read().decode("utf-8", "replace")
    finally:
        connection.close()


def test_dot_segments_in_a_session_path_reach_no_other_route_of_the_holder(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """``/v1/sessions/<holder>.x/../../../metrics`` is no session: 404/410, not node-b's metrics."""
    a, _b = nodes
    status, text = _as_is(a, "GET", f"/v1/sessions/{NODE_B}.{HEX}/../../../metrics")
    assert "athena_queue_depth" not in text, "node-a relayed node-b's /metrics"
    assert status in {404, 410}, text


def test_dot_segments_cannot_run_code_on_a_node_the_balancer_did_not_pick(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """A POST to ``/v1/sessions/<holder>.x/../../execute`` runs nothing on the holder."""
    a, _b = nodes
    body = json.dumps({"code": "print(6 * 7)"}).encode()
    status, text = _as_is(a, "POST", f"/v1/sessions/{NODE_B}.{HEX}/../../execute", body)
    assert '"stdout":"42\\n"' not in text, "node-a sent a run to node-b's /v1/execute"
    assert status in {404, 405, 410}, text


def test_encoded_slashes_and_dots_stay_in_the_session_id(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """``%2F..`` and ``%2E%2E`` are part of an id (410), never a way to another route."""
    a, _b = nodes
    for path in (
        f"/v1/sessions/{NODE_B}.{HEX}%2F..%2F..%2F..%2Fmetrics",
        f"/v1/sessions/{NODE_B}.{HEX}/%2E%2E/%2E%2E/%2E%2E/metrics",
    ):
        status, text = _as_is(a, "GET", path)
        assert status in {404, 410} and "athena_queue_depth" not in text, (path, text)


def test_a_control_character_in_a_foreign_session_path_is_not_a_server_failure(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """An encoded newline in another node's session path is a 4xx envelope, not a 500 bug."""
    a, _b = nodes
    with a.client("alice") as client:
        answer = client.get(f"/v1/sessions/{NODE_B}.{HEX}%0Ax")
    assert answer.status_code in {400, 404, 410}, answer.text
    assert answer.json()["error"]["type"] != "ServiceError", answer.text


def test_another_tenants_forged_path_to_a_session_is_refused(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """Bob reaches none of alice's session through the other node, whatever the path's form."""
    a, b = nodes
    session_id = _open(a)
    paths = [
        f"/v1/sessions/{session_id}",
        f"/v1/sessions/{session_id}/execute",
        f"/v1/sessions/{NODE_A}.x%2F..%2F{session_id}/execute",
        f"/v1/sessions/{session_id}%2Fexecute",
    ]
    with b.client("bob") as client:
        for path in paths:
            answer = client.post(path, json={"code": "print(1)"})
            assert answer.status_code in {404, 405, 410}, (path, answer.text)
            assert session_id not in answer.text or "no open session" in answer.text, path
    with a.client("alice") as client:
        assert client.delete(f"/v1/sessions/{session_id}").status_code == 200


def test_a_spoofed_via_header_reaches_nothing_it_should_not(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """A client's own ``x-athena-via`` is only the 410 of a request sent on, for its own tenant."""
    a, b = nodes
    session_id = _open(a)
    with b.client("alice") as client:
        listed = client.get("/v1/sessions", headers={"x-athena-via": NODE_A})
        assert listed.status_code == 200 and listed.json()["sessions"] == []
        proxied = client.get(f"/v1/sessions/{session_id}", headers={"x-athena-via": NODE_A})
        assert proxied.status_code == 410 and "is not this node" in proxied.text
    with a.client("alice") as client:
        assert client.delete(f"/v1/sessions/{session_id}").status_code == 200


def test_a_holder_that_takes_the_connection_and_never_answers_does_not_hang_the_caller(
    nodes: tuple[ServiceServer, ServiceServer], blackhole: str
) -> None:
    """A registered holder that accepts, never answers and stops beating: an answer, no hang.

    The proxy's promise (``athena/service/proxy.py``): a holder silent and no longer saying it
    is alive gets the caller's connection cut or a 410; here it goes silent before its headers.
    """
    a, _b = nodes
    node = f"hx{_SUFFIX}-h"
    now = time.time()
    row = (node, blackhole, "elsewhere", 1, now - 60, now - STALE_SECONDS + 1.5)
    _execute(a, "INSERT INTO athena_nodes VALUES (?, ?, ?, ?, ?, ?)", row)
    started = time.monotonic()
    try:
        with a.client("alice", timeout=15.0) as client:
            try:
                answer: httpx.Response | None = client.get(f"/v1/sessions/{node}.{HEX}")
            except httpx.RemoteProtocolError:
                answer = None  # the connection cut: an answer too
    except httpx.ReadTimeout:
        pytest.fail(f"no answer in {time.monotonic() - started:.0f} s: the proxy hangs")
    finally:
        _execute(a, "DELETE FROM athena_nodes WHERE node_id = ?", (node,))
    assert answer is None or answer.status_code == 410


def test_a_live_node_whose_clock_is_a_minute_behind_is_not_judged_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node beating on time, its clock 61 s behind the others', is not swept as dead.

    The directory stamps rows with the database's clock, so a node's own clock (set back a
    minute while it registers and beats) changes nothing.
    """
    path = tmp_path / "directory.db"
    fast = NodeDirectory(SQLiteDatabase(path))
    slow = NodeDirectory(SQLiteDatabase(path))
    try:
        fast.register("node-on-time", "http://127.0.0.1:9")
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 61)
        slow.register("node-slow-clock", "http://127.0.0.1:10")
        slow.heartbeat("node-slow-clock")
        monkeypatch.setattr(time, "time", real)
        fast.heartbeat("node-on-time")
        assert "node-slow-clock" not in fast.dead_nodes()
        assert slow.live_url("node-on-time") is not None
    finally:
        fast.close()
        slow.close()


def test_a_node_whose_directory_row_vanished_comes_back(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """Node-a's row deleted (a restore, a takeover, a sweep): its next heartbeats register it again.

    Otherwise its heartbeat updates no row for ever, and every other node answers 410 for its
    sessions while it serves them.
    """
    a, b = nodes
    session_id = _open(a)
    row = _rows(a)[NODE_A]
    try:
        _execute(a, "DELETE FROM athena_nodes WHERE node_id = ?", (NODE_A,))
        deadline = time.monotonic() + 6
        while NODE_A not in _rows(a) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert NODE_A in _rows(a), "node-a beats, but its row stays gone"
        with b.client("alice") as client:
            assert client.get(f"/v1/sessions/{session_id}").status_code == 200
    finally:
        if NODE_A not in _rows(a):  # the other tests need node-a in the directory
            _execute(a, "INSERT INTO athena_nodes VALUES (?, ?, ?, ?, ?, ?)", row)
        with a.client("alice") as client:
            client.delete(f"/v1/sessions/{session_id}")


def test_a_run_that_takes_the_route_path_starts_its_answer_before_its_code_ends(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """``POST /v1/execute?trace=1``: the 200 still comes before the code ends, as without a query.

    The retry rule (``athena/service/retry.py``) needs every run's 200 before its code; a run
    FastExecute does not take (a query string, a ``+json`` type) is served by the route, which
    answers only at the end, so a 503 after a drain killed it says "never started".
    """
    a, _b = nodes
    body = json.dumps({"code": "import time\nprint('hi', flush=True)\ntime.sleep(4)"}).encode()
    started = time.monotonic()
    with (
        a.client("alice") as client,
        client.stream(
            "POST",
            "/v1/execute?trace=1",
            content=body,
            headers={"content-type": "application/json"},
        ) as answer,
    ):
        headers_after = time.monotonic() - started
        result = json.loads(answer.read())
    assert result.get("success") and result["stdout"] == "hi\n", result
    assert headers_after < 3.5, f"the 200 came {headers_after:.1f} s in, after the code ended"


def _rss_bytes(server: ServiceServer) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_forged_holder_names_do_not_grow_a_nodes_memory_without_bound(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """3,000 session ids naming 6 KB nodes that do not exist: node-a keeps no memory of each.

    Every unknown holder is looked up in the directory and its answer cached by name; a cache
    that never forgets lets one tenant fill a node's memory, one request at a time.
    """
    a, _b = nodes

    def ask(names: Iterator[str]) -> int:
        with a.client("alice") as client:
            for name in names:
                assert client.get(f"/v1/sessions/{name}.x").status_code == 410
        return _rss_bytes(a)

    same = uuid.uuid4().hex * 190  # 6,080 characters
    settled = ask(same for _ in range(1_500))  # the same name: what serving alone costs
    grown = ask(uuid.uuid4().hex * 190 for _ in range(3_000)) - settled
    assert grown < 8 * 1024 * 1024, f"node-a grew {grown / 2**20:.0f} MiB"


def test_a_caller_leaving_a_proxied_call_kills_it_as_a_direct_one_does(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """A session call through node-b whose caller leaves is killed on node-a within seconds.

    Sent to node-a directly, a call whose client leaves is killed (``unless_left``); through the
    proxy, the caller's leaving must reach the holder even before the holder's headers came.
    """
    a, b = nodes
    session_id = _open(a)
    try:
        with b.client("alice", timeout=1.5) as client, pytest.raises(httpx.ReadTimeout):
            client.post(
                f"/v1/sessions/{session_id}/execute", json={"code": "import time; time.sleep(12)"}
            )
        deadline = time.monotonic() + 4
        with a.client("alice") as client:
            busy = True
            while busy and time.monotonic() < deadline:
                time.sleep(0.3)
                busy = client.get(f"/v1/sessions/{session_id}").json().get("busy", False)
        assert not busy, "the call whose caller left still runs on node-a"
    finally:
        with a.client("alice") as client:
            client.delete(f"/v1/sessions/{session_id}")


class _CuttingBalancer:
    """A TCP relay to a node (a load balancer) whose first connection dies once the node answers.

    It passes the request on, waits for the node's first byte (the run's early ``200``), lets
    the run go on for a moment, then drops both sides without passing a byte back: what a
    client sees when its load balancer dies (a reload, a crash) while a run is on a node.
    """

    def __init__(self, node_url: str) -> None:
        host, port = node_url.removeprefix("http://").split(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = [self._listener]
        self._accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        """Close every socket; the relay's threads end with them."""
        for sock in self._sockets:
            sock.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            cut = self._accepted == 0
            self._accepted += 1
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, cut), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, cut: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if cut:
                    time.sleep(1.0)  # the run's code goes on meanwhile
                    for sock in (sink, source):  # shutdown: a blocked recv holds the socket
                        sock.shutdown(socket.SHUT_RDWR)
                    return
                sink.sendall(chunk)
        except OSError:
            pass


def _runs_total(server: ServiceServer) -> float:
    with server.client("alice") as client:
        text = client.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("athena_runs_total{")
    )


def test_a_run_whose_balancer_died_after_the_node_answered_is_not_run_again(
    nodes: tuple[ServiceServer, ServiceServer],
) -> None:
    """No status line reached the client, but the node had started the code: it runs once.

    ``athena/service/retry.py`` takes "no answer at all" for "never started"; a connection that
    breaks between the client and the load balancer after the node's ``200`` looks the same.
    """
    a, _b = nodes
    balancer = _CuttingBalancer(a.url)
    try:
        before = _runs_total(a)
        with MemoryAPI.connect(balancer.url, token=a.tokens["alice"], timeout=30) as remote:
            try:
                remote.execute_code("print('charged the card')")
            except Exception as exc:  # told it may have run: the right answer
                assert "may have" in str(exc) or "not sent again" in str(exc), exc
        time.sleep(0.5)  # the node records the run after its answer
        ran = _runs_total(a) - before
    finally:
        balancer.close()
    assert ran == 1, f"the code ran {ran:g} times: the client sent it again"
