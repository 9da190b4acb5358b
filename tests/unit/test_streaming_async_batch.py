"""Unit tests of streaming, asyncio, batches and the run queue, on fake backends (no Docker)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from athena.api import MemoryAPI
from orchestrator.context import ExecutionContext
from orchestrator.errors import (
    BackendUnavailableError,
    PolicyError,
    PolicyNotFoundError,
    RequestError,
    RunCancelledError,
    SandboxFailedError,
    UnknownLanguageError,
)
from orchestrator.models import Event, ExecutionRequest, ExecutionResult, Isolation, Violation
from orchestrator.orchestrator import Orchestrator
from orchestrator.policy import load_policy
from orchestrator.run import CancelToken, RunOutcome, RunSpec
from orchestrator.settings import Settings
from orchestrator.testing import FakeBackend, FakeRun
from tests.contract import RESULT_KEYS


class BlockingBackend:
    """A backend whose runs of code starting with ``block`` print, then wait to be ended.

    Such a run ends with RunCancelledError ``wind_down`` seconds after its cancel token fires
    (as a sandbox takes a moment to die), or exits 0 after :meth:`release`. Other code exits 0
    at once.
    """

    name = "docker"

    def __init__(self, wind_down: float = 0.0, begin: bool = False) -> None:
        self.wind_down = wind_down
        self.begin = begin  # emit a begin event (with a sandbox id) first, as real sandboxes do
        self.requests: list[ExecutionRequest] = []
        self.started = threading.Event()  # a blocking run is waiting
        self.saw_cancel = threading.Event()
        self.closed = False
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._wakers: list[threading.Event] = []

    def unavailable_reason(self, language: str) -> str | None:
        return None

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        wake = threading.Event()
        with self._lock:
            self.requests.append(request)
            self._wakers.append(wake)
        if request.code.startswith("block"):
            if self.begin:
                context.emit(
                    Event(kind="begin", elapsed_ms=0.0, sandbox_id=f"fake-{len(self.requests)}")
                )
            context.feed("stdout", b"working\n")
            spec.cancel.on_cancel(wake.set)
            self.started.set()
            if self._released.is_set():
                wake.set()
            wake.wait(10)
            if spec.cancel.cancelled:
                self.saw_cancel.set()
                time.sleep(self.wind_down)
                raise RunCancelledError("the run was cancelled; its sandbox was killed")
        return RunOutcome(
            isolation=Isolation(mode="docker", runtime="fake", path="fake"),
            started=True,
            exit_code=0,
            run_ms=1.0,
            sandbox_id="blocker",
        )

    def release(self) -> None:
        """Let every blocking run (now or later) exit 0."""
        self._released.set()
        with self._lock:
            for wake in self._wakers:
                wake.set()

    def close(self) -> None:
        self.closed = True
        self.release()


@dataclass
class ListRecorder:
    """A recorder keeping what it is given."""

    results: list[ExecutionResult] = field(default_factory=list)

    def record_execution(
        self, request: ExecutionRequest, result: ExecutionResult, events: Sequence[Event] = ()
    ) -> int:
        self.results.append(result)
        return len(self.results)


def request(
    code: str = "print(2 + 2)", policy: str | None = None, **kwargs: Any
) -> ExecutionRequest:
    return ExecutionRequest.create(code, policy=load_policy(policy), **kwargs)


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Start ``target`` in a thread; the list receives its return value."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(target()))
    thread.start()
    return thread, out


@pytest.fixture(autouse=True)
def _joins_its_threads() -> Iterator[None]:
    """Fail a test that leaves a thread of its own running."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not left, f"threads left running: {left}"


@pytest.fixture
def make_orch(tmp_path: Path) -> Iterator[Callable[..., Orchestrator]]:
    """Build orchestrators over one backend with Settings(project_dir=tmp_path, ...); close them."""
    made: list[Orchestrator] = []

    def make(backend: Any, recorder: Any = None, **settings: Any) -> Orchestrator:
        orch = Orchestrator(
            settings=Settings(**{"project_dir": tmp_path, **settings}),
            backends=[backend],
            recorder=recorder,
        )
        made.append(orch)
        return orch

    yield make
    for orch in made:
        orch.close()


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[Callable[..., MemoryAPI]]:
    """Build MemoryAPIs on a store in tmp_path over one backend; close them afterwards."""
    made: list[MemoryAPI] = []

    def make(backend: Any, **settings: Any) -> MemoryAPI:
        api = MemoryAPI.create(
            tmp_path / f"m{len(made)}.db",
            settings=Settings(**{"project_dir": tmp_path, **settings}),
            backends=[backend],
        )
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


