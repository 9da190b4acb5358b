"""One-line summaries of executions, the ``content`` of their episodic events (pure).

A summary is written for later recall and full-text search: the language, the outcome, the exit
code, the policy, the first line of the code, the violations and, for failures, the error and
the last line of stderr (usually the exception), e.g.::

    python run failed (exit 1) under strict: x = 1 / 0 | ZeroDivisionError: division by zero
"""

from __future__ import annotations

from orchestrator.models import ExecutionRequest, ExecutionResult

CODE_CHARS = 80
VIOLATION_CHARS = 120
ERROR_CHARS = 160
MAX_VIOLATIONS = 5
SEPARATOR = " | "


def clip(text: str, limit: int) -> str:
    """Return ``text`` on one line with runs of whitespace collapsed, cut to ``limit`` chars."""
    # Only a bounded prefix is normalised, so a megabyte-long line costs no more than a short one.
    window = text[: limit * 4]
    line = " ".join(window.split())
    if len(line) > limit or len(text) > len(window):
        return line[: limit - 1].rstrip() + "…"
    return line


def first_code_line(code: str) -> str:
    """Return the first non-blank line of the code, clipped, or ``(no code)``."""
    stripped = code.lstrip()
    end = stripped.find("\n")
    line = stripped if end < 0 else stripped[:end]
    return clip(line, CODE_CHARS) if line.strip() else "(no code)"


def last_stderr_line(stderr: str) -> str:
    """Return the last non-blank line of stderr, clipped, or an empty string."""
    tail = stderr.rstrip()
    return clip(tail[tail.rfind("\n") + 1 :], ERROR_CHARS)


def _violation_parts(violations: list[str]) -> list[str]:
    parts = [clip(v, VIOLATION_CHARS) for v in violations[:MAX_VIOLATIONS]]
    if len(violations) > MAX_VIOLATIONS:
        parts.append(f"and {len(violations) - MAX_VIOLATIONS} more violations")
    return parts


def _failure_parts(result: ExecutionResult) -> list[str]:
    parts = []
    if result.error:
        prefix = f"{result.error_type}: " if result.error_type else ""
        parts.append(clip(prefix + result.error, ERROR_CHARS))
    last = last_stderr_line(result.stderr)
    if last and last not in parts:
        parts.append(last)
    return parts


def summarize_execution(request: ExecutionRequest, result: ExecutionResult) -> str:
    """Return the one-line summary of a run, for its ``execution`` event."""
    verb = "succeeded" if result.success else "failed"
    head = (
        f"{request.language} run {verb} (exit {result.exit_code}) under "
        f"{request.policy.name}: {first_code_line(request.code)}"
    )
    parts = [head, *_violation_parts([str(v) for v in result.violations])]
    if not result.success:
        parts.extend(_failure_parts(result))
    return SEPARATOR.join(parts)
