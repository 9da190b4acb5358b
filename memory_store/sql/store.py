"""``SqlStore``: the Store protocol written once over SQL; the backends add only a connection.

A backend subclasses :class:`SqlStore` and implements :meth:`SqlStore._reading` and
:meth:`SqlStore._writing` (run work on a :class:`~memory_store.sql.db.Db`, the latter in one
transaction retried whole when the database asks), ``close`` and its lifecycle. Everything
else (what each call writes and reads, ranking, consolidation, retention, redaction) is here
and in the shared modules :mod:`~memory_store.sql.records`, :mod:`~memory_store.sql.index`,
:mod:`~memory_store.sql.hits`, :mod:`~memory_store.sql.ranking` and
:mod:`~memory_store.consolidation.runner`.

Tenants: a store opened is the ``default`` tenant's; :meth:`SqlStore.scoped` gives a view of
another tenant sharing its connections. Every read, write, search and deletion of a view is
confined to its tenant; another tenant's record behaves exactly like an id that does not exist.
Retention (``prune_expired``) is store-wide.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self, TypeVar, cast

import structlog
from pydantic import JsonValue

from memory_store import options as _options
from memory_store.checks import iso, json_size, utf8_size, within_limit
from memory_store.consolidation import runner as consolidation
from memory_store.consolidation.strategies import Strategy
from memory_store.embeddings import Embedder, pack, resolve_embedder
from memory_store.options import StoreOptions
from memory_store.protocol import AnyRecord
from memory_store.records import (
    ConsolidationReport,
    EventHit,
    EventRecord,
    ExecutionRecord,
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
    steps_size,
)
from memory_store.sql import index, records
from memory_store.sql.db import Db, Work, utc_now
from memory_store.sql.documents import (
    Document,
    entity_document,
    event_document,
    memory_document,
    procedure_document,
)
from memory_store.sql.ranking import Ranker
from memory_store.sql.rows import event_from_row, execution_from_row, execution_values, text
from memory_store.summary import summarize_execution
from orchestrator.errors import RequestError
from orchestrator.models import (
    DEFAULT_TENANT,
    Event,
    ExecutionRequest,
    ExecutionResult,
    check_tenant,
    check_text,
)

_log = structlog.get_logger(__name__)

T = TypeVar("T")
_RETENTION_BATCH = 500


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise RequestError(f"limit must be a whole number of at least 1, not {limit!r}")


def _check_filter(name: str, value: object) -> None:
    """Refuse a filter value that is not text the store can compare with.

    Raises:
        RequestError: not a string, or a string with a lone surrogate.

    """
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a string, not {type(value).__name__}")
    check_text(value, name)


class SqlStore(ABC):
    """What every SQL backend of the memory store does the same way.

    Args:
        options: redaction, retention, size limit and embeddings (default: all off, auto).
        embedder: the embedder for hybrid ranking; None: as ``options.embeddings`` says.

    Raises:
        MissingExtraError: ``options.embeddings`` is ``on`` without the embeddings extra.

    """

    def __init__(self, options: StoreOptions | None, embedder: Embedder | None) -> None:
        self._options = options or StoreOptions()
        self._embedder = embedder or resolve_embedder(self._options.embeddings)
        self._tx = _Transactions(self)
        self._ranker = Ranker(self._tx, self._embedder)
        self._last_retention = 0.0
        self._tenant = DEFAULT_TENANT
        self._root: SqlStore = self

    @abstractmethod
    def _reading(self, work: Work[T]) -> T:
        """Run reads on a connection and return their value."""

    @abstractmethod
    def _writing(self, work: Work[T]) -> T:
        """Run ``work`` in one write transaction (retried whole) and return its value."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's connections; closing twice is harmless."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tenant(self) -> str:
        """The tenant whose records this store (or view) reads and writes."""
        return self._tenant

    @property
    def is_view(self) -> bool:
        """True for a view made by :meth:`scoped` (closing it closes nothing)."""
        return self._root is not self

    def scoped(self, tenant: str) -> Self:
        """Return a view of this store confined to ``tenant``, sharing its connections.

        The view is of the same class; closing it does nothing (close the store itself).
        Records and searches of other tenants are invisible to it, as unknown ids are.

        Raises:
            RequestError: ``tenant`` is not a valid tenant name.

        """
        check_tenant(tenant)
        view = copy.copy(self._root)
        view._tenant = tenant
        return cast(Self, view)

    @property
    def options(self) -> StoreOptions:
        """The store's options."""
        return self._options

    @property
    def ranking(self) -> str:
        """``hybrid`` (keyword and vectors) or ``keyword``."""
        return "keyword" if self._embedder is None else "hybrid"

    # ----------------------------------------------------------------------- executions

    def record_execution(
        self, request: ExecutionRequest, result: ExecutionResult, events: Sequence[Event] = ()
    ) -> int:
        """Persist one execution, its events and its ``execution`` event in one transaction.

        The record is filed under ``request.tenant`` (the store the orchestrator records in
        takes every tenant's runs; a view takes only its own tenant's). Parameters are redacted
        (stored as ``{}``) when the options or the request's policy ask. ``events`` are kept
        as dicts, the exit event's result being the record's own.

        Returns:
            The id of the execution record.

        Raises:
            RequestError: the result belongs to another request, or a view is given another
                tenant's request.
            StoreError: the store cannot write, or this execution is already recorded.

        """
        if request.execution_id != result.execution_id:
            raise RequestError(
                f"the result is of execution {result.execution_id}, "
                f"the request of {request.execution_id}"
            )
        if self.is_view and request.tenant != self._tenant:
            raise RequestError(
                f"the request is tenant {request.tenant!r}'s, this store view is tenant "
                f"{self._tenant!r}'s: record it through the store or that tenant's view"
            )
        # Serialised before the transaction: it is held only for the inserts.
        values = execution_values(
            request, result, redact_parameters=self._options.redact_parameters, events=events
        )
        summary = text(summarize_execution(request, result))
        outcome = "success" if result.success else "failure"
        execution_ref = self._writing(
            lambda db: records.insert_execution(db, values, summary, outcome)
        )
        self._afterwrite()
        return execution_ref

    def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """Return the record of one execution, or None when it is not recorded.

        Raises:
            RequestError: the id holds a lone surrogate.
            StoreError: the store cannot be read.

        """
        if isinstance(execution_id, str):
            check_text(execution_id, "execution_id")
        sql = "SELECT * FROM executions WHERE execution_id = ? AND tenant = ?"
        row = self._reading(lambda db: db.execute(sql, (execution_id, self._tenant)).fetchone())
        return None if row is None else execution_from_row(dict(row))

    def list_executions(
        self, limit: int = 50, language: str | None = None, *, session_id: str | None = None
    ) -> list[ExecutionRecord]:
        """Return up to ``limit`` executions, newest first, optionally of one language or session.

        Raises:
            RequestError: ``limit`` is less than 1, or ``language`` or ``session_id`` is not a
                string or holds a lone surrogate.
            StoreError: the store cannot be read.

        """
        rows = self._newest("executions", {"language": language, "session_id": session_id}, limit)
        return [execution_from_row(dict(row)) for row in rows]

    def session_calls(self, session_id: str) -> list[ExecutionRecord]:
        """Return the recorded calls of one session of this tenant, oldest first.

        The calls are in the order they were recorded, which is the order they ran (a session
        runs one call at a time). Another tenant's session is an unknown one.

        Returns:
            The records (an empty list for a session with no recorded call).

        Raises:
            RequestError: ``session_id`` is not a string or holds a lone surrogate.
            StoreError: the store cannot be read.

        """
        _check_filter("session_id", session_id)
        sql = "SELECT * FROM executions WHERE tenant = ? AND session_id = ? ORDER BY created_at, id"
        rows = self._reading(lambda db: db.execute(sql, (self._tenant, session_id)).fetchall())
        return [execution_from_row(dict(row)) for row in rows]

    def list_events(self, limit: int = 50, event_type: str | None = None) -> list[EventRecord]:
        """Return up to ``limit`` events, newest first, optionally of one type.

        Raises:
            RequestError: ``limit`` is less than 1, or ``event_type`` holds a lone surrogate.
            StoreError: the store cannot be read.

        """
        rows = self._newest("events", {"event_type": event_type}, limit)
        return [event_from_row(dict(row)) for row in rows]

    def _newest(self, table: str, filters: Mapping[str, str | None], limit: int) -> list[Any]:
        """Return up to ``limit`` rows of the tenant, newest first, equal to the given filters."""
        _check_limit(limit)
        chosen = {column: value for column, value in filters.items() if value is not None}
        for column, value in chosen.items():
            _check_filter(column, value)
        where = "".join(f" AND {column} = ?" for column in chosen)
        # id breaks ties: writers take the time inside their transaction.
        sql = (
            f"SELECT * FROM {table} WHERE tenant = ?{where} "
            "ORDER BY created_at DESC, id DESC LIMIT ?"
        )
        args = (self._tenant, *chosen.values(), limit)
        return self._reading(lambda db: db.execute(sql, args).fetchall())

    def prune_expired(self) -> int:
        """Remove execution records (and their events) older than ``retention_days``.

        Runs when the store opens and, after writes, at most once a minute; call it to run it
        now. Deletes in batches, so other writers wait little. Retention is store-wide: a
        view prunes every tenant's expired executions too.

        Returns:
            How many executions were removed (0 without a retention setting).

        Raises:
            StoreError: the store cannot write.

        """
        self._root._last_retention = time.monotonic()
        if self._options.retention_days is None:
            return 0
        cutoff = iso(datetime.now(UTC) - timedelta(days=self._options.retention_days))

        def batch(db: Db) -> int:
            ids = db.execute(
                "SELECT id FROM executions WHERE created_at < ? ORDER BY id LIMIT ?",
                (cutoff, _RETENTION_BATCH),
            ).fetchall()
            db.executemany("DELETE FROM objects WHERE id = ?", [(r[0],) for r in ids])
            return len(ids)

        removed = done = self._writing(batch)
        while done == _RETENTION_BATCH:
            done = self._writing(batch)
            removed += done
        if removed:
            _log.info("pruned execution records past retention", removed=removed)
        return removed

    def _afterwrite(self) -> None:
        if time.monotonic() - self._root._last_retention >= _options.RETENTION_CHECK_SECONDS:
            self.prune_expired()

    # ----------------------------------------------------------------------- writing

    def _vector_of(self, doc: Document) -> bytes | None:
        if self._embedder is None:
            return None
        return pack(self._embedder.embed([doc.embedding_text()])[0])

    def _insert(self, kind: str, doc: Document, insert: Work[int]) -> int:
        vector = self._vector_of(doc)  # before the transaction: the model takes milliseconds

        def work(db: Db) -> int:
            object_id = insert(db)
            if vector is not None and self._embedder is not None:
                index.put_vector(db, object_id, kind, self._embedder.name, vector)
            return object_id

        object_id = self._writing(work)
        self._afterwrite()
        return object_id

    def _check_size(
        self, kind: str, content: Mapping[str, str | int], context: Mapping[str, JsonValue]
    ) -> None:
        """Refuse content (text, or a size already counted) or context over the size limit."""
        limit = self._options.max_memory_bytes
        for field, value in content.items():
            if isinstance(value, str) and 4 * len(value) <= limit:
                continue  # at most 4 UTF-8 bytes a character: no need to encode it (bulk imports)
            size = utf8_size(value) if isinstance(value, str) else value
            within_limit(f"the {kind}'s {field}", size, limit, as_json=field == "steps")
        if context:
            within_limit(f"the {kind}'s context", json_size(context), limit, as_json=True)

    def add_memory(self, memory: NewMemory) -> int:
        """Remember a memory; return its id.

        Raises:
            RecordTooLargeError: content or context over ``max_memory_bytes``.
            StoreError: the store cannot write.

        """
        self._check_size("memory", {"content": memory.content}, memory.context)
        return self._insert(
            "memory",
            memory_document(memory),
            lambda db: records.insert_memory(db, memory, self._tenant),
        )

    def add_memories(self, memories: Iterable[NewMemory]) -> list[int]:
        """Remember many memories in one transaction (fast: for imports and benchmarks).

        Vectors are not made here; hybrid ranking embeds them later, a batch per recall.

        Returns:
            Their ids, in order.

        Raises:
            RecordTooLargeError: content or context over ``max_memory_bytes``.
            StoreError: the store cannot write (then none is stored).

        """
        items = list(memories)
        for memory in items:
            self._check_size("memory", {"content": memory.content}, memory.context)

        def work(db: Db) -> list[int]:
            now = utc_now()
            return [records.insert_memory(db, m, self._tenant, now=now) for m in items]

        ids = self._writing(work)
        self._after_bulk(len(ids))
        self._afterwrite()
        return ids

    def _after_bulk(self, count: int) -> None:
        """Called after ``add_memories`` stored ``count`` memories (a backend may tidy up)."""
        del count  # nothing to do by default

    def add_event(self, event: NewEvent) -> int:
        """Remember an episodic event; return its id.

        Raises:
            RecordTooLargeError: content or context over ``max_memory_bytes``.
            StoreError: the store cannot write.

        """
        self._check_size("event", {"content": event.content}, event.context)
        return self._insert(
            "event", event_document(event), lambda db: records.insert_event(db, event, self._tenant)
        )

    def add_procedure(self, procedure: NewProcedure) -> int:
        """Remember a procedure; return its id.

        Raises:
            RecordTooLargeError: content or context over ``max_memory_bytes``.
            StoreError: the store cannot write.

        """
        sizes = {"name": utf8_size(procedure.name), "steps": steps_size(procedure.steps)}
        self._check_size("procedure", sizes, procedure.context)
        doc = procedure_document(procedure)
        return self._insert(
            "procedure", doc, lambda db: records.insert_procedure(db, procedure, self._tenant)
        )

    def add_entity(self, entity: NewEntity) -> int:
        """Remember an entity, or merge the context into the one of the same type and name.

        Returns:
            The entity's id (the existing one when it was known).

        Raises:
            RecordTooLargeError: content or context over ``max_memory_bytes``.
            StoreError: the store cannot write.

        """
        self._check_size("entity", {"name": entity.name}, entity.context)
        return self._insert(
            "entity",
            entity_document(entity),
            lambda db: records.upsert_entity(db, entity, self._tenant)[0],
        )

    def add_relation(self, relation: NewRelation) -> int:
        """Link two records of any kind; the same link again updates its context.

        Returns:
            The relation's id.

        Raises:
            RecordNotFoundError: the source or the target does not exist (or is another
                tenant's).
            StoreError: the store cannot write.

        """
        return self._writing(lambda db: records.upsert_relation(db, relation, self._tenant))

    # ----------------------------------------------------------------------- reading by id

    def get(self, object_id: int) -> AnyRecord | None:
        """Return the record with this id, whatever its kind, or None.

        Raises:
            StoreError: the store cannot be read.

        """
        return self._reading(lambda db: records.get_record(db, object_id, self._tenant))

    def kind_of(self, object_id: int) -> str | None:
        """Return the kind of the record with this id, or None.

        Raises:
            StoreError: the store cannot be read.

        """
        return self._reading(lambda db: records.kind_of(db, object_id, self._tenant))

    def relations(self, object_id: int) -> list[RelationRecord]:
        """Return the relations from or to a record, oldest first.

        Raises:
            StoreError: the store cannot be read.

        """
        return self._reading(lambda db: records.relations_of(db, object_id, self._tenant))

    def forget(self, object_id: int) -> bool:
        """Delete a record of any kind, with its index rows, vector and relations.

        Forgetting an execution forgets its event too.

        Returns:
            False when no record has this id.

        Raises:
            StoreError: the store cannot write.

        """
        return self._writing(lambda db: records.delete_record(db, object_id, self._tenant))

    # ----------------------------------------------------------------------- searching

    def recall(self, query: RecallQuery) -> list[RecallHit]:
        """Return the records that best match a query, best first, scores in [0, 1].

        See :mod:`memory_store.sql.ranking` for the ranking.

        Raises:
            StoreError: the store cannot be read or written.

        """
        return self._ranker.recall(query, self._tenant)

    def recall_events(self, query: EventQuery) -> list[EventHit]:
        """Return events by words (ranked), type and time; without words, newest first.

        Raises:
            StoreError: the store cannot be read.

        """
        return self._ranker.recall_events(query, self._tenant)

    def consolidate(self, strategy: Strategy, days_back: float) -> ConsolidationReport:
        """Find patterns, merge near-duplicates, decay and prune (see :mod:`consolidate`).

        Raises:
            StoreError: the store cannot be read or written.

        """
        return consolidation.run(self._tx, self._ranker, strategy, days_back, self._tenant)


class _Transactions:
    """The store's reads and writes, for the ranking and consolidation helpers."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    def read(self, work: Work[T]) -> T:
        return self._store._reading(work)

    def write(self, work: Work[T]) -> T:
        return self._store._writing(work)
