"""The memory store in one SQLite file: its connection, FTS5 dialect, schema and store class."""

from memory_store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
