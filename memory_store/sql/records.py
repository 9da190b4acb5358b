"""Writing and reading each kind of record, for every backend; the callers hold the transaction.

Every insert takes a new id of the one sequence first (:meth:`~memory_store.sql.db.Db.new_object`),
writes the kind's row with it, and indexes the record's document
(:mod:`memory_store.sql.documents`) in the same transaction. The SQL here is the common subset
of SQLite and PostgreSQL (``ON CONFLICT ... DO NOTHING`` included).

Every function takes the tenant it works for: records are written under it, and a record of
another tenant is read, linked and deleted exactly as an id that does not exist.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from memory_store.errors import RecordNotFoundError, StoreError
from memory_store.protocol import AnyRecord
from memory_store.records import (
    RelationRecord,
)
from memory_store.requests import NewEntity, NewEvent, NewMemory, NewProcedure, NewRelation
from memory_store.sql.db import Db, in_tenant, utc_now
from memory_store.sql.documents import (
    Document,
    entity_document,
    event_document,
    execution_document,
    memory_document,
    procedure_document,
)
from memory_store.sql.index import replace_document
from memory_store.sql.rows import (
    entity_from_row,
    event_from_row,
    execution_from_row,
    json_text,
    memory_from_row,
    procedure_from_row,
    relation_from_row,
)

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
    "tenant",
    "events",
    "requested_timeout_seconds",
    "session_id",
    "input_files",
    "capture_figures",
    "image",
)
_INSERT_EXECUTION = (
    f"INSERT INTO executions ({', '.join(EXECUTION_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in EXECUTION_COLUMNS)}) ON CONFLICT (execution_id) DO NOTHING"
)
_MAX_KEY_BYTES = 512
_TABLES: dict[str, tuple[str, Callable[[Mapping[str, Any]], Any]]] = {
    "memory": ("memories", memory_from_row),
    "event": ("events", event_from_row),
    "execution": ("executions", execution_from_row),
    "procedure": ("procedures", procedure_from_row),
    "entity": ("entities", entity_from_row),
    "relation": ("relations", relation_from_row),
}


def insert_execution(db: Db, values: dict[str, Any], summary: str, outcome: str) -> int:
    """Insert an execution, its ``execution`` event and their documents; return its id.

    Raises:
        StoreError: this execution id is already recorded.

    """
    # The time is taken inside the transaction, so created_at follows commit order.
    now = utc_now()
    tenant = values["tenant"]
    execution_ref = db.new_object("execution", now, tenant)
    row = {**values, "id": execution_ref, "created_at": now}
    inserted = db.execute(_INSERT_EXECUTION, [row[c] for c in EXECUTION_COLUMNS]).rowcount
    if not inserted:  # the caller's transaction rolls back, the id taken above with it
        raise StoreError(f"execution {values['execution_id']} is already recorded")
    db.put_document(execution_ref, execution_document(values, summary, outcome), now)
    context: dict[str, Any] = {
        "execution_id": values["execution_id"],
        "execution_ref": execution_ref,
    }
    if values.get("session_id") is not None:
        context["session_id"] = values["session_id"]
    event = NewEvent(event_type="execution", content=summary, outcome=outcome, context=context)
    insert_event(db, event, tenant, ref_id=execution_ref, now=now)
    return execution_ref


def insert_event(
    db: Db, event: NewEvent, tenant: str, *, ref_id: int | None = None, now: str | None = None
) -> int:
    """Insert an event of ``tenant`` and its document; return its id."""
    now = now or utc_now()
    event_id = db.new_object("event", now, tenant)
    db.execute(
        "INSERT INTO events (id, event_type, content, outcome, context, created_at, ref_id, "
        "tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event_id,
            event.event_type,
            event.content,
            event.outcome,
            json_text(event.context),
            now,
            ref_id,
            tenant,
        ),
    )
    db.put_document(event_id, event_document(event), now)
    return event_id


def insert_memory(
    db: Db,
    memory: NewMemory,
    tenant: str,
    *,
    pattern_key: str | None = None,
    now: str | None = None,
) -> int:
    """Insert a memory of ``tenant`` and its document; return its id."""
    now = now or utc_now()
    memory_id = db.new_object("memory", now, tenant)
    db.execute(
        "INSERT INTO memories (id, memory_type, content, context, tags, importance, "
        "pattern_key, created_at, updated_at, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            tenant,
        ),
    )
    db.put_document(memory_id, memory_document(memory), now)
    return memory_id


def update_memory(db: Db, memory_id: int, memory: NewMemory) -> None:
    """Replace a memory's content, context, tags and importance, and re-index it."""
    now = utc_now()
    db.execute(
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
    created = db.execute("SELECT created_at FROM memories WHERE id = ?", (memory_id,))
    replace_document(db, memory_id, memory_document(memory), created.fetchone()[0])


def insert_procedure(db: Db, procedure: NewProcedure, tenant: str) -> int:
    """Insert a procedure of ``tenant`` and its document; return its id."""
    now = utc_now()
    procedure_id = db.new_object("procedure", now, tenant)
    steps = json_text([s.model_dump(mode="json") for s in procedure.steps])
    db.execute(
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
    db.put_document(procedure_id, procedure_document(procedure), now)
    return procedure_id


def entity_key(name: str) -> str:
    """Return the key that makes (type, name) unique: the name case-folded, hashed past 512 bytes.

    A long name keeps a prefix and gets its SHA-256, so the unique index stays small (a
    PostgreSQL B-tree entry cannot exceed a few kilobytes).
    """
    key = name.casefold()
    if len(key.encode("utf-8")) <= _MAX_KEY_BYTES:
        return key
    return f"{key[:100]}#{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def upsert_entity(db: Db, entity: NewEntity, tenant: str) -> tuple[int, Document]:
    """Insert an entity, or merge the context into the tenant's one of the same type and name.

    Returns:
        The entity's id and its (new) document.

    """
    db.lock_writes()  # select-then-insert: no other writer may insert the same entity between
    key = entity_key(entity.name)
    found = db.execute(
        "SELECT id, context, created_at, name FROM entities "
        "WHERE tenant = ? AND entity_type = ? AND name_key = ?",
        (tenant, entity.entity_type, key),
    ).fetchone()
    if found is None:
        now = utc_now()
        entity_id = db.new_object("entity", now, tenant)
        db.execute(
            "INSERT INTO entities (id, name, name_key, entity_type, context, created_at, tenant) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                entity_id,
                entity.name,
                key,
                entity.entity_type,
                json_text(entity.context),
                now,
                tenant,
            ),
        )
        doc = entity_document(entity)
        db.put_document(entity_id, doc, now)
        return entity_id, doc
    merged = entity.model_copy(
        update={"name": found[3], "context": {**json.loads(found[1]), **entity.context}}
    )
    db.execute(
        "UPDATE entities SET context = ? WHERE id = ?", (json_text(merged.context), found[0])
    )
    doc = entity_document(merged)
    replace_document(db, found[0], doc, found[2])
    return found[0], doc


def upsert_relation(db: Db, relation: NewRelation, tenant: str) -> int:
    """Insert a relation of ``tenant`` (or update the context of the same link); return its id.

    Raises:
        RecordNotFoundError: the source or the target does not exist (in this tenant).

    """
    db.lock_writes()  # select-then-insert, as for entities
    for field, object_id in (("source_id", relation.source_id), ("target_id", relation.target_id)):
        if kind_of(db, object_id, tenant) is None:
            raise RecordNotFoundError(f"{field} {object_id}: no record has this id")
    context = json_text(relation.context)
    found = db.execute(
        "SELECT id FROM relations WHERE source_id = ? AND target_id = ? AND relation_type = ?",
        (relation.source_id, relation.target_id, relation.relation_type),
    ).fetchone()
    if found is not None:
        db.execute("UPDATE relations SET context = ? WHERE id = ?", (context, found[0]))
        return int(found[0])
    now = utc_now()
    relation_id = db.new_object("relation", now, tenant)
    db.execute(
        "INSERT INTO relations (id, source_id, target_id, relation_type, context, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (relation_id, relation.source_id, relation.target_id, relation.relation_type, context, now),
    )
    return relation_id


def kind_of(db: Db, object_id: int, tenant: str) -> str | None:
    """Return the kind of the tenant's record with this id, or None."""
    row = db.execute(
        "SELECT kind FROM objects WHERE id = ? AND tenant = ?", (object_id, tenant)
    ).fetchone()
    return None if row is None else str(row[0])


def get_record(db: Db, object_id: int, tenant: str) -> AnyRecord | None:
    """Return the tenant's record with this id, whatever its kind, or None."""
    kind = kind_of(db, object_id, tenant)
    if kind is None or kind not in _TABLES:
        return None
    table, convert = _TABLES[kind]
    row = db.execute(f"SELECT * FROM {table} WHERE id = ?", (object_id,)).fetchone()
    return None if row is None else convert(dict(row))


def delete_record(db: Db, object_id: int, tenant: str) -> bool:
    """Delete a tenant's record and everything that hangs on it; tell whether it existed."""
    cursor = db.execute("DELETE FROM objects WHERE id = ? AND tenant = ?", (object_id, tenant))
    return cursor.rowcount > 0


def relations_of(db: Db, object_id: int, tenant: str) -> list[RelationRecord]:
    """Return the tenant's relations from or to a record, oldest first."""
    rows = db.execute(
        f"SELECT * FROM relations r WHERE (r.source_id = ? OR r.target_id = ?) "
        f"AND {in_tenant('r.id')} ORDER BY r.id",
        (object_id, object_id, tenant),
    )
    return [relation_from_row(dict(row)) for row in rows.fetchall()]
