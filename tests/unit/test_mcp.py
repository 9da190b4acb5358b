"""The MCP server's tools in process: the SDK's client against a MemoryAPI on a fake backend."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Awaitable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from jsonschema import Draft202012Validator
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, LoggingMessageNotificationParams
from pydantic import ValidationError

from athena.api import MemoryAPI
from athena.service.inflight import InFlight
from athena.service.mcp import arguments_message, build_mcp_server
from athena.service.mcp_limits import json_size
from athena.service.mcp_results import encode_blobs
from athena.service.mcp_sessions import check_replay_policy
from athena.service.mcp_tools import (
    TEXT_LIMIT,
    TOOLS,
    TOOLS_BY_NAME,
    Base64File,
    decode_files,
    run_summary,
)
from athena.service.tokens import local_tenant, make_tenant
from athena.service.wire import ServiceUnavailableError
from orchestrator.errors import PolicyError
from orchestrator.models import OutputFile
from orchestrator.testing import FakeBackend, FakeRun


@pytest.fixture
def api(tmp_path: Path) -> Iterator[MemoryAPI]:
    """A MemoryAPI whose runs print ``4`` on a fake backend."""
    with MemoryAPI.create(tmp_path / "m.db", backends=[FakeBackend(FakeRun(stdout="4\n"))]) as made:
        yield made


def test_every_argument_is_described() -> None:
    """Each tool's schema is a closed object whose every property has a description."""
    policies = [{"name": "strict", "summary": "no network"}]
    for tool in TOOLS:
        schema = tool.input_schema(policies)
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert all(prop.get("description") for prop in schema["properties"].values())


def test_sandbox_policy_names_what_each_policy_allows() -> None:
    """sandbox_policy's description lists the tenant's policies with their summaries."""
    policies = [
        {"name": "strict", "summary": "no network, 256 MB"},
        {"name": "research", "summary": "allowlisted network"},
    ]
    schema = TOOLS_BY_NAME["execute_code"].input_schema(policies)
    prop = schema["properties"]["sandbox_policy"]
    assert "- strict: no network, 256 MB\n- research: allowlisted network" in prop["description"]
    assert prop["anyOf"][0] == {"type": "string", "enum": ["strict", "research"]}


def test_run_summary_cuts_long_output_and_says_what_went_wrong() -> None:
    """The text block keeps the head and tail of long output and lists the problems."""
    result = {
        "success": False,
        "exit_code": 137,
        "stdout": "a" * TEXT_LIMIT + "b" * 10,
        "stderr": "boom\n",
        "violations": ["timeout: killed after 2 s"],
        "issues": [{"message": "forbidden import 'socket'"}],
        "error": "Execution timed out",
        "error_type": "RunTimeout",
        "output": None,
    }
    text = run_summary(result)
    assert text.startswith("failed: exit code 137")
    assert "[... 10 characters cut here" in text and text.count("a") < TEXT_LIMIT
    assert "--- stderr ---\nboom" in text
    assert "violation: timeout: killed after 2 s" in text
    assert "issue: forbidden import 'socket'" in text
    assert "error (RunTimeout): Execution timed out" in text


def test_arguments_message_names_the_wrong_and_the_accepted() -> None:
    """A bad call's message names each wrong argument and lists the tool's arguments."""
    spec = TOOLS_BY_NAME["recall"]
    with pytest.raises(ValidationError) as caught:
        spec.arguments.model_validate({"limit": "5", "colour": "red"})
    message = arguments_message(spec, caught.value)
    assert "query: Field required" in message
    assert "limit: Input should be a valid integer" in message
    assert "unknown argument 'colour'" in message
    assert "(arguments: query, limit=5, context=null, kinds=null)" in message


