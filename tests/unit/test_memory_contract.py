"""The store contract: what every backend must do, through the Store protocol only.

Every test runs on each backend (the ``backend`` fixture): a fresh SQLite file in tmp_path, and
a fresh schema on a real PostgreSQL server (marked ``postgres``). No mocks. Tests that change
rows by hand (to age them) use ``backend.sql``.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from memory_store import (
    EntityRecord,
    EventQuery,
    ExecutionRecord,
    MemoryRecord,
    NewEntity,
    NewEvent,
    NewMemory,
    NewProcedure,
    NewRelation,
    ProcedureRecord,
    RecallQuery,
    RecordNotFoundError,
    RecordTooLargeError,
    RelationRecord,
    Store,
    StoreOptions,
)
from tests.memory_backends import Backend, make_run

KEYWORD = StoreOptions(embeddings="off")
HOSTILE_QUERIES = [
    "'; DROP TABLE memories; --",
    '"unbalanced quote',
    "NEAR(deploy staging, 2)",
    "deploy AND OR NOT staging",
    "* ^ : ( ) - + \" ' ` \\ ;",
    "title:deploy OR body:x",
    "-deploy",
    "deploy*",
    "^staging",
    "1' OR '1'='1",
    "SELECT * FROM objects; DELETE FROM objects",
    "\x00 nul \u202e rtl",
    "deploy " * 500,
]


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    """A fresh store on each backend, keyword ranking."""
    with backend.open(KEYWORD) as opened:
        yield opened


def remember(store: Store, content: str, **kwargs: object) -> int:
    return store.add_memory(NewMemory.create(content, **kwargs))  # type: ignore[arg-type]


def recall(store: Store, query: str, **kwargs: object) -> list[int]:
    return [h.id for h in store.recall(RecallQuery.create(query, **kwargs))]  # type: ignore[arg-type]


# --------------------------------------------------------------------------- every kind


def test_each_kind_reads_back_by_id(store: Store) -> None:
    """A memory, event, procedure, entity and relation read back with their normalised values."""
    memory = remember(
        store,
        "  The API limit is 100 requests  ",
        memory_type=" Semantic ",
        tags=["API", "api", " Limits "],
    )
    event = store.add_event(
        NewEvent.create("Decision", "chose SQLite", " Success ", {"why": "embedded"})
    )
    procedure = store.add_procedure(
        NewProcedure.create("Release", ["tag", {"action": "push"}], "Deploy")
    )
    entity = store.add_entity(NewEntity.create("Billing  Service", "Process"))
    relation = store.add_relation(NewRelation.create(entity, procedure, "Runs"))

    got = store.get(memory)
    assert isinstance(got, MemoryRecord)
    assert (got.content, got.memory_type, got.tags) == (
        "The API limit is 100 requests",
        "semantic",
        ("api", "limits"),
    )
    assert (got.importance, got.access_count, got.merged_ids) == (0.5, 0, ())
    ev = store.get(event)
    assert (ev.event_type, ev.outcome, ev.context) == ("decision", "success", {"why": "embedded"})  # type: ignore[union-attr]
    proc = store.get(procedure)
    assert isinstance(proc, ProcedureRecord)
    assert proc.category == "deploy" and [s.description for s in proc.steps] == ["tag", "push"]
    ent = store.get(entity)
    assert isinstance(ent, EntityRecord) and (ent.name, ent.entity_type) == (
        "Billing Service",
        "process",
    )
    rel = store.get(relation)
    assert isinstance(rel, RelationRecord)
    assert (rel.source_id, rel.target_id, rel.relation_type) == (entity, procedure, "runs")
    assert [store.kind_of(i) for i in (memory, event, procedure, entity, relation)] == [
        "memory", "event", "procedure", "entity", "relation",
    ]  # fmt: skip


def test_ids_are_one_sequence_across_kinds(store: Store) -> None:
    """Ids of every kind come from one sequence: all distinct and increasing."""
    ids = [
        remember(store, "a fact"),
        store.record_execution(*make_run()),
        store.add_event(NewEvent.create("action", "did it")),
        store.add_procedure(NewProcedure.create("p", ["s"])),
        store.add_entity(NewEntity.create("e", "thing")),
    ]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids[2] > ids[1] + 1  # the execution's own event took the id in between


def test_forget_any_kind_and_unknown_ids(store: Store) -> None:
    """forget removes a record of each kind and returns False for an unknown id or twice."""
    ids = {
        "memory": remember(store, "a fact"),
        "event": store.add_event(NewEvent.create("action", "did it")),
        "execution": store.record_execution(*make_run()),
        "procedure": store.add_procedure(NewProcedure.create("p", ["s"])),
        "entity": store.add_entity(NewEntity.create("e", "thing")),
    }
    ids["relation"] = store.add_relation(NewRelation.create(ids["entity"], ids["memory"], "knows"))
    for object_id in reversed(ids.values()):  # the relation first: forgetting its ends takes it
        assert store.forget(object_id) is True
        assert store.get(object_id) is None
        assert store.forget(object_id) is False
    assert store.forget(999_999) is False


def test_forgetting_cascades_to_index_relations_and_events(store: Store, backend: Backend) -> None:
    """Forgetting removes the full-text row, relations of the record and an execution's event."""
    fact = remember(store, "alpine lakes are cold")
    person = store.add_entity(NewEntity.create("Ada", "person"))
    link = store.add_relation(NewRelation.create(person, fact, "wrote"))
    run = store.record_execution(*make_run("print('alpine')"))

    assert recall(store, "alpine") and store.relations(fact)
    store.forget(fact)
    store.forget(run)

    assert recall(store, "alpine") == []
    assert store.get(link) is None and store.relations(person) == []
    assert store.list_events(event_type="execution") == []
    assert backend.sql("SELECT COUNT(*) FROM search") == [(1,)]  # the entity
    assert backend.sql("SELECT COUNT(*) FROM objects") == [(1,)]


