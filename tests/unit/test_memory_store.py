"""Unit tests of the memory store: real SQLite files in tmp_path and a real PostgreSQL server.

Tests on the ``store`` fixture run on each backend (PostgreSQL ones marked ``postgres``); the
file, WAL, target and migration tests are SQLite's own (PostgreSQL's are in
test_memory_postgres.py). No mocks.
"""

from __future__ import annotations

import inspect
import multiprocessing
import multiprocessing.synchronize
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest
from structlog.testing import capture_logs

import memory_store
import memory_store.records
import memory_store.requests
from athena.settings import store_options_from_env
from memory_store import (
    DEFAULT_DB_PATH,
    EventRecord,
    ExecutionRecord,
    SQLiteStore,
    Store,
    StoreConfigError,
    StoreError,
    StoreOptions,
    open_store,
    resolve_store_target,
)
from memory_store.sqlite import schema
from memory_store.summary import summarize_execution
from orchestrator.errors import RequestError, SandboxError
from orchestrator.models import ExecutionRequest, ExecutionResult, Violation
from orchestrator.policy import Policy, load_policy
from tests.memory_backends import Backend

STRICT = load_policy("strict")


def make_run(
    code: str = "print(2 + 2)",
    language: str = "python",
    *,
    success: bool = True,
    exit_code: int = 0,
    stdout: str = "4\n",
    stderr: str = "",
    violations: tuple[Violation, ...] = (),
    error: str | None = None,
    error_type: str | None = None,
    parameters: dict[str, object] | None = None,
    policy: Policy = STRICT,
) -> tuple[ExecutionRequest, ExecutionResult]:
    request = ExecutionRequest.create(
        code=code, language=language, parameters=parameters, policy=policy
    )
    result = ExecutionResult(
        execution_id=request.execution_id,
        success=success,
        language=request.language,
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        violations=violations,
        error=error,
        error_type=error_type,
        sandbox_mode="docker",
        execution_time_ms=12.5,
        policy=policy.name,
    )
    return request, result


