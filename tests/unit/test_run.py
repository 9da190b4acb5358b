"""The one typed exit report and its builder: every backend's outcome comes out of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import orchestrator
from orchestrator.backends.process import Supervised
from orchestrator.models import Isolation, Resources
from orchestrator.run import ExitReport, build_outcome, process_exit

ISOLATION = Isolation(mode="docker", runtime="runc", path="cold", image="img")


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
