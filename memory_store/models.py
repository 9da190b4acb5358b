"""Records read back from the memory store (frozen pydantic models).

Ids come from one sequence shared by every kind of record, so an id names one object of the
store whatever its kind.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, JsonValue


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ExecutionRecord(_Frozen):
    """One recorded code execution.

    Attributes:
        id: the store-wide id of this record.
        execution_id: the run's ``execution_id``.
        language: the canonical language name.
        policy: the policy's name.
        policy_config: the whole policy, as ``Policy.model_dump(mode="json")``.
        code: the source text that was run (or refused).
        parameters: the parameters the code received.
        success: whether the run succeeded.
        exit_code: the exit code (-1 when the code never ran).
        stdout: standard output, as captured (already capped by the policy).
        stderr: standard error, as captured.
        error: the error message, when the run failed outside the code.
        error_type: the error's type name.
        violations: the violations as ``"category: message"`` strings.
        result: the whole ``ExecutionResult.to_dict()``.
        sandbox_mode: the isolation mode the run used, when it ran.
        execution_time_ms: milliseconds the code ran.
        created_at: when the run was recorded (UTC).

    """

    id: int
    execution_id: str
    language: str
    policy: str
    policy_config: dict[str, JsonValue]
    code: str
    parameters: dict[str, JsonValue]
    success: bool
    exit_code: int
    stdout: str
    stderr: str
    error: str | None
    error_type: str | None
    violations: list[str]
    result: dict[str, JsonValue]
    sandbox_mode: str | None
    execution_time_ms: float
    created_at: datetime


class EventRecord(_Frozen):
    """One episodic event: something that happened, in a line worth recalling later.

    Attributes:
        id: the store-wide id of this record.
        event_type: what kind of event (``execution`` for a recorded run).
        content: a one-line summary for people, agents and full-text search.
        outcome: ``success`` or ``failure``, when the event has one.
        context: ids and figures linking the event to other records (``execution_ref``).
        created_at: when the event was recorded (UTC).

    """

    id: int
    event_type: str
    content: str
    outcome: str | None
    context: dict[str, JsonValue]
    created_at: datetime