# --------------------------------------------------------------------------- stream


def test_stream_yields_output_events_then_an_exit_event_with_the_result(
    make_orch: Callable[..., Orchestrator],
) -> None:
    """stream() yields stdout and stderr chunks, then one exit event carrying the result."""
    orch = make_orch(FakeBackend(FakeRun(stdout="out", stderr="err", exit_code=3)))
    req = request()
    events = list(orch.stream(req))
    assert [(e.kind, e.text) for e in events] == [
        ("stdout", "out"),
        ("stderr", "err"),
        ("exit", ""),
    ]
    last = events[-1]
    assert isinstance(last.result, ExecutionResult)
    assert (last.exit_code, last.result.exit_code) == (3, 3)
    assert (last.result.execution_id, last.result.stdout, last.result.stderr) == (
        req.execution_id,
        "out",
        "err",
    )


def test_closing_a_stream_early_cancels_the_run(
    make_orch: Callable[..., Orchestrator],
) -> None:
    """Closing the generator after the first event cancels the run and returns promptly."""
    backend = BlockingBackend(wind_down=0.05)
    recorder = ListRecorder()
    orch = make_orch(backend, recorder)
    stream = orch.stream(request("block()"))
    first = next(stream)
    assert (first.kind, first.text) == ("stdout", "working\n")
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 1.0
    assert backend.saw_cancel.is_set()
    (result,) = recorder.results  # recorded before close() returned
    assert (result.success, result.error_type) == (False, "RunCancelledError")


def test_closing_the_api_stream_early_records_a_cancelled_run(
    make_api: Callable[..., MemoryAPI],
) -> None:
    """Closing execute_code_stream early kills the run; the store has it as RunCancelledError."""
    backend = BlockingBackend(wind_down=0.05)
    api = make_api(backend)
    stream = api.execute_code_stream("block()")
    first = next(stream)
    assert (set(first), first["type"], first["text"]) == (
        {"type", "elapsed_ms", "text"},
        "stdout",
        "working\n",
    )
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 1.0
    assert backend.saw_cancel.is_set()
    record = api.store.get_execution(backend.requests[0].execution_id)
    assert record is not None
    assert (record.success, record.error_type) == (False, "RunCancelledError")


def test_the_api_stream_yields_plain_dicts_ending_with_the_execute_code_dict(
    make_api: Callable[..., MemoryAPI],
) -> None:
    """execute_code_stream yields JSON-ready dicts with type; the last has execute_code's dict."""
    api = make_api(FakeBackend(FakeRun(stdout="4\n", stderr="warn\n")))
    events = list(api.execute_code_stream("print(4)"))
    assert all(type(e) is dict for e in events)
    json.dumps(events)
    assert [e["type"] for e in events] == ["stdout", "stderr", "exit"]
    assert [e.get("text") for e in events[:2]] == ["4\n", "warn\n"]
    last = events[-1]
    assert last["exit_code"] == 0
    assert set(last["result"]) == RESULT_KEYS
    assert set(last["result"]) == set(api.execute_code("print(4)"))
    assert (last["result"]["success"], last["result"]["stdout"]) == (True, "4\n")


def test_a_bad_stream_call_raises_before_anything_runs(
    make_api: Callable[..., MemoryAPI],
) -> None:
    """execute_code_stream raises RequestError when called, before any run starts."""
    backend = FakeBackend()
    api = make_api(backend)
    with pytest.raises(UnknownLanguageError):
        api.execute_code_stream("x", language="cobol")
    assert backend.requests == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_stream_whose_policy_cannot_be_used_raises_policy_error(
    make_orch: Callable[..., Orchestrator], tmp_path: Path
) -> None:
    """A stream whose policy mounts a missing project directory raises PolicyError."""
    orch = make_orch(FakeBackend(), project_dir=tmp_path / "missing")
    with pytest.raises(PolicyError, match="does not exist"):
        list(orch.stream(request(policy="development")))


