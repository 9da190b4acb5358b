"""Unit tests of results.py: exit codes, violations and success, the same for every backend."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.context import ExecutionContext
from orchestrator.errors import BackendUnavailableError
from orchestrator.models import ExecutionRequest, Isolation, Resources, ValidationIssue
from orchestrator.policy import load_policy
from orchestrator.results import (
    VALIDATION_FAILED,
    assemble_result,
    derive_violations,
    exit_code_of,
    failed_result,
    signal_name,
    validation_failed_result,
)
from orchestrator.run import RunOutcome

ISOLATION = Isolation(mode="docker", runtime="runc", path="cold", image="img")
STRICT = load_policy("strict")  # memory 256 MiB, pids 64, 1 MiB of output per stream
ISSUE = ValidationIssue(severity="warning", message="hm", line=2, rule="dynamic_import")


def outcome(**fields: Any) -> RunOutcome:
    return RunOutcome(**{"isolation": ISOLATION, "started": True, **fields})


def request(**fields: Any) -> ExecutionRequest:
    return ExecutionRequest.create("print(1)", policy=STRICT, **fields)


def context(stdout: bytes = b"", stderr: bytes = b"", limit: int = 1024) -> ExecutionContext:
    ctx = ExecutionContext(capture_io=False, max_output_bytes=limit)
    ctx.feed("stdout", stdout)
    ctx.feed("stderr", stderr)
    return ctx


def categories(**fields: Any) -> list[str]:
    found = derive_violations(outcome(**fields), context(), request(), 30.0)
    return [v.category for v in found]


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"started": False, "exit_code": 0}, -1),
        ({"exit_code": 0}, 0),
        ({"exit_code": 3}, 3),
        ({"signal": 9}, 137),
        ({"signal": 11}, 139),
        ({}, -1),
    ],
)
def test_exit_code_of(fields: dict[str, Any], expected: int) -> None:
    """-1 when never run, the exit status, 128+N when killed by signal N, -1 when unknown."""
    assert exit_code_of(outcome(**fields)) == expected


@pytest.mark.parametrize(("number", "name"), [(9, "SIGKILL"), (11, "SIGSEGV"), (77, "signal 77")])
def test_signal_name(number: int, name: str) -> None:
    """Known signals get their SIG name; unknown numbers are spelt out."""
    assert signal_name(number) == name


# --------------------------------------------------------------------------- violations


def test_a_timeout_is_a_timeout_violation_without_a_signal_one() -> None:
    """A run killed at its timeout gets a timeout violation, not also a signal violation."""
    found = derive_violations(outcome(timed_out=True, signal=9), context(), request(), 2.5)
    assert [str(v) for v in found] == ["timeout: the run exceeded its 2.5 s timeout and was killed"]
    assert found[0].detail == {"timeout_seconds": 2.5}


def test_an_oom_kill_is_a_memory_violation_without_a_signal_one() -> None:
    """A run the kernel killed for memory gets a memory violation naming the limit."""
    found = derive_violations(outcome(oom_killed=True, signal=9), context(), request(), 30.0)
    assert [(v.category, v.detail) for v in found] == [("memory", {"limit_mb": 256})]
    assert "256 MiB" in found[0].message


def test_failed_forks_are_a_processes_violation() -> None:
    """Forks refused at the pids limit give a processes violation with the limit and count."""
    found = derive_violations(outcome(exit_code=0, pids_limit_hits=4), context(), request(), 30.0)
    assert [(v.category, v.detail) for v in found] == [("processes", {"limit": 64, "hits": 4})]


def test_a_signal_is_a_signal_violation() -> None:
    """A run killed by a signal (not timeout or OOM) gets a signal violation naming it."""
    found = derive_violations(outcome(signal=11), context(), request(), 30.0)
    assert [str(v) for v in found] == ["signal: the code was killed by SIGSEGV (11)"]
    assert found[0].detail == {"signal": 11, "name": "SIGSEGV"}


def test_a_clean_run_has_no_violations() -> None:
    """A run that exited without hitting a limit has no violations."""
    assert categories(exit_code=1) == []


def test_several_limits_give_several_violations() -> None:
    """Timeout, memory and process limits are all reported, in that order, without signal."""
    assert categories(timed_out=True, oom_killed=True, pids_limit_hits=1, signal=9) == [
        "timeout",
        "memory",
        "processes",
    ]


def test_a_cut_stream_is_an_output_violation() -> None:
    """A stream that exceeded max_output_bytes gives an output violation with its figures."""
    ctx = context(stdout=b"x" * 1500, limit=1024)
    found = derive_violations(outcome(exit_code=0), ctx, request(), 30.0)
    assert [(v.category, v.detail) for v in found] == [
        (
            "output",
            {"stream": "stdout", "limit_bytes": 1024, "total_bytes": 1500, "cut_bytes": 476},
        )
    ]
    assert found[0].message == (
        "stdout exceeded 1024 bytes (1500 in all); 476 bytes were cut from the middle"
    )


def test_bytes_dropped_by_the_runner_are_an_output_violation() -> None:
    """Bytes the sandbox dropped (mark_cut) count as cut output even if little arrived."""
    ctx = context(stderr=b"e", limit=1024)
    ctx.mark_cut("stderr", 10)
    found = derive_violations(outcome(exit_code=0), ctx, request(), 30.0)
    assert [v.detail["stream"] for v in found] == ["stderr"]


# --------------------------------------------------------------------------- assemble_result


def test_a_clean_run_succeeds_with_its_output() -> None:
    """Exit 0 without violations succeeds, carrying stdout, stderr, output and the isolation."""
    req = request(timeout_seconds=5)
    ctx = context(b"4\n", b"warn\n")
    resources = Resources(peak_memory_bytes=1, cpu_time_ms=2.0, wall_time_ms=3.0)
    done = outcome(
        exit_code=0, run_ms=12.3456, output={"a": 1}, sandbox_id="abc", resources=resources
    )
    result = assemble_result(req, done, ctx, (ISSUE,), 5.0, 20.00049)
    assert result.success is True
    assert (result.stdout, result.stderr, result.exit_code) == ("4\n", "warn\n", 0)
    assert result.output == {"a": 1}
    assert (result.execution_time_ms, result.total_time_ms) == (12.346, 20.0)
    assert (result.sandbox_id, result.sandbox_mode, result.isolation) == (
        "abc",
        "docker",
        ISOLATION,
    )
    assert result.issues == (ISSUE,)
    assert (result.policy, result.timeout_seconds, result.language) == ("strict", 5.0, "python")
    assert result.resources == resources
    assert result.execution_id == req.execution_id


def test_a_non_zero_exit_fails() -> None:
    """A run that exited non-zero is not a success."""
    result = assemble_result(request(), outcome(exit_code=1), context(), (), 30.0, 1.0)
    assert (result.success, result.exit_code) == (False, 1)


def test_exit_zero_with_a_processes_violation_fails() -> None:
    """Exit 0 with forks refused at the pids limit is not a success."""
    result = assemble_result(
        request(), outcome(exit_code=0, pids_limit_hits=1), context(), (), 30.0, 1.0
    )
    assert result.exit_code == 0
    assert result.success is False
    assert [v.category for v in result.violations] == ["processes"]


def test_a_forged_exit_report_is_an_output_violation() -> None:
    """Exit reports the code wrote into the runner's channel are reported; the real status counts."""
    result = assemble_result(
        request(), outcome(exit_code=3, forged_reports=2), context(), (), 30.0, 1.0
    )
    assert (result.success, result.exit_code) == (False, 3)
    assert [v.category for v in result.violations] == ["output"]
    assert result.violations[0].detail == {"forged_reports": 2}
    assert "report(s) of its own" in result.violations[0].message


