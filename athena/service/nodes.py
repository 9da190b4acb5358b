"""The nodes of a cluster: who holds a node id, and where each live node answers.

A node is ``athena-sandbox serve --node-id ID``. Two things make ids safe to share a store and
an engine:

- :func:`claim_node_id` takes a lock file per id on this host (``/run/athena-sandbox/nodes``),
  so a second process cannot take an id that a live one holds; the lock goes with the process,
  however it ends, so a node restarted at once after a crash takes its id back.
- :class:`NodeDirectory` keeps, in a table of the shared database (``athena_nodes``, in the
  memory store's PostgreSQL database or SQLite file), each live node's URL and when it last
  said it was alive. A node registers when it starts serving, says so every
  :data:`HEARTBEAT_SECONDS`, and removes its row when it stops; a node that stopped saying so
  for :data:`STALE_SECONDS` (killed, its machine gone) counts as gone. Another node reads it to
  send a session's requests to the node that holds the session. Every time in the table is
  the database's clock (read at each heartbeat and carried forward with this process's
  monotonic clock), so the nodes' own clocks may disagree.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from orchestrator.errors import RequestError

log = structlog.get_logger(__name__)

HEARTBEAT_SECONDS = 2.0
"""How often a node says it is alive."""
STALE_SECONDS = 10.0
"""A node silent for this long is gone (killed, or its machine is)."""
ORPHAN_SECONDS = 60.0
"""A node this much more silent than the most recent one is dead: its sandboxes are swept."""
FORGOTTEN_SECONDS = 24 * 3600.0
"""A dead node's row is dropped after this long (its sandboxes were swept long before)."""
SWEEP_EVERY_BEATS = 5  # a live node sweeps the sandboxes of dead ones every 10 s
LOCK_DIR = Path("/run/athena-sandbox/nodes")
_CACHE_SECONDS = 1.0  # how long a looked-up URL is reused: a proxied request should not wait
_CACHE_ENTRIES = 1024
_SYNC_SECONDS = 30.0  # a directory that does not beat reads the database's clock this often

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS athena_nodes (node_id TEXT PRIMARY KEY, url TEXT NOT NULL, "
    "host TEXT NOT NULL, pid INTEGER NOT NULL, started_at DOUBLE PRECISION NOT NULL, "
    "seen_at DOUBLE PRECISION NOT NULL)"
)


@dataclass(frozen=True)
class NodeInfo:
    """One registered node: its id, URL, host, pid and times (seconds since the epoch)."""

    node_id: str
    url: str
    host: str
    pid: int
    started_at: float
    seen_at: float

    def live(self, now: float) -> bool:
        """Whether it said it was alive within :data:`STALE_SECONDS`."""
        return now - self.seen_at < STALE_SECONDS