# --------------------------------------------------------------------------- asyncio


def test_arun_returns_the_result(make_orch: Callable[..., Orchestrator]) -> None:
    """arun() runs the request off the event loop and returns its result."""
    orch = make_orch(FakeBackend(FakeRun(stdout="4\n")))
    result = asyncio.run(orch.arun(request()))
    assert (result.success, result.stdout) == (True, "4\n")


def test_arun_passes_events_to_on_event(make_orch: Callable[..., Orchestrator]) -> None:
    """arun(on_event=...) gets the output chunks and the exit event."""
    events: list[Event] = []
    orch = make_orch(FakeBackend(FakeRun(stdout="4\n")))
    asyncio.run(orch.arun(request(), on_event=events.append))
    assert [e.kind for e in events] == ["stdout", "exit"]


async def cancel_when_started(
    awaitable: Any, backend: BlockingBackend, recorded: Callable[[], bool] = lambda: True
) -> None:
    """Await ``awaitable`` in a task, cancel it once the backend runs; expect CancelledError.

    ``recorded`` must already hold when the CancelledError arrives.
    """
    task = asyncio.ensure_future(awaitable)
    assert await asyncio.to_thread(backend.started.wait, 2)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert recorded()
    assert time.monotonic() - started < 1.0


def test_cancelling_the_task_awaiting_arun_kills_and_records_the_run(
    make_orch: Callable[..., Orchestrator],
) -> None:
    """Cancelling arun's task cancels the run (the backend sees it); the run is recorded."""
    backend = BlockingBackend(wind_down=0.05)
    recorder = ListRecorder()
    orch = make_orch(backend, recorder)
    asyncio.run(
        cancel_when_started(orch.arun(request("block()")), backend, lambda: bool(recorder.results))
    )
    assert backend.saw_cancel.is_set()
    (result,) = recorder.results
    assert (result.success, result.error_type) == (False, "RunCancelledError")


async def cancelled_twice(
    work: Coroutine[Any, Any, Any], backend: BlockingBackend, done: Callable[[], bool]
) -> bool:
    """Cancel ``work`` once its run started, and again while it waits for the killed run;
    return what ``done()`` says the moment ``work`` has given up."""
    task = asyncio.ensure_future(work)
    assert await asyncio.to_thread(backend.started.wait, 2)
    task.cancel()
    await asyncio.sleep(0.05)  # it now waits for the killed run
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return done()


def test_cancelling_arun_twice_still_waits_until_the_run_is_recorded(
    make_orch: Callable[..., Orchestrator],
) -> None:
    """A second cancel while arun waits for the killed run does not cut that wait short."""
    backend = BlockingBackend(wind_down=0.2)
    recorder = ListRecorder()
    orch = make_orch(backend, recorder)

    work = orch.arun(request("block()"))
    recorded = asyncio.run(cancelled_twice(work, backend, lambda: bool(recorder.results)))
    assert recorded, "arun returned before the run was recorded"


def test_cancelling_the_task_awaiting_execute_code_async_kills_and_records_the_run(
    make_api: Callable[..., MemoryAPI],
) -> None:
    """Cancelling execute_code_async's task kills the run; the store has it as cancelled."""
    backend = BlockingBackend(wind_down=0.05, begin=True)
    api = make_api(backend)

    def recorded() -> bool:
        return api.store.get_execution(backend.requests[0].execution_id) is not None

    asyncio.run(cancel_when_started(api.execute_code_async("block()"), backend, recorded))
    assert backend.saw_cancel.is_set()
    record = api.store.get_execution(backend.requests[0].execution_id)
    assert record is not None
    assert (record.success, record.error_type) == (False, "RunCancelledError")
    # It began in a sandbox before it was killed: the result says which, as a finished run's does.
    recorded = api.get_execution(backend.requests[0].execution_id)
    assert recorded is not None
    assert (recorded["result"]["sandbox_mode"], recorded["result"]["sandbox_id"]) == (
        "docker",
        "fake-1",
    )


