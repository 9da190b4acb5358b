"""The PostgreSQL dialect of the shared SQL code: ids, the tsvector index and ``ts_rank_cd``.

Queries never reach the server as text to parse: each term of a query (letters and digits only,
from :func:`memory_store.sql.search.query_terms`) is a bound parameter of its own
``plainto_tsquery('english', ...)``, and the pieces are OR-ed with ``||``, so stop words and
stems come from the ``english`` configuration and no input can raise a tsquery syntax error.
A term also searches its :func:`~memory_store.sql.search.root`, as in SQLite.

Scores: ``ts_rank_cd`` (cover density) with weights title 1.0, tags 0.5, body 0.25 (the 4:2:1
of :mod:`memory_store.sql.documents`), divided by 1 + log(length); like BM25 it is relative to the
best hit afterwards. Common terms are handled as in SQLite
(:func:`memory_store.sql.search.plan_scoring`).

Placeholders: the shared SQL writes ``?``; :meth:`PostgresDb.execute` turns them into
``%s`` (and ``%`` into ``%%``), so shared SQL never uses the jsonb ``?`` operators.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from memory_store.sql.db import marks
from memory_store.sql.documents import BODY_WEIGHT, TAGS_WEIGHT, TITLE_WEIGHT, Document
from memory_store.sql.rows import json_text
from memory_store.sql.search import BROAD_MATCHES, plan_scoring, root

if TYPE_CHECKING:
    import psycopg

WRITE_LOCK = 1_096_040_002
"""Advisory lock namespace (with a hash of the schema name) of writers that create records."""
# ts_rank_cd's weights are {D, C, B, A}: body (D; C unused), tags (B), title (A).
_BODY, _TAGS = BODY_WEIGHT / TITLE_WEIGHT, TAGS_WEIGHT / TITLE_WEIGHT
_IN_TENANT = "search.tenant = ?"  # the row's own copy (schema version 3)
_RANK = f"ts_rank_cd('{{{_BODY},{_BODY},{_TAGS},1.0}}'::float4[], search.tsv, QUERY, 1)"


@functools.lru_cache(maxsize=2048)
def to_pyformat(sql: str) -> str:
    """Return shared SQL with psycopg's placeholders: ``?`` to ``%s``, ``%`` to ``%%``."""
    return sql.replace("%", "%%").replace("?", "%s")


def tsquery(terms: Sequence[str]) -> tuple[str, list[str]]:
    """Return the SQL of a tsquery OR-ing the terms and their roots, and its parameters."""
    words: dict[str, None] = {}
    for term in terms:
        words[term] = None
        words[root(term)] = None
    sql = " || ".join("plainto_tsquery('english', ?)" for _ in words)
    return f"({sql})", list(words)