class Database(Protocol):
    """What the directory needs of a database: run one statement, get its rows."""

    now_sql: str
    """An SQL expression of the database's time, in seconds since the epoch."""

    def execute(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``?`` placeholders) in a transaction of its own; return its rows."""

    def create(self, schema: str) -> None:
        """Create a table if it is missing, safely when several nodes start at once."""

    def close(self) -> None:
        """Close the connection."""


class SQLiteDatabase:
    """The directory in the memory store's SQLite file (nodes of one machine)."""

    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
        self._lock = threading.Lock()

    def execute(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and commit it."""
        with self._lock, self._conn:
            return list(self._conn.execute(sql, tuple(args)).fetchall())

    def create(self, schema: str) -> None:
        """Create the table (SQLite serializes writers: IF NOT EXISTS is enough)."""
        self.execute(schema)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


class PostgresDatabase:
    """The directory in the memory store's PostgreSQL database (nodes of many machines)."""

    now_sql = "extract(epoch from clock_timestamp())::double precision"

    def __init__(self, url: str) -> None:
        from memory_store.postgres.connection import require_psycopg

        psycopg, _ = require_psycopg()
        self._connect: Callable[[], Any] = lambda: psycopg.connect(
            url, autocommit=True, connect_timeout=5
        )
        self._conn = self._connect()
        self._lock = threading.Lock()

    def execute(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (reconnecting once if the connection was lost)."""
        sql = sql.replace("?", "%s")
        with self._lock:
            if self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            cursor = self._conn.execute(sql, tuple(args))
            return list(cursor.fetchall()) if cursor.description else []

    def create(self, schema: str) -> None:
        """Create the table under an advisory lock.

        PostgreSQL's ``CREATE TABLE IF NOT EXISTS`` is not safe when nodes starting together
        run it at once (one fails on the catalog's unique index); the lock makes them take
        turns, and the later ones find the table.
        """
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('athena_nodes'))")
            self._conn.execute(schema)

    def close(self) -> None:
        """Close the connection."""
        with suppress(Exception):
            self._conn.close()


class NodeDirectory:
    """The table of live nodes, and this node's registration in it.

    Args:
        database: where the table lives (created if missing).
        clock: seconds since the epoch (tests inject one; default: the database's clock).
    """

    def __init__(self, database: Database, clock: Callable[[], float] | None = None) -> None:
        self._db = database
        self._clock = clock or self._database_clock
        self._offset: float | None = None  # the database's time minus our monotonic clock
        self._synced_at = 0.0
        self._db.create(_SCHEMA)
        self._cache: dict[str, tuple[float, NodeInfo | None]] = {}

    @classmethod
    def open(cls, target: str | Path) -> NodeDirectory:
        """The directory in the store's database: a ``postgresql://`` URL or a SQLite path."""
        text = os.fspath(target)
        if text.startswith(("postgresql://", "postgres://")):
            return cls(PostgresDatabase(text))
        return cls(SQLiteDatabase(Path(text.removeprefix("sqlite:///"))))

    def register(self, node_id: str, url: str) -> None:
        """Record this process as node ``node_id`` at ``url``.

        Raises:
            RequestError: another host's live node holds the id.
        """
        now, host = self._clock(), socket.gethostname()
        held = self.node(node_id, cached=False)
        if held is not None and held.live(now) and held.host != host:
            raise RequestError(
                f"node id {node_id!r} is held by a live node on host {held.host!r} "
                f"({held.url}): give each node its own --node-id, or wait "
                f"{STALE_SECONDS:g} s after that node stopped"
            )
        self._db.execute("DELETE FROM athena_nodes WHERE node_id = ?", (node_id,))
        self._db.execute(
            "INSERT INTO athena_nodes (node_id, url, host, pid, started_at, seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (node_id, url, host, os.getpid(), now, now),
        )
        self._cache.pop(node_id, None)

    def sync_clock(self) -> None:
        """Read the database's clock (the heartbeat does, every beat)."""
        before = time.monotonic()
        rows = self._db.execute(f"SELECT {self._db.now_sql}")
        after = time.monotonic()
        self._offset = float(rows[0][0]) - (before + after) / 2
        self._synced_at = after

    def _database_clock(self) -> float:
        """The database's time now, from its clock as last read plus our monotonic clock."""
        if self._offset is None or time.monotonic() - self._synced_at > _SYNC_SECONDS:
            self.sync_clock()
        assert self._offset is not None
        return self._offset + time.monotonic()

    def heartbeat(self, node_id: str) -> bool:
        """Say node ``node_id`` (this process) is alive; False when its row is gone."""
        if self._clock == self._database_clock:
            self.sync_clock()
        rows = self._db.execute(
            "UPDATE athena_nodes SET seen_at = ? WHERE node_id = ? AND pid = ? AND host = ? "
            "RETURNING node_id",
            (self._clock(), node_id, os.getpid(), socket.gethostname()),
        )
        return bool(rows)

    def unregister(self, node_id: str) -> None:
        """Remove this process's row of node ``node_id`` (it stops)."""
        self._db.execute(
            "DELETE FROM athena_nodes WHERE node_id = ? AND pid = ? AND host = ?",
            (node_id, os.getpid(), socket.gethostname()),
        )

    def node(self, node_id: str, *, cached: bool = True) -> NodeInfo | None:
        """The registered node of this id (live or not), or None."""
        now = time.monotonic()
        if (
            cached
            and (hit := self._cache.get(node_id)) is not None
            and now - hit[0] < _CACHE_SECONDS
        ):
            return hit[1]
        rows = self._db.execute(
            "SELECT node_id, url, host, pid, started_at, seen_at FROM athena_nodes "
            "WHERE node_id = ?",
            (node_id,),
        )
        info = NodeInfo(*rows[0]) if rows else None
        if len(self._cache) >= _CACHE_ENTRIES:  # forged ids must not grow it without end
            self._cache.clear()
        self._cache[node_id] = (now, info)
        return info

    def live_url(self, node_id: str) -> str | None:
        """The URL of node ``node_id`` when it is registered and alive, else None."""
        info = self.node(node_id)
        return info.url if info is not None and info.live(self._clock()) else None

    def live_nodes(self) -> list[NodeInfo]:
        """Every live node, by id."""
        rows = self._db.execute(
            "SELECT node_id, url, host, pid, started_at, seen_at FROM athena_nodes ORDER BY node_id"
        )
        now = self._clock()
        return [info for info in (NodeInfo(*row) for row in rows) if info.live(now)]

    def dead_nodes(self) -> set[str]:
        """Nodes that stopped beating :data:`ORPHAN_SECONDS` before the most recent one did.

        Judged against the newest heartbeat, not the clock: when the store itself was out,
        every node's heartbeat stopped alike, and none is judged dead for it. Rows of nodes
        dead for :data:`FORGOTTEN_SECONDS` are dropped.
        """
        rows = self._db.execute("SELECT node_id, seen_at FROM athena_nodes")
        if not rows:
            return set()
        newest = max(float(seen) for _, seen in rows)
        dead = {str(node) for node, seen in rows if newest - float(seen) > ORPHAN_SECONDS}
        self._db.execute(
            "DELETE FROM athena_nodes WHERE seen_at < ?", (newest - FORGOTTEN_SECONDS,)
        )
        return dead

    def close(self) -> None:
        """Close the connection."""
        self._db.close()


class Registration:
    """This node in the directory while it serves: registered, beating, removed at the end.

    Every :data:`SWEEP_EVERY_BEATS` heartbeats it also hands ``sweep`` the nodes the
    directory says are dead, whose sandboxes on the shared engine nobody else will remove.

    Args:
        directory: the directory.
        node_id: this node's id.
        url: where other nodes reach it.
        sweep: removes the sandboxes of dead nodes (``Orchestrator.sweep_nodes``).
    """

    def __init__(
        self,
        directory: NodeDirectory,
        node_id: str,
        url: str,
        sweep: Callable[[Callable[[str], bool]], int] | None = None,
    ) -> None:
        self.directory, self.node_id, self.url = directory, node_id, url
        self._sweep = sweep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sweeper: threading.Thread | None = None

    def start(self) -> None:
        """Register and start beating.

        Raises:
            RequestError: another host's live node holds the id.
        """
        self.directory.register(self.node_id, self.url)
        self._thread = threading.Thread(
            target=self._beat, name="athena-node-heartbeat", daemon=True
        )
        self._thread.start()
        log.info("node registered", node_id=self.node_id, url=self.url)

    def _beat(self) -> None:
        beats = 0
        while not self._stop.wait(HEARTBEAT_SECONDS):
            beats += 1
            try:
                if not self.directory.heartbeat(self.node_id):
                    # Our row went (pruned, or removed by hand): without it no other node
                    # can reach our sessions. Take the id again (refused if another holds it).
                    log.warning("node row missing: registering again", node_id=self.node_id)
                    self.directory.register(self.node_id, self.url)
            except Exception as exc:  # the store is down: readyz says so; keep trying
                log.warning("node heartbeat failed", error=str(exc))
            if self._sweep is not None and beats % SWEEP_EVERY_BEATS == 1:
                self._start_sweep()

    def _start_sweep(self) -> None:
        """Sweep in a thread of its own: slow removals must not hold the heartbeat back."""
        if self._sweeper is not None and self._sweeper.is_alive():
            return
        self._sweeper = threading.Thread(
            target=self._sweep_quietly, name="athena-node-sweep", daemon=True
        )
        self._sweeper.start()

    def _sweep_quietly(self) -> None:
        try:
            self.sweep_dead()
        except Exception as exc:  # the store or the engine is down: next time
            log.warning("sweeping dead nodes failed", error=str(exc))

    def sweep_dead(self) -> int:
        """Remove the sandboxes of dead nodes now; return how many."""
        dead = self.directory.dead_nodes() - {self.node_id}
        if not dead or self._sweep is None:
            return 0
        return self._sweep(dead.__contains__)

    def stop(self) -> None:
        """Stop beating and remove this node from the directory."""
        self._stop.set()
        for thread in (self._thread, self._sweeper):
            if thread is not None:
                thread.join(timeout=HEARTBEAT_SECONDS + 5)
        try:
            self.directory.unregister(self.node_id)
        except Exception as exc:
            log.warning("node unregister failed", error=str(exc))
        self.directory.close()


class NodeLock:
    """This host's lock of a node id: one process holds an id at a time.

    Raises (from :meth:`claim`):
        RequestError: another live process on this host holds the id.
    """

    def __init__(self, node_id: str, directory: Path = LOCK_DIR) -> None:
        self.node_id = node_id
        self.path = directory / f"{node_id}.lock"
        self._fd: int | None = None

    def claim(self) -> None:
        """Take the lock (until :meth:`release` or this process ends)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RequestError(
                f"cannot take the lock of node id {self.node_id!r} ({self.path}): {exc}; a node "
                "needs to write to that directory (run it as root, or as the owner of "
                f"{self.path.parent})"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise RequestError(
                f"node id {self.node_id!r} is in use by another process on this host (pid "
                f"{holder}): give each node its own --node-id"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the id go."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
