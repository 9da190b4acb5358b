"""The ``Store`` protocol: what the orchestrator and the memory API need from a memory store."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from memory_store.models import EventRecord, ExecutionRecord
from orchestrator.models import ExecutionRequest, ExecutionResult


@runtime_checkable
class Store(Protocol):
    """A memory store: persists every execution and the events it gives rise to."""

    def record_execution(self, request: ExecutionRequest, result: ExecutionResult) -> int:
        """Persist one execution and its ``execution`` event in one transaction.

        Returns:
            The id of the execution record.

        Raises:
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
        self, limit: int = 50, language: str | None = None
    ) -> list[ExecutionRecord]:
        """Return up to ``limit`` executions, newest first, optionally of one language.

        Raises:
            RequestError: ``limit`` is less than 1.
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

    def close(self) -> None:
        """Release the store's connections; closing twice is harmless."""
        ...