def test_execute_code_batch_async_returns_dicts_in_order_like_the_sync_batch(
    make_api: Callable[..., MemoryAPI],
) -> None:
    """The async batch gives the sync batch's dicts, in the calls' order."""
    api = make_api(FakeBackend(FakeRun(stdout="4\n")))
    calls = [{"code": f"print({n})"} for n in range(5)]
    results = asyncio.run(api.execute_code_batch_async(calls, concurrency=2))
    assert [r["stdout"] for r in results] == ["4\n"] * 5
    assert [set(r) for r in results] == [set(api.execute_code("1"))] * 5


def test_a_bad_async_batch_call_or_concurrency_raises_before_anything_runs(
    make_api: Callable[..., MemoryAPI],
) -> None:
    """A bad call (named by index) or a concurrency below 1 is a RequestError; nothing runs."""
    backend = FakeBackend(FakeRun())
    api = make_api(backend)
    with pytest.raises(RequestError, match=r"calls\[1\]"):
        asyncio.run(api.execute_code_batch_async([{"code": "1"}, {"code": 1}]))
    with pytest.raises(RequestError, match="concurrency"):
        asyncio.run(api.execute_code_batch_async([{"code": "1"}], concurrency=0))
    assert backend.requests == []


def test_cancelling_an_async_batch_kills_its_runs_and_starts_no_more(
    make_api: Callable[..., MemoryAPI],
) -> None:
    """Cancelling the batch's task kills the run going and never starts the queued ones."""
    backend = BlockingBackend(wind_down=0.05)
    api = make_api(backend)
    calls = [{"code": "block()"} for _ in range(3)]

    def recorded() -> bool:
        return api.store.get_execution(backend.requests[0].execution_id) is not None

    asyncio.run(cancel_when_started(api.execute_code_batch_async(calls, 1), backend, recorded))
    assert backend.saw_cancel.is_set()
    assert len(backend.requests) == 1  # the two others never started


def test_a_second_cancel_does_not_cut_short_an_async_batchs_wait_for_its_killed_runs(
    make_api: Callable[..., MemoryAPI],
) -> None:
    """Cancelled twice (the client leaves, then the drain kills): the runs are still recorded."""
    backend = BlockingBackend(wind_down=0.2)
    api = make_api(backend)
    calls = [{"code": "block()"} for _ in range(2)]

    def all_recorded() -> bool:
        found = [api.store.get_execution(r.execution_id) for r in backend.requests]
        return bool(found) and all(r is not None for r in found)

    work = api.execute_code_batch_async(calls, 2)
    recorded = asyncio.run(cancelled_twice(work, backend, all_recorded))
    assert recorded, "the batch returned before its runs were recorded"


def test_execute_code_async_returns_the_execute_code_dict(
    make_api: Callable[..., MemoryAPI],
) -> None:
    """execute_code_async returns the same dict as execute_code."""
    api = make_api(FakeBackend(FakeRun(stdout="4\n")))
    result = asyncio.run(api.execute_code_async("print(4)"))
    assert set(result) == RESULT_KEYS
    assert (result["success"], result["stdout"]) == (True, "4\n")


def test_aexecute_turns_a_run_error_into_a_failed_result(
    make_orch: Callable[..., Orchestrator],
) -> None:
    """aexecute returns the failed result of a RunError that arun raises."""
    orch = make_orch(FakeBackend(FakeRun(error=BackendUnavailableError("no engine"))))
    result = asyncio.run(orch.aexecute(request()))
    assert (result.success, result.error_type, result.error) == (
        False,
        "BackendUnavailableError",
        "no engine",
    )
    with pytest.raises(BackendUnavailableError) as caught:
        asyncio.run(orch.arun(request()))
    assert caught.value.result is not None
    assert caught.value.result.error_type == "BackendUnavailableError"


def test_cancelling_arun_logs_no_asyncio_error(
    make_orch: Callable[..., Orchestrator], caplog: pytest.LogCaptureFixture
) -> None:
    """A cancelled arun leaves no 'exception was never retrieved' error in the asyncio log."""
    backend = BlockingBackend()
    orch = make_orch(backend)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(cancel_when_started(orch.arun(request("block()")), backend))
        gc.collect()
    assert backend.saw_cancel.is_set()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_arun_on_a_closed_orchestrator_leaves_no_thread(
    make_orch: Callable[..., Orchestrator],
) -> None:
    """arun after close() raises SandboxFailedError and starts no worker thread."""
    orch = make_orch(FakeBackend())
    orch.close()
    before = set(threading.enumerate())
    try:
        with pytest.raises(SandboxFailedError, match="closed"):
            asyncio.run(orch.arun(request()))
        assert not {t for t in set(threading.enumerate()) - before if "athena-async" in t.name}
    finally:
        leaked = orch._executor
        if leaked is not None:
            leaked.shutdown(wait=True)


