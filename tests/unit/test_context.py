"""Unit tests of ExecutionContext and CappedBuffer: capture, isolation, caps and events."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from datetime import datetime

import pytest

from orchestrator.context import CappedBuffer, ExecutionContext
from orchestrator.models import Event, Violation

VIOLATION = Violation(category="output", message="too much", detail={"n": 1})


def marker(cut: int, stream: str = "stdout") -> str:
    return f"\n[... athena-sandbox cut {cut} bytes of {stream} here ...]\n"


# --------------------------------------------------------------------------- CappedBuffer


def test_small_output_is_kept_untouched() -> None:
    """Output within the limit is kept whole, with nothing cut and no marker."""
    buf = CappedBuffer(100)
    buf.write(b"hello ")
    buf.write(b"world")
    assert buf.text("stdout") == "hello world"
    assert (buf.cut_bytes, buf.total_bytes) == (0, 11)


def test_output_at_the_limit_is_not_cut() -> None:
    """Exactly limit bytes are kept whole; one more byte is cut."""
    buf = CappedBuffer(10)
    buf.write(b"0123456789")
    assert buf.text("stdout") == "0123456789"
    buf.write(b"X")
    assert buf.text("stdout") == "01234" + marker(1) + "6789X"


def test_a_long_stream_keeps_head_and_tail_with_an_exact_marker() -> None:
    """Past the limit the first and last halves are kept and the cut is marked and counted."""
    buf = CappedBuffer(10)
    buf.write(b"0123456789ABCDEFGHIJ")
    assert buf.text("stderr") == "01234" + marker(10, "stderr") + "FGHIJ"
    assert (buf.cut_bytes, buf.total_bytes) == (10, 20)


def test_an_odd_limit_gives_the_extra_byte_to_the_head() -> None:
    """With an odd limit the head keeps the larger half."""
    buf = CappedBuffer(5)
    for byte in b"abcdefghij":
        buf.write(bytes([byte]))
    assert buf.text("stdout") == "abc" + marker(5) + "ij"
    assert (buf.cut_bytes, buf.total_bytes) == (5, 10)


def test_skip_adds_to_the_cut_and_the_total() -> None:
    """Bytes cut upstream (skip) count as cut and as part of the stream's total."""
    buf = CappedBuffer(10)
    buf.write(b"0123456789")
    buf.skip(1000)
    buf.write(b"WXYZ")
    assert buf.text("stdout") == "01234" + marker(1004) + "9WXYZ"
    assert (buf.cut_bytes, buf.total_bytes) == (1004, 1014)


