"""MemoryAPI's memory methods: plain values in and out, normalisation, clear errors.

Runs go through a FakeBackend (no Docker); the store is real: a SQLite file, and a PostgreSQL
schema for the tests on the ``backend`` fixture (marked ``postgres``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import memory_store.embeddings as embeddings_module
from athena.api import MemoryAPI
from athena.settings import Settings
from memory_store import MissingExtraError, RecordNotFoundError, StoreOptions
from orchestrator.backends.reader import outcome_from_frames
from orchestrator.context import ExecutionContext
from orchestrator.errors import RequestError
from orchestrator.models import ExecutionRequest, Isolation
from orchestrator.run import RunOutcome, RunSpec
from orchestrator.testing import FakeBackend, FakeRun
from tests.memory_backends import Backend

ZERO = "Traceback (most recent call last):\n  ...\nZeroDivisionError: division by zero\n"


def create(backend: Backend, **options: object) -> MemoryAPI:
    return MemoryAPI.create(
        backend.target,
        settings=Settings(store=StoreOptions(**options)),  # type: ignore[arg-type]
        backends=[FakeBackend(FakeRun(stdout="ok\n"))],
        embeddings="off",
    )


@pytest.fixture
def api(backend: Backend) -> Iterator[MemoryAPI]:
    """A MemoryAPI on a fresh store of each backend, keyword ranking, a fake sandbox."""
    with create(backend) as opened:
        yield opened


# --------------------------------------------------------------------------- remember and recall


def test_remember_and_recall_plain_values(api: MemoryAPI) -> None:
    """remember returns an int; recall returns dicts with the documented keys, best first."""
    memory_id = api.remember(
        "Use the read replica for reports", "Procedural ", {"team": "data"}, ["DB", "reports"]
    )
    api.remember("Lunch is at noon")
    hits = api.recall("which database should reports use?")

    assert isinstance(memory_id, int)
    assert hits[0]["id"] == memory_id
    assert hits[0] == {
        "id": memory_id,
        "kind": "memory",
        "content": "Use the read replica for reports",
        "tags": ["db", "reports"],
        "score": hits[0]["score"],
        "created_at": hits[0]["created_at"],
        "type": "procedural",
        "context": {"team": "data", "memory_type": "procedural"},
    }
    assert 0 < hits[0]["score"] <= 1


def test_recall_finds_executed_runs(api: MemoryAPI) -> None:
    """Runs made with execute_code are recallable by their code, with kinds narrowing."""
    run = api.execute_code("print('nightly export')")
    hits = api.recall("nightly export", kinds=["execution"])
    assert [h["kind"] for h in hits] == ["execution"]
    assert hits[0]["context"]["execution_id"] == run["execution_id"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a: a.remember(""), "content is empty"),
        (lambda a: a.remember("   \n"), "content is empty"),
        (lambda a: a.remember(42), "content must be a string"),
        (lambda a: a.remember("x", memory_type=""), "memory_type is empty"),
        (lambda a: a.remember("x", tags=[1]), "tags must be strings"),
        (lambda a: a.remember("x", context=["not", "a", "dict"]), "context must be a dict"),
        (lambda a: a.remember("x", context={"f": float("nan")}), "JSON-serialisable"),
        (lambda a: a.recall(""), "query is empty"),
        (lambda a: a.recall("x", limit=0), "limit must be"),
        (lambda a: a.recall("x", kinds=["relations"]), "unknown kinds"),
        (lambda a: a.forget("abc"), "memory_id must be a whole number"),
        (lambda a: a.forget(0), "memory_id must be 1 or more"),
        (lambda a: a.remember_event("", "x"), "event_type is empty"),
        (lambda a: a.recall_events(start_date="yesterday"), "not ISO 8601"),
        (lambda a: a.recall_events(start_date="2026-02-01", end_date="2026-01-01"), "before"),
        (lambda a: a.remember_procedure("p", []), "at least one step"),
        (lambda a: a.remember_procedure("p", "do it"), "steps must be a list"),
        (
            lambda a: a.remember_procedure("p", [{"code": "x = 1"}]),
            "steps\\[0\\] has no description",
        ),
        (lambda a: a.remember_entity("  ", "person"), "name is empty"),
        (lambda a: a.relate_entities("a", 2, "knows"), "source_id must be a whole number"),
        (lambda a: a.consolidate("thorough"), "unknown strategy"),
        (lambda a: a.consolidate(days_back=0), "days_back"),
        (lambda a: a.validate_procedure_code(b"x = 1"), "code must be a string"),
    ],
)
def test_bad_arguments_raise_request_error_saying_what_to_change(
    api: MemoryAPI, call: object, message: str
) -> None:
    """Every bad argument raises RequestError (a ValueError) with a message naming the fix."""
    with pytest.raises(RequestError, match=message):
        call(api)  # type: ignore[operator]


def test_content_over_the_size_limit_is_refused(backend: Backend) -> None:
    """Content over max_memory_bytes raises RequestError naming the limit and the setting."""
    with create(backend, max_memory_bytes=100) as small:
        small.remember("x" * 100)
        with pytest.raises(
            RequestError, match=r"101 bytes; the limit is 100 bytes\..*ATHENA_MAX_MEMORY_BYTES"
        ):
            small.remember("x" * 101)
        with pytest.raises(RequestError, match="limit is 100"):
            small.remember_event("error", "é" * 51)


def test_default_limit_is_one_mebibyte(api: MemoryAPI) -> None:
    """1 MiB of content is accepted; one byte more is not."""
    api.remember("a" * 1024 * 1024)
    with pytest.raises(RequestError, match="limit is 1048576"):
        api.remember("a" * (1024 * 1024 + 1))


def test_forget_takes_any_kind_and_string_ids(api: MemoryAPI) -> None:
    """forget works for ids of every kind, as ints or digit strings; unknown ids give False."""
    event = api.remember_event("action", "rotated keys")
    entity = api.remember_entity("Vault", "service")
    api.execute_code("print('ok')")
    (run,) = api.recall("print ok", kinds=["execution"])
    assert api.forget(str(event)) is True
    assert api.forget(entity) is True
    assert api.forget(run["id"]) is True
    assert api.forget(entity) is False
    assert api.forget(10_000_000) is False
    assert api.recall_events() == []  # the run's event went with it


# --------------------------------------------------------------------------- events


def test_events_normalise_and_filter(api: MemoryAPI) -> None:
    """Free-form types and outcomes are stored lower case and trimmed, and filter that way."""
    first = api.remember_event(" Decision ", "picked Postgres for shared use", "Success")
    api.remember_event("error", "disk full", " FAILURE ")
    api.remember_event("action", "restarted the worker", "partial")

    decisions = api.recall_events(event_type="DECISION")
    assert [e["id"] for e in decisions] == [first]
    assert decisions[0] == {
        "id": first,
        "kind": "event",
        "event_type": "decision",
        "content": "picked Postgres for shared use",
        "outcome": "success",
        "context": {},
        "created_at": decisions[0]["created_at"],
        "score": None,
    }
    assert api.recall_events("disk")[0]["outcome"] == "failure"
    assert api.recall_events("disk")[0]["score"] == 1.0


def test_runs_appear_as_execution_events(api: MemoryAPI) -> None:
    """execute_code's records are execution events, newest first."""
    api.execute_code("print(1)")
    events = api.recall_events(event_type="execution")
    assert len(events) == 1 and events[0]["outcome"] == "success"