def test_deleting_a_kind_row_directly_removes_its_object(store: Store, backend: Backend) -> None:
    """A row deleted from its kind's table by hand takes its objects and search rows along."""
    fact = remember(store, "zebra crossings")
    backend.sql("DELETE FROM memories WHERE id = ?", (fact,))
    assert store.kind_of(fact) is None
    assert recall(store, "zebra") == []


def test_entities_with_the_same_type_and_name_merge(store: Store) -> None:
    """remember_entity of a known (type, name) returns its id and merges the context."""
    first = store.add_entity(NewEntity.create("Billing Service", "service", {"owner": "ada"}))
    again = store.add_entity(NewEntity.create("billing   service", "SERVICE", {"tier": 1}))
    other = store.add_entity(NewEntity.create("Billing Service", "team"))

    assert again == first != other
    got = store.get(first)
    assert isinstance(got, EntityRecord)
    assert got.context == {"owner": "ada", "tier": 1} and got.name == "Billing Service"


def test_relations_need_existing_ends_and_are_unique(store: Store) -> None:
    """A relation to an unknown id raises RecordNotFoundError; the same link twice is one."""
    a = store.add_entity(NewEntity.create("a", "thing"))
    b = store.add_entity(NewEntity.create("b", "thing"))
    with pytest.raises(RecordNotFoundError, match="target_id 4242"):
        store.add_relation(NewRelation.create(a, 4242, "uses"))
    first = store.add_relation(NewRelation.create(a, b, "uses", {"since": 1}))
    assert store.add_relation(NewRelation.create(a, b, "Uses", {"since": 2})) == first
    assert store.get(first).context == {"since": 2}  # type: ignore[union-attr]


# --------------------------------------------------------------------------- recall


