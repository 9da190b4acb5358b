"""Routes that run code: execute, stream (Server-Sent Events), batch, prewarm, executions.

Every run goes through the same gate: the server must not be draining (503 ``Draining``), the
policy must be one the tenant may use (:func:`athena.service.gate.resolve_policy`, 400), and
the tenant must have a free in-flight slot (429 ``TooManyRuns`` with ``Retry-After``). A run
that fails (``success: false``) is a 200 with the result dict, as the local API returns it.
Files cross as JSON (:mod:`athena.service.wire`): ``files`` in a body are text or
``{"base64": ...}``, and the ``content`` of each result's ``files`` and ``artifacts`` is base64.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from athena.service import responses, schemas
from athena.service.asgi import ASGIApp, Receive, Scope, Send, read_body, replay_body, tenant_of
from athena.service.gate import resolve_policy
from athena.service.state import Service
from athena.service.wire import (
    ServiceUnavailableError,
    envelope,
    event_to_wire,
    files_from_wire,
    result_to_wire,
)
from orchestrator.errors import PolicyError, RequestError, SandboxError

if TYPE_CHECKING:
    from athena.service.tokens import Tenant

router = APIRouter(prefix="/v1", tags=["runs"])
log = structlog.get_logger(__name__)
T = TypeVar("T")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entry of these error statuses (each the envelope)."""
    return {status: {"model": responses.ErrorEnvelope} for status in statuses}


_ERRORS = errors(400, 401, 413, 422, 429, 503)


def service_of(request: Request) -> Service:
    """The :class:`Service` of the request's app."""
    service: Service = request.app.state.service
    return service


def _call(body: schemas.ExecuteBody, tenant: Tenant) -> dict[str, Any]:
    """``execute_code``'s keyword arguments, with the policy resolved for the tenant."""
    return {
        "code": body.code,
        "language": body.language,
        "parameters": body.parameters,
        "timeout_seconds": body.timeout_seconds,
        "sandbox_policy": resolve_policy(body.sandbox_policy, tenant),
        "track_resources": body.track_resources,
        "record": body.record,
        "files": files_from_wire(body.files),
        "capture_figures": body.capture_figures,
        "image": body.image,
        "requirements": body.requirements,
    }


@router.post(
    "/execute",
    response_model=responses.ExecutionResult | responses.ErrorEnvelope,
    responses=_ERRORS,
)
async def execute(body: schemas.ExecuteBody, request: Request) -> Response:
    """Run code in a never-used sandbox; return the result dict (``success`` may be false).

    The 200 starts when the code is handed to the sandbox (:class:`EarlyStart`): an error after
    that is the error envelope under it.
    """
    return await run_execute(service_of(request), request.scope, request.receive, body)


async def run_execute(
    service: Service,
    scope: Scope,
    receive: Receive,
    body: schemas.ExecuteBody,
    on_dispatch: Callable[[], None] | None = None,
) -> Response:
    """``POST /v1/execute`` once its body is valid: the route's and :class:`FastExecute`'s."""
    service.refuse_if_draining()
    tenant = tenant_of(scope)
    call = _call(body, tenant)
    api = service.view(tenant)
    run = api.execute_code_async(**call, on_dispatch=on_dispatch)
    with service.in_flight.slots(tenant.name, tenant.max_in_flight):
        result = await unless_left(receive, service, run)
    if result is None:
        return Response(status_code=499)  # nobody is left to read it
    return JSONResponse(result_to_wire(result))