# --------------------------------------------------------------------------- procedures


def test_procedure_code_from_an_id(api: MemoryAPI) -> None:
    """generate_procedure_code returns the documented dict with code scoring above 0.7."""
    procedure = api.remember_procedure("Rotate keys", ["list keys", "rotate each"], "Security")
    made = api.generate_procedure_code(procedure)
    assert set(made) == {
        "success", "procedure_id", "code", "confidence", "validation", "issues", "generator",
        "duration_seconds", "timestamp",
    }  # fmt: skip
    assert made["success"] and made["procedure_id"] == procedure and made["confidence"] > 0.7
    assert "def main(" in made["code"] and made["validation"]["quality_score"] == made["confidence"]
    checked = api.validate_procedure_code(made["code"], procedure)
    assert checked["success"] and checked["procedure_id"] == procedure


def test_procedure_ids_must_name_procedures(api: MemoryAPI) -> None:
    """An unknown id or an id of another kind raises RecordNotFoundError (a LookupError)."""
    memory = api.remember("not a procedure")
    with pytest.raises(RecordNotFoundError, match="no record has this id"):
        api.generate_procedure_code(999)
    with pytest.raises(LookupError, match="that record is of kind 'memory', not a procedure"):
        api.generate_procedure_code(memory)
    with pytest.raises(RecordNotFoundError):
        api.validate_procedure_code("x = 1", procedure_id=memory)