def call(api: MemoryAPI, mode: str, *calls: tuple[str, dict[str, Any]], **options: Any) -> Any:
    """Make ``calls`` through an in-process SDK client; return their results."""
    server = build_mcp_server(lambda _ctx: (api, local_tenant()))

    async def main() -> list[CallToolResult]:
        async with Client(server, mode=mode, **options) as client:  # type: ignore[arg-type]
            return [await client.call_tool(name, arguments) for name, arguments in calls]

    return anyio.run(main)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_execute_code_gives_the_result_dict_and_a_text_block(api: MemoryAPI, mode: str) -> None:
    """execute_code's structured content is the result dict; its text holds stdout."""
    (result,) = call(api, mode, ("execute_code", {"code": "print(2 + 2)"}))
    assert not result.is_error
    assert result.structured_content["stdout"] == "4\n"
    assert result.structured_content["success"] is True
    assert result.content[0].text.startswith("succeeded: exit code 0")
    assert "--- stdout ---\n4" in result.content[0].text


def test_mistakes_are_tool_errors_with_the_fix(api: MemoryAPI) -> None:
    """Wrong arguments, policies and ids come back as isError results saying what to change."""
    results = call(
        api,
        "auto",
        ("execute_code", {"code": "1", "sandbox_policy": "development"}),
        ("execute_code", {"code": "1", "sandbox_policy": "/tmp/p.yaml"}),
        ("execute_code", {"code": "1", "timeout_seconds": -1}),
        ("generate_procedure_code", {"procedure_id": 5}),
    )
    texts = [r.content[0].text for r in results]
    assert all(r.is_error for r in results)
    assert texts[0].startswith("PolicyError") and "strict" in texts[0]
    assert "path" in texts[1]
    assert texts[2].startswith("RequestError") and "timeout" in texts[2]
    assert texts[3].startswith("RecordNotFoundError") and "procedure_id 5" in texts[3]
    assert results[0].structured_content["error"]["type"] == "PolicyError"


def test_unknown_tool_is_a_protocol_error(api: MemoryAPI) -> None:
    """Calling a tool that does not exist is an MCP error naming the tools."""
    server = build_mcp_server(lambda _ctx: (api, local_tenant()))

    async def main() -> None:
        async with Client(server, mode="legacy") as client:
            with pytest.raises(MCPError, match="the tools are execute_code"):
                await client.call_tool("format_disk", {})

    anyio.run(main)


def test_list_policies_is_the_tenants(api: MemoryAPI) -> None:
    """list_policies gives only the policies the tenant may use, in its order."""
    tenant = make_tenant("team", ["research"])
    server = build_mcp_server(lambda _ctx: (api, tenant))

    async def main() -> tuple[list[str], str]:
        async with Client(server) as client:
            listed = await client.call_tool("list_policies", {})
            tools = {t.name: t for t in (await client.list_tools()).tools}
        help_text = tools["execute_code"].input_schema["properties"]["sandbox_policy"]
        return [p["name"] for p in listed.structured_content["policies"]], help_text["description"]

    names, help_text = anyio.run(main)
    assert names == ["research"]
    assert "- research: " in help_text and "- strict: " not in help_text


