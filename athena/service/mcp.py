"""The MCP server: the memory API's tools for agents, over stdio and over Streamable HTTP.

:func:`build_mcp_server` builds one server (the official ``mcp`` SDK's low-level
:class:`~mcp.server.lowlevel.Server`) around a ``resolve`` function that says, for each request,
which :class:`~athena.api.MemoryAPI` and :class:`~athena.service.tokens.Tenant` it acts for:

- over stdio (``athena-sandbox mcp``, :func:`serve_stdio`) the process's API and the local
  ``default`` tenant;
- over HTTP (:func:`build_http_mount`, mounted by ``athena-sandbox serve`` at ``/mcp``) the
  tenant the auth middleware put in the ASGI scope and ``api.for_tenant(tenant.name)``.

Every tool answers with structured content (the dict the API returns, bytes as base64) and a
text block; a run's PNG figures come as image blocks too (:mod:`.mcp_results`). A caller
mistake is a tool error (``isError``) whose text says what to change, never a crash. While
``execute_code`` or ``execute_in_session`` runs, each chunk of output reaches the client as a
progress notification (when the request carried a progress token) and as a log notification
(logger ``athena.run``); cancelling an ``execute_code`` request kills the run (a session call
runs to its timeout). The session tools are :mod:`.mcp_sessions`'.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import mcp_types as types
import structlog
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from athena.service import wire
from athena.service.asgi import ASGIApp, Receive, Scope, Send, tenant_of
from athena.service.gate import resolve_policy
from athena.service.mcp_events import forward_events, killed_on_cancel
from athena.service.mcp_results import as_text, failure, run_result, success
from athena.service.mcp_sessions import SessionTools
from athena.service.mcp_tools import (
    TOOLS,
    TOOLS_BY_NAME,
    ExecuteCodeArgs,
    ToolArgs,
    ToolSpec,
    decode_files,
    run_summary,
    tenant_policies,
)
from orchestrator.errors import RequestError, SandboxError

if TYPE_CHECKING:
    from athena.api import MemoryAPI
    from athena.service.inflight import InFlight
    from athena.service.tokens import Tenant

log = structlog.get_logger(__name__)

Context = ServerRequestContext[Any, Any]
Resolve = Callable[[Context], "tuple[MemoryAPI, Tenant]"]

LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*")
INSTRUCTIONS = (
    "athena-sandbox runs code in throwaway sandbox containers and keeps a memory of runs, "
    "knowledge, events, procedures and entities. Use execute_code to run code (list_policies "
    "says what each sandbox policy allows), recall to find what was learned before, and the "
    "remember_* tools to keep what you learn. To keep variables, imports and files between "
    "runs, open_session and then execute_in_session; close_session when done."
)


def _version() -> str:
    try:
        return version("athena-sandbox")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


class RunHost(Protocol):
    """Where the HTTP service keeps its runs (:class:`athena.service.state.Service`): the drain."""

    def refuse_if_draining(self) -> None:
        """Raise ``ServiceUnavailableError`` while the server drains."""

    def run(self, work: Coroutine[Any, Any, Any]) -> Awaitable[Any]:
        """Run ``work`` as a task the drain can cancel."""


def build_mcp_server(
    resolve: Resolve,
    *,
    inflight: InFlight | None = None,
    host: Callable[[], RunHost | None] = lambda: None,
    sessions: SessionTools | None = None,
) -> Server[Any]:
    """Return an MCP server offering the memory API's tools.

    Args:
        resolve: for each request, the API and the tenant it acts for. It may raise a
            ``SandboxError``: the call then fails as a tool error with its message.
        inflight: counts each tenant's runs against its ``max_in_flight`` (None: no limit
            beyond the orchestrator's queue).
        host: returns the service whose drain refuses new runs and kills late ones (None:
            runs end with their request or the process).
        sessions: the session tools (a fresh :class:`SessionTools` when None).
    """
    handlers: dict[str, Handler] = {"execute_code": _execute_tool}
    handlers.update((sessions or SessionTools()).handlers())

    async def list_tools(ctx: Context, _params: types.PaginatedRequestParams | None) -> Any:
        api, tenant = resolve(ctx)
        policies = await anyio.to_thread.run_sync(tenant_policies, api, tenant)
        return types.ListToolsResult(tools=[_tool(spec, policies) for spec in TOOLS])

    async def call_tool(ctx: Context, params: types.CallToolRequestParams) -> Any:
        spec = TOOLS_BY_NAME.get(params.name)
        if spec is None:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"unknown tool {params.name!r}; the tools are " + ", ".join(TOOLS_BY_NAME),
            )
        limits = RunLimits(inflight, host())
        return await _call(ctx, spec, params.arguments or {}, resolve, limits, handlers)

    return Server(
        "athena-sandbox",
        version=_version(),
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        get_tool_input_schema=_no_header_arguments,
    )


def _no_header_arguments(_name: str) -> None:
    """No tool takes arguments in HTTP headers: spare each 2026 HTTP call a tools/list."""


@dataclass(frozen=True)
class RunLimits:
    """What bounds one call's runs: the tenant's in-flight count and the server's drain."""

    inflight: InFlight | None
    host: RunHost | None

    def refuse_if_draining(self) -> None:
        """Raise ``ServiceUnavailableError`` while the server drains."""
        if self.host is not None:
            self.host.refuse_if_draining()

    @asynccontextmanager
    async def slot(self, tenant: Tenant) -> AsyncIterator[None]:
        """Hold one of the tenant's in-flight runs (refused while the server drains).

        Raises:
            ServiceUnavailableError: the server drains.
            TooManyRunsError: the tenant has ``max_in_flight`` runs going.
        """
        self.refuse_if_draining()
        if self.inflight is not None:
            self.inflight.acquire(tenant.name, tenant.max_in_flight)
        try:
            yield
        finally:
            if self.inflight is not None:
                self.inflight.release(tenant.name)


