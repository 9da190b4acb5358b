"""A hostile client against a real ``athena-sandbox serve``: auth tricks, bodies, leaks, MCP sizes.

One server for the module (alice: at most 2 runs in flight; bob: 8), on a real Docker engine,
with room for only two runs in sandboxes at once so that a third waits in the admission queue.
Every test ends with alice able to run two at once again: no error path may keep a slot.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from athena.service.mcp_events import MERGE_LIMIT
from athena.service.mcp_limits import STRUCTURED_BUDGET, TEXT_BUDGET, fit, json_size
from tests.integration.conftest import wait_until
from tests.service_server import ServiceServer, running_server

pytestmark = pytest.mark.docker

SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(30)\n"


@pytest.fixture(scope="module")
def server() -> Iterator[ServiceServer]:
    """alice (2 in flight) and bob (8), two sandboxes at once; no traceback, nothing left."""
    tenants = {"alice": {"max_in_flight": 2}, "bob": {"max_in_flight": 8}}
    env = {"ATHENA_MAX_CONCURRENT_RUNS": "2"}
    with running_server(tenants=tenants, grace=5, env=env) as running:
        yield running
        assert running.stop() == 0
        assert running.containers() == []
        assert "Traceback" not in running.log(), running.log()


def in_flight(server: ServiceServer, tenant: str = "alice") -> float:
    """``tenant``'s runs in flight, as its own /metrics says."""
    text = httpx.get(f"{server.url}/metrics", headers=server.headers(tenant), timeout=30).text
    found = re.search(rf'athena_runs_in_flight{{tenant="{tenant}"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def queue_depth(server: ServiceServer) -> float:
    """The runs waiting for a place in a sandbox."""
    text = httpx.get(f"{server.url}/metrics", headers=server.headers(), timeout=30).text
    found = re.search(r"^athena_queue_depth (\S+)", text, re.M)
    return float(found.group(1)) if found else 0.0


def assert_two_at_once(server: ServiceServer) -> None:
    """alice's two slots are free: two runs at once both get 200."""
    assert wait_until(lambda: in_flight(server) == 0, 15), "a slot of alice's stays taken"

    async def both() -> list[int]:
        async with httpx.AsyncClient(
            base_url=server.url, headers=server.headers(), timeout=60
        ) as client:
            body = {"code": "import time; time.sleep(0.5)"}
            answers = await asyncio.gather(*(client.post("/v1/execute", json=body) for _ in "ab"))
        return [a.status_code for a in answers]

    assert asyncio.run(both()) == [200, 200]


def raw(server: ServiceServer, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes as they are; return the status and the body of the answer."""
    host, port = server.url.rsplit("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def post_bytes(
    server: ServiceServer, path: str, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST ``body`` as it is, with alice's token and JSON content type unless overridden."""
    sent = {**server.headers(), "Content-Type": "application/json", **(headers or {})}
    return httpx.post(f"{server.url}{path}", content=body, headers=sent, timeout=60)


def leave_after(server: ServiceServer, path: str, body: dict[str, Any], seconds: float) -> None:
    """POST as alice, then close the connection after ``seconds`` without reading."""
    data = json.dumps(body).encode()
    host, port = server.url.rsplit("//", 1)[1].split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {server.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + data)
        time.sleep(seconds)


def test_path_and_method_tricks_never_pass_the_token_check(server: ServiceServer) -> None:
    """Without a token only /healthz and /readyz answer; tricks around them get 401 (or 400)."""
    tricks = [
        ("POST", "//v1/execute"),
        ("POST", "/v1/../v1/execute"),
        ("POST", "/%2Fv1/execute"),
        ("GET", "/healthz/"),
        ("GET", "/healthz/../v1/policies"),
        ("GET", "/mcp"),
        ("GET", "/mcpx"),
        ("GET", "/MCP"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("HEAD", "/v1/policies"),
        ("OPTIONS", "/v1/execute"),
        ("GET", "/metrics"),
    ]
    for method, path in tricks:
        status, body = raw(
            server,
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
        )
        assert status in {400, 401}, (method, path, status)
        if status == 401 and method != "HEAD":
            assert json.loads(body)["error"]["message"] == "a valid bearer token is required"
    assert raw(server, b"GET /readyz?x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200


def test_several_authorization_headers_get_401(server: ServiceServer) -> None:
    """Two Authorization headers are refused even when one holds a valid token."""
    token = f"Bearer {server.token}"
    for pair in ([token, "Bearer wrong"], ["Bearer wrong", token], [token, token]):
        headers = [("Authorization", value) for value in pair]
        answer = httpx.get(f"{server.url}/v1/policies", headers=headers, timeout=30)
        assert answer.status_code == 401, pair
    lenient = {"Authorization": f"bearer   {server.token}"}
    assert httpx.get(f"{server.url}/v1/policies", headers=lenient).status_code == 200


def test_a_body_that_cannot_be_decoded_is_a_422_naming_the_body(server: ServiceServer) -> None:
    """Compressed, non-UTF-8, too deep or huge-number bodies: 422 RequestError on ``body``."""
    bodies = {
        "uncompressed": gzip.compress(b'{"content": "x"}'),
        "UTF-8": b'{"content": "\xff\xfe"}',
        "flatter": b"[" * 100_000,
        "digits": b'{"query": "x", "limit": ' + b"9" * 5000 + b"}",
    }
    for says, body in bodies.items():
        answer = post_bytes(server, "/v1/recall", body, {"Content-Encoding": "gzip"})
        assert answer.status_code == 422, (says, answer.text)
        error = answer.json()["error"]
        assert error["type"] == "RequestError" and error["fields"][0]["field"] == "body"
        assert says in error["message"]


def test_a_body_not_sent_as_json_says_which_content_type_to_use(server: ServiceServer) -> None:
    """A JSON body sent without ``Content-Type: application/json`` gets 422 saying to send it."""
    answer = post_bytes(server, "/v1/memories", b'{"content": "x"}', {"Content-Type": "text/plain"})
    assert answer.status_code == 422
    assert "Content-Type: application/json" in answer.json()["error"]["message"]


def test_lone_surrogates_and_invalid_utf8_output_stay_valid_json(server: ServiceServer) -> None:
    """A lone surrogate in a field is a 400 naming it; invalid UTF-8 output comes back as U+FFFD."""
    answer = post_bytes(server, "/v1/memories", b'{"content": "a", "tags": ["\\ud800"]}')
    assert answer.status_code == 400 and "tags[0]" in answer.json()["error"]["message"]
    code = "import sys\nsys.stdout.buffer.write(bytes([0xff, 0xed, 0xa0, 0x80]))"
    for path in ("/v1/execute", "/v1/execute/stream"):
        answer = post_bytes(server, path, json.dumps({"code": code}).encode())
        assert answer.status_code == 200
        answer.content.decode("utf-8")  # strict: raises on a bad byte
        assert "\ufffd" in answer.text


def test_metrics_show_each_tenant_only_its_own_runs_in_flight(server: ServiceServer) -> None:
    """While bob has a run in flight, alice's /metrics does not name bob; bob's shows it."""
    with httpx.stream(
        "POST",
        f"{server.url}/v1/execute/stream",
        json={"code": SLEEPER},
        headers=server.headers("bob"),
        timeout=60,
    ) as stream:
        lines = stream.iter_lines()  # kept: a dropped iterator closes the connection
        assert next(lines) == ": dispatched"  # the answer starts as the code is handed over
        assert next(lines) == ""
        assert next(lines) == "event: begin"  # the run is in flight
        seen_by_alice = httpx.get(f"{server.url}/metrics", headers=server.headers()).text
        assert "bob" not in seen_by_alice
        assert in_flight(server, "bob") == 1.0
    assert wait_until(lambda: in_flight(server, "bob") == 0, 15)


def test_leaving_a_plain_execute_kills_the_run_and_frees_the_slot(server: ServiceServer) -> None:
    """A client that hangs up on POST /v1/execute gets its run killed, not left for 30 s."""
    leave_after(server, "/v1/execute", {"code": SLEEPER}, 2.0)
    assert wait_until(lambda: in_flight(server) == 0, 8), "the run outlived its client"
    assert_two_at_once(server)


def test_leaving_a_batch_kills_its_runs_and_frees_its_slots(server: ServiceServer) -> None:
    """A client that hangs up on POST /v1/execute/batch gets every run killed, none started after."""
    leave_after(server, "/v1/execute/batch", {"calls": [{"code": SLEEPER}] * 4}, 2.0)
    assert wait_until(lambda: in_flight(server) == 0, 8), "the batch outlived its client"
    assert_two_at_once(server)


def test_a_batch_of_more_than_a_thousand_calls_is_a_422(server: ServiceServer) -> None:
    """calls is capped at 1,000 (send several batches), so no one batch holds its slots for hours."""
    with server.client() as alice:
        answer = alice.post("/v1/execute/batch", json={"calls": [{"code": "1"}] * 1_001})
    assert answer.status_code == 422
    assert answer.json()["error"]["fields"][0]["field"] == "body.calls"


def test_leaving_a_stream_while_it_waits_in_the_queue_frees_it(server: ServiceServer) -> None:
    """A stream whose client leaves while its run waits for a sandbox never runs, frees its slot."""
    bob = [
        threading.Thread(
            target=httpx.post,
            args=(f"{server.url}/v1/execute",),
            kwargs={
                "json": {"code": "import time; time.sleep(6)"},
                "headers": server.headers("bob"),
                "timeout": 60,
            },
        )
        for _ in range(2)
    ]
    for thread in bob:
        thread.start()
    assert wait_until(lambda: in_flight(server, "bob") == 2, 15)
    leave_after(server, "/v1/execute/stream", {"code": "print('never')"}, 1.0)
    assert wait_until(lambda: in_flight(server) == 0 and queue_depth(server) == 0, 3)
    assert in_flight(server, "bob") == 2  # alice's slot came back before bob's runs ended
    for thread in bob:
        thread.join()
    assert_two_at_once(server)


def test_no_error_path_keeps_a_slot(server: ServiceServer) -> None:
    """Refused, failed, rejected, cancelled and bad-batch runs all give their slot back."""
    with server.client() as alice:
        assert (
            alice.post("/v1/execute", json={"code": "1", "sandbox_policy": "nope"}).status_code
            == 400
        )
        assert (
            alice.post("/v1/execute", json={"code": "raise SystemExit(3)"}).json()["exit_code"] == 3
        )
        for body in ({"code": "import socket"}, {"code": "1", "language": "cobol"}):
            alice.post("/v1/execute/stream", json=body)
        calls = [{"code": "print(1)"}, {"code": "1", "language": "cobol"}]
        assert alice.post("/v1/execute/batch", json={"calls": calls}).status_code == 400
        batch = {"calls": [{"code": "print(1)"}] * 3, "concurrency": 8}
        assert len(alice.post("/v1/execute/batch", json=batch).json()["results"]) == 3
        leave_after(server, "/v1/execute/stream", {"code": SLEEPER}, 0.0)
        leave_after(server, "/v1/execute/stream", {"code": SLEEPER}, 1.5)
    failed = asyncio.run(_mcp_call(server, "execute_code", {"code": "1", "language": "x"}, []))
    assert failed.is_error
    assert_two_at_once(server)
    # A client that leaves before its code starts is a cancel, not a sandbox lost (a warning
    # an operator would chase, logged for each such client before).
    assert "sandbox lost before the code started" not in server.log()


async def _mcp_call(
    server: ServiceServer, name: str, arguments: dict[str, Any], progress: list[str]
) -> Any:
    """Call one tool as alice over Streamable HTTP; progress messages go to ``progress``."""

    async def on_progress(_done: float, _total: float | None, message: str | None) -> None:
        progress.append(message or "")

    timeout = httpx2.Timeout(60.0)
    async with (
        httpx2.AsyncClient(headers=server.headers(), timeout=timeout) as http,
        Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client,
    ):
        return await client.call_tool(name, arguments, progress_callback=on_progress)


def test_mcp_result_of_megabytes_of_output_reaches_the_sdk_client(server: ServiceServer) -> None:
    """A run printing 3 MB: the SDK client gets a cut result, notifications in small pieces."""
    code = "import sys\nfor _ in range(30):\n    sys.stdout.write('x' * 99_999 + '\\n')\n"
    progress: list[str] = []
    result = asyncio.run(_mcp_call(server, "execute_code", {"code": code}, progress))
    data = result.structured_content
    assert not result.is_error and data["success"] and "truncated" in data
    assert json_size(data) <= STRUCTURED_BUDGET
    assert len(result.content[0].text) <= TEXT_BUDGET + 100
    assert progress and max(len(p) for p in progress) <= MERGE_LIMIT + 20
    fetched = asyncio.run(
        _mcp_call(server, "get_execution", {"execution_id": data["execution_id"]}, [])
    )
    assert not fetched.is_error and "truncated" in fetched.structured_content
    assert_two_at_once(server)


def test_fit_keeps_small_results_and_cuts_big_ones_under_the_budget() -> None:
    """fit returns a small dict itself; a big one comes back cut, marked, under the budget."""
    small = {"stdout": "hello", "n": 1}
    assert fit(small) is small
    big = {
        "stdout": "x" * 2_000_000,
        "stderr": "\x01" * 300_000,
        "events": [{"t": "y" * 50}] * 50_000,
    }
    cut = fit(big)
    assert json_size(cut) <= STRUCTURED_BUDGET and "truncated" in cut
    assert cut["stdout"].startswith("x" * 100) and cut["stdout"].endswith("x" * 100)


def test_an_unknown_policy_names_only_the_policies_the_tenant_may_use(
    server: ServiceServer,
) -> None:
    """GET /v1/policies/<unknown> answers 400 naming alice's policies, not every shipped one."""
    answer = httpx.get(f"{server.url}/v1/policies/nope", headers=server.headers(), timeout=30)
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    assert "strict" in message and "development" not in message
