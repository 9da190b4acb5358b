"""Streaming, async, batches, parallel threads and the queue, on the real engine."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.settings import Settings
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.docker


def test_stream_yields_events_as_they_happen(api: MemoryAPI) -> None:
    """execute_code_stream yields stdout long before the exit event, which carries the result."""
    code = "import sys, time\nprint('one', flush=True)\nprint('err', file=sys.stderr)\ntime.sleep(1.2)\nprint('two')"
    seen: list[tuple[float, dict[str, Any]]] = []
    for event in api.execute_code_stream(code):
        seen.append((time.monotonic(), event))
    kinds = [e["type"] for _, e in seen]
    assert kinds[0] == "begin" and kinds[-1] == "exit"
    assert {"stdout", "stderr"} <= set(kinds)
    first = next(t for t, e in seen if e["type"] == "stdout")
    assert seen[-1][0] - first >= 1.0
    result = seen[-1][1]["result"]
    assert result["stdout"] == "one\ntwo\n" and result["success"]
    assert api.store.get_execution(result["execution_id"]) is not None


def test_closing_a_stream_early_kills_the_run(
    api: MemoryAPI, containers_of: Callable[[dict[str, Any]], list[Any]]
) -> None:
    """Leaving the stream after the first output cancels the run and removes its container."""
    stream = api.execute_code_stream(
        "import time\nprint('go', flush=True)\ntime.sleep(60)", timeout_seconds=60
    )
    start = time.monotonic()
    for event in stream:
        if event["type"] == "stdout":
            break
    stream.close()
    assert time.monotonic() - start < 10
    (record,) = api.store.list_executions(limit=1)
    assert record.error_type == "RunCancelledError"
    assert wait_until(lambda: not containers_of(record.result), timeout=5)


def test_output_callbacks(api: MemoryAPI) -> None:
    """on_stdout and on_stderr receive the chunks as they arrive."""
    out: list[str] = []
    err: list[str] = []
    r = api.execute_code(
        "echo a; echo b >&2; echo c", "bash", on_stdout=out.append, on_stderr=err.append
    )
    assert "".join(out) == "a\nc\n" == r["stdout"]
    assert "".join(err) == "b\n"


def test_async_run(api: MemoryAPI) -> None:
    """execute_code_async returns the same dict as execute_code; several run concurrently."""

    async def main() -> list[dict[str, Any]]:
        calls = [
            api.execute_code_async("print(parameters['i'])", parameters={"i": i}) for i in range(4)
        ]
        return await asyncio.gather(*calls)

    results = asyncio.run(main())
    assert [r["stdout"] for r in results] == ["0\n", "1\n", "2\n", "3\n"]


def test_cancelling_the_awaiting_task_kills_the_run(
    api: MemoryAPI, containers_of: Callable[[dict[str, Any]], list[Any]]
) -> None:
    """Cancelling the asyncio task kills the sandbox; the run is recorded as cancelled."""

    async def main() -> float:
        task = asyncio.create_task(
            api.execute_code_async("import time\ntime.sleep(60)", timeout_seconds=60)
        )
        await asyncio.sleep(2)
        start = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - start

    assert asyncio.run(main()) < 10
    (record,) = api.store.list_executions(limit=1)
    assert record.error_type == "RunCancelledError"
    assert wait_until(lambda: not containers_of(record.result), timeout=5)


def test_batch_returns_results_in_order(api: MemoryAPI) -> None:
    """execute_code_batch runs calls concurrently and returns their dicts in order."""
    calls = [
        {"code": f"import time\ntime.sleep({0.6 - i * 0.1:.1f})\nprint({i})"} for i in range(5)
    ] + [{"code": "echo bash", "language": "bash"}]
    results = api.execute_code_batch(calls, concurrency=3)
    assert [r["stdout"] for r in results] == ["0\n", "1\n", "2\n", "3\n", "4\n", "bash\n"]


def test_parallel_threads_never_mix_runs(api: MemoryAPI) -> None:
    """Eight threads running at once each get their own output, container and record."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for k in range(3):
            r = api.execute_code(
                "print(parameters['n'], parameters['k'])", parameters={"n": n, "k": k}
            )
            with lock:
                results.append(r | {"expected": f"{n} {k}\n"})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 24
    assert all(r["success"] and r["stdout"] == r["expected"] for r in results)
    assert len({r["sandbox_id"] for r in results}) == 24
    assert len({r["execution_id"] for r in results}) == 24


def test_a_full_queue_returns_queue_full(tmp_path: Path, project_dir: Path) -> None:
    """With one place and no queue, a second concurrent run gets `queue full` after the wait."""
    settings = Settings(
        project_dir=project_dir,
        pool_size=0,
        max_concurrent_runs=1,
        max_queued_runs=0,
        queue_wait_seconds=0.5,
    )
    with MemoryAPI.create(tmp_path / "m.db", settings=settings) as api:
        first: list[dict[str, Any]] = []
        worker = threading.Thread(
            target=lambda: first.append(api.execute_code("import time\ntime.sleep(3)"))
        )
        worker.start()
        time.sleep(1)
        second = api.execute_code("print('second')")
        worker.join(30)
    assert first[0]["success"]
    assert not second["success"] and second["error"].startswith("queue full")
    assert second["error_type"] == "QueueFullError"


def test_queued_runs_wait_and_keep_their_whole_timeout(tmp_path: Path, project_dir: Path) -> None:
    """A queued run waits for a place; its timeout starts when its code starts."""
    settings = Settings(
        project_dir=project_dir, pool_size=0, max_concurrent_runs=1, max_queued_runs=4
    )
    with MemoryAPI.create(tmp_path / "m.db", settings=settings) as api:
        results = api.execute_code_batch(
            [{"code": "import time\ntime.sleep(1)\nprint('a')", "timeout_seconds": 1.8}] * 3,
            concurrency=3,
        )
    assert [r["stdout"] for r in results] == ["a\n"] * 3, [r["violations"] for r in results]
    assert max(r["total_time_ms"] for r in results) > 2500  # the last one queued behind two