Handler = Callable[
    [Context, "MemoryAPI", "Tenant", Any, RunLimits], Awaitable[types.CallToolResult]
]


def _tool(spec: ToolSpec, policies: Sequence[dict[str, Any]]) -> types.Tool:
    annotations = types.ToolAnnotations(
        read_only_hint=spec.read_only,
        destructive_hint=spec.destructive,
        open_world_hint=False,
    )
    return types.Tool(
        name=spec.name,
        description=spec.description,
        input_schema=spec.input_schema(policies),
        annotations=annotations,
    )


async def _call(
    ctx: Context,
    spec: ToolSpec,
    arguments: dict[str, Any],
    resolve: Resolve,
    limits: RunLimits,
    handlers: dict[str, Handler],
) -> types.CallToolResult:
    try:
        api, tenant = resolve(ctx)
        args = spec.arguments.model_validate(arguments)
        if spec.call is None:
            return await handlers[spec.name](ctx, api, tenant, args, limits)
        data = await anyio.to_thread.run_sync(spec.call, api, tenant, args)
        return await anyio.to_thread.run_sync(success, data, as_text)
    except ValidationError as exc:
        return failure(RequestError(arguments_message(spec, exc)))
    except SandboxError as exc:
        return failure(exc)
    except Exception as exc:  # a bug of ours: the client gets a tool error, the log the rest
        log.exception("mcp_tool_failed", tool=spec.name)
        message = f"the server failed on this call ({type(exc).__name__}); its log says why"
        return failure(wire.ServiceError(message))


def arguments_message(spec: ToolSpec, exc: ValidationError) -> str:
    """Say which arguments of a call are wrong and how, naming the ones the tool accepts."""
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown argument {where!r}")
        else:
            problems.append(f"{where}: {error['msg']}")
    accepted = ", ".join(_signature(spec.arguments)) or "none"
    return f"{spec.name}: {'; '.join(problems)} (arguments: {accepted})"


def _signature(model: type[ToolArgs]) -> list[str]:
    return [
        name if field.is_required() else f"{name}={json.dumps(field.default)}"
        for name, field in model.model_fields.items()
    ]


async def _execute_tool(
    ctx: Context, api: MemoryAPI, tenant: Tenant, args: ExecuteCodeArgs, limits: RunLimits
) -> types.CallToolResult:
    """Run code in a fresh sandbox, its output streamed; the result with files and figures."""
    policy = resolve_policy(args.sandbox_policy, tenant)
    files = decode_files(args.files)
    async with limits.slot(tenant), forward_events(ctx) as on_event:
        run = api.execute_code_async(
            args.code,
            args.language,
            args.parameters,
            args.timeout_seconds,
            policy,
            track_resources=args.track_resources,
            record=args.record,
            on_event=on_event,
            files=files,
            capture_figures=args.capture_figures,
            image=args.image,
        )
        work = run if limits.host is None else limits.host.run(run)
        result: dict[str, Any] = await killed_on_cancel(work)
    return await anyio.to_thread.run_sync(run_result, result, run_summary)


# --- stdio -----------------------------------------------------------------------------------


