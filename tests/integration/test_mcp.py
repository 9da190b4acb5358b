"""The MCP server through the official SDK's client: over stdio and over Streamable HTTP.

Every test talks to a real server process (``athena-sandbox mcp``, or ``athena-sandbox serve``
for HTTP) that runs code on the real Docker engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import docker
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, LoggingMessageNotificationParams

from athena.mcp.memory_api import MemoryAPI
from orchestrator.backends.docker.owners import LABEL_OWNER_PID, LABEL_SANDBOX
from tests.integration.conftest import wait_until
from tests.service_server import running_server

pytestmark = pytest.mark.docker

CLI = str(Path(sys.executable).with_name("athena-sandbox"))
TOOL_NAMES = {
    "execute_code",
    "remember",
    "recall",
    "remember_event",
    "remember_procedure",
    "generate_procedure_code",
    "validate_procedure_code",
    "remember_entity",
    "consolidate",
    "list_policies",
    "get_execution",
    "open_session",
    "execute_in_session",
    "close_session",
    "list_sessions",
    "replay_session",
}
RESULT_KEYS = {
    "success",
    "execution_id",
    "stdout",
    "stderr",
    "exit_code",
    "execution_time_ms",
    "violations",
    "violation_details",
    "sandbox_id",
    "language",
    "timestamp",
    "sandbox_mode",
    "isolation",
    "output",
    "error",
    "error_type",
    "issues",
    "policy",
    "timeout_seconds",
    "resources",
    "total_time_ms",
    "session_id",
    "session_state",
    "files",
    "artifacts",
}
TICKS = "tick 0\ntick 1\ntick 2\n"
INFO = {"name": "raw-test-client", "version": "1"}
SLOW_PRINTS = (
    "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.7)"
)


def server_env() -> dict[str, str]:
    """What the stdio server inherits from the test run (engine, settings)."""
    return {k: v for k, v in os.environ.items() if k.startswith(("ATHENA_", "DOCKER_"))}


def stdio_params(db: Path, *args: str) -> StdioServerParameters:
    """``athena-sandbox mcp`` on a fresh store."""
    return StdioServerParameters(
        command=CLI, args=["mcp", "--db", str(db), *args], env=server_env()
    )


@asynccontextmanager
async def stdio_session(tmp_path: Path, **options: Any) -> AsyncIterator[Client]:
    """An SDK client on a spawned ``athena-sandbox mcp`` (its stderr in tmp_path/server.log)."""
    with open(tmp_path / "server.log", "w") as errlog:
        transport = stdio_client(stdio_params(tmp_path / "memory.db"), errlog=errlog)
        async with Client(transport, **options) as client:
            yield client


@asynccontextmanager
async def http_session(url: str, token: str | None, **options: Any) -> AsyncIterator[Client]:
    """An SDK client on ``url``/mcp with a bearer token."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    timeout = httpx2.Timeout(120.0, read=300.0)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        transport = streamable_http_client(f"{url}/mcp", http_client=http)
        async with Client(transport, **options) as client:
            yield client


def data(result: CallToolResult) -> dict[str, Any]:
    """The structured content of a successful call."""
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    """The text of a tool error."""
    assert result.is_error, result.structured_content
    text: str = result.content[0].text  # type: ignore[union-attr]
    return text


