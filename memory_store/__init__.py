"""The memory store: executions, events, memories, procedures, entities and their relations.

Open it with :func:`open_store` (a path, ``sqlite:///absolute/path``,
``postgresql://user:password@host/database``, :attr:`StoreOptions.target` or
``~/.athena/memory.db``): a :class:`SQLiteStore` or, for shared deployments, a
:class:`PostgresStore` (the ``postgres`` extra). Every record belongs to a tenant: a store as
opened is the ``default`` tenant's, ``store.scoped("team-a")`` is another's view, and nothing
a view reads, searches or deletes is another tenant's. Use it through the :class:`Store` protocol
with the checked inputs (:class:`NewMemory`, :class:`RecallQuery`, ...), or through
``athena.api.MemoryAPI``, which takes and returns plain values. :class:`StoreOptions` is the
store's whole configuration.

Layout: ``sql/`` holds the SQL both dialects share (the store core, records, search,
ranking, the full-text documents), ``sqlite/`` and ``postgres/`` each dialect's connection,
schema and store class, ``consolidation/`` what turns runs into pattern memories. The
store imports nothing of ``orchestrator`` but its models and errors (a run's record is built
from them).
"""

from memory_store.consolidation.strategies import STRATEGIES, Strategy
from memory_store.embeddings import Embedder, EmbeddingsMode, MiniLMEmbedder
from memory_store.errors import (
    MissingExtraError,
    RecordNotFoundError,
    RecordTooLargeError,
    StoreConfigError,
    StoreError,
)
from memory_store.factory import DEFAULT_DB_PATH, open_store, resolve_store_target
from memory_store.options import StoreOptions
from memory_store.postgres.store import PostgresStore
from memory_store.protocol import AnyRecord, Store
from memory_store.records import (
    CodeGenerator,
    CodeIssue,
    CodeValidation,
    ConsolidationReport,
    EntityRecord,
    EventHit,
    EventRecord,
    ExecutionRecord,
    GeneratedCode,
    MemoryRecord,
    ProcedureRecord,
    ProcedureStep,
    RecallHit,
    RelationRecord,
)
from memory_store.requests import (
    EventQuery,
    NewEntity,
    NewEvent,
    NewMemory,
    NewProcedure,
    NewRelation,
    RecallQuery,
)
from memory_store.sqlite.store import SQLiteStore

__all__ = [
    "DEFAULT_DB_PATH",
    "STRATEGIES",
    "AnyRecord",
    "CodeGenerator",
    "CodeIssue",
    "CodeValidation",
    "ConsolidationReport",
    "Embedder",
    "EmbeddingsMode",
    "EntityRecord",
    "EventHit",
    "EventQuery",
    "EventRecord",
    "ExecutionRecord",
    "GeneratedCode",
    "MemoryRecord",
    "MiniLMEmbedder",
    "MissingExtraError",
    "NewEntity",
    "NewEvent",
    "NewMemory",
    "NewProcedure",
    "NewRelation",
    "PostgresStore",
    "ProcedureRecord",
    "ProcedureStep",
    "RecallHit",
    "RecallQuery",
    "RecordNotFoundError",
    "RecordTooLargeError",
    "RelationRecord",
    "SQLiteStore",
    "Store",
    "StoreConfigError",
    "StoreError",
    "StoreOptions",
    "Strategy",
    "open_store",
    "resolve_store_target",
]