class FastExecute:
    """Takes ``POST /v1/execute`` straight to :func:`run_execute`, past FastAPI's routing.

    Every run pays the layers between its socket and its sandbox: FastAPI's router, request
    object, dependency solving and body validation took about a third of the service's own
    cost of a warm run on a two-core machine. Only a JSON body that validates as
    :class:`~athena.service.schemas.ExecuteBody` (``files``, ``capture_figures`` and ``image``
    included) takes this path, parsed and validated as the route does (``json.loads`` of the
    bytes, then the model); anything else (another content type, a body that is not JSON, a
    field wrong) goes on to the route with the body as it came, which answers as the schema
    says. What :func:`run_execute` raises gets the route's
    response: a :class:`~orchestrator.errors.SandboxError` its envelope, anything else the
    app's 500 handler further out.

    Args:
        app: the next ASGI app (FastAPI's routing).
        service: the app's :class:`Service`.
        on_error: the response of a ``SandboxError`` (the route's exception handler).
    """

    def __init__(
        self, app: ASGIApp, service: Service, on_error: Callable[[Exception], Response]
    ) -> None:
        self._app = app
        self._service = service
        self._on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a valid ``POST /v1/execute`` here; hand everything else on."""
        if not _is_execute(scope):
            await self._app(scope, receive, send)
            return
        body = await read_body(receive)  # the limit is enforced further out
        if body is None:
            return  # the client left before it sent the body: nobody to answer
        try:
            parsed = schemas.ExecuteBody.model_validate(json.loads(body))
        except (ValueError, RecursionError, ValidationError):  # the route says what is wrong
            await self._app(scope, replay_body(body, receive), send)
            return
        scope[ROUTE_PATH_KEY] = EXECUTE_PATH
        early = EarlyStart(send)
        try:
            response = await run_execute(
                self._service, scope, receive, parsed, on_dispatch=early.dispatched
            )
        except SandboxError as exc:
            response = self._on_error(exc)
        await early.finish(response, scope, receive, send)


class EarlyStart:
    """Starts a run's answer the moment its code is handed to the sandbox.

    A client (or a load balancer's retry) must know whether a failed run's code could have
    started, to run it again elsewhere only if it did not. So the status line and headers
    (``200``, JSON) and one byte of the body (a space: JSON allows it) are written before the
    code reaches its sandbox, from the worker thread that is about to hand it over, which waits
    until they are written; the result follows when the run ends. A client that got no
    ``200`` knows the code never started: whatever went wrong (the node died, it drained, the
    load balancer found no node) happened before. Once the headers went out, every outcome is
    in the body, an error as its envelope (``{"error": ...}``) under the ``200``.
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self._loop = asyncio.get_running_loop()
        self.started = False

    def dispatched(self) -> None:
        """Write the start of the answer, and wait until it is written (a worker thread)."""
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            future.result(timeout=_EARLY_WAIT_S)
        except TimeoutError:
            log.warning("a run's answer did not start in time; its code goes on")
            future.cancel()
        except Exception:
            future.cancel()

    async def _start(self) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": 200, "headers": _EARLY})
        await self._send({"type": "http.response.body", "body": b" ", "more_body": True})

    async def finish(self, response: Response, scope: Scope, receive: Receive, send: Send) -> None:
        """Send ``response`` whole, or its body after the early start."""
        if not self.started:
            await response(scope, receive, send)
            return
        body = b"" if response.status_code == 499 else bytes(response.body)
        await send({"type": "http.response.body", "body": body, "more_body": False})


_EARLY = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
_EARLY_WAIT_S = 10.0


EXECUTE_PATH = "/v1/execute"
ROUTE_PATH_KEY = "athena.route_path"  # the metrics' path label of a request no route served


def _is_execute(scope: Scope) -> bool:
    """Whether FastAPI would read this request's body as JSON for the run route.

    Every body the route would run must come here, where its answer starts before its code
    (:class:`EarlyStart`); the route itself only answers what fails validation. FastAPI reads
    a body as JSON with no content type, ``application/json`` or ``application/*+json``; the
    query string means nothing to the route.
    """
    if scope["type"] != "http" or scope.get("method") != "POST":
        return False
    if scope.get("path") != EXECUTE_PATH:
        return False
    content_type = next((v for k, v in scope.get("headers", ()) if k == b"content-type"), None)
    return content_type is None or _is_json(content_type)


def _is_json(content_type: bytes) -> bool:
    kind = content_type.split(b";", 1)[0].strip().lower()
    main, _, sub = kind.partition(b"/")
    return main == b"application" and (sub == b"json" or sub.endswith(b"+json"))


async def unless_left(receive: Receive, service: Service, work: Coroutine[Any, Any, T]) -> T | None:
    """Await ``work`` in this task, which a drain may cancel; None when the client leaves first.

    The work runs in the calling task rather than one of its own, so a run's end reaches the
    response without extra turns of the loop (latency every run would pay). A listener hears
    the client leave and cancels this task, which kills the run.

    Raises:
        ServiceUnavailableError: the drain's grace period ended first; the run was killed.
    """
    this = asyncio.current_task()
    assert this is not None, "unless_left runs in a task"
    left = over = False

    def on_left(listener: asyncio.Future[None]) -> None:
        nonlocal left
        if not over and not listener.cancelled() and listener.exception() is None:
            left = True
            this.cancel()

    listen = asyncio.ensure_future(disconnected(receive))
    listen.add_done_callback(on_left)
    try:
        with service.running(this):
            return await work
    except asyncio.CancelledError:
        if left:  # the client left: the run was killed and recorded; nobody is there to answer
            this.uncancel()
            return None
        if service.killed:
            this.uncancel()
            raise ServiceUnavailableError(
                "the server shut down before the run finished; the run was killed"
            ) from None
        raise
    finally:
        over = True
        listen.cancel()


@router.post(
    "/execute/stream",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "description": "Server-Sent Events, one per run event, the exit event last.",
            "content": {"text/event-stream": {"schema": responses.SSE_EVENT_SCHEMA}},
        },
    },
)
async def execute_stream(body: schemas.ExecuteBody, request: Request) -> Response:
    """Run code and stream its events; closing the connection kills the run."""
    service = service_of(request)
    service.refuse_if_draining()
    tenant = tenant_of(request.scope)
    call = _call(body, tenant)
    api = service.view(tenant)
    return await stream_run(
        service,
        tenant,
        request.receive,
        lambda on_event, on_dispatch: api.execute_code_async(
            **call, on_event=on_event, on_dispatch=on_dispatch
        ),
    )


