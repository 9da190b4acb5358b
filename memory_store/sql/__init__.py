"""The SQL both dialects share: the store core, records, the full-text documents, search, ranking.

:class:`~memory_store.sql.store.SqlStore` writes the :class:`~memory_store.protocol.Store`
protocol once, against :class:`~memory_store.sql.db.Db`; ``memory_store.sqlite`` and
``memory_store.postgres`` add a connection and their dialect.
"""
