"""A fake backend, so users and unit tests can drive the orchestrator without Docker.

from orchestrator.testing import FakeBackend, FakeRun
backend = FakeBackend(FakeRun(stdout="4"))
api = MemoryAPI.create(tmp_path / "m.db", backends=[backend])
assert api.execute_code("print(2 + 2)")["stdout"] == "4"
assert backend.requests[0].code == "print(2 + 2)"
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import JsonValue

from orchestrator.backends.base import RunOutcome, RunSpec
from orchestrator.context import ExecutionContext
from orchestrator.errors import RunError
from orchestrator.models import ExecutionRequest, Isolation


@dataclass(frozen=True)
class FakeRun:
    """What a fake run prints and how it ends.

    Attributes:
        stdout: text written to stdout.
        stderr: text written to stderr.
        exit_code: exit status when it exits normally.
        signal: the signal that killed it, instead of an exit status.
        timed_out: pretend the run hit its timeout.
        oom_killed: pretend the run ran out of memory.
        pids_limit_hits: pretend forks failed at the process limit.
        output: Python's ``output`` value.
        error: raise this instead of running (e.g. ``BackendUnavailableError(...)``).
        run_ms: the reported run time.
    """

    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = 0
    signal: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    pids_limit_hits: int = 0
    output: JsonValue = None
    error: RunError | None = None
    run_ms: float = 1.0


@dataclass
class FakeBackend:
    """A backend that runs nothing and replays a scripted :class:`FakeRun`.

    Args:
        script: one FakeRun for every request, or a function choosing one per request.
        name: the mode it poses as (``docker`` by default, so shipped policies accept it).
    """

    script: FakeRun | Callable[[ExecutionRequest], FakeRun] = field(default_factory=FakeRun)
    name: str = "docker"
    requests: list[ExecutionRequest] = field(default_factory=list)
    specs: list[RunSpec] = field(default_factory=list)
    closed: bool = False
    unavailable: str | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def unavailable_reason(self, language: str) -> str | None:
        """The scripted ``unavailable`` reason (None: available)."""
        return self.unavailable

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        """Record the request, feed the scripted output and return the scripted outcome.

        Raises:
            RunError: the script's ``error``.
        """
        with self._lock:
            self.requests.append(request)
            self.specs.append(spec)
        fake = self.script(request) if callable(self.script) else self.script
        if fake.error is not None:
            raise fake.error
        if fake.stdout:
            context.feed("stdout", fake.stdout.encode())
        if fake.stderr:
            context.feed("stderr", fake.stderr.encode())
        return RunOutcome(
            isolation=Isolation(mode=self.name, runtime="fake", path="fake"),
            started=True,
            exit_code=None if fake.signal is not None else fake.exit_code,
            signal=fake.signal,
            timed_out=fake.timed_out,
            oom_killed=fake.oom_killed,
            pids_limit_hits=fake.pids_limit_hits,
            run_ms=fake.run_ms,
            sandbox_id="fake",
            output=fake.output,
        )

    def close(self) -> None:
        """Mark the backend closed."""
        self.closed = True
