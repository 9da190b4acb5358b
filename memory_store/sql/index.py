"""Full-text rows and stored vectors of records, for every backend; callers hold the transaction.

Full-text rows are written from Python (:meth:`~memory_store.sql.db.Db.put_document`), in the
transaction that writes the record, because the indexed text is derived (identifier parts,
the tails of output): see :mod:`memory_store.sql.documents`. Deletes need no code here: deleting
an ``objects`` row deletes its ``search`` row (a trigger in SQLite, a foreign key in
PostgreSQL) and its ``embeddings`` row (a foreign key).

Vectors are float32 bytes (BLOB, bytea) with a ``seq`` that grows with every write, so a
process holding vectors in memory fetches only what is new
(:class:`~memory_store.embeddings.VectorIndex`).
"""

from __future__ import annotations

import json
from typing import Any

from memory_store.requests import NewEvent
from memory_store.sql.db import Db, in_tenant
from memory_store.sql.documents import Document, event_document, execution_document


def replace_document(db: Db, object_id: int, doc: Document, created_at: str) -> None:
    """Re-index a changed record; its vector, now stale, is dropped (it is made again later)."""
    db.execute(f"DELETE FROM search WHERE {db.search_id} = ?", (object_id,))
    db.execute("DELETE FROM embeddings WHERE object_id = ?", (object_id,))
    db.put_document(object_id, doc, created_at)


def index_existing_records(db: Db) -> None:
    """Index the executions and events of a version 1 store (migration 2 calls this)."""
    rows = db.execute(
        "SELECT x.*, e.content AS summary FROM executions x LEFT JOIN events e ON e.ref_id = x.id"
    ).fetchall()
    for row in rows:
        values: dict[str, Any] = dict(row)
        outcome = "success" if values["success"] else "failure"
        doc = execution_document(values, values["summary"] or "", outcome)
        db.put_document(values["id"], doc, values["created_at"])
    events = db.execute(
        "SELECT id, event_type, content, outcome, context, created_at FROM events"
    ).fetchall()
    for event_id, event_type, content, outcome, context, created_at in events:
        event = NewEvent(
            event_type=event_type, content=content, outcome=outcome, context=json.loads(context)
        )
        db.put_document(event_id, event_document(event), created_at)


# --------------------------------------------------------------------------- vectors


def put_vector(db: Db, object_id: int, kind: str, model: str, vector: bytes) -> None:
    """Store (or replace) the vector of a record; a replaced one gets a new ``seq``."""
    db.lock_writes()  # seq must follow commit order, or a reader's watermark skips vectors
    db.execute("DELETE FROM embeddings WHERE object_id = ?", (object_id,))
    db.execute(
        "INSERT INTO embeddings (object_id, kind, model, vector) VALUES (?, ?, ?, ?)",
        (object_id, kind, model, vector),
    )


def vectors_since(db: Db, seq: int, model: str, tenant: str) -> list[tuple[int, int, str, bytes]]:
    """Return ``(seq, object_id, kind, vector)`` of a tenant's ``model`` vectors after ``seq``."""
    rows = db.execute(
        "SELECT seq, object_id, kind, vector FROM embeddings WHERE seq > ? AND model = ? "
        f"AND {in_tenant('embeddings.object_id')} ORDER BY seq",
        (seq, model, tenant),
    )
    return [(r[0], r[1], r[2], bytes(r[3])) for r in rows.fetchall()]


def unembedded(
    db: Db, after_id: int, model: str, limit: int, tenant: str
) -> list[tuple[int, str, str]]:
    """Return ``(id, kind, text)`` of a tenant's indexed records after ``after_id``, no vector."""
    sid = db.search_id
    rows = db.execute(
        f"SELECT s.{sid}, s.kind, s.title, s.body FROM search s "
        f"LEFT JOIN embeddings e ON e.object_id = s.{sid} AND e.model = ? "
        f"WHERE s.{sid} > ? AND e.object_id IS NULL AND {in_tenant(f's.{sid}')} "
        f"ORDER BY s.{sid} LIMIT ?",
        (model, after_id, tenant, limit),
    )
    return [(r[0], r[1], " ".join(p for p in (r[2], r[3]) if p)[:2000]) for r in rows.fetchall()]


def last_indexed_id(db: Db, tenant: str) -> int:
    """Return the highest id of a tenant's records (0: none), indexed or not.

    Read from ``objects`` (index ``objects_tenant_id``): a record's full-text row is written in
    the transaction that makes its id, so every indexed record of the tenant is at or below.
    """
    row = db.execute("SELECT MAX(id) FROM objects WHERE tenant = ?", (tenant,)).fetchone()
    return int(row[0] or 0)


def indexed_texts(db: Db, ids: list[int]) -> list[tuple[int, str, str]]:
    """Return ``(id, kind, text)`` of these indexed records (the text vectors are made from)."""
    marks = ", ".join("?" * len(ids))
    rows = db.execute(
        f"SELECT {db.search_id}, kind, title, body FROM search WHERE {db.search_id} IN ({marks})",
        ids,
    ).fetchall()
    return [(r[0], r[1], " ".join(p for p in (r[2], r[3]) if p)[:2000]) for r in rows]
