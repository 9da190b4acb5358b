"""Schema version 2 upgrades a version 1 store in place, its records kept and searchable."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from memory_store import EventRecord, NewMemory, RecallQuery, SQLiteStore, StoreOptions
from memory_store.sqlite import schema

V1_TIME = "2026-11-20T10:00:00.000000+00:00"
STDERR = "Traceback (most recent call last):\n  ...\nZeroDivisionError: division by zero\n"


def make_v1(path: Path) -> None:
    """Write a store as version 1 left it: schema v1, one failed run and its event."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    for statement in schema.MIGRATIONS[0]:
        assert isinstance(statement, str)
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1, ?)", (V1_TIME,))
    conn.execute(
        "INSERT INTO objects (id, kind, created_at) VALUES (1, 'execution', ?)", (V1_TIME,)
    )
    conn.execute(
        "INSERT INTO executions VALUES (1, 'abc123', 'python', 'strict', '{}', "
        "'total = sum(xs) / len(xs)', '{\"xs\": []}', 0, 1, '', ?, NULL, NULL, '[]', '{}', "
        "'docker', 12.0, ?)",
        (STDERR, V1_TIME),
    )
    conn.execute("INSERT INTO objects (id, kind, created_at) VALUES (2, 'event', ?)", (V1_TIME,))
    summary = "python run failed (exit 1) under strict: total = sum(xs) / len(xs) | ZeroDivisionError: division by zero"
    context = json.dumps({"execution_id": "abc123", "execution_ref": 1})
    conn.execute(
        "INSERT INTO events VALUES (2, 'execution', ?, 'failure', ?, ?)",
        (summary, context, V1_TIME),
    )
    conn.commit()
    conn.close()


def test_a_version_1_store_upgrades_in_place(tmp_path: Path) -> None:
    """Opening a v1 file migrates it to the latest: records read back, searchable, linked."""
    path = tmp_path / "memory.db"
    make_v1(path)

    with SQLiteStore(path, StoreOptions(embeddings="off")) as store:
        assert store.schema_version == schema.latest_version()
        record = store.get_execution("abc123")
        assert record is not None and record.parameters == {"xs": []}
        assert record.parameters_redacted is False
        (event,) = store.list_events()
        assert isinstance(event, EventRecord) and event.ref_id == 1
        hits = store.recall(RecallQuery.create("division by zero"))
        assert {h.id for h in hits} == {1, 2}
        new = store.add_memory(NewMemory.create("a memory after the upgrade"))
        assert new == 3  # the one id sequence continues
        assert store.forget(1) is True
        assert store.list_events() == []  # the backfilled ref_id cascades

    with sqlite3.connect(path) as conn:
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert versions == [(v,) for v in range(1, schema.latest_version() + 1)]


def test_the_upgrade_happens_once(tmp_path: Path) -> None:
    """A second open finds the latest version and migrates nothing again."""
    path = tmp_path / "memory.db"
    make_v1(path)
    SQLiteStore(path, StoreOptions(embeddings="off")).close()
    with SQLiteStore(path, StoreOptions(embeddings="off")) as again:
        assert again.schema_version == schema.latest_version()
        assert len(again.recall(RecallQuery.create("division"))) == 2