def test_a_code_generator_given_to_create_is_used(backend: Backend) -> None:
    """MemoryAPI.create(code_generator=...) replaces the template; a per-call one wins."""

    def mine(record: object) -> str:
        return '"""Mine."""\n'

    with MemoryAPI.create(
        backend.target, backends=[FakeBackend()], embeddings="off", code_generator=mine
    ) as api:
        procedure = api.remember_procedure("p", ["s"])
        assert api.generate_procedure_code(procedure)["generator"] == "mine"
        assert (
            api.generate_procedure_code(procedure, generator=lambda r: "x = 1\n")["code"]
            == "x = 1\n"
        )


# --------------------------------------------------------------------------- entities


def test_entities_and_relations(api: MemoryAPI) -> None:
    """Entities of a known type and name return the same id; relations link any kinds."""
    ada = api.remember_entity("Ada Lovelace", "Person", {"role": "analyst"})
    again = api.remember_entity("ada lovelace", "person")
    note = api.remember("Ada wrote the first program")
    link = api.relate_entities(ada, note, "Authored")
    assert again == ada and isinstance(link, int)
    assert api.relate_entities(ada, note, "authored") == link
    with pytest.raises(RecordNotFoundError, match="target_id 12345"):
        api.relate_entities(ada, 12345, "knows")
    assert api.recall("Ada Lovelace", kinds=["entity"])[0]["content"] == "Ada Lovelace"
    assert api.forget(note) and api.forget(link) is False  # the relation went with its target


# --------------------------------------------------------------------------- consolidate


def test_consolidate_learns_from_failed_runs(backend: Backend) -> None:
    """Six failing runs through execute_code become one pattern, found by 'division by zero'."""
    failing = FakeBackend(FakeRun(stderr=ZERO, exit_code=1))
    with MemoryAPI.create(backend.target, backends=[failing], embeddings="off") as api:
        for day in range(6):
            api.execute_code(f"report = build(day={day})")
        report = api.consolidate()
        hits = api.recall("division by zero", kinds=["memory"])
    assert report["strategy"] == "balanced" and report["patterns_created"] == 1
    assert report["executions_scanned"] == 6
    assert hits[0]["content"].startswith("6 python runs failed with ZeroDivisionError")
    assert "pattern" in hits[0]["tags"]


# --------------------------------------------------------------------------- settings


def test_settings_redact_parameters(backend: Backend) -> None:
    """StoreOptions(redact_parameters=True) keeps parameters out of records."""
    with create(backend, redact_parameters=True) as api:
        run = api.execute_code("print(parameters)", parameters={"token": "s3cret"})
        record = api.store.get_execution(run["execution_id"])
    assert record is not None and record.parameters == {} and record.parameters_redacted


def test_settings_retention_prunes_on_open(backend: Backend) -> None:
    """StoreOptions(retention_days=...) removes older runs when the API opens the store."""
    with create(backend) as api:
        api.execute_code("print(1)")
    backend.sql("UPDATE executions SET created_at = '2001-01-01T00:00:00.000000+00:00'")
    with create(backend, retention_days=30) as api:
        assert api.store.list_executions() == []