def test_recall_ranks_the_best_match_first_with_scores_in_range(store: Store) -> None:
    """The record matching all query words ranks first; scores are in [0, 1], best first."""
    remember(store, "The staging deploy needs the AWS_REGION variable")
    best = remember(store, "Deploying to staging failed because the staging database was down")
    remember(store, "Lunch is at noon")
    hits = store.recall(RecallQuery.create("why did the staging deployment fail", limit=5))

    assert hits[0].id == best
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all("Lunch" not in h.content for h in hits)


def test_recall_stems_and_splits_identifiers(store: Store) -> None:
    """Inflections match (deployment/deploy, configuring/configuration) and camel case splits."""
    deploy = remember(store, "deploy with blue green switching")
    config = remember(store, "configuration lives in settings.yaml")
    zero = remember(store, "the weekly report raised ZeroDivisionError on empty data")

    assert recall(store, "deployment")[0] == deploy
    assert recall(store, "configuring")[0] == config
    assert recall(store, "division by zero")[0] == zero
    assert recall(store, "ZeroDivisionError")[0] == zero


def test_recall_searches_every_kind_and_kinds_narrows(store: Store) -> None:
    """One query finds memories, events, executions, procedures and entities; kinds narrows."""
    ids = {
        "memory": remember(store, "kraken tentacles"),
        "event": store.add_event(NewEvent.create("observation", "saw a kraken")),
        "execution": store.record_execution(*make_run("kraken = 1\nprint(kraken)")),
        "procedure": store.add_procedure(NewProcedure.create("Feed the kraken", ["fish"])),
        "entity": store.add_entity(NewEntity.create("Kraken", "creature")),
    }
    hits = store.recall(RecallQuery.create("kraken", limit=20))
    assert set(ids.values()) <= {h.id for h in hits}  # the run's own event is found too
    assert {h.kind for h in hits} == set(ids)

    narrowed = store.recall(RecallQuery.create("kraken", limit=20, kinds=["Executions", "entity"]))
    assert {h.kind for h in narrowed} == {"execution", "entity"}


def test_recall_hit_shape(store: Store) -> None:
    """A hit has id, kind, content, tags, score, created_at, type and context."""
    remember(store, "octopus ink", memory_type="episodic", context={"project": "sea"}, tags=["ink"])
    run = store.record_execution(*make_run("print('octopus')"))
    hits = store.recall(RecallQuery.create("octopus", kinds=["memory", "execution"]))
    memory_hit, run_hit = sorted(hits, key=lambda h: h.kind, reverse=True)

    data = memory_hit.to_dict()
    assert set(data) == {"id", "kind", "content", "tags", "score", "created_at", "type", "context"}
    assert (data["kind"], data["content"], data["tags"], data["type"]) == (
        "memory",
        "octopus ink",
        ["ink"],
        "episodic",
    )
    assert data["context"] == {"project": "sea", "memory_type": "episodic"}
    assert datetime.fromisoformat(data["created_at"]) <= datetime.now(UTC)
    assert run_hit.id == run and run_hit.type == "python"
    assert run_hit.content.startswith(
        "python run succeeded (exit 0) under strict: print('octopus')"
    )
    assert run_hit.context["language"] == "python" and run_hit.context["success"] is True


def test_context_filters_on_own_and_given_fields(store: Store) -> None:
    """context filters: the caller's keys and the record's own fields (language, memory_type)."""
    sea = remember(store, "tide tables", context={"project": "sea", "year": 2026, "ok": True})
    remember(store, "tide pools", context={"project": "land"})
    run = store.record_execution(*make_run("print('tide')"))

    assert recall(store, "tide", context={"project": "sea"}) == [sea]
    assert recall(store, "tide", context={"year": 2026, "ok": True}) == [sea]
    assert recall(store, "tide", context={"language": "python"}) == [run]
    assert recall(store, "tide", context={"memory_type": "semantic", "project": "sea"}) == [sea]
    assert recall(store, "tide", context={"project": "mars"}) == []
    assert recall(store, "tide", context={"it's": 'a "quoted" key'}) == []


