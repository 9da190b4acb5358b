"""The one typed exit report and its builder, and how a run without one is judged."""

from __future__ import annotations

import ast
import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator.backends import message
from orchestrator.backends.docker.backend import DockerBackend
from orchestrator.backends.docker.drive import Ending, judge_ending
from orchestrator.backends.docker.engine import kernel_oom
from orchestrator.backends.process import Supervised
from orchestrator.backends.protocol import FRAME_BEGIN, FRAME_EXIT
from orchestrator.context import ExecutionContext
from orchestrator.errors import SandboxFailedError
from orchestrator.models import ExecutionRequest, Isolation, Resources
from orchestrator.results import derive_violations, exit_code_of
from orchestrator.run import ExitReport, RunOutcome, RunSpec, build_outcome, process_exit
from orchestrator.settings import Settings
from orchestrator.testing import FakeEngine

ISOLATION = Isolation(mode="docker", runtime="runc", path="cold", image="img")
NONCE = "f00d"


def supervised(**changes: object) -> Supervised:
    fields: dict[str, object] = {
        "exit_code": 3,
        "signal": None,
        "timed_out": False,
        "cancelled": False,
        "run_ms": 12.5,
    }
    return Supervised(**{**fields, **changes})  # type: ignore[arg-type]


def test_the_runners_exit_frame_becomes_a_typed_report() -> None:
    """Nanoseconds become milliseconds, counters become flags, -1 (unmeasured) becomes None."""
    info = {
        "exit_code": None,
        "signal": 9,
        "timed_out": True,
        "oom_kills": 2,
        "pids_limit_hits": -1,
        "run_ns": 1_500_000,
        "value_truncated": True,
        "memory_peak_bytes": -1,
        "cpu_ns": 2_000_000,
        "mount_write_cap_hit": -1,
    }
    assert ExitReport.from_runner(info) == ExitReport(
        exit_code=None,
        signal=9,
        timed_out=True,
        oom_killed=True,
        pids_limit_hits=0,
        run_ms=1.5,
        value_truncated=True,
        memory_peak_bytes=None,
        cpu_ms=2.0,
        mount_write_cap_hit=None,
    )


def test_no_exit_frame_claims_nothing() -> None:
    """Without an exit frame the report is neutral: no status, no timeout, no OOM."""
    assert ExitReport.from_runner(None) == ExitReport()


def test_a_process_that_exited_reports_its_status() -> None:
    """A supervised process that exited keeps its exit code, time and truncation."""
    report = process_exit(supervised(extra_truncated=True))
    assert report == ExitReport(exit_code=3, run_ms=12.5, value_truncated=True)


@pytest.mark.parametrize(("timed_out", "cancelled"), [(True, False), (False, True)])
def test_a_process_we_killed_reports_sigkill_and_no_exit_code(
    timed_out: bool, cancelled: bool
) -> None:
    """A timeout or a cancellation is reported as SIGKILL without exit code, whatever the
    backend read of the status."""
    done = supervised(timed_out=timed_out, cancelled=cancelled)
    report = process_exit(done, status=(0, None), oom_killed=True)
    assert (report.exit_code, report.signal, report.timed_out) == (None, 9, timed_out)
    assert report.oom_killed


def test_a_backend_may_read_the_status_its_own_way() -> None:
    """``status`` replaces the process's exit code and signal (srt's 128+N, for one)."""
    assert process_exit(supervised(exit_code=137), status=(None, 9)).signal == 9


