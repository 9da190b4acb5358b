"""From what a backend saw to the public result: violations, exit code, success (pure code).

Every backend reports a :class:`RunOutcome`; these functions judge it the same way for all of
them, so the contract (``success``, ``exit_code``, ``violations``) cannot drift between modes.
"""

from __future__ import annotations

import signal as signals
from collections.abc import Mapping
from datetime import UTC, datetime

from pydantic import JsonValue

from orchestrator.context import ExecutionContext, Stream
from orchestrator.errors import RunError
from orchestrator.models import (
    FAILING_CATEGORIES,
    ExecutionRequest,
    ExecutionResult,
    ValidationIssue,
    Violation,
)
from orchestrator.run import RunOutcome

VALIDATION_FAILED = "Code validation failed"


def _started_at(context: ExecutionContext) -> datetime:
    return context.started_at or datetime.now(UTC)


def signal_name(number: int) -> str:
    """Return e.g. ``SIGSEGV`` for 11, or ``signal 77`` for an unknown number."""
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_code_of(outcome: RunOutcome) -> int:
    """Return 0 on success, the exit status, 128+N when killed by signal N, -1 if never ran."""
    if not outcome.started:
        return -1
    if outcome.exit_code is not None:
        return outcome.exit_code
    if outcome.signal is not None:
        return 128 + outcome.signal
    return -1


def _output_violations(context: ExecutionContext) -> list[Violation]:
    found = []
    streams: tuple[Stream, ...] = ("stdout", "stderr")
    for stream in streams:
        cut, total = context.cut_bytes(stream)
        if cut:
            limit = context.max_output_bytes
            found.append(
                Violation(
                    category="output",
                    message=f"{stream} exceeded {limit} bytes ({total} in all); "
                    f"{cut} bytes were cut from the middle",
                    detail={
                        "stream": stream,
                        "limit_bytes": limit,
                        "total_bytes": total,
                        "cut_bytes": cut,
                    },
                )
            )
    return found


_READ_ONLY = ("Read-only file system", "EROFS")


def _filesystem_violations(context: ExecutionContext) -> list[Violation]:
    """Writes refused on the read-only root, as far as the code's stderr tells (advisory)."""
    stderr = context.get_stderr()
    count = sum(stderr.count(marker) for marker in _READ_ONLY)
    if not count:
        return []
    return [
        Violation(
            category="filesystem",
            message=f"{count} write(s) to the read-only filesystem were refused "
            "(advisory: seen in the code's stderr)",
            detail={"refused_writes": count, "source": "stderr"},
        )
    ]


