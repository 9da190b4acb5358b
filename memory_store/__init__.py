"""The memory store: every execution, and the episodic events it gives rise to.

Open it with :func:`open_store` (a path, ``sqlite:///absolute/path``, ``ATHENA_MEMORY_URL``,
``ATHENA_MEMORY_DB`` or ``~/.athena/memory.db``); use it through the :class:`Store` protocol.
"""

from memory_store.api import MemoryAPI
from memory_store.base import Store
from memory_store.errors import StoreConfigError, StoreError
from memory_store.factory import DEFAULT_DB_PATH, open_store, resolve_store_target
from memory_store.models import EventRecord, ExecutionRecord
from memory_store.sqlite import SQLiteStore

__all__ = [
    "DEFAULT_DB_PATH",
    "EventRecord",
    "ExecutionRecord",
    "MemoryAPI",
    "SQLiteStore",
    "Store",
    "StoreConfigError",
    "StoreError",
    "open_store",
    "resolve_store_target",
]
