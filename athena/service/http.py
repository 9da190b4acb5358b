"""The HTTP API: :func:`create_app` builds the FastAPI app over a :class:`~athena.api.MemoryAPI`.

Layers, outermost first: request metrics, :class:`~athena.service.asgi.AuthMiddleware` (401
before the body is read), :class:`~athena.service.asgi.BodyLimitMiddleware` (413), then the
``/mcp`` mount when one is given, :class:`~athena.service.http_runs.FastExecute` (a valid
``POST /v1/execute`` goes straight to its handler), then FastAPI (``/v1`` routes, health,
metrics). Every error
is the envelope of :mod:`athena.service.wire` with the status the spec gives its class:

=======================================================  ======
RequestError, PolicyError (and their LookupError kinds)  400
no valid bearer token                                    401
RecordNotFoundError, an unknown execution id             404
SessionEndedError (an ended, unknown or foreign session) 410
a body over the limit                                    413
a body that fails validation (names each field)          422
the tenant's in-flight or session limit, QueueFullError  429
StoreError, the server draining                          503
=======================================================  ======
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from athena.service import http_memory, http_runs, http_sessions, responses
from athena.service.asgi import (
    ASGIApp,
    AuthMiddleware,
    BodyLimitMiddleware,
    Message,
    Receive,
    Scope,
    Send,
    tenant_of,
)
from athena.service.inflight import InFlight
from athena.service.metrics import CONTENT_TYPE
from athena.service.proxy import Cluster, SessionProxy
from athena.service.state import Service, sessions_per_tenant_from_env
from athena.service.wire import TooManyRunsError, envelope, wire_name
from memory_store.errors import RecordNotFoundError, StoreError
from orchestrator.errors import (
    PolicyError,
    QueueFullError,
    RequestError,
    SandboxError,
    SessionEndedError,
)

if TYPE_CHECKING:
    from athena.api import MemoryAPI
    from athena.service.tokens import Tenant, TokenFile

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_FILES_BODY_BYTES = 96 * 1024 * 1024
"""The body limit of the routes that take ``files``: the default ``files.max_in_bytes`` (64 MiB)
base64-encoded is 85.3 MiB, plus room for the code and the rest of the JSON."""
DEFAULT_GRACE_SECONDS = 30.0
MCP_PATH = "/mcp"


class MCPMount(Protocol):
    """What ``create_app(mcp=...)`` mounts at ``/mcp`` (H4's MCP server over Streamable HTTP).

    Every request whose path is ``/mcp`` or starts with ``/mcp/`` goes to :attr:`app` as it
    came (path unchanged, after auth and the body limit, with the tenant in
    ``scope["state"]["athena_tenant"]``); :meth:`lifespan` is entered when the app starts and
    left when it stops (e.g. the SDK's session manager ``run()``); :meth:`attach` hands it the
    service, so the drain refuses its new runs and cancels its late ones like the HTTP API's.
    """

    @property
    def app(self) -> ASGIApp:
        """The ASGI app that serves ``/mcp``."""
        ...

    @property
    def lifespan(self) -> Callable[[], AbstractAsyncContextManager[Any]]:
        """Returns a context held open while the server runs."""
        ...

    def attach(self, host: Service) -> None:
        """Run the mount's runs under ``host`` (its drain and grace period)."""
        ...


def status_of(exc: BaseException) -> int:
    """The HTTP status of an error the API raised."""
    if isinstance(exc, RecordNotFoundError):
        return 404
    if isinstance(exc, SessionEndedError):
        return 410
    if isinstance(exc, RequestError | PolicyError):
        return 400
    if isinstance(exc, TooManyRunsError | QueueFullError):
        return 429
    if isinstance(exc, StoreError):
        return 400 if isinstance(exc, ValueError) else 503
    return 503


def error_response(exc: BaseException) -> JSONResponse:
    """The envelope response of an error the API raised."""
    status = status_of(exc)
    headers = None
    if isinstance(exc, TooManyRunsError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    elif status == 429:
        headers = {"Retry-After": "1"}
    extra = {}
    if isinstance(exc, SessionEndedError):
        extra = {"session_id": exc.session_id, "reason": exc.reason}
    body = envelope(wire_name(exc), str(exc), **extra)
    return JSONResponse(body, status_code=status, headers=headers)


def _field_name(location: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in location) or "body"


_NOT_JSON = "send a JSON object as UTF-8 text with Content-Type: application/json"
BODY_PARSE_FAILED = "There was an error parsing the body"  # FastAPI's detail for its 400


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """A 422 envelope naming each field that failed validation."""
    fields = []
    for error in exc.errors():
        location = list(error.get("loc", ()))
        text = str(error.get("msg", ""))
        if error.get("type") == "json_invalid":
            location, text = ["body"], f"not valid JSON ({text}); send a JSON object"
        elif location == ["body"] and isinstance(error.get("input"), bytes | bytearray):
            text = f"{text}: the body was not read as JSON; {_NOT_JSON}"
        fields.append({"field": _field_name(location), "message": text})
    return _invalid(fields)


def _invalid(fields: list[dict[str, str]]) -> JSONResponse:
    message = "the request is invalid: " + "; ".join(
        f"{f['field']}: {f['message']}" for f in fields
    )
    return JSONResponse(envelope("RequestError", message, fields=fields), status_code=422)


def unparsable_body_response(cause: BaseException | None) -> JSONResponse:
    """The 422 of a body FastAPI could not decode (bad UTF-8, too deep, a huge integer...)."""
    if isinstance(cause, UnicodeDecodeError):
        why = "it is not UTF-8 text (a compressed body is not accepted: send it uncompressed)"
    elif isinstance(cause, RecursionError):
        why = "it is nested too deeply; send flatter data"
    elif isinstance(cause, ValueError) and "digits" in str(cause):
        why = "a number in it has more than 4300 digits"
    else:
        why = "it could not be decoded"
    return _invalid([{"field": "body", "message": f"not valid JSON: {why}; {_NOT_JSON}"}])


def _install_errors(app: FastAPI) -> None:
    async def sandbox_error(_request: Request, exc: Exception) -> Response:
        return error_response(exc)

    async def invalid(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_response(exc)

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and exc.detail == BODY_PARSE_FAILED:
            return unparsable_body_response(exc.__cause__)
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return JSONResponse(
            envelope(kind, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    async def unexpected(_request: Request, exc: Exception) -> Response:
        message = f"the server failed: {type(exc).__name__}; this is a bug, please report it"
        return JSONResponse(envelope("ServiceError", message), status_code=500)

    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(SandboxError, sandbox_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)


def _install_health(app: FastAPI, service: Service) -> None:
    @app.get("/healthz", response_model=responses.Health, tags=["health"])
    async def healthz() -> Response:
        """The process answers."""
        return JSONResponse({"status": "ok"})

    @app.get(
        "/readyz",
        response_model=responses.Readiness,
        responses={503: {"model": responses.Readiness}},
        tags=["health"],
    )
    def readyz() -> Response:
        """Whether the engine and the store answer and the server takes runs (503 if not)."""
        engine = _engine_status(service)
        store = _store_status(service)
        draining = service.is_draining()
        ready = engine == "ok" and store == "ok" and not draining
        body = {"ready": ready, "engine": engine, "store": store, "draining": draining}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
            401: {"model": responses.ErrorEnvelope},
        },
        tags=["health"],
    )
    def metrics(request: Request) -> Response:
        """Prometheus metrics (runs, latency, pools, queue, violations; the caller's in flight)."""
        text = service.metrics.render(tenant_of(request.scope).name)
        return Response(text, media_type=CONTENT_TYPE)


def _engine_status(service: Service) -> str:
    try:
        reasons = [r for _mode, r in service.api.orchestrator.modes("python")]
    except Exception as exc:  # a readiness probe reports, it never fails
        return f"{type(exc).__name__}: {exc}"
    if any(reason is None for reason in reasons):
        return "ok"
    return " | ".join(str(r) for r in reasons) or "no isolation mode"


def _store_status(service: Service) -> str:
    try:
        service.api.store.get(1)  # the cheapest read every store has
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def create_app(
    api: MemoryAPI,
    *,
    tokens: TokenFile | None,
    local_tenant: Tenant | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    mcp: MCPMount | None = None,
    in_flight: InFlight | None = None,
    max_files_body_bytes: int = DEFAULT_MAX_FILES_BODY_BYTES,
    max_sessions_per_tenant: int | None = None,
    cluster: Cluster | None = None,
) -> FastAPI:
    """Build the HTTP app over ``api`` (which it does not close).

    Args:
        api: the local API; each tenant gets its view (``api.for_tenant``).
        tokens: the token file (a bearer token on every request but /healthz and /readyz);
            None: no-token mode, every request is ``local_tenant``'s.
        local_tenant: the tenant of no-token mode (default: ``tokens.local_tenant()``).
        max_body_bytes: the largest request body (413 over it).
        grace_seconds: how long a drain lets runs in flight finish before killing them.
        mcp: the MCP server to serve at ``/mcp`` (see :class:`MCPMount`).
        in_flight: the per-tenant in-flight counter; give the MCP mount the same one, so
            its runs count against the same limits (default: a new one).
        max_files_body_bytes: the largest body of the routes that take ``files`` (run and
            session calls, replay).
        max_sessions_per_tenant: how many sessions one tenant may have open (None:
            ``ATHENA_MAX_SESSIONS_PER_TENANT``, default 8).
        cluster: this node's cluster, on a node of one: a request for another node's session
            is sent on to it (:class:`~athena.service.proxy.SessionProxy`), and the list of
            sessions holds the caller's sessions on every node.

    Raises:
        RequestError: ``ATHENA_MAX_SESSIONS_PER_TENANT`` is not a whole number of at least 1.

    Returns:
        The ASGI app; ``app.state.service`` is its :class:`~athena.service.state.Service`.
    """
    from athena.service.tokens import local_tenant as default_local

    per_tenant = max_sessions_per_tenant or sessions_per_tenant_from_env()
    service = Service(api, grace_seconds, in_flight, per_tenant)
    service.cluster = cluster
    if mcp is not None:
        mcp.attach(service)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            if mcp is None:
                yield
                return
            async with mcp.lifespan():
                yield
        finally:
            service.metrics.close()
            if cluster is not None:
                await cluster.aclose()

    app = FastAPI(
        title="athena-sandbox",
        summary="Run untrusted code in throwaway sandboxes; remember, recall and learn.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service
    _install_errors(app)
    _install_health(app, service)
    app.include_router(http_runs.router)
    app.include_router(http_memory.router)
    app.include_router(http_sessions.router)
    # add_middleware: the last added is the outermost; all run before FastAPI reads the body.
    app.add_middleware(http_runs.FastExecute, service=service, on_error=error_response)
    if cluster is not None:
        app.add_middleware(SessionProxy, cluster=cluster)
    if mcp is not None:
        app.add_middleware(_MountMCP, mounted=mcp.app)
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=max_body_bytes, files_max_bytes=max_files_body_bytes
    )
    app.add_middleware(AuthMiddleware, tokens=tokens, local=local_tenant or default_local())
    app.add_middleware(_Timed, service=service)
    return app


class _MountMCP:
    """Sends ``/mcp`` and ``/mcp/...`` to the MCP app, everything else on."""

    def __init__(self, app: ASGIApp, mounted: ASGIApp) -> None:
        self._app = app
        self._mounted = mounted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "lifespan" and (path == MCP_PATH or path.startswith(MCP_PATH + "/")):
            await self._mounted(scope, receive, send)
        else:
            await self._app(scope, receive, send)


class _Timed:
    """Times each HTTP request into ``athena_http_request_duration_seconds``."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self._app = app
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            path = (
                getattr(route, "path", None)
                or scope.get(http_runs.ROUTE_PATH_KEY)
                or (MCP_PATH if scope.get("path", "").startswith(MCP_PATH) else "other")
            )
            self._service.metrics.observe_http(
                scope.get("method", ""), path, status, time.perf_counter() - started
            )
