"""What only the PostgreSQL store has: its URL, its extra, its migrations, its text limits.

The contract itself (every kind, recall, hostile queries, concurrency, retention...) runs on
PostgreSQL through the ``backend`` fixture of the other test modules. Tests here that need the
server take the ``pg`` fixture (a fresh schema) and are marked ``postgres``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import sys
from collections.abc import Iterator
from datetime import datetime

import pytest
from structlog.testing import capture_logs

from memory_store import (
    EventRecord,
    MemoryRecord,
    MissingExtraError,
    NewMemory,
    RecallQuery,
    StoreConfigError,
    StoreError,
    StoreOptions,
    open_store,
)
from memory_store.postgres import schema as pg_schema
from memory_store.postgres.connection import PostgresTarget
from memory_store.postgres.dialect import tsquery
from memory_store.postgres.store import PostgresStore
from memory_store.sql.rows import text
from memory_store.sqlite import schema
from orchestrator.models import ExecutionRequest, ExecutionResult
from tests.memory_backends import KEYWORD, PostgresBackend, PostgresServer, postgres_url

V1_TIME = "2026-11-20T10:00:00.000000+00:00"
STDERR = "Traceback (most recent call last):\n  ...\nZeroDivisionError: division by zero\n"


@pytest.fixture
def pg(postgres_server: PostgresServer) -> Iterator[PostgresBackend]:
    """A fresh schema on the test server."""
    with postgres_server.fresh_schema() as fresh:
        yield fresh


def with_password(url: str, password: str) -> str:
    target = PostgresTarget.parse(url)
    user_at = target.shown.split("://", 1)[1].split("@", 1)
    user = user_at[0].split(":", 1)[0]
    return f"postgresql://{user}:{password}@{user_at[1]}"


# --------------------------------------------------------------------------- no server needed


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://ada:s3cret@db:5432/athena", "postgresql://ada:***@db:5432/athena"),
        (
            "postgres://ada:s3cret@db/athena?sslmode=require",
            "postgresql://ada:***@db/athena?sslmode=require",
        ),
        ("postgresql+psycopg://ada:s3cr%40t@db/athena", "postgresql://ada:***@db/athena"),
        ("postgresql://db/athena", "postgresql://db/athena"),
    ],
)
def test_urls_are_shown_with_the_password_masked(url: str, shown: str) -> None:
    """Every scheme spelling becomes postgresql:// for libpq; messages show *** for the password."""
    target = PostgresTarget.parse(url)
    assert target.shown == shown
    assert target.conninfo.startswith("postgresql://")
    assert target.scrub("auth failed for s3cret, s3cr@t and s3cr%40t") == (
        "auth failed for s3cret, s3cr@t and s3cr%40t"
        if "s3cr" not in url
        else target.scrub("auth failed for s3cret, s3cr@t and s3cr%40t")
    )
    assert "s3cr" not in target.scrub(f"x {url} y".replace("postgresql+psycopg", "postgresql"))


def test_a_malformed_url_is_refused_without_echoing_it() -> None:
    """An unparsable URL raises StoreConfigError that does not repeat it."""
    with pytest.raises(StoreConfigError, match="invalid PostgreSQL URL") as info:
        open_store("postgresql://ada:s3cret@[::1/athena")
    assert "s3cret" not in str(info.value)


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without psycopg, opening a PostgreSQL URL raises MissingExtraError naming the extra."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'athena-sandbox\[postgres\]'"):
        open_store("postgresql://ada:s3cret@127.0.0.1:5432/athena")


def test_the_migration_lists_keep_the_same_versions() -> None:
    """Version N means the same tables on both backends: the lists grow together."""
    assert pg_schema.latest_version() == schema.latest_version() == len(pg_schema.MIGRATIONS)


@pytest.mark.parametrize("words", [["deployment"], ["the"], ["zero", "division"], []])
def test_tsqueries_bind_every_word(words: list[str]) -> None:
    """The tsquery SQL holds only placeholders; the words (and roots) are parameters."""
    sql, args = tsquery(words)
    assert sql.count("?") == len(args) and not any(w in sql for w in words)
    assert set(words) <= set(args)


# --------------------------------------------------------------------------- the server