@pytest.mark.parametrize("query", HOSTILE_QUERIES)
def test_hostile_queries_never_raise_and_match_as_words(store: Store, query: str) -> None:
    """Quotes, FTS operators and SQL are words or nothing: no error, sensible results."""
    deploy = remember(store, "deploy to staging every Tuesday")
    hits = recall(store, query, limit=10)
    assert hits in ([], [deploy])


def test_drop_table_in_a_query_is_only_words(store: Store, backend: Backend) -> None:
    """'; DROP TABLE memories; -- finds memories about tables and drops nothing."""
    about = remember(store, "drop the table of contents from the memories book")
    assert recall(store, "'; DROP TABLE memories; --") == [about]
    assert backend.sql("SELECT COUNT(*) FROM memories") == [(1,)]


def test_recall_counts_use_of_memories(store: Store) -> None:
    """Memories returned by recall have their access count and time updated."""
    fact = remember(store, "ravens remember faces")
    recall(store, "ravens")
    recall(store, "ravens faces")
    got = store.get(fact)
    assert isinstance(got, MemoryRecord)
    assert got.access_count == 2 and got.last_accessed_at is not None


def test_recency_breaks_ties_mildly(store: Store, backend: Backend) -> None:
    """Of two equal matches the newer ranks first, and the older still scores above 0.85 of it."""
    old = remember(store, "pelican migration notes")
    new = remember(store, "pelican migration notes")
    year_ago = (datetime.now(UTC) - timedelta(days=365)).isoformat(timespec="microseconds")
    backend.sql(f"UPDATE search SET created_at = ? WHERE {backend.search_id} = ?", (year_ago, old))
    hits = store.recall(RecallQuery.create("pelican migration"))
    assert [h.id for h in hits] == [new, old]
    assert hits[1].score >= 0.85 * hits[0].score


def test_recall_events_filters_by_words_type_and_dates(store: Store, backend: Backend) -> None:
    """recall_events ranks by words, filters by type and date range, newest first without words."""
    deploy = store.add_event(NewEvent.create("error", "deploy to staging timed out", "failure"))
    lunch = store.add_event(NewEvent.create("action", "ordered lunch"))
    old = store.add_event(NewEvent.create("error", "disk full on staging"))
    backend.sql(
        "UPDATE events SET created_at = '2020-01-15T10:00:00.000000+00:00' WHERE id = ?", (old,)
    )

    def ids(**kwargs: object) -> list[int]:
        return [h.event.id for h in store.recall_events(EventQuery.create(**kwargs))]  # type: ignore[arg-type]

    assert ids() == [lunch, deploy, old]
    assert ids(query="staging") == [deploy, old] or ids(query="staging") == [old, deploy]
    assert ids(event_type="Error") == [deploy, old]
    assert ids(start_date="2020-01-15", end_date="2020-01-15") == [old]
    assert ids(start_date=datetime(2021, 1, 1)) == [lunch, deploy]
    assert ids(query="'\"*") == []
    scored = store.recall_events(EventQuery.create(query="deploy staging"))
    assert scored[0].event.id == deploy and scored[0].score == 1.0


# --------------------------------------------------------------------------- bulk and concurrency


def test_add_memories_is_one_transaction(store: Store) -> None:
    """add_memories stores many at once, ids in order, all searchable."""
    ids = store.add_memories(
        NewMemory.create(f"bulk note number {i} about herons") for i in range(300)
    )
    assert len(ids) == 300 and ids == sorted(ids)
    assert len(store.recall(RecallQuery.create("herons", limit=1000))) == 300


def _remember_many(
    backend: Backend, worker: int, count: int, start: multiprocessing.synchronize.Event
) -> None:
    """Child process: wait for the start signal, then remember ``count`` memories one by one."""
    start.wait(60)
    with backend.open(KEYWORD) as child:
        for index in range(count):
            child.add_memory(NewMemory.create(f"worker {worker} memory {index} about otters"))


