"""``SQLiteStore``: the memory store in one SQLite file, safe for threads and processes.

Concurrency (see :mod:`memory_store.sqlite.connection`): WAL, writes in ``BEGIN IMMEDIATE``
with a busy timeout, and whole transactions retried while SQLite answers "busy", so nothing is
lost and "database is locked" never reaches the caller. One connection per store, shared by its
threads behind a lock.

What the store does is shared with the PostgreSQL store (:class:`~memory_store.sql.store.SqlStore`);
this module adds the file and its connection, :mod:`~memory_store.sqlite.dialect` the FTS5 dialect
and :mod:`~memory_store.sqlite.schema` the migrations.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar, cast

from memory_store.embeddings import Embedder
from memory_store.errors import StoreError
from memory_store.options import StoreOptions
from memory_store.sql.db import Work
from memory_store.sql.store import SqlStore
from memory_store.sqlite import schema
from memory_store.sqlite.connection import connect, create_private_file, read, write
from memory_store.sqlite.dialect import SQLiteDb

T = TypeVar("T")


class SQLiteStore(SqlStore):
    """The memory store in one SQLite file.

    A context manager; ``close()`` releases the connection. One store may be used by many
    threads, and many processes may open the same file.

    Example::

        with SQLiteStore(Path("~/.athena/memory.db").expanduser()) as store:
            store.record_execution(request, result)
            memory_id = store.add_memory(NewMemory.create("the API rate limit is 100/min"))
            hits = store.recall(RecallQuery.create("rate limit"))
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        options: StoreOptions | None = None,
        *,
        embedder: Embedder | None = None,
    ) -> None:
        """Open (creating and migrating as needed) the store at ``path``.

        Args:
            path: the database file.
            options: redaction, retention, size limit and embeddings (default: all off, auto).
            embedder: the embedder for hybrid ranking; None: as ``options.embeddings`` says.

        Raises:
            StoreConfigError: the file or its directory cannot be created or opened.
            StoreError: the file is not a memory store, or is newer than this code knows.
            MissingExtraError: ``options.embeddings`` is ``on`` without the embeddings extra.

        """
        super().__init__(options, embedder)
        self._path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._closed = False
        create_private_file(self._path)
        with self._translated():
            self._conn = connect(self._path)
        self._db = SQLiteDb(self._conn)
        try:
            self._version = self._migrate()
            self.prune_expired()
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
            version = read(self._conn, schema.current_version)
            schema.check_known(version, self._path)
            if version == schema.latest_version():
                return version  # the common case: no write lock taken just to open
            return write(self._conn, lambda conn: schema.migrate(conn, self._path))

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: the memory store failed: {exc}") from exc

    @property
    def closed(self) -> bool:
        """Whether the store (a view: the store it is of) is closed."""
        return cast(SQLiteStore, self._root)._closed

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._translated():
            if self.closed:
                raise StoreError(f"{self._path}: the memory store is closed")
            yield self._conn

    def _reading(self, work: Work[T]) -> T:
        with self._connection() as conn:
            return read(conn, lambda _: work(self._db))

    def _writing(self, work: Work[T]) -> T:
        with self._connection() as conn:
            return write(conn, lambda _: work(self._db))

    # ----------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the connection; closing twice is harmless. Closing a view does nothing."""
        if self.is_view:
            return
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<SQLiteStore {str(self._path)!r} {state} {self.ranking} tenant={self.tenant}>"