def _refusal_detail(refusal: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
    """What the run-time layer refused: its kind, and what was attempted."""
    detail = refusal.get("detail")
    return {"kind": refusal.get("kind"), **(detail if isinstance(detail, dict) else {})}


def derive_violations(
    outcome: RunOutcome, context: ExecutionContext, request: ExecutionRequest, timeout: float
) -> list[Violation]:
    """Judge a run's facts against its policy's limits."""
    limits = request.policy.limits
    found = []
    if outcome.timed_out:
        ending = (
            "was interrupted; the session's state is kept" if outcome.interrupted else "was killed"
        )
        found.append(
            Violation(
                category="timeout",
                message=f"the run exceeded its {timeout:g} s timeout and {ending}",
                detail={"timeout_seconds": timeout}
                | ({"interrupted": True} if outcome.interrupted else {}),
            )
        )
    between = " between calls (what the code left running)" if outcome.between_calls else ""
    if outcome.oom_killed:
        found.append(
            Violation(
                category="memory",
                message=f"the run ran out of memory{between} (limit {limits.memory_mb} MiB)"
                + (" and was killed" if outcome.signal is not None and not between else ""),
                detail={"limit_mb": limits.memory_mb}
                | ({"between_calls": True} if between else {}),
            )
        )
    if outcome.pids_limit_hits:
        found.append(
            Violation(
                category="processes",
                message=f"the process limit ({limits.pids}) was reached{between}: "
                f"{outcome.pids_limit_hits} fork(s) failed",
                detail={"limit": limits.pids, "hits": outcome.pids_limit_hits}
                | ({"between_calls": True} if between else {}),
            )
        )
    if outcome.mount_write_exceeded is not None:
        cap = request.policy.filesystem.max_mount_write_bytes
        found.append(
            Violation(
                category="filesystem",
                message=f"the run wrote more than {cap} bytes to the filesystem of its writable "
                f"mount {outcome.mount_write_exceeded} and was killed",
                detail={"mount": outcome.mount_write_exceeded, "limit_bytes": cap},
            )
        )
    killed_for_cause = outcome.timed_out or outcome.oom_killed or outcome.mount_write_exceeded
    if outcome.signal is not None and not killed_for_cause:
        name = signal_name(outcome.signal)
        found.append(
            Violation(
                category="signal",
                message=f"the code was killed by {name} ({outcome.signal})",
                detail={"signal": outcome.signal, "name": name},
            )
        )
    for host, port, reason in outcome.network_refusals:
        found.append(
            Violation(
                category="network",
                message=f"a connection to {host}:{port} was refused: {reason}",
                detail={"domain": host, "port": port, "reason": reason},
            )
        )
    if outcome.forged_reports:
        found.append(
            Violation(
                category="output",
                message=f"the code wrote {outcome.forged_reports} report(s) of its own into "
                "the sandbox runner's channel; they were ignored (the exit status is the real one)",
                detail={"forged_reports": outcome.forged_reports},
            )
        )
    found += [
        Violation(
            category="policy",
            message=str(refusal["message"]),
            detail=_refusal_detail(refusal),
        )
        for refusal in outcome.policy_refusals
    ]
    found += _left_out_violations(outcome, request)
    return found + _filesystem_violations(context) + _output_violations(context)


def _left_out_violations(outcome: RunOutcome, request: ExecutionRequest) -> list[Violation]:
    """Files of ``/workspace/out`` that did not come back: over the cap, or not regular files."""
    over = [f for f in outcome.left_out if f.reason == "over the cap"]
    other = [f for f in outcome.left_out if f.reason != "over the cap"]
    found = []
    if over:
        cap = request.policy.files.max_out_bytes
        found.append(
            Violation(
                category="output",
                message=f"{len(over)} file(s) of {sum(f.size for f in over)} bytes were not "
                f"returned: the files of a run may add up to {cap} bytes (files.max_out_bytes)",
                detail={"limit_bytes": cap, "files": [f.name for f in over[:50]]},
            )
        )
    if other:
        found.append(
            Violation(
                category="output",
                message=f"{len(other)} entr(ies) of /workspace/out were not returned: links, "
                "FIFOs and other special files are never followed or read",
                detail={"files": [f.name for f in other[:50]]},
            )
        )
    return found


def assemble_result(
    request: ExecutionRequest,
    outcome: RunOutcome,
    context: ExecutionContext,
    issues: tuple[ValidationIssue, ...],
    timeout: float,
    total_ms: float,
) -> ExecutionResult:
    """Build the public result of a run that reached its sandbox."""
    violations = derive_violations(outcome, context, request, timeout)
    for violation in violations:
        context.add_violation(violation)
    exit_code = exit_code_of(outcome)
    failing = any(v.category in FAILING_CATEGORIES for v in violations)
    stderr = context.get_stderr()
    for note in outcome.notes:
        stderr += (
            f"{'' if not stderr or stderr.endswith(chr(10)) else chr(10)}[athena-sandbox] {note}\n"
        )
    return ExecutionResult(
        execution_id=request.execution_id,
        success=outcome.started and exit_code == 0 and not failing,
        stdout=context.get_stdout(),
        stderr=stderr,
        exit_code=exit_code,
        execution_time_ms=round(outcome.run_ms, 3),
        violations=tuple(violations),
        sandbox_id=outcome.sandbox_id,
        language=request.language,
        timestamp=_started_at(context),
        sandbox_mode=outcome.isolation.mode,
        isolation=outcome.isolation,
        output=outcome.output,
        issues=issues,
        policy=request.policy.name,
        timeout_seconds=timeout,
        resources=outcome.resources,
        total_time_ms=round(total_ms, 3),
        session_id=request.session_id,
        files=outcome.files,
        artifacts=outcome.artifacts,
    )


def failed_result(
    request: ExecutionRequest,
    error: RunError,
    context: ExecutionContext,
    issues: tuple[ValidationIssue, ...],
    timeout: float,
    total_ms: float,
    mode: str | None = None,
) -> ExecutionResult:
    """Build the result of a run that could not happen or finish (success False, ``error``).

    ``mode``: the isolation mode the code began in, for a run that ended after it began (then
    ``sandbox_id`` is its begin event's too); None for one that never began.
    """
    return ExecutionResult(
        execution_id=request.execution_id,
        success=False,
        sandbox_mode=mode,
        sandbox_id=context.begin.sandbox_id if mode is not None and context.begin else None,
        stdout=context.get_stdout(),
        stderr=context.get_stderr(),
        language=request.language,
        timestamp=_started_at(context),
        error=str(error),
        error_type=type(error).__name__,
        issues=issues,
        policy=request.policy.name,
        timeout_seconds=timeout,
        total_time_ms=round(total_ms, 3),
        session_id=request.session_id,
    )


def validation_failed_result(
    request: ExecutionRequest, issues: tuple[ValidationIssue, ...], timeout: float, total_ms: float
) -> ExecutionResult:
    """Build the result of code the validator rejected."""
    return ExecutionResult(
        execution_id=request.execution_id,
        success=False,
        language=request.language,
        error=VALIDATION_FAILED,
        error_type="ValidationError",
        issues=issues,
        policy=request.policy.name,
        timeout_seconds=timeout,
        total_time_ms=round(total_ms, 3),
        session_id=request.session_id,
    )
