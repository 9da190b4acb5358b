"""PostgreSQL connections of the memory store: the URL, psycopg (lazily), a pool, retries.

psycopg 3 and psycopg-pool come with the ``postgres`` extra; nothing here imports them until a
store is opened, and without them :func:`require_psycopg` raises
:class:`~memory_store.errors.MissingExtraError` naming the extra.

Every connection is set up the same way (:func:`configure`): autocommit (reads run as they
are; writes open ``conn.transaction()``), time zone UTC, rows readable by position and by name,
``timestamptz`` read back as the fixed-width ISO text the store writes, ``jsonb`` as text, and
strings sent with NUL turned into U+FFFD (PostgreSQL text cannot hold NUL) and lone
surrogates replaced. Writes whose transaction PostgreSQL aborts for a serialization failure or
a deadlock are retried whole.

Passwords never reach a message or a log: errors name the URL with the password masked, and
the password is scrubbed from the driver's own error text.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import structlog
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from memory_store.errors import MissingExtraError, StoreConfigError, StoreError
from memory_store.sql.rows import text

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

_log = structlog.get_logger(__name__)

T = TypeVar("T")
EXTRA = "athena-sandbox[postgres]"
CONNECT_TIMEOUT_SECONDS = 10
POOL_SIZE = 4
"""Connections a store keeps at most; threads beyond it wait for one."""
POOL_WAIT_SECONDS = 30.0
_RETRIED_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


def require_psycopg() -> tuple[ModuleType, ModuleType]:
    """Import psycopg and psycopg_pool.

    Raises:
        MissingExtraError: the postgres extra is not installed.

    """
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise MissingExtraError(
            f"the PostgreSQL store needs the postgres extra: pip install '{EXTRA}'"
        ) from exc
    return psycopg, psycopg_pool


# --------------------------------------------------------------------------- the URL


@dataclass(frozen=True)
class PostgresTarget:
    """A PostgreSQL URL, as libpq takes it, and as messages may show it.

    Attributes:
        conninfo: the URL for libpq (``postgres://`` and ``postgresql+driver://`` made
            ``postgresql://``).
        shown: the URL with its password masked, for messages and logs.
        secrets: the password as written and decoded, scrubbed from driver errors.

    """

    conninfo: str
    shown: str
    secrets: tuple[str, ...]

    @classmethod
    def parse(cls, url: str) -> PostgresTarget:
        """Return the target of a ``postgresql://`` or ``postgres://`` URL.

        Raises:
            StoreConfigError: the URL cannot be parsed (the message does not echo it).

        """
        try:
            parts = urlsplit(url.strip())
            password = parts.password
        except ValueError as exc:
            raise StoreConfigError(
                "invalid PostgreSQL URL: write postgresql://user:password@host:port/database"
            ) from exc
        scheme = parts.scheme.lower().partition("+")[0]
        if scheme not in {"postgresql", "postgres"}:
            raise StoreConfigError(f"not a PostgreSQL URL (scheme {scheme!r})")
        conninfo = urlunsplit(("postgresql", *parts[1:]))
        if password is None:
            return cls(conninfo, conninfo, ())
        netloc = parts.netloc.rpartition("@")
        user = netloc[0].partition(":")[0]
        masked = urlunsplit(("postgresql", f"{user}:***@{netloc[2]}", *parts[2:]))
        secrets = {password, unquote(password), quote(unquote(password), safe="")}
        return cls(conninfo, masked, tuple(s for s in secrets if s))

    def scrub(self, message: str) -> str:
        """Return ``message`` with the password masked wherever it appears."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            message = message.replace(secret, "***")
        return message


# --------------------------------------------------------------------------- connections


class Row:
    """A row readable by position, by column name, unpacked, and by ``dict(row)``."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: Sequence[Any]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._names[key] if isinstance(key, str) else key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        """Return the column names, in order."""
        return list(self._names)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values, strict=False))!r})"


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    names: dict[str, int] = {}
    for position, column in enumerate(cursor.description or ()):
        names.setdefault(column.name, position)  # like sqlite3.Row: the first of a name wins
    return functools.partial(Row, names)


@functools.cache
def _adapters() -> tuple[type[Any], type[Any], type[Any]]:
    """Return the loader and dumper classes (made on first use: psycopg is imported lazily)."""
    from psycopg.adapt import Loader
    from psycopg.types.string import StrDumperUnknown, TextLoader

    class IsoTimeLoader(Loader):
        """``timestamptz`` as the fixed-width ISO 8601 UTC text the store writes."""

        def load(self, data: Any) -> str:
            moment = datetime.fromisoformat(bytes(data).decode())
            return moment.astimezone(UTC).isoformat(timespec="microseconds")

    class SafeStrDumper(StrDumperUnknown):
        """``str`` with NUL as U+FFFD and lone surrogates replaced (PostgreSQL refuses both)."""

        def dump(self, obj: str) -> bytes:
            if "\x00" in obj:
                obj = obj.replace("\x00", "\ufffd")
            try:
                return obj.encode("utf-8")
            except UnicodeEncodeError:
                return text(obj).encode("utf-8")

    return IsoTimeLoader, TextLoader, SafeStrDumper


def configure(conn: psycopg.Connection[Any]) -> None:
    """Set up a new connection the way the store reads and writes (see the module docstring).

    Raises:
        StoreConfigError: the database's encoding is not UTF8.

    """
    time_loader, text_loader, str_dumper = _adapters()
    conn.adapters.register_loader("timestamptz", time_loader)
    conn.adapters.register_loader("jsonb", text_loader)
    conn.adapters.register_dumper(str, str_dumper)
    conn.row_factory = _row_factory
    conn.execute("SET TIME ZONE 'UTC'")
    encoding = conn.execute("SHOW server_encoding").fetchone()
    if encoding is None or encoding[0] != "UTF8":
        raise StoreConfigError(
            "the PostgreSQL database must use the UTF8 encoding (CREATE DATABASE ... "
            "ENCODING 'UTF8')"
        )


def connect(target: PostgresTarget) -> psycopg.Connection[Any]:
    """Open one configured connection (for migrating, before the pool opens).

    Raises:
        MissingExtraError: the postgres extra is not installed.
        psycopg.Error: the server refuses or cannot be reached (the store translates it).

    """
    driver, _ = require_psycopg()
    conn: psycopg.Connection[Any] = driver.connect(target.conninfo, **_connect_kwargs())
    try:
        configure(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_kwargs() -> dict[str, Any]:
    return {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "client_encoding": "UTF8",
        "application_name": "athena-sandbox",
    }


def open_pool(target: PostgresTarget, size: int = POOL_SIZE) -> psycopg_pool.ConnectionPool[Any]:
    """Open a pool of configured connections and wait for the first.

    Raises:
        MissingExtraError: the postgres extra is not installed.
        psycopg_pool.PoolTimeout: no connection could be made in time.

    """
    _, pool_module = require_psycopg()
    pool: psycopg_pool.ConnectionPool[Any] = pool_module.ConnectionPool(
        target.conninfo,
        kwargs=_connect_kwargs(),
        min_size=1,
        max_size=size,
        timeout=POOL_WAIT_SECONDS,
        configure=configure,
        name="athena-memory",
        open=False,
    )
    try:
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS * 2)
    except BaseException:
        pool.close()
        raise
    return pool


# --------------------------------------------------------------------------- errors and retries


def _is_conflict(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) in _RETRIED_SQLSTATES


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    _log.warning(
        "the memory store's transaction conflicted with another; retrying it",
        attempt=state.attempt_number,
        sqlstate=getattr(exc, "sqlstate", None),
    )


retry_conflicts = retry(
    retry=retry_if_exception(_is_conflict),
    stop=stop_after_attempt(6),
    wait=wait_random_exponential(multiplier=0.02, max=1.0),
    before_sleep=_log_retry,
    reraise=True,
)
"""Retry a whole transaction that PostgreSQL aborted as a serialization failure or deadlock."""


@contextmanager
def translated(target: PostgresTarget) -> Iterator[None]:
    """Turn psycopg and pool errors into :class:`StoreError`, the password scrubbed.

    Raises:
        StoreError: what psycopg or the pool raised, explained.

    """
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        module = type(exc).__module__.partition(".")[0]
        if module not in {"psycopg", "psycopg_pool", "psycopg_binary"}:
            raise
        raw = str(exc).strip()
        detail = target.scrub(raw) or type(exc).__name__
        error = StoreError(f"{target.shown}: the memory store failed: {detail}")
        if detail != raw:  # the driver's text held the password: do not chain it either
            raise error from None
        raise error from exc
