"""The memory store: executions, events, memories, procedures, entities and their relations.

Open it with :func:`open_store` (a path, ``sqlite:///absolute/path``,
``postgresql://user:password@host/database``, ``ATHENA_MEMORY_URL``, ``ATHENA_MEMORY_DB`` or
``~/.athena/memory.db``): a :class:`SQLiteStore` or, for shared deployments, a
:class:`PostgresStore` (the ``postgres`` extra). Use it through the :class:`Store` protocol
with the checked inputs (:class:`NewMemory`, :class:`RecallQuery`, ...), or through
:class:`MemoryAPI`, which takes and returns plain values.
"""

from memory_store.api import MemoryAPI
from memory_store.base import AnyRecord, Store
from memory_store.consolidate import STRATEGIES, Strategy
from memory_store.embeddings import Embedder, EmbeddingsMode, MiniLMEmbedder
from memory_store.errors import (
    MissingExtraError,
    RecordNotFoundError,
    StoreConfigError,
    StoreError,
)
from memory_store.factory import DEFAULT_DB_PATH, open_store, resolve_store_target
from memory_store.inputs import (
    EventQuery,
    NewEntity,
    NewEvent,
    NewMemory,
    NewProcedure,
    NewRelation,
    RecallQuery,
)
from memory_store.models import (
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
from memory_store.options import StoreOptions
from memory_store.postgres import PostgresStore
from memory_store.procedures import CodeGenerator
from memory_store.sqlite import SQLiteStore

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
    "MemoryAPI",
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
