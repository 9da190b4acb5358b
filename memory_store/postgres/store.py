"""``PostgresStore``: the memory store in a PostgreSQL database, for shared deployments.

The same contract as :class:`~memory_store.sqlite.store.SQLiteStore`, and the same code for it
(:class:`~memory_store.sql.store.SqlStore`); this module adds connection handling:

- A small pool of connections (psycopg-pool, :data:`~memory_store.postgres.connection.POOL_SIZE`)
  shared by the store's threads; reads run in autocommit, each write in one transaction
  (READ COMMITTED), retried whole on a serialization failure or deadlock.
- Writers that create records take one transaction-scoped advisory lock
  (:meth:`~memory_store.postgres.dialect.PostgresDb.lock_writes`), so ids follow commit order and
  upserts cannot race; reads never wait for it.
- Migrations (:mod:`~memory_store.postgres.schema`) run once, under an advisory lock, when a
  process opens a store whose schema is older.

Open it with ``open_store("postgresql://user:password@host:5432/database")``, with
``ATHENA_MEMORY_URL``, or directly. It needs the ``postgres`` extra.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, TypeVar, cast

from memory_store.embeddings import Embedder
from memory_store.errors import StoreError
from memory_store.options import StoreOptions
from memory_store.postgres import schema as postgres_schema
from memory_store.postgres.connection import (
    POOL_SIZE,
    PostgresTarget,
    connect,
    open_pool,
    require_psycopg,
    retry_conflicts,
    translated,
)
from memory_store.postgres.dialect import PostgresDb
from memory_store.sql.db import Work
from memory_store.sql.store import SqlStore

if TYPE_CHECKING:
    import psycopg_pool

T = TypeVar("T")
BULK_ANALYZE_ROWS = 1000
"""``add_memories`` of at least this many memories runs ANALYZE on the full-text table."""


class PostgresStore(SqlStore):
    """The memory store in a PostgreSQL database (the first schema of its ``search_path``).

    A context manager; ``close()`` closes the pool. Many threads may share one store, and many
    processes and machines may open the same database.

    Example::

        with PostgresStore("postgresql://athena:secret@db:5432/athena") as store:
            memory_id = store.add_memory(NewMemory.create("the API rate limit is 100/min"))
            hits = store.recall(RecallQuery.create("rate limit"))
    """

    def __init__(
        self,
        url: str,
        options: StoreOptions | None = None,
        *,
        embedder: Embedder | None = None,
        pool_size: int = POOL_SIZE,
    ) -> None:
        """Connect, migrate the schema as needed, and open the pool.

        Args:
            url: ``postgresql://user:password@host:port/database`` (or ``postgres://``); libpq
                parameters may follow (``?sslmode=require``, ``?options=-csearch_path%3Dname``).
            options: redaction, retention, size limit and embeddings (default: all off, auto).
            embedder: the embedder for hybrid ranking; None: as ``options.embeddings`` says.
            pool_size: connections kept at most.

        Raises:
            MissingExtraError: the postgres extra is not installed, or ``options.embeddings``
                is ``on`` without the embeddings extra.
            StoreConfigError: the URL cannot be parsed, or the database is not UTF8.
            StoreError: the server cannot be reached or refuses the login, the schema holds
                other tables, or the store is newer than this code knows.

        """
        require_psycopg()
        self._target = PostgresTarget.parse(url)
        super().__init__(options, embedder)
        self._closed = False
        self._state_lock = threading.Lock()
        with translated(self._target):
            self._version = self._migrate()
            self._pool: psycopg_pool.ConnectionPool[Any] = open_pool(self._target, pool_size)
        try:
            self.prune_expired()
        except BaseException:
            self._pool.close()
            raise

    @property
    def url(self) -> str:
        """The database's URL, its password masked."""
        return self._target.shown

    @property
    def schema_version(self) -> int:
        """The schema version of the store, after migrating."""
        return self._version

    def _migrate(self) -> int:
        conn = connect(self._target)
        try:
            db = PostgresDb(conn)
            version = postgres_schema.current_version(db)
            if version == postgres_schema.latest_version():
                return version  # the common case: no lock taken just to open

            postgres_schema.lock_migrations(db)
            with conn.transaction():
                return postgres_schema.migrate(PostgresDb(conn), self._target.shown)
        finally:
            conn.close()

    @property
    def closed(self) -> bool:
        """Whether the store (a view: the store it is of) is closed."""
        return cast(PostgresStore, self._root)._closed

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError(f"{self._target.shown}: the memory store is closed")

    def _reading(self, work: Work[T]) -> T:
        self._check_open()
        with translated(self._target), self._pool.connection() as conn:
            return work(PostgresDb(conn))

    def _writing(self, work: Work[T]) -> T:
        self._check_open()

        @retry_conflicts
        def attempt() -> T:
            with self._pool.connection() as conn, conn.transaction():
                return work(PostgresDb(conn))

        with translated(self._target):
            return attempt()

    def _after_bulk(self, count: int) -> None:
        """After a large import, refresh the planner's word statistics at once.

        Autovacuum would, within a minute; until then the planner guesses how common each
        word is, and recall of common words runs several times slower.
        """
        if count >= BULK_ANALYZE_ROWS:
            self._reading(lambda db: db.execute("ANALYZE search"))

    # ----------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the pool and its connections; closing twice is harmless. A view's does nothing."""
        if self.is_view:
            return
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<PostgresStore {self._target.shown!r} {state} {self.ranking} tenant={self.tenant}>"
