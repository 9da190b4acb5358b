"""One run in a started sandbox: send the request, read the runner's frames, report the outcome."""

from __future__ import annotations

import dataclasses
import select
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog

from orchestrator.backends.docker.egress import EgressSetup, Refusal
from orchestrator.backends.docker.engine import Engine
from orchestrator.backends.docker.errors import unavailable
from orchestrator.backends.docker.live import LiveContainers
from orchestrator.backends.docker.sandbox import NeverStarted, Sandbox
from orchestrator.backends.message import Message
from orchestrator.backends.protocol import ProtocolError
from orchestrator.backends.reader import RunReader
from orchestrator.context import ExecutionContext
from orchestrator.errors import RequestError, RunCancelledError, SandboxFailedError
from orchestrator.models import ExecutionRequest, Isolation
from orchestrator.run import SIGKILL, ExitReport, RunOutcome, RunSpec, build_outcome

log = structlog.get_logger(__name__)

# How long past its timeout a run may go before we kill the container ourselves; the runner
# normally kills the code at the timeout and reports well within this.
KILL_GRACE_S = 0.5
IDLE_CHECK_S = 2.0
# How long a run whose runner sent no exit frame waits for the engine's log of the container's end
# (its removal, "destroy", normally follows within a few hundred milliseconds).
ENDING_WAIT_S = 3.0
_CLOSED_MID_RUN = (
    "the run was cut short: the API was closed (close() was called) while it ran, "
    "and its sandbox was killed"
)


@dataclass(frozen=True)
class Ending:
    """How the engine saw a container end whose runner sent no exit frame.

    Attributes:
        exit_code: the container's exit status, when the engine knows it.
        oom_killed: the kernel's OOM killer acted in the container's memory cgroup.
    """

    exit_code: int | None = None
    oom_killed: bool = False


def judge_ending(state: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = ()) -> Ending:
    """Judge how a container ended from its inspected ``State`` and its events in the engine.

    Under gVisor the memory limit is enforced on the whole sandbox, so running out of memory
    can kill gVisor itself, runner and all, with no exit frame. The engine's ``OOMKilled`` is set
    only when its OOM notice arrives before the exit, and the state is gone once the container
    is removed; an ``oom`` event in the engine's log says the same and outlives both. A SIGKILL
    (137) alone is not taken as evidence of memory: anything may have killed the sandbox.
    """
    exit_code = state.get("ExitCode") if state.get("Running") is False else None
    oom_killed = bool(state.get("OOMKilled"))
    for event in events:
        action = event.get("Action")
        if action == "oom":
            oom_killed = True
        elif action == "die" and exit_code is None:
            code = ((event.get("Actor") or {}).get("Attributes") or {}).get("exitCode")
            exit_code = int(str(code)) if str(code).isdigit() else None
    return Ending(exit_code if isinstance(exit_code, int) else None, oom_killed)


