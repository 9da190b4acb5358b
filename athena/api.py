r"""MemoryAPI: what an agent calls to run code in a sandbox, remember, recall and learn.

The composition root: it opens the memory store with its :class:`~memory_store.StoreOptions`,
builds an :class:`~orchestrator.orchestrator.Orchestrator` that records every run in that
store, turns plain values into checked inputs, and results back into plain dicts.

Every memory method checks its arguments (``RequestError`` saying what to change), works
through the :class:`~memory_store.protocol.Store` protocol, and returns plain ints, bools,
dicts and lists. Values such as memory types, event types, outcomes, categories, entity and
relation types are free-form: trimmed and lower-cased (``"Failure "`` is stored as
``"failure"``). Every text argument must be valid Unicode (a lone surrogate such as
``"\ud800"`` is a ``RequestError`` naming the argument), and contexts nest at most 64 levels
of dicts and lists.

Tenants: an API acts for one tenant (``default`` unless ``create(tenant=...)`` says otherwise);
:meth:`MemoryAPI.for_tenant` gives another tenant's view sharing the orchestrator, settings and
store connections. A tenant sees only its own records, and its runs are filed under it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from athena.policies import describe_policy, get_shipped_policy, shipped_policies
from athena.procedures import generate, validate_code
from athena.sessions import SandboxSession, output_listener
from athena.settings import Settings
from memory_store import checks
from memory_store.consolidation.strategies import days_back as check_days_back
from memory_store.consolidation.strategies import strategy_named
from memory_store.embeddings import EmbeddingsMode
from memory_store.errors import MissingExtraError, RecordNotFoundError
from memory_store.factory import open_store
from memory_store.protocol import Store
from memory_store.records import CodeGenerator, ProcedureRecord
from memory_store.requests import (
    EventQuery,
    NewEntity,
    NewEvent,
    NewMemory,
    NewProcedure,
    NewRelation,
    RecallQuery,
)
from orchestrator.backends.base import Backend
from orchestrator.errors import PolicyError, RequestError
from orchestrator.models import DEFAULT_TENANT, Event, ExecutionRequest, check_tenant, check_text
from orchestrator.orchestrator import Orchestrator
from orchestrator.packages import check_requirements_allowed
from orchestrator.policy import Policy, load_policy
from orchestrator.sessions import SessionLimits, check_limit
from orchestrator.settings import Settings as OrchestratorSettings

if TYPE_CHECKING:
    from athena.service.client import RemoteMemoryAPI

PolicySpec = Policy | Mapping[str, Any] | str | os.PathLike[str] | None
MAX_EXECUTION_ID_CHARS = 256
"""The longest execution id ``get_execution`` looks up (ids made here are 32 hex digits)."""
_SERVICE_MODULES = frozenset({"httpx", "httpx_sse", "httpcore"})
_CALL_KEYS = frozenset(
    {
        "code",
        "language",
        "parameters",
        "timeout_seconds",
        "sandbox_policy",
        "track_resources",
        "record",
        "files",
        "capture_figures",
        "image",
        "requirements",
    }
)


class MemoryAPI:
    """Runs code in throwaway sandboxes, persists every run, and remembers what agents learn.

    Build one with :meth:`create`; close it (or use ``with``) to release the store and kill
    runs still going. Running code: :meth:`execute_code` and its stream, async and batch
    forms, :meth:`prewarm`. Memory: :meth:`remember`, :meth:`recall`, :meth:`forget`,
    :meth:`remember_event`, :meth:`recall_events`, :meth:`remember_procedure`,
    :meth:`generate_procedure_code`, :meth:`validate_procedure_code`,
    :meth:`remember_entity`, :meth:`relate_entities`, :meth:`consolidate`. Records and
    policies: :meth:`get_execution`, :meth:`list_policies`, :meth:`get_policy`. Tenants:
    :attr:`tenant`, :meth:`for_tenant`; a remote sandbox: :meth:`connect`.

    Args:
        store: the store (or a tenant's view of it) this API reads and writes; the API acts
            for its tenant.
        orchestrator: runs the code (and records it, when built with a recorder).
        settings: the application's settings.
        code_generator: what ``generate_procedure_code`` uses instead of its template.
    """

    def __init__(
        self,
        store: Store,
        orchestrator: Orchestrator,
        settings: Settings,
        *,
        code_generator: CodeGenerator | None = None,
    ) -> None:
        self._store = store
        self._orchestrator = orchestrator
        self._settings = settings
        self._code_generator = code_generator
        self._tenant = store.tenant
        self._owned: Store | None = None  # what close() closes besides the orchestrator
        self._is_view = False  # a for_tenant view closes nothing

    @classmethod
    def create(
        cls,
        db_path: str | os.PathLike[str] | None = None,
        *,
        settings: Settings | OrchestratorSettings | None = None,
        backends: Sequence[Backend] | None = None,
        embeddings: EmbeddingsMode | None = None,
        code_generator: CodeGenerator | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> MemoryAPI:
        """Open the memory store and an orchestrator, for one tenant.

        Args:
            db_path: the store: a SQLite path or ``sqlite:///`` URL, or a
                ``postgresql://user:password@host/database`` URL (the ``postgres`` extra).
                None: ``settings.store.target`` (``ATHENA_MEMORY_URL``, then
                ``ATHENA_MEMORY_DB``), then ``~/.athena/memory.db``.
            settings: the application's settings (:class:`athena.settings.Settings`: the
                orchestrator's and the store's), or the orchestrator's alone, the store's
                options then coming from the environment (default: everything from
                ``ATHENA_*`` environment variables).
            backends: isolation backends (default: Docker).
            embeddings: ``auto`` (hybrid ranking when the embeddings extra is installed),
                ``on`` (required) or ``off``; None: ``settings.store.embeddings``
                (``ATHENA_MEMORY_EMBEDDINGS``, else auto).
            code_generator: what ``generate_procedure_code`` uses instead of its template
                (any callable from a procedure record to Python source).
            tenant: whose records this API reads and writes, and whose runs it files
                (1 to 64 of a-z, 0-9, ``_``, ``.``, ``-``; :meth:`for_tenant` gives others).

        Raises:
            RequestError: ``tenant`` is not a valid tenant name.
            StoreConfigError: the store path or URL cannot be used.
            StoreError: the store cannot be opened (e.g. the PostgreSQL server refuses).
            MissingExtraError: embeddings are ``on`` but the embeddings extra is not installed,
                or a PostgreSQL URL is given without the postgres extra.
        """
        check_tenant(tenant)
        chosen = Settings.of(settings)
        chosen = chosen.model_copy(update={"store": chosen.store.with_embeddings(embeddings)})
        store = open_store(db_path, chosen.store)
        # The orchestrator records every tenant's runs in the store, each under its own tenant.
        orchestrator = Orchestrator(settings=chosen.orchestrator, backends=backends, recorder=store)
        view = store if tenant == store.tenant else store.scoped(tenant)
        api = cls(view, orchestrator, chosen, code_generator=code_generator)
        api._owned = store
        return api

    @classmethod
    def connect(
        cls, url: str, token: str | None = None, *, timeout: float = 300.0
    ) -> RemoteMemoryAPI:
        """Return a client of a remote sandbox (``athena-sandbox serve``) with this API's methods.

        The client has the same methods, signatures, result dicts and exceptions; it needs the
        ``service`` extra (``pip install 'athena-sandbox[service]'``).

        Args:
            url: the server, e.g. ``http://127.0.0.1:8000``.
            token: the bearer token (``athena-sandbox tokens add``); None for a server
                without tokens.
            timeout: seconds to wait for an answer (a run may take up to its timeout).

        Raises:
            MissingExtraError: the service extra (httpx) is not installed.
            RequestError: a URL or token the client cannot use.
        """
        try:
            from athena.service.client import RemoteMemoryAPI
        except ImportError as exc:
            if (exc.name or "").split(".")[0] in _SERVICE_MODULES:
                raise MissingExtraError(
                    "MemoryAPI.connect needs the service extra: "
                    "pip install 'athena-sandbox[service]'"
                ) from exc
            raise
        return RemoteMemoryAPI(url, token, timeout=timeout)

    @property
    def tenant(self) -> str:
        """The tenant this API acts for: its records, and the runs it starts."""
        return self._tenant

    def for_tenant(self, tenant: str) -> MemoryAPI:
        """Return this API for another tenant, sharing orchestrator, settings and connections.

        Runs the view starts are filed under ``tenant``, and it sees only that tenant's
        records. Closing the view closes nothing shared (close this API for that).

        Raises:
            RequestError: ``tenant`` is not a valid tenant name.
        """
        check_tenant(tenant)
        view = MemoryAPI(
            self._store.scoped(tenant),
            self._orchestrator,
            self._settings,
            code_generator=self._code_generator,
        )
        view._is_view = True
        return view

    @property
    def store(self) -> Store:
        """The memory store runs are recorded in (this API's tenant's view of it)."""
        return self._store

    @property
    def orchestrator(self) -> Orchestrator:
        """The orchestrator that runs the code."""
        return self._orchestrator

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
        """Run code in a never-used sandbox and return the result as a plain dict.

        The dict always has: success, execution_id, stdout, stderr, exit_code,
        execution_time_ms, violations, violation_details, sandbox_id, language, timestamp,
        sandbox_mode, isolation, output, error, error_type, issues (and policy,
        timeout_seconds, resources, total_time_ms, session_id (None), session_state (None),
        files and artifacts: lists of ``{name, size, sha256, mime_type, content}`` with the
        bytes of what the code wrote under ``/workspace/out`` and of the figures it left
        open or showed, as PNG). A run that could not happen (no Docker
        engine, a missing image, NUL bytes the language cannot take, a full queue) gives
        ``success: False`` with ``error`` and ``error_type``; rejected code gives
        ``error: "Code validation failed"`` and ``issues``.

        Args:
            code: the source text.
            language: a language of ``orchestrator.languages.LANGUAGES`` or an alias
                (case-insensitive), e.g. python, javascript (js, node) or bash (sh).
            parameters: a JSON object handed to the code as data.
            timeout_seconds: seconds before the run is killed; capped by the policy's limit.
            sandbox_policy: a shipped name, a YAML path, a dict or a Policy; None: strict.
            track_resources: add cgroup figures (peak memory, CPU time, wall time).
            record: persist the run in the memory store.
            on_stdout: called with each chunk of stdout as it arrives.
            on_stderr: called with each chunk of stderr as it arrives.
            files: files written under ``/workspace`` before the code starts, name -> bytes
                or str (relative names; at most the policy's ``files.max_in_bytes`` in all).
            capture_figures: return the matplotlib figures the code leaves open or shows as
                PNG ``artifacts`` (python).
            image: a custom image built with ``athena-sandbox build-image`` (FROM this
                language's image); None: the policy's ``image``, else the language's own.
            requirements: packages installed before the code starts, through the egress
                proxy: pip specs for python (``["requests==2.32.3"]``), npm specs for
                javascript (``["lodash"]``); the install counts against the timeout. A failed
                install fails the run: the code does not run, exit code 1, pip's or npm's
                error on stderr and a ``policy:`` violation of kind ``requirements``.

        Raises:
            RequestError: bad arguments (unknown language, timeout <= 0, parameters that are not
                JSON-serialisable, code over the size limit, a file name that is absolute or
                has ``..``, files over the policy's ``files.max_in_bytes``, requirements that
                are not plain package specs).
            PolicyError: an unknown or invalid policy, or requirements the policy cannot
                install (the message names the policy and the key to change).
        """
        request = self._request(
            code,
            language,
            parameters,
            timeout_seconds,
            sandbox_policy,
            track_resources,
            record,
            files=files,
            capture_figures=capture_figures,
            image=image,
            requirements=requirements,
        )
        listener = output_listener(on_stdout, on_stderr)
        return self._orchestrator.execute(request, on_event=listener).to_dict()

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
        """Run code and yield its events as they happen, as plain dicts.

        Each event has ``type``: ``begin``, ``stdout``/``stderr`` (with ``text``),
        ``violation`` (with ``violation`` and ``detail``) and, last, ``exit`` (with
        ``exit_code`` and ``result``, the dict :meth:`execute_code` returns). Closing the
        iterator early kills the run.

        Arguments are :meth:`execute_code`'s.

        Raises:
            RequestError: bad arguments, as :meth:`execute_code` (before anything runs).
            PolicyError: an unknown or invalid policy.
        """
        request = self._request(
            code,
            language,
            parameters,
            timeout_seconds,
            sandbox_policy,
            track_resources,
            record,
            files=files,
            capture_figures=capture_figures,
            image=image,
            requirements=requirements,
        )
        return (event.to_dict() for event in self._orchestrator.stream(request))

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

        Args:
            code: as :meth:`execute_code`, and so are the other arguments but ``on_event``.
            language: as :meth:`execute_code`.
            parameters: as :meth:`execute_code`.
            timeout_seconds: as :meth:`execute_code`.
            sandbox_policy: as :meth:`execute_code`.
            track_resources: as :meth:`execute_code`.
            record: as :meth:`execute_code`.
            on_event: called from a worker thread with each event dict as it happens, those
                :meth:`execute_code_stream` yields (the ``exit`` event, with the result, last).
            files: as :meth:`execute_code`.
            capture_figures: as :meth:`execute_code`.
            image: as :meth:`execute_code`.
            requirements: as :meth:`execute_code`.
            on_dispatch: called from a worker thread just before the code is handed to its
                sandbox; the run waits for it to return. Not called for a run refused or
                failed before that point, so a caller knows whether the code could have run.

        Raises:
            RequestError: bad arguments, as :meth:`execute_code`.
            PolicyError: an unknown or invalid policy.
        """
        request = self._request(
            code,
            language,
            parameters,
            timeout_seconds,
            sandbox_policy,
            track_resources,
            record,
            files=files,
            capture_figures=capture_figures,
            image=image,
            requirements=requirements,
        )
        listener = None if on_event is None else _dict_listener(on_event)
        result = await self._orchestrator.aexecute(
            request, on_event=listener, on_dispatch=on_dispatch
        )
        return result.to_dict()

    def execute_code_batch(
        self, calls: Sequence[Mapping[str, Any]], concurrency: int = 4
    ) -> list[dict[str, Any]]:
        """Run several calls, ``concurrency`` at a time; return their dicts in the same order.

        Each call is a mapping of :meth:`execute_code`'s arguments (``code`` required). Every
        call is checked before any runs.

        Raises:
            RequestError: a call has bad arguments (the message names its index), or
                ``concurrency`` is not a whole number of at least 1.
            PolicyError: a call names an unknown or invalid policy.
        """
        requests = self._checked_calls(calls, concurrency)
        return [r.to_dict() for r in self._orchestrator.run_many(requests, concurrency)]

    async def execute_code_batch_async(
        self, calls: Sequence[Mapping[str, Any]], concurrency: int = 4
    ) -> list[dict[str, Any]]:
        """Like :meth:`execute_code_batch`, for asyncio.

        Cancelling the awaiting task kills the runs still going and starts no more (each is
        recorded as cancelled); the service runs batches this way, so a client that leaves
        or a drain stops them.

        Raises:
            RequestError: a call has bad arguments (the message names its index), or
                ``concurrency`` is not a whole number of at least 1.
            PolicyError: a call names an unknown or invalid policy.
        """
        requests = self._checked_calls(calls, concurrency)
        gate = asyncio.Semaphore(concurrency)

        async def one(request: ExecutionRequest) -> dict[str, Any]:
            async with gate:
                return (await self._orchestrator.aexecute(request)).to_dict()

        tasks = [asyncio.ensure_future(one(request)) for request in requests]
        try:
            await asyncio.wait(tasks)  # unlike gather, cancelling this leaves the tasks to us
        except asyncio.CancelledError:  # every run is killed and recorded before we go on,
            for task in tasks:  # even if we are cancelled again meanwhile (as arun is)
                task.cancel()
            while not all(task.done() for task in tasks):
                try:
                    await asyncio.wait(tasks)
                except asyncio.CancelledError:
                    continue
            raise
        return [task.result() for task in tasks]

    def _checked_calls(
        self, calls: Sequence[Mapping[str, Any]], concurrency: int
    ) -> list[ExecutionRequest]:
        """Every call as a checked request, before any runs (mounts too)."""
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise RequestError(
                f"concurrency must be a whole number of at least 1, not {concurrency!r}"
            )
        requests = []
        for index, call in enumerate(calls):
            try:
                request = self._request_from_call(call)
                self._orchestrator.check(request)  # mounts too: nothing runs if any call is bad
            except (RequestError, PolicyError) as exc:
                raise type(exc)(f"calls[{index}]: {exc}") from exc
            requests.append(request)
        return requests

    # ------------------------------------------------------------------ sessions

    def open_session(
        self,
        language: str = "python",
        sandbox_policy: PolicySpec = None,
        idle_timeout_seconds: float = 600,
        max_lifetime_seconds: float = 3600,
        *,
        image: str | None = None,
        requirements: Sequence[str] | None = None,
    ) -> SandboxSession:
        """Open a session: calls that share one interpreter, in a sandbox of its own.

        Python keeps globals and imports between calls, JavaScript its global scope, bash its
        working directory, variables and functions; files under ``/workspace`` stay for the
        session's life. The session ends with ``close()`` (or leaving its ``with`` block),
        after ``idle_timeout_seconds`` without a call, after ``max_lifetime_seconds``, at a
        call's memory or process violation, or when this API closes; later calls raise
        ``SessionEndedError`` saying why.

        Args:
            language: python, javascript or bash (or an alias).
            sandbox_policy: as :meth:`execute_code`; every call of the session runs under it.
            idle_timeout_seconds: the session ends after this long without a call.
            max_lifetime_seconds: the session ends this long after it opened.
            image: a custom image (see :meth:`execute_code`).
            requirements: packages installed once, as the session opens (an internal call, not
                recorded; see :meth:`execute_code`); they last for the session's life.

        Raises:
            RequestError: a language without sessions, or limits that are not positive
                numbers of seconds (at most a week), or requirements that are not plain specs.
            PolicyError: an unknown or invalid policy, or requirements it cannot install.
            RequestError: the requirements could not be installed (the message has the
                installer's error); the session is closed.
            QueueFullError: too many sessions are open in this process.
            RunError: no Docker engine, or the session's sandbox could not start.
        """
        policy = load_policy(sandbox_policy)
        limits = SessionLimits(
            idle_timeout=check_limit(idle_timeout_seconds, "idle_timeout_seconds"),
            max_lifetime=check_limit(max_lifetime_seconds, "max_lifetime_seconds"),
        )
        probe = self._request(
            "", language, None, None, policy, False, False, image=image, requirements=requirements
        )
        session = self._orchestrator.open_session(
            probe.language, policy, tenant=self._tenant, limits=limits, image=probe.image
        )
        opened = SandboxSession(self, session, policy)
        if probe.requirements:
            try:
                opened._install(probe.requirements)
            except BaseException:
                opened.close()
                raise
        return opened

    def session(self, session_id: str) -> SandboxSession:
        """The open session of this id (this API's tenant's).

        Raises:
            SessionEndedError: no open session of this tenant has this id.
        """
        session = self._orchestrator.session(session_id, tenant=self._tenant)
        policy = load_policy(session.policy_config)
        return SandboxSession(self, session, policy)

    def sessions(self) -> list[dict[str, Any]]:
        """The open sessions of this API's tenant, oldest first: each one's ``info()``."""
        return [s.info() for s in self._orchestrator.sessions(tenant=self._tenant)]

    def replay_session(
        self,
        session_id: str,
        *,
        idle_timeout_seconds: float = 600,
        max_lifetime_seconds: float = 3600,
        files: Mapping[str, bytes | str] | None = None,
    ) -> SandboxSession:
        """Open a new session and run a recorded session's calls in it, in order.

        The new session has the recorded session's language, policy and image; its
        ``replayed`` attribute holds the result of each call run again. What a record does not
        keep cannot come back: input files (give them again with ``files``, written before the
        first call) and parameters a policy redacted (those calls get ``{}``).

        Raises:
            RequestError: no recorded call has this session id (for this tenant).
            SessionEndedError, RunError: as :meth:`open_session`.
        """
        calls = self._store.session_calls(check_text(session_id, "session_id"))
        if not calls:
            raise RequestError(
                f"no recorded calls of session {session_id[:80]!r} for tenant {self._tenant!r}: "
                "only recorded calls (record=True) can be replayed"
            )
        first = calls[0]
        policy = load_policy(first.policy_config) if first.policy_config else first.policy
        session = self.open_session(
            first.language,
            policy,
            idle_timeout_seconds,
            max_lifetime_seconds,
            image=first.image,
        )
        try:
            for index, call in enumerate(calls):
                result = session.execute_code(
                    call.code,
                    call.parameters,
                    call.requested_timeout_seconds,
                    files if index == 0 else None,
                    capture_figures=call.capture_figures,
                )
                session.replayed.append(result)
        except BaseException:
            session.close()
            raise
        return session

    def prewarm(self, language: str = "python", sandbox_policy: PolicySpec = None) -> bool:
        """Fill the warm pool of (language, policy) now, so the next run skips a cold start."""
        return self._orchestrator.prewarm(language, load_policy(sandbox_policy))

    def _request(
        self,
        code: str,
        language: str,
        parameters: Mapping[str, Any] | None,
        timeout_seconds: float | None,
        sandbox_policy: PolicySpec,
        track_resources: bool,
        record: bool,
        *,
        files: Mapping[str, Any] | None = None,
        capture_figures: bool = True,
        image: str | None = None,
        session_id: str | None = None,
        requirements: Sequence[str] | None = None,
    ) -> ExecutionRequest:
        request = ExecutionRequest.create(
            code,
            language,
            parameters,
            timeout_seconds,
            sandbox_policy if isinstance(sandbox_policy, Policy) else load_policy(sandbox_policy),
            track_resources=track_resources,
            record=record,
            max_code_bytes=self._settings.orchestrator.max_code_bytes,
            max_parameters_bytes=self._settings.orchestrator.max_parameters_bytes,
            tenant=self._tenant,
            files=files,
            capture_figures=capture_figures,
            image=image,
            session_id=session_id,
            requirements=requirements,
        )
        check_requirements_allowed(
            request.requirements, request.language, request.policy, self._settings.orchestrator
        )
        return request

    def _request_from_call(self, call: Mapping[str, Any]) -> ExecutionRequest:
        if not isinstance(call, Mapping):
            raise RequestError(
                f"a call must be a dict of execute_code's arguments, not {type(call).__name__}"
            )
        for flag in ("track_resources", "record"):
            if not isinstance(call.get(flag, False), bool):
                raise RequestError(f"'{flag}' must be true or false, not {call[flag]!r}")
        unknown = set(call) - _CALL_KEYS
        if unknown or "code" not in call:
            raise RequestError(
                f"a call needs 'code' and may have {', '.join(sorted(_CALL_KEYS - {'code'}))}"
                + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else "")
            )
        return self._request(
            call["code"],
            call.get("language", "python"),
            call.get("parameters"),
            call.get("timeout_seconds"),
            call.get("sandbox_policy"),
            call.get("track_resources", False),
            call.get("record", True),
            files=call.get("files"),
            capture_figures=call.get("capture_figures", True),
            image=call.get("image"),
            requirements=call.get("requirements"),
        )

    @property
    def _max_bytes(self) -> int:
        return self._settings.store.max_memory_bytes

    def remember(
        self,
        content: str,
        memory_type: str = "semantic",
        context: Mapping[str, Any] | None = None,
        tags: list[str] | str | None = None,
    ) -> int:
        """Remember a piece of knowledge; return its id.

        Args:
            content: the text (not empty; at most ``max_memory_bytes``, 1 MiB by default).
            memory_type: free-form: semantic, episodic, procedural, preference...
            context: JSON data to keep with it (``recall(context=...)`` filters on it).
            tags: words to file it under (tag it ``pinned`` to keep it from decay and pruning).

        Raises:
            RequestError: empty or over-size content, or a bad type, context or tags.
            StoreError: the store cannot write.
        """
        memory = NewMemory.create(content, memory_type, context, tags, max_bytes=self._max_bytes)
        return self._store.add_memory(memory)

    def recall(
        self,
        query: str,
        limit: int = 5,
        context: Mapping[str, Any] | None = None,
        kinds: list[str] | str | None = None,
    ) -> list[dict[str, Any]]:
        """Return what the store knows that best matches ``query``, best first.

        Searches memories, events, executions, procedures and entities (``kinds`` narrows,
        e.g. ``["memory", "execution"]``). Ranking: BM25 keyword scores (stemmed, stop words
        dropped, identifiers split, so ``division by zero`` finds ``ZeroDivisionError``),
        fused with vector similarity by reciprocal rank fusion when the embeddings extra is
        installed, weighted mildly by recency and importance. Any text is a valid query:
        quotes, operators and SQL are just words.

        Each result is a dict: ``id`` (forget takes it), ``kind``, ``content`` (an
        execution's one-line summary, a procedure's name and steps, an entity's name),
        ``tags`` (a memory's; others have none), ``score`` (0..1, higher is better; the best
        keyword match scores about 1), ``created_at`` (ISO 8601, UTC), ``type`` (the memory
        or event type, an execution's language, a procedure's category, an entity's type) and
        ``context`` (the record's context with its own fields, e.g. ``language``,
        ``outcome``, ``memory_type``).

        Args:
            query: the words to look for.
            limit: how many results at most (1..1000).
            context: a filter: only records whose context has each of these key/value pairs.
            kinds: the kinds to search (default: all five; plurals are accepted).

        Raises:
            RequestError: an empty query, a bad limit, an unknown kind or a bad context.
            StoreError: the store cannot be read.
        """
        hits = self._store.recall(RecallQuery.create(query, limit, context, kinds))
        return [hit.to_dict() for hit in hits]

    def forget(self, memory_id: int) -> bool:
        """Forget a record of any kind by id; return False when no record has that id.

        Forgetting also removes what hangs on the record: its relations and, for an
        execution, its event.

        Raises:
            RequestError: the id is not a positive whole number.
            StoreError: the store cannot write.
        """
        return self._store.forget(checks.object_id(memory_id, "memory_id"))

    def remember_event(
        self,
        event_type: str,
        content: str,
        outcome: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> int:
        """Remember something that happened; return its id.

        Args:
            event_type: free-form: action, decision, error, observation...
            content: what happened.
            outcome: free-form: success, failure, partial, unknown... (or None).
            context: JSON data to keep with it.

        Raises:
            RequestError: empty or over-size content, or a bad type, outcome or context.
            StoreError: the store cannot write.
        """
        event = NewEvent.create(event_type, content, outcome, context, max_bytes=self._max_bytes)
        return self._store.add_event(event)

    def recall_events(
        self,
        query: str | None = None,
        event_type: str | None = None,
        start_date: Any = None,
        end_date: Any = None,
        limit: int = 10,
    ) -> list[dict[str, Any]]:
        """Return events, newest first, or ranked by ``query`` when it is given.

        Each is a dict: ``id``, ``kind`` (``event``), ``event_type``, ``content``,
        ``outcome``, ``context``, ``created_at`` (ISO 8601, UTC) and ``score`` (0..1 with a
        query, else None). Runs recorded by ``execute_code`` appear as ``execution`` events.

        Args:
            query: words to rank by (None: no ranking; a query without words matches nothing).
            event_type: only events of this type.
            start_date: only events at or after this (datetime, date or ISO 8601 string).
            end_date: only events before this (a bare date includes that whole day).
            limit: how many at most (1..1000).

        Raises:
            RequestError: a bad type, date or limit, or an end before the start.
            StoreError: the store cannot be read.
        """
        query_ = EventQuery.create(query, event_type, start_date, end_date, limit)
        return [hit.to_dict() for hit in self._store.recall_events(query_)]

    def remember_procedure(
        self,
        name: str,
        steps: list[Any],
        category: str = "general",
        context: Mapping[str, Any] | None = None,
    ) -> int:
        """Remember how to do something, as ordered steps; return its id.

        Args:
            name: what the procedure is called.
            steps: strings, or dicts with a ``description`` (or ``action``), an optional
                ``name`` and optional Python ``code`` that the generated step runs.
            category: free-form: general, analysis, deployment...
            context: JSON data to keep with it.

        Raises:
            RequestError: an empty name, no steps, a step without a description, over-size.
            StoreError: the store cannot write.
        """
        procedure = NewProcedure.create(name, steps, category, context, max_bytes=self._max_bytes)
        return self._store.add_procedure(procedure)

    def generate_procedure_code(
        self, procedure_id: int, generator: CodeGenerator | None = None
    ) -> dict[str, Any]:
        """Turn a remembered procedure into runnable Python, and validate it.

        Without a model: a module with a docstring, one typed, documented function per step
        that logs what it does, ``main()`` with error handling, and an ``if __name__ ==
        "__main__":`` block; it runs under the strict policy. ``generator`` (or the one given
        to ``MemoryAPI.create``) replaces the template: any callable taking the procedure
        record and returning source text.

        Returns:
            ``{success, procedure_id, code, confidence, validation, issues, generator,
            duration_seconds, timestamp}``; ``confidence`` is the validation's quality score.
            A generator that fails, or returns text with a lone surrogate, gives ``success:
            False`` with the reason in ``issues``.

        Raises:
            RequestError: the id is not a positive whole number.
            RecordNotFoundError: no procedure has this id.
            StoreError: the store cannot be read.
        """
        procedure = self._procedure(procedure_id)
        custom = generator or self._code_generator
        made = generate(procedure, None if custom is None else _checked(custom))
        return made.to_dict()

    def validate_procedure_code(self, code: str, procedure_id: int | None = None) -> dict[str, Any]:
        """Check Python code: syntax, security (strict policy), docstrings, errors, type hints.

        Returns:
            ``{success, procedure_id, quality_score, checks: {syntax, security, docstring,
            error_handling, type_hints}, issues, duration_seconds, timestamp}``; ``success``
            means it parses and breaks no strict rule; ``quality_score`` is in [0, 1].

        Raises:
            RequestError: ``code`` is not a string, or holds a lone surrogate.
            RecordNotFoundError: ``procedure_id`` is given and no procedure has it.
            StoreError: the store cannot be read.
        """
        if not isinstance(code, str):
            raise RequestError(f"code must be a string, not {type(code).__name__}")
        check_text(code, "code")
        checked = None if procedure_id is None else self._procedure(procedure_id).id
        return validate_code(code, checked).to_dict()

    def _procedure(self, procedure_id: object) -> ProcedureRecord:
        object_id = checks.object_id(procedure_id, "procedure_id")
        record = self._store.get(object_id)
        if not isinstance(record, ProcedureRecord):
            kind = self._store.kind_of(object_id)
            what = "no record has this id" if kind is None else f"that record is of kind {kind!r}"
            raise RecordNotFoundError(f"procedure_id {object_id}: {what}, not a procedure")
        return record

    def remember_entity(
        self, name: str, entity_type: str, context: Mapping[str, Any] | None = None
    ) -> int:
        """Remember an entity (a person, service, dataset, process...); return its id.

        The same type and name again (case-insensitively) returns the same id, with the new
        context merged over the old.

        Raises:
            RequestError: an empty or over-size name, or a bad type or context.
            StoreError: the store cannot write.
        """
        entity = NewEntity.create(name, entity_type, context, max_bytes=self._max_bytes)
        return self._store.add_entity(entity)

    def relate_entities(
        self,
        source_id: int,
        target_id: int,
        relation_type: str,
        context: Mapping[str, Any] | None = None,
    ) -> int:
        """Link two records (entities, or records of any kind); return the relation's id.

        The same link (source, target, type) again returns the same id, its context replaced.
        Forgetting either end forgets the relation.

        Raises:
            RequestError: an id that is not a positive whole number, a bad type or context.
            RecordNotFoundError: the source or the target does not exist.
            StoreError: the store cannot write.
        """
        relation = NewRelation.create(
            source_id, target_id, relation_type, context, max_bytes=self._max_bytes
        )
        return self._store.add_relation(relation)

    def consolidate(self, strategy: str = "balanced", days_back: float = 7) -> dict[str, Any]:
        """Learn from the last ``days_back`` days, and tidy the memories.

        Groups similar executions (failures by language and error signature, successes by
        their first line of code) and events into semantic pattern memories tagged
        ``pattern`` with counts (running it again updates the counts), merges near-duplicate
        memories into the older one, decays unused memories and prunes those that decayed
        below the strategy's floor. Strategies, from least to most work: ``minimal``,
        ``speed``, ``balanced``, ``quality`` (see :mod:`memory_store.consolidation.strategies`).

        Returns:
            ``{strategy, days_back, patterns_created, patterns_updated, memories_merged,
            memories_decayed, memories_pruned, executions_scanned, events_scanned,
            vectors_added, duration_seconds}``.

        Raises:
            RequestError: an unknown strategy, or days_back not above 0.
            StoreError: the store cannot be read or written.
        """
        chosen = strategy_named(strategy)
        return self._store.consolidate(chosen, check_days_back(days_back)).to_dict()

    # ------------------------------------------------------------------ records and policies

    def get_execution(self, execution_id: str) -> dict[str, Any] | None:
        """Return a recorded run of this tenant: what was asked, what happened, its events.

        Returns:
            ``{"execution_id", "request": {"code", "language", "parameters" (``{}`` when
            they were redacted), "policy" (the whole policy config, name included),
            "timeout_seconds" (what the caller asked; None when they did not)}, "result":
            <the dict execute_code returned>, "events": [<the event dicts execute_code_stream
            yielded, the exit event with its result last>]}``; None when no run of this
            tenant has the id. Output past the policy's ``max_output_bytes`` is cut from the
            events as from the result. Runs recorded before schema version 3 have no events.

        Raises:
            RequestError: the id is not a string, is empty, is over 256 characters or holds
                a lone surrogate.
            StoreError: the store cannot be read.
        """
        record = self._store.get_execution(check_execution_id(execution_id))
        if record is None:
            return None
        return {
            "execution_id": record.execution_id,
            "request": {
                "code": record.code,
                "language": record.language,
                "parameters": record.parameters,
                "policy": record.policy_config,
                "timeout_seconds": record.requested_timeout_seconds,
            },
            "result": record.result,
            "events": record.events,
        }

    def list_policies(self) -> list[dict[str, Any]]:
        """Return the shipped policies, each described: what it allows, in a dict and a sentence.

        Each is ``athena.policies.describe_policy``'s dict: ``name``, ``description``,
        ``summary`` (one sentence: network, mounts, memory, CPUs, processes, timeout,
        validation, isolation modes), ``network``, ``mounts``, ``limits``, ``fallback`` and
        the whole ``config``.
        """
        return shipped_policies()

    def get_policy(self, name: str) -> dict[str, Any]:
        """Return one shipped policy, described as :meth:`list_policies` describes each.

        Raises:
            RequestError: ``name`` is not a string.
            PolicyNotFoundError: no shipped policy has this name (the message names them).
        """
        return describe_policy(get_shipped_policy(name))

    def close(self) -> None:
        """Kill runs still going and close the store; a :meth:`for_tenant` view closes nothing."""
        if self._is_view:
            return
        self._orchestrator.close()
        (self._owned or self._store).close()

    def __enter__(self) -> MemoryAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dict_listener(on_event: Callable[[dict[str, Any]], None]) -> Callable[[Event], None]:
    def listen(event: Event) -> None:
        on_event(event.to_dict())

    return listen


def check_execution_id(execution_id: object) -> str:
    """Return ``execution_id`` if it can name a run (the remote client checks the same).

    Raises:
        RequestError: not a string, empty, over ``MAX_EXECUTION_ID_CHARS`` characters, or
            holding a lone surrogate.
    """
    if not isinstance(execution_id, str):
        raise RequestError(f"execution_id must be a string, not {type(execution_id).__name__}")
    if not execution_id or len(execution_id) > MAX_EXECUTION_ID_CHARS:
        raise RequestError(
            f"execution_id must be 1 to {MAX_EXECUTION_ID_CHARS} characters "
            f"(execute_code's result has it), not {len(execution_id)}"
        )
    check_text(execution_id, "execution_id")
    return execution_id


def _checked(generator: CodeGenerator) -> CodeGenerator:
    """Wrap a caller's generator so that code UTF-8 cannot encode counts as its failure."""

    def checked(procedure: ProcedureRecord) -> str:
        code = generator(procedure)
        if isinstance(code, str):  # anything else: generate() reports it
            check_text(code, "the generated code")
        return code

    checked.__name__ = getattr(generator, "__name__", "custom")  # what the result names
    return checked
