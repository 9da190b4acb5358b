"""The ``Store`` protocol: what the orchestrator and the memory API need from a memory store.

Every backend takes the checked inputs of :mod:`memory_store.requests` and returns the models of
:mod:`memory_store.records`; SQL and ranking stay behind this protocol, so the backend (SQLite
or PostgreSQL) can be swapped without the API noticing.

Every store serves one tenant (``default`` as opened); :meth:`Store.scoped` gives a view of
another, sharing the connections. All that a store reads, writes, searches, consolidates or
deletes is its tenant's: another tenant's record behaves exactly like an unknown id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, Self, runtime_checkable

from memory_store.consolidation.strategies import Strategy
from memory_store.records import (
    ConsolidationReport,
    EntityRecord,
    EventHit,
    EventRecord,
    ExecutionRecord,
    MemoryRecord,
    ProcedureRecord,
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
from orchestrator.models import Event, ExecutionRequest, ExecutionResult

AnyRecord = (
    MemoryRecord | EventRecord | ExecutionRecord | ProcedureRecord | EntityRecord | RelationRecord
)
"""A record of any kind."""


@runtime_checkable
class Store(Protocol):
    """A memory store: executions, events, memories, procedures, entities and relations."""

    @property
    def tenant(self) -> str:
        """The tenant whose records this store (or view) reads and writes."""
        ...

    def scoped(self, tenant: str) -> Self:
        """Return a view confined to ``tenant``, sharing the connections (closing it does nothing).

        Raises:
            RequestError: not a valid tenant name.

        """
        ...

    def record_execution(
        self, request: ExecutionRequest, result: ExecutionResult, events: Sequence[Event] = ()
    ) -> int:
        """Persist one execution, its events and its ``execution`` event in one transaction.

        The record is filed under ``request.tenant``; ``events`` are the run's events in order
        (the exit event last), kept with the record.

        Returns:
            The id of the execution record.

        Raises:
            RequestError: a view is given another tenant's request.
            StoreError: the store cannot write, or this execution is already recorded.

        """
        ...

    def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """Return the record of one execution, or None when it is not recorded.

        Raises:
            StoreError: the store cannot be read.

        """
        ...

    def list_executions(
        self, limit: int = 50, language: str | None = None, *, session_id: str | None = None
    ) -> list[ExecutionRecord]:
        """Return up to ``limit`` executions, newest first, optionally of one language or session.

        Raises:
            RequestError: ``limit`` is less than 1, or a filter is not a string.
            StoreError: the store cannot be read.

        """
        ...

    def session_calls(self, session_id: str) -> list[ExecutionRecord]:
        """Return the recorded calls of one session of the store's tenant, oldest first.

        Returns:
            The records (an empty list for an unknown session, or another tenant's).

        Raises:
            RequestError: ``session_id`` is not a string or holds a lone surrogate.
            StoreError: the store cannot be read.

        """
        ...

    def list_events(self, limit: int = 50, event_type: str | None = None) -> list[EventRecord]:
        """Return up to ``limit`` events, newest first, optionally of one type.

        Raises:
            RequestError: ``limit`` is less than 1.
            StoreError: the store cannot be read.

        """
        ...

    def add_memory(self, memory: NewMemory) -> int:
        """Remember a memory; return its id.

        Raises:
            StoreError: the store cannot write.

        """
        ...

    def add_memories(self, memories: Iterable[NewMemory]) -> list[int]:
        """Remember many memories in one transaction; return their ids in order.

        Raises:
            StoreError: the store cannot write (then none is stored).

        """
        ...

    def add_event(self, event: NewEvent) -> int:
        """Remember an episodic event; return its id.

        Raises:
            StoreError: the store cannot write.

        """
        ...

    def add_procedure(self, procedure: NewProcedure) -> int:
        """Remember a procedure; return its id.

        Raises:
            StoreError: the store cannot write.

        """
        ...

    def add_entity(self, entity: NewEntity) -> int:
        """Remember an entity (the same type and name again merges the context); return its id.

        Raises:
            StoreError: the store cannot write.

        """
        ...

    def add_relation(self, relation: NewRelation) -> int:
        """Link two records of any kind; return the relation's id.

        Raises:
            RecordNotFoundError: the source or the target does not exist.
            StoreError: the store cannot write.

        """
        ...

    def get(self, object_id: int) -> AnyRecord | None:
        """Return the record with this id, whatever its kind, or None.

        Raises:
            StoreError: the store cannot be read.

        """
        ...

    def kind_of(self, object_id: int) -> str | None:
        """Return the kind of the record with this id, or None.

        Raises:
            StoreError: the store cannot be read.

        """
        ...

    def relations(self, object_id: int) -> list[RelationRecord]:
        """Return the relations from or to a record, oldest first.

        Raises:
            StoreError: the store cannot be read.

        """
        ...

    def forget(self, object_id: int) -> bool:
        """Delete a record of any kind and what hangs on it; False when the id is unknown.

        Raises:
            StoreError: the store cannot write.

        """
        ...

    def recall(self, query: RecallQuery) -> list[RecallHit]:
        """Return the records that best match a query, best first, scores in [0, 1].

        Raises:
            StoreError: the store cannot be read or written.

        """
        ...

    def recall_events(self, query: EventQuery) -> list[EventHit]:
        """Return events by words (ranked), type and time; without words, newest first.

        Raises:
            StoreError: the store cannot be read.

        """
        ...

    def consolidate(self, strategy: Strategy, days_back: float) -> ConsolidationReport:
        """Find patterns, merge near-duplicates, decay and prune; return what was done.

        Raises:
            StoreError: the store cannot be read or written.

        """
        ...

    def prune_expired(self) -> int:
        """Remove execution records past the retention setting; return how many.

        Raises:
            StoreError: the store cannot write.

        """
        ...

    def close(self) -> None:
        """Release the store's connections; closing twice is harmless."""
        ...
