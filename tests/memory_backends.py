"""The memory store backends the store tests run against: a SQLite file, a PostgreSQL schema.

The ``backend`` fixture (tests/conftest.py) gives each test a fresh store location of each
backend: a file in tmp_path, or a schema of its own in the test database (dropped afterwards)
on the server at ``ATHENA_TEST_POSTGRES_URL`` (default: the one scripts/ensure-postgres.sh
sets up). No mocks: real SQLite files and a real PostgreSQL server.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memory_store import Embedder, StoreOptions
from memory_store.postgres.connection import PostgresTarget
from memory_store.postgres.store import PostgresStore
from memory_store.sql.store import SqlStore
from memory_store.sqlite.store import SQLiteStore
from orchestrator.models import DEFAULT_TENANT, ExecutionRequest, ExecutionResult, OutputFile
from orchestrator.policy import load_policy

POSTGRES_URL_ENV = "ATHENA_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://athena:athena@127.0.0.1:5432/athena_test"
KEYWORD = StoreOptions(embeddings="off")


def postgres_url() -> str:
    """Return the test server's URL: ATHENA_TEST_POSTGRES_URL, or the ensure-postgres default."""
    return os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL


@dataclass(frozen=True)
class SQLiteBackend:
    """A SQLite store file (picklable, so child processes can open it)."""

    path: Path
    name = "sqlite"
    search_id = "rowid"

    @property
    def target(self) -> str:
        """What open_store and MemoryAPI.create take."""
        return str(self.path)

    def open(
        self, options: StoreOptions | None = KEYWORD, *, embedder: Embedder | None = None
    ) -> SqlStore:
        """Open a store here (keyword ranking unless told otherwise)."""
        return SQLiteStore(self.path, options, embedder=embedder)

    def sql(self, statement: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders) in its own committed transaction."""
        conn = sqlite3.connect(self.path)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            with conn:
                return [tuple(r) for r in conn.execute(statement, parameters).fetchall()]
        finally:
            conn.close()

    def holds(self, needle: str) -> bool:
        """Tell whether the text appears anywhere in the stored bytes (file and WAL)."""
        files = [self.path, Path(f"{self.path}-wal")]
        return any(needle.encode() in f.read_bytes() for f in files if f.exists())


@dataclass(frozen=True)
class PostgresBackend:
    """A schema of its own in the test database (picklable, so child processes can open it)."""

    server_url: str
    schema: str
    name = "postgres"
    search_id = "id"

    @property
    def target(self) -> str:
        """The server URL with this schema as search_path."""
        separator = "&" if "?" in self.server_url else "?"
        return f"{self.server_url}{separator}options=-csearch_path%3D{self.schema}"

    def open(
        self, options: StoreOptions | None = KEYWORD, *, embedder: Embedder | None = None
    ) -> SqlStore:
        """Open a store here (keyword ranking unless told otherwise)."""
        return PostgresStore(self.target, options, embedder=embedder)

    def sql(self, statement: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders) in its own committed transaction."""
        import psycopg

        with psycopg.connect(self.target, autocommit=True) as conn:
            cursor = conn.execute(statement.replace("?", "%s"), parameters)  # type: ignore[arg-type]
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []

    def holds(self, needle: str) -> bool:
        """Tell whether the text appears in any row of any table of the store's schema."""
        tables = [
            r[0]
            for r in self.sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
                (self.schema,),
            )
        ]
        return any(
            self.sql(
                f"SELECT count(*) FROM {t} WHERE strpos(row_to_json({t})::text, ?) > 0", (needle,)
            )[0][0]
            for t in tables
        )


Backend = SQLiteBackend | PostgresBackend


class PostgresServer:
    """The test server: checks it answers, and makes and drops a schema per test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = PostgresTarget.parse(url).shown

    def check(self) -> str | None:
        """Return why the server cannot be used, or None when it answers."""
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return PostgresTarget.parse(self.url).scrub(str(exc).strip())
        return None

    @contextmanager
    def fresh_schema(self) -> Iterator[PostgresBackend]:
        """Yield a backend on a new schema; drop the schema and everything in it afterwards."""
        import psycopg

        schema = f"athena_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
        try:
            yield PostgresBackend(self.url, schema)
        finally:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")  # type: ignore[arg-type]


def make_run(
    code: str = "print(2 + 2)",
    *,
    success: bool = True,
    stderr: str = "",
    parameters: dict[str, object] | None = None,
    policy: str | dict[str, object] = "strict",
    tenant: str = DEFAULT_TENANT,
    session_id: str | None = None,
    files: Mapping[str, bytes | str] | None = None,
    outputs: Sequence[OutputFile] = (),
    artifacts: Sequence[OutputFile] = (),
    **request_fields: Any,
) -> tuple[ExecutionRequest, ExecutionResult]:
    """A python run's request and result as a store records them (``4`` printed, or failed).

    A run with a ``session_id`` is a session call that kept its session; ``outputs`` and
    ``artifacts`` are what it returned; ``request_fields`` go to ``ExecutionRequest.create``
    (``timeout_seconds``, ``capture_figures``, ``image``...).
    """
    request = ExecutionRequest.create(
        code=code,
        parameters=parameters,
        policy=load_policy(policy),
        tenant=tenant,
        session_id=session_id,
        files=files,
        **request_fields,
    )
    result = ExecutionResult(
        execution_id=request.execution_id,
        success=success,
        language="python",
        exit_code=0 if success else 1,
        stdout="4\n" if success else "",
        stderr=stderr,
        sandbox_mode="docker",
        execution_time_ms=3.0,
        session_id=session_id,
        session_state=None if session_id is None else "kept",
        files=tuple(outputs),
        artifacts=tuple(artifacts),
    )
    return request, result


def output_file(
    name: str, content: bytes, mime_type: str = "application/octet-stream"
) -> OutputFile:
    """An output file (or artifact) as a run returns it, its size and SHA-256 from ``content``."""
    return OutputFile(
        name=name,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        mime_type=mime_type,
        content=content,
    )
