"""The SQLite schema of the memory store and the migrations that build it.

Schema version N is what applying ``MIGRATIONS[:N]`` in order gives; the table
``schema_version`` holds one row per applied version (a table rather than ``PRAGMA
user_version`` so the PostgreSQL store keeps the same bookkeeping, with the same version
numbers: see :mod:`memory_store.postgres.schema`). Add a migration by
appending to ``MIGRATIONS``; never edit one that has shipped.

Every record's id comes from ``objects``, the one id sequence of the store: a row there is made
first, and the kind's own table (``executions``, ``events``, ``memories``, ``procedures``,
``entities``, ``relations``) uses its id as primary key. Deleting either row deletes the other
(a foreign key with ``ON DELETE CASCADE`` one way, a trigger the other), and with them the
record's full-text row, its embedding, the relations that point at it and, for an execution,
its event. JSON columns are declared ``TEXT``: a column declared ``JSON`` would get NUMERIC
affinity in SQLite, which converts number-like text.

Version 2 adds memories, procedures, entities, relations, consolidation's pattern sources,
embeddings, the full-text index ``search`` (FTS5, ``porter unicode61``: stemming, case and
accent folding), ``executions.parameters_redacted`` and ``events.ref_id``, and indexes what
version 1 recorded.

Version 3 adds tenants: every record belongs to one (``objects.tenant``; records that existed
before belong to ``default``). ``executions``, ``events``, ``memories`` and ``entities`` repeat
the tenant for their indexes and unique keys: an entity's type and name, and a pattern's key,
are unique per tenant. Executions keep their events (``events``: JSON, the exit event without
its result, which is the row's) and the timeout the caller asked for
(``requested_timeout_seconds``, NULL when they did not).

Version 4 adds sessions and files: an execution keeps the session it was a call of
(``session_id``, NULL for a one-shot run; indexed with the tenant and the time, for a session's
calls in order), the metadata of the files it was sent (``input_files``: JSON ``[{name, size,
sha256}]``, never their content), whether it captured figures (``capture_figures``) and the custom
image it asked for (``image``, NULL for the language's or policy's own). The metadata of the files
and artifacts a run returned is in ``result`` (never their content either).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from memory_store.errors import StoreError
from memory_store.sql.db import utc_now

Step = str | Callable[[sqlite3.Connection], None]
Migration = tuple[Step, ...]
"""The steps of one migration (SQL, or a function for data), run in order in one transaction."""

_V1: Migration = (
    """
    CREATE TABLE objects (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE executions (
        id INTEGER PRIMARY KEY REFERENCES objects(id) ON DELETE CASCADE,
        execution_id TEXT NOT NULL UNIQUE,
        language TEXT NOT NULL,
        policy TEXT NOT NULL,
        policy_config TEXT NOT NULL,
        code TEXT NOT NULL,
        parameters TEXT NOT NULL,
        success INTEGER NOT NULL,
        exit_code INTEGER NOT NULL,
        stdout TEXT NOT NULL,
        stderr TEXT NOT NULL,
        error TEXT,
        error_type TEXT,
        violations TEXT NOT NULL,
        result TEXT NOT NULL,
        sandbox_mode TEXT,
        execution_time_ms REAL NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX executions_created_at ON executions (created_at)",
    "CREATE INDEX executions_language_created_at ON executions (language, created_at)",
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY REFERENCES objects(id) ON DELETE CASCADE,
        event_type TEXT NOT NULL,
        content TEXT NOT NULL,
        outcome TEXT,
        context TEXT NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX events_created_at ON events (created_at)",
    "CREATE INDEX events_type_created_at ON events (event_type, created_at)",
)

_KIND_TABLES = ("executions", "events", "memories", "procedures", "entities", "relations")


def _object_row(table: str) -> str:
    # The kind's row is gone: its objects row goes too (the other way is ON DELETE CASCADE).
    return (
        f"CREATE TRIGGER {table}_forget AFTER DELETE ON {table} "
        "BEGIN DELETE FROM objects WHERE id = old.id; END"
    )


def _index_v1_records(conn: sqlite3.Connection) -> None:
    """Put what version 1 recorded (executions and their events) into the full-text index."""
    from memory_store.sql.index import index_existing_records  # they import this module
    from memory_store.sqlite.dialect import SQLiteDb

    index_existing_records(SQLiteDb(conn))


_RECORD = "id INTEGER PRIMARY KEY REFERENCES objects(id) ON DELETE CASCADE"
_TENANT_TABLES = ("objects", "executions", "events", "memories", "entities")
V3_INDEXES = (
    "CREATE INDEX objects_tenant_id ON objects (tenant, id)",
    # Unique per tenant, no longer across the store.
    "DROP INDEX entities_type_name",
    "CREATE UNIQUE INDEX entities_tenant_type_name ON entities (tenant, entity_type, name_key)",
    "DROP INDEX memories_pattern_key",
    "CREATE UNIQUE INDEX memories_tenant_pattern_key ON memories (tenant, pattern_key) "
    "WHERE pattern_key IS NOT NULL",
    # Every listing is a tenant's: these replace the indexes of versions 1 and 2 that lead
    # with the time (executions_created_at stays: retention is store-wide).
    "DROP INDEX executions_language_created_at",
    "CREATE INDEX executions_tenant_created_at ON executions (tenant, created_at)",
    "CREATE INDEX executions_tenant_language_created_at "
    "ON executions (tenant, language, created_at)",
    "DROP INDEX events_created_at",
    "DROP INDEX events_type_created_at",
    "CREATE INDEX events_tenant_created_at ON events (tenant, created_at)",
    "CREATE INDEX events_tenant_type_created_at ON events (tenant, event_type, created_at)",
    "DROP INDEX memories_created_at",
    "DROP INDEX memories_type_created_at",
    "CREATE INDEX memories_tenant_created_at ON memories (tenant, created_at)",
)
"""Version 3's index changes: the same SQL in both dialects (PostgreSQL's schema uses it)."""
_V2: Migration = (
    "ALTER TABLE executions ADD COLUMN parameters_redacted INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE events ADD COLUMN ref_id INTEGER REFERENCES objects(id) ON DELETE CASCADE",
    """
    UPDATE events SET ref_id = (
        SELECT x.id FROM executions x
        WHERE x.execution_id = json_extract(events.context, '$.execution_id')
    )
    WHERE event_type = 'execution' AND json_valid(context)
    """,
    "CREATE INDEX events_ref_id ON events (ref_id)",
    f"""
    CREATE TABLE memories (
        {_RECORD},
        memory_type TEXT NOT NULL,
        content TEXT NOT NULL,
        context TEXT NOT NULL,
        tags TEXT NOT NULL,
        importance REAL NOT NULL DEFAULT 0.5,
        access_count INTEGER NOT NULL DEFAULT 0,
        last_accessed_at TEXT,
        decayed_at TEXT,
        merged_ids TEXT NOT NULL DEFAULT '[]',
        pattern_key TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX memories_created_at ON memories (created_at)",
    "CREATE INDEX memories_type_created_at ON memories (memory_type, created_at)",
    "CREATE UNIQUE INDEX memories_pattern_key ON memories (pattern_key) "
    "WHERE pattern_key IS NOT NULL",
    """
    CREATE TABLE pattern_sources (
        pattern_id INTEGER NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
        source_id INTEGER NOT NULL,
        PRIMARY KEY (pattern_id, source_id)
    )
    """,
    f"""
    CREATE TABLE procedures (
        {_RECORD},
        name TEXT NOT NULL,
        category TEXT NOT NULL,
        steps TEXT NOT NULL,
        context TEXT NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX procedures_category_created_at ON procedures (category, created_at)",
    f"""
    CREATE TABLE entities (
        {_RECORD},
        name TEXT NOT NULL,
        name_key TEXT NOT NULL,
        entity_type TEXT NOT NULL,
        context TEXT NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX entities_type_name ON entities (entity_type, name_key)",
    f"""
    CREATE TABLE relations (
        {_RECORD},
        source_id INTEGER NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
        target_id INTEGER NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
        relation_type TEXT NOT NULL,
        context TEXT NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX relations_link ON relations (source_id, target_id, relation_type)",
    "CREATE INDEX relations_target ON relations (target_id)",
    """
    CREATE TABLE embeddings (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        object_id INTEGER NOT NULL UNIQUE REFERENCES objects(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        model TEXT NOT NULL,
        vector BLOB NOT NULL
    )
    """,
    """
    CREATE VIRTUAL TABLE search USING fts5(
        title, body, tags, kind UNINDEXED, ctx UNINDEXED, created_at UNINDEXED,
        tokenize = 'porter unicode61 remove_diacritics 2'
    )
    """,
    "CREATE TRIGGER objects_forget AFTER DELETE ON objects "
    "BEGIN DELETE FROM search WHERE rowid = old.id; END",
    *(_object_row(table) for table in _KIND_TABLES),
    _index_v1_records,
)

_TENANT = "tenant TEXT NOT NULL DEFAULT 'default'"
_V3: Migration = (
    *(f"ALTER TABLE {t} ADD COLUMN {_TENANT}" for t in _TENANT_TABLES),
    "ALTER TABLE executions ADD COLUMN events TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE executions ADD COLUMN requested_timeout_seconds REAL",
    *V3_INDEXES,
)

V4_INDEXES = (
    # Partial: most runs are one-shot, and ``session_id = ?`` implies the index's condition.
    "CREATE INDEX executions_tenant_session ON executions (tenant, session_id, created_at) "
    "WHERE session_id IS NOT NULL",
)
"""Version 4's index: the same SQL in both dialects (PostgreSQL's schema uses it)."""
_V4: Migration = (
    "ALTER TABLE executions ADD COLUMN session_id TEXT",
    "ALTER TABLE executions ADD COLUMN input_files TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE executions ADD COLUMN capture_figures INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE executions ADD COLUMN image TEXT",
    *V4_INDEXES,
)

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3, _V4)
"""Migration N (1-based) turns a version N-1 database into version N."""


def latest_version() -> int:
    """Return the schema version this code writes."""
    return len(MIGRATIONS)


def current_version(conn: sqlite3.Connection) -> int:
    """Return the schema version of the database (0: no schema yet)."""
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if found is None:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def check_known(version: int, path: str | Path) -> None:
    """Refuse a database written by a newer athena-sandbox (``path``: where, for the message).

    Raises:
        StoreError: the database's schema version is newer than this code knows.

    """
    if version > latest_version():
        raise StoreError(
            f"{path}: the memory store has schema version {version}, but this athena-sandbox "
            f"knows versions up to {latest_version()}; upgrade athena-sandbox to open it"
        )


def _check_ours(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse to add our tables to someone else's SQLite database."""
    other = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' LIMIT 1"
    ).fetchone()
    if other is not None:
        raise StoreError(
            f"{path}: this SQLite database has tables of its own (e.g. {other[0]!r}) and is "
            "not an athena memory store; point ATHENA_MEMORY_DB at another file"
        )


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the database to the latest version; call inside a ``BEGIN IMMEDIATE`` transaction.

    The version is read again here because another process may have migrated the database
    between the caller's first look and this transaction.

    Returns:
        The schema version after migrating.

    Raises:
        StoreError: the database is newer than this code, or is not a memory store.

    """
    version = current_version(conn)
    check_known(version, path)
    if version == 0:
        _check_ours(conn, path)
        conn.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
    for number in range(version + 1, latest_version() + 1):
        for step in MIGRATIONS[number - 1]:
            if callable(step):
                step(conn)
            else:
                conn.execute(step)
        conn.execute("INSERT INTO schema_version VALUES (?, ?)", (number, utc_now()))
    return latest_version()
