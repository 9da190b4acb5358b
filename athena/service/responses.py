"""Response bodies of the HTTP API: the dicts the local API returns, key for key.

Routes return those dicts as they are (no second validation on the hot path); these models
are what ``/openapi.json`` publishes for them, and the tests check real answers against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Issue(_Out):
    """A validator finding."""

    severity: Literal["error", "warning"]
    message: str
    line: int | None
    rule: str


class ViolationDetail(_Out):
    """A violation: its category, a sentence, and figures."""

    category: str
    message: str
    detail: dict[str, Any]


class Isolation(_Out):
    """How the run was isolated (empty when it never reached a sandbox)."""

    runtime: str | None = None
    path: str | None = None
    image: str | None = None


class Resources(_Out):
    """Resource figures (with ``track_resources``)."""

    peak_memory_bytes: int | None
    cpu_time_ms: float | None
    wall_time_ms: float | None


class OutputFile(_Out):
    """A file the code wrote under ``/workspace/out``, or a figure (an artifact)."""

    name: str
    size: int
    sha256: str
    mime_type: str
    content: str = Field(description="The file's bytes, base64-encoded.")


class ExecutionResult(_Out):
    """The result dict of ``execute_code``."""

    success: bool
    execution_id: str
    stdout: str
    stderr: str
    exit_code: int
    execution_time_ms: float
    violations: list[str]
    violation_details: list[ViolationDetail]
    sandbox_id: str | None
    language: str
    timestamp: str
    sandbox_mode: str | None
    isolation: Isolation
    output: Any
    error: str | None
    error_type: str | None
    issues: list[Issue]
    policy: str
    timeout_seconds: float | None
    resources: Resources | None
    total_time_ms: float
    session_id: str | None = None
    session_state: Literal["kept", "restarted", "ended"] | None = None
    files: list[OutputFile] = Field(default_factory=list)
    artifacts: list[OutputFile] = Field(default_factory=list)


class BeginEvent(_Out):
    """The code started."""

    type: Literal["begin"]
    elapsed_ms: float
    sandbox_id: str | None


class StdoutEvent(_Out):
    """A chunk of standard output."""

    type: Literal["stdout"]
    elapsed_ms: float
    text: str


class StderrEvent(_Out):
    """A chunk of standard error."""

    type: Literal["stderr"]
    elapsed_ms: float
    text: str


class ViolationEvent(_Out):
    """A violation as it happened."""

    type: Literal["violation"]
    elapsed_ms: float
    violation: str
    detail: ViolationDetail


class ExitEvent(_Out):
    """The run is over: the last event, with the result."""

    type: Literal["exit"]
    elapsed_ms: float
    exit_code: int | None
    result: ExecutionResult | None


RunEvent = Annotated[
    BeginEvent | StdoutEvent | StderrEvent | ViolationEvent | ExitEvent,
    Field(discriminator="type"),
]


class BatchResults(_Out):
    """The results of a batch, in the order of its calls."""

    results: list[ExecutionResult]


class ExecutionRequestRecord(_Out):
    """What a recorded run was asked to do."""

    code: str
    language: str
    parameters: dict[str, Any] | None
    policy: dict[str, Any]
    timeout_seconds: float | None


class ExecutionRecord(_Out):
    """A recorded execution (``get_execution``)."""

    execution_id: str
    request: ExecutionRequestRecord
    result: ExecutionResult
    events: list[RunEvent]


class SessionInfo(_Out):
    """An open (or just ended) session, as ``sessions()`` lists it."""

    session_id: str
    language: str
    policy: str
    tenant: str
    image: str | None
    sandbox_mode: str
    sandbox_id: str | None
    created_at: str
    idle_seconds: float
    age_seconds: float
    idle_timeout_seconds: float
    max_lifetime_seconds: float
    calls: int
    restarts: int
    busy: bool
    state: Literal["open", "ended"]
    ended_reason: str | None


class SessionList(_Out):
    """The tenant's open sessions, oldest first."""

    sessions: list[SessionInfo]


