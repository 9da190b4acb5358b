"""SQLite connections of the memory store: a private file, WAL, and writes that never see "locked".

Concurrency: the file is in WAL mode, so readers never block the writer. Every write runs in
``BEGIN IMMEDIATE``, which takes the write lock up front and waits for it (``busy_timeout``)
instead of failing half way, as a deferred transaction upgrading to a writer would. Should
SQLite still answer "locked" or "busy" (WAL recovery, a very long writer), the whole
transaction is retried with backoff, so the caller never sees "database is locked".
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from memory_store.errors import StoreConfigError

_log = structlog.get_logger(__name__)

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]
"""Work done on a connection (inside a transaction, for writes)."""

BUSY_TIMEOUT_MS = 10_000
"""How long SQLite waits for the write lock before answering "busy" (then we retry)."""


# --------------------------------------------------------------------------- retries


def _is_busy(exc: BaseException) -> bool:
    message = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in message or "busy" in message)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    _log.warning(
        "the memory store was busy; retrying the transaction",
        attempt=state.attempt_number,
        error=str(exc),
    )


_retry_busy = retry(
    retry=retry_if_exception(_is_busy),
    stop=stop_after_attempt(5),
    wait=wait_random_exponential(multiplier=0.05, max=2.0),
    before_sleep=_log_retry,
    reraise=True,
)


@_retry_busy
def read(conn: sqlite3.Connection, work: Work[T]) -> T:
    """Run ``work`` (reads), retried while the database is busy."""
    return work(conn)


@_retry_busy
def write(conn: sqlite3.Connection, work: Work[T]) -> T:
    """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction, retried while the database is busy.

    Any error rolls the transaction back.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        value = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return value


# --------------------------------------------------------------------------- file and connection


def _make_private_dirs(directory: Path) -> None:
    """Create the missing directories down to ``directory``, each readable by the owner only."""
    missing = []
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for candidate in reversed(missing):
        candidate.mkdir(mode=0o700, exist_ok=True)  # exist_ok: another process may race us


def create_private_file(path: Path) -> None:
    """Create the database file 0600 before SQLite does; an existing file keeps its mode.

    SQLite gives the -wal and -shm files the database file's mode, so they are 0600 too.

    Raises:
        StoreConfigError: the directory or the file cannot be created or opened.

    """
    try:
        _make_private_dirs(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreConfigError(
            f"cannot open the memory store file {path}: {exc.strerror}; "
            "set ATHENA_MEMORY_DB to a writable file path"
        ) from exc
    os.close(fd)


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")  # first: the next pragma may wait
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        _log.warning(
            "SQLite refused WAL mode; concurrent writers will wait longer",
            path=str(path),
            journal_mode=mode,
        )
    conn.execute("PRAGMA synchronous = NORMAL")  # with WAL: durable across crashes of the app
    conn.execute("PRAGMA foreign_keys = ON")


def connect(path: Path) -> sqlite3.Connection:
    """Open the database with the store's settings: WAL, busy timeout, foreign keys, rows.

    Raises:
        sqlite3.Error: SQLite cannot open or configure the file (the store translates it).

    """
    # One connection shared by the store's threads, behind a lock: SQLite lets one writer in
    # at a time anyway, and one connection is one thing for close() to release, where
    # per-thread connections would outlive their threads and escape close().
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    try:
        _retry_busy(_configure)(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn
