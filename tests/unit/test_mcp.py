"""The MCP server's tools in process: the SDK's client against a MemoryAPI on a fake backend."""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, LoggingMessageNotificationParams
from pydantic import ValidationError

from athena.api import MemoryAPI
from athena.service.inflight import InFlight
from athena.service.mcp import arguments_message, build_mcp_server
from athena.service.mcp_tools import TEXT_LIMIT, TOOLS, TOOLS_BY_NAME, run_summary
from athena.service.tokens import local_tenant, make_tenant
from athena.service.wire import ServiceUnavailableError
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
