"""What the full-text index holds for each kind of record (pure).

A :class:`Document` has three weighted text fields (title, body, tags) and the ``ctx`` the
``context`` filter of ``recall`` compares with: the record's own context plus its own fields
(``memory_type``, ``language``, ``event_type``...). Text fields go through
:func:`memory_store.sql.search.index_text`, so identifier parts are searchable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue

from memory_store.records import ProcedureStep
from memory_store.requests import NewEntity, NewEvent, NewMemory, NewProcedure
from memory_store.sql.rows import json_text, text
from memory_store.sql.search import index_text

CODE_CHARS = 2000
STDOUT_TAIL_CHARS = 1000
STDERR_TAIL_CHARS = 2000
TITLE_WEIGHT, BODY_WEIGHT, TAGS_WEIGHT = 4.0, 1.0, 2.0


@dataclass(frozen=True)
class Document:
    """One row of the full-text index.

    Attributes:
        kind: the record's kind.
        title: names and summaries (weighted 4).
        body: the text (weighted 1).
        tags: tags and types (weighted 2).
        ctx: the filterable context, as canonical JSON text.

    """

    kind: str
    title: str
    body: str
    tags: str
    ctx: str

    def embedding_text(self) -> str:
        """Return the text a sentence embedding of this record is made from (first 2000 chars)."""
        return " ".join(part for part in (self.title, self.body) if part)[:CODE_CHARS]


def _ctx(own: Mapping[str, JsonValue], fields: Mapping[str, JsonValue]) -> str:
    merged: dict[str, JsonValue] = {**own, **{k: v for k, v in fields.items() if v is not None}}
    return json_text(dict(sorted(merged.items())))


def _document(kind: str, title: str, body: str, tags: list[str | None], ctx: str) -> Document:
    return Document(
        kind=kind,
        title=index_text(text(title)),
        body=index_text(text(body)),
        tags=" ".join(t for t in tags if t),
        ctx=ctx,
    )


def memory_document(memory: NewMemory) -> Document:
    """Return the document of a memory."""
    ctx = _ctx(memory.context, {"memory_type": memory.memory_type})
    return _document("memory", "", memory.content, [*memory.tags, memory.memory_type], ctx)


def event_document(event: NewEvent) -> Document:
    """Return the document of an event."""
    ctx = _ctx(event.context, {"event_type": event.event_type, "outcome": event.outcome})
    return _document("event", "", event.content, [event.event_type, event.outcome], ctx)


def steps_text(steps: tuple[ProcedureStep, ...]) -> str:
    """Return a procedure's steps as numbered lines."""
    return "\n".join(
        f"{n}. {s.name + ': ' if s.name else ''}{s.description}" for n, s in enumerate(steps, 1)
    )


def procedure_document(procedure: NewProcedure) -> Document:
    """Return the document of a procedure."""
    ctx = _ctx(procedure.context, {"category": procedure.category, "name": procedure.name})
    body = steps_text(procedure.steps)
    return _document("procedure", procedure.name, body, [procedure.category], ctx)


def entity_document(entity: NewEntity) -> Document:
    """Return the document of an entity (its context's strings are searchable too)."""
    ctx = _ctx(entity.context, {"entity_type": entity.entity_type, "name": entity.name})
    body = " ".join(str(v) for v in entity.context.values() if isinstance(v, str | int | float))
    return _document("entity", entity.name, body, [entity.entity_type], ctx)


def execution_document(values: Mapping[str, Any], summary: str, outcome: str) -> Document:
    """Return the document of an execution, from its row values (see ``rows``).

    Title: the one-line summary; body: the head of the code and the tails of stdout and
    stderr (where exceptions are); tags: language, policy, outcome and error type.
    """
    fields: dict[str, JsonValue] = {
        "language": values["language"],
        "policy": values["policy"],
        "success": bool(values["success"]),
        "outcome": outcome,
        "exit_code": values["exit_code"],
        "execution_id": values["execution_id"],
        "sandbox_mode": values["sandbox_mode"],
        "error_type": values["error_type"],
        "session_id": values.get("session_id"),  # filterable: recall(context={"session_id": ...})
    }
    body = "\n".join(
        [
            values["code"][:CODE_CHARS],
            values["stdout"][-STDOUT_TAIL_CHARS:],
            values["stderr"][-STDERR_TAIL_CHARS:],
        ]
    )
    tags = [values["language"], values["policy"], outcome, values["error_type"]]
    return _document("execution", summary, body, tags, _ctx({}, fields))
