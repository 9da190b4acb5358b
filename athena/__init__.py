"""athena-sandbox's composition root: the memory API, its settings, the CLI and the demo.

``athena`` is the only package that knows both others: it opens the memory store
(``memory_store``) with its options, builds the orchestrator (``orchestrator``) that records
runs in it, and offers both to an agent as :class:`athena.api.MemoryAPI`. Modules:
``api`` (MemoryAPI), ``settings`` (the orchestrator's settings and the store's options),
``procedures`` (procedure code, validated by the orchestrator's validator), ``cli`` (the
``athena-sandbox`` command) and ``demo``.

``from athena.mcp.memory_api import MemoryAPI`` and
``from athena.sandbox.execution_context import ExecutionContext`` are the stable import paths.
"""
