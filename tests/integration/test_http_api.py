"""The HTTP API against a real ``athena-sandbox serve`` and a real Docker engine."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import BaseModel, TypeAdapter

from athena.service import responses
from tests.service_server import ServiceServer, free_port, running_server

pytestmark = pytest.mark.docker

SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(60)\n"


@pytest.fixture(scope="module")
def server() -> Iterator[ServiceServer]:
    """One server for the module: alice (default policies), bob (one run in flight)."""
    tenants = {"alice": {}, "bob": {"max_in_flight": 1}}
    with running_server(tenants=tenants, grace=5) as running:
        yield running
        assert running.stop() == 0
        assert running.containers() == []


@pytest.fixture
def alice(server: ServiceServer) -> Iterator[httpx.Client]:
    """An httpx client with alice's token."""
    with server.client("alice") as client:
        yield client


@pytest.fixture
def bob(server: ServiceServer) -> Iterator[httpx.Client]:
    """An httpx client with bob's token."""
    with server.client("bob") as client:
        yield client


def _ok(response: httpx.Response, model: type[BaseModel]) -> dict[str, Any]:
    """The body of a 200, checked against its response model."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    model.model_validate(body)
    return body


def _error(response: httpx.Response, status: int, error_type: str) -> str:
    """The message of an error envelope with the given status and type."""
    assert response.status_code == status, response.text
    responses.ErrorEnvelope.model_validate(response.json())
    error = response.json()["error"]
    assert error["type"] == error_type, error
    return str(error["message"])


def _raw(server: ServiceServer, head: str, body: bytes, chunks: int = 1) -> tuple[int, str]:
    """Send a request by hand (``body`` sent ``chunks`` times); return the status and body."""
    address = urlsplit(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n")
        try:
            for _ in range(chunks):
                sock.sendall(body)
        except OSError:
            pass  # the server answered and closed before the body was all sent: good
        reply = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            reply += data
            if b"\r\n\r\n" in reply and reply.rstrip().endswith(b"}"):
                break
    status = int(reply.split(b" ", 2)[1])
    return status, reply.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")


def _events(response: httpx.Response) -> Generator[dict[str, Any], None, None]:
    """The events of an SSE response, checking each ``event:`` names its data's type."""
    name = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            event = json.loads(line[len("data: ") :])
            assert event["type"] == name
            yield event


def _latest_run(client: httpx.Client) -> str | None:
    """The execution id of the tenant's newest recorded run (None before the first)."""
    body = {"event_type": "execution", "limit": 1}
    results = client.post("/v1/events/search", json=body).json()["results"]
    return str(results[0]["context"]["execution_id"]) if results else None


def _wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    return check()


# ----------------------------------------------------------------------------- every route


def test_health_and_readiness_need_no_token(server: ServiceServer) -> None:
    """/healthz and /readyz answer without a token; /metrics does not."""
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = _ok(httpx.get(f"{server.url}/readyz"), responses.Readiness)
    assert ready["ready"] is True and ready["engine"] == ready["store"] == "ok"
    _error(httpx.get(f"{server.url}/metrics"), 401, "Unauthorized")


