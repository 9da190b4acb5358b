"""Re-export of :class:`memory_store.api.MemoryAPI` under its stable import path."""

from memory_store.api import MemoryAPI

__all__ = ["MemoryAPI"]