def test_concurrent_processes_remember_without_loss(backend: Backend) -> None:
    """Four processes remembering 50 memories each at once store all 200, all searchable."""
    backend.open(KEYWORD).close()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers = [ctx.Process(target=_remember_many, args=(backend, w, 50, start)) for w in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)

    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert backend.sql("SELECT COUNT(*) FROM memories") == [(200,)]
    assert backend.sql("SELECT COUNT(*) FROM search") == [(200,)]
    with backend.open(KEYWORD) as reader:
        assert len(reader.recall(RecallQuery.create("otters", limit=1000))) == 200


def _upsert_the_same(
    backend: Backend, worker: int, start: multiprocessing.synchronize.Event
) -> None:
    """Child process: wait for the start signal, then remember one entity and link, 20 times."""
    start.wait(60)
    with backend.open(KEYWORD) as child:
        for index in range(20):
            billing = child.add_entity(
                NewEntity.create("Billing", "service", {f"w{worker}": index})
            )
            team = child.add_entity(NewEntity.create("Payments", "team"))
            child.add_relation(NewRelation.create(team, billing, "owns"))


def test_concurrent_processes_upsert_one_entity_and_relation(backend: Backend) -> None:
    """Four processes remembering the same entities and link at once make one of each."""
    backend.open(KEYWORD).close()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers = [ctx.Process(target=_upsert_the_same, args=(backend, w, start)) for w in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)

    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert backend.sql("SELECT COUNT(*) FROM entities") == [(2,)]
    assert backend.sql("SELECT COUNT(*) FROM relations") == [(1,)]
    with backend.open(KEYWORD) as reader:
        (hit,) = reader.recall(RecallQuery.create("billing", kinds=["entity"]))
        billing = reader.get(hit.id)
        assert isinstance(billing, EntityRecord)
        assert billing.context == {f"w{w}": 19 for w in range(4)}


def test_concurrent_threads_remember_and_recall(store: Store) -> None:
    """Threads remembering and recalling through one store at once lose nothing and never fail."""
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for index in range(25):
                store.add_memory(NewMemory.create(f"thread {worker} note {index} on beavers"))
                store.recall(RecallQuery.create("beavers"))
        except BaseException as exc:  # collected: an exception in a thread is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.recall(RecallQuery.create("beavers", limit=1000))) == 150


# --------------------------------------------------------------------------- size limit

SMALL = StoreOptions(embeddings="off", max_memory_bytes=200)
BIG_TEXT = "é" * 101  # 202 UTF-8 bytes: over 200 though only 101 characters
BIG_CONTEXT = {"note": "x" * 200}


@pytest.mark.parametrize(
    ("add", "what"),
    [
        (lambda s: s.add_memory(NewMemory.create(BIG_TEXT)), "memory's content is 202 bytes"),
        (
            lambda s: s.add_memory(NewMemory.create("ok", context=BIG_CONTEXT)),
            "memory's context is 212 bytes as JSON",
        ),
        (lambda s: s.add_memories([NewMemory.create(BIG_TEXT)]), "memory's content is 202"),
        (lambda s: s.add_event(NewEvent.create("error", BIG_TEXT)), "event's content is 202"),
        (
            lambda s: s.add_event(NewEvent.create("error", "ok", context=BIG_CONTEXT)),
            "event's context is 212",
        ),
        (lambda s: s.add_procedure(NewProcedure.create(BIG_TEXT, ["a"])), "procedure's name"),
        (lambda s: s.add_procedure(NewProcedure.create("p", [BIG_TEXT])), "procedure's steps"),
        (
            lambda s: s.add_procedure(NewProcedure.create("p", ["a"], context=BIG_CONTEXT)),
            "procedure's context",
        ),
        (lambda s: s.add_entity(NewEntity.create(BIG_TEXT, "service")), "entity's name"),
        (
            lambda s: s.add_entity(NewEntity.create("api", "service", BIG_CONTEXT)),
            "entity's context",
        ),
    ],
)
def test_the_store_enforces_max_memory_bytes(backend: Backend, add: object, what: str) -> None:
    """Content or context over the store's max_memory_bytes is refused, saying size and fix."""
    with backend.open(SMALL) as small:
        with pytest.raises(RecordTooLargeError, match=what) as refused:
            add(small)  # type: ignore[operator]
        assert small.list_executions() == [] and small.recall(RecallQuery.create("x")) == []
    message = str(refused.value)
    assert "the limit is 200 bytes" in message
    assert "ATHENA_MAX_MEMORY_BYTES" in message and "StoreOptions.max_memory_bytes" in message
    assert isinstance(refused.value, ValueError)