@dataclass(frozen=True)
class Driver:
    """Runs requests in started sandboxes of one backend.

    Attributes:
        engine: asks whether a quiet container still runs, and how it ended.
        live: the backend's containers (a driven sandbox is let go through it).
        egress: admits an allowlist sandbox's address to the proxy for its run.
        startup_timeout: seconds a sandbox may take to take the request.
    """

    engine: Engine
    live: LiveContainers
    egress: EgressSetup
    startup_timeout: float
    grace: float = KILL_GRACE_S

    def drive(
        self,
        sandbox: Sandbox,
        message: Message,
        request: ExecutionRequest,
        spec: RunSpec,
        context: ExecutionContext,
        *,
        keep: bool = False,
    ) -> RunOutcome:
        """Send the request to a sandbox's runner; read its report; let the sandbox go.

        With ``keep`` (a session's call) the sandbox is not let go: its owner decides, and the
        stream's decoders carry over to the next call.

        Raises:
            NeverStarted: the sandbox went away before the code started.
            RunCancelledError: the run was cancelled, or the backend closed, mid-run.
            SandboxFailedError: the sandbox broke or ended without a report.
            RequestError: the runner could not write the call's files (nothing ran).
        """
        decoders = sandbox.decoders if keep else None
        reader = RunReader(context, sandbox.container_id[:12], message.nonce, decoders)
        forget = spec.cancel.on_cancel(sandbox.close)  # the reader sees EOF; the runner too
        if sandbox.address:
            self.egress.admit(sandbox.address, request.policy.network.allowed_domains)
        try:
            outcome = self._converse(sandbox, message.payload, reader, spec, request)
            return dataclasses.replace(outcome, forged_reports=reader.forged_reports)
        finally:
            if sandbox.address:
                self.egress.release(sandbox.address)
            forget()
            if not keep:
                finished = reader.exit_info is not None
                self.live.release(self.engine, sandbox.container_id, finished=finished)

    def _converse(
        self,
        sandbox: Sandbox,
        payload: bytes,
        reader: RunReader,
        spec: RunSpec,
        request: ExecutionRequest,
    ) -> RunOutcome:
        reader.take(sandbox.pending)
        sandbox.pending = b""  # a session's next call must not read the ready frame again
        reader.context.dispatch()
        try:
            sandbox.sock.sendall(payload)
        except OSError as exc:
            raise NeverStarted(f"could not send the request: {exc}") from exc
        sent_at = time.time()
        timed_out = self._pump(sandbox, reader, spec)
        refusals: list[Refusal] = self.egress.release(sandbox.address) if sandbox.address else []
        if spec.cancel.cancelled and reader.exit_info is None:
            raise RunCancelledError("the run was cancelled; its sandbox was killed")
        if self.live.closed and reader.exit_info is None:
            raise RunCancelledError(_CLOSED_MID_RUN)
        if reader.begun_at is None and reader.exit_info is None:
            raise NeverStarted("the runner ended before it took the request")
        outcome = self._outcome(sandbox, reader, timed_out, request, sent_at)
        return dataclasses.replace(
            outcome, network_refusals=tuple((r.host, r.port, r.reason) for r in refusals)
        )

    def _pump(self, sandbox: Sandbox, reader: RunReader, spec: RunSpec) -> bool:
        """Read frames until the runner reports the exit. Returns True when we had to time out.

        After IDLE_CHECK_S without a byte, the engine is asked whether the container still
        runs: an attach stream is not always closed when a container is removed under it.
        """
        ready_by = time.monotonic() + self.startup_timeout
        while reader.exit_info is None and not spec.cancel.cancelled:
            if reader.begun_at is None:
                limit = ready_by
            else:
                limit = reader.begun_at + spec.timeout_seconds + self.grace
            left = limit - time.monotonic()
            if left <= 0:
                if reader.begun_at is None:
                    raise SandboxFailedError(
                        f"the sandbox did not become ready within {self.startup_timeout:g} s"
                    )
                return True
            data = self._receive(sandbox.sock, min(left, IDLE_CHECK_S), spec)
            if data is None:
                if left > IDLE_CHECK_S and not self._running(sandbox):
                    return False
                continue
            if not data:
                return False
            _take(reader, data)
        return False

    def _receive(self, sock: socket.socket, wait: float, spec: RunSpec) -> bytes | None:
        """The next bytes of the stream; None when none came within ``wait``, b"" at its end."""
        try:
            readable = select.select([sock], [], [], wait)[0]
            return sock.recv(262144) if readable else None
        except (OSError, ValueError) as exc:  # ValueError: closed under us by a cancel
            if spec.cancel.cancelled or self.live.closed:
                return b""
            raise unavailable(f"the attach stream broke: {exc}") from exc

    def _running(self, sandbox: Sandbox) -> bool:
        return bool(self.engine.state(sandbox.container_id).get("Running"))

    def _outcome(
        self,
        sandbox: Sandbox,
        reader: RunReader,
        timed_out: bool,
        request: ExecutionRequest,
        sent_at: float,
    ) -> RunOutcome:
        """The outcome from the runner's report, or what the engine saw when there is none."""
        isolation = Isolation(
            mode="docker", runtime=sandbox.runtime, path=sandbox.path, image=sandbox.image
        )
        build = partial(build_outcome, isolation=isolation, sandbox_id=sandbox.container_id[:12])
        started = reader.begun_at is not None
        targets = [m.target for m in request.policy.filesystem.mounts]
        reported = reader.reported(build, request.track_resources, targets)
        if reported is not None:
            return reported
        elapsed = (time.monotonic() - (reader.begun_at or time.monotonic())) * 1000
        if timed_out:
            return build(ExitReport(signal=SIGKILL, timed_out=True, run_ms=elapsed))
        ending = self._ending(sandbox.container_id, sent_at)
        if ending.oom_killed:
            report = ExitReport(signal=SIGKILL, oom_killed=True, run_ms=elapsed)
            return build(report, started=started)
        detail = reader.runner_stderr.decode(errors="replace").strip()
        raise SandboxFailedError(
            "the sandbox ended without reporting a result"
            + (
                f" (container exit status {ending.exit_code})"
                if ending.exit_code is not None
                else ""
            )
            + (f": {detail}" if detail else "")
        )

    def ran_out_of_memory(self, container_id: str, since: float) -> bool:
        """Whether the engine saw the container run out of memory since ``since`` (Unix time)."""
        return self._ending(container_id, since).oom_killed

    def _ending(self, container_id: str, sent_at: float) -> Ending:
        """How the engine saw the container end; its event log only when the state is not enough.

        Only runs without an exit frame get here: a run with one costs no engine call.
        """
        state = self.engine.state(container_id)
        if state.get("OOMKilled"):
            return judge_ending(state)
        # A second early from the send: the engine's clock is ours, its "since" is in seconds.
        ending = judge_ending(state, self.engine.events(container_id, sent_at - 1.0, ENDING_WAIT_S))
        if ending.oom_killed:
            log.info("an OOM kill took the whole sandbox", container=container_id[:12])
        return ending


def _take(reader: RunReader, data: bytes) -> None:
    try:
        reader.take(data)
    except RequestError:  # the runner refused the call's files: the caller's to fix
        raise
    except (ProtocolError, ValueError) as exc:
        raise SandboxFailedError(f"the sandbox runner sent garbage: {exc}") from exc
