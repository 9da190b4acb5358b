"""The SQLite schema of the memory store and the migrations that build it.

Schema version N is what applying ``MIGRATIONS[:N]`` in order gives; the table
``schema_version`` holds one row per applied version (a table rather than ``PRAGMA
user_version`` so the PostgreSQL store can keep the same bookkeeping). Add a migration by
appending to ``MIGRATIONS``; never edit one that has shipped.

Every record's id comes from ``objects``, the one id sequence of the store: a row there is made
first, and the kind's own table (``executions``, ``events``, later memories, procedures and
entities) uses its id as primary key. JSON columns are declared ``TEXT``: a column declared
``JSON`` would get NUMERIC affinity in SQLite, which converts number-like text.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from memory_store.errors import StoreError

Migration = tuple[str, ...]
"""The statements of one migration, run in order inside one transaction."""

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

MIGRATIONS: tuple[Migration, ...] = (_V1,)
"""Migration N (1-based) turns a version N-1 database into version N."""


def latest_version() -> int:
    """Return the schema version this code writes."""
    return len(MIGRATIONS)


def utc_now() -> str:
    """Return the current UTC time as fixed-width ISO 8601, so text order is time order."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def current_version(conn: sqlite3.Connection) -> int:
    """Return the schema version of the database (0: no schema yet)."""
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if found is None:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def check_known(version: int, path: Path) -> None:
    """Refuse a database written by a newer athena-sandbox.

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
        for statement in MIGRATIONS[number - 1]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (?, ?)", (number, utc_now()))
    return latest_version()
