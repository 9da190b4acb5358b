"""The remote client sends a run again only when its code cannot have started (fake transports)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from tenacity import wait_none

from athena.service import retry
from athena.service.client import RemoteMemoryAPI
from athena.service.wire import ServiceUnavailableError, TooManyRunsError

URL = "http://node.test"
RESULT = {"success": True, "stdout": "1\n", "execution_id": "e1"}
HAPROXY_502 = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
DRAINING = {"error": {"type": "Draining", "message": "the server drains"}}


@pytest.fixture(autouse=True)
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries go at once here (the real wait is a random exponential one)."""
    monkeypatch.setattr(retry, "_WAIT", wait_none())


class Broken(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that breaks off after its first byte: the node died mid-answer."""

    def __iter__(self) -> Iterator[bytes]:
        yield b" "
        raise httpx.ReadError("connection reset by peer")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b" "
        raise httpx.ReadError("connection reset by peer")


def _client(
    answers: list[Callable[[httpx.Request], httpx.Response]],
) -> tuple[RemoteMemoryAPI, list[str]]:
    """A client whose n-th request gets the n-th answer; also the paths it asked for."""
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return answers[min(len(asked), len(answers)) - 1](request)

    return RemoteMemoryAPI(URL, transport=httpx.MockTransport(handle)), asked


EXIT = {"type": "exit", "exit_code": 0, "result": RESULT}


def _events(*events: dict[str, Any]) -> str:
    """Server-Sent Events of these event dicts."""
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


def _json(status: int, body: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _request: httpx.Response(status, json=body)


def _raw(
    status: int, kind: str, content: bytes | str = b"", stream: Any = None
) -> Callable[[httpx.Request], httpx.Response]:
    """An answer of ``status`` with a body of content type ``kind`` (or a broken ``stream``)."""
    headers = {"content-type": kind}
    if stream is not None:
        return lambda _request: httpx.Response(status, stream=stream, headers=headers)
    return lambda _request: httpx.Response(status, content=content, headers=headers)


def _refused(exc: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc("no answer", request=request)

    return fail


def test_a_load_balancer_502_before_the_start_is_sent_again() -> None:
    """The load balancer's own 502 (no node answered): the run goes again and its result comes."""
    page = _raw(502, "text/html", HAPROXY_502)
    api, asked = _client([page, _json(200, RESULT)])
    assert api.execute_code("print(1)")["stdout"] == "1\n"
    assert asked == ["/v1/execute", "/v1/execute"]


def test_a_draining_node_s_503_is_sent_again() -> None:
    """A node that drains refused before the code started: another node gets the run."""
    api, asked = _client([_json(503, DRAINING), _json(503, DRAINING), _json(200, RESULT)])
    assert api.execute_code("print(1)")["success"]
    assert len(asked) == 3


def test_a_connection_refused_is_sent_again_then_given_up() -> None:
    """No node takes the connection: RUN_ATTEMPTS tries, then the unreachable error."""
    api, asked = _client([_refused(httpx.ConnectError)])
    with pytest.raises(ServiceUnavailableError, match="cannot reach"):
        api.execute_code("print(1)")
    assert len(asked) == retry.RUN_ATTEMPTS


def test_an_answer_that_breaks_after_its_200_is_never_sent_again() -> None:
    """The 200 went out before the code was handed over: a break after it is final."""
    broken = _raw(200, "application/json", stream=Broken())
    api, asked = _client([broken, _json(200, RESULT)])
    with pytest.raises(ServiceUnavailableError, match="may have run") as raised:
        api.execute_code("print(1)")
    assert "check for its effects" in str(raised.value)
    assert asked == ["/v1/execute"]


@pytest.mark.parametrize("broke", [httpx.ReadError, httpx.RemoteProtocolError])
def test_a_connection_that_broke_before_a_status_is_not_sent_again(
    broke: type[httpx.TransportError],
) -> None:
    """It may have broken between us and a load balancer after the node's 200: not again."""
    api, asked = _client([_refused(broke), _json(200, RESULT)])
    with pytest.raises(ServiceUnavailableError, match="may have reached a server and run"):
        api.execute_code("print(1)")
    assert len(asked) == 1


def test_a_read_timeout_is_not_sent_again() -> None:
    """A run may still be queued where it timed out: it is not sent a second time."""
    api, asked = _client([_refused(httpx.ReadTimeout), _json(200, RESULT)])
    with pytest.raises(ServiceUnavailableError, match="did not answer in time"):
        api.execute_code("print(1)")
    assert len(asked) == 1


def test_a_tenant_limit_is_not_sent_again() -> None:
    """429 is the caller's to handle (no silent retry), as before clusters."""
    busy = {"error": {"type": "TooManyRuns", "message": "limit 1"}}
    api, asked = _client([_json(429, busy), _json(200, RESULT)])
    with pytest.raises(TooManyRunsError):
        api.execute_code("print(1)")
    assert len(asked) == 1


def test_an_error_envelope_under_a_200_is_raised() -> None:
    """An error after the answer started (the drain killed the run) reaches the caller."""
    killed = {"error": {"type": "Draining", "message": "the run was killed"}}
    api, asked = _client([_json(200, killed)])
    with pytest.raises(ServiceUnavailableError, match="the run was killed"):
        api.execute_code("print(1)")
    assert len(asked) == 1


def test_a_stream_that_was_refused_is_sent_again_and_one_that_began_is_not() -> None:
    """Streamed runs follow the same rule: a 503 goes again, a break after the 200 does not."""
    stream = _raw(200, "text/event-stream", _events({"type": "begin"}, EXIT))
    api, asked = _client([_json(503, DRAINING), stream])
    assert api.execute_code("print(1)", on_stdout=lambda _t: None)["success"]
    assert len(asked) == 2
    broken = _raw(200, "text/event-stream", stream=Broken())
    api, asked = _client([broken, stream])
    with pytest.raises(ServiceUnavailableError):
        api.execute_code("print(1)", on_stdout=lambda _t: None)
    assert len(asked) == 1


def test_async_runs_retry_before_the_start_and_say_when_it_started() -> None:
    """execute_code_async: a 502 goes again; on_dispatch is called once the 200 arrives."""
    events = _events(EXIT)
    asked: list[int] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        asked.append(1)
        if len(asked) == 1:
            return httpx.Response(502, content=HAPROXY_502)
        return httpx.Response(200, text=events, headers={"content-type": "text/event-stream"})

    api = RemoteMemoryAPI(URL, async_transport=httpx.MockTransport(handle))
    dispatched: list[bool] = []
    result = asyncio.run(
        api.execute_code_async("print(1)", on_dispatch=lambda: dispatched.append(True))
    )
    assert result["success"] and len(asked) == 2 and dispatched == [True]


def test_opening_a_session_is_sent_again_when_refused() -> None:
    """Opening runs none of the caller's code: a draining node's refusal goes to another node."""
    info = {"session_id": "node-b." + "0" * 32, "language": "python", "state": "open"}
    api, asked = _client([_json(503, DRAINING), _json(201, info)])
    assert api.open_session().session_id == info["session_id"]
    assert asked == ["/v1/sessions", "/v1/sessions"]


def test_a_batch_is_never_sent_again() -> None:
    """A batch's runs start one by one: a 502 in the middle may follow runs that started."""
    page = _raw(502, "text/html", HAPROXY_502)
    api, asked = _client([page, _json(200, {"results": [RESULT]})])
    with pytest.raises(ServiceUnavailableError):
        api.execute_code_batch([{"code": "print(1)"}])
    assert len(asked) == 1
