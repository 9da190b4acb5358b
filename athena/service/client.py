"""RemoteMemoryAPI: the methods of :class:`~athena.api.MemoryAPI`, over the HTTP API of a server.

``MemoryAPI.connect("http://127.0.0.1:8000", token=...)`` returns one. Every method has the
local name, signature and result dict; the server (``athena-sandbox serve``) runs the very same
``MemoryAPI`` for the token's tenant, so caller mistakes raise the same classes
(``RequestError``, ``UnknownLanguageError``, ``PolicyNotFoundError``, ``RecordNotFoundError``
...) with the server's message, rebuilt from the error envelope by
:func:`athena.service.wire.error_from`.

What differs, because a process boundary is crossed:

- ``sandbox_policy`` is a policy name the token may use, or a dict that ``extends`` one (a
  :class:`~orchestrator.policy.Policy` is sent by name when it is a shipped policy, else as its
  dict); a path names a file on the server's disk, which the server refuses.
- ``generate_procedure_code(generator=...)``: a callable cannot be sent (``RequestError``).
- ``files=`` travel base64-encoded, and the ``content`` of the results' ``files`` and
  ``artifacts`` is decoded back to bytes, so results equal the local ones.
- Sessions (``open_session``, ``session``, ``replay_session``) are
  :class:`~athena.service.remote_session.RemoteSession` objects with the methods of
  :class:`~athena.sessions.SandboxSession`; ``sessions()`` lists the tenant's.
- A value that cannot be written as JSON at all (a set, NaN, an object) is refused here, with
  the message the local API gives for it.
- The service's own errors (:mod:`athena.service.wire`): ``AuthenticationError`` (no valid token),
  ``PayloadTooLargeError``, ``TooManyRunsError`` (the tenant's in-flight limit: no silent retry)
  and ``ServiceUnavailableError`` (draining, unreachable, or an answer that is not the service's).

Runs time out on the client after the larger of ``timeout`` and the run's own timeout plus a
margin; connecting gives up after :data:`CONNECT_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from functools import partial
from typing import Any

import httpx
from httpx_sse import EventSource

from athena.api import PolicySpec
from athena.service import remote, retry, wire
from athena.service.remote_session import RemoteSession, session_path
from athena.service.wire import ServiceError
from memory_store import checks
from memory_store.consolidation.strategies import days_back as check_days_back
from memory_store.consolidation.strategies import strategy_named
from memory_store.records import CodeGenerator
from memory_store.requests import (
    EventQuery,
    NewEntity,
    NewEvent,
    NewMemory,
    NewProcedure,
    NewRelation,
    RecallQuery,
)
from orchestrator.errors import RequestError
from orchestrator.models import finite_seconds, shown_number

__all__ = ["CONNECT_TIMEOUT_SECONDS", "RUN_MARGIN_SECONDS", "RemoteMemoryAPI", "RemoteSession"]

CONNECT_TIMEOUT_SECONDS = 10.0
"""How long connecting to the server may take before it counts as unreachable."""
RUN_MARGIN_SECONDS = 60.0
"""Added to a run's own timeout: queueing, a cold start and writing the record take time too."""

_JSON = {"Content-Type": "application/json"}
_SSE = {**_JSON, "Accept": "text/event-stream", "Cache-Control": "no-store"}


