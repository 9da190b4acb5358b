"""The SQLite full-text index (FTS5 table ``search``) and stored vectors (table ``embeddings``).

Rows are written from Python, in the transaction that writes the record, because the indexed
text is derived (identifier parts, the tails of output): see :mod:`memory_store.documents`.
Deletes need no code here: deleting an ``objects`` row deletes its ``search`` row (a trigger)
and its ``embeddings`` row (a foreign key). The callers hold the transaction.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from memory_store.documents import Document, event_document, execution_document
from memory_store.inputs import NewEvent

_INSERT = (
    "INSERT INTO search (rowid, title, body, tags, kind, ctx, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def put_document(conn: sqlite3.Connection, object_id: int, doc: Document, created_at: str) -> None:
    """Index a new record."""
    conn.execute(_INSERT, (object_id, doc.title, doc.body, doc.tags, doc.kind, doc.ctx, created_at))


def replace_document(
    conn: sqlite3.Connection, object_id: int, doc: Document, created_at: str
) -> None:
    """Re-index a changed record; its vector, now stale, is dropped (it is made again later)."""
    conn.execute("DELETE FROM search WHERE rowid = ?", (object_id,))
    conn.execute("DELETE FROM embeddings WHERE object_id = ?", (object_id,))
    put_document(conn, object_id, doc, created_at)


def index_existing_records(conn: sqlite3.Connection) -> None:
    """Index the executions and events of a version 1 store (migration 2 calls this)."""
    cursor = conn.execute(
        "SELECT x.*, e.content AS summary FROM executions x LEFT JOIN events e ON e.ref_id = x.id"
    )
    columns = [column[0] for column in cursor.description]
    for row in cursor.fetchall():
        values: dict[str, Any] = dict(zip(columns, row, strict=True))
        outcome = "success" if values["success"] else "failure"
        doc = execution_document(values, values["summary"] or "", outcome)
        put_document(conn, values["id"], doc, values["created_at"])
    events = conn.execute(
        "SELECT id, event_type, content, outcome, context, created_at FROM events"
    )
    for event_id, event_type, content, outcome, context, created_at in events.fetchall():
        event = NewEvent(
            event_type=event_type, content=content, outcome=outcome, context=json.loads(context)
        )
        put_document(conn, event_id, event_document(event), created_at)


# --------------------------------------------------------------------------- vectors


def put_vector(
    conn: sqlite3.Connection, object_id: int, kind: str, model: str, vector: bytes
) -> None:
    """Store (or replace) the vector of a record; a replaced one gets a new ``seq``."""
    conn.execute(
        "INSERT OR REPLACE INTO embeddings (object_id, kind, model, vector) VALUES (?, ?, ?, ?)",
        (object_id, kind, model, vector),
    )


def vectors_since(
    conn: sqlite3.Connection, seq: int, model: str
) -> list[tuple[int, int, str, bytes]]:
    """Return ``(seq, object_id, kind, vector)`` of ``model``'s vectors stored after ``seq``."""
    rows = conn.execute(
        "SELECT seq, object_id, kind, vector FROM embeddings WHERE seq > ? AND model = ? "
        "ORDER BY seq",
        (seq, model),
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def unembedded(
    conn: sqlite3.Connection, after_id: int, model: str, limit: int
) -> list[tuple[int, str, str]]:
    """Return ``(id, kind, text)`` of indexed records after ``after_id`` with no vector yet."""
    rows = conn.execute(
        "SELECT s.rowid, s.kind, s.title, s.body FROM search s "
        "LEFT JOIN embeddings e ON e.object_id = s.rowid AND e.model = ? "
        "WHERE s.rowid > ? AND e.object_id IS NULL ORDER BY s.rowid LIMIT ?",
        (model, after_id, limit),
    )
    return [(r[0], r[1], " ".join(p for p in (r[2], r[3]) if p)[:2000]) for r in rows.fetchall()]


def last_indexed_id(conn: sqlite3.Connection) -> int:
    """Return the highest id in the full-text index (0 when empty)."""
    row = conn.execute("SELECT MAX(rowid) FROM search").fetchone()
    return int(row[0] or 0)
