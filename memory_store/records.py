"""Records read back from the memory store, and what its searches return (frozen pydantic).

Ids come from one sequence shared by every kind of record, so an id names one object of the
store whatever its kind. Each model with a ``to_dict()`` gives the plain dict ``MemoryAPI``
returns for it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

Kind = Literal["memory", "event", "execution", "procedure", "entity", "relation"]
"""Every kind of record; ids are unique across all of them."""


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
        result: the whole ``ExecutionResult.to_dict()``, except that its ``files`` and
            ``artifacts`` keep metadata only (``OutputFile.to_record()``: no ``content``).
        sandbox_mode: the isolation mode the run used, when it ran.
        execution_time_ms: milliseconds the code ran.
        created_at: when the run was recorded (UTC).
        parameters_redacted: the parameters were not kept (``parameters`` is then ``{}``),
            by the ``redact_parameters`` setting or the policy's ``records.redact_parameters``.
        events: the run's events as ``execute_code_stream`` yields them, the ``exit`` event
            (last) with its result; output past the policy's ``max_output_bytes`` is cut as
            in ``stdout``/``stderr`` (see :mod:`orchestrator.eventlog`). Empty for runs
            recorded before schema version 3, or recorded without events.
        requested_timeout_seconds: the timeout the caller asked for (None: they did not; the
            policy's limit applied). ``result["timeout_seconds"]`` is the one the run had.
        session_id: the session this run was a call of (None: a one-shot run, or recorded
            before schema version 4); :meth:`Store.session_calls` reads a session's calls.
        session_state: what the call did to its session (``kept``, ``restarted``, ``ended``;
            None for a one-shot run), as in ``result``.
        input_files: the files the run was sent, as ``{name, size, sha256}`` in the caller's
            order; never their content (replay cannot send them again without the caller).
        files: the files the run returned, as ``{name, size, sha256, mime_type}``; no content.
        artifacts: the figures it returned, as ``files``; no content.
        capture_figures: whether the run was asked to return its figures.
        image: the custom image the run asked for (None: the policy's or the language's own).

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
    parameters_redacted: bool = False
    events: list[dict[str, JsonValue]] = Field(default_factory=list)
    requested_timeout_seconds: float | None = None
    session_id: str | None = None
    session_state: Literal["kept", "restarted", "ended"] | None = None
    input_files: list[dict[str, JsonValue]] = Field(default_factory=list)
    files: list[dict[str, JsonValue]] = Field(default_factory=list)
    artifacts: list[dict[str, JsonValue]] = Field(default_factory=list)
    capture_figures: bool = True
    image: str | None = None


class EventRecord(_Frozen):
    """One episodic event: something that happened, in a line worth recalling later.

    Attributes:
        id: the store-wide id of this record.
        event_type: what kind of event (``execution`` for a recorded run).
        content: a one-line summary for people, agents and full-text search.
        outcome: ``success`` or ``failure``, when the event has one.
        context: ids and figures linking the event to other records (``execution_ref``).
        created_at: when the event was recorded (UTC).
        ref_id: the record the event is about (the execution, for ``execution`` events);
            forgetting that record forgets the event too.

    """

    id: int
    event_type: str
    content: str
    outcome: str | None
    context: dict[str, JsonValue]
    created_at: datetime
    ref_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the event as the plain dict of ``recall_events``."""
        return {
            "id": self.id,
            "kind": "event",
            "event_type": self.event_type,
            "content": self.content,
            "outcome": self.outcome,
            "context": self.context,
            "created_at": self.created_at.isoformat(),
        }


