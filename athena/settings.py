"""Settings of the whole application: the orchestrator's, and the memory store's options.

:class:`Settings` composes :class:`orchestrator.settings.Settings` (how code runs) and
:class:`memory_store.StoreOptions` (the store's whole configuration). Both halves come from
``ATHENA_*`` environment variables by default; the store's keep their names:

=============================  ==================================================
``ATHENA_MEMORY_URL``          ``StoreOptions.target`` (wins over ``ATHENA_MEMORY_DB``)
``ATHENA_MEMORY_DB``           ``StoreOptions.target`` (a SQLite file)
``ATHENA_REDACT_PARAMETERS``   ``StoreOptions.redact_parameters``
``ATHENA_RETENTION_DAYS``      ``StoreOptions.retention_days``
``ATHENA_MAX_MEMORY_BYTES``    ``StoreOptions.max_memory_bytes``
``ATHENA_MEMORY_EMBEDDINGS``   ``StoreOptions.embeddings`` (auto, on, off)
=============================  ==================================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from memory_store import StoreOptions
from memory_store.checks import DEFAULT_MAX_MEMORY_BYTES
from orchestrator.settings import Settings as OrchestratorSettings


class StoreEnvironment(BaseSettings):
    """The store's ``ATHENA_*`` environment variables, read into :class:`StoreOptions`.

    Attributes:
        memory_db: SQLite file of the memory store (``ATHENA_MEMORY_DB``).
        memory_url: store URL, ``sqlite:///path`` or ``postgresql://...``
            (``ATHENA_MEMORY_URL``); wins over memory_db.
        redact_parameters: keep no parameters in execution records (a policy can ask too).
        retention_days: execution records older than this are pruned (None: kept).
        max_memory_bytes: largest content or context (as JSON) a record may have.
        memory_embeddings: hybrid recall with sentence vectors: ``auto`` (when the embeddings
            extra is installed), ``on`` (required: an error names the extra when it is missing)
            or ``off``.

    """

    # extra="ignore": the orchestrator's ATHENA_* variables are not ours to refuse.
    model_config = SettingsConfigDict(env_prefix="ATHENA_", frozen=True, extra="ignore")

    memory_db: Path | None = None
    memory_url: str | None = None
    redact_parameters: bool = False
    retention_days: float | None = Field(None, gt=0)
    max_memory_bytes: int = Field(DEFAULT_MAX_MEMORY_BYTES, gt=0)
    memory_embeddings: Literal["auto", "on", "off"] = "auto"

    def options(self) -> StoreOptions:
        """Return the store options these variables ask for."""
        target = self.memory_url or (None if self.memory_db is None else os.fspath(self.memory_db))
        return StoreOptions(
            target=target,
            redact_parameters=self.redact_parameters,
            retention_days=self.retention_days,
            max_memory_bytes=self.max_memory_bytes,
            embeddings=self.memory_embeddings,
        )


def store_options_from_env() -> StoreOptions:
    """Return the store options the ``ATHENA_*`` environment asks for.

    Raises:
        pydantic.ValidationError: a variable has a bad value (the message names its field).

    """
    return StoreEnvironment().options()


class Settings(BaseModel):
    """Everything a :class:`~athena.api.MemoryAPI` is configured with.

    Attributes:
        orchestrator: how code runs: images, pools, isolation modes, limits
            (default: from the ``ATHENA_*`` environment).
        store: the memory store's options: where it lives, redaction, retention, the size
            limit and embeddings (default: from the ``ATHENA_*`` environment, see above).

    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    orchestrator: OrchestratorSettings = Field(default_factory=OrchestratorSettings)
    store: StoreOptions = Field(default_factory=store_options_from_env)

    @classmethod
    def of(cls, settings: Settings | OrchestratorSettings | None) -> Settings:
        """Return application settings for what a caller gave.

        An orchestrator's ``Settings`` alone (what ``MemoryAPI.create`` took before the
        store had options of its own) is completed with the store's options from the
        environment; None gives everything from the environment.
        """
        if isinstance(settings, Settings):
            return settings
        if settings is None:
            return cls()
        return cls(orchestrator=settings)