def test_execute_stream_batch_and_get_execution(alice: httpx.Client) -> None:
    """Run, stream and batch; fetch the recorded run with its request, result and events."""
    code = "import sys\nprint('out')\nprint('err', file=sys.stderr)\n"
    result = _ok(alice.post("/v1/execute", json={"code": code}), responses.ExecutionResult)
    assert result["success"] and result["stdout"] == "out\n" and result["stderr"] == "err\n"
    record = _ok(alice.get(f"/v1/executions/{result['execution_id']}"), responses.ExecutionRecord)
    assert record["result"] == result and record["request"]["code"] == code
    assert record["events"][0]["type"] == "begin"
    with alice.stream("POST", "/v1/execute/stream", json={"code": code}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(_events(response))
    TypeAdapter(list[responses.RunEvent]).validate_python(events)
    assert events[0]["type"] == "begin" and events[-1]["type"] == "exit"
    assert "".join(e["text"] for e in events if e["type"] == "stdout") == "out\n"
    calls = [{"code": "print(1)"}, {"code": "print(2)", "language": "python"}]
    batch = _ok(alice.post("/v1/execute/batch", json={"calls": calls}), responses.BatchResults)
    assert [r["stdout"] for r in batch["results"]] == ["1\n", "2\n"]
    ready = _ok(alice.post("/v1/prewarm", json={"language": "python"}), responses.Ready)
    assert isinstance(ready["ready"], bool)


def test_stream_events_match_the_local_stream(alice: httpx.Client, tmp_path: Path) -> None:
    """The SSE events are those execute_code_stream yields: same types, keys and output."""
    from athena.api import MemoryAPI

    code = "for i in range(3):\n    print(i, flush=True)\n"
    with alice.stream("POST", "/v1/execute/stream", json={"code": code}) as response:
        remote = list(_events(response))
    with MemoryAPI.create(tmp_path / "local.db") as api:
        local = list(api.execute_code_stream(code, record=False))
    assert remote[0]["type"] == "begin" == local[0]["type"]
    assert [sorted(e) for e in remote if e["type"] != "stdout"] == [
        sorted(e) for e in local if e["type"] != "stdout"
    ]
    assert "".join(e.get("text", "") for e in remote) == "0\n1\n2\n"
    assert sorted(remote[-1]["result"]) == sorted(local[-1]["result"])


def test_memory_routes(alice: httpx.Client) -> None:
    """Every memory route answers with its documented body."""
    memory = _ok(alice.post("/v1/memories", json={"content": "zebra stripes"}), responses.NewId)
    query = {"query": "zebra", "kinds": ["memory"]}
    hits = _ok(alice.post("/v1/recall", json=query), responses.RecallResults)
    assert hits["results"][0]["id"] == memory["id"]
    event = {"event_type": "decision", "content": "picked zebra", "outcome": "success"}
    _ok(alice.post("/v1/events", json=event), responses.NewId)
    found = _ok(alice.post("/v1/events/search", json={"query": "zebra"}), responses.EventResults)
    assert found["results"][0]["content"] == "picked zebra"
    steps = ["load data", {"description": "sum it", "code": "total = 1 + 1"}]
    procedure = _ok(
        alice.post("/v1/procedures", json={"name": "sum", "steps": steps}), responses.NewId
    )
    made = _ok(
        alice.post(f"/v1/procedures/{procedure['id']}/code", json={}), responses.GeneratedCode
    )
    assert made["success"] and made["procedure_id"] == procedure["id"]
    checked = _ok(
        alice.post("/v1/procedures/validate", json={"code": made["code"]}),
        responses.CodeValidation,
    )
    assert checked["success"]
    one = _ok(
        alice.post("/v1/entities", json={"name": "db", "entity_type": "service"}), responses.NewId
    )
    two = _ok(
        alice.post("/v1/entities", json={"name": "api", "entity_type": "service"}), responses.NewId
    )
    relation = {"source_id": two["id"], "target_id": one["id"], "relation_type": "uses"}
    _ok(alice.post("/v1/relations", json=relation), responses.NewId)
    _ok(alice.post("/v1/consolidate", json={"strategy": "minimal"}), responses.ConsolidationReport)
    assert _ok(alice.delete(f"/v1/records/{memory['id']}"), responses.Forgotten)["forgotten"]
    assert not alice.delete(f"/v1/records/{memory['id']}").json()["forgotten"]


def test_policies_are_those_the_tenant_may_use(alice: httpx.Client) -> None:
    """alice (default policies) sees strict and research, not development."""
    listed = _ok(alice.get("/v1/policies"), responses.PolicyList)
    assert sorted(p["name"] for p in listed["policies"]) == ["research", "strict"]
    strict = _ok(alice.get("/v1/policies/strict"), responses.PolicyDescription)
    assert strict["name"] == "strict"
    message = _error(alice.get("/v1/policies/development"), 400, "PolicyError")
    assert "strict" in message and "research" in message
    _error(alice.get("/v1/policies/nope"), 400, "PolicyNotFoundError")


@pytest.mark.parametrize("name", ["strict%0A", "a%0Ab", "a/b", "%20strict"])
def test_a_path_parameter_of_any_text_reaches_the_apis_own_check(
    alice: httpx.Client, name: str
) -> None:
    """Slashes and newlines in a name are the API's to judge: never a bare 404, never strict."""
    _error(alice.get(f"/v1/policies/{name}"), 400, "PolicyNotFoundError")
    _error(alice.get(f"/v1/executions/{name}"), 404, "ExecutionNotFound")


# ----------------------------------------------------------------------------- bad input


def test_401_comes_before_the_body_is_read(server: ServiceServer) -> None:
    """A huge body without (or with a wrong) token gets 401, not 413, and no body is read."""
    for auth in ("", "Authorization: Bearer ath_wrong\r\n"):
        head = (
            "POST /v1/execute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: 1000000000"
        )
        status, body = _raw(server, head, b"x" * 1024)
        assert status == 401
        assert json.loads(body)["error"] == {
            "type": "Unauthorized",
            "message": "a valid bearer token is required",
        }


def test_413_on_content_length_and_on_a_chunked_body(server: ServiceServer) -> None:
    """Over the limit: 413 from Content-Length at once, and from a chunked body as it streams.

    The routes that take files allow 96 MiB, the others 8 MiB (docs/service.md).
    """

    def head(path: str) -> str:
        return (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {server.token}\r\n"
        )

    for path in ("/v1/execute", "/v1/memories"):
        status, body = _raw(server, head(path) + "Content-Length: 1000000000", b"x" * 1024)
        assert status == 413 and json.loads(body)["error"]["type"] == "PayloadTooLarge"
    chunk = b"x" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    for path, chunks in (("/v1/memories", 200), ("/v1/execute", 1600)):  # 12.5 MiB, 100 MiB
        status, body = _raw(server, head(path) + "Transfer-Encoding: chunked", framed, chunks)
        assert status == 413 and json.loads(body)["error"]["type"] == "PayloadTooLarge", path


def test_422_names_the_field(alice: httpx.Client) -> None:
    """Wrong types, unknown fields and malformed JSON: 422 naming the field."""
    message = _error(
        alice.post("/v1/recall", json={"query": "x", "limit": "5"}), 422, "RequestError"
    )
    assert "body.limit" in message
    response = alice.post("/v1/execute", json={"code": "print(1)", "timeout": 5})
    assert "body.timeout" in _error(response, 422, "RequestError")
    assert response.json()["error"]["fields"][0]["field"] == "body.timeout"
    response = alice.post(
        "/v1/execute", content=b'{"code": ', headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in _error(response, 422, "RequestError")
    _error(alice.post("/v1/execute", json={"code": 1}), 422, "RequestError")


def test_a_timeout_too_large_for_a_float_is_400_not_500(alice: httpx.Client) -> None:
    """JSON carries integers of any size; one of 400 digits is a clear 400, not an overflow."""
    body = b'{"code": "print(1)", "timeout_seconds": ' + b"9" * 400 + b"}"
    response = alice.post("/v1/execute", content=body, headers={"content-type": "application/json"})
    message = _error(response, 400, "RequestError")
    assert "timeout_seconds" in message and "digits" in message and len(message) < 300


def test_400_unknown_language_and_policy_name_the_valid_ones(alice: httpx.Client) -> None:
    """Unknown language or policy: 400 naming it and the valid ones."""
    message = _error(
        alice.post("/v1/execute", json={"code": "1", "language": "cobol"}),
        400,
        "UnknownLanguageError",
    )
    assert "cobol" in message and "python" in message
    message = _error(
        alice.post("/v1/execute", json={"code": "1", "sandbox_policy": "lax"}),
        400,
        "PolicyNotFoundError",
    )
    assert "lax" in message and "strict" in message


def test_a_path_policy_and_development_are_refused(alice: httpx.Client) -> None:
    """A policy path on the server's disk is refused; development is opt-in per token."""
    for spec in ("/etc/athena/policy.yaml", "./policies/strict.yaml"):
        response = alice.post("/v1/execute", json={"code": "1", "sandbox_policy": spec})
        assert response.status_code == 400, response.text
    response = alice.post("/v1/execute", json={"code": "1", "sandbox_policy": "development"})
    assert "development" in _error(response, 400, "PolicyError")


# ----------------------------------------------------------------------------- limits, tenants


def test_429_when_the_tenant_is_at_its_limit(bob: httpx.Client) -> None:
    """bob may have one run in flight: a second gets 429 with Retry-After."""
    with bob.stream("POST", "/v1/execute/stream", json={"code": SLEEPER}) as running:
        # Kept referenced: a generator dropped mid-stream is closed, and httpcore closes the
        # connection with it, which (rightly) kills the run and frees the slot at once.
        events = _events(running)
        for event in events:
            if event["type"] == "stdout":
                break
        response = bob.post("/v1/execute", json={"code": "print(1)"})
        assert "limit" in _error(response, 429, "TooManyRuns")
        assert int(response.headers["retry-after"]) >= 1
        batch = bob.post("/v1/execute/batch", json={"calls": [{"code": "print(1)"}]})
        _error(batch, 429, "TooManyRuns")
        events.close()
    # closing the stream killed the run and freed the slot
    assert _wait_for(lambda: bob.post("/v1/execute", json={"code": "print(1)"}).status_code == 200)


def test_tenants_do_not_see_each_other(alice: httpx.Client, bob: httpx.Client) -> None:
    """bob can neither fetch nor recall nor forget alice's records."""
    result = alice.post("/v1/execute", json={"code": "print('quokka')"}).json()
    memory = alice.post("/v1/memories", json={"content": "quokka habitat"}).json()["id"]
    _error(bob.get(f"/v1/executions/{result['execution_id']}"), 404, "ExecutionNotFound")
    seen = bob.post("/v1/recall", json={"query": "quokka", "limit": 100}).json()["results"]
    assert not [hit for hit in seen if "quokka" in hit["content"] or hit["id"] == memory]
    assert bob.delete(f"/v1/records/{memory}").json() == {"forgotten": False}
    assert alice.get(f"/v1/executions/{result['execution_id']}").status_code == 200
    assert alice.post("/v1/recall", json={"query": "quokka"}).json()["results"]


def _runs_total(client: httpx.Client, outcome: str) -> float:
    """``athena_runs_total`` of python runs with this outcome, any mode, from /metrics.

    A run that ends before its code began (cancelled while it waited) says no mode: its
    label is ``mode="none"``.
    """
    pattern = rf'^athena_runs_total{{language="python",mode="\w+",outcome="{outcome}"}} (\S+)$'
    return sum(float(found) for found in re.findall(pattern, client.get("/metrics").text, re.M))


def test_metrics_count_a_run(alice: httpx.Client) -> None:
    """/metrics (with a token) counts runs by language, mode and outcome."""
    before = _runs_total(alice, "success")
    assert alice.post("/v1/execute", json={"code": "print(1)"}).json()["success"]
    assert _runs_total(alice, "success") == before + 1
    text = alice.get("/metrics").text
    for name in (
        "athena_run_duration_seconds_bucket",
        "athena_http_request_duration_seconds",
        "athena_queue_depth",
        "athena_draining 0.0",
        "athena_warm_pool_ready",
    ):
        assert name in text
    # The run went by FastExecute, past FastAPI's router: it is still counted under its route.
    label = (
        'athena_http_request_duration_seconds_count{method="POST",route="/v1/execute",status="200"}'
    )
    assert label in text


# ----------------------------------------------------------------------------- cancel, drain


def test_disconnect_mid_stream_kills_the_run(server: ServiceServer, alice: httpx.Client) -> None:
    """Closing the stream kills the run, removes its container, and the record says cancelled."""
    started = time.monotonic()
    with alice.stream("POST", "/v1/execute/stream", json={"code": SLEEPER}) as response:
        events = _events(response)
        sandbox_id = next(events)["sandbox_id"]
        assert next(events)["type"] == "stdout"
    assert _wait_for(lambda: not server.container_exists(sandbox_id))

    def latest() -> dict[str, Any] | None:
        record: dict[str, Any] = alice.get(f"/v1/executions/{_latest_run(alice)}").json()
        begin = record.get("events", [{}])[0]
        return record if begin.get("sandbox_id") == sandbox_id else None

    record = _wait_for(latest)
    assert record is not None, "the cancelled run was not recorded"
    assert record["result"]["error_type"] == "RunCancelledError", record["result"]
    assert record["events"][-1]["type"] == "exit"
    assert time.monotonic() - started < 30


def test_a_client_that_leaves_a_plain_execute_gets_its_run_killed(
    server: ServiceServer, alice: httpx.Client
) -> None:
    """POST /v1/execute (no stream) whose client gives up: the run is killed and recorded."""
    before = _latest_run(alice)
    counted = _runs_total(alice, "cancelled")
    with pytest.raises(httpx.ReadTimeout):
        alice.post("/v1/execute", json={"code": SLEEPER}, timeout=3)  # closes the connection

    def cancelled() -> dict[str, Any] | None:
        newest = _latest_run(alice)
        record: dict[str, Any] = alice.get(f"/v1/executions/{newest}").json()
        return record if newest != before else None

    record = _wait_for(cancelled, timeout=20)  # long before the run's own 60 s
    assert record is not None, "the abandoned run was not recorded"
    assert record["result"]["error_type"] == "RunCancelledError", record["result"]
    assert record["request"]["code"] == SLEEPER
    assert _wait_for(lambda: not server.container_exists(record["events"][0]["sandbox_id"]))
    assert _runs_total(alice, "cancelled") == counted + 1  # counted, though nobody got it


def test_sigterm_answers_a_plain_execute_past_the_grace_with_the_envelope() -> None:
    """A non-streamed run still going when the grace ends: killed, recorded, and told so.

    Its answer started (200) when its code was handed over, so the error is the body's
    envelope: the client knows the code may have run, and does not send it again.
    """
    with running_server(grace=3) as server, server.client() as client:
        answer: list[httpx.Response] = []
        waiter = threading.Thread(
            target=lambda: answer.append(client.post("/v1/execute", json={"code": SLEEPER}))
        )
        waiter.start()
        time.sleep(3)  # the run is going (not streamed: nothing says so but time)
        server.process.send_signal(signal.SIGTERM)
        waiter.join(60)
        assert answer, "the client got no answer"
        _error(answer[0], 200, "Draining")
        assert "shut down before the run finished" in answer[0].json()["error"]["message"]
        assert server.process.wait(30) == 0
        assert server.containers() == []


def test_sigterm_drains_kills_late_runs_and_exits_0() -> None:
    """SIGTERM: readyz 503 and new runs 503 at once; a run past the grace is killed and recorded."""
    with running_server(grace=3) as server, server.client() as client:
        with client.stream("POST", "/v1/execute/stream", json={"code": SLEEPER}) as response:
            events = _events(response)
            for event in events:
                if event["type"] == "stdout":
                    break
            server.process.send_signal(signal.SIGTERM)
            ready = httpx.get(f"{server.url}/readyz")
            assert ready.status_code == 503 and ready.json()["draining"] is True
            _error(client.post("/v1/execute", json={"code": "print(1)"}), 503, "Draining")
            last = list(events)[-1]
        assert last["type"] == "exit"
        assert last["result"]["error_type"] == "RunCancelledError"
        assert server.process.wait(30) == 0
        assert server.containers() == []
        assert server.db_path is not None
        from athena.api import MemoryAPI

        with MemoryAPI.create(str(server.db_path)) as api:
            recorded = api.get_execution(last["result"]["execution_id"])
        assert recorded is not None
        assert recorded["result"]["error_type"] == "RunCancelledError"


def test_sigterm_lets_a_short_run_finish() -> None:
    """A run that ends within the grace period finishes normally; the server then exits 0."""
    code = "import time\nprint('a', flush=True)\ntime.sleep(2)\nprint('b')\n"
    with running_server(grace=20) as server, server.client() as client:
        with client.stream("POST", "/v1/execute/stream", json={"code": code}) as response:
            events = _events(response)
            for event in events:
                if event["type"] == "stdout":
                    break
            server.process.send_signal(signal.SIGTERM)
            last = list(events)[-1]
        assert last["result"]["success"] and last["result"]["stdout"] == "a\nb\n"
        assert server.process.wait(30) == 0
        assert server.containers() == []


def test_non_loopback_host_is_refused_without_tokens() -> None:
    """serve --host 0.0.0.0 without --tokens exits 2 saying why, before it listens."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "athena.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "ATHENA_TOKENS_FILE"},
    )
    assert done.returncode == 2, done.stderr
    assert "without tokens" in done.stderr and "--tokens" in done.stderr


def test_a_store_in_the_mounted_project_directory_is_refused(tmp_path: Path) -> None:
    """serve exits 2 when its store is in the project directory research mounts into runs."""
    env = {k: v for k, v in os.environ.items() if k != "ATHENA_TOKENS_FILE"}
    env["ATHENA_PROJECT_DIR"] = str(tmp_path)
    command = [sys.executable, "-m", "athena.cli", "serve", "--port", str(free_port())]
    done = subprocess.run(
        [*command, "--db", str(tmp_path / "memory.db")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "the memory store" in done.stderr and "ATHENA_PROJECT_DIR" in done.stderr
