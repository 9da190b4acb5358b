"""Ranked recall, for every backend: keyword candidates, vectors, fusion, weighting.

Keyword ranking: the dialect's full-text score over the OR-joined terms of the query (FTS5
BM25 in SQLite, ``ts_rank_cd`` in PostgreSQL); the candidates' relevance is that score
relative to the best. Hybrid ranking (with an embedder): the query's vector
ranks the held vectors by cosine similarity, and the two rankings are fused by reciprocal rank
fusion (k=60). Either way the top candidates get the mild recency and importance weighting of
:func:`memory_store.sql.search.weighted`, and the memories returned have their use counted.

Records written without a vector (executions, imported memories) are embedded lazily, a small
batch per recall, so recording a run never waits for the model.

Everything is per tenant: the keyword candidates, the vectors held in memory (one
:class:`~memory_store.embeddings.VectorIndex` per tenant that recalled), the lazy embedding and
the events, so one tenant's records never reach, crowd out or reorder another's results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from memory_store.embeddings import Embedder, VectorIndex, pack
from memory_store.records import EventHit, RecallHit
from memory_store.requests import EventQuery, RecallQuery
from memory_store.sql import hits as searching
from memory_store.sql import index
from memory_store.sql.db import Db, Transactions, utc_now
from memory_store.sql.search import query_terms, relative, rrf, weighted

PENDING_PER_RECALL = 32
"""Records without a vector embedded per hybrid recall (the rest wait for the next ones)."""


class Ranker:
    """Answers ``recall`` and ``recall_events`` for one store; holds the vectors in memory.

    Args:
        tx: the store's transactions.
        embedder: the embedder for hybrid ranking, or None for keyword ranking.

    """

    def __init__(self, tx: Transactions, embedder: Embedder | None) -> None:
        self._tx = tx
        self._embedder = embedder
        self._vectors: dict[str, VectorIndex] = {}
        self._watermarks: dict[str, int] = {}

    @property
    def embedder(self) -> Embedder | None:
        """The embedder, when ranking is hybrid."""
        return self._embedder

    def recall(self, query: RecallQuery, tenant: str) -> list[RecallHit]:
        """Return a tenant's best hits of a query, best first (see the module docstring)."""
        terms = query_terms(query.query)
        wanted = max(query.limit * 4, 20)
        keyword = self._tx.read(
            lambda db: db.keyword_ranking(tenant, terms, query.kinds, query.context, wanted)
        )
        if self._embedder is None:
            scores = dict(
                zip([i for i, _ in keyword], relative([s for _, s in keyword]), strict=True)
            )
        else:
            nearest = self._nearest(query, wanted, tenant)
            scores = rrf([[i for i, _ in keyword], nearest] if keyword else [nearest])
        return self._finish(scores, query.limit)

    def _nearest(self, query: RecallQuery, wanted: int, tenant: str) -> list[int]:
        assert self._embedder is not None
        self.embed_pending(PENDING_PER_RECALL, tenant)
        vectors = self._refresh(tenant)
        vector = self._embedder.embed([query.query])[0]
        ids = vectors.nearest(vector, query.kinds, wanted)
        return self._tx.read(
            lambda db: searching.keep_matching(db, tenant, ids, query.kinds, query.context)
        )

    def _finish(self, relevance: Mapping[int, float], limit: int) -> list[RecallHit]:
        top = sorted(relevance, key=lambda i: relevance[i], reverse=True)[: max(limit * 4, 20)]
        rows = self._tx.read(lambda db: searching.hydrate(db, top))
        now = datetime.now(UTC)
        scored = [
            (weighted(relevance[i], d["created_at"], d["importance"], now), i, d)
            for i, d in rows.items()
        ]
        scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
        hits = [searching.hit(i, d, score) for score, i, d in scored[:limit]]
        memories = [h.id for h in hits if h.kind == "memory"]
        if memories:
            stamp = utc_now()
            self._tx.write(lambda db: searching.touch(db, memories, stamp))
        return hits

    def recall_events(self, query: EventQuery, tenant: str) -> list[EventHit]:
        """Return a tenant's events by words (ranked), type and time; else newest first."""
        terms = None if query.query is None else query_terms(query.query)
        if terms is not None and not terms:
            return []  # words were asked for, but the query had none
        found = self._tx.read(lambda db: searching.find_events(db, tenant, query, terms))
        raw = [s for _, s in found if s is not None]
        scaled = iter(relative(raw)) if raw else iter(())
        return [
            EventHit(event=e, score=None if s is None else round(next(scaled), 6)) for e, s in found
        ]

    # ----------------------------------------------------------------------- vectors

    def embed_pending(self, limit: int, tenant: str) -> int:
        """Embed up to ``limit`` of a tenant's indexed records without a vector; return how many."""
        if self._embedder is None or limit < 1:
            return 0
        name, after = self._embedder.name, self._watermarks.get(tenant, 0)

        def scan(db: Db) -> tuple[int, list[tuple[int, str, str]]]:
            last = index.last_indexed_id(db, tenant)  # first: rows added later are in the scan
            return last, index.unembedded(db, after, name, limit, tenant)

        last, pending = self._tx.read(scan)
        # Everything up to `last` without a vector is in `pending`, unless the batch was full.
        newest = pending[-1][0] if pending else 0
        mark = newest if len(pending) == limit else max(last, after, newest)
        self._watermarks[tenant] = mark
        if not pending:
            return 0
        vectors = self._embedder.embed([text for _, _, text in pending])
        rows = [(i, kind, pack(v)) for (i, kind, _), v in zip(pending, vectors, strict=True)]

        def store(db: Db) -> None:
            for object_id, kind, blob in rows:
                if db.execute("SELECT 1 FROM objects WHERE id = ?", (object_id,)).fetchone():
                    index.put_vector(db, object_id, kind, name, blob)

        self._tx.write(store)
        return len(rows)

    def embed_ids(self, ids: Sequence[int]) -> None:
        """(Re-)embed these records now (after consolidation rewrote them)."""
        if self._embedder is None or not ids:
            return
        rows = self._tx.read(lambda db: index.indexed_texts(db, list(ids)))
        vectors = self._embedder.embed([text for _, _, text in rows]) if rows else []
        name = self._embedder.name

        def store(db: Db) -> None:
            for (object_id, kind, _), vector in zip(rows, vectors, strict=True):
                index.put_vector(db, object_id, kind, name, pack(vector))

        self._tx.write(store)

    def _refresh(self, tenant: str) -> VectorIndex:
        """Return the tenant's vectors, with those stored since the last look added."""
        assert self._embedder is not None
        vectors = self._vectors.setdefault(tenant, VectorIndex())
        name, seq = self._embedder.name, vectors.seq
        vectors.add(self._tx.read(lambda db: index.vectors_since(db, seq, name, tenant)))
        return vectors