def failing_run() -> tuple[ExecutionRequest, ExecutionResult]:
    return make_run(
        "x = 1 / 0\nprint(x)",
        success=False,
        exit_code=1,
        stdout="",
        stderr=(
            "Traceback (most recent call last):\n  File ...\n"
            "ZeroDivisionError: division by zero\n\n"
        ),
        violations=(Violation(category="timeout", message="ran past 30 s", detail={"limit": 30}),),
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "memory.db"


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    """A fresh store on each backend."""
    with backend.open(StoreOptions(embeddings="off")) as opened:
        yield opened


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("ATHENA_MEMORY_URL", raising=False)
    monkeypatch.delenv("ATHENA_MEMORY_DB", raising=False)
    return monkeypatch


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- public API


def test_every_record_input_and_error_is_exported() -> None:
    """Each record, checked input and error class the store defines is importable from the package."""
    modules = (memory_store.records, memory_store.requests, memory_store.errors)
    defined = {
        name
        for module in modules
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and value.__module__ == module.__name__
        and not name.startswith("_")
        and issubclass(value, pydantic.BaseModel | Exception)
    }
    assert {"MemoryRecord", "NewMemory", "RecordTooLargeError"} <= defined
    assert defined - set(memory_store.__all__) == set()


def test_each_store_implements_the_protocol_signatures(store: Store) -> None:
    """Every Store method exists on each store with the protocol's parameters, in order."""
    methods = [
        name
        for name, value in vars(Store).items()
        if not name.startswith("_") and inspect.isfunction(value)
    ]
    assert len(methods) > 15
    for name in methods:
        declared = inspect.signature(getattr(Store, name)).parameters
        implemented = inspect.signature(getattr(type(store), name)).parameters
        assert list(implemented) == list(declared), name
        for param, spec in declared.items():
            assert implemented[param].kind == spec.kind, f"{name}({param})"
            assert implemented[param].default == spec.default, f"{name}({param})"


def test_a_bad_store_target_is_caught_as_value_error_and_sandbox_error() -> None:
    """An unsupported store URL is a StoreConfigError, caught as ValueError or SandboxError too."""
    for caught in (StoreConfigError, StoreError, ValueError, SandboxError):
        with pytest.raises(caught, match="unsupported memory store scheme 'mysql'"):
            open_store("mysql://localhost/db")


# --------------------------------------------------------------------------- record and read


def test_record_and_read_back_every_field(store: Store) -> None:
    """A recorded execution reads back with every field, the result dict and violations."""
    request, result = make_run(
        parameters={"n": 3, "names": ["a", "b"]},
        violations=(Violation(category="output", message="stdout was cut at 1 MiB"),),
    )
    ref = store.record_execution(request, result)

    record = store.get_execution(request.execution_id)

    assert isinstance(record, ExecutionRecord)
    assert record.id == ref
    assert record.execution_id == request.execution_id
    assert record.language == "python"
    assert record.policy == "strict"
    assert record.policy_config == STRICT.model_dump(mode="json")
    assert record.code == "print(2 + 2)"
    assert record.parameters == {"n": 3, "names": ["a", "b"]}
    assert record.success is True
    assert record.exit_code == 0
    assert record.stdout == "4\n"
    assert record.stderr == ""
    assert record.error is None
    assert record.error_type is None
    assert record.violations == ["output: stdout was cut at 1 MiB"]
    assert record.result == result.to_dict()
    assert record.sandbox_mode == "docker"
    assert record.execution_time_ms == 12.5
    assert record.created_at.utcoffset() is not None
    assert record.created_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_failure_fields_read_back(store: Store) -> None:
    """A failed run keeps its error, error type, exit code and stderr."""
    request, result = make_run(
        "import socket",
        success=False,
        exit_code=-1,
        stdout="",
        error="code validation failed: forbidden import socket",
        error_type="ValidationError",
    )
    store.record_execution(request, result)

    record = store.get_execution(request.execution_id)

    assert record is not None
    assert (record.success, record.exit_code) == (False, -1)
    assert record.error == "code validation failed: forbidden import socket"
    assert record.error_type == "ValidationError"


def test_unknown_execution_reads_as_none(store: Store) -> None:
    """get_execution of an id never recorded returns None."""
    assert store.get_execution("no-such-run") is None


def test_recording_twice_raises_store_error(store: Store) -> None:
    """Recording the same execution_id twice raises StoreError and leaves one record."""
    request, result = make_run()
    store.record_execution(request, result)

    with pytest.raises(StoreError, match="already recorded"):
        store.record_execution(request, result)

    assert len(store.list_executions()) == 1
    assert len(store.list_events()) == 1


def test_mismatched_request_and_result_are_refused(store: Store) -> None:
    """A result of another execution is refused with RequestError."""
    request, _ = make_run()
    _, other = make_run()

    with pytest.raises(RequestError, match="the result is of execution"):
        store.record_execution(request, other)


def test_lone_surrogates_are_stored(store: Store) -> None:
    """Output with lone surrogates is stored, the surrogates replaced."""
    request, result = make_run("print('x')", stdout="bad \udcff byte\n")
    store.record_execution(request, result)

    record = store.get_execution(request.execution_id)

    assert record is not None
    assert "\udcff" not in record.stdout
    assert record.stdout.startswith("bad ")


# --------------------------------------------------------------------------- events


def test_one_event_per_execution_with_summary(store: Store) -> None:
    """Each execution writes one 'execution' event with its summary, outcome and references."""
    request, result = make_run()
    ref = store.record_execution(request, result)

    events = store.list_events()

    assert len(events) == 1
    event = events[0]
    assert isinstance(event, EventRecord)
    assert event.event_type == "execution"
    assert event.content == "python run succeeded (exit 0) under strict: print(2 + 2)"
    assert event.outcome == "success"
    assert event.context == {"execution_id": request.execution_id, "execution_ref": ref}
    assert event.created_at.utcoffset() is not None


def test_failure_event_names_violations_and_exception(store: Store) -> None:
    """A failed run's event has outcome failure and names the violations and last stderr line."""
    request, result = failing_run()
    store.record_execution(request, result)

    (event,) = store.list_events()

    assert event.outcome == "failure"
    assert event.content == (
        "python run failed (exit 1) under strict: x = 1 / 0 | timeout: ran past 30 s | "
        "ZeroDivisionError: division by zero"
    )


def test_summary_clips_long_code_and_names_errors() -> None:
    """The summary keeps the first non-blank code line within 80 chars and adds the error."""
    request, result = make_run(
        "\n\n   " + "y = " + "1 + " * 100 + "1\nprint(y)",
        success=False,
        exit_code=-1,
        stdout="",
        error="the sandbox failed:\nrunner lost",
        error_type="SandboxFailedError",
    )

    summary = summarize_execution(request, result)

    head, error = summary.split(" | ")
    code_line = head.split("under strict: ", 1)[1]
    assert code_line.startswith("y = 1 + 1 + ")
    assert len(code_line) == 80
    assert code_line.endswith("…")
    assert error == "SandboxFailedError: the sandbox failed: runner lost"
    assert "\n" not in summary


def test_list_events_filters_by_type(store: Store) -> None:
    """list_events with an event type returns only events of that type."""
    store.record_execution(*make_run())

    assert len(store.list_events(event_type="execution")) == 1
    assert store.list_events(event_type="reflection") == []


# --------------------------------------------------------------------------- ids


def test_ids_come_from_one_sequence(store: Store, backend: Backend) -> None:
    """Execution and event ids come from objects and are never shared between the two tables."""
    for _ in range(5):
        store.record_execution(*make_run())
    store.record_execution(*failing_run())

    executions = {r[0] for r in backend.sql("SELECT id FROM executions")}
    events = {r[0] for r in backend.sql("SELECT id FROM events")}
    objects = dict(backend.sql("SELECT id, kind FROM objects"))

    assert len(executions) == len(events) == 6
    assert executions.isdisjoint(events)
    assert set(objects) == executions | events
    assert {objects[i] for i in executions} == {"execution"}
    assert {objects[i] for i in events} == {"event"}


# --------------------------------------------------------------------------- files and modes


def test_new_files_are_private(tmp_path: Path) -> None:
    """A new store gets a 0700 parent directory and 0600 database, -wal and -shm files."""
    path = tmp_path / "new" / "deeper" / "memory.db"

    with SQLiteStore(path) as opened:
        opened.record_execution(*make_run())
        wal = Path(f"{path}-wal")
        shm = Path(f"{path}-shm")
        assert wal.exists() and shm.exists()
        assert mode_of(path) == 0o600
        assert mode_of(wal) == 0o600
        assert mode_of(shm) == 0o600

    assert mode_of(path.parent) == 0o700
    assert mode_of(path.parent.parent) == 0o700


def test_existing_file_keeps_its_mode(db_path: Path) -> None:
    """An existing database file is used as it is; its permissions are not changed."""
    db_path.touch(mode=0o644)
    db_path.chmod(0o644)

    with SQLiteStore(db_path):
        pass

    assert mode_of(db_path) == 0o644


def test_wal_mode_is_on(db_path: Path) -> None:
    """The database is in WAL journal mode."""
    SQLiteStore(db_path).close()
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_directory_is_not_a_store(tmp_path: Path) -> None:
    """A path that is a directory raises StoreConfigError."""
    with pytest.raises(StoreConfigError, match="cannot open"):
        SQLiteStore(tmp_path)


def test_a_foreign_file_is_refused(db_path: Path) -> None:
    """A file that is not SQLite raises StoreError naming the file."""
    db_path.write_text("not a database, just text" * 100)

    with pytest.raises(StoreError, match=str(db_path)):
        SQLiteStore(db_path)


def test_another_apps_database_is_refused(db_path: Path) -> None:
    """A SQLite database with tables of its own is not turned into a memory store."""
    with raw(db_path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")

    with pytest.raises(StoreError, match="not an athena memory store"):
        SQLiteStore(db_path)


# --------------------------------------------------------------------------- lifecycle


def test_closed_store_refuses_work(backend: Backend) -> None:
    """After close() every call raises StoreError, and closing again is harmless."""
    opened = backend.open()
    opened.close()
    opened.close()

    with pytest.raises(StoreError, match="closed"):
        opened.list_executions()


def test_limit_must_be_positive(store: Store) -> None:
    """A limit below 1 raises RequestError."""
    with pytest.raises(RequestError, match="limit"):
        store.list_executions(limit=0)


# --------------------------------------------------------------------------- listing


def test_list_executions_newest_first_and_by_language(store: Store) -> None:
    """list_executions returns newest first, honours limit and filters by language."""
    ids = []
    for index in range(3):
        ids.append(store.record_execution(*make_run(f"print({index})")))
        ids.append(store.record_execution(*make_run(f"echo {index}", "bash", stdout="")))

    everything = store.list_executions()
    bash = store.list_executions(language="bash")

    assert [r.id for r in everything] == ids[::-1]
    assert [r.id for r in store.list_executions(limit=2)] == ids[::-1][:2]
    assert [r.code for r in bash] == ["echo 2", "echo 1", "echo 0"]
    assert store.list_executions(language="javascript") == []


# --------------------------------------------------------------------------- targets


def test_target_argument_wins(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The db_path argument wins over ATHENA_MEMORY_URL and ATHENA_MEMORY_DB."""
    clean_env.setenv("ATHENA_MEMORY_URL", "sqlite:///from/url.db")
    clean_env.setenv("ATHENA_MEMORY_DB", "/from/env.db")

    assert resolve_store_target(tmp_path / "arg.db", store_options_from_env()) == str(
        tmp_path / "arg.db"
    )


def test_target_url_wins_over_db(clean_env: pytest.MonkeyPatch) -> None:
    """ATHENA_MEMORY_URL wins over ATHENA_MEMORY_DB."""
    clean_env.setenv("ATHENA_MEMORY_URL", "sqlite:///from/url.db")
    clean_env.setenv("ATHENA_MEMORY_DB", "/from/env.db")

    assert resolve_store_target(None, store_options_from_env()) == "sqlite:///from/url.db"


def test_target_db_wins_over_default(clean_env: pytest.MonkeyPatch) -> None:
    """ATHENA_MEMORY_DB wins over the default path."""
    clean_env.setenv("ATHENA_MEMORY_DB", "/from/env.db")

    assert resolve_store_target(None, store_options_from_env()) == "/from/env.db"


def test_target_defaults_to_home(clean_env: pytest.MonkeyPatch) -> None:
    """With nothing set the target is ~/.athena/memory.db."""
    assert resolve_store_target(None, store_options_from_env()) == "~/.athena/memory.db"
    assert Path("~/.athena/memory.db") == DEFAULT_DB_PATH


def test_open_store_default_expands_home(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """open_store() with nothing set opens ~/.athena/memory.db with ~ expanded."""
    clean_env.setenv("HOME", str(tmp_path))

    opened = open_store()
    opened.close()

    assert (tmp_path / ".athena" / "memory.db").is_file()
    assert mode_of(tmp_path / ".athena") == 0o700


def test_open_store_sqlite_url(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """open_store accepts sqlite:///absolute/path from ATHENA_MEMORY_URL."""
    clean_env.setenv("ATHENA_MEMORY_URL", f"sqlite://{tmp_path}/url.db")

    opened = open_store(options=store_options_from_env())
    opened.close()

    assert (tmp_path / "url.db").is_file()


@pytest.mark.parametrize(
    "url", ["postgresql://u:s3cr%3At@127.0.0.1:1/athena", "postgres://u:s3cr%3At@127.0.0.1:1/x"]
)
def test_postgres_urls_open_the_postgres_store(url: str) -> None:
    """A PostgreSQL URL is tried as one; a server that is not there is a StoreError, password masked."""
    with pytest.raises(StoreError, match=r"postgresql://u:\*\*\*@127\.0\.0\.1:1/") as info:
        open_store(url)
    assert "s3cr" not in str(info.value) and "s3cr" not in repr(info.value.__cause__)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("mysql://db/athena", "unsupported memory store scheme 'mysql'"),
        ("sqlite://host/memory.db", "sqlite:///absolute/path"),
        ("sqlite:///:memory:", "must persist"),
        ("   ", "empty"),
    ],
)
def test_bad_targets_are_refused(target: str, message: str) -> None:
    """Unknown schemes, SQLite URLs with a host, in-memory and empty targets raise."""
    with pytest.raises(StoreConfigError, match=message):
        open_store(target)


# --------------------------------------------------------------------------- migrations


def test_latest_version_database_reopens(db_path: Path) -> None:
    """A database created at the latest version reopens with its records, not migrated again."""
    with SQLiteStore(db_path) as first:
        request, result = make_run()
        first.record_execution(request, result)

    with SQLiteStore(db_path) as again:
        assert again.schema_version == schema.latest_version()
        assert again.get_execution(request.execution_id) is not None
    with raw(db_path) as conn:
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert versions == [(v,) for v in range(1, schema.latest_version() + 1)]


def test_old_database_is_migrated(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a database with a newer schema applies only the new migration, data kept."""
    with SQLiteStore(db_path) as first:
        request, result = make_run()
        first.record_execution(request, result)
    latest = schema.latest_version()
    extra = ("CREATE TABLE later (id INTEGER PRIMARY KEY REFERENCES objects(id))",)
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, extra))

    with SQLiteStore(db_path) as again:
        assert again.schema_version == latest + 1
        assert again.get_execution(request.execution_id) is not None
    with raw(db_path) as conn:
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version")
        assert versions.fetchall() == [(v,) for v in range(1, latest + 2)]
        assert conn.execute("SELECT COUNT(*) FROM later").fetchone() == (0,)


def test_future_version_raises(db_path: Path) -> None:
    """A database of a newer schema version raises StoreError asking to upgrade."""
    with SQLiteStore(db_path):
        pass
    with raw(db_path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, '2030-01-01T00:00:00+00:00')")

    with pytest.raises(StoreError, match="upgrade athena-sandbox"):
        SQLiteStore(db_path)


# --------------------------------------------------------------------------- concurrency


def _write_records(backend: Backend, count: int, start: multiprocessing.synchronize.Event) -> None:
    """Child process: wait for the start signal, then record ``count`` executions."""
    start.wait(60)
    with backend.open() as child:
        for index in range(count):
            child.record_execution(*make_run(f"print({index})"))


def test_concurrent_processes_lose_nothing(backend: Backend) -> None:
    """Four processes writing 50 records each at once give exactly 200 executions and events."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers = [ctx.Process(target=_write_records, args=(backend, 50, start)) for _ in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)

    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert backend.sql("SELECT COUNT(*) FROM executions") == [(200,)]
    assert backend.sql("SELECT COUNT(*) FROM events") == [(200,)]
    assert backend.sql("SELECT COUNT(*) FROM objects") == [(400,)]


def test_concurrent_threads_lose_nothing(store: Store) -> None:
    """Eight threads writing through one store at once lose no record."""
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for index in range(25):
                store.record_execution(*make_run(f"print({index})"))
        except BaseException as exc:  # collected: an exception in a thread is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    executions = store.list_executions(limit=1000)
    assert len(executions) == 200
    assert len({r.id for r in executions}) == 200
    assert len(store.list_events(limit=1000)) == 200


def test_writer_held_up_past_busy_timeout_is_retried(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that outlasts busy_timeout behind another writer is retried, not raised."""
    import memory_store.sqlite.connection as connection_module

    monkeypatch.setattr(connection_module, "BUSY_TIMEOUT_MS", 50)
    with SQLiteStore(db_path) as opened:
        blocker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, blocker.execute, args=("COMMIT",))
        release.start()
        try:
            with capture_logs() as logs:
                opened.record_execution(*make_run())
        finally:
            release.join()
            blocker.close()

        assert len(opened.list_executions()) == 1
    assert any("retrying" in entry["event"] for entry in logs)
