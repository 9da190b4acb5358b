"""Routes of sessions: open, list, look up, run a call in, close, replay.

A session is its tenant's alone: every route looks the id up among the caller's sessions, so
another tenant's id answers exactly as an unknown one does (410 ``SessionEndedError``, "no open
session"). A session that ended (closed, expired, a violation, the drain) answers 410 with the
reason it ended while the server remembers it. Opening goes through the same gate as a one-shot
run (the policy must be one the tenant may use), holds one of the tenant's in-flight slots while
the sandbox starts, and counts against the tenant's session limit
(:data:`~athena.service.state.DEFAULT_MAX_SESSIONS_PER_TENANT`, 429 over it) as well as the
server's (``ATHENA_MAX_SESSIONS``, 429). A call holds an in-flight slot like any run; a client that
hangs up cancels it, which kills the session's sandbox: the session goes on, and its next call
starts with fresh state (``session_state: "restarted"``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from athena.service import responses, schemas
from athena.service.asgi import tenant_of
from athena.service.gate import check_recorded_policy, resolve_policy
from athena.service.http_runs import errors, service_of, stream_run, unless_left
from athena.service.proxy import was_sent_on
from athena.service.state import Service
from athena.service.wire import files_from_wire, result_to_wire
from orchestrator.errors import SessionEndedError
from orchestrator.models import Event, ExecutionRequest
from orchestrator.packages import check_requirements_allowed
from orchestrator.run import CancelToken

if TYPE_CHECKING:
    from athena.service.tokens import Tenant
    from orchestrator.sessions import Session

router = APIRouter(prefix="/v1", tags=["sessions"])

_OPEN_ERRORS = errors(400, 401, 413, 422, 429, 503)
_CALL_ERRORS = errors(400, 401, 410, 413, 422, 429, 503)
_LOOKUP_ERRORS = errors(401, 410, 503)


def find_session(service: Service, tenant: Tenant, session_id: str) -> Session:
    """The tenant's open session of this id.

    Raises:
        SessionEndedError: it ended (the reason, while the server remembers it), or no open
            session of this tenant has this id (another tenant's included).
    """
    ended = service.ended_session(session_id, tenant)
    if ended is not None:
        reason = str(ended.info()["ended_reason"])
        raise SessionEndedError(
            f"session {session_id} has ended: {reason}; open a new session (or replay this "
            "one into a new one with replay_session)",
            session_id=session_id,
            reason=reason,
        )
    return service.api.orchestrator.session(session_id, tenant=tenant.name)


@router.post(
    "/sessions",
    status_code=201,
    response_model=responses.SessionInfo,
    responses=_OPEN_ERRORS,
)
async def open_session(body: schemas.OpenSessionBody, request: Request) -> Response:
    """Open a session: calls that share one interpreter, in a sandbox of its own."""
    service = service_of(request)
    service.refuse_if_draining()
    tenant = tenant_of(request.scope)
    policy = resolve_policy(body.sandbox_policy, tenant)
    view = service.view(tenant)
    opener = partial(
        view.open_session,
        body.language,
        policy,
        body.idle_timeout_seconds,
        body.max_lifetime_seconds,
        image=body.image,
        requirements=body.requirements,
    )
    with service.session_slot(tenant), service.in_flight.slots(tenant.name, tenant.max_in_flight):
        opened = await asyncio.to_thread(opener)
    service.remember_session(tenant, opened)
    # It may have ended already (an idle timeout shorter than this answer): its info says so.
    return JSONResponse(opened.info(), status_code=201)


@router.get("/sessions", response_model=responses.SessionList, responses=errors(401, 503))
async def list_sessions(request: Request) -> Response:
    """The tenant's open sessions, oldest first (on a cluster, those of every live node)."""
    service = service_of(request)
    sessions = service.view(tenant_of(request.scope)).sessions()
    if service.cluster is not None and not was_sent_on(request.scope):
        sessions += await service.cluster.sessions_elsewhere(request.scope["headers"])
        sessions.sort(key=lambda info: str(info.get("created_at", "")))
    return JSONResponse({"sessions": sessions})


@router.get(
    "/sessions/{session_id:text}", response_model=responses.SessionInfo, responses=_LOOKUP_ERRORS
)
def get_session(session_id: str, request: Request) -> Response:
    """One open session of the tenant (410 once it ended, saying why)."""
    service = service_of(request)
    return JSONResponse(find_session(service, tenant_of(request.scope), session_id).info())


@router.delete(
    "/sessions/{session_id:text}",
    response_model=responses.SessionInfo,
    responses=errors(401, 410, 413, 503),
)
async def close_session(session_id: str, request: Request) -> Response:
    """Close a session and kill its sandbox; answer its last info (``state: ended``)."""
    service = service_of(request)
    tenant = tenant_of(request.scope)
    find_session(service, tenant, session_id)  # the same answer as every route for a gone one
    session = service.view(tenant).session(session_id)
    service.remember_session(tenant, session)  # a later request is told it was closed
    await asyncio.to_thread(session.close)
    return JSONResponse(session.info())


def _prepared_call(
    request: Request, session_id: str, body: schemas.SessionExecuteBody
) -> tuple[Service, Tenant, Session, ExecutionRequest]:
    """The service, the tenant, its open session and the checked call (refused while draining)."""
    service = service_of(request)
    service.refuse_if_draining()
    tenant = tenant_of(request.scope)
    session = find_session(service, tenant, session_id)
    return service, tenant, session, session_request(service, tenant, session, body)


@router.post(
    "/sessions/{session_id:text}/execute",
    response_model=responses.ExecutionResult,
    responses=_CALL_ERRORS,
)
async def execute_in_session(
    session_id: str, body: schemas.SessionExecuteBody, request: Request
) -> Response:
    """Run code in the session, after its earlier calls; return the result dict."""
    service, tenant, session, call = _prepared_call(request, session_id, body)
    with service.in_flight.slots(tenant.name, tenant.max_in_flight):
        work = run_session_call(service, session, call)
        result = await unless_left(request.receive, service, work)
    if result is None:
        return Response(status_code=499)  # the client left: the call was killed
    return JSONResponse(result_to_wire(result))


def session_request(
    service: Service, tenant: Tenant, session: Session, body: schemas.SessionExecuteBody
) -> ExecutionRequest:
    """The checked request of one session call (what ``SandboxSession.execute_code`` builds).

    Raises:
        SessionEndedError: the session ended meanwhile.
        RequestError: bad arguments (files and requirements included: nothing runs).
        PolicyError: requirements the session's policy cannot install.
    """
    session.check_open()
    settings = service.api.orchestrator.settings
    request = ExecutionRequest.create(
        body.code,
        session.language,
        body.parameters,
        body.timeout_seconds,
        session.policy_config,
        track_resources=body.track_resources,
        record=body.record,
        max_code_bytes=settings.max_code_bytes,
        max_parameters_bytes=settings.max_parameters_bytes,
        tenant=tenant.name,
        files=files_from_wire(body.files),
        capture_figures=body.capture_figures,
        image=session.image,
        session_id=session.session_id,
        requirements=body.requirements,
    )
    check_requirements_allowed(request.requirements, request.language, request.policy, settings)
    return request


async def run_session_call(
    service: Service,
    session: Session,
    request: ExecutionRequest,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one call of ``session`` in a worker thread; cancelling the task kills the call.

    The call is killed (its sandbox with it: the session's next call starts fresh) and recorded
    before the cancellation goes on, as :meth:`Orchestrator.arun` does for one-shot runs.
    ``on_event`` is called from that thread with each event dict.

    Raises:
        SessionEndedError: the session ended before the call began.
        RequestError: the call's files could not be written (nothing ran; the state stays).
    """
    cancel = CancelToken()
    orchestrator = service.api.orchestrator
    listener = None if on_event is None else _dicts(on_event)
    call = partial(orchestrator.execute, request, on_event=listener, cancel=cancel, session=session)
    future = asyncio.get_running_loop().run_in_executor(None, call)
    try:
        result = await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.cancel()
        while not future.done():  # killed and recorded before we go on, even if cancelled again
            try:
                await asyncio.wait([future])
            except asyncio.CancelledError:
                continue
        if not future.cancelled():
            future.exception()  # retrieved: asyncio would log it as never retrieved
        raise
    return result.to_dict()


def _dicts(on_event: Callable[[dict[str, Any]], None]) -> Callable[[Event], None]:
    def listen(event: Event) -> None:
        on_event(event.to_dict())

    return listen


@router.post(
    "/sessions/{session_id:text}/execute/stream",
    response_class=Response,
    responses={
        **_CALL_ERRORS,
        200: {
            "description": "Server-Sent Events, one per event of the call, the exit event last.",
            "content": {"text/event-stream": {"schema": responses.SSE_EVENT_SCHEMA}},
        },
    },
)
async def execute_in_session_stream(
    session_id: str, body: schemas.SessionExecuteBody, request: Request
) -> Response:
    """Run code in the session and stream its events; closing the connection kills the call."""
    service, tenant, session, call = _prepared_call(request, session_id, body)
    return await stream_run(
        service,
        tenant,
        request.receive,
        lambda on_event, _on_dispatch: run_session_call(service, session, call, on_event),
    )


@router.post(
    "/sessions/{session_id:text}/replay",
    status_code=201,
    response_model=responses.Replayed,
    responses=errors(400, 401, 410, 413, 422, 429, 503),
)
async def replay_session(session_id: str, body: schemas.ReplayBody, request: Request) -> Response:
    """Open a new session and run a recorded session's calls in it, in order.

    The recorded session may be open, closed or long gone; only its recorded calls count.
    Its policy must still be one the tenant may use. A replayed call that ends the new session
    (a memory or process violation) makes the next one fail: 410, and the new session is closed.
    """
    service = service_of(request)
    service.refuse_if_draining()
    tenant = tenant_of(request.scope)
    view = service.view(tenant)
    calls = await asyncio.to_thread(view.store.session_calls, session_id)
    if calls:
        check_recorded_policy(calls[0].policy, calls[0].policy_config, tenant)
    replay = partial(
        view.replay_session,
        session_id,
        idle_timeout_seconds=body.idle_timeout_seconds,
        max_lifetime_seconds=body.max_lifetime_seconds,
        files=files_from_wire(body.files),
    )
    with service.session_slot(tenant), service.in_flight.slots(tenant.name, tenant.max_in_flight):
        replayed = await asyncio.to_thread(replay)
    service.remember_session(tenant, replayed)
    results = [result_to_wire(result) for result in replayed.replayed]
    return JSONResponse({"session": replayed.info(), "replayed": results}, status_code=201)


__all__ = ["find_session", "router", "run_session_call", "session_request"]