async def call_every_tool(client: Client) -> dict[str, Any]:
    """List the tools and call each once, checking what it returns; return the run's result."""
    listed = await client.list_tools()
    assert {tool.name for tool in listed.tools} == TOOL_NAMES
    code = "print('hello from mcp')\noutput = sum(parameters['xs'])"
    run = await client.call_tool("execute_code", {"code": code, "parameters": {"xs": [1, 2]}})
    result = data(run)
    assert set(result) == RESULT_KEYS
    assert result["success"] and result["output"] == 3 and result["sandbox_mode"] == "docker"
    assert "hello from mcp" in run.content[0].text  # type: ignore[union-attr]

    memory = data(await client.call_tool("remember", {"content": "the answer is 42"}))["id"]
    found = data(await client.call_tool("recall", {"query": "answer", "kinds": ["memory"]}))
    assert [hit["id"] for hit in found["results"]] == [memory]
    event = data(await client.call_tool("remember_event", {"event_type": "x", "content": "y"}))
    assert isinstance(event["id"], int)
    steps = ["load the data", {"description": "add", "code": "print(1 + 1)"}]
    procedure = data(
        await client.call_tool("remember_procedure", {"name": "sum up", "steps": steps})
    )["id"]
    generated = data(await client.call_tool("generate_procedure_code", {"procedure_id": procedure}))
    assert generated["success"] and "def main" in generated["code"]
    checked = data(
        await client.call_tool(
            "validate_procedure_code", {"code": generated["code"], "procedure_id": procedure}
        )
    )
    assert checked["success"] and 0 < checked["quality_score"] <= 1
    entity = {"name": "Ada", "entity_type": "person"}
    first = data(await client.call_tool("remember_entity", entity))["id"]
    assert data(await client.call_tool("remember_entity", entity))["id"] == first
    report = data(await client.call_tool("consolidate", {"strategy": "minimal"}))
    assert report["strategy"] == "minimal" and report["executions_scanned"] >= 1
    policies = data(await client.call_tool("list_policies", {}))["policies"]
    assert [p["name"] for p in policies] == ["strict", "research"]
    fetched = data(
        await client.call_tool("get_execution", {"execution_id": result["execution_id"]})
    )
    assert fetched["request"]["code"] == code and fetched["result"]["stdout"] == result["stdout"]
    return result


# --- stdio ----------------------------------------------------------------------------------


def test_stdio_lists_every_tool_with_described_arguments(tmp_path: Path) -> None:
    """Over stdio every tool is listed, every argument described, policies named."""

    async def main() -> list[Any]:
        async with stdio_session(tmp_path) as client:
            return (await client.list_tools()).tools

    tools = {tool.name: tool for tool in anyio.run(main)}
    assert set(tools) == TOOL_NAMES
    for tool in tools.values():
        assert tool.description and tool.input_schema["type"] == "object"
        assert tool.input_schema["additionalProperties"] is False
        for name, prop in tool.input_schema["properties"].items():
            assert prop.get("description"), (tool.name, name)
    execute = tools["execute_code"].input_schema
    assert execute["required"] == ["code"]
    assert execute["properties"]["language"]["default"] == "python"
    assert execute["properties"]["record"]["default"] is True
    policy_help = execute["properties"]["sandbox_policy"]["description"]
    assert "- strict: " in policy_help and "- research: " in policy_help
    assert "development" not in policy_help  # not one of this tenant's policies


def test_stdio_calls_every_tool(tmp_path: Path) -> None:
    """Over stdio every tool answers with structured content and a text block."""

    async def main() -> dict[str, Any]:
        async with stdio_session(tmp_path) as client:
            return await call_every_tool(client)

    result = anyio.run(main)
    with MemoryAPI.create(tmp_path / "memory.db") as api:  # the run was recorded
        assert api.get_execution(result["execution_id"]) is not None


