"""Re-export of :class:`orchestrator.context.ExecutionContext` under its stable import path."""

from orchestrator.context import ExecutionContext

__all__ = ["ExecutionContext"]