# --------------------------------------------------------------------------- run_many


def test_run_many_returns_results_in_request_order(
    make_orch: Callable[..., Orchestrator],
) -> None:
    """Results come back in request order even when later requests finish first."""
    delays = {"print(0)": 0.15, "print(1)": 0.08, "print(2)": 0.0, "print(3)": 0.0}
    finished: list[str] = []
    lock = threading.Lock()

    def script(req: ExecutionRequest) -> FakeRun:
        time.sleep(delays[req.code])
        with lock:
            finished.append(req.code)
        return FakeRun(stdout=req.code)

    orch = make_orch(FakeBackend(script))
    results = orch.run_many([request(code) for code in delays], concurrency=4)
    assert [r.stdout for r in results] == list(delays)
    assert finished[-1] == "print(0)"  # the first request finished last


def test_run_many_never_runs_more_than_concurrency_at_once(
    make_orch: Callable[..., Orchestrator],
) -> None:
    """With concurrency=2, at most (and at some point exactly) two runs are in the backend."""
    lock = threading.Lock()
    inside = most = 0

    def script(req: ExecutionRequest) -> FakeRun:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.03)
        with lock:
            inside -= 1
        return FakeRun(stdout=req.code)

    backend = FakeBackend(script)
    orch = make_orch(backend, max_concurrent_runs=8)
    results = orch.run_many([request(f"print({i})") for i in range(6)], concurrency=2)
    assert most == 2
    assert [r.stdout for r in results] == [f"print({i})" for i in range(6)]


def test_run_many_gives_failed_results_for_runs_that_could_not_happen(
    make_orch: Callable[..., Orchestrator],
) -> None:
    """A RunError in one request gives its failed result in place; the others succeed."""

    def script(req: ExecutionRequest) -> FakeRun:
        if req.code == "print(1)":
            return FakeRun(error=SandboxFailedError("runner lost"))
        return FakeRun(stdout="ok")

    orch = make_orch(FakeBackend(script))
    results = orch.run_many([request(f"print({i})") for i in range(3)])
    assert [(r.success, r.error_type) for r in results] == [
        (True, None),
        (False, "SandboxFailedError"),
        (True, None),
    ]


@pytest.mark.parametrize("concurrency", [0, -1])
def test_run_many_refuses_a_concurrency_below_one(
    make_orch: Callable[..., Orchestrator], concurrency: int
) -> None:
    """run_many(concurrency < 1) raises ValueError and runs nothing."""
    backend = FakeBackend()
    orch = make_orch(backend)
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        orch.run_many([request()], concurrency=concurrency)
    assert backend.requests == []


# --------------------------------------------------------------------------- the queue


def test_a_full_queue_gives_a_queue_full_result(make_orch: Callable[..., Orchestrator]) -> None:
    """With one run in flight, no queue and 0.2 s of queue wait, a second run gets queue full."""
    backend = BlockingBackend()
    orch = make_orch(backend, max_concurrent_runs=1, max_queued_runs=0, queue_wait_seconds=0.2)
    first, out = in_thread(lambda: orch.execute(request("block()")))
    assert backend.started.wait(2)
    started = time.monotonic()
    second = orch.execute(request("print(2)"))
    assert 0.15 <= time.monotonic() - started < 1.5
    assert second.success is False
    assert second.error is not None and second.error.startswith("queue full")
    assert second.error_type == "QueueFullError"
    assert len(backend.requests) == 1  # the second never reached the backend
    backend.release()
    first.join(2)
    assert out[0].success is True


