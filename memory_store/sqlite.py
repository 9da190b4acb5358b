"""``SQLiteStore``: the memory store in one SQLite file, safe for threads and processes.

Concurrency: the file is in WAL mode, so readers never block the writer. Every write runs in
``BEGIN IMMEDIATE``, which takes the write lock up front and waits for it (``busy_timeout``)
instead of failing half way, as a deferred transaction upgrading to a writer would. Should
SQLite still answer "locked" or "busy" (WAL recovery, a very long writer), the whole
transaction is retried with backoff, so the caller never sees "database is locked".
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import structlog
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from memory_store import schema
from memory_store.errors import StoreConfigError, StoreError
from memory_store.models import EventRecord, ExecutionRecord
from memory_store.rows import event_from_row, execution_from_row, execution_values, json_text, text
from memory_store.summary import summarize_execution
from orchestrator.errors import RequestError
from orchestrator.models import ExecutionRequest, ExecutionResult

_log = structlog.get_logger(__name__)

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]

BUSY_TIMEOUT_MS = 10_000
_EXECUTION_COLUMNS = (
    "id",
    "execution_id",
    "language",
    "policy",
    "policy_config",
    "code",
    "parameters",
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
    f"INSERT INTO executions ({', '.join(_EXECUTION_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _EXECUTION_COLUMNS)})"
)
_INSERT_EVENT = (
    "INSERT INTO events (id, event_type, content, outcome, context, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise RequestError(f"limit must be a whole number of at least 1, not {limit!r}")


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
def _read(conn: sqlite3.Connection, work: Work[T]) -> T:
    return work(conn)


@_retry_busy
def _write(conn: sqlite3.Connection, work: Work[T]) -> T:
    """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction; roll back on any error."""
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


def _create_private_file(path: Path) -> None:
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


def _connect(path: Path) -> sqlite3.Connection:
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


# --------------------------------------------------------------------------- the store


class SQLiteStore:
    """The memory store in one SQLite file.

    A context manager; ``close()`` releases the connection. One store may be used by many
    threads, and many processes may open the same file.

    Example::

        with SQLiteStore(Path("~/.athena/memory.db").expanduser()) as store:
            store.record_execution(request, result)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (creating and migrating as needed) the store at ``path``.

        Raises:
            StoreConfigError: the file or its directory cannot be created or opened.
            StoreError: the file is not a memory store, or is newer than this code knows.

        """
        self._path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._closed = False
        _create_private_file(self._path)
        with self._translated():
            self._conn = _connect(self._path)
        try:
            self._version = self._migrate()
        except BaseException:
            self._conn.close()
            raise

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def schema_version(self) -> int:
        """The schema version of the database, after migrating."""
        return self._version

    def _migrate(self) -> int:
        with self._translated():
            version = _read(self._conn, schema.current_version)
            schema.check_known(version, self._path)
            if version == schema.latest_version():
                return version  # the common case: no write lock taken just to open
            return _write(self._conn, lambda conn: schema.migrate(conn, self._path))

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: the memory store failed: {exc}") from exc

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._translated():
            if self._closed:
                raise StoreError(f"{self._path}: the memory store is closed")
            yield self._conn

    def record_execution(self, request: ExecutionRequest, result: ExecutionResult) -> int:
        """Persist one execution and its ``execution`` event in one transaction.

        Returns:
            The id of the execution record.

        Raises:
            RequestError: the result belongs to another request.
            StoreError: the store cannot write, or this execution is already recorded.

        """
        if request.execution_id != result.execution_id:
            raise RequestError(
                f"the result is of execution {result.execution_id}, "
                f"the request of {request.execution_id}"
            )
        # Serialised before the lock: the write lock is held only for the inserts.
        values = execution_values(request, result)
        summary = text(summarize_execution(request, result))
        outcome = "success" if result.success else "failure"

        def work(conn: sqlite3.Connection) -> int:
            return _insert_execution(conn, values, summary, outcome)

        with self._connection() as conn:
            return _write(conn, work)

    def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """Return the record of one execution, or None when it is not recorded.

        Raises:
            StoreError: the store cannot be read.

        """
        sql = "SELECT * FROM executions WHERE execution_id = ?"
        with self._connection() as conn:
            row = _read(conn, lambda c: c.execute(sql, (execution_id,)).fetchone())
        return None if row is None else execution_from_row(dict(row))

    def list_executions(
        self, limit: int = 50, language: str | None = None
    ) -> list[ExecutionRecord]:
        """Return up to ``limit`` executions, newest first, optionally of one language.

        Raises:
            RequestError: ``limit`` is less than 1.
            StoreError: the store cannot be read.

        """
        rows = self._newest("executions", "language", language, limit)
        return [execution_from_row(dict(row)) for row in rows]

    def list_events(self, limit: int = 50, event_type: str | None = None) -> list[EventRecord]:
        """Return up to ``limit`` events, newest first, optionally of one type.

        Raises:
            RequestError: ``limit`` is less than 1.
            StoreError: the store cannot be read.

        """
        rows = self._newest("events", "event_type", event_type, limit)
        return [event_from_row(dict(row)) for row in rows]

    def _newest(self, table: str, column: str, value: str | None, limit: int) -> list[sqlite3.Row]:
        _check_limit(limit)
        where, args = ("", ()) if value is None else (f"WHERE {column} = ?", (value,))
        # id breaks ties: it grows with commit order, and writers take the time after BEGIN.
        sql = f"SELECT * FROM {table} {where} ORDER BY created_at DESC, id DESC LIMIT ?"
        with self._connection() as conn:
            return _read(conn, lambda c: c.execute(sql, (*args, limit)).fetchall())

    def close(self) -> None:
        """Close the connection; closing twice is harmless."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SQLiteStore {str(self._path)!r} {state}>"


def _new_object(conn: sqlite3.Connection, kind: str, created_at: str) -> int:
    cursor = conn.execute(
        "INSERT INTO objects (kind, created_at) VALUES (?, ?)", (kind, created_at)
    )
    assert cursor.lastrowid is not None  # an INSERT into a rowid table always sets it
    return cursor.lastrowid


def _insert_execution(
    conn: sqlite3.Connection, values: dict[str, Any], summary: str, outcome: str
) -> int:
    """Insert an execution and its event; the caller holds the transaction."""
    # The time is taken inside the transaction, so created_at follows commit order.
    now = schema.utc_now()
    execution_ref = _new_object(conn, "execution", now)
    try:
        conn.execute(_INSERT_EXECUTION, {**values, "id": execution_ref, "created_at": now})
    except sqlite3.IntegrityError as exc:
        if "execution_id" not in str(exc):
            raise
        raise StoreError(f"execution {values['execution_id']} is already recorded") from exc
    context = json_text({"execution_id": values["execution_id"], "execution_ref": execution_ref})
    event_id = _new_object(conn, "event", now)
    conn.execute(_INSERT_EVENT, (event_id, "execution", summary, outcome, context, now))
    return execution_ref
