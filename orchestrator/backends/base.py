"""The seam every isolation backend implements, and what a backend reports.

A backend runs one request in its sandbox, feeds the :class:`ExecutionContext` as output arrives
and returns a :class:`RunOutcome`: the facts of the run (exit status, timeout, OOM, ...). The
orchestrator turns facts into violations and the public result, the same way for every backend.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import structlog
from pydantic import JsonValue

from orchestrator.context import ExecutionContext
from orchestrator.errors import BackendUnavailableError
from orchestrator.models import ExecutionRequest, Isolation, Resources
from orchestrator.policy import ResolvedMount

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    """The facts of one run, as a backend saw them.

    Attributes:
        isolation: how the run was isolated (mode, runtime, path, image).
        started: whether the code was handed to the interpreter (False: it never ran).
        exit_code: the exit status when the code's process exited normally.
        signal: the signal number when it was killed by a signal.
        timed_out: the run was killed because its timeout passed.
        oom_killed: the kernel killed a process of the run for lack of memory.
        pids_limit_hits: how often a fork failed because of the process limit.
        run_ms: milliseconds from the code's start to its end.
        sandbox_id: the container id (short), when there was one.
        output: Python's ``output`` value, decoded.
        notes: messages for the caller about the run itself (e.g. an ``output`` that is not
            JSON-serialisable), appended to stderr by the orchestrator.
        resources: cgroup figures, when asked for.
        network_refusals: (host, port, reason) of each connection the egress proxy refused.
        forged_reports: exit or failure reports the code wrote into the runner's channel
            (ignored).
        policy_refusals: what the run-time policy layer refused, each ``{kind, message,
            detail}`` as the bootstrap reported it.
        mount_write_exceeded: the target of the writable mount whose filesystem the run grew by
            more than ``filesystem.max_mount_write_bytes`` (it was killed), or None.
    """

    isolation: Isolation
    started: bool = False
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    pids_limit_hits: int = 0
    run_ms: float = 0.0
    sandbox_id: str | None = None
    output: JsonValue = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    resources: Resources | None = None
    network_refusals: tuple[tuple[str, int, str], ...] = ()
    forged_reports: int = 0
    policy_refusals: tuple[dict[str, JsonValue], ...] = ()
    mount_write_exceeded: str | None = None


class CancelToken:
    """Lets a caller cancel a run from another thread (or an asyncio task).

    Backends register what stops their run with :meth:`on_cancel`; a callback registered after
    the cancellation runs at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled

    def cancel(self) -> None:
        """Cancel the run: call every registered callback once."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception as exc:  # one failing stop must not keep the others from running
                log.warning("a cancel callback failed", error=f"{type(exc).__name__}: {exc}")

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` on cancellation; return a function that unregisters it."""
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def _forget(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


@dataclass(frozen=True)
class RunSpec:
    """What a backend needs besides the request.

    Attributes:
        timeout_seconds: the effective timeout (the caller's, capped by the policy).
        mounts: the policy's mounts, checked and resolved.
        cancel: cancels the run when the caller gives up on it.
    """

    timeout_seconds: float
    mounts: tuple[ResolvedMount, ...] = ()
    cancel: CancelToken = field(default_factory=CancelToken)


@runtime_checkable
class Backend(Protocol):
    """An isolation backend: docker, srt, restricted or inprocess."""

    name: str

    def unavailable_reason(self, language: str) -> str | None:
        """Why this backend cannot run ``language`` on this machine now, with how to fix it.

        None means it can. Called before each run; a backend caches what is costly to check.
        """
        ...

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        """Run the request in a fresh sandbox, feeding ``context`` as output arrives.

        Raises:
            RunError: the sandbox could not start or broke before reporting.
        """
        ...

    def close(self) -> None:
        """Release everything the backend holds; kill runs still going."""
        ...


def ensure_available(backend: Backend, language: str) -> None:
    """Raise when ``backend`` cannot run ``language`` here.

    Raises:
        BackendUnavailableError: with the backend's reason and how to fix it.
    """
    reason = backend.unavailable_reason(language)
    if reason:
        raise BackendUnavailableError(reason)
