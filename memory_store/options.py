"""``StoreOptions``: what a store does beyond storing, taken from the settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from memory_store.embeddings import EmbeddingsMode
from memory_store.errors import StoreConfigError
from memory_store.values import DEFAULT_MAX_MEMORY_BYTES
from orchestrator.settings import Settings

EMBEDDINGS_MODES: tuple[EmbeddingsMode, ...] = ("auto", "on", "off")
RETENTION_CHECK_SECONDS = 60.0
"""Retention runs when a store opens, then after writes at most once per this many seconds."""


class StoreOptions(BaseModel):
    """Privacy, retention, size and ranking options of a store.

    Attributes:
        redact_parameters: keep no parameters in execution records (``{}`` is stored and
            ``parameters_redacted`` is set); a policy's ``records.redact_parameters`` asks too.
        retention_days: execution records (and their events) older than this are removed
            (None: kept forever).
        max_memory_bytes: largest content a memory, event, procedure or entity may have.
        embeddings: ``auto`` (hybrid ranking when the embeddings extra is installed), ``on``
            (required: an error without the extra) or ``off`` (keyword ranking).

    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    redact_parameters: bool = False
    retention_days: float | None = Field(None, gt=0)
    max_memory_bytes: int = Field(DEFAULT_MAX_MEMORY_BYTES, gt=0)
    embeddings: EmbeddingsMode = "auto"

    @classmethod
    def from_settings(
        cls, settings: Settings, embeddings: EmbeddingsMode | None = None
    ) -> StoreOptions:
        """Return the options the settings ask for.

        ``embeddings`` wins; else ``settings.memory_embeddings`` (``ATHENA_MEMORY_EMBEDDINGS``).

        Raises:
            StoreConfigError: ``embeddings`` is not auto, on or off.

        """
        mode = (embeddings or settings.memory_embeddings).strip().lower()
        if mode not in EMBEDDINGS_MODES:
            raise StoreConfigError(f"embeddings must be auto, on or off, not {mode!r}")
        return cls(
            redact_parameters=settings.redact_parameters,
            retention_days=settings.retention_days,
            max_memory_bytes=settings.max_memory_bytes,
            embeddings=mode,
        )
