"""Tenants: every record is one tenant's, and no read, search or write crosses to another's.

The store tests run on each backend (a SQLite file, and a PostgreSQL schema marked
``postgres``); the MemoryAPI tests run their code through a FakeBackend on a real store.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from athena.api import MemoryAPI
from memory_store import (
    MissingExtraError,
    NewEntity,
    NewEvent,
    NewMemory,
    NewProcedure,
    NewRelation,
    RecallQuery,
    RecordNotFoundError,
    StoreError,
    StoreOptions,
)
from memory_store.consolidation.strategies import strategy_named
from memory_store.postgres import schema as pg_schema
from memory_store.requests import EventQuery
from memory_store.sql.store import SqlStore
from memory_store.sqlite import schema as sqlite_schema
from memory_store.testing import HashingEmbedder
from orchestrator.errors import PolicyNotFoundError, RequestError
from orchestrator.models import ExecutionRequest, ExecutionResult, check_tenant
from orchestrator.policy import shipped_policy_names
from orchestrator.testing import FakeBackend, FakeRun
from tests.memory_backends import Backend, PostgresBackend, SQLiteBackend, make_run

ZERO = "Traceback (most recent call last):\n  ...\nZeroDivisionError: division by zero\n"
V2_TIME = "2026-11-20T10:00:00.000000+00:00"


def run(
    tenant: str, code: str = "print(2 + 2)", *, stderr: str = "", success: bool = True
) -> tuple[ExecutionRequest, ExecutionResult]:
    return make_run(code, stderr=stderr, success=success, tenant=tenant)


@pytest.fixture
def store(backend: Backend) -> Iterator[SqlStore]:
    """A fresh store on each backend, keyword ranking (the ``default`` tenant's)."""
    with backend.open() as opened:
        yield opened


def fill(store: SqlStore, tenant: str, word: str) -> dict[str, int]:
    """Give a tenant one record of every kind, all mentioning ``word``; return their ids."""
    view = store.scoped(tenant)
    ids = {
        "memory": view.add_memory(NewMemory.create(f"the {word} memory")),
        "event": view.add_event(NewEvent.create("decision", f"chose {word}")),
        "procedure": view.add_procedure(NewProcedure.create(f"{word} steps", ["do it"])),
        "entity": view.add_entity(NewEntity.create(f"{word} service", "service")),
        "execution": store.record_execution(*run(tenant, f"print('{word}')")),
    }
    ids["relation"] = view.add_relation(
        NewRelation.create(ids["memory"], ids["entity"], "describes")
    )
    return ids


# --------------------------------------------------------------------------- the store


def test_every_kind_of_record_is_invisible_to_another_tenant(store: SqlStore) -> None:
    """get, kind_of and relations find a tenant's records of every kind, never another's."""
    mine = fill(store, "team-a", "kraken")
    a, b = store.scoped("team-a"), store.scoped("team-b")
    for kind, object_id in mine.items():
        assert a.kind_of(object_id) == kind and a.get(object_id) is not None
        assert b.kind_of(object_id) is None and b.get(object_id) is None
        assert store.get(object_id) is None  # the store as opened is default's
        assert b.relations(object_id) == []
    assert [r.id for r in a.relations(mine["memory"])] == [mine["relation"]]


def test_listings_and_get_execution_are_the_tenants_own(store: SqlStore) -> None:
    """list_executions, list_events and get_execution show only the view's tenant's runs."""
    request, result = run("team-a")
    store.record_execution(request, result)
    a, b = store.scoped("team-a"), store.scoped("team-b")
    assert [x.execution_id for x in a.list_executions()] == [request.execution_id]
    assert a.get_execution(request.execution_id) is not None
    assert [e.event_type for e in a.list_events()] == ["execution"]
    assert b.list_executions() == [] and b.list_events() == []
    assert b.get_execution(request.execution_id) is None
    assert store.get_execution(request.execution_id) is None


def test_recall_never_crosses_tenants(store: SqlStore) -> None:
    """Keyword recall over every kind returns only the tenant's records, however many match."""
    mine = fill(store, "team-a", "kraken")
    b = store.scoped("team-b")
    theirs = {b.add_memory(NewMemory.create(f"kraken kraken kraken {i}")) for i in range(30)}
    a = store.scoped("team-a")
    hits = {h.id for h in a.recall(RecallQuery.create("kraken", limit=50))}
    assert hits >= set(mine.values()) - {mine["relation"]} and not hits & theirs
    assert all(a.get(i) is not None for i in hits)  # the run's own event is a hit too
    assert store.scoped("team-c").recall(RecallQuery.create("kraken")) == []


def test_hybrid_recall_never_crosses_tenants(backend: Backend) -> None:
    """Vector ranking holds each tenant's vectors apart: hits are the tenant's only."""
    with backend.open(StoreOptions(embeddings="off"), embedder=HashingEmbedder()) as store:
        a, b = store.scoped("team-a"), store.scoped("team-b")
        theirs = [b.add_memory(NewMemory.create(f"octopus tide pool {i}")) for i in range(25)]
        mine = a.add_memory(NewMemory.create("octopus tide pool"))
        store.record_execution(*run("team-b", "print('octopus tide pool')"))
        hits = a.recall(RecallQuery.create("octopus tide", limit=20))
        assert [h.id for h in hits] == [mine]
        assert {h.id for h in b.recall(RecallQuery.create("octopus", limit=40))} >= set(theirs)


def test_recall_events_never_crosses_tenants(store: SqlStore) -> None:
    """recall_events, with words and without, returns only the tenant's events."""
    mine = store.scoped("team-a").add_event(NewEvent.create("decision", "moved to kraken"))
    store.scoped("team-b").add_event(NewEvent.create("decision", "moved to kraken too"))
    store.record_execution(*run("team-b", "print('kraken')"))
    a = store.scoped("team-a")
    assert [h.event.id for h in a.recall_events(EventQuery.create("kraken"))] == [mine]
    assert [h.event.id for h in a.recall_events(EventQuery.create())] == [mine]


def test_consolidation_is_per_tenant(store: SqlStore) -> None:
    """Each tenant's runs make its own pattern; merging never reaches another's memory."""
    for tenant in ("team-a", "team-b"):
        for _ in range(3):
            store.record_execution(*run(tenant, "x = 1 / 0", stderr=ZERO, success=False))
    store.scoped("team-b").add_memory(NewMemory.create("deploys run on fridays at noon"))
    twin = store.scoped("team-a").add_memory(NewMemory.create("deploys run on fridays at noon"))
    balanced = strategy_named("balanced")
    report_a = store.scoped("team-a").consolidate(balanced, 7)
    report_b = store.scoped("team-b").consolidate(balanced, 7)
    assert (report_a.executions_scanned, report_a.patterns_created) == (3, 1)
    assert (report_b.executions_scanned, report_b.patterns_created) == (3, 1)
    assert report_a.memories_merged == report_b.memories_merged == 0
    assert store.scoped("team-a").get(twin) is not None
    patterns = store.scoped("team-a").recall(
        RecallQuery.create("ZeroDivisionError", kinds=["memory"])
    )
    assert len(patterns) == 1 and patterns[0].context["occurrences"] == 3
    assert store.recall(RecallQuery.create("ZeroDivisionError")) == []


def test_entities_are_unique_per_tenant(store: SqlStore) -> None:
    """The same entity type and name is one entity per tenant, and a distinct one in each."""
    a, b = store.scoped("team-a"), store.scoped("team-b")
    first = a.add_entity(NewEntity.create("Billing", "service"))
    assert a.add_entity(NewEntity.create("billing", "service")) == first
    assert b.add_entity(NewEntity.create("Billing", "service")) != first


def test_forgetting_another_tenants_record_is_false_and_keeps_it(store: SqlStore) -> None:
    """forget of another tenant's id returns False and the record stays its owner's."""
    mine = fill(store, "team-a", "kraken")
    b = store.scoped("team-b")
    assert [b.forget(object_id) for object_id in mine.values()] == [False] * len(mine)
    assert all(store.scoped("team-a").get(i) is not None for i in mine.values())
    assert store.scoped("team-a").forget(mine["memory"]) is True


def test_relating_to_another_tenants_record_is_like_an_unknown_id(store: SqlStore) -> None:
    """relate to another tenant's id raises RecordNotFoundError with an unknown id's message."""
    theirs = store.scoped("team-b").add_memory(NewMemory.create("theirs"))
    a = store.scoped("team-a")
    mine = a.add_memory(NewMemory.create("mine"))
    with pytest.raises(RecordNotFoundError) as crossed:
        a.add_relation(NewRelation.create(mine, theirs, "cites"))
    store.scoped("team-b").forget(theirs)
    with pytest.raises(RecordNotFoundError) as unknown:
        a.add_relation(NewRelation.create(mine, theirs, "cites"))
    assert str(crossed.value) == str(unknown.value) == f"target_id {theirs}: no record has this id"
    with pytest.raises(RecordNotFoundError, match="source_id"):
        store.scoped("team-b").add_relation(NewRelation.create(mine, mine, "self"))


def test_a_view_shares_the_store_and_closing_it_closes_nothing(store: SqlStore) -> None:
    """A view has its tenant, sees the store's writes at once; closing it leaves the store open."""
    view = store.scoped("team-a")
    assert (view.tenant, store.tenant) == ("team-a", "default")
    assert view.scoped("team-b").tenant == "team-b" and type(view) is type(store)
    view.close()
    memory = view.add_memory(NewMemory.create("still open"))
    assert store.scoped("team-a").get(memory) is not None
    store.close()
    with pytest.raises(StoreError, match="closed"):
        view.get(memory)


def test_a_view_refuses_another_tenants_run(store: SqlStore) -> None:
    """record_execution on a view files only its own tenant's runs; the store files any."""
    with pytest.raises(RequestError, match="tenant 'team-b'"):
        store.scoped("team-a").record_execution(*run("team-b"))
    assert store.scoped("team-a").record_execution(*run("team-a")) > 0


@pytest.mark.parametrize("name", ["", "Team", "-a", "a b", "x" * 65, "é", 3, None])
def test_bad_tenant_names_are_refused(store: SqlStore, name: Any) -> None:
    """A tenant name that is not 1-64 of a-z 0-9 _ . - (leading letter or digit) is refused."""
    with pytest.raises(RequestError, match="tenant"):
        store.scoped(name)
    with pytest.raises(RequestError, match="tenant"):
        ExecutionRequest.create("print(1)", tenant=name)


def test_good_tenant_names_pass() -> None:
    """Names of 1 to 64 allowed characters pass check_tenant unchanged."""
    for name in ("default", "a", "team-a.b_c", "0" * 64):
        assert check_tenant(name) == name


# --------------------------------------------------------------------------- migration


def v2_rows(backend: Backend) -> None:
    """Write what version 2 held: a memory (indexed), an entity, a run and its event."""
    objects = [(1, "memory"), (2, "entity"), (3, "execution"), (4, "event")]
    for object_id, kind in objects:
        backend.sql(
            "INSERT INTO objects (id, kind, created_at) VALUES (?, ?, ?)",
            (object_id, kind, V2_TIME),
        )
    backend.sql(
        "INSERT INTO memories (id, memory_type, content, context, tags, created_at, updated_at) "
        "VALUES (1, 'semantic', 'the kraken sleeps', '{}', '[]', ?, ?)",
        (V2_TIME, V2_TIME),
    )
    search = "rowid" if backend.name == "sqlite" else "id"
    backend.sql(
        f"INSERT INTO search ({search}, title, body, tags, kind, ctx, created_at) "
        "VALUES (1, 'the kraken sleeps', '', '', 'memory', '{}', ?)",
        (V2_TIME,),
    )
    backend.sql(
        "INSERT INTO entities (id, name, name_key, entity_type, context, created_at) "
        "VALUES (2, 'Billing', 'billing', 'service', '{}', ?)",
        (V2_TIME,),
    )
    backend.sql(
        "INSERT INTO executions (id, execution_id, language, policy, policy_config, code, "
        "parameters, success, exit_code, stdout, stderr, violations, result, execution_time_ms, "
        "created_at) VALUES (3, 'abc123', 'python', 'strict', '{}', 'print(1)', '{}', ?, 0, "
        "'1\n', '', '[]', '{}', 1.0, ?)",
        (True, V2_TIME),
    )
    backend.sql(
        "INSERT INTO events (id, event_type, content, outcome, context, created_at, ref_id) "
        "VALUES (4, 'execution', 'python run succeeded', 'success', '{}', ?, 3)",
        (V2_TIME,),
    )
    if backend.name == "postgres":  # version 2 took these ids from the identity sequence
        backend.sql("SELECT setval(pg_get_serial_sequence('objects', 'id'), 4)")


def make_v2(backend: Backend) -> None:
    """Build a version 2 store by applying the first two migrations, then add v2 rows."""
    if isinstance(backend, SQLiteBackend):
        conn = sqlite3.connect(backend.path)
        conn.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        for number, migration in enumerate(sqlite_schema.MIGRATIONS[:2], start=1):
            for step in migration:
                step(conn) if callable(step) else conn.execute(step)
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (number, V2_TIME))
        conn.commit()
        conn.close()
    else:
        import psycopg

        from memory_store.postgres.dialect import PostgresDb

        assert isinstance(backend, PostgresBackend)
        with psycopg.connect(backend.target, autocommit=True) as pgconn:
            db = PostgresDb(pgconn)
            db.execute(
                "CREATE TABLE schema_version (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL)"
            )
            for number, pg_migration in enumerate(pg_schema.MIGRATIONS[:2], start=1):
                for pg_step in pg_migration:
                    pg_step(db) if callable(pg_step) else db.execute(pg_step)
                db.execute("INSERT INTO schema_version VALUES (?, ?)", (number, V2_TIME))
    v2_rows(backend)


