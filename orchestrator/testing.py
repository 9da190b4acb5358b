"""Fakes, so users and unit tests can drive the orchestrator without Docker.

:class:`FakeBackend` replays scripted runs to the orchestrator; :class:`FakeEngine` stands in for
the Docker engine under a real :class:`~orchestrator.backends.docker.DockerBackend`, so the
backend runs the code it runs in production.

from orchestrator.testing import FakeBackend, FakeRun
backend = FakeBackend(FakeRun(stdout="4"))
api = MemoryAPI.create(tmp_path / "m.db", backends=[backend])
assert api.execute_code("print(2 + 2)")["stdout"] == "4"
assert backend.requests[0].code == "print(2 + 2)"
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import JsonValue

from orchestrator.backends.docker.compile import IMAGE_PROTOCOL_LABEL
from orchestrator.backends.docker.fastpath import EngineError
from orchestrator.backends.protocol import PROTOCOL
from orchestrator.context import ExecutionContext
from orchestrator.errors import RunError
from orchestrator.models import ExecutionRequest, Isolation
from orchestrator.run import ExitReport, RunOutcome, RunSpec, build_outcome


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
        """Record the request, hand the code over, feed the output, return the scripted outcome.

        Raises:
            RunError: the script's ``error``.
        """
        with self._lock:
            self.requests.append(request)
            self.specs.append(spec)
        fake = self.script(request) if callable(self.script) else self.script
        if fake.error is not None:
            raise fake.error  # as a sandbox that never got the code
        context.dispatch()
        if fake.stdout:
            context.feed("stdout", fake.stdout.encode())
        if fake.stderr:
            context.feed("stderr", fake.stderr.encode())
        report = ExitReport(
            exit_code=None if fake.signal is not None else fake.exit_code,
            signal=fake.signal,
            timed_out=fake.timed_out,
            oom_killed=fake.oom_killed,
            pids_limit_hits=fake.pids_limit_hits,
            run_ms=fake.run_ms,
        )
        isolation = Isolation(mode=self.name, runtime="fake", path="fake")
        outcome = build_outcome(report, isolation=isolation, sandbox_id="fake")
        return dataclasses.replace(outcome, output=fake.output)  # as given: no envelope to read

    def close(self) -> None:
        """Mark the backend closed."""
        self.closed = True


class FakeEngine:
    """A Docker engine whose containers' runner is at the other end of a socket.

    It implements :class:`~orchestrator.backends.docker.Engine`.

    Args:
        sock: our end of the runner's stream; the test plays the runner at the other end.

    Attributes:
        created: the body of the last container created.
        removed: ids of the containers removed, in order.
        streams: attach streams to hand out before ``sock``, in order.
        refusals: messages of the start refusals to raise (500), in order; then starts succeed.
        starts: ids of the containers started (or refused), in order.
        container_state: what ``state`` reports (``Running``, ``OOMKilled``, ``ExitCode``).
        history: what ``events`` reports, e.g. ``[{"Action": "oom"}]``.
    """

    container_id = "c0ffee" * 10

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.created: dict[str, Any] = {}
        self.removed: list[str] = []
        self.streams: list[socket.socket] = []
        self.refusals: list[str] = []
        self.starts: list[str] = []
        self.container_state: dict[str, Any] = {"Running": True}
        self.history: list[dict[str, Any]] = []

    def container_body(self, create: dict[str, Any], host_config: dict[str, Any]) -> dict[str, Any]:
        """The create body in the Engine API's shape (the fields tests look at)."""
        return {"Image": create["image"], "Labels": create["labels"], "HostConfig": host_config}

    def create(self, body: dict[str, Any]) -> str:
        """Keep the body; return the one container id."""
        self.created = body
        return self.container_id

    def attach(self, container_id: str) -> tuple[socket.socket, socket.socket]:
        """The next of ``streams``, then ``sock``."""
        sock = self.streams.pop(0) if self.streams else self.sock
        return sock, sock

    def start(self, container_id: str) -> None:
        """Record the start; raise the next of ``refusals`` as the engine's 500.

        Raises:
            EngineError: a refusal was scripted.
        """
        self.starts.append(container_id)
        if self.refusals:
            raise EngineError(500, self.refusals.pop(0))

    def state(self, container_id: str) -> dict[str, Any]:
        """The scripted ``container_state`` (running, unless a test says otherwise)."""
        return dict(self.container_state)

    def events(self, container_id: str, since: float, wait: float) -> list[dict[str, Any]]:
        """The scripted ``history``."""
        return list(self.history)

    def address(self, container_id: str, network: str) -> str:
        """A fixed address."""
        return "10.0.0.2"

    def remove(self, container_id: str) -> None:
        """Record the removal."""
        self.removed.append(container_id)

    def containers(self, label: str) -> list[dict[str, Any]]:
        """No containers."""
        return []

    def runtimes(self) -> frozenset[str]:
        """Runc only."""
        return frozenset({"runc"})

    def local(self) -> bool:
        """Not on this host: no path of ours is bound into its containers."""
        return False

    def image_labels(self, image: str) -> dict[str, str]:
        """Every image speaks this orchestrator's runner protocol."""
        return {IMAGE_PROTOCOL_LABEL: PROTOCOL}

    def egress_gateway(self) -> str:
        """A fixed gateway."""
        return "10.0.0.1"

    def close(self) -> None:
        """Nothing to close: the test owns the sockets."""