def test_an_output_violation_alone_keeps_success() -> None:
    """Exit 0 whose output was cut still succeeds, with the output violation reported."""
    ctx = context(stdout=b"y" * 5000, limit=1024)
    result = assemble_result(request(), outcome(exit_code=0), ctx, (), 30.0, 1.0)
    assert result.success is True
    assert [v.category for v in result.violations] == ["output"]
    assert "athena-sandbox cut" in result.stdout


def test_a_run_that_never_started_fails() -> None:
    """A run the backend never started is not a success even with exit status 0."""
    result = assemble_result(
        request(), outcome(started=False, exit_code=0), context(), (), 30.0, 1.0
    )
    assert (result.success, result.exit_code) == (False, -1)


def test_a_timed_out_run_fails_with_exit_137() -> None:
    """A run killed at its timeout fails with 128+9 and one timeout violation."""
    result = assemble_result(request(), outcome(timed_out=True, signal=9), context(), (), 30.0, 1.0)
    assert (result.success, result.exit_code) == (False, 137)
    assert [v.category for v in result.violations] == ["timeout"]


def test_violations_are_passed_to_the_context_listeners() -> None:
    """assemble_result records each violation in the context, reaching its listeners."""
    ctx = context()
    kinds: list[str] = []
    ctx.subscribe(lambda event: kinds.append(event.kind))
    assemble_result(request(), outcome(signal=6), ctx, (), 30.0, 1.0)
    assert kinds == ["violation"]
    assert [v.category for v in ctx.violations] == ["signal"]


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (b"", "[athena-sandbox] one\n[athena-sandbox] two\n"),
        (b"Traceback", "Traceback\n[athena-sandbox] one\n[athena-sandbox] two\n"),
        (b"line\n", "line\n[athena-sandbox] one\n[athena-sandbox] two\n"),
    ],
)
def test_notes_are_appended_to_stderr_on_their_own_lines(stderr: bytes, expected: str) -> None:
    """Each note is appended to stderr on a line of its own, tagged [athena-sandbox]."""
    done = outcome(exit_code=0, notes=("one", "two"))
    result = assemble_result(request(), done, context(stderr=stderr), (), 30.0, 1.0)
    assert result.stderr == expected
    assert result.success is True


# --------------------------------------------------------------------------- failures


def test_failed_result_carries_the_error() -> None:
    """A run that could not happen gives success False, the error text and its type name."""
    error = BackendUnavailableError("no engine")
    result = failed_result(request(), error, context(b"partial"), (ISSUE,), 30.0, 2.0)
    assert result.success is False
    assert (result.error, result.error_type) == ("no engine", "BackendUnavailableError")
    assert (result.exit_code, result.stdout, result.issues) == (-1, "partial", (ISSUE,))


def test_validation_failed_result_carries_the_issues() -> None:
    """Rejected code gives success False, 'Code validation failed', the issues and exit -1."""
    issue = ValidationIssue(severity="error", message="no", line=1, rule="forbidden_import")
    result = validation_failed_result(request(), (issue,), 30.0, 1.0)
    assert (result.success, result.error, result.exit_code) == (False, VALIDATION_FAILED, -1)
    assert result.error == "Code validation failed"
    assert (result.error_type, result.issues) == ("ValidationError", (issue,))
