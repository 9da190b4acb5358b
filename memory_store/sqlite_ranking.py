"""Ranked recall over a SQLite store: BM25 candidates, vectors, fusion, weighting.

Keyword ranking: FTS5 BM25 over the quoted, OR-joined terms of the query; the candidates'
relevance is BM25 relative to the best. Hybrid ranking (with an embedder): the query's vector
ranks the held vectors by cosine similarity, and the two rankings are fused by reciprocal rank
fusion (k=60). Either way the top candidates get the mild recency and importance weighting of
:func:`memory_store.search.weighted`, and the memories returned have their use counted.

Records written without a vector (executions, imported memories) are embedded lazily, a small
batch per recall, so recording a run never waits for the model.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from memory_store import schema
from memory_store import sqlite_index as index
from memory_store import sqlite_search as searching
from memory_store.embeddings import Embedder, VectorIndex, pack
from memory_store.inputs import EventQuery, RecallQuery
from memory_store.models import EventHit, RecallHit
from memory_store.search import match_expression, query_terms, relative, rrf, weighted

T = TypeVar("T")
PENDING_PER_RECALL = 32
"""Records without a vector embedded per hybrid recall (the rest wait for the next ones)."""


class Transactions(Protocol):
    """Runs work on the store's connection: reads as they are, writes in one transaction."""

    def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` and return its value."""
        ...

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one write transaction and return its value."""
        ...


class Ranker:
    """Answers ``recall`` and ``recall_events`` for one store; holds the vectors in memory.

    Args:
        tx: the store's transactions.
        embedder: the embedder for hybrid ranking, or None for keyword ranking.

    """

    def __init__(self, tx: Transactions, embedder: Embedder | None) -> None:
        self._tx = tx
        self._embedder = embedder
        self._vectors = VectorIndex()
        self._watermark = 0

    @property
    def embedder(self) -> Embedder | None:
        """The embedder, when ranking is hybrid."""
        return self._embedder

    def recall(self, query: RecallQuery) -> list[RecallHit]:
        """Return the best hits of a query, best first (see the module docstring)."""
        terms = query_terms(query.query)
        wanted = max(query.limit * 4, 20)
        keyword = self._tx.read(
            lambda c: searching.keyword_ranking(c, terms, query.kinds, query.context, wanted)
        )
        if self._embedder is None:
            scores = dict(
                zip([i for i, _ in keyword], relative([s for _, s in keyword]), strict=True)
            )
        else:
            nearest = self._nearest(query, wanted)
            scores = rrf([[i for i, _ in keyword], nearest] if keyword else [nearest])
        return self._finish(scores, query.limit)

    def _nearest(self, query: RecallQuery, wanted: int) -> list[int]:
        assert self._embedder is not None
        self.embed_pending(PENDING_PER_RECALL)
        self._refresh()
        vector = self._embedder.embed([query.query])[0]
        ids = self._vectors.nearest(vector, query.kinds, wanted)
        return self._tx.read(lambda c: searching.keep_matching(c, ids, query.kinds, query.context))

    def _finish(self, relevance: Mapping[int, float], limit: int) -> list[RecallHit]:
        top = sorted(relevance, key=lambda i: relevance[i], reverse=True)[: max(limit * 4, 20)]
        rows = self._tx.read(lambda c: searching.hydrate(c, top))
        now = datetime.now(UTC)
        scored = [
            (weighted(relevance[i], d["created_at"], d["importance"], now), i, d)
            for i, d in rows.items()
        ]
        scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
        hits = [searching.hit(i, d, score) for score, i, d in scored[:limit]]
        memories = [h.id for h in hits if h.kind == "memory"]
        if memories:
            stamp = schema.utc_now()
            self._tx.write(lambda c: searching.touch(c, memories, stamp))
        return hits

    def recall_events(self, query: EventQuery) -> list[EventHit]:
        """Return events by words (ranked), type and time; without words, newest first."""
        match = None if query.query is None else match_expression(query_terms(query.query))
        if query.query is not None and match is None:
            return []  # words were asked for, but the query had none
        found = self._tx.read(lambda c: searching.find_events(c, query, match))
        raw = [s for _, s in found if s is not None]
        scaled = iter(relative(raw)) if raw else iter(())
        return [
            EventHit(event=e, score=None if s is None else round(next(scaled), 6)) for e, s in found
        ]

    # ----------------------------------------------------------------------- vectors

    def embed_pending(self, limit: int) -> int:
        """Embed up to ``limit`` indexed records that have no vector yet; return how many."""
        if self._embedder is None or limit < 1:
            return 0
        name, after = self._embedder.name, self._watermark

        def scan(conn: sqlite3.Connection) -> tuple[int, list[tuple[int, str, str]]]:
            last = index.last_indexed_id(conn)  # first: rows added later are in the scan
            return last, index.unembedded(conn, after, name, limit)

        last, pending = self._tx.read(scan)
        # Everything up to `last` without a vector is in `pending`, unless the batch was full.
        newest = pending[-1][0] if pending else 0
        self._watermark = newest if len(pending) == limit else max(last, after, newest)
        if not pending:
            return 0
        vectors = self._embedder.embed([text for _, _, text in pending])
        rows = [(i, kind, pack(v)) for (i, kind, _), v in zip(pending, vectors, strict=True)]

        def store(conn: sqlite3.Connection) -> None:
            for object_id, kind, blob in rows:
                if conn.execute("SELECT 1 FROM objects WHERE id = ?", (object_id,)).fetchone():
                    index.put_vector(conn, object_id, kind, name, blob)

        self._tx.write(store)
        return len(rows)

    def embed_ids(self, ids: Sequence[int]) -> None:
        """(Re-)embed these records now (after consolidation rewrote them)."""
        if self._embedder is None or not ids:
            return
        marks = ", ".join("?" * len(ids))
        sql = f"SELECT rowid, kind, title, body FROM search WHERE rowid IN ({marks})"
        rows: list[Any] = self._tx.read(lambda c: c.execute(sql, tuple(ids)).fetchall())
        texts = [" ".join(p for p in (r[2], r[3]) if p)[:2000] for r in rows]
        vectors = self._embedder.embed(texts) if texts else []
        name = self._embedder.name

        def store(conn: sqlite3.Connection) -> None:
            for row, vector in zip(rows, vectors, strict=True):
                index.put_vector(conn, row[0], row[1], name, pack(vector))

        self._tx.write(store)

    def _refresh(self) -> None:
        assert self._embedder is not None
        name, seq = self._embedder.name, self._vectors.seq
        self._vectors.add(self._tx.read(lambda c: index.vectors_since(c, seq, name)))
