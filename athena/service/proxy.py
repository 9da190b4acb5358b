"""Sends a session's requests to the node that holds it: proxied, never redirected.

On a node of a cluster (``serve --node-id``) a session id begins with the id of the node whose
sandbox holds the session (:func:`orchestrator.sessions.session_node`). A request for
``/v1/sessions/{id}`` or below that reaches another node (a load balancer picks any) is sent
on by :class:`SessionProxy` to the holder's URL from the node directory
(:class:`~athena.service.nodes.NodeDirectory`), with the caller's headers (its bearer token
included: the holder checks it again), and the answer streams back as it comes (a session's
event stream too). A redirect would not do: clients drop credentials on a cross-origin
redirect, and the nodes' addresses need not be reachable by clients.

The caller always gets an answer, never a hang:

- the holder is not in the directory, or stopped saying it is alive: 410 ``SessionEndedError``
  (its sandbox and state went with it; a replay, which any node serves, rebuilds the state);
- the holder does not take the connection: the same 410;
- the holder goes silent in the middle of an answer and then stops saying it is alive: the
  connection is cut, as the holder's own death would cut it.

A request that another node already sent on (it carries :data:`VIA_HEADER`) is never sent on
again: a node that does not hold the session answers 410 itself, so nodes that disagree about
the directory cannot bounce a request between them. Replays are not sent on: the records they
read are in the shared store, and the holder may be gone.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import structlog

from athena.service.asgi import ASGIApp, Receive, Scope, Send, read_body, send_json
from athena.service.http_runs import disconnected
from athena.service.wire import envelope
from orchestrator.sessions import session_node

if TYPE_CHECKING:
    from athena.service.nodes import NodeDirectory

log = structlog.get_logger(__name__)

VIA_HEADER = "x-athena-via"
"""Set on a request one node sends on to another: the sender's node id."""
_PREFIX = "/v1/sessions/"
_PROXIED_ROUTES = frozenset({"", "execute", "execute/stream"})  # replay: any node (the store)
_CONNECT_SECONDS = 3.0
_SILENCE_SECONDS = 5.0  # how long the holder may send nothing before we ask if it is alive
_LIST_SECONDS = 5.0
_LIMITS = httpx.Limits(max_connections=4096, max_keepalive_connections=64)
T = TypeVar("T")
_HOP_BY_HOP = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
        b"proxy-authorization",
        b"proxy-connection",
    }
)
# What the holder answers that this node's server writes itself (it would be there twice).
_RELAYED_NOT = _HOP_BY_HOP | {b"date", b"server"}


def was_sent_on(scope: Scope) -> bool:
    """Whether another node sent this request on (it carries :data:`VIA_HEADER`)."""
    return any(key == VIA_HEADER.encode() for key, _ in scope.get("headers", ()))


def foreign_holder(scope: Scope, node_id: str) -> tuple[str, str] | None:
    """(session id, holder) when ``scope`` is a request for another node's session, else None."""
    path: str = scope.get("path", "")
    if scope["type"] != "http" or not path.startswith(_PREFIX):
        return None
    session_id, _, route = path[len(_PREFIX) :].partition("/")
    holder = session_node(session_id)
    if holder is None or holder == node_id or route not in _PROXIED_ROUTES:
        return None  # not a well-formed id of another node's session: answered here (410)
    raw: bytes = scope.get("raw_path") or path.encode()
    if any(part in {b".", b".."} for part in raw.split(b"?", 1)[0].split(b"/")):
        return None  # dot segments could name another route on the holder
    return session_id, holder


def gone_message(session_id: str, holder: str, why: str) -> str:
    """The 410 message of a session whose node cannot be reached."""
    return (
        f"session {session_id} has ended: node {holder!r}, which held it, {why}; its sandbox "
        "and state are lost. Open a new session, or replay this one into a new session "
        f"(POST /v1/sessions/{session_id}/replay)"
    )