EventListener = Callable[[dict[str, Any]], None]
DISPATCHED: dict[str, Any] = {"type": "dispatched"}
"""Put first in a stream's queue when the code is about to reach its sandbox: no event, but the
moment the stream's headers go out (see :class:`EarlyStart` for why)."""


async def stream_run(
    service: Service,
    tenant: Tenant,
    receive: Receive,
    start: Callable[[EventListener, Callable[[], None]], Coroutine[Any, Any, dict[str, Any]]],
) -> Response:
    """The event stream of one run: ``start(on_event, on_dispatch)`` is the run (with a slot).

    The stream's headers go out when the run calls ``on_dispatch`` (its code is about to reach
    the sandbox; the run waits until they are written) or at its first event: a client that
    got no ``200`` knows the code never started.

    Raises:
        TooManyRunsError: the tenant has no free in-flight slot.
        SandboxError: what the run raised before its first event.
    """
    service.in_flight.acquire(tenant.name, tenant.max_in_flight)
    headers_out = threading.Event()
    listen = asyncio.ensure_future(disconnected(receive))
    try:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def on_event(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event_to_wire(event))

        def on_dispatch() -> None:
            loop.call_soon_threadsafe(events.put_nowait, DISPATCHED)
            headers_out.wait(_EARLY_WAIT_S)

        task = service.start_run(start(on_event, on_dispatch))
        task.add_done_callback(lambda _task: events.put_nowait(None))
        first = await _first_event(events, task, listen)
    except BaseException:
        headers_out.set()
        listen.cancel()
        service.in_flight.release(tenant.name)
        raise
    if listen.done():  # the client left while the run waited for a place: it never starts
        headers_out.set()
        task.cancel()
        await asyncio.wait([task])
        service.in_flight.release(tenant.name)
        return Response(status_code=499)

    async def close(finished: bool) -> None:
        try:
            if not finished:
                task.cancel()
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: what it raised was the stream's to report
        finally:
            service.in_flight.release(tenant.name)

    return EventStream(first, events, close, listen, headers_out)


async def _first_event(
    events: asyncio.Queue[dict[str, Any] | None],
    task: asyncio.Task[dict[str, Any]],
    listen: asyncio.Future[None],
) -> dict[str, Any] | None:
    """Wait for the run's first event (or the client leaving: then None, ``listen`` done).

    Raises:
        SandboxError: what the run raised before it began.
    """
    getter = asyncio.ensure_future(events.get())
    try:
        waiting: list[asyncio.Future[Any]] = [getter, task, listen]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        getter.cancel()
        task.cancel()
        raise
    if listen.done() and not getter.done():
        getter.cancel()
        return None
    if not getter.done() or getter.result() is None:
        # The run ended before its first event (the queue's None comes from the task's end):
        # what it raised (a RequestError, PolicyError...) becomes a normal JSON error response.
        getter.cancel()
        await asyncio.wait([task])
        task.result()
        return None
    return getter.result()


