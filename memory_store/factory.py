"""Where the memory store lives, and opening it: ``resolve_store_target`` and ``open_store``.

Accepted targets: a plain path (``~`` is expanded), ``sqlite:///absolute/path`` and
``postgresql://user:password@host:port/database`` (or ``postgres://``), which opens a
:class:`~memory_store.postgres.store.PostgresStore` (the ``postgres`` extra). A URL is never echoed
in an error: it may hold a password.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from memory_store.embeddings import EmbeddingsMode
from memory_store.errors import StoreConfigError
from memory_store.options import StoreOptions
from memory_store.postgres.store import PostgresStore
from memory_store.protocol import Store
from memory_store.sqlite.store import SQLiteStore

DEFAULT_DB_PATH = Path("~/.athena/memory.db")
"""The store used when nothing else is set; ``~`` is expanded when the store is opened."""

_ACCEPTED = (
    "a file path (e.g. ~/.athena/memory.db), sqlite:///absolute/path or "
    "postgresql://user:password@host:port/database"
)
_POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})


def resolve_store_target(
    db_path: str | os.PathLike[str] | None, options: StoreOptions | None = None
) -> str:
    """Return where the store lives, as given: a path or a URL, ``~`` not yet expanded.

    Precedence: the ``db_path`` argument, then ``options.target``, then
    :data:`DEFAULT_DB_PATH`.
    """
    if db_path is not None:
        return os.fspath(db_path)
    if options is not None and options.target:
        return options.target
    return os.fspath(DEFAULT_DB_PATH)


def _sqlite_url_path(target: str) -> str:
    parts = urlsplit(target)
    if parts.netloc or parts.query or parts.fragment or not parts.path.startswith("/"):
        raise StoreConfigError(
            f"invalid SQLite URL {target!r}: write sqlite:///absolute/path "
            "(three slashes, no host, no query), or give a plain file path"
        )
    return unquote(parts.path)


def is_postgres_url(target: str) -> bool:
    """Tell whether a target is a PostgreSQL URL (``postgresql://``, ``postgres://``)."""
    scheme, found, _ = target.strip().partition("://")
    return bool(found) and scheme.lower().partition("+")[0] in _POSTGRES_SCHEMES


def sqlite_path(target: str) -> Path:
    """Return the SQLite file a target names.

    Raises:
        StoreConfigError: the target is empty, in-memory or a URL of another scheme.

    """
    if not target.strip():
        raise StoreConfigError(f"the memory store path is empty: give {_ACCEPTED}")
    path = target
    if "://" in target:
        scheme = target.partition("://")[0].lower()
        if scheme != "sqlite":
            raise StoreConfigError(f"unsupported memory store scheme {scheme!r}: give {_ACCEPTED}")
        path = _sqlite_url_path(target)
    if path.rstrip("/").rpartition("/")[2] == ":memory:":
        raise StoreConfigError(
            f"the memory store must persist, so not ':memory:': give {_ACCEPTED}"
        )
    return Path(path).expanduser()


def open_store(
    db_path: str | os.PathLike[str] | None = None,
    options: StoreOptions | None = None,
    *,
    embeddings: EmbeddingsMode | None = None,
) -> Store:
    """Open the memory store named by the argument, the options or the default.

    Args:
        db_path: a path or URL; wins over ``options.target``.
        options: the store's configuration: target, redaction, retention, the size limit and
            embeddings (default: ``StoreOptions()``; ``athena.settings`` builds them from the
            ``ATHENA_*`` environment).
        embeddings: ``auto``, ``on`` or ``off``; wins over ``options.embeddings``.

    Raises:
        StoreConfigError: the target is not an accepted form, or its file cannot be created.
        StoreError: the file or database is not a memory store, is newer than this code
            knows, or (PostgreSQL) cannot be reached or refuses the login.
        MissingExtraError: embeddings are ``on`` but the embeddings extra is not installed,
            or the target is a PostgreSQL URL and the postgres extra is not installed.

    """
    options = (options if options is not None else StoreOptions()).with_embeddings(embeddings)
    target = resolve_store_target(db_path, options)
    if is_postgres_url(target):
        return PostgresStore(target.strip(), options)
    return SQLiteStore(sqlite_path(target), options)