def test_records_at_the_limit_are_kept(backend: Backend) -> None:
    """Content of exactly max_memory_bytes is stored; the limit is not off by one."""
    with backend.open(SMALL) as small:
        memory_id = small.add_memory(NewMemory.create("é" * 100))
        assert isinstance(small.get(memory_id), MemoryRecord)


# --------------------------------------------------------------------------- privacy and retention


def test_parameters_are_redacted_by_option(backend: Backend) -> None:
    """With redact_parameters the record keeps {} and says so; code and output are kept."""
    with backend.open(StoreOptions(embeddings="off", redact_parameters=True)) as redacting:
        request, result = make_run("print(parameters['token'])", parameters={"token": "s3cret"})
        redacting.record_execution(request, result)
        record = redacting.get_execution(request.execution_id)
    assert isinstance(record, ExecutionRecord)
    assert record.parameters == {} and record.parameters_redacted is True
    assert record.code == "print(parameters['token'])" and record.stdout == "4\n"
    assert not backend.holds("s3cret") and backend.holds("print(parameters")


def test_parameters_are_redacted_by_policy(store: Store) -> None:
    """A policy with records.redact_parameters redacts too; other runs keep their parameters."""
    private = make_run(
        parameters={"token": "s3cret"}, policy={"records": {"redact_parameters": True}}
    )
    public = make_run(parameters={"n": 1})
    store.record_execution(*private)
    store.record_execution(*public)
    assert store.get_execution(private[0].execution_id).parameters_redacted  # type: ignore[union-attr]
    kept = store.get_execution(public[0].execution_id)
    assert kept is not None and kept.parameters == {"n": 1} and not kept.parameters_redacted


def _age_executions(backend: Backend, days: float) -> None:
    old = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="microseconds")
    backend.sql("UPDATE executions SET created_at = ?", (old,))


def test_retention_prunes_old_executions_on_open(backend: Backend) -> None:
    """Executions older than retention_days (and their events) are removed when a store opens."""
    with backend.open(KEYWORD) as first:
        for index in range(3):
            first.record_execution(*make_run(f"print({index})"))
        fact = first.add_memory(NewMemory.create("memories are not execution records"))
    _age_executions(backend, 10)

    with backend.open(StoreOptions(embeddings="off", retention_days=7)) as again:
        assert again.list_executions() == [] and again.list_events() == []
        assert again.get(fact) is not None
        kept = again.record_execution(*make_run())
        assert again.get(kept) is not None  # new records are kept


def test_retention_runs_after_writes_at_most_once_a_minute(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After writes, retention runs again once its interval has passed, not before."""
    import memory_store.options as options_module

    with backend.open(StoreOptions(embeddings="off", retention_days=1)) as opened:
        opened.record_execution(*make_run())
        _age_executions(backend, 2)
        opened.record_execution(*make_run())  # within the minute: the aged one stays
        assert len(opened.list_executions()) == 2
        monkeypatch.setattr(options_module, "RETENTION_CHECK_SECONDS", 0.0)
        opened.record_execution(*make_run())
        assert len(opened.list_executions()) == 2  # the aged one went, the two new stay
