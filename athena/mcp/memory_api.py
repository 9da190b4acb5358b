"""The stable import path of :class:`athena.api.MemoryAPI`, as an agent's tool server sees it."""

from athena.api import MemoryAPI

__all__ = ["MemoryAPI"]
