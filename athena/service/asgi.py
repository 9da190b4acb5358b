"""Pure-ASGI middleware that answers before FastAPI reads or parses anything.

:class:`AuthMiddleware` (outermost) checks the bearer token and puts the request's tenant in
``scope["state"]["athena_tenant"]``; a missing or wrong token gets 401 before one byte of the
body is read, and says nothing of what was wrong. :class:`BodyLimitMiddleware` then refuses a
body over the limit with 413: at once from ``Content-Length``, or as soon as a chunked body's
running count goes over. Requests that carry files (:func:`carries_files`: the run and session
call routes) have a larger limit than the rest, since files travel base64-encoded in the JSON.
It reads the body whole (at most the limit) and hands it to the app in one message; later
``receive`` calls reach the server, so the app still sees the client disconnect (what cancels
a streamed run).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from athena.service.wire import envelope

if TYPE_CHECKING:
    from athena.service.tokens import Tenant, TokenFile

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TENANT_KEY = "athena_tenant"
UNAUTHORIZED_MESSAGE = "a valid bearer token is required"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
FOREIGN_HOST_MESSAGE = (
    "without tokens this server answers only requests addressed to 127.0.0.1, localhost or "
    "[::1] (the Host header): serve with --tokens to answer other names"
)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FILES_PATHS = frozenset({"/v1/execute", "/v1/execute/stream", "/v1/execute/batch"})
_SESSIONS_PREFIX = "/v1/sessions/"
_SESSION_FILE_ROUTES = ("execute", "execute/stream", "replay")


def carries_files(path: str) -> bool:
    """Whether a request path takes ``files`` in its body (the larger body limit applies)."""
    if path in _FILES_PATHS:
        return True
    if not path.startswith(_SESSIONS_PREFIX):
        return False
    session_id, _, route = path[len(_SESSIONS_PREFIX) :].partition("/")
    return bool(session_id) and route in _SESSION_FILE_ROUTES


async def send_json(
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a whole JSON response."""
    payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode("ascii")),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def tenant_of(scope: Scope) -> Tenant:
    """The tenant :class:`AuthMiddleware` put in the scope.

    Raises:
        KeyError: the request did not go through the middleware.
    """
    tenant: Tenant = scope["state"][TENANT_KEY]
    return tenant


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def loopback_host(scope: Scope) -> bool:
    """Whether the request's ``Host`` names this machine's loopback (any port).

    Without tokens the server trusts whoever reaches it on loopback; a page in a browser that
    rebinds its own name to 127.0.0.1 (DNS rebinding) reaches it too, but its requests carry
    that name in ``Host``, so they are refused.
    """
    host = _header(scope, b"host")
    if host is None:
        return False
    name = host.decode("latin-1").strip().lower()
    if name.startswith("["):
        name = name[: name.find("]") + 1]
    else:
        name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    return name in LOOPBACK_NAMES


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None.

    None as well when the request carries several ``Authorization`` headers: which one counts
    would depend on who reads them (a proxy may check the last, this server the first).
    """
    found = [value for key, value in scope.get("headers", ()) if key == b"authorization"]
    if len(found) != 1:
        return None
    raw = bytes(found[0])
    scheme, _, token = raw.decode("latin-1").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class AuthMiddleware:
    """Resolves the tenant of each request from its bearer token, or answers 401.

    Args:
        app: the next ASGI app.
        tokens: the token file; None: no-token mode, every request is ``local``'s.
        local: the tenant of no-token mode (and of the open paths).
    """

    def __init__(self, app: ASGIApp, tokens: TokenFile | None, local: Tenant) -> None:
        self._app = app
        self._tokens = tokens
        self._local = local

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Set the tenant and go on, or answer 401 without reading the body."""
        if scope["type"] not in {"http", "websocket"}:
            await self._app(scope, receive, send)
            return
        tenant: Tenant | None = self._local
        message = UNAUTHORIZED_MESSAGE
        if scope.get("path") in OPEN_PATHS:
            pass
        elif self._tokens is not None:
            token = bearer_token(scope)
            tenant = None if token is None else self._tokens.verify(token)
        elif not loopback_host(scope):
            tenant, message = None, FOREIGN_HOST_MESSAGE
        if tenant is None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send_json(
                send,
                401,
                envelope("Unauthorized", message),
                [(b"www-authenticate", b"Bearer")],
            )
            return
        state = scope.setdefault("state", {})
        state[TENANT_KEY] = tenant
        await self._app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413, before the app reads them.

    Args:
        app: the next ASGI app.
        max_bytes: the largest body accepted.
        files_max_bytes: the largest body of a request that carries files
            (:func:`carries_files`); None: ``max_bytes``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, files_max_bytes: int | None = None) -> None:
        self._app = app
        self._max = max_bytes
        self._files_max = max_bytes if files_max_bytes is None else files_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body up to the limit and hand it on, or answer 413."""
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            await self._app(scope, receive, send)
            return
        limit = self._files_max if carries_files(scope.get("path", "")) else self._max
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await self._too_large(send, limit)
            return
        try:
            body = await read_body(receive, limit)
        except _TooLarge:
            await self._too_large(send, limit)
            return
        if body is None:
            return  # the client left before it sent the body: nobody to answer
        await self._app(scope, replay_body(body, receive), send)

    async def _too_large(self, send: Send, limit: int) -> None:
        message = f"the request body is over the server's limit of {limit} bytes; send less"
        await send_json(
            send, 413, envelope("PayloadTooLarge", message), [(b"connection", b"close")]
        )


class _TooLarge(Exception):
    """The body went over the limit (raised as soon as it did, before the rest is read)."""


async def read_body(receive: Receive, max_bytes: int | None = None) -> bytes | None:
    """Read a request's whole body; None if the client left before it was sent.

    Raises:
        _TooLarge: over ``max_bytes`` (None: no limit), as soon as the chunk that crosses it
            arrives; nothing after it is read.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then passes on to the server's."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