class MemoryRecord(_Frozen):
    """One memory: a fact, a lesson, a preference, a pattern found by consolidation.

    Attributes:
        id: the store-wide id.
        memory_type: free-form, normalised (``semantic`` by default; ``episodic``,
            ``procedural``, ``preference``, ... are all accepted).
        content: the text.
        context: the caller's JSON context (consolidation adds ``pattern_key`` and counts).
        tags: normalised tags; consolidation's patterns carry ``pattern``.
        importance: 0..1; consolidation raises it for patterns and decays it when unused.
        access_count: how many times recall returned it.
        last_accessed_at: when recall last returned it.
        merged_ids: ids of near-duplicates consolidation merged into this one.
        pattern_key: the key of the group a consolidation pattern summarises, else None.
        created_at: when it was remembered (UTC).
        updated_at: when it last changed (UTC).

    """

    id: int
    memory_type: str
    content: str
    context: dict[str, JsonValue]
    tags: tuple[str, ...]
    importance: float
    access_count: int
    last_accessed_at: datetime | None
    merged_ids: tuple[int, ...]
    pattern_key: str | None
    created_at: datetime
    updated_at: datetime


class ProcedureStep(_Frozen):
    """One step of a procedure.

    Attributes:
        description: what the step does, in words.
        name: a short name, when the caller gave one.
        code: Python the generated step function runs, when the caller gave it.
        details: any other JSON fields the caller gave.

    """

    description: str
    name: str | None = None
    code: str | None = None
    details: dict[str, JsonValue] = Field(default_factory=dict)


class ProcedureRecord(_Frozen):
    """A remembered procedure: named, ordered steps.

    Attributes:
        id: the store-wide id.
        name: what the procedure is called.
        category: free-form, normalised (``general`` by default).
        steps: the steps, in order.
        context: the caller's JSON context.
        created_at: when it was remembered (UTC).

    """

    id: int
    name: str
    category: str
    steps: tuple[ProcedureStep, ...]
    context: dict[str, JsonValue]
    created_at: datetime


class EntityRecord(_Frozen):
    """A remembered entity: a person, a service, a dataset, a process...

    Attributes:
        id: the store-wide id.
        name: its name, as first given (whitespace collapsed).
        entity_type: free-form, normalised.
        context: the caller's JSON context, merged over repeated ``remember_entity`` calls.
        created_at: when it was first remembered (UTC).

    """

    id: int
    name: str
    entity_type: str
    context: dict[str, JsonValue]
    created_at: datetime


class RelationRecord(_Frozen):
    """A typed link from one record to another (of any kind).

    Attributes:
        id: the store-wide id.
        source_id: the record the relation starts from.
        target_id: the record it points at.
        relation_type: free-form, normalised (``works_on``, ``depends on``...).
        context: the caller's JSON context.
        created_at: when it was made (UTC).

    """

    id: int
    source_id: int
    target_id: int
    relation_type: str
    context: dict[str, JsonValue]
    created_at: datetime


class RecallHit(_Frozen):
    """One result of ``recall``.

    Attributes:
        id: the store-wide id (``forget`` takes it whatever the kind).
        kind: memory, event, execution, procedure or entity.
        content: the text: a memory's or event's content, an execution's one-line summary, a
            procedure's name and steps, an entity's name.
        tags: a memory's tags (other kinds have none).
        score: 0..1, higher is better (see ``MemoryAPI.recall``).
        created_at: when the record was made (UTC).
        type: the record's own type: memory_type, event_type, the execution's language, the
            procedure's category or the entity_type.
        context: the record's context, its own fields included (those ``context`` filters on).

    """

    id: int
    kind: str
    content: str
    tags: tuple[str, ...]
    score: float
    created_at: datetime
    type: str
    context: dict[str, JsonValue]

    def to_dict(self) -> dict[str, Any]:
        """Return the plain dict of ``recall``."""
        return {
            "id": self.id,
            "kind": self.kind,
            "content": self.content,
            "tags": list(self.tags),
            "score": self.score,
            "created_at": self.created_at.isoformat(),
            "type": self.type,
            "context": self.context,
        }


class EventHit(_Frozen):
    """One result of ``recall_events``: an event, and its score when words were searched.

    Attributes:
        event: the event.
        score: 0..1 relative to the best match of the words (None when no words were given).

    """

    event: EventRecord
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the plain dict of ``recall_events``: the event's fields and ``score``."""
        return {**self.event.to_dict(), "score": self.score}


