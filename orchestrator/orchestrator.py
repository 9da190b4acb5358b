"""The Orchestrator: validate -> choose backend -> run -> record.

``run`` is the typed core: it returns an :class:`ExecutionResult` or raises a :class:`RunError`
(with the recorded failed result attached as ``exc.result``). ``execute`` never raises a
``RunError``: it returns that failed result instead, which is what the dict API wants.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Protocol

import structlog

from orchestrator.backends.base import Backend, RunOutcome, RunSpec
from orchestrator.context import ExecutionContext, Listener
from orchestrator.errors import (
    BackendUnavailableError,
    CodeNotAcceptedError,
    RunError,
    SandboxFailedError,
)
from orchestrator.languages import get_language
from orchestrator.models import Event, ExecutionRequest, ExecutionResult, ValidationIssue
from orchestrator.policy import MODE_STRENGTH, Policy, resolve_mounts
from orchestrator.results import assemble_result, failed_result, validation_failed_result
from orchestrator.settings import Settings
from orchestrator.validator import CodeValidator

log = structlog.get_logger(__name__)


class Recorder(Protocol):
    """Where runs are persisted (the memory store implements this)."""

    def record_execution(self, request: ExecutionRequest, result: ExecutionResult) -> int:
        """Persist one run; return the record's id."""
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
            from orchestrator.backends.docker import DockerBackend

            backends = [DockerBackend(self.settings)]
        self._backends = sorted(backends, key=lambda b: _strength(b.name))
        self._recorder = recorder
        self._validator = validator or CodeValidator()
        self._lock = threading.Lock()
        self._closed = False

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
        for backend in self._backends:
            backend.close()

    # ------------------------------------------------------------------ running

    def execute(
        self, request: ExecutionRequest, *, on_event: Listener | None = None
    ) -> ExecutionResult:
        """Run a request; a run that could not happen gives ``success: False`` with ``error``.

        Raises:
            PolicyError: the policy's mounts or project directory cannot be used.
        """
        try:
            return self.run(request, on_event=on_event)
        except RunError as exc:
            if exc.result is None:  # pragma: no cover - run() always attaches one
                raise
            return exc.result

    def run(
        self, request: ExecutionRequest, *, on_event: Listener | None = None
    ) -> ExecutionResult:
        """Validate, run in a sandbox, record, and return the result.

        Raises:
            RunError: the run could not happen or finish (``exc.result`` is the recorded result).
            PolicyError: the policy's mounts or project directory cannot be used.
        """
        if self._closed:
            raise SandboxFailedError("this orchestrator is closed; create a new one")
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
        if on_event is not None:
            context.subscribe(on_event)
        issues: tuple[ValidationIssue, ...] = ()
        try:
            _check_source(request)
            issues = tuple(
                self._validator.validate(request.code, request.language, request.policy.validation)
            )
            if request.policy.validation.enforce and any(i.severity == "error" for i in issues):
                failed = validation_failed_result(request, issues, timeout, _since(started))
                return self._finish(request, failed, context)
            outcome = self._run_in_sandbox(request, timeout, context)
        except RunError as exc:
            failed = failed_result(request, exc, context, issues, timeout, _since(started))
            exc.result = self._finish(request, failed, context)
            raise
        result = assemble_result(request, outcome, context, issues, timeout, _since(started))
        return self._finish(request, result, context)

    def _run_in_sandbox(
        self, request: ExecutionRequest, timeout: float, context: ExecutionContext
    ) -> RunOutcome:
        spec = RunSpec(
            timeout, resolve_mounts(request.policy, self.settings.resolved_project_dir())
        )
        backend = self._choose_backend(request.policy)
        with context:  # records an exception that ends the run, and stops the clock
            return backend.run(request, spec, context)

    def _choose_backend(self, policy: Policy) -> Backend:
        for backend in self._backends:
            if backend.name in policy.fallback:
                return backend
        available = ", ".join(b.name for b in self._backends)
        raise BackendUnavailableError(
            f"policy {policy.name!r} accepts {', '.join(policy.fallback)}, but this orchestrator "
            f"has only {available}: add docker to the policy's fallback list"
        )

    def _finish(
        self, request: ExecutionRequest, result: ExecutionResult, context: ExecutionContext
    ) -> ExecutionResult:
        """Record the result, then tell listeners the run is over (every run ends with this)."""
        self._record(request, result)
        context.emit(
            Event(kind="exit", exit_code=result.exit_code, elapsed_ms=context.elapsed_ms())
        )
        return result

    def _record(self, request: ExecutionRequest, result: ExecutionResult) -> None:
        if self._recorder is None or not request.record:
            return
        try:
            self._recorder.record_execution(request, result)
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


def _strength(name: str) -> int:
    return MODE_STRENGTH.index(name) if name in MODE_STRENGTH else len(MODE_STRENGTH)
