"""Sessions and files over the HTTP API, against a real ``athena-sandbox serve`` and Docker.

One server for the module, with two tenants: ``alice`` (the default policies) and ``bob`` (strict
only, one run in flight), and at most two sessions per tenant. Each test closes the sessions it
opens; the module's end checks that the server left no container behind.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from athena.service import responses
from athena.service.state import DRAIN_REASON
from tests.integration.conftest import wait_until
from tests.service_server import ServiceServer, running_server

pytestmark = pytest.mark.docker

BINARY = bytes(range(256)) * 4 + b"\x00\xff\x89PNG\r\n"
COPY = (
    "import os, shutil\n"
    "os.makedirs('out', exist_ok=True)\n"
    "shutil.copy('in/data.bin', 'out/copy.bin')\n"
    "shutil.copy('note.txt', 'out/note.txt')\n"
)
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\n"
SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(60)\n"


@pytest.fixture(scope="module")
def server(sandbox_images: Any) -> Iterator[ServiceServer]:
    """One server for the module; afterwards it must have left no container behind."""
    tenants = {"alice": {}, "bob": {"max_in_flight": 1, "policies": ["strict"]}}
    env = {"ATHENA_MAX_SESSIONS_PER_TENANT": "2", "ATHENA_POOL_SIZE": "1"}
    with running_server(tenants=tenants, env=env, grace=5) as started:
        yield started
        assert started.stop() == 0, started.log()
        assert started.containers() == [], started.log()


@pytest.fixture
def alice(server: ServiceServer) -> Iterator[httpx.Client]:
    """An httpx client with alice's token; closes the sessions alice left open."""
    with server.client("alice") as client:
        yield client
        _close_all(client)


@pytest.fixture
def bob(server: ServiceServer) -> Iterator[httpx.Client]:
    """An httpx client with bob's token; closes the sessions bob left open."""
    with server.client("bob") as client:
        yield client
        _close_all(client)


def _close_all(client: httpx.Client) -> None:
    for info in client.get("/v1/sessions").json()["sessions"]:
        client.delete(f"/v1/sessions/{info['session_id']}")