def test_memory_stays_bounded_whatever_is_written() -> None:
    """50 MB written in 64 KiB chunks with a 1 KiB limit never holds more than ~2*limit+64 KiB."""
    limit = 1024
    buf = CappedBuffer(limit)
    chunk = b"0123456789abcdef" * 4096  # 64 KiB
    peak = 0
    for _ in range(50 * 1024 * 1024 // len(chunk)):
        buf.write(chunk)
        peak = max(peak, len(buf._head) + len(buf._tail))
    assert peak <= 2 * limit + 65536
    assert buf.total_bytes == 50 * 1024 * 1024
    cut = 50 * 1024 * 1024 - limit
    assert buf.cut_bytes == cut
    assert buf.text("stdout") == chunk[:512].decode() + marker(cut) + chunk[-512:].decode()


# --------------------------------------------------------------------------- capture


def test_start_and_stop_capture_print_in_this_thread() -> None:
    """Between start() and stop() print() goes to the context, not the terminal."""
    ctx = ExecutionContext().start()
    try:
        print("to stdout")
        print("to stderr", file=sys.stderr)
    finally:
        ctx.stop()
    assert ctx.get_stdout() == "to stdout\n"
    assert ctx.get_stderr() == "to stderr\n"


def test_output_after_stop_goes_to_the_real_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """After stop() print() reaches the real sys.stdout; the context keeps only its part."""
    ctx = ExecutionContext().start()
    print("inside")
    ctx.stop()
    print("outside")
    assert ctx.get_stdout() == "inside\n"
    assert capsys.readouterr().out == "outside\n"


def test_capture_io_false_captures_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """With capture_io=False print() is left alone and the context stays empty."""
    ctx = ExecutionContext(capture_io=False).start()
    print("not mine")
    ctx.stop()
    assert ctx.get_stdout() == ""
    assert capsys.readouterr().out == "not mine\n"


def test_nested_contexts_restore_the_outer_one() -> None:
    """Stopping an inner context sends output back to the outer context."""
    outer = ExecutionContext().start()
    try:
        print("a")
        inner = ExecutionContext().start()
        print("b")
        inner.stop()
        print("c")
    finally:
        outer.stop()
    assert (outer.get_stdout(), inner.get_stdout()) == ("a\nc\n", "b\n")


def test_two_threads_never_mix_their_output() -> None:
    """Two contexts started in two threads printing at the same time each get only their lines."""
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def work(name: str) -> None:
        ctx = ExecutionContext().start()
        try:
            barrier.wait(timeout=10)
            for index in range(200):
                print(f"{name}-{index}")
        finally:
            ctx.stop()
        results[name] = ctx.get_stdout()

    threads = [threading.Thread(target=work, args=(name,)) for name in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for name in ("left", "right"):
        assert results[name] == "".join(f"{name}-{i}\n" for i in range(200))


def test_two_asyncio_tasks_never_mix_their_output() -> None:
    """Two tasks, each starting its own context, interleave prints but never mix output."""

    async def work(name: str) -> str:
        ctx = ExecutionContext().start()
        try:
            for index in range(100):
                print(f"{name}-{index}")
                await asyncio.sleep(0)
        finally:
            ctx.stop()
        return ctx.get_stdout()

    async def both() -> list[str]:
        return list(await asyncio.gather(work("a"), work("b")))

    assert asyncio.run(both()) == [
        "".join(f"{name}-{i}\n" for i in range(100)) for name in ("a", "b")
    ]


def test_the_context_manager_records_the_exception() -> None:
    """Leaving a with-block by an exception records it, stops the clock and re-raises."""
    with pytest.raises(ZeroDivisionError), ExecutionContext() as ctx:
        print("before")
        _ = 1 / 0
    assert isinstance(ctx.exception, ZeroDivisionError)
    assert ctx.get_stdout() == "before\n"
    assert isinstance(ctx.ended_at, datetime)


def test_the_context_manager_without_exception_records_none() -> None:
    """A with-block that ends normally leaves exception None and sets both times."""
    with ExecutionContext() as ctx:
        pass
    assert ctx.exception is None
    assert ctx.started_at is not None
    assert ctx.ended_at is not None
    assert ctx.ended_at >= ctx.started_at


def test_elapsed_ms_is_zero_before_start_and_frozen_after_stop() -> None:
    """elapsed_ms() is 0 before start() and no longer grows after stop()."""
    ctx = ExecutionContext(capture_io=False)
    assert ctx.elapsed_ms() == 0.0
    ctx.start()
    ctx.stop()
    assert ctx.elapsed_ms() == ctx.elapsed_ms() >= 0.0


# --------------------------------------------------------------------------- state


def test_exec_globals_hold_parameters_and_json() -> None:
    """exec_globals offer a copy of the parameters and the json module, named __main__."""
    parameters = {"n": 3, "name": "x"}
    ctx = ExecutionContext(parameters=parameters)
    assert ctx.exec_globals == {"__name__": "__main__", "parameters": parameters, "json": json}
    parameters["n"] = 99
    exec("result = json.dumps(parameters['n'])", ctx.exec_globals)
    assert ctx.exec_globals["result"] == "3"
    assert ExecutionContext().exec_globals["parameters"] == {}


def test_to_dict_summarises_the_run() -> None:
    """to_dict gives every key with the run's values, JSON-ready."""
    ctx = ExecutionContext("run-1", "bash", 12.5, track_resources=True, capture_io=False)
    ctx.start()
    ctx.feed("stdout", b"out")
    ctx.feed("stderr", b"err")
    ctx.add_violation(VIOLATION)
    ctx.set_exception(RuntimeError("boom"))
    ctx.stop()
    summary = ctx.to_dict()
    assert summary == {
        "execution_id": "run-1",
        "language": "bash",
        "timeout_seconds": 12.5,
        "track_resources": True,
        "capture_io": False,
        "started_at": ctx.started_at.isoformat() if ctx.started_at else "",
        "ended_at": ctx.ended_at.isoformat() if ctx.ended_at else "",
        "duration_ms": ctx.elapsed_ms(),
        "stdout": "out",
        "stderr": "err",
        "violations": ["output: too much"],
        "exception": "RuntimeError('boom')",
    }
    assert summary["started_at"].endswith("+00:00")
    json.dumps(summary)


def test_to_dict_before_start_has_no_times() -> None:
    """A context never started has no start, end, exception or output."""
    summary = ExecutionContext("run-2").to_dict()
    assert (summary["started_at"], summary["ended_at"], summary["exception"]) == (None, None, None)
    assert (summary["duration_ms"], summary["stdout"], summary["violations"]) == (0.0, "", [])


def test_a_new_context_gets_a_unique_id() -> None:
    """Contexts built without an id each get a different one."""
    assert ExecutionContext().execution_id != ExecutionContext().execution_id


# --------------------------------------------------------------------------- events


def test_listeners_get_output_and_violation_events() -> None:
    """Subscribers receive stdout, stderr and violation events in order."""
    events: list[Event] = []
    ctx = ExecutionContext(capture_io=False)
    ctx.subscribe(events.append)
    ctx.start()
    ctx.feed("stdout", b"a")
    ctx.feed("stderr", b"b")
    ctx.add_violation(VIOLATION)
    ctx.stop()
    assert [(e.kind, e.text, e.violation) for e in events] == [
        ("stdout", "a", None),
        ("stderr", "b", None),
        ("violation", "", VIOLATION),
    ]
    assert ctx.violations == [VIOLATION]


def test_listeners_get_text_decoded_across_split_utf8() -> None:
    """A character split across two chunks reaches listeners once, whole."""
    texts: list[str] = []
    ctx = ExecutionContext(capture_io=False)
    ctx.subscribe(lambda event: texts.append(event.text))
    ctx.feed("stdout", b"\xc3")
    ctx.feed("stdout", b"\xa9!")
    assert "".join(texts) == "é!"
    assert ctx.get_stdout() == "é!"


def test_listeners_see_captured_prints() -> None:
    """print() inside a capturing context reaches subscribers as stdout events."""
    texts: list[str] = []
    ctx = ExecutionContext()
    ctx.subscribe(lambda event: texts.append(event.text))
    with ctx:
        print("live")
    assert "".join(texts) == "live\n"


def test_a_listener_that_prints_does_not_recurse(capsys: pytest.CaptureFixture[str]) -> None:
    """A listener that prints what it receives (live streaming) does not feed itself again."""
    ctx = ExecutionContext()
    ctx.subscribe(lambda event: print(f"live: {event.text}", end=""))
    with ctx:
        print("hi")
    assert ctx.get_stdout() == "hi\n"


def test_get_stdout_applies_the_cap() -> None:
    """get_stdout() returns head, marker and tail once output exceeds max_output_bytes."""
    ctx = ExecutionContext(capture_io=False, max_output_bytes=10)
    ctx.feed("stdout", b"0123456789ABCDEFGHIJ")
    assert ctx.max_output_bytes == 10
    assert ctx.get_stdout() == "01234" + marker(10) + "FGHIJ"
    assert ctx.cut_bytes("stdout") == (10, 20)
    assert ctx.cut_bytes("stderr") == (0, 0)


def test_mark_cut_counts_bytes_dropped_by_the_sandbox() -> None:
    """mark_cut records bytes the runner dropped, in the cut and total counts."""
    ctx = ExecutionContext(capture_io=False, max_output_bytes=10)
    ctx.feed("stderr", b"0123456789")
    ctx.mark_cut("stderr", 500)
    ctx.feed("stderr", b"XY")
    assert ctx.cut_bytes("stderr") == (502, 512)
    assert ctx.get_stderr() == "01234" + marker(502, "stderr") + "789XY"


def test_dispatch_calls_its_callbacks_once_before_the_begin_listeners() -> None:
    """on_dispatch callbacks run once, before any listener hears the begin event."""
    context = ExecutionContext()
    heard: list[str] = []
    context.on_dispatch(lambda: heard.append("dispatch"))
    context.subscribe(lambda event: heard.append(event.kind))
    context.dispatch()
    context.dispatch()
    context.emit(Event(kind="begin"))
    assert heard == ["dispatch", "begin"] and context.dispatched


def test_a_backend_that_never_dispatches_dispatches_at_its_begin_event() -> None:
    """Without an explicit dispatch, the begin event counts as the hand-over, heard first."""
    context = ExecutionContext()
    heard: list[str] = []
    context.subscribe(lambda event: heard.append(event.kind))
    context.on_dispatch(lambda: heard.append("dispatch"))
    context.emit(Event(kind="stdout", text="x"))
    assert heard == ["stdout"] and not context.dispatched
    context.emit(Event(kind="begin"))
    assert heard == ["stdout", "dispatch", "begin"]
