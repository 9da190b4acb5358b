"""A fake embedder, so tests and users can exercise hybrid ranking without the extra.

from memory_store.testing import HashingEmbedder
store = SQLiteStore(tmp_path / "m.db", embedder=HashingEmbedder())
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from memory_store.sql.search import STOP_WORDS, root, words


class HashingEmbedder:
    """Feature hashing of word roots into a unit vector: texts sharing words are close.

    Deterministic and instant; it knows no synonyms, so it shows the plumbing of hybrid
    ranking, not the quality of a real model. ``calls`` counts the texts embedded.
    """

    def __init__(self, dimensions: int = 64) -> None:
        """Make vectors of ``dimensions`` floats."""
        self.dimensions = dimensions
        self.calls = 0

    @property
    def name(self) -> str:
        """The fake model's name (vectors of other names are never compared with these)."""
        return f"hashing-{self.dimensions}"

    def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        """Return one unit vector per text (all zeros for a text without words)."""
        self.calls += len(texts)
        return [self._one(text) for text in texts]

    def _one(self, text: str) -> list[float]:
        vector = [0.0] * self.dimensions
        for word in words(text):
            if word not in STOP_WORDS:
                digest = hashlib.blake2b(root(word).encode(), digest_size=4).digest()
                vector[int.from_bytes(digest, "big") % self.dimensions] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]