def test_stdio_caller_mistakes_are_tool_errors(tmp_path: Path) -> None:
    """Bad arguments give tool errors saying what to change; the server keeps serving."""

    async def main() -> list[str]:
        async with stdio_session(tmp_path, mode="legacy") as client:
            texts = [
                error_text(await client.call_tool("recall", {"query": "x", "limit": "5"})),
                error_text(await client.call_tool("remember", {"content": "x", "colour": 1})),
                error_text(await client.call_tool("execute_code", {"language": "python"})),
                error_text(
                    await client.call_tool("execute_code", {"code": "1", "language": "cobol"})
                ),
                error_text(
                    await client.call_tool(
                        "execute_code", {"code": "1", "sandbox_policy": "development"}
                    )
                ),
                error_text(
                    await client.call_tool(
                        "execute_code", {"code": "1", "sandbox_policy": "/etc/policy.yaml"}
                    )
                ),
                error_text(await client.call_tool("get_execution", {"execution_id": "nope"})),
                error_text(await client.call_tool("generate_procedure_code", {"procedure_id": 9})),
            ]
            with pytest.raises(MCPError, match="unknown tool 'rm_rf'"):
                await client.call_tool("rm_rf", {})
            assert len((await client.list_tools()).tools) == len(TOOL_NAMES)  # still serving
            return texts

    texts = anyio.run(main)
    assert "limit: Input should be a valid integer" in texts[0]
    assert "unknown argument 'colour'" in texts[1] and "memory_type=" in texts[1]
    assert "code: Field required" in texts[2]
    assert "cobol" in texts[3] and "javascript" in texts[3]
    assert "development" in texts[4] and "strict" in texts[4]
    assert "path" in texts[5]
    assert "nope" in texts[6] and texts[6].startswith("RecordNotFoundError")
    assert "procedure_id 9" in texts[7]


def test_stdio_output_streams_as_progress_and_log_notifications(tmp_path: Path) -> None:
    """A run's output reaches the client as progress and log notifications while it runs."""
    progress: list[tuple[float, str]] = []
    logs: list[tuple[float, LoggingMessageNotificationParams]] = []

    async def on_progress(_value: float, _total: float | None, message: str | None) -> None:
        progress.append((time.monotonic(), message or ""))

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        logs.append((time.monotonic(), params))

    async def main() -> float:
        async with stdio_session(tmp_path, logging_callback=on_log, log_level="info") as client:
            await client.call_tool(
                "execute_code", {"code": SLOW_PRINTS}, progress_callback=on_progress
            )
            return time.monotonic()

    done = anyio.run(main)
    assert all(m.startswith("[stdout] ") for _, m in progress)
    assert "".join(m.removeprefix("[stdout] ") for _, m in progress) == TICKS
    assert done - progress[0][0] >= 1.0  # the first chunk came long before the result
    output = [p for _, p in logs if p.logger == "athena.run"]
    assert "".join(p.data["text"] for p in output) == TICKS
    assert all(p.level == "info" and p.data["type"] == "stdout" for p in output)


def child_pids() -> set[int]:
    """The processes this test process started (the stdio server among them)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                children.add(int(entry.name))
    return children


def owned_containers(pids: set[int]) -> list[Any]:
    """Sandbox containers (any state) owned by one of ``pids``."""
    client = docker.from_env()
    try:
        listed = client.api.containers(all=True, filters={"label": LABEL_SANDBOX})
    finally:
        client.close()
    return [c for c in listed if c["Labels"].get(LABEL_OWNER_PID) in {str(p) for p in pids}]


def container_exists(sandbox_id: str) -> bool:
    """Whether a container with this id exists, in any state."""
    client = docker.from_env()
    try:
        return bool(client.api.containers(all=True, filters={"id": sandbox_id}))
    finally:
        client.close()


class RunWatch:
    """A logging callback that notes the sandbox each run began in and when it printed."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget earlier runs."""
        self.begun: list[str] = []
        self.printed = anyio.Event()

    async def __call__(self, params: LoggingMessageNotificationParams) -> None:
        if params.data["type"] == "begin":
            self.begun.append(params.data["sandbox_id"])
        elif params.data["type"] == "stdout":
            self.printed.set()


async def cancel_a_run(client: Client, watch: RunWatch) -> str:
    """Start a run that sleeps, cancel the call once it printed; return its sandbox's id."""
    code = "import time\nprint('go', flush=True)\ntime.sleep(120)"
    watch.reset()
    async with anyio.create_task_group() as group:
        group.start_soon(
            partial(client.call_tool, "execute_code", {"code": code, "timeout_seconds": 120})
        )
        with anyio.fail_after(60):
            await watch.printed.wait()
        assert container_exists(watch.begun[-1])
        group.cancel_scope.cancel()
    return watch.begun[-1]


