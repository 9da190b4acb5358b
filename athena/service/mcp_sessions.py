"""The MCP server's session tools: open, run in, close, list and replay sessions.

A session is :meth:`athena.api.MemoryAPI.open_session`'s: one sandbox whose interpreter keeps
state from call to call. The tools act for the request's tenant like the others (over HTTP a
session of another tenant is an unknown one) and open sessions only under policies the tenant
may use (:func:`~athena.service.gate.resolve_policy`; a replay checks the recorded policy the
same way). A call on a session that has ended is a tool error saying why it ended and what to
do (the server keeps the handles of the sessions it opened, which know the reason).

Sessions end by their idle timeout and lifetime whatever the client does. Besides:

- over stdio, the server closes every session when the client closes stdin (the process's API
  closes), in either protocol era;
- over Streamable HTTP, a session opened in a handshake-era MCP session (``Mcp-Session-Id``)
  is closed when that MCP session ends: the client sends DELETE, or the SDK drops it after its
  idle timeout (the SDK's per-connection ``exit_stack``). Requests of the 2026-07-28 era carry
  no connection, so their sessions end only by those limits or ``close_session``.

Each session's info says which applies (``closes_with_connection``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
import structlog
from mcp.server.context import ServerRequestContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from athena.service.gate import resolve_policy
from athena.service.mcp_events import forward_events
from athena.service.mcp_limits import STRUCTURED_BUDGET
from athena.service.mcp_results import as_text, encode_blobs, run_result, success
from athena.service.mcp_tools import (
    ExecuteInSessionArgs,
    NoArgs,
    OpenSessionArgs,
    ReplaySessionArgs,
    SessionIdArgs,
    decode_files,
    run_summary,
)
from orchestrator.errors import PolicyError, SessionEndedError

if TYPE_CHECKING:
    from athena.api import MemoryAPI
    from athena.service.mcp import RunLimits
    from athena.service.tokens import Tenant
    from athena.sessions import SandboxSession
    from memory_store.records import ExecutionRecord

log = structlog.get_logger(__name__)

Context = ServerRequestContext[Any, Any]
KEEP_ENDED = 1024
"""How many ended sessions the book remembers (so a late call learns why its session ended)."""
_CONNECTION_KEY = "athena_sessions"


class SessionBook:
    """The sessions one MCP server opened: their handles, by id (thread-safe).

    A handle outlives its session, so a call on an ended session raises
    ``SessionEndedError`` with the reason it ended (closed, idle, too old, a violation).
    Open sessions are bounded by the orchestrator's ``max_sessions``; of the ended ones the
    newest :data:`KEEP_ENDED` are kept.
    """

    def __init__(self, keep_ended: int = KEEP_ENDED) -> None:
        self._keep_ended = keep_ended
        self._lock = threading.Lock()
        self._handles: OrderedDict[str, tuple[str, SandboxSession]] = OrderedDict()

    def add(self, tenant: str, handle: SandboxSession) -> None:
        """Keep ``handle`` (a session ``tenant`` opened)."""
        with self._lock:
            self._handles[handle.session_id] = (tenant, handle)
            ended = [sid for sid, (_t, h) in self._handles.items() if h.closed]
            for session_id in ended[: max(len(ended) - self._keep_ended, 0)]:
                del self._handles[session_id]

    def find(self, api: MemoryAPI, tenant: str, session_id: str) -> SandboxSession:
        """The session ``tenant`` names: one this server opened, else an open one of the API.

        Raises:
            SessionEndedError: the tenant has no open session of this id (the message says why).
        """
        with self._lock:
            entry = self._handles.get(session_id)
        if entry is not None and entry[0] == tenant:
            return entry[1]
        return api.session(session_id)  # e.g. opened over the HTTP API


def ended_error(handle: SandboxSession) -> SessionEndedError:
    """The error of a call on ``handle`` once its session has ended."""
    reason = handle.info().get("ended_reason") or "it ended"
    return SessionEndedError(
        f"session {handle.session_id} has ended: {reason}; open a new session with "
        "open_session (or rebuild this one with replay_session)",
        session_id=handle.session_id,
        reason=reason,
    )


def bind_to_connection(ctx: Context, handle: SandboxSession) -> bool:
    """Close ``handle``'s session when the client's connection ends, if it has one.

    The low-level SDK context has no public way to the connection (SDK 2.3), so this reads the
    session's ``_connection``; without it (another SDK), sessions end by their limits only.

    Returns:
        True when the session will close with the connection.
    """
    connection = getattr(ctx.session, "_connection", None)
    if (
        connection is None
        or ctx.session.protocol_version in MODERN_PROTOCOL_VERSIONS
        or not connection.has_standalone_channel  # one request's connection (stateless)
    ):
        return False
    owned: list[SandboxSession] | None = connection.state.get(_CONNECTION_KEY)
    if owned is None:
        owned = connection.state[_CONNECTION_KEY] = []
        connection.exit_stack.push_async_callback(_close_owned, owned)
    owned.append(handle)
    return True


async def _close_owned(owned: Sequence[SandboxSession]) -> None:
    """Close the sessions a connection opened (it has ended), all at once.

    At once: the SDK gives a connection's cleanup 5 seconds in all.
    """
    async with anyio.create_task_group() as group:
        for handle in owned:
            if not handle.closed:
                log.info("mcp_session_closed_with_connection", session_id=handle.session_id)
                group.start_soon(anyio.to_thread.run_sync, handle.close)


# --- the tools ---------------------------------------------------------------------------------


class SessionTools:
    """The session tools of one MCP server, over its :class:`SessionBook`.

    Args:
        book: where the handles are kept (a fresh one when None).
        ends_with_process: the server serves one client and closes its API when the client
            goes (stdio), so every session closes with the connection.
    """

    def __init__(self, book: SessionBook | None = None, *, ends_with_process: bool = False) -> None:
        self.book = book or SessionBook()
        self.ends_with_process = ends_with_process

    def _keep(self, ctx: Context, tenant: Tenant, handle: SandboxSession) -> bool:
        """Book ``handle``; whether it closes when the client's connection ends."""
        self.book.add(tenant.name, handle)
        return bind_to_connection(ctx, handle) or self.ends_with_process

    async def open_session(
        self, ctx: Context, api: MemoryAPI, tenant: Tenant, args: OpenSessionArgs, limits: RunLimits
    ) -> types.CallToolResult:
        """Open a session under a policy the tenant may use; its info."""
        policy = resolve_policy(args.sandbox_policy, tenant)
        limits.refuse_if_draining()
        opener = partial(
            api.open_session,
            args.language,
            policy,
            args.idle_timeout_seconds,
            args.max_lifetime_seconds,
            image=args.image,
        )
        handle = await anyio.to_thread.run_sync(opener)
        bound = self._keep(ctx, tenant, handle)
        return success({**handle.info(), "closes_with_connection": bound}, as_text)

    async def execute_in_session(
        self,
        ctx: Context,
        api: MemoryAPI,
        tenant: Tenant,
        args: ExecuteInSessionArgs,
        limits: RunLimits,
    ) -> types.CallToolResult:
        """Run code in the session, its output streamed; the result with files and figures.

        Raises:
            SessionEndedError: the session has ended or is unknown (the message says why).
        """
        handle = self.book.find(api, tenant.name, args.session_id)
        if handle.closed:
            raise ended_error(handle)
        files = decode_files(args.files)
        async with limits.slot(tenant), forward_events(ctx) as on_event:
            call = partial(
                handle.execute_code,
                args.code,
                args.parameters,
                args.timeout_seconds,
                files,
                capture_figures=args.capture_figures,
                on_stdout=_listener("stdout", on_event),
                on_stderr=_listener("stderr", on_event),
            )
            result = await anyio.to_thread.run_sync(call)
        return await anyio.to_thread.run_sync(run_result, result, run_summary)

    async def close_session(
        self, _ctx: Context, api: MemoryAPI, tenant: Tenant, args: SessionIdArgs, _l: RunLimits
    ) -> types.CallToolResult:
        """Close the session; its final info.

        Raises:
            SessionEndedError: it had already ended (the message says why) or is unknown.
        """
        handle = self.book.find(api, tenant.name, args.session_id)
        if handle.closed:
            raise ended_error(handle)
        await anyio.to_thread.run_sync(handle.close)
        return success(handle.info(), as_text)

    async def list_sessions(
        self, _ctx: Context, api: MemoryAPI, _tenant: Tenant, _args: NoArgs, _l: RunLimits
    ) -> types.CallToolResult:
        """The tenant's open sessions."""
        return success({"sessions": api.sessions()}, as_text)

    async def replay_session(
        self,
        ctx: Context,
        api: MemoryAPI,
        tenant: Tenant,
        args: ReplaySessionArgs,
        limits: RunLimits,
    ) -> types.CallToolResult:
        """Rebuild a recorded session in a new one; its info and the calls' results.

        Raises:
            PolicyError: the recorded session's policy is not one the tenant may use.
        """
        calls = await anyio.to_thread.run_sync(api.store.session_calls, args.session_id)
        if calls:
            check_replay_policy(calls, tenant)
        limits.refuse_if_draining()
        replay = partial(
            api.replay_session,
            args.session_id,
            idle_timeout_seconds=args.idle_timeout_seconds,
            max_lifetime_seconds=args.max_lifetime_seconds,
            files=decode_files(args.files),
        )
        async with limits.slot(tenant):
            handle = await anyio.to_thread.run_sync(replay)
        share = STRUCTURED_BUDGET // max(len(handle.replayed), 1) // 2
        bound = self._keep(ctx, tenant, handle)
        data = {
            "session": {**handle.info(), "closes_with_connection": bound},
            "replayed": [encode_blobs(result, share) for result in handle.replayed],
        }
        return success(data, replay_summary)

    def handlers(self) -> dict[str, Callable[..., Any]]:
        """The tool handlers by tool name."""
        return {
            "open_session": self.open_session,
            "execute_in_session": self.execute_in_session,
            "close_session": self.close_session,
            "list_sessions": self.list_sessions,
            "replay_session": self.replay_session,
        }