async def serve_stdio(open_api: Callable[[], MemoryAPI], tenant: Tenant) -> None:
    """Serve MCP over this process's stdin and stdout until the client closes stdin.

    The SDK's transport takes file descriptors 0 and 1 for itself and points fd 1 at stderr
    while it serves, so nothing but protocol messages reaches stdout (prints of libraries and
    child processes included). The API is opened after that, and closed (its runs killed and
    recorded) when the client goes. SIGTERM or SIGINT does the same, then ends the process at
    once: the transport's reader blocks on stdin in a thread nothing can interrupt.

    Args:
        open_api: opens the MemoryAPI (called once, in a worker thread).
        tenant: the tenant every call acts for (the local ``default`` tenant).
    """
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read_stream, write_stream):
        api = await anyio.to_thread.run_sync(open_api)
        stopped: list[str] = []
        # Held open until the API is closed: a signal during the close waits for it to finish.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            try:
                sessions = SessionTools(ends_with_process=True)  # closed with the API
                server = build_mcp_server(lambda _ctx: (api, tenant), sessions=sessions)
                async with anyio.create_task_group() as group:
                    group.start_soon(_cancel_on_signal, signals, group.cancel_scope, stopped)
                    options = server.create_initialization_options()
                    await server.run(read_stream, write_stream, options)
                    group.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(api.close)
        if stopped:
            log.info("mcp_stopped", signal=stopped[0])
            sys.stderr.flush()
            os._exit(0)


async def _cancel_on_signal(
    signals: AsyncIterator[signal.Signals], scope: anyio.CancelScope, stopped: list[str]
) -> None:
    async for received in signals:
        log.info("mcp_stopping", signal=received.name)
        stopped.append(received.name)
        scope.cancel()
        return


# --- Streamable HTTP -------------------------------------------------------------------------


class McpHttpMount:
    """What the HTTP app needs to serve MCP: an ASGI endpoint and the lifespan it runs in.

    Attributes:
        app: the Streamable HTTP endpoint; send ``path`` and ``path/...`` to it as they came
            (every method). It expects the auth middleware's tenant in
            ``scope["state"]["athena_tenant"]``.
        lifespan: enter it around the app's life (it runs the MCP session manager).
        path: where the endpoint is served.
    """

    def __init__(
        self,
        app: ASGIApp,
        lifespan: Callable[[], AbstractAsyncContextManager[None]],
        path: str = "/mcp",
    ) -> None:
        self.app = app
        self.lifespan = lifespan
        self.path = path
        self.host: RunHost | None = None

    def attach(self, host: RunHost) -> None:
        """Let ``host``'s drain refuse new MCP runs and cancel late ones, as the HTTP API's."""
        self.host = host


def build_http_mount(
    api: MemoryAPI,
    *,
    inflight: InFlight | None = None,
    allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS,
    path: str = "/mcp",
) -> McpHttpMount:
    """Return the MCP server over Streamable HTTP, for the HTTP app to route at ``path``.

    Each request acts for the tenant in its scope, through ``api.for_tenant``. A session
    belongs to the tenant that opened it: another tenant's request naming it gets 404.

    Args:
        api: the server's MemoryAPI.
        inflight: the HTTP API's in-flight counter, so MCP runs count against the same limit.
        allowed_hosts: Host header values accepted (DNS rebinding protection; ``host:*`` for
            any port). None: any Host (for a server on a public address, behind tokens).
        path: where the endpoint is routed.
    """
    views: dict[str, MemoryAPI] = {}

    def resolve(ctx: Context) -> tuple[MemoryAPI, Tenant]:
        tenant = tenant_of(ctx.request.scope)  # type: ignore[union-attr]
        view = views.get(tenant.name)
        if view is None:
            view = views.setdefault(tenant.name, api.for_tenant(tenant.name))
        return view, tenant

    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=allowed_hosts is not None,
        allowed_hosts=list(allowed_hosts or ()),
        allowed_origins=[f"http://{host}" for host in allowed_hosts or ()],
    )
    mounted: list[McpHttpMount] = []  # the server asks the mount for the host it is attached to
    server = build_mcp_server(resolve, inflight=inflight, host=lambda: mounted[0].host)
    manager = StreamableHTTPSessionManager(app=server, security_settings=security)
    mounted.append(McpHttpMount(_TenantSessions(StreamableHTTPASGIApp(manager)), manager.run, path))
    return mounted[0]


class _TenantSessions:
    """Binds each MCP session to the tenant that opened it (the SDK's session-owner check)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "http":
            client = f"tenant:{tenant_of(scope).name}"
            user = AuthenticatedUser(AccessToken(token=client, client_id=client, scopes=[]))
            scope = {**scope, "user": user}
        await self._app(scope, receive, send)
