"""EventLog: the events of one run, kept for its record within the run's output limit.

The orchestrator subscribes one to every recorded run's context; the recorder receives what it
kept (:meth:`EventLog.events`). Begin, violation and exit events are all kept. Output events
are kept as the context keeps output (:class:`~orchestrator.context.CappedBuffer`): per stream,
the first half of ``max_output_bytes`` (UTF-8 bytes of the events' text) and the last half;
what falls between is left out, and one event of that stream in its place carries the marker
the result's ``stdout``/``stderr`` use (``[... athena-sandbox cut N bytes of stdout here ...]``,
N being the bytes the kept events leave out). So the stored events never hold much more text
than the result does, however much the code prints.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Literal

from orchestrator.models import Event

_Stream = Literal["stdout", "stderr"]
_STREAMS: tuple[_Stream, ...] = ("stdout", "stderr")


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _head_of(text: str, room: int) -> tuple[str, str]:
    """Split text so that the first part is at most ``room`` UTF-8 bytes (whole characters)."""
    data = text.encode("utf-8", "surrogatepass")[:room]
    head = data.decode("utf-8", "ignore")  # a character cut in two is left to the rest
    return head, text[len(head) :]


class _StreamLog:
    """The kept output events of one stream: head events, tail events, bytes left out."""

    def __init__(self, limit: int) -> None:
        self.head_room = limit - limit // 2
        self.tail_limit = limit // 2
        self.tail: deque[tuple[float, Event, int]] = deque()
        self.tail_bytes = 0
        self.cut = 0
        self.cut_at: tuple[float, float] | None = None  # (position, elapsed_ms) of the cut

    def take(self, seq: int, event: Event, head: list[tuple[float, Event]]) -> None:
        position: float = seq
        size = _size(event.text)
        if self.head_room > 0:
            if size <= self.head_room:
                self.head_room -= size
                head.append((seq, event))
                return
            first, rest = _head_of(event.text, self.head_room)
            self.head_room = 0
            if first:
                head.append((seq, event.model_copy(update={"text": first})))
            event, size = event.model_copy(update={"text": rest}), _size(rest)
            position = seq + 0.5  # the rest follows the part kept in the head
        if self.cut_at is None:
            self.cut_at = (position - 0.25, event.elapsed_ms)
        self.tail.append((position, event, size))
        self.tail_bytes += size
        while self.tail_bytes > self.tail_limit and self.tail:
            _, _, dropped = self.tail.popleft()
            self.tail_bytes -= dropped
            self.cut += dropped

    def kept(self, stream: _Stream) -> list[tuple[float, Event]]:
        found = [(position, event) for position, event, _ in self.tail]
        if self.cut and self.cut_at is not None:
            position, elapsed = self.cut_at
            marker = f"\n[... athena-sandbox cut {self.cut} bytes of {stream} here ...]\n"
            found.append((position, Event(kind=stream, text=marker, elapsed_ms=elapsed)))
        return found


class EventLog:
    """Collects a run's events in order, output capped as described in the module docstring.

    Thread-safe: the streams of a run may be fed from more than one thread.

    Args:
        max_output_bytes: the run's per-stream output limit (the policy's).
    """

    def __init__(self, max_output_bytes: int) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._kept: list[tuple[float, Event]] = []
        self._streams = {s: _StreamLog(max_output_bytes) for s in _STREAMS}

    def __call__(self, event: Event) -> None:
        """Take one event (a context listener)."""
        with self._lock:
            self._seq += 1
            if event.kind in ("stdout", "stderr"):
                self._streams[event.kind].take(self._seq, event, self._kept)
            else:
                self._kept.append((self._seq, event))

    def events(self, last: Event | None = None) -> list[Event]:
        """Return the kept events in the order they happened, then ``last`` (the exit event)."""
        with self._lock:
            found: list[tuple[float, Event]] = list(self._kept)
            for stream in _STREAMS:
                found += self._streams[stream].kept(stream)
        found.sort(key=lambda item: item[0])
        events = [event for _, event in found]
        return events if last is None else [*events, last]