@pytest.mark.postgres
def test_a_wrong_password_is_a_store_error_that_never_shows_it(
    pg: PostgresBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused login raises StoreError naming the URL with *** and no password, nor logs it."""
    url = with_password(pg.target, "wr0ng-Pa55")
    with caplog.at_level(logging.DEBUG), capture_logs() as logs, pytest.raises(StoreError) as info:
        PostgresStore(url, KEYWORD)
    message = str(info.value)
    assert ":***@" in message and "wr0ng" not in message
    assert "wr0ng" not in repr(info.value.__cause__) and "wr0ng" not in caplog.text
    assert "wr0ng" not in json.dumps(logs, default=str)


@pytest.mark.postgres
def test_a_missing_schema_is_named(postgres_server: PostgresServer) -> None:
    """A search_path naming no schema raises StoreConfigError saying so."""
    missing = PostgresBackend(postgres_server.url, "athena_no_such_schema")
    with pytest.raises(StoreConfigError, match="no schema of the connection's search_path"):
        missing.open()


@pytest.mark.postgres
def test_a_schema_with_other_tables_is_refused(pg: PostgresBackend) -> None:
    """A schema holding someone else's tables is not turned into a memory store."""
    pg.sql("CREATE TABLE invoices (id integer)")
    with pytest.raises(StoreError, match="not an athena memory store"):
        pg.open()


@pytest.mark.postgres
def test_reopening_does_not_migrate_again_and_newer_is_refused(pg: PostgresBackend) -> None:
    """A store reopens at the latest version; a newer version asks to upgrade athena-sandbox."""
    with pg.open() as first:
        assert isinstance(first, PostgresStore)
        assert first.schema_version == pg_schema.latest_version()
    pg.open().close()
    versions = pg.sql("SELECT version FROM schema_version ORDER BY version")
    assert versions == [(v,) for v in range(1, pg_schema.latest_version() + 1)]
    pg.sql("INSERT INTO schema_version VALUES (99, now())")
    with pytest.raises(StoreError, match="upgrade athena-sandbox"):
        pg.open()


def _open_and_close(backend: PostgresBackend, start: multiprocessing.synchronize.Event) -> None:
    """Child process: wait for the start signal, then open the store (migrating it) and close."""
    start.wait(60)
    backend.open().close()


@pytest.mark.postgres
def test_processes_opening_a_new_store_at_once_migrate_it_once(pg: PostgresBackend) -> None:
    """Four processes opening one new schema at once all succeed; it is migrated once."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers = [ctx.Process(target=_open_and_close, args=(pg, start)) for _ in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    versions = pg.sql("SELECT version FROM schema_version ORDER BY version")
    assert versions == [(v,) for v in range(1, pg_schema.latest_version() + 1)]


def make_v1(pg: PostgresBackend) -> None:
    """Write a store as version 1 would have: schema v1, one failed run and its event."""
    pg.sql(
        "CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL)"
    )
    for statement in pg_schema.MIGRATIONS[0]:
        assert isinstance(statement, str)
        pg.sql(statement)
    pg.sql("INSERT INTO schema_version VALUES (1, ?)", (V1_TIME,))
    pg.sql(
        "INSERT INTO objects (id, kind, created_at) VALUES (1, 'execution', ?), (2, 'event', ?)",
        (V1_TIME, V1_TIME),
    )
    pg.sql(
        "INSERT INTO executions VALUES (1, 'abc123', 'python', 'strict', '{}', "
        "'total = sum(xs) / len(xs)', '{\"xs\": []}', false, 1, '', ?, NULL, NULL, '[]', '{}', "
        "'docker', 12.0, ?)",
        (STDERR, V1_TIME),
    )
    summary = "python run failed (exit 1) under strict: total = sum(xs) / len(xs) | ZeroDivisionError: division by zero"
    context = json.dumps({"execution_id": "abc123", "execution_ref": 1}, separators=(",", ":"))
    pg.sql(
        "INSERT INTO events VALUES (2, 'execution', ?, 'failure', ?, ?)",
        (summary, context, V1_TIME),
    )


@pytest.mark.postgres
def test_a_version_1_store_upgrades_in_place(pg: PostgresBackend) -> None:
    """Opening a v1 schema migrates it to the latest: records read back, searchable, linked."""
    make_v1(pg)
    with pg.open() as store:
        assert isinstance(store, PostgresStore)
        assert store.schema_version == pg_schema.latest_version()
        record = store.get_execution("abc123")
        assert record is not None and record.parameters == {"xs": []}
        assert not record.parameters_redacted
        assert record.created_at == datetime.fromisoformat(V1_TIME)
        (event,) = store.list_events()
        assert isinstance(event, EventRecord) and event.ref_id == 1
        assert {h.id for h in store.recall(RecallQuery.create("division by zero"))} == {1, 2}
        assert store.add_memory(NewMemory.create("a memory after the upgrade")) == 3
        assert store.forget(1) is True and store.list_events() == []


@pytest.mark.postgres
def test_text_postgresql_cannot_hold_is_stored_replaced(pg: PostgresBackend) -> None:
    """NUL and lone surrogates (refused by PostgreSQL) are stored as U+FFFD, never an error."""
    request = ExecutionRequest.create("print('a\\x00b')")
    result = ExecutionResult(
        execution_id=request.execution_id, success=True, language="python", stdout="a\x00b \udcff\n"
    )
    with pg.open() as store:
        store.record_execution(request, result)
        memory = store.add_memory(NewMemory.create("nul \x00 here", context={"k": "v\x00"}))
        record = store.get_execution(request.execution_id)
        assert record is not None and record.stdout == text("a\ufffdb \udcff\n")
        got = store.get(memory)
        assert isinstance(got, MemoryRecord) and got.content == "nul \ufffd here"
        assert [h.id for h in store.recall(RecallQuery.create("nul", context={"k": "v\x00"}))] == [
            memory
        ]


@pytest.mark.postgres
def test_a_mebibyte_of_distinct_words_is_stored_and_found(pg: PostgresBackend) -> None:
    """1 MiB of content (past what one tsvector holds) is stored whole; its head is searchable."""
    words = " ".join(f"w{i:x}" for i in range(200_000))[: 1024 * 1024 - 20].strip()
    with pg.open(StoreOptions(embeddings="off")) as store:
        memory = store.add_memory(NewMemory.create(f"zanzibar {words}"))
        entity = store.add_entity(__import__("memory_store").NewEntity.create(words, "blob"))
        hits = store.recall(RecallQuery.create("zanzibar w1f", kinds=["memory"]))
        assert [h.id for h in hits] == [memory]
        got = store.get(memory)
        assert isinstance(got, MemoryRecord) and got.content.endswith(words[-50:])
        assert store.get(entity) is not None


def test_the_default_server_url_is_the_one_ensure_postgres_sets_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without ATHENA_TEST_POSTGRES_URL the tests use athena/athena on 127.0.0.1:5432."""
    monkeypatch.delenv("ATHENA_TEST_POSTGRES_URL", raising=False)
    assert postgres_url() == "postgresql://athena:athena@127.0.0.1:5432/athena_test"