def test_stdio_cancelling_the_call_kills_the_run(tmp_path: Path) -> None:
    """Cancelling execute_code kills its container at once; the record says it was cancelled."""

    async def main() -> tuple[float, set[int]]:
        watch = RunWatch()
        async with stdio_session(tmp_path, log_level="debug", logging_callback=watch) as client:
            pids = child_pids()
            sandbox = await cancel_a_run(client, watch)
            cancelled = time.monotonic()
            assert await anyio.to_thread.run_sync(
                lambda: wait_until(lambda: not container_exists(sandbox), timeout=15)
            )
            await client.list_tools()  # the server goes on
            return time.monotonic() - cancelled, pids

    elapsed, pids = anyio.run(main)
    assert elapsed < 15
    assert not owned_containers(pids)  # the server removed its warm pool on the way out
    with MemoryAPI.create(tmp_path / "memory.db") as api:
        (record,) = api.store.list_executions(limit=1)
        assert record.error_type == "RunCancelledError"


SITE_NOISE = """
import os, sys, threading, time, warnings

def _noise():
    while True:
        time.sleep(0.02)
        stdio = sys.modules.get("mcp.server.stdio")
        claim = getattr(stdio, "_claims", {}).get(1)
        if claim is not None and claim.private_fd is not None:
            time.sleep(0.2)
            print("NOISE from a library", flush=True)
            warnings.warn("NOISE warning from a library")
            os.system("echo NOISE from a child process")
            return

threading.Thread(target=_noise, daemon=True).start()
"""