class ConsolidationReport(_Frozen):
    """What one ``consolidate`` run did.

    Attributes:
        strategy: the strategy used.
        days_back: the window, in days, scanned for patterns and duplicates.
        patterns_created: new pattern memories.
        patterns_updated: existing pattern memories whose counts grew.
        memories_merged: near-duplicate memories merged into an older one (and removed).
        memories_decayed: memories whose importance decayed for being unused.
        memories_pruned: memories removed for having decayed below the strategy's floor.
        executions_scanned: executions in the window.
        events_scanned: events in the window (execution events are counted with executions).
        vectors_added: items embedded on the way (hybrid ranking only).
        duration_seconds: how long it took.

    """

    strategy: str
    days_back: float
    patterns_created: int = 0
    patterns_updated: int = 0
    memories_merged: int = 0
    memories_decayed: int = 0
    memories_pruned: int = 0
    executions_scanned: int = 0
    events_scanned: int = 0
    vectors_added: int = 0
    duration_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the plain dict of ``consolidate``."""
        return self.model_dump()


class CodeIssue(_Frozen):
    """One finding about procedure code (the shape of ``execute_code``'s ``issues``).

    Attributes:
        severity: ``error`` (the code should not run as is) or ``warning``.
        message: what was found.
        line: 1-based line, when known.
        rule: the check behind it: syntax, security, docstring, error_handling, type_hints,
            generator.

    """

    severity: Literal["error", "warning"]
    message: str
    line: int | None = None
    rule: str

    def to_dict(self) -> dict[str, Any]:
        """Return the ``{severity, message, line, rule}`` dict."""
        return self.model_dump()


class CodeValidation(_Frozen):
    """What ``validate_procedure_code`` found.

    Attributes:
        success: the code parses and breaks no rule of the strict policy (it may be run).
        procedure_id: the procedure the code is for, when given.
        quality_score: 0..1: syntax 0.3, security 0.25, docstrings 0.15, error handling 0.15,
            type hints 0.15 (docstrings and type hints by the share of functions that have them;
            code without functions gets nothing for type hints).
        checks: each check passed or not.
        issues: the findings.
        duration_seconds: how long validation took.
        timestamp: when it ran (UTC).

    """

    success: bool
    procedure_id: int | None
    quality_score: float
    checks: dict[str, bool]
    issues: tuple[CodeIssue, ...]
    duration_seconds: float
    timestamp: datetime

    def to_dict(self) -> dict[str, Any]:
        """Return the plain dict of ``validate_procedure_code``."""
        return {
            "success": self.success,
            "procedure_id": self.procedure_id,
            "quality_score": self.quality_score,
            "checks": dict(self.checks),
            "issues": [i.to_dict() for i in self.issues],
            "duration_seconds": self.duration_seconds,
            "timestamp": self.timestamp.isoformat(),
        }


class GeneratedCode(_Frozen):
    """What ``generate_procedure_code`` made.

    Attributes:
        success: code was generated and passed validation (syntax and security).
        procedure_id: the procedure.
        code: the Python source ("" when the generator failed).
        confidence: the validation's quality score (0 when the generator failed).
        validation: the validation of the code.
        issues: the validation's findings, and the generator's error if it failed.
        generator: ``template`` (built in, deterministic) or the custom generator's name.
        duration_seconds: how long generation and validation took.
        timestamp: when it ran (UTC).

    """

    success: bool
    procedure_id: int
    code: str
    confidence: float
    validation: CodeValidation | None
    issues: tuple[CodeIssue, ...]
    generator: str
    duration_seconds: float
    timestamp: datetime

    def to_dict(self) -> dict[str, Any]:
        """Return the plain dict of ``generate_procedure_code``."""
        return {
            "success": self.success,
            "procedure_id": self.procedure_id,
            "code": self.code,
            "confidence": self.confidence,
            "validation": None if self.validation is None else self.validation.to_dict(),
            "issues": [i.to_dict() for i in self.issues],
            "generator": self.generator,
            "duration_seconds": self.duration_seconds,
            "timestamp": self.timestamp.isoformat(),
        }


CodeGenerator = Callable[[ProcedureRecord], str]
"""Makes Python source from a procedure (e.g. by asking a model)."""