def test_embeddings_on_without_the_extra_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking for embeddings without the extra raises MissingExtraError naming the extra."""
    monkeypatch.setattr(embeddings_module, "extra_installed", lambda: False)
    with pytest.raises(MissingExtraError, match=r"pip install 'athena-sandbox\[embeddings\]'"):
        MemoryAPI.create(tmp_path / "m.db", backends=[FakeBackend()], embeddings="on")
    with MemoryAPI.create(tmp_path / "m.db", backends=[FakeBackend()]) as auto:
        assert auto.store.ranking == "keyword"  # type: ignore[attr-defined]


def test_a_bad_embeddings_environment_value_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ATHENA_MEMORY_EMBEDDINGS must be auto, on or off: the settings say so, naming the field."""
    import pydantic

    monkeypatch.setenv("ATHENA_MEMORY_EMBEDDINGS", "maybe")
    with pytest.raises(pydantic.ValidationError, match="memory_embeddings"):
        MemoryAPI.create(tmp_path / "m.db", backends=[FakeBackend()])


# --------------------------------------------------------------------------- text and depth

BAD = "ab\ud800c"
SURROGATE = r" contains a lone surrogate \(\\ud800 at index \d+\); pass valid Unicode text$"


def nested(depth: int) -> Any:
    """A list nested ``depth`` levels deep, built without recursion."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@dataclass
class ValueFrameBackend(FakeBackend):
    """A fake sandbox whose runner sends ``value`` as its value frame (decoded as docker does)."""

    value: bytes = b""

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        fields = outcome_from_frames({"exit_code": 0, "run_ns": 1000}, self.value, False)
        isolation = Isolation(mode=self.name, runtime="fake", path="fake")
        return RunOutcome(isolation=isolation, started=True, sandbox_id="fake", **fields)


@pytest.mark.parametrize(
    ("call", "place"),
    [
        (lambda a: a.remember(BAD), "content"),
        (lambda a: a.remember("x", "sem\ud800"), "memory_type"),
        (lambda a: a.remember("x", context={"k": [1, {"j": BAD}]}), r"context\['k'\]\[1\]\['j'\]"),
        (lambda a: a.remember("x", context={"a": {BAD: 1}}), r"a key of context\['a'\]"),
        (lambda a: a.remember("x", tags=["ok", BAD]), r"tags\[1\]"),
        (lambda a: a.remember("x", tags=BAD), "tags"),
        (lambda a: a.remember_event(BAD, "x"), "event_type"),
        (lambda a: a.remember_event("e", BAD), "content"),
        (lambda a: a.remember_event("e", "x", BAD), "outcome"),
        (lambda a: a.remember_event("e", "x", context={BAD: 1}), "a key of context"),
        (lambda a: a.remember_entity(BAD, "person"), "name"),
        (lambda a: a.remember_entity("Ada", BAD), "entity_type"),
        (lambda a: a.remember_entity("Ada", "person", {"x": [BAD]}), r"context\['x'\]\[0\]"),
        (lambda a: a.remember_procedure(BAD, ["s"]), "name"),
        (lambda a: a.remember_procedure("p", ["s", BAD]), r"steps\[1\]"),
        (
            lambda a: a.remember_procedure("p", [{"action": "a", "code": BAD}]),
            r"steps\[0\]\['code'\]",
        ),
        (lambda a: a.remember_procedure("p", [{"action": "a", BAD: 1}]), r"a key of steps\[0\]"),
        (lambda a: a.remember_procedure("p", ["s"], BAD), "category"),
        (lambda a: a.remember_procedure("p", ["s"], context={"c": BAD}), r"context\['c'\]"),
        (lambda a: a.relate_entities(1, 2, BAD), "relation_type"),
        (lambda a: a.relate_entities(1, 2, "knows", {"w": BAD}), r"context\['w'\]"),
        (lambda a: a.recall(BAD), "query"),
        (lambda a: a.recall("x", context={"k": BAD}), r"context\['k'\]"),
        (lambda a: a.recall("x", kinds=["memory", BAD]), r"kinds\[1\]"),
        (lambda a: a.recall_events(BAD), "query"),
        (lambda a: a.recall_events(event_type=BAD), "event_type"),
        (lambda a: a.recall_events(start_date="2026-01-0\ud800"), "start_date"),
        (lambda a: a.validate_procedure_code(BAD), "code"),
        (lambda a: a.execute_code(BAD), "code"),
        (lambda a: a.execute_code("x", parameters={"k": [BAD]}), r"parameters\['k'\]\[0\]"),
        (
            lambda a: a.execute_code_batch([{"code": "x", "parameters": {BAD: 1}}]),
            "a key of parameters",
        ),
        (lambda a: a.store.get_execution(BAD), "execution_id"),
        (lambda a: a.store.list_events(event_type=BAD), "event_type"),
    ],
)
def test_lone_surrogates_from_callers_are_refused_before_anything_is_stored(
    api: MemoryAPI, call: Any, place: str
) -> None:
    """Text with a lone surrogate raises RequestError naming the argument; nothing is stored."""
    with pytest.raises(RequestError, match=place + SURROGATE):
        call(api)
    assert api.store.get(1) is None
    assert api.store.list_executions() == [] and api.recall_events() == []


@pytest.mark.parametrize(
    ("call", "what"),
    [
        (lambda a, d: a.remember("x", context={"a": d}), "context"),
        (lambda a, d: a.remember_event("e", "x", context={"a": d}), "context"),
        (lambda a, d: a.remember_entity("Ada", "person", {"a": d}), "context"),
        (lambda a, d: a.relate_entities(1, 2, "knows", {"a": d}), "context"),
        (lambda a, d: a.remember_procedure("p", ["s"], context={"a": d}), "context"),
        (lambda a, d: a.remember_procedure("p", [{"action": "s", "a": d}]), r"steps\[0\]"),
        (lambda a, d: a.recall("x", context={"a": d}), "context"),
        (lambda a, d: a.execute_code("x", parameters={"a": d}), "parameters"),
    ],
)
def test_deep_input_is_refused_with_request_error_not_recursion_error(
    api: MemoryAPI, call: Any, what: str
) -> None:
    """5,000 levels (RecursionError before) and 65 levels raise RequestError naming the argument."""
    for depth in (5000, 64):  # inside the outer dict: 5,001 and 65 levels
        with pytest.raises(RequestError, match=f"^{what} is nested more than 64 levels deep"):
            call(api, nested(depth))
    assert api.store.get(1) is None


def test_a_context_at_the_depth_limit_is_kept(api: MemoryAPI) -> None:
    """A context nested exactly 64 levels deep is stored and read back whole."""
    memory = api.remember("deep but allowed", context={"a": nested(63)})
    (hit,) = api.recall("deep but allowed")
    assert hit["id"] == memory and hit["context"]["a"] == nested(63)


def test_surrogates_in_a_runs_output_are_repaired_and_recorded(backend: Backend) -> None:
    """Output with lone surrogates is repaired; the run succeeds, encodes and is recorded."""
    sandbox = ValueFrameBackend(value=b'{"value": {"\\ud800": ["x\\udc00", {"k\\udfff": 1}]}}')
    with MemoryAPI.create(backend.target, backends=[sandbox], embeddings="off") as api:
        result = api.execute_code("output = 1")
        record = api.store.get_execution(result["execution_id"])
    assert result["success"] is True
    assert result["output"] == {"\ufffd": ["x\ufffd", {"k\ufffd": 1}]}
    encoded = json.dumps(result, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert json.loads(encoded)["output"] == result["output"]
    assert record is not None and record.result["output"] == result["output"]


def test_a_generator_returning_a_lone_surrogate_fails_softly(api: MemoryAPI) -> None:
    """A custom generator's text with a lone surrogate is its failure, reported, never raised."""

    def sloppy(record: object) -> str:
        return 'x = "\ud800"\n'

    made = api.generate_procedure_code(api.remember_procedure("p", ["s"]), generator=sloppy)
    assert made["success"] is False and made["generator"] == "sloppy"
    assert "the generated code contains a lone surrogate" in made["issues"][0]["message"]
    json.dumps(made).encode("utf-8")