class Replayed(_Out):
    """A new session rebuilt from a recorded one, and the results of the calls run again."""

    session: SessionInfo
    replayed: list[ExecutionResult]


class Ready(_Out):
    """Whether a warm sandbox is ready (``prewarm``)."""

    ready: bool


class NewId(_Out):
    """The id of the record just made."""

    id: int


class Forgotten(_Out):
    """Whether a record was forgotten."""

    forgotten: bool


class RecallHit(_Out):
    """One result of ``recall``."""

    id: int
    kind: str
    content: str
    tags: list[str]
    score: float
    created_at: str
    type: str
    context: dict[str, Any]


class RecallResults(_Out):
    """The results of ``recall``, best first."""

    results: list[RecallHit]


class EventHit(_Out):
    """One result of ``recall_events``."""

    id: int
    kind: Literal["event"]
    event_type: str
    content: str
    outcome: str | None
    context: dict[str, Any]
    created_at: str
    score: float | None


class EventResults(_Out):
    """The results of ``recall_events``."""

    results: list[EventHit]


class CodeIssue(_Out):
    """A finding about procedure code."""

    severity: Literal["error", "warning"]
    message: str
    line: int | None
    rule: str


class CodeValidation(_Out):
    """What ``validate_procedure_code`` found."""

    success: bool
    procedure_id: int | None
    quality_score: float
    checks: dict[str, bool]
    issues: list[CodeIssue]
    duration_seconds: float
    timestamp: str


class GeneratedCode(_Out):
    """What ``generate_procedure_code`` made."""

    success: bool
    procedure_id: int
    code: str
    confidence: float
    validation: CodeValidation | None
    issues: list[CodeIssue]
    generator: str
    duration_seconds: float
    timestamp: str


class ConsolidationReport(_Out):
    """What ``consolidate`` did."""

    strategy: str
    days_back: float
    patterns_created: int
    patterns_updated: int
    memories_merged: int
    memories_decayed: int
    memories_pruned: int
    executions_scanned: int
    events_scanned: int
    vectors_added: int
    duration_seconds: float


class PolicyDescription(_Out):
    """A policy as ``describe_policy`` tells it."""

    model_config = ConfigDict(extra="allow")

    name: str
    description: str
    summary: str
    network: Any
    mounts: Any
    limits: Any
    fallback: Any
    config: dict[str, Any]


class PolicyList(_Out):
    """The policies the tenant may use."""

    policies: list[PolicyDescription]


EVENT_TYPES = ("begin", "stdout", "stderr", "violation", "exit")
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One Server-Sent Event: `event` is the event's type, `data` the event as JSON "
    "(BeginEvent, StdoutEvent, StderrEvent, ViolationEvent or ExitEvent; the exit event, last, "
    "carries the result).",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": list(EVENT_TYPES)},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "oneOf": [
                    {"$ref": f"#/components/schemas/{name}"}
                    for name in (
                        "BeginEvent",
                        "StdoutEvent",
                        "StderrEvent",
                        "ViolationEvent",
                        "ExitEvent",
                    )
                ]
            },
        },
    },
}


class Identity(_Out):
    """Who the bearer token names (``GET /v1/whoami``)."""

    tenant: str = Field(description="The tenant: whose records these are, who runs the code.")
    policies: list[str] = Field(description="The shipped policies this tenant may use.")
    max_in_flight: int = Field(description="How many runs it may have going at once.")


class Health(_Out):
    """The process answers."""

    status: Literal["ok"]


class Readiness(_Out):
    """Whether the engine and the store answer, and the server takes runs."""

    ready: bool
    engine: str
    store: str
    draining: bool = False


class FieldError(_Out):
    """One field of a body that failed validation."""

    field: str
    message: str


class ErrorDetail(_Out):
    """What went wrong: the error's class name, and what to change."""

    type: str
    message: str
    fields: list[FieldError] | None = None
    session_id: str | None = Field(None, description="SessionEndedError: the session's id.")
    reason: str | None = Field(None, description="SessionEndedError: why the session ended.")


class ErrorEnvelope(_Out):
    """The body of every error response."""

    error: ErrorDetail