def test_output_reaches_the_client_as_it_runs(api: MemoryAPI) -> None:
    """stdout chunks arrive as progress messages and athena.run log notifications."""
    progress: list[str] = []
    logs: list[LoggingMessageNotificationParams] = []

    async def on_progress(_value: float, _total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        logs.append(params)

    server = build_mcp_server(lambda _ctx: (api, local_tenant()))

    async def main() -> None:
        async with Client(server, mode="legacy", logging_callback=on_log) as client:
            await client.call_tool("execute_code", {"code": "x"}, progress_callback=on_progress)

    anyio.run(main)
    assert progress == ["[stdout] 4\n"]
    output = [p for p in logs if p.logger == "athena.run" and p.data["type"] == "stdout"]
    assert [p.data["text"] for p in output] == ["4\n"]


class Draining:
    """A run host that drains: it refuses every new run."""

    def refuse_if_draining(self) -> None:
        raise ServiceUnavailableError("the server is shutting down and takes no new runs")

    def run(self, work: Coroutine[Any, Any, Any]) -> Awaitable[Any]:
        raise AssertionError("a draining host runs nothing")


def test_runs_respect_the_drain_and_the_in_flight_limit(api: MemoryAPI) -> None:
    """A draining host refuses runs; a tenant at its in-flight limit gets TooManyRuns."""
    tenant = make_tenant("team", max_in_flight=1)
    in_flight = InFlight()
    in_flight.acquire("team", 1)  # the tenant's one slot is taken
    limited = build_mcp_server(lambda _ctx: (api, tenant), inflight=in_flight)
    draining = build_mcp_server(lambda _ctx: (api, tenant), host=Draining)

    async def main() -> list[CallToolResult]:
        results = []
        for server in (limited, draining):
            async with Client(server) as client:
                results.append(await client.call_tool("execute_code", {"code": "1"}))
        return results

    too_many, refused = anyio.run(main)
    assert too_many.content[0].text.startswith("TooManyRuns: tenant 'team'")
    assert refused.content[0].text.startswith("Draining: the server is shutting down")
    assert in_flight.counts() == {"team": 1}  # the refused run took no slot


# --- files in and out, figures, sessions (issue #12) ------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
"""Bytes that pass for a PNG (the server never decodes them)."""


class FilesBackend(FakeBackend):
    """A fake backend whose runs return a CSV file and a PNG figure."""

    def run(self, request: Any, spec: Any, context: Any) -> Any:
        """Run as the fake does, then return ``out/result.csv`` and ``figure-1.png``."""
        outcome = super().run(request, spec, context)
        csv = OutputFile(name="result.csv", size=4, sha256="0" * 64, mime_type="text/csv",
                         content=b"a,b\n")  # fmt: skip
        figure = OutputFile(name="figure-1.png", size=len(PNG), sha256="1" * 64,
                            mime_type="image/png", content=PNG)  # fmt: skip
        return dataclasses.replace(outcome, files=(csv,), artifacts=(figure,))


def test_execute_code_takes_files_and_returns_files_and_figures(tmp_path: Path) -> None:
    """Text and base64 files reach the run; files and PNGs come back as base64 and images."""
    backend = FilesBackend(FakeRun(stdout="done\n"))
    with MemoryAPI.create(tmp_path / "m.db", backends=[backend]) as api:
        files = {"data.txt": "héllo", "raw.bin": {"base64": base64.b64encode(b"\x00\xff").decode()}}
        (result,) = call(api, "auto", ("execute_code", {"code": "1", "files": files}))
    sent = {f.name: f.data for f in backend.requests[0].files}
    assert sent == {"data.txt": "héllo".encode(), "raw.bin": b"\x00\xff"}
    data = result.structured_content
    assert base64.b64decode(data["files"][0]["content"]) == b"a,b\n"
    assert base64.b64decode(data["artifacts"][0]["content"]) == PNG
    text, image = result.content
    assert image.type == "image" and image.mime_type == "image/png"
    assert base64.b64decode(image.data) == PNG
    assert "file out/result.csv: 4 bytes, text/csv" in text.text
    assert "figure figure-1.png:" in text.text and "(shown as an image)" in text.text
    assert data["artifacts"][0]["content"] not in text.text  # no base64 in the text block


def test_bad_base64_is_a_tool_error_naming_the_file(api: MemoryAPI) -> None:
    """A file whose base64 does not decode is refused, naming the file; nothing runs."""
    files = {"x.bin": {"base64": "not base64!"}}
    (result,) = call(api, "auto", ("execute_code", {"code": "1", "files": files}))
    assert result.is_error
    assert result.content[0].text.startswith('RequestError: files["x.bin"].base64')


def test_decode_files_keeps_text_and_decodes_bytes() -> None:
    """Text stays text (the library encodes it as UTF-8); base64 becomes bytes."""
    files = {"a.txt": "x", "b.bin": Base64File(base64="AAE=")}
    assert decode_files(files) == {"a.txt": "x", "b.bin": b"\x00\x01"}
    assert decode_files(None) is None


def test_blob_contents_that_do_not_fit_are_omitted_largest_first() -> None:
    """Over the budget the largest contents go, marked; the rest stays whole and decodable."""
    small = {"name": "s", "size": 10, "sha256": "", "mime_type": "x", "content": b"s" * 10}
    large = {"name": "l", "size": 90_000, "sha256": "", "mime_type": "x", "content": b"l" * 90_000}
    result = {"stdout": "y" * 50_000, "files": [large, small], "artifacts": []}
    data = encode_blobs(result, budget=64 * 1024)
    assert json_size(data) <= 64 * 1024
    kept_large, kept_small = data["files"]
    assert kept_large["content"] is None and "too large" in kept_large["content_omitted"]
    assert base64.b64decode(kept_small["content"]) == b"s" * 10
    assert data["files"][0]["size"] == 90_000  # the metadata stays


def test_every_input_schema_is_valid_json_schema() -> None:
    """Each tool's input schema passes the JSON Schema meta-schema and takes its defaults."""
    policies = [{"name": "strict", "summary": "no network"}]
    for tool in TOOLS:
        schema = tool.input_schema(policies)
        Draft202012Validator.check_schema(schema)
        assert "$ref" not in json.dumps(schema)  # inlined for clients that do not follow refs
        example = {name: "x" for name in schema.get("required", [])}
        if tool.name in {"generate_procedure_code"}:
            example = {"procedure_id": 1}
        if tool.name == "remember_procedure":
            example["steps"] = ["a"]
        Draft202012Validator(schema).validate(example)
    files = TOOLS_BY_NAME["execute_in_session"].input_schema(policies)
    checker = Draft202012Validator(files)
    checker.validate({"session_id": "s", "code": "1", "files": {"a": "t", "b": {"base64": "AA=="}}})
    assert not checker.is_valid({"session_id": "s", "code": "1", "files": {"b": {"hex": "00"}}})


def test_session_calls_on_unknown_sessions_say_what_to_do(api: MemoryAPI) -> None:
    """Without Docker no session opens; calls on an unknown one are errors saying what to do."""
    results = call(
        api,
        "legacy",
        ("open_session", {"language": "python"}),
        ("open_session", {"sandbox_policy": "development"}),
        ("execute_in_session", {"session_id": "nope", "code": "1"}),
        ("close_session", {"session_id": "nope"}),
        ("list_sessions", {}),
        ("replay_session", {"session_id": "nope"}),
    )
    opened, gated, run, closed, listed, replayed = results
    assert "docker mode only" in opened.content[0].text  # the fake backend has no sessions
    assert gated.content[0].text.startswith("PolicyError") and "strict" in gated.content[0].text
    for refused in (run, closed):
        assert refused.is_error
        assert refused.content[0].text.startswith("SessionEndedError: no open session 'nope'")
        assert "open a new one" in refused.content[0].text
    assert listed.structured_content == {"sessions": []}
    assert replayed.is_error and "no recorded calls of session 'nope'" in replayed.content[0].text


def test_replay_refuses_a_policy_the_tenant_may_not_use(api: MemoryAPI) -> None:
    """A recorded session's policy goes through the gate: development or a widened strict no."""
    for policy in ("strict", "development", {"extends": "strict", "network": {"mode": "open"}}):
        api.execute_code("1", sandbox_policy=policy)
    widened, development, strict = api.store.list_executions(limit=3)
    tenant = local_tenant()
    check_replay_policy([strict], tenant)  # strict is the tenant's
    for record in (development, widened):
        with pytest.raises(PolicyError, match="reaches more than tenant 'default' may use"):
            check_replay_policy([record], tenant)
