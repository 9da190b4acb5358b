"""ExecutionContext: the live record of one run's output, violations and timing.

Backends feed a context as output arrives (the Docker backend chunk by chunk, not after the
container exits). For trusted in-process use, a context also captures what the *current thread
or asyncio task* writes to ``sys.stdout``/``sys.stderr`` between ``start()`` and ``stop()``:
writes are routed through a context variable, so two contexts in two threads never mix.

Output is kept within ``max_output_bytes`` per stream: the head and the tail are kept, the middle
is cut and the cut is marked, so memory stays bounded whatever the code prints.
"""

from __future__ import annotations

import codecs
import contextvars
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from orchestrator.models import Event, Violation

Stream = Literal["stdout", "stderr"]
Listener = Callable[[Event], None]

_current: contextvars.ContextVar[ExecutionContext | None] = contextvars.ContextVar(
    "athena_execution_context", default=None
)
_install_lock = threading.Lock()


class CappedBuffer:
    """Bytes of one stream, kept within a limit: the head and the tail, with the cut counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._head_limit = limit - limit // 2
        self._tail_limit = limit // 2
        self._head = bytearray()
        self._tail = bytearray()
        self._trimmed = 0
        self._skipped = 0

    def write(self, data: bytes) -> None:
        """Append bytes; whatever no longer fits in head or tail is cut from the middle."""
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        self._tail += data
        # Trim in batches so a flood costs amortised O(1) per byte.
        if len(self._tail) > 2 * self._tail_limit + 65536:
            self._trim()

    def skip(self, count: int) -> None:
        """Record that ``count`` bytes were cut upstream (by the sandbox's runner) at this point."""
        self._skipped += count

    def _trim(self) -> None:
        excess = len(self._tail) - self._tail_limit
        if excess > 0:
            del self._tail[:excess]
            self._trimmed += excess

    @property
    def cut_bytes(self) -> int:
        """How many bytes were cut from the middle."""
        self._trim()
        return self._trimmed + self._skipped

    @property
    def total_bytes(self) -> int:
        """How many bytes the stream had in all, cut ones included."""
        return len(self._head) + len(self._tail) + self.cut_bytes

    def text(self, stream: str) -> str:
        """Return the kept text, with a marker where the middle was cut."""
        cut = self.cut_bytes
        head = self._head.decode("utf-8", errors="replace")
        if not cut:
            return head + self._tail.decode("utf-8", errors="replace")
        marker = f"\n[... athena-sandbox cut {cut} bytes of {stream} here ...]\n"
        return head + marker + self._tail.decode("utf-8", errors="replace")


class _StreamProxy:
    """Stands in for sys.stdout/sys.stderr and routes writes to the current context, if any."""

    def __init__(self, original: TextIO, stream: Stream) -> None:
        self._original = original
        self._stream: Stream = stream

    def write(self, text: str) -> int:
        context = _current.get()
        if context is None or not context.capture_io:
            return self._original.write(text)
        context.feed(self._stream, text.encode("utf-8", errors="replace"))
        return len(text)

    def flush(self) -> None:
        if _current.get() is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def install_capture() -> None:
    """Put the routing proxies on sys.stdout and sys.stderr now (start() does it on demand)."""
    _install_proxies()


def _install_proxies() -> None:
    with _install_lock:
        if not isinstance(sys.stdout, _StreamProxy):
            sys.stdout = _StreamProxy(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _StreamProxy):
            sys.stderr = _StreamProxy(sys.stderr, "stderr")


class ExecutionContext:
    """The live record of one run.

    Args:
        execution_id: id of the run (a new one when None).
        language: canonical language name.
        timeout_seconds: the run's timeout, for the record.
        track_resources: whether resource figures were asked for.
        capture_io: capture this thread's/task's sys.stdout and sys.stderr between start/stop.
        max_output_bytes: per-stream cap; head and tail are kept.
        parameters: the parameters, offered in ``exec_globals`` for in-process runs.
    """

    def __init__(
        self,
        execution_id: str | None = None,
        language: str = "python",
        timeout_seconds: float = 30.0,
        track_resources: bool = False,
        capture_io: bool = True,
        *,
        max_output_bytes: int = 1024 * 1024,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        self.execution_id = execution_id or uuid.uuid4().hex
        self.language = language
        self.timeout_seconds = timeout_seconds
        self.track_resources = track_resources
        self.capture_io = capture_io
        self.violations: list[Violation] = []
        self.exception: BaseException | None = None
        self.exec_globals: dict[str, Any] = {
            "__name__": "__main__",
            "parameters": dict(parameters or {}),
            "json": json,
        }
        self.started_at: datetime | None = None
        self.ended_at: datetime | None = None
        self._t0: float | None = None
        self._t1: float | None = None
        self._lock = threading.Lock()
        self._buffers = {s: CappedBuffer(max_output_bytes) for s in ("stdout", "stderr")}
        self._decoders = {
            s: codecs.getincrementaldecoder("utf-8")("replace") for s in self._buffers
        }
        self._listeners: list[Listener] = []
        self._token: contextvars.Token[ExecutionContext | None] | None = None
        self.begin: Event | None = None  # the begin event, once the code has started
        self._on_dispatch: list[Callable[[], None]] = []
        self.dispatched = False  # the code was handed to its sandbox

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ExecutionContext:
        """Start the clock and, with ``capture_io``, capture this thread's/task's output."""
        self.started_at = datetime.now(UTC)
        self._t0 = time.perf_counter()
        if self.capture_io:
            _install_proxies()
            self._token = _current.set(self)
        return self

    def stop(self) -> None:
        """Stop the clock and the capture. Call it in the thread or task that called start()."""
        if self._t1 is None:
            self._t1 = time.perf_counter()
            self.ended_at = datetime.now(UTC)
        if self._token is not None:
            try:
                _current.reset(self._token)
            except ValueError:  # stopped from another context: just stop routing here
                _current.set(None)
            self._token = None

    def __enter__(self) -> ExecutionContext:
        return self.start()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.set_exception(exc)
        self.stop()

    def set_exception(self, exc: BaseException) -> None:
        """Record the exception that ended the run."""
        self.exception = exc

    # ------------------------------------------------------------------ feeding

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with every later event (stdout/stderr chunks, violations, ...)."""
        with self._lock:
            self._listeners.append(listener)

    def on_dispatch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, just before the code is handed to its sandbox.

        The run waits for it to return: a caller that must know, for certain, whether code
        could have started (the service tells its clients, so a run is retried elsewhere only
        if it never started) acts on it there.
        """
        self._on_dispatch.append(callback)

    def dispatch(self) -> None:
        """Say the code is about to be handed to its sandbox (backends; idempotent).

        A backend that does not say so is taken to have handed it over at its ``begin``
        event, before the event's listeners hear of it.
        """
        if self.dispatched:
            return
        self.dispatched = True
        if not self._on_dispatch:
            return
        token = _current.set(None)
        try:
            for callback in self._on_dispatch:
                callback()
        finally:
            _current.reset(token)

    def elapsed_ms(self) -> float:
        """Milliseconds since start() (0 before it)."""
        if self._t0 is None:
            return 0.0
        return ((self._t1 or time.perf_counter()) - self._t0) * 1000.0

    def emit(self, event: Event) -> None:
        """Pass an event to the listeners.

        Listeners run with capture off, so a listener that prints what it receives writes to
        the real stdout instead of feeding the context (and itself) again.
        """
        if event.kind == "begin":
            self.begin = event
            self.dispatch()
        if not self._listeners:
            return
        token = _current.set(None)
        try:
            for listener in list(self._listeners):
                listener(event)
        finally:
            _current.reset(token)

    def feed(self, stream: Stream, data: bytes) -> None:
        """Take a chunk of the code's output as it arrives."""
        with self._lock:
            self._buffers[stream].write(data)
            text = self._decoders[stream].decode(data)
        if text and self._listeners:
            self.emit(Event(kind=stream, text=text, elapsed_ms=self.elapsed_ms()))

    def mark_cut(self, stream: Stream, count: int) -> None:
        """Record that the sandbox dropped ``count`` bytes of a stream at this point."""
        with self._lock:
            self._buffers[stream].skip(count)

    def add_violation(self, violation: Violation) -> None:
        """Record a violation and pass it to the listeners."""
        with self._lock:
            self.violations.append(violation)
        self.emit(Event(kind="violation", violation=violation, elapsed_ms=self.elapsed_ms()))

    # ------------------------------------------------------------------ reading

    def get_stdout(self) -> str:
        """Return the captured stdout (head and tail when it was cut)."""
        with self._lock:
            return self._buffers["stdout"].text("stdout")

    def get_stderr(self) -> str:
        """Return the captured stderr (head and tail when it was cut)."""
        with self._lock:
            return self._buffers["stderr"].text("stderr")

    def cut_bytes(self, stream: Stream) -> tuple[int, int]:
        """Return (bytes cut, bytes in all) for a stream."""
        with self._lock:
            buffer = self._buffers[stream]
            return buffer.cut_bytes, buffer.total_bytes

    @property
    def max_output_bytes(self) -> int:
        """The per-stream cap."""
        return self._buffers["stdout"].limit

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary of the context."""
        return {
            "execution_id": self.execution_id,
            "language": self.language,
            "timeout_seconds": self.timeout_seconds,
            "track_resources": self.track_resources,
            "capture_io": self.capture_io,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "duration_ms": self.elapsed_ms(),
            "stdout": self.get_stdout(),
            "stderr": self.get_stderr(),
            "violations": [str(v) for v in self.violations],
            "exception": repr(self.exception) if self.exception else None,
        }