def test_a_queued_run_waits_and_succeeds_once_the_first_finishes(
    make_orch: Callable[..., Orchestrator],
) -> None:
    """With a queue place, a second run waits (longer than queue_wait) and then succeeds."""
    backend = BlockingBackend()
    orch = make_orch(backend, max_concurrent_runs=1, max_queued_runs=1, queue_wait_seconds=0.05)
    first, first_out = in_thread(lambda: orch.execute(request("block()")))
    assert backend.started.wait(2)
    second, second_out = in_thread(lambda: orch.execute(request("print(2)")))
    second.join(0.15)
    assert second.is_alive()
    assert len(backend.requests) == 1
    backend.release()
    first.join(2)
    second.join(2)
    assert (first_out[0].success, second_out[0].success) == (True, True)
    assert [r.code for r in backend.requests] == ["block()", "print(2)"]


def test_cancelling_a_queued_run_records_it_as_cancelled(
    make_orch: Callable[..., Orchestrator],
) -> None:
    """A run cancelled while it waits in the queue never reaches the backend; it is cancelled."""
    backend = BlockingBackend()
    orch = make_orch(backend, max_concurrent_runs=1, max_queued_runs=1, queue_wait_seconds=5)
    first, _ = in_thread(lambda: orch.execute(request("block()")))
    assert backend.started.wait(2)
    token = CancelToken()
    second, out = in_thread(lambda: orch.execute(request("print(2)"), cancel=token))
    time.sleep(0.02)
    token.cancel()
    second.join(1)
    assert not second.is_alive()
    assert (out[0].success, out[0].error_type) == (False, "RunCancelledError")
    assert len(backend.requests) == 1
    backend.release()
    first.join(2)


# --------------------------------------------------------------------------- MemoryAPI


def test_execute_code_passes_output_chunks_to_its_callbacks(
    make_api: Callable[..., MemoryAPI],
) -> None:
    """execute_code(on_stdout=..., on_stderr=...) gets each stream's chunks as they arrive."""
    api = make_api(FakeBackend(FakeRun(stdout="out\n", stderr="err\n")))
    out: list[str] = []
    err: list[str] = []
    result = api.execute_code("print(1)", on_stdout=out.append, on_stderr=err.append)
    assert (out, err) == (["out\n"], ["err\n"])
    assert result["stdout"] == "out\n"
    only_out: list[str] = []
    api.execute_code("print(1)", on_stdout=only_out.append)
    assert only_out == ["out\n"]


def test_execute_code_batch_returns_dicts_in_order(make_api: Callable[..., MemoryAPI]) -> None:
    """execute_code_batch returns one execute_code dict per call, in the calls' order."""
    backend = FakeBackend(lambda req: FakeRun(stdout=req.code))
    api = make_api(backend)
    calls = [
        {"code": "print(0)"},
        {"code": "echo 1", "language": "bash"},
        {"code": "console.log(2)", "language": "javascript", "parameters": {"n": 2}},
        {"code": "print(3)", "timeout_seconds": 5, "record": False},
    ]
    results = api.execute_code_batch(calls, concurrency=2)
    assert all(set(r) == RESULT_KEYS for r in results)
    assert [(r["stdout"], r["language"]) for r in results] == [
        ("print(0)", "python"),
        ("echo 1", "bash"),
        ("console.log(2)", "javascript"),
        ("print(3)", "python"),
    ]
    assert results[3]["timeout_seconds"] == 5.0
    assert api.store.get_execution(results[0]["execution_id"]) is not None
    assert api.store.get_execution(results[3]["execution_id"]) is None


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ({"code": "x", "language": "cobol"}, UnknownLanguageError, "cobol"),
        ({"language": "python"}, RequestError, "a call needs 'code'"),
        ({"code": "x", "colour": "red"}, RequestError, "unknown: colour"),
        ({"code": "x", "timeout_seconds": 0}, RequestError, "timeout_seconds"),
        ({"code": "x", "sandbox_policy": "no-such-policy"}, PolicyNotFoundError, "no-such-policy"),
    ],
)
def test_a_bad_call_in_a_batch_names_its_index_and_nothing_runs(
    make_api: Callable[..., MemoryAPI],
    bad: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    """A bad calls[2] raises (its own error type) naming calls[2], before any call runs."""
    backend = FakeBackend()
    api = make_api(backend)
    calls = [{"code": "print(0)"}, {"code": "print(1)"}, bad, {"code": "print(3)"}]
    with pytest.raises(error) as caught:
        api.execute_code_batch(calls)
    assert str(caught.value).startswith("calls[2]: ")
    assert message in str(caught.value)
    assert backend.requests == []
    assert api.store.list_executions() == []


def test_a_batch_call_whose_mounts_cannot_be_used_fails_before_anything_runs(
    make_api: Callable[..., MemoryAPI], tmp_path: Path
) -> None:
    """A call whose policy cannot mount the project directory fails the batch before any run."""
    backend = FakeBackend()
    api = make_api(backend, project_dir=tmp_path / "missing")
    calls = [{"code": "print(0)"}, {"code": "print(1)", "sandbox_policy": "development"}]
    with pytest.raises(PolicyError, match=r"calls\[1\]"):
        api.execute_code_batch(calls, concurrency=1)
    assert backend.requests == []


# --------------------------------------------------------------------------- Event.to_dict


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            Event(kind="begin", sandbox_id="abc123", elapsed_ms=1.23456),
            {"type": "begin", "elapsed_ms": 1.235, "sandbox_id": "abc123"},
        ),
        (
            Event(kind="stdout", text="hi\n", elapsed_ms=2.0),
            {"type": "stdout", "elapsed_ms": 2.0, "text": "hi\n"},
        ),
        (
            Event(kind="stderr", text="oops\n"),
            {"type": "stderr", "elapsed_ms": 0.0, "text": "oops\n"},
        ),
        (
            Event(
                kind="violation",
                violation=Violation(category="timeout", message="too slow", detail={"limit_s": 1}),
                elapsed_ms=3.0,
            ),
            {
                "type": "violation",
                "elapsed_ms": 3.0,
                "violation": "timeout: too slow",
                "detail": {"category": "timeout", "message": "too slow", "detail": {"limit_s": 1}},
            },
        ),
    ],
)
def test_event_to_dict_gives_each_kind_its_fields(event: Event, expected: dict[str, Any]) -> None:
    """Each event kind's dict has type, elapsed_ms (3 decimals) and only what the kind carries."""
    assert event.to_dict() == expected


