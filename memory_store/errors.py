"""Errors of the memory store, part of the one error tree of athena-sandbox.

The branch the store adds::

    SandboxError
    └── StoreError                        the store cannot be opened, read or written
        └── StoreConfigError (ValueError) the store path or URL is wrong: fix the setting

Errors of ``sqlite3`` are translated into this tree where the store talks to SQLite
(``raise ... from exc``), so callers never see a ``sqlite3`` exception.
"""

from __future__ import annotations

from orchestrator.errors import SandboxError


class StoreError(SandboxError):
    """The memory store cannot be opened, read or written; the message says which file and why."""


class StoreConfigError(StoreError, ValueError):
    """The store path or URL is wrong (unknown scheme, unusable path); the message says the fix."""