class RemoteMemoryAPI:
    """A client of ``athena-sandbox serve`` with the methods of :class:`~athena.api.MemoryAPI`.

    Build one with ``MemoryAPI.connect(url, token=...)``; close it (or use ``with``).

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        token: the bearer token (``athena-sandbox tokens add``); None for a server without
            ``--tokens``.
        timeout: seconds to wait for an answer (a run waits at least its own timeout plus
            :data:`RUN_MARGIN_SECONDS`).
        transport: the httpx transport of the synchronous calls (tests pass a mock).
        async_transport: the httpx transport of :meth:`execute_code_async`.

    Raises:
        RequestError: the URL is not an http(s) URL, the token is not a string, or the timeout
            is not a positive number.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = remote.base_url(url)
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise RequestError("token must be the bearer token text (a non-empty string) or None")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise RequestError(f"timeout must be a number of seconds, not {timeout!r}")
        seconds = finite_seconds(timeout)
        if seconds is None or seconds <= 0:
            raise RequestError(
                f"timeout must be a finite number of seconds over 0, not {shown_number(timeout)}"
            )
        self._timeout = seconds
        self._tenant: str | None = None
        self._headers = {"User-Agent": "athena-sandbox-client"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token.strip()}"
        self._async_transport = async_transport
        self._tls: ssl.SSLContext | None = None  # made once, for the async runs' clients
        self._client = httpx.Client(
            base_url=self._url,
            headers=self._headers,
            timeout=self._timeouts(None),
            transport=transport,
        )

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._url

    @property
    def tenant(self) -> str:
        """The tenant the token names, as the local API's ``tenant``.

        The server's ``default`` when it runs without tokens. Asked of the server once
        (``GET /v1/whoami``).

        Raises:
            AuthenticationError: the server refused the token.
            ServiceUnavailableError: the server cannot be reached.
        """
        if self._tenant is None:
            answer = self._call("GET", "/v1/whoami", None, self._timeouts(None))
            tenant = answer.get("tenant") if isinstance(answer, dict) else None
            if not isinstance(tenant, str):
                raise ServiceError(f"{self._url} answered /v1/whoami without a tenant name")
            self._tenant = tenant
        return self._tenant

    def __repr__(self) -> str:
        return f"RemoteMemoryAPI({self._url!r})"

    # ----------------------------------------------------------------------- running code

    def execute_code(
        self,
        code: str,
        language: str = "python",
        parameters: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
        sandbox_policy: PolicySpec = None,
        *,
        track_resources: bool = False,
        record: bool = True,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        files: Mapping[str, bytes | str] | None = None,
        capture_figures: bool = True,
        image: str | None = None,
        requirements: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Run code on the server and return its result dict (as ``MemoryAPI.execute_code``).

        With ``on_stdout`` or ``on_stderr`` the run is streamed and each chunk of output is
        handed to them as it arrives. ``files`` travel base64-encoded and the contents of the
        result's ``files`` and ``artifacts`` come back as bytes, as locally.

        Raises:
            RequestError: bad arguments (the server's message).
            PolicyError: an unknown, invalid or not allowed policy, or a path.
            ServiceError: the service refused (see :mod:`athena.service.wire`).
        """
        args = (code, language, parameters, timeout_seconds, sandbox_policy)
        body = remote.run_body(
            *args, track_resources, record, files, capture_figures, image, requirements
        )
        content = remote.encode(body, lambda: remote.check_run(*args))
        timeouts = self._timeouts(timeout_seconds)
        if on_stdout is None and on_stderr is None:
            answer = retry.run_retrying(partial(self._run_once, "/v1/execute", content, timeouts))
            result: dict[str, Any] = wire.result_from_wire(answer)
            return result
        return self._streamed(content, timeouts, on_stdout, on_stderr)

    def _streamed(
        self,
        content: bytes,
        timeouts: httpx.Timeout,
        on_stdout: Callable[[str], None] | None,
        on_stderr: Callable[[str], None] | None,
        path: str = "/v1/execute/stream",
    ) -> dict[str, Any]:
        """Stream a run, handing its output to the callbacks; return its result dict."""
        with self._open_stream(content, timeouts, path) as events:
            for event in events:
                if event.get("type") == "stdout" and on_stdout is not None:
                    on_stdout(event.get("text", ""))
                elif event.get("type") == "stderr" and on_stderr is not None:
                    on_stderr(event.get("text", ""))
                elif event.get("type") == "exit":
                    return remote.exit_result(event, self._url)
        raise remote.no_exit(self._url)  # pragma: no cover - the stream raises this itself

    def execute_code_stream(
        self,
        code: str,
        language: str = "python",
        parameters: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
        sandbox_policy: PolicySpec = None,
        *,
        track_resources: bool = False,
        record: bool = True,
        files: Mapping[str, bytes | str] | None = None,
        capture_figures: bool = True,
        image: str | None = None,
        requirements: Sequence[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Run code on the server and yield its events as they happen (Server-Sent Events).

        The events are those of ``MemoryAPI.execute_code_stream``; the last is ``exit`` with
        the result. The run starts on the server at once; closing the iterator (or leaving a
        ``with`` block on it) closes the connection, and the server kills the run.

        Raises:
            RequestError: bad arguments (before anything runs).
            PolicyError: an unknown, invalid or not allowed policy.
            ServiceError: the service refused, or the stream broke off before ``exit``.
        """
        args = (code, language, parameters, timeout_seconds, sandbox_policy)
        body = remote.run_body(
            *args, track_resources, record, files, capture_figures, image, requirements
        )
        content = remote.encode(body, lambda: remote.check_run(*args))
        return self._open_stream(content, self._timeouts(timeout_seconds))

    async def execute_code_async(
        self,
        code: str,
        language: str = "python",
        parameters: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
        sandbox_policy: PolicySpec = None,
        *,
        track_resources: bool = False,
        record: bool = True,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        files: Mapping[str, bytes | str] | None = None,
        capture_figures: bool = True,
        image: str | None = None,
        requirements: Sequence[str] | None = None,
        on_dispatch: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Like :meth:`execute_code`, for asyncio; cancelling the awaiting task kills the run.

        The run is streamed over its own connection: cancelling closes it, and the server
        kills the run. ``on_event`` is called (from a worker thread) with each event dict;
        ``on_dispatch`` (from a worker thread) once the server says the code is handed to its
        sandbox. A run whose code never started is sent again (:mod:`athena.service.retry`).

        Raises:
            RequestError: bad arguments.
            PolicyError: an unknown, invalid or not allowed policy.
            ServiceError: the service refused, or the stream broke off before ``exit``.
        """
        args = (code, language, parameters, timeout_seconds, sandbox_policy)
        body = remote.run_body(
            *args, track_resources, record, files, capture_figures, image, requirements
        )
        content = remote.encode(body, lambda: remote.check_run(*args))
        attempt = partial(self._astream_once, content, timeout_seconds, on_event, on_dispatch)
        return await retry.run_retrying_async(attempt)

    async def _astream_once(
        self,
        content: bytes,
        timeout_seconds: object,
        on_event: Callable[[dict[str, Any]], None] | None,
        on_dispatch: Callable[[], None] | None,
    ) -> dict[str, Any]:
        """One attempt of a streamed async run (see :mod:`athena.service.retry`)."""
        async with self._async_client(timeout_seconds) as client:
            request = client.build_request(
                "POST", "/v1/execute/stream", content=content, headers=_SSE
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.TransportError as exc:
                raise retry.send_failed(exc, self._url) from exc
            try:
                if response.status_code in retry.RETRIED_STATUSES:
                    with suppress(httpx.TransportError):
                        await response.aread()
                    refused = retry.refused_before_start(response, self._url)
                    raise refused or remote.refusal(response, self._url)
                if on_dispatch is not None and remote.is_event_stream(response):
                    await asyncio.to_thread(on_dispatch)
                return await self._aresult(response, on_event)
            except httpx.TransportError as exc:
                raise retry.lost_after_start(exc, self._url) from exc
            finally:
                await response.aclose()

    def execute_code_batch(
        self, calls: Sequence[Mapping[str, Any]], concurrency: int = 4
    ) -> list[dict[str, Any]]:
        """Run several calls on the server, ``concurrency`` at a time; return dicts in order.

        Each call is a mapping of :meth:`execute_code`'s arguments (``code`` required); the
        server checks every call before any runs, and caps ``concurrency`` at the token's
        in-flight limit.

        Raises:
            RequestError: a call has bad arguments (the message names its index).
            PolicyError: a call names an unknown, invalid or not allowed policy.
            ServiceError: the service refused (``TooManyRunsError``: no slot is free).
        """
        listed = remote.listed(calls)
        body = {"calls": listed, "concurrency": concurrency}
        content = remote.encode(body, lambda: remote.check_calls(listed))
        answer = self._call("POST", "/v1/execute/batch", content, self._batch_timeouts(listed))
        return [wire.result_from_wire(r) for r in remote.dicts(answer, "results", self._url)]

    async def execute_code_batch_async(
        self, calls: Sequence[Mapping[str, Any]], concurrency: int = 4
    ) -> list[dict[str, Any]]:
        """Like :meth:`execute_code_batch`, for asyncio; cancelling kills the batch's runs.

        The batch has its own connection: cancelling the awaiting task closes it, and the
        server kills the runs still going and starts no more.

        Raises:
            RequestError: a call has bad arguments (the message names its index).
            PolicyError: a call names an unknown, invalid or not allowed policy.
            ServiceError: the service refused (``TooManyRunsError``: no slot is free).
        """
        listed = remote.listed(calls)
        body = {"calls": listed, "concurrency": concurrency}
        content = remote.encode(body, lambda: remote.check_calls(listed))
        async with self._async_client(None) as client:
            try:
                response = await client.post(
                    "/v1/execute/batch",
                    content=content,
                    headers=_JSON,
                    timeout=self._batch_timeouts(listed),
                )
            except httpx.TransportError as exc:
                raise remote.unreachable(exc, self._url) from exc
        results = remote.dicts(self._answer(response), "results", self._url)
        return [wire.result_from_wire(result) for result in results]

    # ----------------------------------------------------------------------- sessions

    def open_session(
        self,
        language: str = "python",
        sandbox_policy: PolicySpec = None,
        idle_timeout_seconds: float = 600,
        max_lifetime_seconds: float = 3600,
        *,
        image: str | None = None,
        requirements: Sequence[str] | None = None,
    ) -> RemoteSession:
        """Open a session on the server (as ``MemoryAPI.open_session``).

        Raises:
            RequestError: a language without sessions, or limits that are not positive
                numbers of seconds (at most a week).
            PolicyError: an unknown, invalid or not allowed policy.
            QueueFullError: the token's tenant, or the server, has as many sessions open as
                it may.
            ServiceError: the service refused (``TooManyRunsError``: no slot is free).
        """
        body = {
            "language": language,
            "sandbox_policy": remote.policy_body(sandbox_policy),
            "idle_timeout_seconds": idle_timeout_seconds,
            "max_lifetime_seconds": max_lifetime_seconds,
            "image": image,
            **remote.extras(None, True, None, requirements),
        }
        content = remote.encode(body, lambda: remote.check_policy(sandbox_policy))
        opening = partial(self._run_once, "/v1/sessions", content, self._timeouts(None))
        return RemoteSession(self, remote.info_of(retry.run_retrying(opening), self._url))

    def session(self, session_id: str) -> RemoteSession:
        """The open session of this id (this token's tenant's).

        Raises:
            SessionEndedError: no open session of this tenant has this id (it ended: the
                message says why while the server remembers it).
        """
        answer = self._call("GET", session_path(session_id), None, self._timeouts(None))
        return RemoteSession(self, remote.info_of(answer, self._url))

    def sessions(self) -> list[dict[str, Any]]:
        """The open sessions of this token's tenant, oldest first: each one's ``info()``.

        Raises:
            ServiceError: the service refused.
        """
        answer = self._call("GET", "/v1/sessions", None, self._timeouts(None))
        return remote.dicts(answer, "sessions", self._url)

    def replay_session(
        self,
        session_id: str,
        *,
        idle_timeout_seconds: float = 600,
        max_lifetime_seconds: float = 3600,
        files: Mapping[str, bytes | str] | None = None,
    ) -> RemoteSession:
        """Open a new session on the server and run a recorded session's calls in it.

        The new session's ``replayed`` holds the result of each call run again.

        Raises:
            RequestError: no recorded call has this session id (for this tenant).
            PolicyError: the recorded policy is not one this token may use now.
            QueueFullError: as :meth:`open_session`.
        """
        body = {
            "idle_timeout_seconds": idle_timeout_seconds,
            "max_lifetime_seconds": max_lifetime_seconds,
            **remote.extras(files, True, None),
        }
        path = session_path(session_id) + "/replay"
        answer = self._call("POST", path, remote.encode(body, None), self._timeouts(None))
        session = RemoteSession(self, remote.field(answer, "session", dict, self._url))
        replayed = remote.dicts(answer, "replayed", self._url)
        session.replayed = [wire.result_from_wire(result) for result in replayed]
        return session

    def prewarm(self, language: str = "python", sandbox_policy: PolicySpec = None) -> bool:
        """Fill the server's warm pool of (language, policy) now, so the next run starts warm.

        Raises:
            RequestError: an unknown language.
            PolicyError: an unknown, invalid or not allowed policy.
            ServiceError: the service refused.
        """
        body = {"language": language, "sandbox_policy": remote.policy_body(sandbox_policy)}
        content = remote.encode(body, lambda: remote.check_policy(sandbox_policy))
        answer = self._call("POST", "/v1/prewarm", content, self._timeouts(None))
        return bool(remote.field(answer, "ready", bool, self._url))

    # ----------------------------------------------------------------------- memory

    def remember(
        self,
        content: str,
        memory_type: str = "semantic",
        context: Mapping[str, Any] | None = None,
        tags: list[str] | str | None = None,
    ) -> int:
        """Remember a piece of knowledge on the server; return its id.

        Raises:
            RequestError: empty or over-size content, or a bad type, context or tags.
            StoreError: the server's store cannot write.
        """
        body = {
            "content": content,
            "memory_type": memory_type,
            "context": remote.plain(context),
            "tags": remote.plain(tags),
        }
        check = partial(NewMemory.create, content, memory_type, context, tags)
        return self._post_id("/v1/memories", body, check)

    def recall(
        self,
        query: str,
        limit: int = 5,
        context: Mapping[str, Any] | None = None,
        kinds: list[str] | str | None = None,
    ) -> list[dict[str, Any]]:
        """Return what the server's store knows that best matches ``query``, best first.

        Raises:
            RequestError: an empty query, a bad limit, an unknown kind or a bad context.
            StoreError: the server's store cannot be read.
        """
        body = {
            "query": query,
            "limit": limit,
            "context": remote.plain(context),
            "kinds": remote.plain(kinds),
        }
        check = partial(RecallQuery.create, query, limit, context, kinds)
        return self._post_results("/v1/recall", body, check)

    def forget(self, memory_id: int) -> bool:
        """Forget a record of any kind by id; return False when no record has that id.

        Raises:
            RequestError: the id is not a positive whole number.
            StoreError: the server's store cannot write.
        """
        record_id = checks.object_id(memory_id, "memory_id")  # it goes in the URL
        answer = self._call("DELETE", f"/v1/records/{record_id}", None, self._timeouts(None))
        return bool(remote.field(answer, "forgotten", bool, self._url))

    def remember_event(
        self,
        event_type: str,
        content: str,
        outcome: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> int:
        """Remember something that happened, on the server; return its id.

        Raises:
            RequestError: empty or over-size content, or a bad type, outcome or context.
            StoreError: the server's store cannot write.
        """
        body = {
            "event_type": event_type,
            "content": content,
            "outcome": outcome,
            "context": remote.plain(context),
        }
        check = partial(NewEvent.create, event_type, content, outcome, context)
        return self._post_id("/v1/events", body, check)

    def recall_events(
        self,
        query: str | None = None,
        event_type: str | None = None,
        start_date: Any = None,
        end_date: Any = None,
        limit: int = 10,
    ) -> list[dict[str, Any]]:
        """Return events, newest first, or ranked by ``query`` when it is given.

        A ``datetime`` or ``date`` is sent as its ISO 8601 text (a naive datetime is UTC, a
        bare date a whole day, as locally).

        Raises:
            RequestError: a bad type, date or limit, or an end before the start.
            StoreError: the server's store cannot be read.
        """
        body = {
            "query": query,
            "event_type": event_type,
            "start_date": remote.iso(start_date),
            "end_date": remote.iso(end_date),
            "limit": limit,
        }
        check = partial(EventQuery.create, query, event_type, start_date, end_date, limit)
        return self._post_results("/v1/events/search", body, check)

    def remember_procedure(
        self,
        name: str,
        steps: list[Any],
        category: str = "general",
        context: Mapping[str, Any] | None = None,
    ) -> int:
        """Remember how to do something, as ordered steps, on the server; return its id.

        Raises:
            RequestError: an empty name, no steps, a step without a description, over-size.
            StoreError: the server's store cannot write.
        """
        body = {
            "name": name,
            "steps": remote.plain(steps),
            "category": category,
            "context": remote.plain(context),
        }
        check = partial(NewProcedure.create, name, steps, category, context)
        return self._post_id("/v1/procedures", body, check)

    def generate_procedure_code(
        self, procedure_id: int, generator: CodeGenerator | None = None
    ) -> dict[str, Any]:
        """Turn a procedure remembered on the server into runnable Python, and validate it.

        The server's generator is used (its template, or the one it was started with).

        Raises:
            RequestError: the id is not a positive whole number, or a ``generator`` is given
                (a Python callable cannot be sent to the server).
            RecordNotFoundError: no procedure has this id.
            StoreError: the server's store cannot be read.
        """
        if generator is not None:
            raise RequestError(
                "generator cannot be sent to a remote server (it is a Python callable): leave "
                "it None to use the server's generator, or call a local MemoryAPI"
            )
        object_id = checks.object_id(procedure_id, "procedure_id")  # it goes in the URL
        content = remote.encode({}, None)
        answer: dict[str, Any] = self._call(
            "POST", f"/v1/procedures/{object_id}/code", content, self._timeouts(None)
        )
        return answer

    def validate_procedure_code(self, code: str, procedure_id: int | None = None) -> dict[str, Any]:
        """Check Python code on the server: syntax, security, docstrings, errors, type hints.

        Raises:
            RequestError: ``code`` is not a string, or holds a lone surrogate.
            RecordNotFoundError: ``procedure_id`` is given and no procedure has it.
            StoreError: the server's store cannot be read.
        """
        body = {"code": code, "procedure_id": procedure_id}
        content = remote.encode(body, lambda: remote.check_validate(code, procedure_id))
        answer: dict[str, Any] = self._call(
            "POST", "/v1/procedures/validate", content, self._timeouts(None)
        )
        return answer

    def remember_entity(
        self, name: str, entity_type: str, context: Mapping[str, Any] | None = None
    ) -> int:
        """Remember an entity on the server; return its id (the same one for the same entity).

        Raises:
            RequestError: an empty or over-size name, or a bad type or context.
            StoreError: the server's store cannot write.
        """
        body = {"name": name, "entity_type": entity_type, "context": remote.plain(context)}
        check = partial(NewEntity.create, name, entity_type, context)
        return self._post_id("/v1/entities", body, check)

    def relate_entities(
        self,
        source_id: int,
        target_id: int,
        relation_type: str,
        context: Mapping[str, Any] | None = None,
    ) -> int:
        """Link two records on the server; return the relation's id.

        Raises:
            RequestError: an id that is not a positive whole number, a bad type or context.
            RecordNotFoundError: the source or the target does not exist.
            StoreError: the server's store cannot write.
        """
        body = {
            "source_id": source_id,
            "target_id": target_id,
            "relation_type": relation_type,
            "context": remote.plain(context),
        }
        check = partial(NewRelation.create, source_id, target_id, relation_type, context)
        return self._post_id("/v1/relations", body, check)

    def consolidate(self, strategy: str = "balanced", days_back: float = 7) -> dict[str, Any]:
        """Learn from the last ``days_back`` days on the server, and tidy its memories.

        Raises:
            RequestError: an unknown strategy, or days_back not above 0.
            StoreError: the server's store cannot be read or written.
        """
        body = {"strategy": strategy, "days_back": days_back}
        content = remote.encode(
            body, lambda: (strategy_named(strategy), check_days_back(days_back))
        )
        answer: dict[str, Any] = self._call(
            "POST", "/v1/consolidate", content, self._timeouts(None)
        )
        return answer

    # ----------------------------------------------------------------------- records, policies

    def get_execution(self, execution_id: str) -> dict[str, Any] | None:
        """Return a run recorded on the server, or None for an unknown id or another tenant's.

        The dict is ``MemoryAPI.get_execution``'s: ``execution_id``, ``request``, ``result``
        and ``events``.

        Raises:
            RequestError: the id is not a string, is empty, is over 256 characters or holds a
                lone surrogate.
            StoreError: the server's store cannot be read.
        """
        path = remote.execution_path(execution_id)
        response = self._send("GET", path, None, self._timeouts(None))
        if response.status_code == 404 and remote.error_type(response) == "ExecutionNotFound":
            return None
        answer: dict[str, Any] = self._answer(response)
        return answer

    def list_policies(self) -> list[dict[str, Any]]:
        """Return the policies this token may use, each described (``describe_policy``).

        Raises:
            ServiceError: the service refused.
        """
        answer = self._call("GET", "/v1/policies", None, self._timeouts(None))
        return remote.dicts(answer, "policies", self._url)

    def get_policy(self, name: str) -> dict[str, Any]:
        """Return one policy this token may use, described (``describe_policy``).

        Raises:
            RequestError: ``name`` is not a string.
            PolicyNotFoundError: no shipped policy has this name (the message names them).
            PolicyError: the token may not use this policy.
        """
        path = remote.policy_path(name)
        answer: dict[str, Any] = self._call("GET", path, None, self._timeouts(None))
        return answer

    # ----------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the connections to the server (runs of open streams are killed)."""
        self._client.close()

    def __enter__(self) -> RemoteMemoryAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------- HTTP

    def _timeouts(self, timeout_seconds: object) -> httpx.Timeout:
        read = self._timeout
        run = finite_seconds(timeout_seconds)
        if run is not None and run > 0:  # else the server refuses it
            read = max(read, run + RUN_MARGIN_SECONDS)
        return httpx.Timeout(read, connect=CONNECT_TIMEOUT_SECONDS)

    def _batch_timeouts(self, calls: object) -> httpx.Timeout:
        if not isinstance(calls, list) or not calls:
            return self._timeouts(None)
        longest = max(
            self._timeouts(call.get("timeout_seconds") if isinstance(call, dict) else None).read
            or self._timeout
            for call in calls
        )
        # At worst the calls run one after another (a tenant limited to one run in flight).
        return httpx.Timeout(longest * len(calls), connect=CONNECT_TIMEOUT_SECONDS)

    def _post_id(self, path: str, body: dict[str, Any], check: Callable[[], object]) -> int:
        answer = self._call("POST", path, remote.encode(body, check), self._timeouts(None))
        return int(remote.field(answer, "id", int, self._url))

    def _post_results(
        self, path: str, body: dict[str, Any], check: Callable[[], object]
    ) -> list[dict[str, Any]]:
        answer = self._call("POST", path, remote.encode(body, check), self._timeouts(None))
        return remote.dicts(answer, "results", self._url)

    def _call(self, method: str, path: str, content: bytes | None, timeout: httpx.Timeout) -> Any:
        return self._answer(self._send(method, path, content, timeout))

    def _send(
        self, method: str, path: str, content: bytes | None, timeout: httpx.Timeout
    ) -> httpx.Response:
        self._check_open()
        headers = _JSON if content is not None else None
        try:
            return self._client.request(
                method, path, content=content, headers=headers, timeout=timeout
            )
        except httpx.TransportError as exc:
            raise remote.unreachable(exc, self._url) from exc

    def _answer(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise remote.refusal(response, self._url)
        answer = remote.json_of(response, self._url)
        if isinstance(answer, dict) and "error" in answer and "success" not in answer:
            # A run's error after its answer started (its 200 went out before the code ran).
            raise wire.error_from(answer, 503)
        return answer

    def _attempt(
        self, path: str, content: bytes, headers: Mapping[str, str], timeout: httpx.Timeout
    ) -> httpx.Response:
        """POST a run's request; its answer as soon as the status line and headers are in."""
        self._check_open()
        request = self._client.build_request(
            "POST", path, content=content, headers=headers, timeout=timeout
        )
        try:
            return self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise retry.send_failed(exc, self._url) from exc

    def _run_once(self, path: str, content: bytes, timeout: httpx.Timeout) -> Any:
        """One attempt of a run (or a session's opening): see :mod:`athena.service.retry`."""
        response = self._attempt(path, content, _JSON, timeout)
        try:
            response.read()
        except httpx.TransportError as exc:
            if response.status_code in retry.RETRIED_STATUSES:
                raise retry.NotStarted(remote.unreachable(exc, self._url)) from exc
            raise retry.lost_after_start(exc, self._url) from exc
        finally:
            response.close()
        refused = retry.refused_before_start(response, self._url)
        if refused is not None:
            raise refused
        return self._answer(response)

    def _check_open(self) -> None:
        if self._client.is_closed:
            raise ServiceError(f"this client of {self._url} is closed: connect again")

    def _async_client(self, timeout_seconds: object) -> httpx.AsyncClient:
        # Each async run has its own client, so cancelling it closes that run's connection
        # alone; they share one TLS context, which takes milliseconds to build.
        if self._tls is None and self._async_transport is None:
            self._tls = httpx.create_ssl_context()
        return httpx.AsyncClient(
            base_url=self._url,
            headers=self._headers,
            timeout=self._timeouts(timeout_seconds),
            transport=self._async_transport,
            verify=self._tls or True,
        )

    async def _aresult(
        self, response: httpx.Response, on_event: Callable[[dict[str, Any]], None] | None
    ) -> dict[str, Any]:
        if not remote.is_event_stream(response):
            await response.aread()
            raise remote.refusal(response, self._url)
        async for sse in EventSource(response).aiter_sse():
            event = remote.event_of(sse, self._url)
            if event is None:
                continue
            event = wire.event_from_wire(event)
            if on_event is not None:
                await asyncio.to_thread(on_event, event)
            if event.get("type") == "exit":
                return remote.exit_result(event, self._url)
        raise remote.no_exit(self._url)

    def _open_stream(
        self, content: bytes, timeout: httpx.Timeout, path: str = "/v1/execute/stream"
    ) -> remote.EventStream:
        return retry.run_retrying(partial(self._open_stream_once, content, timeout, path))

    def _open_stream_once(
        self, content: bytes, timeout: httpx.Timeout, path: str
    ) -> remote.EventStream:
        response = self._attempt(path, content, _SSE, timeout)
        if not remote.is_event_stream(response):
            try:
                response.read()
            except httpx.TransportError as exc:
                raise remote.unreachable(exc, self._url) from exc
            finally:
                response.close()
            raise retry.refused_before_start(response, self._url) or remote.refusal(
                response, self._url
            )
        return remote.EventStream(response, self._url)
