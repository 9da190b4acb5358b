"""Writing and reading each kind of record in SQLite; the callers hold the transaction.

Every insert takes a new id from ``objects`` first, writes the kind's row with it, and indexes
the record's document (:mod:`memory_store.documents`) in the same transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from memory_store import schema
from memory_store.base import AnyRecord
from memory_store.documents import (
    Document,
    entity_document,
    event_document,
    execution_document,
    memory_document,
    procedure_document,
)
from memory_store.errors import RecordNotFoundError, StoreError
from memory_store.inputs import NewEntity, NewEvent, NewMemory, NewProcedure, NewRelation
from memory_store.models import (
    RelationRecord,
)
from memory_store.rows import (
    entity_from_row,
    event_from_row,
    execution_from_row,
    json_text,
    memory_from_row,
    procedure_from_row,
    relation_from_row,
)
from memory_store.sqlite_index import put_document, replace_document

EXECUTION_COLUMNS = (
    "id",
    "execution_id",
    "language",
    "policy",
    "policy_config",
    "code",
    "parameters",
    "parameters_redacted",
    "success",
    "exit_code",
    "stdout",
    "stderr",
    "error",
    "error_type",
    "violations",
    "result",
    "sandbox_mode",
    "execution_time_ms",
    "created_at",
)
_INSERT_EXECUTION = (
    f"INSERT INTO executions ({', '.join(EXECUTION_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in EXECUTION_COLUMNS)})"
)
_TABLES: dict[str, tuple[str, Callable[[Mapping[str, Any]], Any]]] = {
    "memory": ("memories", memory_from_row),
    "event": ("events", event_from_row),
    "execution": ("executions", execution_from_row),
    "procedure": ("procedures", procedure_from_row),
    "entity": ("entities", entity_from_row),
    "relation": ("relations", relation_from_row),
}


def new_object(conn: sqlite3.Connection, kind: str, created_at: str) -> int:
    """Take the next id of the one sequence for a record of ``kind``."""
    cursor = conn.execute(
        "INSERT INTO objects (kind, created_at) VALUES (?, ?)", (kind, created_at)
    )
    assert cursor.lastrowid is not None  # an INSERT into a rowid table always sets it
    return cursor.lastrowid


def insert_execution(
    conn: sqlite3.Connection, values: dict[str, Any], summary: str, outcome: str
) -> int:
    """Insert an execution, its ``execution`` event and their documents; return its id.

    Raises:
        StoreError: this execution id is already recorded.

    """
    # The time is taken inside the transaction, so created_at follows commit order.
    now = schema.utc_now()
    execution_ref = new_object(conn, "execution", now)
    try:
        conn.execute(_INSERT_EXECUTION, {**values, "id": execution_ref, "created_at": now})
    except sqlite3.IntegrityError as exc:
        if "execution_id" not in str(exc):
            raise
        raise StoreError(f"execution {values['execution_id']} is already recorded") from exc
    put_document(conn, execution_ref, execution_document(values, summary, outcome), now)
    context = {"execution_id": values["execution_id"], "execution_ref": execution_ref}
    event = NewEvent(event_type="execution", content=summary, outcome=outcome, context=context)
    insert_event(conn, event, ref_id=execution_ref, now=now)
    return execution_ref


def insert_event(
    conn: sqlite3.Connection, event: NewEvent, *, ref_id: int | None = None, now: str | None = None
) -> int:
    """Insert an event and its document; return its id."""
    now = now or schema.utc_now()
    event_id = new_object(conn, "event", now)
    conn.execute(
        "INSERT INTO events (id, event_type, content, outcome, context, created_at, ref_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            event_id,
            event.event_type,
            event.content,
            event.outcome,
            json_text(event.context),
            now,
            ref_id,
        ),
    )
    put_document(conn, event_id, event_document(event), now)
    return event_id


def insert_memory(
    conn: sqlite3.Connection,
    memory: NewMemory,
    *,
    pattern_key: str | None = None,
    now: str | None = None,
) -> int:
    """Insert a memory and its document; return its id."""
    now = now or schema.utc_now()
    memory_id = new_object(conn, "memory", now)
    conn.execute(
        "INSERT INTO memories (id, memory_type, content, context, tags, importance, "
        "pattern_key, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            memory_id,
            memory.memory_type,
            memory.content,
            json_text(memory.context),
            json_text(list(memory.tags)),
            memory.importance,
            pattern_key,
            now,
            now,
        ),
    )
    put_document(conn, memory_id, memory_document(memory), now)
    return memory_id


def update_memory(conn: sqlite3.Connection, memory_id: int, memory: NewMemory) -> None:
    """Replace a memory's content, context, tags and importance, and re-index it."""
    now = schema.utc_now()
    conn.execute(
        "UPDATE memories SET content = ?, context = ?, tags = ?, importance = ?, updated_at = ? "
        "WHERE id = ?",
        (
            memory.content,
            json_text(memory.context),
            json_text(list(memory.tags)),
            memory.importance,
            now,
            memory_id,
        ),
    )
    created = conn.execute("SELECT created_at FROM memories WHERE id = ?", (memory_id,))
    replace_document(conn, memory_id, memory_document(memory), created.fetchone()[0])