def test_the_builder_makes_the_outcome_from_report_and_value() -> None:
    """Report figures, the decoded output, refusals and the hit mount land in the outcome."""
    value = b'{"policy": {"kind": "import", "message": "no"}}\n{"value": [1, 2]}\n'
    report = ExitReport(exit_code=0, run_ms=4.0, memory_peak_bytes=10, mount_write_cap_hit=1)
    outcome = build_outcome(
        report,
        value,
        isolation=ISOLATION,
        sandbox_id="abc",
        started=False,
        track_resources=True,
        mount_targets=["/a", "/b"],
    )
    assert (outcome.exit_code, outcome.run_ms, outcome.output) == (0, 4.0, [1, 2])
    assert (outcome.isolation, outcome.sandbox_id, outcome.started) == (ISOLATION, "abc", False)
    assert outcome.policy_refusals == ({"kind": "import", "message": "no", "detail": {}},)
    assert outcome.mount_write_exceeded == "/b"
    assert outcome.resources == Resources(peak_memory_bytes=10, wall_time_ms=4.0)


def test_the_builder_reports_resources_only_when_asked_and_notes_a_dropped_value() -> None:
    """No resources unless tracked; a truncated value is a note; an unknown mount index is None."""
    report = ExitReport(exit_code=0, value_truncated=True, mount_write_cap_hit=5)
    outcome = build_outcome(
        report, None, isolation=ISOLATION, sandbox_id=None, mount_targets=["/a"]
    )
    assert outcome.resources is None
    assert outcome.mount_write_exceeded is None
    assert outcome.notes == ("`output` was larger than the output limit and was dropped",)