class Cluster:
    """This node's place in a cluster: its id, the node directory, a client for the others.

    Args:
        node_id: this node's id.
        directory: where the other nodes' URLs are.
    """

    def __init__(self, node_id: str, directory: NodeDirectory) -> None:
        self.node_id = node_id
        self.directory = directory
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """The client of requests to other nodes (made at first use, in the app's loop)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(None, connect=_CONNECT_SECONDS, pool=_CONNECT_SECONDS),
                limits=_LIMITS,
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connections to the other nodes."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def sessions_elsewhere(self, headers: list[tuple[bytes, bytes]]) -> list[Any]:
        """The caller's open sessions on the other live nodes (``GET /v1/sessions`` of each).

        A node that does not answer in a few seconds is left out: its sessions cannot be
        used either.
        """
        nodes = await asyncio.to_thread(self.directory.live_nodes)
        sent = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
        sent.append((VIA_HEADER.encode(), self.node_id.encode()))

        async def ask(url: str) -> list[Any]:
            try:
                answer = await self.client.get(
                    url.rstrip("/") + "/v1/sessions", headers=sent, timeout=_LIST_SECONDS
                )
                listed = answer.json().get("sessions") if answer.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                log.warning("a node did not list its sessions", url=url, error=str(exc))
                return []
            return listed if isinstance(listed, list) else []

        others = [node.url for node in nodes if node.node_id != self.node_id]
        found = await asyncio.gather(*(ask(url) for url in others))
        return [session for listed in found for session in listed]


class _Left(Exception):
    """The caller hung up."""


class _HolderGone(Exception):
    """The holder stopped saying it is alive."""


class SessionProxy:
    """Pure ASGI middleware: a request for another node's session goes to that node.

    Args:
        app: the next ASGI app.
        cluster: this node's cluster.
    """

    def __init__(self, app: ASGIApp, cluster: Cluster) -> None:
        self._app = app
        self._cluster = cluster
        self._node_id = cluster.node_id
        self._directory = cluster.directory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send another node's session request on; everything else to the next app."""
        found = foreign_holder(scope, self._node_id)
        if found is None:
            await self._app(scope, receive, send)
            return
        session_id, holder = found
        if was_sent_on(scope):
            await self._gone(send, session_id, holder, f"is not this node ({self._node_id})")
            return
        try:
            url = await asyncio.to_thread(self._directory.live_url, holder)
        except Exception as exc:
            log.warning("the node directory does not answer", error=str(exc))
            message = "the node directory (the shared store) does not answer; retry shortly"
            await send_json(send, 503, envelope("Draining", message))
            return
        if url is None:
            await self._gone(send, session_id, holder, "is gone (stopped, or silent too long)")
            return
        body = await read_body(receive)
        if body is None:
            return  # the caller left before it sent the body
        left = asyncio.ensure_future(disconnected(receive))
        try:
            await self._forward(scope, send, url, body, (session_id, holder), left)
        finally:
            left.cancel()

    async def _forward(
        self,
        scope: Scope,
        send: Send,
        url: str,
        body: bytes,
        held: tuple[str, str],
        left: asyncio.Future[None],
    ) -> None:
        client = self._cluster.client
        # The path as it came (not decoded and encoded again), on the holder's URL.
        raw = scope.get("raw_path") or scope["path"].encode()
        target = httpx.URL(url.rstrip("/")).copy_with(raw_path=raw.split(b"?", 1)[0])
        request = client.build_request(
            scope["method"],
            target,
            params=scope.get("query_string", b"").decode("latin-1") or None,
            headers=self._headers(scope),
            content=body,
        )
        sending = asyncio.ensure_future(client.send(request, stream=True))
        try:
            response = await self._watch(sending, left, held[1])
        except _Left:
            return  # the connection to the holder is closed: it kills the call, as a direct one
        except (httpx.TransportError, _HolderGone) as exc:
            log.warning("session holder unreachable", holder=held[1], error=str(exc))
            await self._gone(send, *held, "does not answer")
            return
        try:
            await self._relay(response, send, held[1], left)
        finally:
            await response.aclose()

    async def _relay(
        self, response: httpx.Response, send: Send, holder: str, left: asyncio.Future[None]
    ) -> None:
        """Stream the holder's answer back until it ends, the caller leaves or the holder dies.

        Raises:
            ConnectionError: the caller left, or the holder died in the middle (the caller's
                connection is cut, as the holder's death would cut it).
        """
        headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in _RELAYED_NOT]
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        chunks = response.aiter_raw().__aiter__()
        while True:
            step: asyncio.Future[bytes | None] = asyncio.ensure_future(anext(chunks, None))
            try:
                chunk = await self._watch(step, left, holder)
            except (_Left, _HolderGone, httpx.TransportError) as exc:
                raise ConnectionError(f"proxying for node {holder!r} ended: {exc!r}") from exc
            if chunk is None:
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch(self, step: asyncio.Future[T], left: asyncio.Future[None], holder: str) -> T:
        """Await ``step`` while the caller stays and the holder says it is alive.

        The same ``step`` is awaited across the checks (cancelling a read in the middle would
        break the stream); it is cancelled only when we give up.

        Raises:
            _Left: the caller hung up.
            _HolderGone: the holder stopped saying it is alive while we waited.
        """
        try:
            while True:
                waiting: list[asyncio.Future[Any]] = [step, left]
                done, _ = await asyncio.wait(
                    waiting, timeout=_SILENCE_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if step in done:
                    return step.result()
                if left in done:
                    raise _Left
                if not await self._alive(holder):
                    raise _HolderGone(f"node {holder!r} stopped saying it is alive")
        except BaseException:
            step.cancel()
            with suppress(BaseException):
                await step
            raise

    async def _alive(self, holder: str) -> bool:
        """Whether the holder still says it is alive (when the store cannot tell: yes)."""
        try:
            return await asyncio.to_thread(self._directory.live_url, holder) is not None
        except Exception:
            return True

    def _headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        kept = [(k, v) for k, v in scope.get("headers", ()) if k.lower() not in _HOP_BY_HOP]
        return [*kept, (VIA_HEADER.encode(), self._node_id.encode())]

    async def _gone(self, send: Send, session_id: str, holder: str, why: str) -> None:
        message = gone_message(session_id, holder, why)
        body = envelope("SessionEndedError", message, session_id=session_id, reason=why)
        await send_json(send, 410, body)
