"""The agent-facing facade of athena-sandbox (thin re-exports).

``from athena.mcp.memory_api import MemoryAPI`` and
``from athena.sandbox.execution_context import ExecutionContext`` are the stable import paths.
"""