def test_no_backend_builds_an_outcome_by_hand() -> None:
    """Every backend's outcome comes from build_outcome: none calls RunOutcome(...) itself."""
    backends = Path(orchestrator.__file__).parent / "backends"
    builders = []
    for path in sorted(backends.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "RunOutcome":
                builders.append(f"{path.relative_to(backends)}:{node.lineno}")
    assert builders == []
    assert any(backends.rglob("*.py"))


# --------------------------------------------------------------------------- no exit frame

OOM, DESTROY = {"Action": "oom"}, {"Action": "destroy"}
DIED_137 = {"Action": "die", "Actor": {"Attributes": {"exitCode": "137"}}}


def test_the_engines_oomkilled_says_memory() -> None:
    """A container the engine marks OOMKilled ended for lack of memory, with its exit status."""
    state = {"Running": False, "OOMKilled": True, "ExitCode": 137}
    assert judge_ending(state) == Ending(exit_code=137, oom_killed=True)


def test_an_oom_event_says_memory_when_the_state_missed_it() -> None:
    """The OOM notice that came after the exit (OOMKilled false) is still found in the log."""
    state = {"Running": False, "OOMKilled": False, "ExitCode": 137}
    assert judge_ending(state, [DIED_137, OOM, DESTROY]) == Ending(137, oom_killed=True)


def test_the_event_log_speaks_for_a_container_already_removed() -> None:
    """With the container gone (state {}), the die event gives the status, the oom event the cause."""
    assert judge_ending({}, [OOM, DIED_137, DESTROY]) == Ending(137, oom_killed=True)


def test_a_sigkill_without_oom_evidence_is_not_called_memory() -> None:
    """Exit 137 alone (say, the sandbox was killed by hand) is not judged an OOM kill."""
    state = {"Running": False, "OOMKilled": False, "ExitCode": 137}
    assert judge_ending(state, [DIED_137, DESTROY]) == Ending(137, oom_killed=False)
    assert judge_ending({}, []) == Ending()


def test_a_running_containers_exit_code_is_not_its_status() -> None:
    """While the engine still sees it running, ExitCode (0) is ignored; the die event counts."""
    assert judge_ending({"Running": True, "ExitCode": 0}) == Ending()
    assert judge_ending({"Running": True, "ExitCode": 0}, [DIED_137]).exit_code == 137


class CountingEngine(FakeEngine):
    """A fake engine that counts its event-log reads."""

    event_reads = 0

    def events(self, container_id: str, since: float, wait: float) -> list[dict[str, Any]]:
        self.event_reads += 1
        return super().events(container_id, since, wait)


def frames(*parts: tuple[bytes, bytes]) -> bytes:
    """Runner frames in one stdout block of the attach stream."""
    body = b"".join(kind + struct.pack(">I", len(data)) + data for kind, data in parts)
    return bytes([1, 0, 0, 0]) + struct.pack(">I", len(body)) + body


def run_dying(
    engine_state: dict[str, Any], history: list[dict[str, Any]], exit_frame: bool = False
) -> tuple[RunOutcome, CountingEngine]:
    """Run python on a fake engine whose runner begins, then dies (or reports exit 0)."""
    ours, peer = socket.socketpair()
    reply = [(FRAME_BEGIN, b"")]
    if exit_frame:
        reply.append((FRAME_EXIT, json.dumps({"exit_code": 0, "nonce": NONCE}).encode()))
    peer.sendall(frames(*reply))
    peer.shutdown(socket.SHUT_WR)  # the sandbox is gone: EOF after its frames
    engine = CountingEngine(ours)
    engine.container_state, engine.history = engine_state, history
    settings = Settings(sweep_on_start=False, pool_size=0)
    try:
        with DockerBackend(settings, engine_factory=lambda: engine) as backend:
            request = ExecutionRequest.create("hog = bytearray(2 * 1024 ** 3)")
            return backend.run(request, RunSpec(5.0), ExecutionContext(capture_io=False)), engine
    finally:
        peer.close()
        ours.close()


@pytest.fixture(autouse=True)
def fixed_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's reports carry the nonce the backend sent."""
    monkeypatch.setattr(message, "new_nonce", lambda: NONCE)


def test_a_sandbox_the_oom_killer_took_whole_is_a_memory_violation() -> None:
    """No exit frame, OOMKilled missed by the state, an oom event logged: a failed run with a
    `memory:` violation and status 137, not a sandbox error."""
    gone = {"Running": False, "OOMKilled": False, "ExitCode": 137}
    outcome, engine = run_dying(gone, [OOM, DIED_137, DESTROY])
    assert (outcome.started, outcome.oom_killed, exit_code_of(outcome)) == (True, True, 137)
    request = ExecutionRequest.create("x")
    found = derive_violations(outcome, ExecutionContext(capture_io=False), request, 5.0)
    assert [v.category for v in found] == ["memory"]
    assert engine.event_reads == 1


def test_a_sandbox_that_died_of_something_else_is_still_a_sandbox_error() -> None:
    """No exit frame and no OOM evidence: the run fails as a sandbox error naming the status."""
    gone = {"Running": False, "OOMKilled": False, "ExitCode": 137}
    with pytest.raises(
        SandboxFailedError, match=r"without reporting a result \(container exit status 137\)"
    ):
        run_dying(gone, [DIED_137, DESTROY])


def test_a_run_with_its_exit_frame_never_reads_the_event_log() -> None:
    """The runner's report is the whole story: no extra engine call on the normal path."""
    outcome, engine = run_dying({"Running": True}, [OOM], exit_frame=True)
    assert (outcome.exit_code, outcome.oom_killed, engine.event_reads) == (0, False, 0)


def test_the_kernel_log_names_the_container_whose_cgroup_ran_out(tmp_path: Path) -> None:
    """An ``oom-kill`` line of the kernel counts only for the container in its ``oom_memcg``."""
    ours, other = "ab" * 32, "cd" * 32
    log = tmp_path / "kmsg"
    log.write_bytes(
        b"4,2011,13589420732,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),"
        b"cpuset="
        + other.encode()
        + b",mems_allowed=0,oom_memcg=/docker/"
        + ours.encode()
        + b",task_memcg=/docker/"
        + ours.encode()
        + b",task=exe,pid=24910,uid=65534\n"
    )
    assert kernel_oom(ours, str(log))
    assert not kernel_oom(other, str(log))  # named, but not as the cgroup that ran out
    assert not kernel_oom(ours, str(tmp_path / "missing"))
