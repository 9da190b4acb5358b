"""MemoryAPI.connect against a real `athena-sandbox serve` (subprocess, Docker engine, SQLite).

One server for the module, with two tenants: ``alice`` (the default policies, 8 runs in flight)
and ``bob`` (one run in flight). Each test compares what the remote client does with what the
local MemoryAPI does, or checks what only the wire adds (tokens, tenants, closing a stream).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from athena.api import MemoryAPI
from athena.service.client import RemoteMemoryAPI
from athena.service.wire import AuthenticationError, PayloadTooLargeError, TooManyRunsError
from memory_store.errors import RecordNotFoundError
from orchestrator.errors import (
    PolicyError,
    PolicyNotFoundError,
    RequestError,
    SessionEndedError,
    UnknownLanguageError,
)
from orchestrator.policy import load_policy
from orchestrator.settings import Settings
from tests.contract import RESULT_KEYS
from tests.integration.conftest import wait_until
from tests.service_server import ServiceServer, running_server

pytestmark = pytest.mark.docker

LOOP = "print('started', flush=True)\nwhile True:\n    pass"


@pytest.fixture(scope="module")
def server(sandbox_images: Any) -> Iterator[ServiceServer]:
    """One server for the module; afterwards it must have left no container behind."""
    tenants = {"alice": {}, "bob": {"max_in_flight": 1}}
    env = {"ATHENA_SANDBOX_BACKENDS": "docker", "ATHENA_POOL_SIZE": "1"}
    with running_server(tenants=tenants, env=env) as started:
        yield started
        assert started.stop() == 0, started.log()
        assert started.containers() == [], started.log()


@pytest.fixture
def remote(server: ServiceServer) -> Iterator[RemoteMemoryAPI]:
    """Alice's client."""
    with MemoryAPI.connect(server.url, token=server.tokens["alice"]) as api:
        yield api


@pytest.fixture
def bob(server: ServiceServer) -> Iterator[RemoteMemoryAPI]:
    """Bob's client (another tenant, one run in flight)."""
    with MemoryAPI.connect(server.url, token=server.tokens["bob"]) as api:
        yield api


@pytest.fixture
def local(tmp_path: Path) -> Iterator[MemoryAPI]:
    """A local MemoryAPI on its own store, to compare with."""
    with MemoryAPI.create(tmp_path / "local.db", settings=Settings(pool_size=0)) as api:
        yield api


def gone(docker_client: docker.DockerClient, sandbox_id: str) -> Callable[[], bool]:
    """A predicate: no container (any state) has this id any more."""
    return lambda: not docker_client.api.containers(all=True, filters={"id": sandbox_id})


# --------------------------------------------------------------------------- caller mistakes

MISTAKES: list[tuple[str, Callable[[Any], object], type[Exception]]] = [
    ("unknown language", lambda api: api.execute_code("1", "cobol"), UnknownLanguageError),
    ("timeout <= 0", lambda api: api.execute_code("1", timeout_seconds=-1), RequestError),
    ("bad parameters", lambda api: api.execute_code("1", parameters={"a": float("nan")}), RequestError),
    ("stream language", lambda api: api.execute_code_stream("1", "cobol"), UnknownLanguageError),
    ("batch call", lambda api: api.execute_code_batch([{"code": "1", "language": "x"}]), UnknownLanguageError),
    ("prewarm language", lambda api: api.prewarm("cobol"), UnknownLanguageError),
    ("empty memory", lambda api: api.remember("   "), RequestError),
    ("empty query", lambda api: api.recall(""), RequestError),
    ("limit 0", lambda api: api.recall("q", limit=0), RequestError),
    ("unknown kind", lambda api: api.recall("q", kinds=["bogus"]), RequestError),
    ("bad id", lambda api: api.forget(0), RequestError),
    ("bad date", lambda api: api.recall_events(start_date="yesterday"), RequestError),
    ("end before start", lambda api: api.recall_events(start_date="2026-02-01", end_date="2026-01-01"), RequestError),
    ("no steps", lambda api: api.remember_procedure("deploy", []), RequestError),
    ("no procedure", lambda api: api.generate_procedure_code(987654), RecordNotFoundError),
    ("no procedure to check", lambda api: api.validate_procedure_code("x = 1", 987654), RecordNotFoundError),
    ("empty entity", lambda api: api.remember_entity("", "service"), RequestError),
    ("no such ends", lambda api: api.relate_entities(987654, 987655, "uses"), RecordNotFoundError),
    ("unknown strategy", lambda api: api.consolidate("bogus"), RequestError),
    ("days_back 0", lambda api: api.consolidate(days_back=0), RequestError),
]  # fmt: skip


