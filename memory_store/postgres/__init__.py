"""The memory store in PostgreSQL: its connection and pool, tsvector dialect, schema and store."""

from memory_store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
