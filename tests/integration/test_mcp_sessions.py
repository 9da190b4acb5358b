"""The MCP server's session tools, files and figures, through the official SDK's client.

Every test talks to a real server process (``athena-sandbox mcp`` over stdio, or
``athena-sandbox serve`` at ``/mcp``) that runs code on the real Docker engine.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import anyio
import pytest
from jsonschema import Draft202012Validator
from mcp import Client
from mcp_types import CallToolResult, ImageContent, TextContent

from tests.integration.conftest import wait_until
from tests.integration.test_mcp import (
    child_pids,
    data,
    error_text,
    http_session,
    owned_containers,
    stdio_session,
)
from tests.service_server import running_server

pytestmark = pytest.mark.docker

SESSION_TOOLS = {
    "open_session",
    "execute_in_session",
    "close_session",
    "list_sessions",
    "replay_session",
}
RAW = b"\x00\xff\x10 bytes"
FILES = {"in/data.txt": "héllo", "in/raw.bin": {"base64": base64.b64encode(RAW).decode()}}
WRITE_BACK = """
import os, shutil
os.makedirs('out', exist_ok=True)
with open('out/answer.txt', 'w') as f:
    f.write(str(x + 1) + ' ' + open('in/data.txt').read())
shutil.copy('in/raw.bin', 'out/raw.bin')
output = x + 1
"""
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2])"


def returned(result: dict[str, Any], key: str = "files") -> dict[str, bytes]:
    """The files (or artifacts) of a result, by name, their content decoded."""
    return {item["name"]: base64.b64decode(item["content"]) for item in result[key]}


def images(result: CallToolResult) -> list[ImageContent]:
    """The image blocks of a tool result."""
    return [block for block in result.content if isinstance(block, ImageContent)]


def assert_figure(result: CallToolResult) -> None:
    """The result holds one PNG figure: as an artifact and as an image block, text compact."""
    (image,) = images(result)
    assert image.mime_type == "image/png"
    png = base64.b64decode(image.data)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    (artifact,) = data(result)["artifacts"]
    assert artifact["mime_type"] == "image/png" and base64.b64decode(artifact["content"]) == png
    text = result.content[0]
    assert isinstance(text, TextContent) and "(shown as an image)" in text.text
    assert image.data[:100] not in text.text


async def session_call(client: Client, session_id: str, code: str, **more: Any) -> CallToolResult:
    """Call execute_in_session."""
    arguments = {"session_id": session_id, "code": code, **more}
    return await client.call_tool("execute_in_session", arguments)


# --- stdio ----------------------------------------------------------------------------------


def test_stdio_session_keeps_state_and_round_trips_files_and_figures(tmp_path: Path) -> None:
    """A session keeps state across calls; files go in and out; a figure comes as an image."""

    async def main() -> None:
        async with stdio_session(tmp_path) as client:
            opened = data(await client.call_tool("open_session", {"language": "python"}))
            sid = opened["session_id"]
            assert opened["state"] == "open" and opened["closes_with_connection"] is True
            first = data(await session_call(client, sid, "x = 41"))
            assert first["session_id"] == sid and first["session_state"] == "kept"
            second = data(await session_call(client, sid, WRITE_BACK, files=FILES))
            assert second["success"] and second["output"] == 42  # x survived the call
            assert returned(second) == {"answer.txt": "42 héllo".encode(), "raw.bin": RAW}
            figure = await session_call(client, sid, PLOT)
            assert_figure(figure)
            plain = data(await session_call(client, sid, "print('again')", capture_figures=False))
            assert plain["artifacts"] == [] and plain["stdout"] == "again\n"

    anyio.run(main)


def test_stdio_close_then_call_is_an_error_with_the_reason_and_replay_rebuilds(
    tmp_path: Path,
) -> None:
    """After close_session a call says the session was closed; replay rebuilds its state."""

    async def main() -> tuple[str, set[int]]:
        async with stdio_session(tmp_path) as client:
            pids = child_pids()
            sid = data(await client.call_tool("open_session", {}))["session_id"]
            data(await session_call(client, sid, "x = 41"))
            data(await session_call(client, sid, WRITE_BACK, files=FILES))
            listed = data(await client.call_tool("list_sessions", {}))["sessions"]
            assert [s["session_id"] for s in listed] == [sid]
            closed = data(await client.call_tool("close_session", {"session_id": sid}))
            assert closed["state"] == "ended" and closed["ended_reason"] == "closed by its caller"
            late = error_text(await session_call(client, sid, "print(x)"))
            again = error_text(await client.call_tool("close_session", {"session_id": sid}))
            assert data(await client.call_tool("list_sessions", {}))["sessions"] == []
            replay = {"session_id": sid, "files": FILES}
            rebuilt = data(await client.call_tool("replay_session", replay))
            new_sid = rebuilt["session"]["session_id"]
            assert new_sid != sid and len(rebuilt["replayed"]) == 2
            assert rebuilt["replayed"][1]["output"] == 42
            assert data(await session_call(client, new_sid, "print(x)"))["stdout"] == "41\n"
            # Left open: the server closes it when the client goes.
            still = data(await client.call_tool("list_sessions", {}))["sessions"]
            assert [s["session_id"] for s in still] == [new_sid]
            return late + "\n" + again, pids

    texts, pids = anyio.run(main)
    for text in texts.splitlines():
        assert text.startswith("SessionEndedError: session ")
        assert "has ended: closed by its caller" in text and "open_session" in text
    assert not owned_containers(pids)  # the open session's sandbox went with the server


def test_stdio_tool_list_has_the_session_tools_with_valid_schemas(tmp_path: Path) -> None:
    """The session tools are listed; every input schema is valid JSON Schema with defaults."""

    async def main() -> list[Any]:
        async with stdio_session(tmp_path) as client:
            return (await client.list_tools()).tools

    tools = {tool.name: tool for tool in anyio.run(main)}
    assert set(tools) >= SESSION_TOOLS
    for tool in tools.values():
        Draft202012Validator.check_schema(tool.input_schema)
    opened = tools["open_session"].input_schema["properties"]
    assert opened["sandbox_policy"]["anyOf"][0]["enum"] == ["strict", "research"]
    assert opened["idle_timeout_seconds"]["default"] == 600
    execute = Draft202012Validator(tools["execute_code"].input_schema)
    assert execute.is_valid({"code": "1", "files": FILES, "capture_figures": False})
    assert not execute.is_valid({"code": "1", "files": {"a": 1}})
    assert tools["close_session"].annotations.destructive_hint is True


# --- Streamable HTTP ------------------------------------------------------------------------


def test_http_sessions_are_the_tenants_and_close_with_the_connection(tmp_path: Path) -> None:
    """Over /mcp each tenant sees its own sessions; a handshake session's close ends them."""
    tenants = {"alice": {}, "bob": {"policies": ["strict"]}}
    with running_server(tmp_path, tenants=tenants) as server:
        alice, bob = server.tokens["alice"], server.tokens["bob"]

        async def listed(token: str) -> list[str]:
            async with http_session(server.url, token) as client:
                sessions = data(await client.call_tool("list_sessions", {}))["sessions"]
            return [s["session_id"] for s in sessions]

        async def main() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            async with http_session(server.url, alice, mode="legacy") as client:
                opened = data(await client.call_tool("open_session", {}))
                sid = seen["sid"] = opened["session_id"]
                assert opened["closes_with_connection"] is True
                data(await session_call(client, sid, "x = 1"))
                assert data(await session_call(client, sid, "output = x + 1"))["output"] == 2
                second = data(await client.call_tool("open_session", {"language": "bash"}))
                seen["second"] = second["session_id"]
                async with http_session(server.url, bob, mode="legacy") as other:
                    seen["bob_lists"] = await listed(bob)
                    seen["bob_calls"] = error_text(await session_call(other, sid, "print(x)"))
                    seen["bob_closes"] = error_text(
                        await other.call_tool("close_session", {"session_id": sid})
                    )
                    seen["bob_research"] = error_text(
                        await other.call_tool("open_session", {"sandbox_policy": "research"})
                    )
                seen["alice_lists"] = await listed(alice)
            return seen

        seen = anyio.run(main)
        assert seen["alice_lists"] == [seen["sid"], seen["second"]] and seen["bob_lists"] == []
        assert seen["bob_calls"].startswith("SessionEndedError: no open session")
        assert seen["bob_closes"].startswith("SessionEndedError: no open session")
        assert "may not use policy 'research'" in seen["bob_research"]
        # alice's handshake session ended (the client sent DELETE): her sessions closed with it.
        assert wait_until(lambda: anyio.run(listed, alice) == [], timeout=15)
        assert "mcp_session_closed_with_connection" in server.log()