class EventStream(Response):
    """A ``text/event-stream`` of a run's events that notices the client leaving at once.

    Starlette's streaming response notices a disconnect only when it next sends; a run that
    prints nothing for a minute must be killed as soon as its client goes, so this response
    listens for ``http.disconnect`` while it streams.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        first: dict[str, Any] | None,
        events: asyncio.Queue[dict[str, Any] | None],
        close: Callable[[bool], Awaitable[None]],
        listen: asyncio.Future[None],
        headers_out: threading.Event | None = None,
    ) -> None:
        # Not Response.__init__: it would add ``content-length: 0``.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        self._first = first
        self._events = events
        self._close = close
        self._listen = listen
        self._headers_out = headers_out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream until the exit event or the client leaves; then end the run."""
        pump = asyncio.ensure_future(self._pump(send))
        listen = self._listen  # already listening while the run waited for its first event
        try:
            await asyncio.wait([pump, listen], return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished = pump.done() and not pump.cancelled() and pump.exception() is None
            pump.cancel()
            listen.cancel()
            await asyncio.shield(self._close(finished))
            await asyncio.wait([pump, listen])
            if not pump.cancelled():
                pump.exception()  # a send to a client that left: nothing to report

    async def _pump(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if self._first is DISPATCHED:  # a comment, so the headers leave now
                await send(
                    {"type": "http.response.body", "body": b": dispatched\n\n", "more_body": True}
                )
        finally:
            if self._headers_out is not None:
                self._headers_out.set()  # the run may go on
        event = self._first if self._first is not DISPATCHED else await self._events.get()
        while event is not None:
            data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
            chunk = f"event: {event['type']}\ndata: {data}\n\n"
            await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
            if event["type"] == "exit":
                break
            event = await self._events.get()
            while event is DISPATCHED:  # it came after the first event (begin): nothing to say
                event = await self._events.get()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def disconnected(receive: Receive) -> None:
    """Return when the client hangs up (``http.disconnect``)."""
    while (await receive())["type"] != "http.disconnect":
        pass


@router.post("/execute/batch", response_model=responses.BatchResults, responses=_ERRORS)
async def execute_batch(body: schemas.BatchBody, request: Request) -> Response:
    """Run several calls, at most ``concurrency`` (capped by the tenant's limit) at a time."""
    service = service_of(request)
    service.refuse_if_draining()
    tenant = tenant_of(request.scope)
    if body.concurrency < 1:
        raise RequestError(f"concurrency must be at least 1, not {body.concurrency}")
    calls = []
    for index, call in enumerate(body.calls):
        try:
            calls.append(_call(call, tenant))
        except (RequestError, PolicyError) as exc:
            raise type(exc)(f"calls[{index}]: {exc}") from exc
    if not calls:
        return JSONResponse({"results": []})
    api = service.view(tenant)
    wanted = min(body.concurrency, len(calls))
    with service.in_flight.slots(tenant.name, tenant.max_in_flight, wanted) as granted:
        batch = api.execute_code_batch_async(calls, granted)
        results = await unless_left(request.receive, service, batch)
    if results is None:
        return Response(status_code=499)  # the client left: the runs still going were killed
    return JSONResponse({"results": [result_to_wire(result) for result in results]})


@router.post("/prewarm", response_model=responses.Ready, responses=_ERRORS)
async def prewarm(body: schemas.PrewarmBody, request: Request) -> Response:
    """Fill the warm pool of (language, policy) now; say whether a sandbox is ready."""
    service = service_of(request)
    service.refuse_if_draining()
    tenant = tenant_of(request.scope)
    policy = resolve_policy(body.sandbox_policy, tenant)
    api = service.view(tenant)
    ready = await asyncio.to_thread(api.prewarm, body.language, policy)
    return JSONResponse({"ready": ready})


@router.get(
    "/executions/{execution_id:text}",
    response_model=responses.ExecutionRecord,
    responses=errors(400, 401, 404, 422, 503),
)
def get_execution(execution_id: str, request: Request) -> Response:
    """A recorded execution of this tenant: request, result and events (404 if none)."""
    record = service_of(request).view(tenant_of(request.scope)).get_execution(execution_id)
    if record is None:
        message = f"no execution {execution_id!r} among this tenant's records"
        return JSONResponse(envelope("ExecutionNotFound", message), status_code=404)
    return JSONResponse(record)
