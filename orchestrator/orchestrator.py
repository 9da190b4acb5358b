"""The Orchestrator: validate -> choose backend -> run -> record.

``run`` is the typed core: it returns an :class:`ExecutionResult` or raises a :class:`RunError`
(with the recorded failed result attached as ``exc.result``). ``execute`` never raises a
``RunError``: it returns that failed result instead, which is what the dict API wants. Around
them: ``stream`` (events as they happen), ``arun``/``aexecute`` (asyncio; cancelling the task
kills the run) and ``run_many`` (a batch, results in order). The orchestrator is thread-safe;
runs beyond ``max_concurrent_runs`` wait in a bounded queue.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Protocol

import structlog

from orchestrator.admission import Admission
from orchestrator.backends.base import Backend
from orchestrator.context import ExecutionContext, Listener
from orchestrator.errors import (
    BackendUnavailableError,
    CodeNotAcceptedError,
    RequestError,
    RunError,
    SandboxFailedError,
    SessionEndedError,
)
from orchestrator.eventlog import EventLog
from orchestrator.languages import LANGUAGES, get_language
from orchestrator.models import (
    DEFAULT_TENANT,
    Event,
    ExecutionRequest,
    ExecutionResult,
    SessionState,
    ValidationIssue,
    check_tenant,
)
from orchestrator.policy import MODE_STRENGTH, Policy, load_policy, resolve_mounts
from orchestrator.results import assemble_result, failed_result, validation_failed_result
from orchestrator.run import CancelToken, RunOutcome, RunSpec
from orchestrator.sessions import Session, SessionLimits, SessionRegistry
from orchestrator.settings import Settings
from orchestrator.validator import CodeValidator

log = structlog.get_logger(__name__)
ResultListener = Callable[[ExecutionResult], None]


class Recorder(Protocol):
    """Where runs are persisted (the memory store implements this)."""

    def record_execution(
        self, request: ExecutionRequest, result: ExecutionResult, events: Sequence[Event] = ()
    ) -> int:
        """Persist one run and its events (in order, the ``exit`` event last); return its id.

        The events' output is capped as :mod:`orchestrator.eventlog` describes.
        """
        ...


class Orchestrator:
    """Runs requests in the strongest sandbox their policy accepts, and records them.

    Args:
        settings: process-wide settings (default: from the environment).
        backends: the backends to choose from (default: a Docker backend).
        recorder: where to persist runs (default: nowhere).
        validator: the code validator (default: :class:`CodeValidator`).
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        backends: Sequence[Backend] | None = None,
        recorder: Recorder | None = None,
        validator: CodeValidator | None = None,
    ) -> None:
        self.settings = settings or Settings()
        if backends is None:
            backends = default_backends(self.settings)
        self._backends = sorted(backends, key=lambda b: _strength(b.name))
        self._fallbacks_logged: set[str] = set()
        self._recorder = recorder
        self._validator = validator or CodeValidator()
        self._admission = Admission(
            self.settings.max_concurrent_runs,
            self.settings.max_queued_runs,
            self.settings.queue_wait_seconds,
        )
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._result_listeners: tuple[ResultListener, ...] = ()  # replaced whole, under _lock
        self._sessions = SessionRegistry(
            self.settings.max_sessions, self.settings.session_check_seconds
        )

    def add_result_listener(self, listener: ResultListener) -> Callable[[], None]:
        """Call ``listener`` with every result this orchestrator finishes; return its remover.

        Every run ends with one call, whatever its path (a success, a failure, a refusal by the
        validator, a timeout, a run cancelled by its caller), after the run is recorded and in
        the run's own thread, so it must be quick. A listener that raises is logged; the run
        and its result go on.
        """
        with self._lock:
            self._result_listeners = (*self._result_listeners, listener)

        def remove() -> None:
            with self._lock:
                self._result_listeners = tuple(
                    known for known in self._result_listeners if known is not listener
                )

        return remove

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the backends (killing runs still going). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        self._sessions.close()
        for backend in self._backends:
            backend.close()
        if executor is not None:
            executor.shutdown(wait=True)

    # ------------------------------------------------------------------ running

    def execute(
        self,
        request: ExecutionRequest,
        *,
        on_event: Listener | None = None,
        cancel: CancelToken | None = None,
        session: Session | None = None,
        on_dispatch: Callable[[], None] | None = None,
    ) -> ExecutionResult:
        """Run a request; a run that could not happen gives ``success: False`` with ``error``.

        Raises:
            PolicyError: the policy's mounts or project directory cannot be used.
            RequestError: a session call's files could not be written (nothing ran).
        """
        try:
            return self.run(
                request, on_event=on_event, cancel=cancel, session=session, on_dispatch=on_dispatch
            )
        except RunError as exc:
            if exc.result is None:  # pragma: no cover - run() always attaches one
                raise
            return exc.result

    def check(self, request: ExecutionRequest) -> None:
        """Check what :meth:`run` checks before a sandbox starts, without running anything.

        Raises:
            PolicyError: the policy's mounts or project directory cannot be used.
        """
        self._spec(request.policy, request.effective_timeout())

    def run(
        self,
        request: ExecutionRequest,
        *,
        on_event: Listener | None = None,
        cancel: CancelToken | None = None,
        session: Session | None = None,
        on_dispatch: Callable[[], None] | None = None,
    ) -> ExecutionResult:
        """Validate, run in a sandbox, record, and return the result.

        Args:
            request: what to run.
            on_event: called with each event as it happens (output chunks, violations, and
                an ``exit`` event carrying the result, last).
            cancel: cancelling it kills the run (the result says so).
            session: run it as a call of this session (``request.session_id`` is its id):
                in its sandbox, after the calls before it.
            on_dispatch: called once, just before the code is handed to its sandbox (the
                run waits for it); never for a run that did not get that far.

        Raises:
            RunError: the run could not happen or finish (``exc.result`` is the recorded result).
            SessionEndedError: (a RunError) the session is over.
            PolicyError: the policy's mounts or project directory cannot be used.
            RequestError: a session call's files could not be written (nothing ran).
        """
        if session is None:
            return self._run(request, on_event, cancel, None, on_dispatch)
        with session.call_lock:
            session.begin_call()
            try:
                return self._run(request, on_event, cancel, session, on_dispatch)
            finally:
                session.end_call()

    def _run(
        self,
        request: ExecutionRequest,
        on_event: Listener | None,
        cancel: CancelToken | None,
        session: Session | None,
        on_dispatch: Callable[[], None] | None = None,
    ) -> ExecutionResult:
        started = time.perf_counter()
        timeout = request.effective_timeout()
        context = ExecutionContext(
            request.execution_id,
            request.language,
            timeout,
            request.track_resources,
            capture_io=False,
            max_output_bytes=request.policy.limits.max_output_bytes,
            parameters=request.parameters,
        )
        events = self._event_log(request)
        if events is not None:
            context.subscribe(events)
        if on_event is not None:
            context.subscribe(on_event)
        if on_dispatch is not None:
            context.on_dispatch(on_dispatch)
        issues: tuple[ValidationIssue, ...] = ()
        mode: str | None = session.mode if session is not None else None
        state: SessionState | None = None
        try:
            if self._closed:
                raise SandboxFailedError("this orchestrator is closed; create a new one")
            _check_source(request)
            issues = tuple(
                self._validator.validate(request.code, request.language, request.policy.validation)
            )
            if request.policy.validation.enforce and any(i.severity == "error" for i in issues):
                failed = validation_failed_result(request, issues, timeout, _since(started))
                if session is not None:
                    failed = failed.model_copy(update={"session_state": "kept"})
                return self._finish(request, failed, context, events)
            spec = self._spec(request.policy, timeout, cancel or CancelToken())
            if session is None:
                backend = self._choose_backend(request.policy, request.language, request)
                _check_image_mode(request, backend.name)
                mode = backend.name
                outcome = self._run_in_sandbox(request, spec, context, backend)
            else:
                outcome, state = self._run_in_session(request, spec, context, session)
        except RunError as exc:
            # A run that began in a sandbox (then was cancelled, or the sandbox died) says which.
            began = mode if context.begin is not None else None
            failed = failed_result(request, exc, context, issues, timeout, _since(started), began)
            if session is not None:
                lost: SessionState = "ended" if isinstance(exc, SessionEndedError) else "restarted"
                failed = failed.model_copy(update={"session_state": lost})
            exc.result = self._finish(request, failed, context, events)
            raise
        result = assemble_result(request, outcome, context, issues, timeout, _since(started))
        if state is not None:
            result = result.model_copy(update={"session_state": state})
        return self._finish(request, result, context, events)

    def _run_in_session(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext, session: Session
    ) -> tuple[RunOutcome, SessionState]:
        with context, self._admission.slot(spec.cancel):
            return session.run(request, spec, context)

    # ------------------------------------------------------------------ sessions

    def open_session(
        self,
        language: str,
        policy: Policy,
        *,
        tenant: str = DEFAULT_TENANT,
        limits: SessionLimits | None = None,
        image: str | None = None,
    ) -> Session:
        """Open a session: a sandbox of its own whose interpreter keeps state between calls.

        Opening takes the sandbox (one warm-pool take). Run calls with :meth:`run` and
        ``session=``; the session ends with :meth:`Session.close`, at its idle timeout or
        lifetime, when a call has a memory or process violation, or when this orchestrator
        closes.

        Raises:
            RequestError: a language without sessions (python, javascript and bash have them).
            QueueFullError: ``max_sessions`` sessions are open.
            BackendUnavailableError: no isolation mode that runs sessions (docker) is available
                to the policy.
            RunError: the session's sandbox could not start.
        """
        lang = get_language(language)
        if not lang.sessions:
            with_sessions = ", ".join(x.name for x in LANGUAGES if x.sessions)
            raise RequestError(f"{lang.name} has no sessions; these languages do: {with_sessions}")
        if self._closed:
            raise SandboxFailedError("this orchestrator is closed; create a new one")
        self._sessions.reserve()
        backend = self._choose_backend(policy, lang.name, sessions=True)
        opener = getattr(backend, "open_session", None)
        if opener is None:
            raise BackendUnavailableError(
                f"sessions run in the docker mode only, and policy {policy.name!r} got the "
                f"{backend.name} mode here: start a Docker engine (make docker-up)"
            )
        probe = ExecutionRequest(code="", language=lang.name, policy=policy, image=image)
        spec = self._spec(policy, policy.limits.timeout_seconds)
        session = Session(
            opener(probe, spec),
            mode=backend.name,
            language=lang.name,
            policy=policy.name,
            tenant=check_tenant(tenant),
            limits=limits or SessionLimits(),
            image=image,
            policy_config=policy,
            on_end=self._sessions.forget,
            node_id=self.settings.node_id,
        )
        try:
            session.start(probe.execution_id)
        except BaseException:
            session.close("its sandbox could not start")
            raise
        self._sessions.add(session)
        return session

    def session(self, session_id: str, tenant: str | None = None) -> Session:
        """The open session of this id (of this tenant, when given).

        Raises:
            SessionEndedError: no open session has this id (it ended, or never was, or it is
                another tenant's).
        """
        session = self._sessions.get(session_id) if isinstance(session_id, str) else None
        if session is None or (tenant is not None and session.tenant != tenant):
            shown = session_id[:80] if isinstance(session_id, str) else type(session_id).__name__
            raise SessionEndedError(
                f"no open session {shown!r}: it ended (closed, expired or ended by a "
                "violation) or never existed; open a new one",
                session_id=shown,
                reason="no open session has this id",
            )
        return session

    def sessions(self, tenant: str | None = None) -> list[Session]:
        """The open sessions (of one tenant, when given), oldest first."""
        return [s for s in self._sessions.all() if tenant is None or s.tenant == tenant]

    def _event_log(self, request: ExecutionRequest) -> EventLog | None:
        """An event log for a run that will be recorded, else None (nothing is collected)."""
        if self._recorder is None or not request.record:
            return None
        return EventLog(request.policy.limits.max_output_bytes)

    def _run_in_sandbox(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext, backend: Backend
    ) -> RunOutcome:
        # The timeout starts with the code, not here.
        with context, self._admission.slot(spec.cancel):
            return backend.run(request, spec, context)

    def _spec(self, policy: Policy, timeout: float, cancel: CancelToken | None = None) -> RunSpec:
        mounts = resolve_mounts(policy, self.settings.resolved_project_dir())
        return RunSpec(timeout, mounts, cancel or CancelToken())

    # ------------------------------------------------------------------ streams, async, batches

    def stream(self, request: ExecutionRequest) -> Iterator[Event]:
        """Run a request and yield its events as they happen; the last is ``exit`` (with result).

        Closing the iterator early cancels the run.
        """
        events: queue.SimpleQueue[Event | BaseException | None] = queue.SimpleQueue()
        cancel = CancelToken()

        def work() -> None:
            try:
                self.execute(request, on_event=events.put, cancel=cancel)
            except BaseException as exc:  # e.g. a PolicyError: the consumer must see it
                events.put(exc)
            finally:
                events.put(None)

        worker = threading.Thread(target=work, name=f"athena-run-{request.execution_id[:8]}")
        worker.start()
        try:
            while (item := events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if worker.is_alive():
                cancel.cancel()
            worker.join()

    async def arun(
        self,
        request: ExecutionRequest,
        *,
        on_event: Listener | None = None,
        on_dispatch: Callable[[], None] | None = None,
    ) -> ExecutionResult:
        """Like :meth:`run`, for asyncio. Cancelling the awaiting task kills the run.

        Raises:
            RunError: as :meth:`run`.
            asyncio.CancelledError: the task was cancelled (the run was killed first).
        """
        cancel = CancelToken()
        call = partial(self.run, request, on_event=on_event, cancel=cancel, on_dispatch=on_dispatch)
        future = asyncio.get_running_loop().run_in_executor(self._pool(), call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.cancel()
            while not future.done():  # the run is killed and recorded before we go on,
                try:  # even if we are cancelled again meanwhile
                    await asyncio.wait([future])
                except asyncio.CancelledError:
                    continue
            if not future.cancelled():
                future.exception()  # retrieved: asyncio would log it as never retrieved
            raise

    async def aexecute(
        self,
        request: ExecutionRequest,
        *,
        on_event: Listener | None = None,
        on_dispatch: Callable[[], None] | None = None,
    ) -> ExecutionResult:
        """Like :meth:`execute`, for asyncio. Cancelling the awaiting task kills the run."""
        try:
            return await self.arun(request, on_event=on_event, on_dispatch=on_dispatch)
        except RunError as exc:
            if exc.result is None:  # pragma: no cover - run() always attaches one
                raise
            return exc.result

    def run_many(
        self, requests: Sequence[ExecutionRequest], concurrency: int = 4
    ) -> list[ExecutionResult]:
        """Run requests ``concurrency`` at a time; return their results in the same order.

        A run that could not happen gives its failed result, as :meth:`execute` does.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="athena-batch") as pool:
            return list(pool.map(self.execute, requests))

    def prewarm(
        self, language: str = "python", policy: Policy | None = None, timeout: float = 60.0
    ) -> bool:
        """Start the warm pool of (language, policy) and wait for a ready sandbox.

        Returns:
            True when a warm sandbox is ready; False when the backend has no pool or it did
            not fill in time.
        """
        resolved = policy or load_policy(None)
        backend = self._choose_backend(resolved, get_language(language).name)
        warm = getattr(backend, "prewarm", None)
        if warm is None:
            return False
        spec = self._spec(resolved, resolved.limits.timeout_seconds)
        return bool(warm(get_language(language).name, resolved, spec, timeout))

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise SandboxFailedError("this orchestrator is closed; create a new one")
            if self._executor is None:
                workers = self.settings.max_concurrent_runs + self.settings.max_queued_runs + 1
                self._executor = ThreadPoolExecutor(workers, thread_name_prefix="athena-async")
            return self._executor

    def modes(self, language: str = "python") -> list[tuple[str, str | None]]:
        """Each isolation mode, strongest first, with why it cannot run ``language`` (or None)."""
        found: list[tuple[str, str | None]] = []
        for backend in self._backends:
            if not self.settings.allows_mode(backend.name):
                found.append((backend.name, _removed(backend.name)))
            else:
                found.append((backend.name, backend.unavailable_reason(language)))
        return found

    def queue_depth(self) -> int:
        """How many admitted runs wait for a place in a sandbox right now."""
        return self._admission.waiting

    def sweep_nodes(self, gone: Callable[[str], bool]) -> int:
        """Remove the sandboxes other nodes of a cluster left when they died; return how many.

        See :meth:`~orchestrator.backends.docker.DockerBackend.sweep_nodes`.
        """
        removed = 0
        for backend in self._backends:
            sweep = getattr(backend, "sweep_nodes", None)  # only engine-backed modes label nodes
            if sweep is not None:
                removed += int(sweep(gone))
        return removed

    def pool_sizes(self) -> dict[tuple[str, str], int]:
        """Ready warm sandboxes per (mode, language), for the backends that keep a pool."""
        sizes: dict[tuple[str, str], int] = {}
        for backend in self._backends:
            read = getattr(backend, "pool_sizes", None)  # only pooled backends have it
            if read is not None:
                sizes.update({(backend.name, lang): n for lang, n in read().items()})
        return sizes

    def _choose_backend(
        self,
        policy: Policy,
        language: str,
        request: ExecutionRequest | None = None,
        *,
        sessions: bool = False,
    ) -> Backend:
        """The first mode of the policy's list that this process allows and this machine has.

        The list is ordered strongest first (:data:`~orchestrator.policy.MODE_RANK`). With a
        ``request``, a mode may decline what it cannot do as asked (the fast mode: a network,
        mounts, a custom image); with ``sessions``, only modes that keep sessions count.
        """
        reasons: list[str] = []
        by_name = {b.name: b for b in self._backends}
        refused = [b.name for b in self._backends if b.name not in policy.fallback]
        for name in policy.fallback:
            backend = by_name.get(name)
            if backend is None:
                continue
            reason = (
                _removed(backend.name)
                if not self.settings.allows_mode(backend.name)
                else backend.unavailable_reason(language)
            )
            if reason is None:
                reason = _declined(backend, request, sessions)
            if reason is None:
                self._log_fallback(backend.name, reasons)
                return backend
            reasons.append(f"{backend.name}: {reason}")
        if refused:
            reasons.append(f"the policy does not accept {', '.join(refused)}")
        raise BackendUnavailableError(
            f"no isolation mode that policy {policy.name!r} accepts "
            f"({', '.join(policy.fallback)}) can run {language} here: " + " | ".join(reasons)
        )

    def _log_fallback(self, mode: str, reasons: list[str]) -> None:
        """The first fallback to each mode in a process says why, once."""
        if not reasons or mode in self._fallbacks_logged:
            return
        self._fallbacks_logged.add(mode)
        log.warning("falling back to a weaker isolation mode", mode=mode, reasons=reasons)

    def _finish(
        self,
        request: ExecutionRequest,
        result: ExecutionResult,
        context: ExecutionContext,
        events: EventLog | None,
    ) -> ExecutionResult:
        """Record the result, then tell listeners the run is over (every run ends with this)."""
        exit_event = Event(
            kind="exit", exit_code=result.exit_code, elapsed_ms=context.elapsed_ms(), result=result
        )
        if events is not None:
            self._record(request, result, events.events(exit_event))
        for listener in self._result_listeners:
            try:
                listener(result)
            except Exception as exc:  # an observer's bug must not lose the caller's result
                log.error("a result listener failed", error=f"{type(exc).__name__}: {exc}")
        context.emit(exit_event)
        return result

    def _record(
        self, request: ExecutionRequest, result: ExecutionResult, events: list[Event]
    ) -> None:
        if self._recorder is None or not request.record:
            return
        try:
            self._recorder.record_execution(request, result, events=events)
        except Exception as exc:  # a lost record must not lose the result the caller waits for
            log.error(
                "could not record the execution",
                execution_id=request.execution_id,
                error=f"{type(exc).__name__}: {exc}",
            )


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _check_source(request: ExecutionRequest) -> None:
    language = get_language(request.language)
    if "\x00" in request.code and not language.accepts_nul:
        raise CodeNotAcceptedError(
            f"the code contains a NUL character, which {language.name} source cannot hold: "
            "remove it (write '\\0' or chr(0) in a string instead)"
        )


def _check_image_mode(request: ExecutionRequest, mode: str) -> None:
    """Custom images and requirements need the docker mode: a fallback would silently drop them."""
    if mode == "docker":
        return
    image = request.image or request.policy.image
    if image is not None:
        raise BackendUnavailableError(
            f"the custom image {image!r} runs in the docker mode only, and no Docker engine "
            f"answers here (the {mode} mode would run without the image): start one "
            "(make docker-up), or run without image"
        )
    if request.requirements:
        raise BackendUnavailableError(
            "requirements are installed in the docker mode only, and no Docker engine answers "
            f"here (the {mode} mode would run without them): start one (make docker-up), or "
            "run without requirements"
        )


def default_backends(settings: Settings) -> list[Backend]:
    """One backend per isolation mode, strongest first."""
    from orchestrator.backends.docker import DockerBackend
    from orchestrator.backends.fast import FastBackend
    from orchestrator.backends.inprocess import InProcessBackend
    from orchestrator.backends.restricted import RestrictedBackend
    from orchestrator.backends.srt import SrtBackend

    return [
        DockerBackend(settings),
        FastBackend(settings),
        SrtBackend(settings),
        RestrictedBackend(),
        InProcessBackend(),
    ]


def _declined(backend: Backend, request: ExecutionRequest | None, sessions: bool) -> str | None:
    """Why an available mode does not take this request or a session (None: it does)."""
    if sessions and getattr(backend, "open_session", None) is None:
        return "keeps no sessions (sessions run in the docker mode only)"
    declines = getattr(backend, "declines", None)  # only modes with conditions have it
    return declines(request) if declines is not None and request is not None else None


def _removed(mode: str) -> str:
    if mode == "inprocess":
        return "runs trusted code only: name it in ATHENA_SANDBOX_BACKENDS to opt in"
    return "removed by ATHENA_SANDBOX_BACKENDS"


def _strength(name: str) -> int:
    return MODE_STRENGTH.index(name) if name in MODE_STRENGTH else len(MODE_STRENGTH)