def _without_nul(value: Any) -> Any:
    """Return JSON data with NUL characters in strings as U+FFFD (``jsonb`` refuses them)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def jsonb_text(json_value: str) -> str:
    """Return JSON text ``jsonb`` accepts: NUL characters in strings become U+FFFD."""
    if "\\u0000" not in json_value:
        return json_value
    return json_text(_without_nul(json.loads(json_value)))


class PostgresDb:
    """A psycopg connection seen through :class:`~memory_store.sql.db.Db` (one per transaction).

    Args:
        conn: a connection set up by :func:`memory_store.postgres.connection.configure`.

    """

    search_id = "id"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self._locked = False

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        """Run one statement with ``?`` placeholders."""
        return self.conn.execute(to_pyformat(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> psycopg.Cursor[Any]:
        """Run one statement once per parameter row (``rowcount`` is the sum)."""
        cursor = self.conn.cursor()
        rows = list(parameters)
        if rows:
            cursor.executemany(to_pyformat(sql), rows)
        return cursor

    def new_object(self, kind: str, created_at: str, tenant: str) -> int:
        """Take the next id of the one sequence, in commit order (see :meth:`lock_writes`)."""
        self.lock_writes()
        row: Any = self.execute(
            "INSERT INTO objects (kind, created_at, tenant) VALUES (?, ?, ?) RETURNING id",
            (kind, created_at, tenant),
        ).fetchone()
        return int(row[0])

    def lock_writes(self) -> None:
        """Take the writers' transaction-scoped advisory lock (once per transaction).

        Ids and vector ``seq`` numbers then follow commit order, as in SQLite: a reader that
        remembers the highest id or seq it has seen misses nothing committed later.
        """
        if not self._locked:
            self.execute(
                "SELECT pg_advisory_xact_lock(?, hashtext(current_schema()))", (WRITE_LOCK,)
            )
            self._locked = True

    def relax_durability(self) -> None:
        """Commit this transaction without waiting for the WAL flush (``synchronous_commit``)."""
        self.execute("SET LOCAL synchronous_commit = off")

    def put_document(self, object_id: int, doc: Document, created_at: str) -> None:
        """Add a record's row to ``search`` (its tsvector is a generated column)."""
        self.execute(
            "INSERT INTO search (id, title, body, tags, kind, ctx, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (object_id, doc.title, doc.body, doc.tags, doc.kind, jsonb_text(doc.ctx), created_at),
        )

    def filters(
        self, tenant: str, kinds: Sequence[str], context: Mapping[str, JsonValue]
    ) -> tuple[str, list[Any]]:
        """Return SQL conditions on ``search`` for tenant, kinds and context (``jsonb`` ==)."""
        sql = f" AND {_IN_TENANT} AND search.kind IN ({marks(len(kinds))})"
        args: list[Any] = [tenant, *kinds]
        for key, value in context.items():
            sql += " AND search.ctx -> ?::text = ?::jsonb"
            args += [key, jsonb_text(json_text(value))]
        return sql, args

    def _match_counts(self, tenant: str, terms: Sequence[str], cap: int) -> dict[str, int]:
        """Count each term's matches of a tenant, stopping past ``cap`` (one statement)."""
        parts, args = [], []
        for term in terms:
            query, words = tsquery([term])
            parts.append(
                "(SELECT count(*) FROM (SELECT 1 FROM search "
                f"WHERE tsv @@ {query} AND {_IN_TENANT} LIMIT ?) m)"
            )
            args += [*words, tenant, cap + 1]
        row: Any = self.execute(f"SELECT {', '.join(parts)}", args).fetchone()
        return {term: int(count) for term, count in zip(terms, row, strict=True)}

    @contextmanager
    def _index_scans(self) -> Iterator[None]:
        """Keep the planner off sequential scans of ``search`` for this work.

        With a LIMIT, PostgreSQL prefers scanning the table for a common word, expecting to
        meet matches soon; but testing ``tsv @@ query`` row by row costs far more than it
        assumes (20 ms for 100,000 rows, where the GIN index takes 2).
        """
        with self.conn.transaction():
            self.execute("SET LOCAL enable_seqscan = off")
            yield

    def keyword_ranking(
        self,
        tenant: str,
        terms: Sequence[str],
        kinds: Sequence[str],
        context: Mapping[str, JsonValue],
        n: int,
    ) -> list[tuple[int, float]]:
        """Return up to ``n`` ``(id, ts_rank_cd)`` pairs of a tenant, best first."""
        if not terms:
            return []
        with self._index_scans():
            counts = self._match_counts(tenant, terms, BROAD_MATCHES)
            chosen, broad = plan_scoring(terms, counts.__getitem__)
            if not chosen:
                return []
            query, words = tsquery(chosen)
            source = "search"
            if broad:  # only the tenant's newest matches: walk the primary key backwards
                source = (
                    f"(SELECT id, kind, ctx, tsv, tenant FROM search WHERE tsv @@ {query} "
                    f"AND {_IN_TENANT} ORDER BY id DESC LIMIT {BROAD_MATCHES}) AS search"
                )
            where, args = self.filters(tenant, kinds, context)
            rank = _RANK.replace("QUERY", query)
            sql = (
                f"SELECT search.id, {rank} AS s FROM {source} "
                f"WHERE search.tsv @@ {query}{where} ORDER BY s DESC, search.id DESC LIMIT ?"
            )
            prefix = [*words, *words, tenant, *words] if broad else [*words, *words]
            rows = self.execute(sql, (*prefix, *args, n)).fetchall()
        return [(int(r[0]), float(r[1])) for r in rows]

    def ranked_events(
        self, terms: Sequence[str], where: str, args: Sequence[Any], limit: int
    ) -> list[Any]:
        """Return ``events`` rows matching any term, with the ``ts_rank_cd`` score ``s``."""
        if not terms:
            return []
        query, words = tsquery(terms)
        sql = (
            f"SELECT e.*, {_RANK.replace('QUERY', query)} AS s FROM search "
            "JOIN events e ON e.id = search.id "
            f"WHERE search.tsv @@ {query} AND search.kind = 'event'{where} "
            "ORDER BY s DESC, e.id DESC LIMIT ?"
        )
        with self._index_scans():
            return self.execute(sql, (*words, *words, *args, limit)).fetchall()
