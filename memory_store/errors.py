"""Errors of the memory store, part of the one error tree of athena-sandbox.

The branches the store adds::

    SandboxError
    ├── RequestError (ValueError)            (orchestrator) the call is wrong
    │   ├── RecordNotFoundError (LookupError) no record has this id, or not of the needed kind
    │   └── RecordTooLargeError               content or context over max_memory_bytes
    └── StoreError                            the store cannot be opened, read or written
        ├── StoreConfigError (ValueError)     the store path or URL is wrong: fix the setting
        └── MissingExtraError (ImportError)   an optional part is not installed: the message
                                              names the extra to install

Errors of ``sqlite3`` and of psycopg are translated into this tree where the store talks to
the database (``raise ... from exc``), so callers never see a driver's exception; a PostgreSQL
error names the URL with its password masked.
"""

from __future__ import annotations

from orchestrator.errors import RequestError, SandboxError


class StoreError(SandboxError):
    """The memory store cannot be opened, read or written; the message says which file and why."""


class StoreConfigError(StoreError, ValueError):
    """The store path or URL is wrong (unknown scheme, unusable path); the message says the fix."""


class MissingExtraError(StoreError, ImportError):
    """An optional part (embeddings, PostgreSQL) was asked for but its extra is not installed."""


class RecordNotFoundError(RequestError, LookupError):
    """No record has the id given, or the record is not of the kind the call needs."""


class RecordTooLargeError(RequestError):
    """A record's content or context is over the store's ``max_memory_bytes``.

    The message gives the size, the limit and what to change (store less, or raise
    ``StoreOptions.max_memory_bytes``, i.e. ``ATHENA_MAX_MEMORY_BYTES``).
    """
