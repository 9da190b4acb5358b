"""What a run is given and what it reports: RunSpec, RunOutcome and the one typed exit report.

Every backend describes how its code ended as an :class:`ExitReport` (the runner's exit frame in
a container, the supervised process on the host) and turns it into a :class:`RunOutcome` with
:func:`build_outcome`, so exit status, timeout, OOM and the ``output`` value are read the same
way in every isolation mode.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from pydantic import JsonValue

from orchestrator.backends.value import decode_value
from orchestrator.models import Isolation, OutputFile, Resources
from orchestrator.policy import ResolvedMount

log = structlog.get_logger(__name__)

SIGKILL = 9


@dataclass(frozen=True)
class LeftOut:
    """A file of ``/workspace/out`` (or a figure) that did not come back, and why.

    Attributes:
        name: its path under ``/workspace/out``.
        reason: ``over the cap`` (``files.max_out_bytes``) or not a regular file.
        size: its size in bytes, when it was over the cap.
    """

    name: str
    reason: str
    size: int = 0


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
        files: the files the code wrote under ``/workspace/out`` (in a session: this call's).
        artifacts: the figures it left open or showed, as PNG.
        left_out: files that did not come back, and why.
        session_alive: in a session, whether its interpreter (and state) is still there after
            this call; None for a one-shot run.
        interrupted: a session call that timed out was interrupted and its state kept.
        between_calls: the memory or process violation happened between two session calls
            (what the code left running); this call did not run.
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
    files: tuple[OutputFile, ...] = ()
    artifacts: tuple[OutputFile, ...] = ()
    left_out: tuple[LeftOut, ...] = ()
    session_alive: bool | None = None
    interrupted: bool = False
    between_calls: bool = False


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


@dataclass(frozen=True)
class ExitReport:
    """How the code's process ended: the facts every backend reports, typed.

    Attributes:
        exit_code: the exit status when it exited normally.
        signal: the signal number when it was killed by one.
        timed_out: it was killed because its timeout passed.
        oom_killed: the kernel killed a process of the run for lack of memory.
        pids_limit_hits: how often a fork failed at the process limit.
        run_ms: milliseconds from the code's start to its end.
        value_truncated: the ``output`` value was larger than the output limit.
        memory_peak_bytes: the run's peak memory, when known.
        cpu_ms: the run's CPU time, when known.
        mount_write_cap_hit: the index of the writable mount whose cap was hit, if any.
        session_alive: a session call: whether the interpreter is still there (None: one-shot).
        interrupted: a session call that timed out stopped at the interrupt, its state kept.
        between_calls: the memory or process figures are from between two session calls (what
            the code left running); the call itself did not run.
    """

    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    pids_limit_hits: int = 0
    run_ms: float = 0.0
    value_truncated: bool = False
    memory_peak_bytes: int | None = None
    cpu_ms: float | None = None
    mount_write_cap_hit: int | None = None
    session_alive: bool | None = None
    interrupted: bool = False
    between_calls: bool = False

    @classmethod
    def from_runner(cls, info: Mapping[str, Any] | None) -> ExitReport:
        """Read the runner's exit frame (its JSON); nothing is claimed without one.

        The runner writes -1 for a figure it could not measure.
        """
        info = info or {}
        peak, cpu = info.get("memory_peak_bytes", -1), info.get("cpu_ns", -1)
        hit = info.get("mount_write_cap_hit", -1)
        oom_between, pids_between = info.get("oom_between", 0), info.get("pids_between", 0)
        return cls(
            exit_code=info.get("exit_code"),
            signal=info.get("signal"),
            timed_out=bool(info.get("timed_out")),
            oom_killed=info.get("oom_kills", 0) > 0 or oom_between > 0,
            pids_limit_hits=max(info.get("pids_limit_hits", 0), 0) + max(pids_between, 0),
            run_ms=info.get("run_ns", 0) / 1e6,
            value_truncated=bool(info.get("value_truncated")),
            memory_peak_bytes=peak if peak >= 0 else None,
            cpu_ms=cpu / 1e6 if cpu >= 0 else None,
            mount_write_cap_hit=hit if isinstance(hit, int) and hit >= 0 else None,
            session_alive=bool(info.get("alive")) if info.get("session") else None,
            interrupted=bool(info.get("interrupted")),
            between_calls=oom_between > 0 or pids_between > 0,
        )


class Ended(Protocol):
    """How a supervised host process ended (``orchestrator.backends.process.Supervised``)."""

    @property
    def exit_code(self) -> int | None:
        """Its exit status, when it exited."""

    @property
    def signal(self) -> int | None:
        """The signal that killed it."""

    @property
    def timed_out(self) -> bool:
        """Whether it was killed at the timeout."""

    @property
    def cancelled(self) -> bool:
        """Whether it was killed because the run was cancelled."""

    @property
    def run_ms(self) -> float:
        """Milliseconds from the start of supervision to its end."""

    @property
    def extra_truncated(self) -> bool:
        """Whether its value channel carried more than the cap."""


def process_exit(
    done: Ended,
    *,
    status: tuple[int | None, int | None] | None = None,
    oom_killed: bool = False,
    pids_limit_hits: int = 0,
    memory_peak_bytes: int | None = None,
) -> ExitReport:
    """The exit report of a host process we supervised.

    Args:
        done: how the process ended.
        status: (exit code, signal) when the backend reads them differently from ``done``.
        oom_killed: whether the backend saw the run run out of memory.
        pids_limit_hits: forks refused at the process limit, as the backend counted them.
        memory_peak_bytes: the run's peak memory, when the backend measured it.

    A process we killed (timeout or cancellation) reports no exit code and SIGKILL.
    """
    exit_code, signal = status if status is not None else (done.exit_code, done.signal)
    if done.timed_out or done.cancelled:
        exit_code, signal = None, SIGKILL
    return ExitReport(
        exit_code=exit_code,
        signal=signal,
        timed_out=done.timed_out,
        oom_killed=oom_killed,
        pids_limit_hits=pids_limit_hits,
        run_ms=done.run_ms,
        value_truncated=done.extra_truncated,
        memory_peak_bytes=memory_peak_bytes,
    )


def build_outcome(
    report: ExitReport,
    value: bytes | None = None,
    *,
    isolation: Isolation,
    sandbox_id: str | None,
    started: bool = True,
    track_resources: bool = False,
    mount_targets: Sequence[str] = (),
    files: tuple[OutputFile, ...] = (),
    artifacts: tuple[OutputFile, ...] = (),
    left_out: tuple[LeftOut, ...] = (),
) -> RunOutcome:
    """Build a backend's :class:`RunOutcome` from its exit report and its ``output`` value.

    Args:
        report: how the code ended.
        value: the value channel's bytes (policy refusal lines, then the output envelope).
        isolation: how the run was isolated.
        sandbox_id: the sandbox's id, when there was one.
        started: whether the code was handed to the interpreter.
        track_resources: whether the caller asked for resource figures.
        mount_targets: the policy's mount targets, in order (names a mount whose cap was hit).
        files: the files of ``/workspace/out`` that came back.
        artifacts: the figures that came back.
        left_out: the files that did not, and why.
    """
    output, notes, refusals = decode_value(value, report.value_truncated)
    hit = report.mount_write_cap_hit
    resources = None
    if track_resources:
        resources = Resources(
            peak_memory_bytes=report.memory_peak_bytes,
            cpu_time_ms=report.cpu_ms,
            wall_time_ms=report.run_ms,
        )
    return RunOutcome(
        isolation=isolation,
        started=started,
        exit_code=report.exit_code,
        signal=report.signal,
        timed_out=report.timed_out,
        oom_killed=report.oom_killed,
        pids_limit_hits=report.pids_limit_hits,
        run_ms=report.run_ms,
        sandbox_id=sandbox_id,
        output=output,
        notes=notes,
        resources=resources,
        policy_refusals=refusals,
        mount_write_exceeded=mount_targets[hit]
        if hit is not None and hit < len(mount_targets)
        else None,
        files=files,
        artifacts=artifacts,
        left_out=left_out,
        session_alive=report.session_alive,
        interrupted=report.interrupted,
        between_calls=report.between_calls,
    )