def test_version_2_records_belong_to_default_after_the_upgrade(backend: Backend) -> None:
    """Migration 3 files every existing record under ``default``: it sees them, others do not."""
    make_v2(backend)
    with backend.open() as store:
        assert store.schema_version == sqlite_schema.latest_version() >= 3  # type: ignore[attr-defined]
        assert {r[0] for r in backend.sql("SELECT tenant FROM objects")} == {"default"}
        assert [h.id for h in store.recall(RecallQuery.create("kraken"))] == [1]
        record = store.get_execution("abc123")
        assert record is not None and record.events == []
        assert record.requested_timeout_seconds is None
        assert [e.id for e in store.list_events()] == [4]
        assert store.add_entity(NewEntity.create("billing", "service")) == 2
        other = store.scoped("team-a")
        assert other.recall(RecallQuery.create("kraken")) == []
        assert other.get_execution("abc123") is None and other.get(1) is None
        assert other.add_entity(NewEntity.create("billing", "service")) != 2
        assert other.forget(1) is False and store.forget(1) is True


# --------------------------------------------------------------------------- MemoryAPI


def test_a_common_word_ranks_only_the_tenants_newest_matches(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past BROAD_MATCHES matches (the broad plan), recall still finds only the tenant's own."""
    import memory_store.postgres.dialect as pg
    import memory_store.sqlite.dialect as lite
    from memory_store.sql import search

    for module in (search, pg, lite):
        monkeypatch.setattr(module, "BROAD_MATCHES", 3)
    theirs = store.scoped("other")
    mine = [store.add_memory(NewMemory.create(f"common word number {n}")) for n in range(6)]
    for n in range(6):
        theirs.add_memory(NewMemory.create(f"common word elsewhere {n}"))
    hits = store.recall(RecallQuery.create("common", 10, None, ["memory"]))
    assert hits and {hit.id for hit in hits} <= set(mine)
    assert {
        hit.id for hit in theirs.recall(RecallQuery.create("common", 10, None, None))
    }.isdisjoint(mine)


@pytest.fixture
def api(backend: Backend) -> Iterator[MemoryAPI]:
    """A MemoryAPI on a fresh store of each backend, a fake sandbox printing to both streams."""
    fake = FakeBackend(FakeRun(stdout="hi\n", stderr="careful\n"))
    with MemoryAPI.create(backend.target, backends=[fake], embeddings="off") as opened:
        yield opened


def test_get_execution_returns_request_result_and_events(api: MemoryAPI) -> None:
    """get_execution gives the redacted request, the result dict and the streamed events."""
    policy = {"extends": "strict", "records": {"redact_parameters": True}}
    seen: list[dict[str, Any]] = []
    result = asyncio.run(
        api.execute_code_async(
            "print('hi')",
            parameters={"token": "s3cret"},
            timeout_seconds=5,
            sandbox_policy=policy,
            on_event=seen.append,
        )
    )
    got = api.get_execution(result["execution_id"])
    assert got is not None and set(got) == {"execution_id", "request", "result", "events"}
    assert got["request"] == {
        "code": "print('hi')",
        "language": "python",
        "parameters": {},
        "policy": got["request"]["policy"],
        "timeout_seconds": 5.0,
    }
    assert got["request"]["policy"]["records"]["redact_parameters"] is True
    assert got["request"]["policy"]["name"] and "limits" in got["request"]["policy"]
    assert got["result"] == result
    assert [e["type"] for e in got["events"]] == ["stdout", "stderr", "exit"]
    assert got["events"] == seen and got["events"][-1]["result"] == result


def test_get_execution_without_a_timeout_and_of_unknown_ids(api: MemoryAPI) -> None:
    """A run without a timeout says None; unknown ids give None; bad ids raise RequestError."""
    result = api.execute_code("print(1)")
    got = api.get_execution(result["execution_id"])
    assert got is not None and got["request"]["timeout_seconds"] is None
    assert got["request"]["policy"]["name"] == "strict"
    assert api.get_execution("0" * 32) is None
    for bad in (123, "", "x" * 257, "\ud800"):
        with pytest.raises(RequestError, match="execution_id"):
            api.get_execution(bad)  # type: ignore[arg-type]


def test_for_tenant_views_share_and_stay_apart(api: MemoryAPI) -> None:
    """A tenant's view shares the orchestrator; its runs and memories are its own."""
    team = api.for_tenant("team-a")
    assert (api.tenant, team.tenant) == ("default", "team-a")
    assert team.orchestrator is api.orchestrator
    run_id = team.execute_code("print(1)")["execution_id"]
    memory = team.remember("the kraken sleeps")
    assert team.get_execution(run_id) is not None and api.get_execution(run_id) is None
    assert api.recall("kraken") == [] and [h["id"] for h in team.recall("kraken")] == [memory]
    assert api.forget(memory) is False
    with pytest.raises(RecordNotFoundError):
        api.relate_entities(memory, memory, "self")
    team.close()  # closes nothing shared
    assert api.execute_code("print(2)")["success"] and team.remember("still open") > 0


def test_create_for_a_tenant_files_its_records_there(backend: Backend) -> None:
    """MemoryAPI.create(tenant=...) acts for that tenant; the default tenant sees none of it."""
    fake = FakeBackend(FakeRun(stdout="ok\n"))
    with MemoryAPI.create(backend.target, backends=[fake], tenant="team-a") as team:
        run_id = team.execute_code("print(1)")["execution_id"]
        team.remember("the kraken sleeps")
        default = team.for_tenant("default")
        assert team.tenant == "team-a" and default.get_execution(run_id) is None
        assert default.recall("kraken") == []
    with pytest.raises(RequestError, match="tenant"):
        MemoryAPI.create(backend.target, backends=[fake], tenant="Team A")


def test_list_policies_describes_every_shipped_policy(api: MemoryAPI) -> None:
    """list_policies gives each shipped policy with a summary saying what it allows."""
    described = {p["name"]: p for p in api.list_policies()}
    assert sorted(described) == shipped_policy_names()
    for policy in described.values():
        assert set(policy) == {
            "name", "description", "summary", "network", "mounts", "limits", "fallback", "config"
        }  # fmt: skip
        assert policy["config"]["name"] == policy["name"] and policy["summary"].endswith(".")
    development = described["development"]["summary"]
    assert "open network" in development and "project directory read-write" in development
    strict = described["strict"]["summary"]
    assert "no network access" in strict and "no host directory" in strict
    assert "256 MB memory" in strict and "30 s timeout" in strict
    assert "validation enforced" in strict and "docker, srt or restricted" in strict
    assert "pypi.org" in described["research"]["summary"]
    assert described["research"]["mounts"] == [
        {"source": "${project_dir}", "target": "/project", "read_only": True}
    ]


def test_get_policy_names_the_valid_ones(api: MemoryAPI) -> None:
    """get_policy returns list_policies' entry; an unknown name or a path names the valid ones."""
    assert api.get_policy("strict") == {p["name"]: p for p in api.list_policies()}["strict"]
    for bad in ("nope", "policies/strict.yaml"):
        with pytest.raises(PolicyNotFoundError, match="strict, strict-fast, strict-gvisor"):
            api.get_policy(bad)
    with pytest.raises(RequestError, match="string"):
        api.get_policy(3)  # type: ignore[arg-type]


def test_connect_returns_the_remote_client() -> None:
    """MemoryAPI.connect builds the remote client (the service module) for the URL."""
    from athena.service.client import RemoteMemoryAPI

    client = MemoryAPI.connect("http://127.0.0.1:9", token="ath_x", timeout=5)
    try:
        assert isinstance(client, RemoteMemoryAPI)
    finally:
        client.close()


def test_connect_without_httpx_names_the_service_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without httpx installed, connect raises MissingExtraError naming the service extra."""
    monkeypatch.delitem(sys.modules, "athena.service.client", raising=False)
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(MissingExtraError, match=r"athena-sandbox\[service\]"):
        MemoryAPI.connect("http://127.0.0.1:9")