@pytest.mark.parametrize(("call", "cls"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_caller_mistakes_raise_the_local_class_and_message(
    remote: RemoteMemoryAPI, local: MemoryAPI, call: Callable[[Any], object], cls: type[Exception]
) -> None:
    """A caller mistake raises the very class the local API raises, with the same message."""
    with pytest.raises(cls) as local_error:
        call(local)
    with pytest.raises(cls) as remote_error:
        call(remote)
    assert type(remote_error.value) is type(local_error.value)
    assert str(remote_error.value) == str(local_error.value)


def test_a_generator_cannot_be_sent(remote: RemoteMemoryAPI) -> None:
    """generate_procedure_code(generator=...) is a RequestError: a callable cannot be sent."""
    with pytest.raises(RequestError, match="generator cannot be sent"):
        remote.generate_procedure_code(1, generator=str)


def test_the_builtins_still_catch_them(remote: RemoteMemoryAPI) -> None:
    """ValueError and LookupError catch the remote errors, as they catch the local ones."""
    with pytest.raises(LookupError):
        remote.execute_code("1", "cobol")
    with pytest.raises(LookupError):
        remote.get_policy("nope")
    with pytest.raises(ValueError, match="empty"):
        remote.remember("")


def test_an_unknown_policy_names_the_valid_ones(remote: RemoteMemoryAPI) -> None:
    """An unknown policy is a PolicyNotFoundError naming the tenant's policies."""
    with pytest.raises(PolicyNotFoundError) as caught:
        remote.execute_code("1", sandbox_policy="nope")
    assert "nope" in str(caught.value) and "strict" in str(caught.value)


def test_policy_objects_cross_the_wire(remote: RemoteMemoryAPI) -> None:
    """A shipped Policy runs under its name; a Policy that extends one runs as itself."""
    assert remote.execute_code("print(1)", sandbox_policy=load_policy("research"))["policy"] == (
        "research"
    )
    custom = load_policy({"name": "tight", "extends": "strict", "limits": {"timeout_seconds": 9}})
    result = remote.execute_code("print(2)", sandbox_policy=custom)
    assert (result["policy"], result["stdout"]) == ("tight", "2\n")


@pytest.mark.parametrize("path", ["/etc/athena/policy.yaml", Path("/tmp/policy.yaml")])
def test_a_policy_path_is_refused_by_the_server(remote: RemoteMemoryAPI, path: Any) -> None:
    """A path names a file on the server's disk: a PolicyError saying to name a policy."""
    with pytest.raises(PolicyError, match="name a policy"):
        remote.execute_code("1", sandbox_policy=path)


# --------------------------------------------------------------------------- running code


def test_execute_code_gives_the_local_result_dict(
    remote: RemoteMemoryAPI, local: MemoryAPI
) -> None:
    """The same code gives the same keys and the same deterministic values, local and remote."""
    code = "import sys\nprint('out')\nprint('err', file=sys.stderr)\noutput = parameters"
    mine = local.execute_code(code, parameters={"n": 2})
    theirs = remote.execute_code(code, parameters={"n": 2})
    assert set(theirs) == set(mine) == RESULT_KEYS
    same = ("success", "stdout", "stderr", "exit_code", "output", "sandbox_mode", "policy")
    assert {k: theirs[k] for k in same} == {k: mine[k] for k in same}


def test_callbacks_see_the_output_as_it_comes(remote: RemoteMemoryAPI) -> None:
    """on_stdout and on_stderr get the chunks; the result is the whole run's."""
    out: list[str] = []
    err: list[str] = []
    code = "import sys\nprint('a')\nprint('b', file=sys.stderr)"
    result = remote.execute_code(code, on_stdout=out.append, on_stderr=err.append)
    assert result["success"] and "".join(out) == "a\n" and "".join(err) == "b\n"


def test_the_stream_gives_the_local_events(remote: RemoteMemoryAPI, local: MemoryAPI) -> None:
    """The remote stream yields the local event types in order, the exit event with the result."""
    code = "print('one', flush=True)\nprint('two')"
    theirs = list(remote.execute_code_stream(code))
    mine = list(local.execute_code_stream(code))
    assert theirs[0]["type"] == "begin" and theirs[-1]["type"] == "exit"
    assert {e["type"] for e in theirs} == {e["type"] for e in mine}
    assert "".join(e["text"] for e in theirs if e["type"] == "stdout") == "one\ntwo\n"
    assert set(theirs[-1]) == set(mine[-1]) and set(theirs[-1]["result"]) == RESULT_KEYS


def test_closing_the_stream_kills_the_run(
    remote: RemoteMemoryAPI, docker_client: docker.DockerClient
) -> None:
    """Closing the iterator after the first output closes the connection; the container goes."""
    stream = remote.execute_code_stream(LOOP, timeout_seconds=120)
    begin = next(stream)
    assert begin["type"] == "begin" and begin["sandbox_id"]
    output = next(stream)  # "started" (its newline may come in a chunk of its own)
    assert output["type"] == "stdout" and output["text"].startswith("started")
    stream.close()  # type: ignore[attr-defined]
    assert wait_until(gone(docker_client, begin["sandbox_id"]), timeout=15)


def test_execute_code_async(remote: RemoteMemoryAPI, local: MemoryAPI) -> None:
    """execute_code_async returns the result dict; on_event sees every event."""
    seen: list[str] = []
    run = remote.execute_code_async("print(6 * 7)", on_event=lambda e: seen.append(e["type"]))
    result = asyncio.run(run)
    assert result["stdout"] == "42\n" and set(result) == RESULT_KEYS
    assert seen[0] == "begin" and seen[-1] == "exit"


def test_cancelling_the_async_run_kills_it(
    remote: RemoteMemoryAPI, docker_client: docker.DockerClient
) -> None:
    """Cancelling the awaiting task closes the request; the server kills the run's container."""
    begun: list[str] = []
    started = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "begin":
            begun.append(event["sandbox_id"])
        if event["type"] == "stdout":
            started.set()

    async def run_and_cancel() -> None:
        task = asyncio.ensure_future(
            remote.execute_code_async(LOOP, timeout_seconds=120, on_event=on_event)
        )
        while not started.is_set():
            assert not task.done()
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(run_and_cancel(), 60))
    assert begun and wait_until(gone(docker_client, begun[0]), timeout=15)


def test_batch_runs_every_call_in_order(remote: RemoteMemoryAPI) -> None:
    """A batch returns one result dict per call, in the calls' order."""
    calls = [{"code": f"print({n})"} for n in range(3)] + [{"code": "echo hi", "language": "bash"}]
    results = remote.execute_code_batch(calls, concurrency=2)
    assert [r["stdout"] for r in results] == ["0\n", "1\n", "2\n", "hi\n"]
    assert all(set(r) == RESULT_KEYS for r in results)


def test_async_batch_runs_in_order_and_cancelling_it_kills_its_runs(
    remote: RemoteMemoryAPI, server: ServiceServer
) -> None:
    """execute_code_batch_async gives the dicts in order; cancelling it kills the runs going."""
    results = asyncio.run(remote.execute_code_batch_async([{"code": "print(7)"}] * 2))
    assert [r["stdout"] for r in results] == ["7\n", "7\n"]

    def in_flight() -> float:
        text = httpx.get(f"{server.url}/metrics", headers=server.headers("alice"), timeout=30).text
        found = re.search(r'athena_runs_in_flight{tenant="alice"} (\S+)', text)
        return float(found.group(1)) if found else 0.0

    async def run_and_cancel() -> None:
        call = {"code": LOOP, "timeout_seconds": 120}
        task = asyncio.ensure_future(remote.execute_code_batch_async([call] * 2, 2))
        assert await asyncio.to_thread(wait_until, lambda: in_flight() == 2, 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(run_and_cancel(), 60))
    assert wait_until(lambda: in_flight() == 0, 20), "the batch outlived its client"


def test_prewarm_and_policies(remote: RemoteMemoryAPI, local: MemoryAPI) -> None:
    """prewarm answers a bool; the policies are described as locally, only the allowed ones."""
    assert remote.prewarm("python") in {True, False}
    names = [p["name"] for p in remote.list_policies()]
    assert sorted(names) == ["research", "strict"]
    assert remote.get_policy("strict") == local.get_policy("strict")


def test_get_execution_has_the_local_shape(remote: RemoteMemoryAPI, local: MemoryAPI) -> None:
    """get_execution gives the same dict shape, local and remote; None for an unknown id."""
    code = "print('recorded')"
    mine = local.get_execution(local.execute_code(code, timeout_seconds=30)["execution_id"])
    run = remote.execute_code(code, timeout_seconds=30)
    theirs = remote.get_execution(run["execution_id"])
    assert mine is not None and theirs is not None
    assert set(theirs) == set(mine) == {"execution_id", "request", "result", "events"}
    assert set(theirs["request"]) == set(mine["request"])
    assert theirs["request"]["timeout_seconds"] == mine["request"]["timeout_seconds"] == 30
    assert theirs["result"] == run
    for record in (mine, theirs):  # output may come in any number of chunks
        assert [e["type"] for e in record["events"]][:1] == ["begin"]
        assert record["events"][-1] == {**record["events"][-1], "type": "exit"}
        assert "".join(e.get("text", "") for e in record["events"]) == "recorded\n"
    assert theirs["events"][-1]["result"] == run
    assert remote.get_execution("0" * 32) is None


# --------------------------------------------------------------------------- tokens and tenants


def test_a_wrong_token_is_an_authentication_error(server: ServiceServer) -> None:
    """A wrong or missing token raises AuthenticationError (a PermissionError) on every call."""
    for token in ("ath_wrong", None):
        with MemoryAPI.connect(server.url, token=token) as api:
            with pytest.raises(AuthenticationError, match="valid bearer token"):
                api.remember("x")
            with pytest.raises(PermissionError):
                api.execute_code_stream("print(1)")


def test_tenant_is_the_one_the_token_names(
    server: ServiceServer, remote: RemoteMemoryAPI, bob: RemoteMemoryAPI
) -> None:
    """remote.tenant is the token's tenant, as local.tenant is; a wrong token raises 401's error."""
    assert (remote.tenant, bob.tenant) == ("alice", "bob")
    who = httpx.get(f"{server.url}/v1/whoami", headers=server.headers("bob"), timeout=30).json()
    assert who == {"tenant": "bob", "policies": ["strict", "research"], "max_in_flight": 1}
    with (
        MemoryAPI.connect(server.url, token="ath_not-a-token") as stranger,
        pytest.raises(AuthenticationError),
    ):
        _ = stranger.tenant


def test_tenants_do_not_see_each_other(remote: RemoteMemoryAPI, bob: RemoteMemoryAPI) -> None:
    """Bob sees none of Alice's memories or runs, and cannot forget them."""
    memory = remote.remember("the zanzibarquux launch code is 1234")
    run = remote.execute_code("print('zanzibarquux')")
    found = {h["id"] for h in remote.recall("zanzibarquux", kinds=["memory"])}
    assert found == {memory}
    assert bob.recall("zanzibarquux") == []
    assert bob.get_execution(run["execution_id"]) is None
    assert bob.forget(memory) is False
    assert remote.get_execution(run["execution_id"]) is not None
    assert {h["id"] for h in remote.recall("zanzibarquux", kinds=["memory"])} == {memory}


def test_the_in_flight_limit_is_too_many_runs(
    bob: RemoteMemoryAPI, docker_client: docker.DockerClient
) -> None:
    """Over the tenant's in-flight limit a run raises TooManyRunsError with retry_after."""
    stream = bob.execute_code_stream(LOOP, timeout_seconds=120)
    try:
        begin = next(stream)
        with pytest.raises(TooManyRunsError) as caught:
            bob.execute_code("print(1)")
        assert caught.value.retry_after > 0
    finally:
        stream.close()  # type: ignore[attr-defined]
    assert wait_until(gone(docker_client, begin["sandbox_id"]), timeout=15)
    deadline = time.monotonic() + 10
    while True:  # the slot is freed once the server has ended the run
        try:
            assert bob.execute_code("print(1)")["stdout"] == "1\n"
            break
        except TooManyRunsError:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_a_body_over_the_limit_is_payload_too_large(remote: RemoteMemoryAPI) -> None:
    """A body over the server's limit raises PayloadTooLargeError (a ValueError); the client goes on."""
    with pytest.raises(PayloadTooLargeError, match="send less") as caught:
        remote.remember("x" * (9 * 1024 * 1024))
    assert isinstance(caught.value, ValueError)
    assert remote.remember("a small memory after the big one") > 0


# --------------------------------------------------------------------------- sessions and files

VOLATILE = {
    "execution_id", "timestamp", "execution_time_ms", "total_time_ms", "sandbox_id",
    "session_id", "isolation", "resources",
}  # fmt: skip
SESSION_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("x = 41", {}),
    ("x += 1\nprint(x)\noutput = parameters", {"parameters": {"n": 1}}),
    (
        "import os, shutil\nos.makedirs('out', exist_ok=True)\n"
        "shutil.copy('in.bin', 'out/copy.bin')\nopen('out/t.txt', 'w').write(open('t.txt').read())",
        {"files": {"in.bin": bytes(range(256)) * 3, "t.txt": "héllo"}},
    ),
    ("import matplotlib.pyplot as plt\nplt.plot([1, 2])", {"timeout_seconds": 60}),
    ("import sys\nprint('e', file=sys.stderr)\nraise SystemExit(3)", {}),
]


