"""Every execution is persisted in the memory store before execute_code returns."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from athena.mcp.memory_api import MemoryAPI
from memory_store import SQLiteStore

pytestmark = pytest.mark.docker


def test_execution_and_event_are_recorded_before_return(api: MemoryAPI, tmp_path: Path) -> None:
    """The record (code, language, policy, result, timings) and an event exist when the call returns."""
    r = api.execute_code("print(parameters['n'] * 2)", parameters={"n": 21})
    with SQLiteStore(tmp_path / "memory.db") as other:  # a second connection sees it committed
        record = other.get_execution(r["execution_id"])
        events = other.list_events(event_type="execution")
    assert record is not None
    assert (record.code, record.language, record.policy) == (
        "print(parameters['n'] * 2)",
        "python",
        "strict",
    )
    assert record.success and record.exit_code == 0 and record.stdout == "42\n"
    assert record.parameters == {"n": 21} and record.sandbox_mode == "docker"
    assert record.result["execution_id"] == r["execution_id"] and record.execution_time_ms > 0
    assert record.policy_config["limits"]["memory_mb"] == 256
    assert any(e.context.get("execution_id") == r["execution_id"] for e in events)


def test_failed_and_rejected_runs_are_recorded_too(api: MemoryAPI) -> None:
    """Timeouts and validation rejections are remembered with what went wrong."""
    timed_out = api.execute_code("while True: pass", timeout_seconds=1)
    rejected = api.execute_code("import socket")
    assert api.store.get_execution(timed_out["execution_id"]).violations[0].startswith("timeout:")
    assert api.store.get_execution(rejected["execution_id"]).error == "Code validation failed"


def test_record_false_stores_nothing(api: MemoryAPI) -> None:
    """record=False runs the code and leaves no trace in the store."""
    r = api.execute_code("print('private')", record=False)
    assert r["success"]
    assert api.store.get_execution(r["execution_id"]) is None


def test_default_database_is_created_private(_private_home: Path) -> None:
    """MemoryAPI.create() with no path uses ~/.athena/memory.db, created with mode 0600."""
    with MemoryAPI.create() as api:
        r = api.execute_code("print(1)")
    path = _private_home / ".athena" / "memory.db"
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with SQLiteStore(path) as store:
        assert store.get_execution(r["execution_id"]) is not None


def test_athena_memory_db_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATHENA_MEMORY_DB chooses the database when no db_path is given."""
    target = tmp_path / "env.db"
    monkeypatch.setenv("ATHENA_MEMORY_DB", str(target))
    with MemoryAPI.create() as api:
        r = api.execute_code("print(1)")
    with SQLiteStore(target) as store:
        assert store.get_execution(r["execution_id"]) is not None


def test_get_execution_holds_the_events_the_stream_gave(api: MemoryAPI) -> None:
    """A real run's record keeps the streamed events (begin, output, exit with its result)."""
    streamed = list(api.execute_code_stream("print('first')\nprint('second')"))
    result = streamed[-1]["result"]
    got = api.get_execution(result["execution_id"])
    assert got is not None and got["events"] == streamed
    assert got["events"][0]["type"] == "begin" and got["result"] == result
    assert got["request"]["code"] == "print('first')\nprint('second')"
    assert api.for_tenant("someone-else").get_execution(result["execution_id"]) is None


def test_a_flood_is_cut_in_the_recorded_events_as_in_the_result(api: MemoryAPI) -> None:
    """Output past max_output_bytes is cut from the stored events too: head, marker, tail."""
    policy = {"extends": "strict", "limits": {"max_output_bytes": 4096}}
    code = "for i in range(40000):\n    print(f'{i:07d}')"
    result = api.execute_code(code, sandbox_policy=policy)
    got = api.get_execution(result["execution_id"])
    assert got is not None and "athena-sandbox cut" in result["stdout"]
    text = "".join(e["text"] for e in got["events"] if e["type"] == "stdout")
    assert len(text.encode()) < 4096 + 200  # the marker's length aside, within the limit
    assert text[:1000] == result["stdout"][:1000] and text[-500:] == result["stdout"][-500:]
    assert "athena-sandbox cut" in text
