"""Consolidation: the strategies and pure decisions (``strategies``), and running them (``runner``).

:mod:`~memory_store.consolidation.strategies` decides what becomes a pattern memory, what is
merged, decayed and pruned; :mod:`~memory_store.consolidation.runner` reads and writes a store
through the shared SQL code.
"""

from memory_store.consolidation.strategies import STRATEGIES, Strategy

__all__ = ["STRATEGIES", "Strategy"]