def _open(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    info: dict[str, Any] = response.json()
    responses.SessionInfo.model_validate(info)
    return info


def _run(client: httpx.Client, session_id: str, code: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/v1/sessions/{session_id}/execute", json={"code": code, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    responses.ExecutionResult.model_validate(result)
    return result


def _error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    responses.ErrorEnvelope.model_validate(response.json())
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == error_type, error
    return error


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_a_session_keeps_state_until_it_is_closed_then_410(alice: httpx.Client) -> None:
    """Calls share globals; listed and described while open; after DELETE every call is 410."""
    info = _open(alice, language="python", idle_timeout_seconds=120)
    session_id = info["session_id"]
    assert info["state"] == "open" and info["tenant"] == "alice" and info["policy"] == "strict"
    first = _run(alice, session_id, "x = 41")
    second = _run(alice, session_id, "x += 1\nprint(x)")
    assert second["stdout"] == "42\n" and second["success"]
    assert (second["session_id"], second["session_state"]) == (session_id, "kept")
    assert first["files"] == [] and first["artifacts"] == []
    listed = alice.get("/v1/sessions").json()["sessions"]
    assert [s["session_id"] for s in listed] == [session_id]
    assert alice.get(f"/v1/sessions/{session_id}").json()["calls"] == 2
    closed = alice.delete(f"/v1/sessions/{session_id}")
    assert closed.status_code == 200
    assert closed.json()["state"] == "ended"
    assert closed.json()["ended_reason"] == "closed by its caller"
    call = _error(alice.post(f"/v1/sessions/{session_id}/execute", json={"code": "1"}), 410,
                  "SessionEndedError")  # fmt: skip
    assert call["reason"] == "closed by its caller" and call["session_id"] == session_id
    assert "closed by its caller" in call["message"]
    _error(alice.get(f"/v1/sessions/{session_id}"), 410, "SessionEndedError")
    _error(alice.delete(f"/v1/sessions/{session_id}"), 410, "SessionEndedError")
    assert alice.get("/v1/sessions").json()["sessions"] == []


def test_binary_files_round_trip_one_shot_and_in_a_session(alice: httpx.Client) -> None:
    """Bytes sent as base64 come back byte for byte (sha256 and content), text as UTF-8."""
    files = {"in/data.bin": {"base64": _b64(BINARY)}, "note.txt": "héllo\n"}
    expected = {"out/copy.bin": BINARY, "out/note.txt": "héllo\n".encode()}
    one_shot = alice.post("/v1/execute", json={"code": COPY, "files": files}).json()
    session_id = _open(alice)["session_id"]
    in_session = _run(alice, session_id, COPY, files=files)
    for result in (one_shot, in_session):
        assert result["success"], result["stderr"]
        got = {item["name"].removeprefix("out/"): item for item in result["files"]}
        for name, data in expected.items():
            item = got[name.removeprefix("out/")]
            assert base64.b64decode(item["content"]) == data
            assert item["sha256"] == hashlib.sha256(data).hexdigest() and item["size"] == len(data)


def test_a_figure_comes_back_as_a_png_artifact(alice: httpx.Client) -> None:
    """A plot left open is a PNG artifact, one-shot and in a session; off with capture_figures."""
    one_shot = alice.post("/v1/execute", json={"code": PLOT, "timeout_seconds": 60}).json()
    session_id = _open(alice)["session_id"]
    in_session = _run(alice, session_id, PLOT, timeout_seconds=60)
    for result in (one_shot, in_session):
        assert result["success"], result["stderr"]
        [artifact] = result["artifacts"]
        png = base64.b64decode(artifact["content"])
        assert artifact["mime_type"] == "image/png" and png.startswith(b"\x89PNG\r\n\x1a\n")
        assert artifact["sha256"] == hashlib.sha256(png).hexdigest()
    off = _run(alice, session_id, PLOT, capture_figures=False, timeout_seconds=60)
    assert off["artifacts"] == []


def test_files_bigger_than_the_general_body_limit_are_accepted(alice: httpx.Client) -> None:
    """A 9 MiB file (12 MiB of base64, over the 8 MiB limit of other routes) is run."""
    data = b"\x01" * (9 * 1024 * 1024)
    body = {"code": "import os\nprint(os.path.getsize('big.bin'))", "files": {"big.bin": {"base64": _b64(data)}}}  # fmt: skip
    result = alice.post("/v1/execute", json=body, timeout=120).json()
    assert result["stdout"] == f"{len(data)}\n", result
    over = alice.post("/v1/memories", json={"content": "x" * (9 * 1024 * 1024)})
    _error(over, 413, "PayloadTooLarge")


def test_bad_files_are_refused_before_anything_runs(alice: httpx.Client) -> None:
    """Bad base64 and a name with '..' are 400 RequestErrors naming the file."""
    bad = {"code": "1", "files": {"x.bin": {"base64": "@@@"}}}
    assert "files['x.bin']" in _error(alice.post("/v1/execute", json=bad), 400, "RequestError")["message"]  # fmt: skip
    escape = {"code": "1", "files": {"../x": "a"}}
    assert "'..'" in _error(alice.post("/v1/execute", json=escape), 400, "RequestError")["message"]


def test_tenants_never_see_or_touch_each_others_sessions(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    """Bob gets the same 410 for alice's session as for an unknown id; alice's stays intact."""
    session_id = _open(alice)["session_id"]
    _run(alice, session_id, "secret = 7")
    unknown = "0" * len(session_id)
    for method, suffix, body in (
        ("GET", "", None),
        ("DELETE", "", None),
        ("POST", "/execute", {"code": "print(secret)"}),
    ):
        theirs = bob.request(method, f"/v1/sessions/{session_id}{suffix}", json=body)
        nobody = bob.request(method, f"/v1/sessions/{unknown}{suffix}", json=body)
        assert theirs.status_code == nobody.status_code == 410, theirs.text
        assert theirs.text.replace(session_id, unknown) == nobody.text
    assert bob.get("/v1/sessions").json()["sessions"] == []
    replay = bob.post(f"/v1/sessions/{session_id}/replay", json={})
    unknown_replay = bob.post(f"/v1/sessions/{unknown}/replay", json={})
    assert replay.status_code == unknown_replay.status_code == 400
    assert replay.text.replace(session_id, unknown) == unknown_replay.text
    assert _run(alice, session_id, "print(secret)")["stdout"] == "7\n"


def test_the_gate_and_the_session_limit_apply(alice: httpx.Client, bob: httpx.Client) -> None:
    """Bob may not open a research session (400); a third session of alice's is 429."""
    _error(bob.post("/v1/sessions", json={"sandbox_policy": "research"}), 400, "PolicyError")
    _error(alice.post("/v1/sessions", json={"language": "ruby"}), 400, "RequestError")
    _open(alice)
    _open(alice)
    refused = alice.post("/v1/sessions", json={})
    error = _error(refused, 429, "QueueFullError")
    assert "ATHENA_MAX_SESSIONS_PER_TENANT=2" in error["message"]
    assert refused.headers["retry-after"] == "1"


def test_replay_rebuilds_a_closed_session(alice: httpx.Client) -> None:
    """Replaying a closed session opens a new one with its state, and answers the results."""
    session_id = _open(alice)["session_id"]
    _run(alice, session_id, "x = 41")
    _run(alice, session_id, "x += 1")
    alice.delete(f"/v1/sessions/{session_id}")
    replayed = alice.post(f"/v1/sessions/{session_id}/replay", json={"idle_timeout_seconds": 60})
    assert replayed.status_code == 201, replayed.text
    body = responses.Replayed.model_validate(replayed.json())
    assert body.session.session_id != session_id and body.session.state == "open"
    assert [r.success for r in body.replayed] == [True, True]
    assert _run(alice, body.session.session_id, "print(x)")["stdout"] == "42\n"


def test_a_client_that_leaves_a_call_kills_it_and_the_state_restarts(
    server: ServiceServer, alice: httpx.Client
) -> None:
    """A call whose client gives up is killed (recorded cancelled); the next starts fresh."""
    session_id = _open(alice)["session_id"]
    _run(alice, session_id, "x = 1")
    with pytest.raises(httpx.ReadTimeout):
        alice.post(f"/v1/sessions/{session_id}/execute", json={"code": SLEEPER}, timeout=3)
    assert wait_until(lambda: not alice.get(f"/v1/sessions/{session_id}").json()["busy"], 20)
    info = alice.get(f"/v1/sessions/{session_id}").json()
    assert info["state"] == "open" and info["restarts"] == 1
    after = _run(alice, session_id, "print('x' in globals())")
    assert after["stdout"] == "False\n"


def test_metrics_count_open_sessions(alice: httpx.Client) -> None:
    """athena_sessions_open counts the open sessions."""

    def gauge() -> float:
        text = alice.get("/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("athena_sessions_open "))
        return float(line.split()[1])

    before = gauge()
    session_id = _open(alice)["session_id"]
    assert gauge() == before + 1
    alice.delete(f"/v1/sessions/{session_id}")
    assert gauge() == before


def test_sigterm_closes_sessions_after_their_calls_with_a_reason() -> None:
    """The drain lets a session call finish, closes the session saying why, and exits 0."""
    with running_server(grace=20) as server, server.client() as client:
        session_id = _open(client)["session_id"]
        code = "import time\ntime.sleep(2)\nprint('done')"
        waiter: list[httpx.Response] = []
        call = threading.Thread(
            target=lambda: waiter.append(
                client.post(f"/v1/sessions/{session_id}/execute", json={"code": code})
            )
        )
        call.start()
        time.sleep(1.0)
        server.process.send_signal(signal.SIGTERM)
        call.join(60)
        assert waiter and waiter[0].json()["stdout"] == "done\n"
        assert server.process.wait(30) == 0
        assert server.containers() == []
        assert DRAIN_REASON in server.log()


def test_a_session_call_streams_its_events(alice: httpx.Client) -> None:
    """The stream route gives begin, the output as printed and the exit event with the result."""
    session_id = _open(alice)["session_id"]
    _run(alice, session_id, "x = 6")
    body = {"code": "print(x * 7, flush=True)\nimport time\ntime.sleep(0.2)\nprint('end')"}
    path = f"/v1/sessions/{session_id}/execute/stream"
    with alice.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        events = [
            json.loads(line.removeprefix("data: "))
            for line in response.iter_lines()
            if line.startswith("data: ")
        ]
    assert events[0]["type"] == "begin" and events[-1]["type"] == "exit"
    assert "".join(e["text"] for e in events if e["type"] == "stdout") == "42\nend\n"
    result = events[-1]["result"]
    assert (result["session_id"], result["session_state"]) == (session_id, "kept")
    alice.delete(f"/v1/sessions/{session_id}")
    gone = alice.post(path, json=body)
    _error(gone, 410, "SessionEndedError")