def test_the_exit_event_dict_carries_the_exit_code_and_the_result_dict(
    make_orch: Callable[..., Orchestrator],
) -> None:
    """The exit event's dict has exit_code and result equal to the result's to_dict()."""
    events: list[Event] = []
    orch = make_orch(FakeBackend(FakeRun(stdout="x", exit_code=2)))
    result = orch.run(request(), on_event=events.append)
    exit_dict = events[-1].to_dict()
    assert set(exit_dict) == {"type", "elapsed_ms", "exit_code", "result"}
    assert (exit_dict["type"], exit_dict["exit_code"]) == ("exit", 2)
    assert exit_dict["result"] == result.to_dict()
    assert Event(kind="exit", exit_code=-1).to_dict() == {
        "type": "exit",
        "elapsed_ms": 0.0,
        "exit_code": -1,
        "result": None,
    }


def test_execute_on_a_closed_orchestrator_returns_a_failed_result(
    make_orch: Callable[..., Orchestrator],
) -> None:
    """After close(), execute gives success False with an error instead of raising."""
    orchestrator = make_orch(FakeBackend())
    orchestrator.close()
    result = orchestrator.execute(ExecutionRequest.create("print(1)"))
    assert not result.success and result.error_type == "SandboxFailedError"
    assert "closed" in (result.error or "")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (5, "a call must be a dict"),
        ({"code": "x", "record": "false"}, "'record' must be true or false"),
    ],
)
def test_batch_calls_of_the_wrong_shape_name_their_index(
    make_api: Callable[..., MemoryAPI], call: Any, message: str
) -> None:
    """A batch call that is not a dict, or a flag that is not a bool, is refused with its index."""
    backend = FakeBackend()
    api = make_api(backend)
    with pytest.raises(RequestError, match=rf"calls\[1\]: {message}"):
        api.execute_code_batch([{"code": "print(1)"}, call])
    assert backend.requests == []


def test_a_failing_cancel_callback_does_not_stop_the_others() -> None:
    """Every cancel callback runs even when an earlier one raises."""
    token = CancelToken()
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    token.on_cancel(broken)
    token.on_cancel(lambda: ran.append("second"))
    token.cancel()
    assert ran == ["second"] and token.cancelled
