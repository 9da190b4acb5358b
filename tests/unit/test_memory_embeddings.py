"""Hybrid ranking plumbing, with the fake HashingEmbedder (no model, no extra needed).

The store tests run on each backend (SQLite, and PostgreSQL marked ``postgres``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memory_store import (
    STRATEGIES,
    NewMemory,
    RecallQuery,
    StoreOptions,
)
from memory_store.embeddings import VectorIndex, pack, resolve_embedder
from memory_store.sql.store import SqlStore
from memory_store.testing import HashingEmbedder
from orchestrator.models import ExecutionRequest, ExecutionResult
from tests.memory_backends import Backend


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


@pytest.fixture
def store(backend: Backend, embedder: HashingEmbedder) -> Iterator[SqlStore]:
    """A fresh hybrid store on each backend, with the fake embedder."""
    with backend.open(StoreOptions(embeddings="off"), embedder=embedder) as opened:
        yield opened


def vectors(backend: Backend) -> int:
    return int(backend.sql("SELECT COUNT(*) FROM embeddings")[0][0])


def test_the_fake_is_an_embedder(embedder: HashingEmbedder) -> None:
    """HashingEmbedder gives unit vectors."""
    (vector,) = embedder.embed(["deploy the service"])
    assert sum(v * v for v in vector) == pytest.approx(1.0)


def test_remember_stores_a_vector_and_forget_removes_it(store: SqlStore, backend: Backend) -> None:
    """Each remembered record gets a vector at once; forgetting removes it."""
    fact = store.add_memory(NewMemory.create("herons nest in colonies"))
    assert store.ranking == "hybrid" and vectors(backend) == 1
    store.forget(fact)
    assert vectors(backend) == 0


def test_hybrid_fuses_keyword_and_vector_rankings(store: SqlStore) -> None:
    """With an embedder, a record first by vector and keyword ranks first with full relevance."""
    both = store.add_memory(NewMemory.create("staging deploy failed on Tuesday"))
    store.add_memory(NewMemory.create("production is stable"))
    hits = store.recall(RecallQuery.create("staging deploy"))
    assert hits[0].id == both and hits[0].score == pytest.approx(0.975)  # first in both lists
    assert all(0 <= h.score <= 1 for h in hits)


def test_vectors_find_what_keywords_miss(backend: Backend) -> None:
    """A record reachable only by vector similarity is still returned in hybrid mode."""

    class Synonyms(HashingEmbedder):
        """Treats 'automobile' as 'car', as a real model would."""

        def embed(self, texts: list[str]) -> list[list[float]]:  # type: ignore[override]
            return [self._one(t.replace("automobile", "car")) for t in texts]

    with backend.open(StoreOptions(embeddings="off"), embedder=Synonyms()) as hybrid:
        car = hybrid.add_memory(NewMemory.create("the car needs new tyres"))
        assert [h.id for h in hybrid.recall(RecallQuery.create("automobile"))] == [car]
    with backend.open(StoreOptions(embeddings="off")) as keyword:
        assert keyword.recall(RecallQuery.create("automobile")) == []


def test_runs_are_embedded_lazily_by_recall(
    store: SqlStore, backend: Backend, embedder: HashingEmbedder
) -> None:
    """Recording a run never embeds; a later recall embeds what is missing, in a batch."""
    request = ExecutionRequest.create("print('lazy heron')")
    result = ExecutionResult(execution_id=request.execution_id, success=True, language="python")
    store.record_execution(request, result)
    assert embedder.calls == 0 and vectors(backend) == 0
    hits = store.recall(RecallQuery.create("heron"))
    assert vectors(backend) == 2  # the execution and its event
    assert {h.kind for h in hits} == {"execution", "event"}


def test_kinds_and_context_filter_vector_hits(store: SqlStore) -> None:
    """Vector candidates obey kinds and context like keyword ones."""
    store.add_memory(NewMemory.create("otters hold hands", context={"zoo": "north"}))
    store.add_memory(NewMemory.create("otters hold hands", context={"zoo": "south"}))
    hits = store.recall(RecallQuery.create("otters", context={"zoo": "south"}))
    assert [h.context["zoo"] for h in hits] == ["south"]
    assert store.recall(RecallQuery.create("otters", kinds=["entity"])) == []


def test_consolidation_embeds_patterns_and_pending_records(
    store: SqlStore, backend: Backend
) -> None:
    """consolidate embeds the patterns it writes and records still without a vector."""
    store.add_memories([NewMemory.create(f"imported note {i}") for i in range(5)])
    assert vectors(backend) == 0
    report = store.consolidate(STRATEGIES["balanced"], 7)
    assert report.vectors_added == 5 and vectors(backend) == 5


def test_vector_index_ranks_and_replaces(embedder: HashingEmbedder) -> None:
    """The in-memory index ranks by cosine, filters kinds, and a newer vector replaces an old one."""
    index = VectorIndex()
    a, b = embedder.embed(["red apples", "blue sky"])
    index.add([(1, 10, "memory", pack(a)), (2, 11, "event", pack(b))])
    assert index.nearest(a, ["memory", "event"], 2) == [10, 11]
    assert index.nearest(a, ["event"], 5) == [11]
    index.add([(3, 10, "memory", pack(b))])
    assert len(index) == 2 and index.seq == 3
    assert index.nearest(b, ["memory"], 1) == [10]


def test_resolve_embedder_modes() -> None:
    """off gives no embedder; auto gives one only when the extra is installed."""
    from memory_store.embeddings import extra_installed

    assert resolve_embedder("off") is None
    assert (resolve_embedder("auto") is not None) == extra_installed()
