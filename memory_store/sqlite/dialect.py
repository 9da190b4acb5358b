"""The SQLite dialect of the shared SQL code: ids, the FTS5 index and BM25 keyword ranking.

Every value reaches SQL as a bound parameter; the only text put into SQL is built here from
fixed names and counts of placeholders. MATCH expressions come from
:func:`memory_store.sql.search.match_expression`, which quotes every term, so a query can never
break FTS5's syntax.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import JsonValue

from memory_store.sql.db import in_tenant, marks
from memory_store.sql.documents import BODY_WEIGHT, TAGS_WEIGHT, TITLE_WEIGHT, Document
from memory_store.sql.search import BROAD_MATCHES, match_expression, plan_scoring, term_expression

_CTX_ENTRY = "SELECT 1 FROM json_each(search.ctx) j WHERE j.key = ?"
_IN_TENANT = in_tenant("search.rowid")
_BM25 = f"bm25(search, {TITLE_WEIGHT}, {BODY_WEIGHT}, {TAGS_WEIGHT})"
_INSERT_DOCUMENT = (
    "INSERT INTO search (rowid, title, body, tags, kind, ctx, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _sql_value(value: JsonValue) -> Any:
    """Return a JSON value as ``json_each`` gives it: booleans 0/1, containers as JSON text."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


class SQLiteDb:
    """A SQLite connection seen through :class:`~memory_store.sql.db.Db`.

    Args:
        conn: the store's connection (rows as ``sqlite3.Row``).

    """

    search_id = "rowid"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> sqlite3.Cursor:
        """Run one statement with ``?`` placeholders."""
        return self.conn.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> sqlite3.Cursor:
        """Run one statement once per parameter row (``rowcount`` is the sum)."""
        return self.conn.executemany(sql, parameters)

    def new_object(self, kind: str, created_at: str, tenant: str) -> int:
        """Take the next id of the one sequence (``objects``, AUTOINCREMENT)."""
        cursor = self.conn.execute(
            "INSERT INTO objects (kind, created_at, tenant) VALUES (?, ?, ?)",
            (kind, created_at, tenant),
        )
        assert cursor.lastrowid is not None  # an INSERT into a rowid table always sets it
        return cursor.lastrowid

    def lock_writes(self) -> None:
        """Nothing to do: every write runs in ``BEGIN IMMEDIATE``, which holds the write lock."""

    def relax_durability(self) -> None:
        """Nothing to do: with WAL and ``synchronous=NORMAL`` commits do not wait for the disk."""

    def put_document(self, object_id: int, doc: Document, created_at: str) -> None:
        """Add a record's row to the FTS5 table."""
        self.conn.execute(
            _INSERT_DOCUMENT,
            (object_id, doc.title, doc.body, doc.tags, doc.kind, doc.ctx, created_at),
        )

    def filters(
        self, tenant: str, kinds: Sequence[str], context: Mapping[str, JsonValue]
    ) -> tuple[str, list[Any]]:
        """Return SQL conditions on ``search`` for tenant, kinds and context (``json_each``)."""
        sql = f" AND {_IN_TENANT} AND search.kind IN ({marks(len(kinds))})"
        args: list[Any] = [tenant, *kinds]
        for key, value in context.items():
            if value is None:
                sql += f" AND EXISTS ({_CTX_ENTRY} AND j.type = 'null')"
                args.append(key)
                continue
            sql += f" AND EXISTS ({_CTX_ENTRY} AND j.value = ?)"
            args += [key, _sql_value(value)]
        return sql, args

    def _matches_at_most(self, tenant: str, term: str, cap: int) -> int:
        """Count a tenant's records matching one term, stopping past ``cap`` (it costs little)."""
        sql = (
            "SELECT COUNT(*) FROM "
            f"(SELECT 1 FROM search WHERE search MATCH ? AND {_IN_TENANT} LIMIT ?)"
        )
        return int(self.conn.execute(sql, (term_expression(term), tenant, cap + 1)).fetchone()[0])

    def _scoring_plan(self, tenant: str, terms: Sequence[str]) -> tuple[str, int] | None:
        """Return the MATCH expression to score and the lowest id worth scoring."""
        chosen, broad = plan_scoring(
            terms, lambda t: self._matches_at_most(tenant, t, BROAD_MATCHES)
        )
        match = match_expression(chosen)
        if match is None or not broad:
            return None if match is None else (match, 0)
        sql = (
            f"SELECT rowid FROM search WHERE search MATCH ? AND {_IN_TENANT} "
            "ORDER BY rowid DESC LIMIT 1 OFFSET ?"
        )
        row = self.conn.execute(sql, (match, tenant, BROAD_MATCHES - 1)).fetchone()
        return match, 0 if row is None else int(row[0])

    def keyword_ranking(
        self,
        tenant: str,
        terms: Sequence[str],
        kinds: Sequence[str],
        context: Mapping[str, JsonValue],
        n: int,
    ) -> list[tuple[int, float]]:
        """Return up to ``n`` ``(id, bm25)`` pairs of a tenant, best first (BM25 made positive)."""
        plan = self._scoring_plan(tenant, terms)
        if plan is None:
            return []
        match, lowest = plan
        where, args = self.filters(tenant, kinds, context)
        sql = (
            f"SELECT rowid, -{_BM25} AS s FROM search WHERE search MATCH ? AND rowid >= ?{where} "
            "ORDER BY s DESC LIMIT ?"
        )
        rows = self.conn.execute(sql, (match, lowest, *args, n)).fetchall()
        return [(r[0], float(r[1])) for r in rows]

    def ranked_events(
        self, terms: Sequence[str], where: str, args: Sequence[Any], limit: int
    ) -> list[Any]:
        """Return ``events`` rows matching any term, with the BM25 score ``s``, best first."""
        match = match_expression(terms)
        if match is None:
            return []
        sql = (
            f"SELECT e.*, -{_BM25} AS s FROM search JOIN events e ON e.id = search.rowid "
            f"WHERE search MATCH ? AND search.kind = 'event'{where} ORDER BY s DESC LIMIT ?"
        )
        return self.conn.execute(sql, (match, *args, limit)).fetchall()
