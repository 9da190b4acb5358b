"""A run's events as MCP notifications, and a run that dies with its request.

While ``execute_code`` runs, :func:`forward_events` hands the run an ``on_event`` listener (it is
called from the run's worker thread) and sends each event to the client on the request's own
channel: output chunks and violations as progress notifications (when the request carried a
progress token; the message is ``[stdout] <text>``, ``[stderr] <text>`` or ``[violation]
<text>``) and every event as a log notification of logger ``athena.run`` whose data is the event
dict (``begin`` at level debug, output at info, violations at warning; on 2026-07-28
connections only when the request opted in to that level). Chunks of one stream that queue up
while a notification is being sent go out merged. :func:`killed_on_cancel` awaits a run so that
cancelling the request kills the run and waits until it is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import structlog
from mcp.server.connection import allowed_log_levels
from mcp.server.context import ServerRequestContext

log = structlog.get_logger(__name__)

Context = ServerRequestContext[Any, Any]

RUN_LOGGER = "athena.run"
"""The logger name of the log notifications that carry a run's events."""
MERGE_LIMIT = 64 * 1024
"""The most characters of output one notification carries when queued chunks are merged."""
CANCEL_WAIT_SECONDS = 30.0
"""How long a cancelled call waits for its run to be killed and recorded."""
LOG_LEVELS: dict[str, types.LoggingLevel] = {
    "begin": "debug",
    "stdout": "info",
    "stderr": "info",
    "violation": "warning",
}


async def killed_on_cancel(run: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Await a run; when the request is cancelled, kill the run and wait until it is recorded."""
    task: asyncio.Task[dict[str, Any]] = asyncio.ensure_future(run)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()  # execute_code_async kills the run when its task is cancelled
        with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_WAIT_SECONDS):
            await asyncio.wait([task])
        raise


@asynccontextmanager
async def forward_events(ctx: Context) -> AsyncIterator[Callable[[dict[str, Any]], None]]:
    """Yield an ``on_event`` listener that forwards a run's events to the client as they come.

    The listener is called from the run's worker thread; a task on the event loop sends the
    notifications, merging chunks of the same stream that queued up meanwhile.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") in LOG_LEVELS:
            loop.call_soon_threadsafe(queue.put_nowait, dict(event))

    sender = asyncio.ensure_future(_send_events(ctx, queue))
    try:
        yield on_event
    except BaseException:
        sender.cancel()
        raise
    queue.put_nowait(None)
    await sender  # the last chunks go out before the result


async def _send_events(ctx: Context, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
    notifier = _Notifier(ctx)
    while (event := await queue.get()) is not None:
        while not queue.empty():
            following = queue.get_nowait()
            if following is None or not _merge(event, following):
                await notifier.send(event)
                if following is None:
                    return
                event = following
        await notifier.send(event)


def _merge(event: dict[str, Any], following: dict[str, Any]) -> bool:
    """Append ``following``'s text to ``event`` when both are chunks of the same stream.

    Not beyond :data:`MERGE_LIMIT` characters: one notification must stay far below the 1 MiB
    a Server-Sent Event may take in the SDK's client (JSON may write a character as 6 bytes).
    """
    if event["type"] != following["type"] or event["type"] not in {"stdout", "stderr"}:
        return False
    if len(event["text"]) + len(following["text"]) > MERGE_LIMIT:
        return False
    event["text"] += following["text"]
    event["elapsed_ms"] = following.get("elapsed_ms", event.get("elapsed_ms"))
    return True


class _Notifier:
    """Sends one run's events as progress and log notifications of the request that runs it."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._levels = allowed_log_levels(ctx.session.protocol_version, ctx.meta)
        self._count = 0
        self._broken = False

    async def send(self, event: dict[str, Any]) -> None:
        if self._broken:
            return
        try:
            for part in _pieces(event):
                await self._send(part)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._broken = True  # the client is gone; the run goes on until it is cancelled
            log.info("mcp_notify_failed", error=str(exc))

    async def _send(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind != "begin":
            self._count += 1
            await self._ctx.session.report_progress(self._count, None, _progress_text(event))
        level = LOG_LEVELS[kind]
        if level in self._levels:
            notification = types.LoggingMessageNotification(
                params=types.LoggingMessageNotificationParams(
                    level=level, data=event, logger=RUN_LOGGER
                )
            )
            await self._ctx.session.send_notification(notification, self._ctx.request_id)


def _pieces(event: dict[str, Any]) -> list[dict[str, Any]]:
    """An output event cut in chunks of at most :data:`MERGE_LIMIT` characters."""
    text = event.get("text")
    if not isinstance(text, str) or len(text) <= MERGE_LIMIT:
        return [event]
    return [
        {**event, "text": text[start : start + MERGE_LIMIT]}
        for start in range(0, len(text), MERGE_LIMIT)
    ]


def _progress_text(event: dict[str, Any]) -> str:
    if event["type"] == "violation":
        return f"[violation] {event.get('violation', '')}"
    return f"[{event['type']}] {event.get('text', '')}"
