"""Facts of the public contract that several test modules check."""

from __future__ import annotations

ISSUE_RESULT_KEYS = frozenset({
    "success", "execution_id", "stdout", "stderr", "exit_code", "execution_time_ms",
    "violations", "violation_details", "sandbox_id", "language", "timestamp", "sandbox_mode",
    "isolation", "output", "error", "error_type", "issues",
})  # fmt: skip
"""The keys the foundation issue promises in every execute_code dict (never removed)."""

RESULT_KEYS = ISSUE_RESULT_KEYS | {"policy", "timeout_seconds", "resources", "total_time_ms"}
"""Every key execute_code returns today."""