def stable(result: dict[str, Any]) -> dict[str, Any]:
    """A result without what differs from run to run (ids, times, the sandbox)."""
    return {key: value for key, value in result.items() if key not in VOLATILE}


def test_a_remote_session_gives_the_local_results(
    remote: RemoteMemoryAPI, local: MemoryAPI
) -> None:
    """The same session calls give equal dicts locally and remotely (files and figures as bytes)."""
    with local.open_session() as mine, remote.open_session() as theirs:
        for code, kwargs in SESSION_CALLS:
            local_result = mine.execute_code(code, **kwargs)
            remote_result = theirs.execute_code(code, **kwargs)
            assert remote_result["session_id"] == theirs.session_id
            assert stable(remote_result) == stable(local_result), code
        assert set(theirs.info()) == set(mine.info())
        assert (theirs.language, theirs.policy, theirs.closed) == ("python", "strict", False)
        copied = next(f for f in remote_result_files(theirs) if f["name"].endswith("copy.bin"))
        assert copied["content"] == bytes(range(256)) * 3
    assert theirs.closed and mine.closed
    with remote.open_session() as streamed:
        out: list[str] = []
        code = "import time\nprint('a', flush=True)\ntime.sleep(0.3)\nprint('b')"
        assert streamed.execute_code(code, on_stdout=out.append)["success"]
        assert "".join(out) == "a\nb\n" and len(out) >= 2  # chunks as printed
    with pytest.raises(SessionEndedError) as caught:
        theirs.execute_code("1")
    assert caught.value.reason == "closed by its caller"
    theirs.close()  # idempotent, as locally
    mine.close()