def test_http_2026_sessions_outlive_the_client_and_figures_come_as_images(tmp_path: Path) -> None:
    """2026-era calls keep a session across clients until close_session; PNGs are images."""
    with running_server(tmp_path, tenants={"alice": {}}) as server:

        async def main() -> tuple[str, CallToolResult, CallToolResult]:
            async with http_session(server.url, server.token) as client:
                opened = data(await client.call_tool("open_session", {}))
                assert opened["closes_with_connection"] is False  # no connection to end
                sid = opened["session_id"]
                data(await session_call(client, sid, "x = 5"))
                one_shot = await client.call_tool("execute_code", {"code": PLOT, "files": FILES})
            async with http_session(server.url, server.token) as later:
                found = data(await session_call(later, sid, "print(x)"))["stdout"]
                in_session = await session_call(later, sid, PLOT)
                data(await later.call_tool("close_session", {"session_id": sid}))
                assert data(await later.call_tool("list_sessions", {}))["sessions"] == []
            return found, one_shot, in_session

        found, one_shot, in_session = anyio.run(main)
        assert found == "5\n"
        assert_figure(one_shot)
        assert_figure(in_session)
    assert not server.containers()


def test_http_large_files_are_omitted_so_the_result_still_arrives(tmp_path: Path) -> None:
    """A 3 MB output file loses its content (marked); small files and the result arrive."""
    code = (
        "import os\nos.makedirs('out', exist_ok=True)\n"
        "open('out/big.bin', 'wb').write(os.urandom(3_000_000))\n"
        "open('out/small.txt', 'w').write('kept')\n"
    )
    with running_server(tmp_path, tenants={"alice": {}}) as server:

        async def main() -> CallToolResult:
            async with http_session(server.url, server.token) as client:
                return await client.call_tool("execute_code", {"code": code})

        result = data(anyio.run(main))
    by_name = {item["name"]: item for item in result["files"]}
    assert by_name["big.bin"]["content"] is None and by_name["big.bin"]["size"] == 3_000_000
    assert "too large for one MCP message" in by_name["big.bin"]["content_omitted"]
    assert base64.b64decode(by_name["small.txt"]["content"]) == b"kept"
