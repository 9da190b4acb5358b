"""``StoreOptions``: the whole configuration of a memory store.

The store reads no environment and no one else's settings: whoever opens it (``athena``'s
settings, a test, a script) builds the options and passes them in.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from memory_store.checks import DEFAULT_MAX_MEMORY_BYTES
from memory_store.embeddings import EmbeddingsMode
from memory_store.errors import StoreConfigError

EMBEDDINGS_MODES: tuple[EmbeddingsMode, ...] = ("auto", "on", "off")
RETENTION_CHECK_SECONDS = 60.0
"""Retention runs when a store opens, then after writes at most once per this many seconds."""


class StoreOptions(BaseModel):
    """Where a store lives, and its privacy, retention, size and ranking options.

    Attributes:
        target: where :func:`~memory_store.factory.open_store` finds the store: a file path,
            ``sqlite:///absolute/path`` or ``postgresql://user:password@host/database``
            (None: :data:`~memory_store.factory.DEFAULT_DB_PATH`). The store classes take
            their path or URL as an argument instead.
        redact_parameters: keep no parameters in execution records (``{}`` is stored and
            ``parameters_redacted`` is set); a policy's ``records.redact_parameters`` asks too.
        retention_days: execution records (and their events) older than this are removed
            (None: kept forever).
        max_memory_bytes: largest content, and largest context (as JSON), that a memory,
            event, procedure or entity may have, in UTF-8 bytes.
        embeddings: ``auto`` (hybrid ranking when the embeddings extra is installed), ``on``
            (required: an error without the extra) or ``off`` (keyword ranking).

    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: str | None = None
    redact_parameters: bool = False
    retention_days: float | None = Field(None, gt=0)
    max_memory_bytes: int = Field(DEFAULT_MAX_MEMORY_BYTES, gt=0)
    embeddings: EmbeddingsMode = "auto"

    def with_embeddings(self, embeddings: str | None) -> StoreOptions:
        """Return these options with another embeddings mode (None: unchanged).

        Raises:
            StoreConfigError: ``embeddings`` is not auto, on or off (case and spaces ignored).

        """
        if embeddings is None:
            return self
        mode = embeddings.strip().lower()
        if mode not in EMBEDDINGS_MODES:
            raise StoreConfigError(f"embeddings must be auto, on or off, not {mode!r}")
        return self.model_copy(update={"embeddings": mode})