def _listener(kind: str, on_event: Callable[[dict[str, Any]], None]) -> Callable[[str], None]:
    def listen(text: str) -> None:
        on_event({"type": kind, "text": text})

    return listen


def check_replay_policy(calls: Sequence[ExecutionRecord], tenant: Tenant) -> None:
    """Refuse to replay a session whose policy reaches more than any policy the tenant may use.

    A recorded session may come from the library (any policy at all), so its policy goes
    through the gate as an inline policy extending each of the tenant's policies in turn.

    Raises:
        PolicyError: no policy of the tenant's allows as much (naming the recorded policy).
    """
    first = calls[0]
    config = {k: v for k, v in (first.policy_config or {}).items() if k != "name"}
    if not config:
        resolve_policy(first.policy, tenant)
        return
    refusals = []
    for base in tenant.policies:
        try:
            resolve_policy({**config, "extends": base}, tenant)
            return
        except PolicyError as exc:
            refusals.append(str(exc))
    raise PolicyError(
        f"session {first.session_id} ran under policy {first.policy!r}, which reaches more "
        f"than tenant {tenant.name!r} may use ({'; '.join(refusals)[:300]}): open a new session "
        "with a policy of yours instead"
    )


def replay_summary(data: dict[str, Any]) -> str:
    """The text of replay_session's result: the new session and how each call went."""
    session = data.get("session") or {}
    lines = [
        f"replayed {len(data.get('replayed') or ())} call(s) into new session "
        f"{session.get('session_id')} ({session.get('language')}, policy "
        f"{session.get('policy')})"
    ]
    for index, result in enumerate(data.get("replayed") or (), 1):
        outcome = "succeeded" if result.get("success") else "failed"
        error = f": {result.get('error')}" if result.get("error") else ""
        lines.append(f"call {index} {outcome} (session {result.get('session_state')}){error}")
    return "\n".join(lines)
