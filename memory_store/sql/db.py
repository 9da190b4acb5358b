"""What the shared SQL code needs of a database: a connection that knows its dialect.

Records, the index, search, ranking and consolidation are written once, against :class:`Db`:
``execute`` and ``executemany`` with ``?`` placeholders (the PostgreSQL connection turns them
into ``%s``), rows readable by position and by column name, times as fixed-width ISO 8601 UTC
text and JSON as text, whatever the backend stores. The few operations whose SQL differs
between SQLite and PostgreSQL are methods of :class:`Db` too: taking an id, serialising
select-then-insert writers, writing a full-text row, and keyword ranking.
:class:`~memory_store.sqlite.dialect.SQLiteDb` (FTS5) and
:class:`~memory_store.postgres.dialect.PostgresDb` (tsvector) implement it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from pydantic import JsonValue

from memory_store.sql.documents import Document

T = TypeVar("T")


def utc_now() -> str:
    """Return the current UTC time as fixed-width ISO 8601, so text order is time order."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Cursor(Protocol):
    """The result of a statement: rows readable by position and by column name."""

    @property
    def rowcount(self) -> int:
        """Rows changed by the statement (summed over ``executemany``)."""
        ...

    def fetchone(self) -> Any:
        """Return the next row, or None."""
        ...

    def fetchall(self) -> list[Any]:
        """Return the remaining rows."""
        ...

    def __iter__(self) -> Iterator[Any]: ...


class Db(Protocol):
    """A connection inside the store's transaction handling, with its dialect's operations."""

    @property
    def search_id(self) -> str:
        """The id column of the full-text table ``search`` (``rowid`` in FTS5, else ``id``)."""
        ...

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        """Run one statement with ``?`` placeholders."""
        ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        """Run one statement once per parameter row."""
        ...

    def new_object(self, kind: str, created_at: str, tenant: str) -> int:
        """Take the next id of the store's one sequence for a record of ``kind`` of ``tenant``."""
        ...

    def lock_writes(self) -> None:
        """Serialise this transaction with the other writers that create records.

        SQLite's write transactions are serial already; PostgreSQL takes a transaction-scoped
        advisory lock, so ids are handed out in commit order and select-then-insert upserts
        (entities, relations, patterns) cannot race.
        """
        ...

    def relax_durability(self) -> None:
        """Let this transaction commit without waiting for the disk (bookkeeping only).

        For writes whose loss in a server crash harms nothing, such as recall's use counts:
        PostgreSQL commits them asynchronously; SQLite (WAL, ``synchronous=NORMAL``) already
        does not wait for the disk at commit.
        """
        ...

    def put_document(self, object_id: int, doc: Document, created_at: str) -> None:
        """Add a record's row to the full-text index."""
        ...

    def filters(
        self, tenant: str, kinds: Sequence[str], context: Mapping[str, JsonValue]
    ) -> tuple[str, list[Any]]:
        """Return SQL conditions on ``search`` (tenant, kinds, context) and their values."""
        ...

    def keyword_ranking(
        self,
        tenant: str,
        terms: Sequence[str],
        kinds: Sequence[str],
        context: Mapping[str, JsonValue],
        n: int,
    ) -> list[tuple[int, float]]:
        """Return up to ``n`` ``(id, raw score)`` pairs of a tenant matching any term, best first.

        Every count and cut of the scoring plan is the tenant's too: other tenants' records
        change neither what is found nor its order.
        """
        ...

    def ranked_events(
        self, terms: Sequence[str], where: str, args: Sequence[Any], limit: int
    ) -> list[Any]:
        """Return ``events`` rows (alias ``e``) matching any term, with the raw score ``s``.

        ``where`` holds extra conditions on ``e`` (each starting with `` AND ``), the tenant's
        among them.
        """
        ...


Work = Callable[[Db], T]
"""Work done on a connection (inside one transaction, for writes)."""


class Transactions(Protocol):
    """Runs work on the store's database: reads as they are, writes in one transaction."""

    def read(self, work: Callable[[Db], T]) -> T:
        """Run ``work`` and return its value."""
        ...

    def write(self, work: Callable[[Db], T]) -> T:
        """Run ``work`` in one write transaction (retried whole when the database asks)."""
        ...


def in_tenant(id_column: str) -> str:
    """Return the condition that the record ``id_column`` names is the bound tenant's."""
    return f"EXISTS (SELECT 1 FROM objects o WHERE o.id = {id_column} AND o.tenant = ?)"


def marks(count: int) -> str:
    """Return ``count`` comma-separated ``?`` placeholders."""
    return ", ".join("?" * count)
