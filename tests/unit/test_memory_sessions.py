"""Sessions and files in the records: a session's calls read back in order, files as metadata only.

Every store test runs on each backend (a SQLite file, and a PostgreSQL schema marked
``postgres``); no mocks.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from memory_store import RecallQuery
from memory_store.postgres import schema as pg_schema
from memory_store.sql.rows import json_text, result_json
from memory_store.sql.store import SqlStore
from memory_store.sqlite import schema as sqlite_schema
from orchestrator.errors import RequestError
from orchestrator.models import Event
from tests.memory_backends import Backend, PostgresBackend, SQLiteBackend, make_run, output_file

MIB = 1024 * 1024
V3_TIME = "2026-11-25T10:00:00.000000+00:00"
SESSION_INDEX = "executions_tenant_session"


@pytest.fixture
def store(backend: Backend) -> Iterator[SqlStore]:
    """A fresh store on each backend (the ``default`` tenant's)."""
    with backend.open() as opened:
        yield opened


def record(store: SqlStore, code: str, **run: Any) -> str:
    """Record one run of ``code`` (``make_run``'s keywords); return its execution id."""
    request, result = make_run(code, **run)
    store.record_execution(request, result)
    return request.execution_id


def stored_row(backend: Backend, execution_id: str) -> dict[str, Any]:
    """The execution's row as the database holds it, column by column."""
    columns = (
        [
            r[0]
            for r in backend.sql(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = ? AND table_name = 'executions' ORDER BY ordinal_position",
                (backend.schema,),
            )
        ]
        if isinstance(backend, PostgresBackend)
        else [r[1] for r in backend.sql("PRAGMA table_info(executions)")]
    )
    (row,) = backend.sql("SELECT * FROM executions WHERE execution_id = ?", (execution_id,))
    return dict(zip(columns, row, strict=True))


# --------------------------------------------------------------------------- sessions


def test_a_sessions_calls_come_back_oldest_first(store: SqlStore) -> None:
    """session_calls returns the session's calls in the order they ran, none of other runs."""
    first = record(store, "x = 1", session_id="s-1")
    record(store, "print('one-shot')")
    record(store, "y = 2", session_id="s-2")
    second = record(store, "x += 1", session_id="s-1")
    third = record(store, "print(x)", session_id="s-1")

    calls = store.session_calls("s-1")

    assert [c.execution_id for c in calls] == [first, second, third]
    assert [c.code for c in calls] == ["x = 1", "x += 1", "print(x)"]
    assert {c.session_id for c in calls} == {"s-1"}
    assert {c.session_state for c in calls} == {"kept"}
    assert [c.execution_id for c in store.list_executions(session_id="s-1")] == [
        third,
        second,
        first,
    ]


def test_an_unknown_session_has_no_calls(store: SqlStore) -> None:
    """An id no call was recorded under gives an empty list, not an error."""
    record(store, "x = 1", session_id="s-1")
    assert store.session_calls("nobody") == []
    assert store.list_executions(session_id="nobody") == []


def test_a_tenants_session_is_invisible_to_another(store: SqlStore) -> None:
    """The same session id under two tenants: each view reads its own calls only."""
    mine = record(store, "x = 1", session_id="shared")
    theirs = record(store, "x = 2", session_id="shared", tenant="team-a")

    assert [c.execution_id for c in store.session_calls("shared")] == [mine]
    team = store.scoped("team-a")
    assert [c.execution_id for c in team.session_calls("shared")] == [theirs]
    assert store.scoped("team-b").session_calls("shared") == []
    assert [c.execution_id for c in team.list_executions(session_id="shared")] == [theirs]


def test_a_one_shot_run_has_no_session(store: SqlStore) -> None:
    """A run without a session is recorded with session_id None and no session state."""
    execution_id = record(store, "print(1)")
    found = store.get_execution(execution_id)
    assert found is not None
    assert (found.session_id, found.session_state) == (None, None)
    assert found.result["session_id"] is None


@pytest.mark.parametrize("bad", [5, None, "s\udc80"])
def test_a_session_id_that_is_not_text_is_refused(store: SqlStore, bad: Any) -> None:
    """session_calls and list_executions refuse a non-string or a lone surrogate."""
    with pytest.raises(RequestError, match="session_id"):
        store.session_calls(bad)
    if bad is not None:
        with pytest.raises(RequestError, match="session_id"):
            store.list_executions(session_id=bad)


def test_a_session_call_is_recallable_by_its_session(store: SqlStore) -> None:
    """The session id is in the record's filterable context and its event's context."""
    record(store, "print('pelican survey')", session_id="s-9")
    record(store, "print('pelican survey')")
    hits = store.recall(
        RecallQuery.create("pelican", kinds=["execution"], context={"session_id": "s-9"})
    )
    assert len(hits) == 1
    (event,) = [e for e in store.list_events() if e.context.get("session_id") == "s-9"]
    assert event.event_type == "execution"


def test_the_record_holds_what_replay_needs(store: SqlStore) -> None:
    """Code, language, parameters, timeout, policy, figures and image are kept per call."""
    execution_id = record(
        store,
        "print(parameters['n'])",
        parameters={"n": 3},
        session_id="s-1",
        timeout_seconds=7.5,
        capture_figures=False,
        image="my-python:1",
        policy="research",
    )
    (call,) = store.session_calls("s-1")
    assert call.execution_id == execution_id
    assert (call.code, call.language, call.parameters) == (
        "print(parameters['n'])",
        "python",
        {"n": 3},
    )
    assert call.parameters_redacted is False
    assert call.requested_timeout_seconds == 7.5
    assert call.policy == "research" and call.policy_config["name"] == "research"
    assert (call.capture_figures, call.image) == (False, "my-python:1")


def test_a_redacted_calls_parameters_are_not_kept(store: SqlStore) -> None:
    """Under a redacting policy the call's parameters are {} and the record says so."""
    policy = {"extends": "strict", "name": "private", "records": {"redact_parameters": True}}
    record(
        store,
        "print(parameters['token'])",
        parameters={"token": "s3cret"},
        policy=policy,
        session_id="s-1",
    )
    (call,) = store.session_calls("s-1")
    assert call.parameters == {} and call.parameters_redacted is True


def test_defaults_are_kept_as_asked(store: SqlStore) -> None:
    """A call that asked nothing special captures figures, has no image and no timeout."""
    record(store, "x = 1", session_id="s-1")
    (call,) = store.session_calls("s-1")
    assert (call.capture_figures, call.image, call.requested_timeout_seconds) == (True, None, None)
    assert (call.input_files, call.files, call.artifacts) == ([], [], [])


def test_the_session_id_is_an_indexed_column(backend: Backend, store: SqlStore) -> None:
    """session_id is a column of its own, and a session's calls are read through its index."""
    execution_id = record(store, "x = 1", session_id="s-1")
    assert stored_row(backend, execution_id)["session_id"] == "s-1"
    query = (
        "SELECT * FROM executions WHERE tenant = 'default' AND session_id = 's-1' "
        "ORDER BY created_at, id"
    )
    assert SESSION_INDEX in query_plan(backend, query)


def query_plan(backend: Backend, query: str) -> str:
    """The plan the database chooses for ``query`` (PostgreSQL: with sequential scans off,
    since a table of one row is cheapest to scan whatever the indexes)."""
    if isinstance(backend, SQLiteBackend):
        return " ".join(str(r[-1]) for r in backend.sql(f"EXPLAIN QUERY PLAN {query}"))
    import psycopg

    with psycopg.connect(backend.target, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        rows = conn.execute(f"EXPLAIN {query}").fetchall()
    return " ".join(str(r[0]) for r in rows)


# --------------------------------------------------------------------------- files


def test_files_keep_their_metadata(store: SqlStore) -> None:
    """Input files keep name, size and SHA-256; outputs and artifacts add the MIME type."""
    csv = output_file("report.csv", b"a,b\n1,2\n", "text/csv")
    png = output_file("figure-1.png", b"\x89PNG fake", "image/png")
    execution_id = record(
        store,
        "x = 1",
        session_id="s-1",
        files={"data.csv": b"a\n1\n", "notes/readme.md": "hello"},
        outputs=[csv],
        artifacts=[png],
    )
    request, _ = make_run("x = 1", files={"data.csv": b"a\n1\n", "notes/readme.md": "hello"})
    found = store.get_execution(execution_id)
    assert found is not None
    assert found.input_files == [f.to_record() for f in request.files]
    assert found.input_files[1] == {
        "name": "notes/readme.md",
        "size": 5,
        "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
    }
    assert found.files == [csv.to_record()] and found.artifacts == [png.to_record()]
    assert found.result["files"] == [csv.to_record()]
    assert found.result["artifacts"] == [png.to_record()]


def test_file_content_never_reaches_the_store(backend: Backend, store: SqlStore) -> None:
    """A 1 MiB input, output and figure leave a row of a few KB and none of their bytes."""
    marker = b"FLAMINGO-CONTENT"
    content = marker * (MIB // len(marker))
    random = os.urandom(MIB)  # incompressible: a compressed copy would still be large
    request, result = make_run(
        "x = 1",
        session_id="s-1",
        files={"big.bin": content, "noise.bin": random},
        outputs=[output_file("out.bin", content), output_file("noise.out", random)],
        artifacts=[output_file("figure-1.png", content, "image/png")],
    )
    exit_event = Event(kind="exit", exit_code=0, result=result)
    store.record_execution(request, result, [exit_event])

    row = stored_row(backend, request.execution_id)
    assert sum(len(str(value)) for value in row.values()) < 16 * 1024
    for column in ("result", "input_files", "events", "policy_config", "parameters"):
        json.loads(row[column])  # JSON-clean
    assert not backend.holds(marker.decode())
    assert "content" not in json.loads(row["result"])["files"][0]
    (call,) = store.session_calls("s-1")
    assert [f["size"] for f in call.input_files] == [MIB, MIB]
    exit_result = call.events[-1]["result"]
    assert isinstance(exit_result, dict)
    assert exit_result["artifacts"] == [result.artifacts[0].to_record()]


def test_result_json_holds_no_bytes() -> None:
    """result_json drops files' content; json_text refuses bytes instead of encoding them."""
    _, result = make_run("x = 1", outputs=[output_file("a.bin", b"\x00\x01")])
    assert "content" in result.to_dict()["files"][0]  # what execute_code returns
    assert "content" not in json.loads(json_text(result_json(result)))["files"][0]
    with pytest.raises(TypeError, match="cannot be stored"):
        json_text(result.to_dict())


# --------------------------------------------------------------------------- migration


def make_v3(backend: Backend) -> None:
    """Build a version 3 store (the first three migrations) holding one run."""
    if isinstance(backend, SQLiteBackend):
        conn = sqlite3.connect(backend.path)
        conn.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        for number, migration in enumerate(sqlite_schema.MIGRATIONS[:3], start=1):
            for step in migration:
                step(conn) if callable(step) else conn.execute(step)
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (number, V3_TIME))
        conn.commit()
        conn.close()
    else:
        import psycopg

        from memory_store.postgres.dialect import PostgresDb

        with psycopg.connect(backend.target, autocommit=True) as pgconn:
            db = PostgresDb(pgconn)
            db.execute(
                "CREATE TABLE schema_version (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL)"
            )
            for number, pg_migration in enumerate(pg_schema.MIGRATIONS[:3], start=1):
                for pg_step in pg_migration:
                    pg_step(db) if callable(pg_step) else db.execute(pg_step)
                db.execute("INSERT INTO schema_version VALUES (?, ?)", (number, V3_TIME))
    backend.sql("INSERT INTO objects (id, kind, created_at) VALUES (1, 'execution', ?)", (V3_TIME,))
    backend.sql(
        "INSERT INTO executions (id, execution_id, language, policy, policy_config, code, "
        "parameters, success, exit_code, stdout, stderr, violations, result, execution_time_ms, "
        "created_at) VALUES (1, 'old-run', 'python', 'strict', '{}', 'print(1)', '{}', ?, 0, "
        "'1\n', '', '[]', '{}', 1.0, ?)",
        (True, V3_TIME),
    )
    if isinstance(backend, PostgresBackend):  # the id above was written explicitly
        backend.sql("SELECT setval(pg_get_serial_sequence('objects', 'id'), 1)")


def test_a_version_3_store_gains_the_session_column(backend: Backend) -> None:
    """Migration 4 adds session_id (indexed) and the file columns; old runs have no session."""
    make_v3(backend)
    with backend.open() as store:
        assert store.schema_version == sqlite_schema.latest_version() == 4  # type: ignore[attr-defined]
        old = store.get_execution("old-run")
        assert old is not None
        assert (old.session_id, old.session_state, old.image) == (None, None, None)
        assert (old.input_files, old.files, old.artifacts, old.capture_figures) == (
            [],
            [],
            [],
            True,
        )
        new = record(store, "x = 1", session_id="s-1", files={"a.txt": "a"})
        (call,) = store.session_calls("s-1")
        assert call.execution_id == new and call.input_files[0]["size"] == 1
        assert store.session_calls("old-run") == []
    assert stored_row(backend, "old-run")["session_id"] is None
    assert SESSION_INDEX in query_plan(
        backend, "SELECT * FROM executions WHERE tenant = 'default' AND session_id = 's-1'"
    )
    versions = backend.sql("SELECT version FROM schema_version ORDER BY version")
    assert versions == [(1,), (2,), (3,), (4,)]