def remote_result_files(session: Any) -> list[dict[str, Any]]:
    """The output files of one more call that copies the input again (contents as bytes)."""
    code = "import shutil\nshutil.copy('in.bin', 'out/copy.bin')"
    return list(session.execute_code(code)["files"])


def test_remote_sessions_are_listed_found_and_replayed(
    remote: RemoteMemoryAPI, local: MemoryAPI
) -> None:
    """sessions(), session(id) and replay_session behave as the local ones."""
    opened = remote.open_session(idle_timeout_seconds=120)
    opened.execute_code("x = 41")
    opened.execute_code("x += 1")
    assert [s["session_id"] for s in remote.sessions()] == [opened.session_id]
    found = remote.session(opened.session_id)
    assert found.execute_code("print(x)")["stdout"] == "42\n"
    opened.close()
    with pytest.raises(SessionEndedError):
        remote.session(opened.session_id)
    replayed = remote.replay_session(opened.session_id)
    try:
        assert [r["success"] for r in replayed.replayed] == [True, True, True]
        assert replayed.execute_code("print(x)")["stdout"] == "42\n"
    finally:
        replayed.close()
    with local.open_session() as mine:
        for code in ("x = 41", "x += 1", "print(x)"):
            mine.execute_code(code)
        local_replay = local.replay_session(mine.session_id)
    with local_replay:
        mine_results = [stable(r) for r in local_replay.replayed]
    assert [stable(r) for r in replayed.replayed] == mine_results
    assert remote.sessions() == []


def test_one_shot_files_and_figures_match_the_local_run(
    remote: RemoteMemoryAPI, local: MemoryAPI
) -> None:
    """execute_code(files=...) and the figure capture give the local dict, contents as bytes."""
    code, kwargs = SESSION_CALLS[2]
    assert stable(remote.execute_code(code, **kwargs)) == stable(local.execute_code(code, **kwargs))
    plot, plot_kwargs = SESSION_CALLS[3]
    theirs = remote.execute_code(plot, capture_figures=True, **plot_kwargs)
    assert stable(theirs) == stable(local.execute_code(plot, **plot_kwargs))
    assert theirs["artifacts"][0]["content"].startswith(b"\x89PNG")
    off = remote.execute_code(plot, capture_figures=False, **plot_kwargs)
    assert off["artifacts"] == []
