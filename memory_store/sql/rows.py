"""Conversions between runs and table rows, shared by the store backends (pure).

JSON columns hold compact JSON text. Text that UTF-8 cannot encode (lone surrogates, from
undecodable bytes in code or output) is stored with U+FFFD in their place, so recording a run
never fails on its text.

Files never reach a record, only their metadata: the files a run was sent keep name, size and
SHA-256 (``input_files``), those it returned and its artifacts keep name, size, SHA-256 and MIME
type (in ``result``). Bytes cannot be written at all: :func:`json_text` refuses them, so a
result field that carries bytes fails loudly instead of landing, encoded, in the store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from memory_store.records import (
    EntityRecord,
    EventRecord,
    ExecutionRecord,
    MemoryRecord,
    ProcedureRecord,
    RelationRecord,
)
from orchestrator.models import Event, ExecutionRequest, ExecutionResult

REDACTED_PARAMETERS: dict[str, Any] = {}
"""What a redacted execution keeps of its parameters (``parameters_redacted`` says so)."""

EXECUTION_JSON_COLUMNS = ("policy_config", "parameters", "violations", "result", "input_files")
_OWN_COLUMNS = ("stdout", "stderr")
_FILE_KEYS = ("files", "artifacts")


def text(value: str) -> str:
    """Return ``value`` with lone surrogates replaced by U+FFFD, so UTF-8 can encode it."""
    if value.isascii():  # O(1) in CPython: the common case skips the encode below
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def _refuse(value: Any) -> Any:
    kind = type(value).__name__
    if isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{kind} cannot be stored in a record: keep the metadata, not content")
    raise TypeError(f"{kind} is not JSON")


def json_text(value: Any) -> str:
    """Return ``value`` as compact JSON text (non-ASCII kept as is).

    Raises:
        TypeError: ``value`` holds something JSON cannot hold (bytes, above all).

    """
    return text(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_refuse))


def result_json(result: ExecutionResult) -> dict[str, Any]:
    """Return the result as a record keeps it: ``to_dict()`` without content or output.

    Files and artifacts keep their metadata (``to_record()``), never their bytes; stdout and
    stderr have columns of their own, so a run's output is stored once
    (:func:`execution_from_row` puts them back).
    """
    data = {k: v for k, v in result.to_dict().items() if k not in _OWN_COLUMNS}
    data["files"] = [f.to_record() for f in result.files]
    data["artifacts"] = [a.to_record() for a in result.artifacts]
    return data


def event_dicts(events: Sequence[Event]) -> list[dict[str, Any]]:
    """Return the events as stored: their dicts, the exit event without its result.

    The result is the row's own (``execution_from_row`` puts it back), so it is stored once.
    """
    found = []
    for event in events:
        if event.kind == "exit":
            data = event.model_copy(update={"result": None}).to_dict()
            data.pop("result", None)
            found.append(data)
        else:
            found.append(event.to_dict())
    return found


def execution_values(
    request: ExecutionRequest,
    result: ExecutionResult,
    *,
    redact_parameters: bool = False,
    events: Sequence[Event] = (),
) -> dict[str, Any]:
    """Return the column values of an execution row, without ``id`` and ``created_at``.

    With ``redact_parameters`` (or the policy's ``records.redact_parameters``) the parameters
    are stored as ``{}`` and ``parameters_redacted`` is true; code and output are kept. The
    row belongs to ``request.tenant``. Files keep their metadata only (see the module).
    """
    redact = redact_parameters or request.policy.records.redact_parameters
    return {
        "execution_id": result.execution_id,
        "language": request.language,
        "policy": request.policy.name,
        # model_dump_json() is model_dump(mode="json") serialised, at a quarter of the cost.
        "policy_config": text(request.policy.model_dump_json()),
        "code": text(request.code),
        "parameters": json_text(REDACTED_PARAMETERS if redact else request.parameters),
        "parameters_redacted": redact,
        "success": result.success,
        "exit_code": result.exit_code,
        "stdout": text(result.stdout),
        "stderr": text(result.stderr),
        "error": None if result.error is None else text(result.error),
        "error_type": result.error_type,
        "violations": json_text([str(v) for v in result.violations]),
        "result": json_text(result_json(result)),
        "sandbox_mode": result.sandbox_mode,
        "execution_time_ms": result.execution_time_ms,
        "tenant": request.tenant,
        "events": json_text(event_dicts(events)),
        "requested_timeout_seconds": request.timeout_seconds,
        "session_id": None if request.session_id is None else text(request.session_id),
        "input_files": json_text([f.to_record() for f in request.files]),
        "capture_figures": request.capture_figures,
        "image": request.image,
    }


def execution_from_row(row: Mapping[str, Any]) -> ExecutionRecord:
    """Return the record of an ``executions`` row (JSON columns as text).

    The exit event gets its result back (the row's result, output included). Records made
    before schema version 4 have no session, no files and captured figures.
    """
    data = dict(row)
    data.pop("tenant", None)
    data.setdefault("input_files", "[]")
    for key in EXECUTION_JSON_COLUMNS:
        data[key] = json.loads(data[key])
    data["success"] = bool(data["success"])
    data["parameters_redacted"] = bool(data.get("parameters_redacted", 0))
    data["capture_figures"] = bool(data.get("capture_figures", 1))
    data["result"].update({key: data[key] for key in _OWN_COLUMNS})
    for key in _FILE_KEYS:
        data[key] = data["result"].get(key, [])
    data["session_state"] = data["result"].get("session_state")
    events = json.loads(data.get("events") or "[]")
    for event in events:
        if event.get("type") == "exit":
            event["result"] = data["result"]
    data["events"] = events
    return ExecutionRecord.model_validate(data)


def _loaded(row: Mapping[str, Any], *columns: str) -> dict[str, Any]:
    data = dict(row)
    data.pop("tenant", None)  # a view's records are all of its tenant
    for column in columns:
        data[column] = json.loads(data[column])
    return data


def event_from_row(row: Mapping[str, Any]) -> EventRecord:
    """Return the record of an ``events`` row (``context`` as JSON text)."""
    return EventRecord.model_validate(_loaded(row, "context"))


def memory_from_row(row: Mapping[str, Any]) -> MemoryRecord:
    """Return the record of a ``memories`` row (JSON columns as text)."""
    data = _loaded(row, "context", "tags", "merged_ids")
    data.pop("decayed_at", None)
    return MemoryRecord.model_validate(data)


def procedure_from_row(row: Mapping[str, Any]) -> ProcedureRecord:
    """Return the record of a ``procedures`` row (JSON columns as text)."""
    return ProcedureRecord.model_validate(_loaded(row, "context", "steps"))


def entity_from_row(row: Mapping[str, Any]) -> EntityRecord:
    """Return the record of an ``entities`` row (JSON columns as text)."""
    data = _loaded(row, "context")
    data.pop("name_key", None)
    return EntityRecord.model_validate(data)


def relation_from_row(row: Mapping[str, Any]) -> RelationRecord:
    """Return the record of a ``relations`` row (JSON columns as text)."""
    return RelationRecord.model_validate(_loaded(row, "context"))