def insert_procedure(conn: sqlite3.Connection, procedure: NewProcedure) -> int:
    """Insert a procedure and its document; return its id."""
    now = schema.utc_now()
    procedure_id = new_object(conn, "procedure", now)
    steps = json_text([s.model_dump(mode="json") for s in procedure.steps])
    conn.execute(
        "INSERT INTO procedures (id, name, category, steps, context, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            procedure_id,
            procedure.name,
            procedure.category,
            steps,
            json_text(procedure.context),
            now,
        ),
    )
    put_document(conn, procedure_id, procedure_document(procedure), now)
    return procedure_id


def upsert_entity(conn: sqlite3.Connection, entity: NewEntity) -> tuple[int, Document]:
    """Insert an entity, or merge the context into the one of the same type and name.

    Returns:
        The entity's id and its (new) document.

    """
    key = entity.name.casefold()
    found = conn.execute(
        "SELECT id, context, created_at, name FROM entities WHERE entity_type = ? AND name_key = ?",
        (entity.entity_type, key),
    ).fetchone()
    if found is None:
        now = schema.utc_now()
        entity_id = new_object(conn, "entity", now)
        conn.execute(
            "INSERT INTO entities (id, name, name_key, entity_type, context, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (entity_id, entity.name, key, entity.entity_type, json_text(entity.context), now),
        )
        doc = entity_document(entity)
        put_document(conn, entity_id, doc, now)
        return entity_id, doc
    merged = entity.model_copy(
        update={"name": found[3], "context": {**json.loads(found[1]), **entity.context}}
    )
    conn.execute(
        "UPDATE entities SET context = ? WHERE id = ?", (json_text(merged.context), found[0])
    )
    doc = entity_document(merged)
    replace_document(conn, found[0], doc, found[2])
    return found[0], doc


def upsert_relation(conn: sqlite3.Connection, relation: NewRelation) -> int:
    """Insert a relation (or update the context of the same link); return its id.

    Raises:
        RecordNotFoundError: the source or the target does not exist.

    """
    for field, object_id in (("source_id", relation.source_id), ("target_id", relation.target_id)):
        if kind_of(conn, object_id) is None:
            raise RecordNotFoundError(f"{field} {object_id}: no record has this id")
    context = json_text(relation.context)
    found = conn.execute(
        "SELECT id FROM relations WHERE source_id = ? AND target_id = ? AND relation_type = ?",
        (relation.source_id, relation.target_id, relation.relation_type),
    ).fetchone()
    if found is not None:
        conn.execute("UPDATE relations SET context = ? WHERE id = ?", (context, found[0]))
        return int(found[0])
    now = schema.utc_now()
    relation_id = new_object(conn, "relation", now)
    conn.execute(
        "INSERT INTO relations (id, source_id, target_id, relation_type, context, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (relation_id, relation.source_id, relation.target_id, relation.relation_type, context, now),
    )
    return relation_id


def kind_of(conn: sqlite3.Connection, object_id: int) -> str | None:
    """Return the kind of the record with this id, or None."""
    row = conn.execute("SELECT kind FROM objects WHERE id = ?", (object_id,)).fetchone()
    return None if row is None else str(row[0])


def get_record(conn: sqlite3.Connection, object_id: int) -> AnyRecord | None:
    """Return the record with this id, whatever its kind, or None."""
    kind = kind_of(conn, object_id)
    if kind is None or kind not in _TABLES:
        return None
    table, convert = _TABLES[kind]
    row = conn.execute(f"SELECT * FROM {table} WHERE id = ?", (object_id,)).fetchone()
    return None if row is None else convert(dict(row))


def delete_record(conn: sqlite3.Connection, object_id: int) -> bool:
    """Delete a record of any kind and everything that hangs on it; tell whether it existed."""
    return conn.execute("DELETE FROM objects WHERE id = ?", (object_id,)).rowcount > 0


def relations_of(conn: sqlite3.Connection, object_id: int) -> list[RelationRecord]:
    """Return the relations from or to a record, oldest first."""
    rows = conn.execute(
        "SELECT * FROM relations WHERE source_id = ? OR target_id = ? ORDER BY id",
        (object_id, object_id),
    )
    return [relation_from_row(dict(row)) for row in rows.fetchall()]