def rpc(process: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    """Write one JSON-RPC message to the server's stdin."""
    assert process.stdin is not None
    process.stdin.write((json.dumps(message) + "\n").encode())
    process.stdin.flush()


def test_stdio_stdout_carries_only_protocol_messages(tmp_path: Path) -> None:
    """Prints, warnings, child output and debug logs go to stderr; stdout is JSON-RPC only."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITE_NOISE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "PYTHONWARNINGS": "always"}
    command = [CLI, "-v", "mcp", "--db", str(tmp_path / "memory.db")]
    with open(tmp_path / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env
        )
    try:
        hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": INFO}
        rpc(process, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
        rpc(process, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        code = "import sys\nprint('out')\nprint('err', file=sys.stderr)\nwhile True: pass"
        arguments = {"code": code, "timeout_seconds": 2}
        call = {"name": "execute_code", "arguments": arguments, "_meta": {"progressToken": 7}}
        rpc(process, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
        assert process.stdout is not None
        lines = []
        while True:
            line = process.stdout.readline()
            assert line, (tmp_path / "stderr.log").read_text()
            lines.append(json.loads(line))
            if lines[-1].get("id") == 2:
                break
        assert process.stdin is not None
        process.stdin.close()
        rest = process.stdout.read()
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert rest.strip() == b""
    assert all(message["jsonrpc"] == "2.0" for message in lines)
    result = lines[-1]["result"]["structuredContent"]
    assert any("timeout" in v for v in result["violations"])  # the server logged a violation
    noise = (tmp_path / "stderr.log").read_text()
    for what in ("NOISE from a library", "NOISE warning", "NOISE from a child process"):
        assert what in noise


def start_raw_run(process: subprocess.Popen[bytes], code: str) -> None:
    """Initialize over raw JSON-RPC and call execute_code; return once the run printed."""
    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": INFO}
    rpc(process, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
    rpc(process, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    call = {"name": "execute_code", "arguments": {"code": code}, "_meta": {"progressToken": 1}}
    rpc(process, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
    assert process.stdout is not None
    while json.loads(process.stdout.readline()).get("method") != "notifications/progress":
        pass


def test_stdio_sigterm_kills_the_run_and_exits(tmp_path: Path) -> None:
    """SIGTERM during a run: the run is killed and recorded, no container is left, exit 0."""
    command = [CLI, "mcp", "--db", str(tmp_path / "memory.db")]
    with open(tmp_path / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
    try:
        start_raw_run(process, "import time\nprint('go', flush=True)\ntime.sleep(60)")
        assert owned_containers({process.pid})
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not owned_containers({process.pid})
    with MemoryAPI.create(tmp_path / "memory.db") as api:
        (record,) = api.store.list_executions(limit=1)
        assert record.error_type == "RunCancelledError"


# --- Streamable HTTP ------------------------------------------------------------------------


def test_http_lists_and_calls_every_tool_with_a_token(tmp_path: Path) -> None:
    """At /mcp of `serve --tokens`, the SDK client lists and calls every tool."""
    with running_server(tmp_path, tenants={"alice": {}, "bob": {}}) as server:

        async def main() -> CallToolResult:
            async with http_session(server.url, server.tokens["alice"]) as client:
                result = await call_every_tool(client)
            async with http_session(server.url, server.tokens["bob"], mode="legacy") as bob:
                return await bob.call_tool(
                    "get_execution", {"execution_id": result["execution_id"]}
                )

        other = anyio.run(main)
        assert "RecordNotFoundError" in error_text(other)  # bob never sees alice's runs
        # The tool's run counts in the server's metrics like a run over the HTTP API.
        metrics = httpx.get(f"{server.url}/metrics", headers=server.headers("alice"), timeout=30)
        assert 'athena_runs_total{language="python",mode="docker",outcome="success"}' in (
            metrics.text
        )
    assert not server.containers()  # stopped: its warm pool is gone too


def test_http_mcp_refuses_a_missing_token_and_another_tenants_session(tmp_path: Path) -> None:
    """/mcp answers 401 without a valid token, and 404 to a session another tenant opened."""
    with running_server(tmp_path, tenants={"alice": {}, "bob": {}}) as server:
        url = f"{server.url}/mcp"
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        plain = {"Accept": "application/json, text/event-stream"}
        missing = httpx.post(url, json=listing, headers=plain)
        wrong = httpx.post(url, json=listing, headers={**plain, "Authorization": "Bearer ath_x"})
        version = "2025-06-18"
        hello = {"protocolVersion": version, "capabilities": {}, "clientInfo": INFO}
        alice = {**plain, **server.headers("alice")}
        opened = httpx.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello},
            headers=alice,
        )
        session = {
            "mcp-session-id": opened.headers["mcp-session-id"],
            "mcp-protocol-version": version,
        }
        ready = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        httpx.post(url, json=ready, headers={**alice, **session})
        as_bob = httpx.post(
            url, json=listing, headers={**plain, **server.headers("bob"), **session}
        )
        as_alice = httpx.post(url, json=listing, headers={**alice, **session})
    assert missing.status_code == wrong.status_code == 401
    assert missing.json() == {
        "error": {"type": "Unauthorized", "message": "a valid bearer token is required"}
    }
    assert opened.status_code == 200 and as_alice.status_code == 200
    assert as_bob.status_code == 404


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_http_streams_and_cancels(tmp_path: Path, mode: str) -> None:
    """Over HTTP (2026 and handshake eras) output streams; cancelling the call kills the run."""
    with running_server(tmp_path, tenants={"alice": {}}) as server:
        messages: list[str] = []

        async def on_progress(_value: float, _total: float | None, message: str | None) -> None:
            messages.append(message or "")

        async def main() -> str:
            watch = RunWatch()
            options = {"log_level": "debug", "logging_callback": watch, "mode": mode}
            async with http_session(server.url, server.token, **options) as client:
                arguments = {"code": SLOW_PRINTS}
                await client.call_tool("execute_code", arguments, progress_callback=on_progress)
                return await cancel_a_run(client, watch)

        sandbox = anyio.run(main)
        assert "".join(m.removeprefix("[stdout] ") for m in messages) == TICKS
        assert wait_until(lambda: not container_exists(sandbox), timeout=15)
        with MemoryAPI.create(server.db_path) as api:
            (record,) = api.for_tenant("alice").store.list_executions(limit=1)
            assert record.error_type == "RunCancelledError"
