"""EventLog: a recorded run's events in order, each stream's text capped as the result's is."""

from __future__ import annotations

from orchestrator.eventlog import EventLog
from orchestrator.models import Event


def out(kind: str, text: str, at: float = 0.0) -> Event:
    return Event(kind=kind, text=text, elapsed_ms=at)  # type: ignore[arg-type]


def test_small_runs_keep_every_event_in_order() -> None:
    """Under the limit nothing is cut: the events come back as they came, the last appended."""
    log = EventLog(1024)
    events = [Event(kind="begin"), out("stdout", "a"), out("stderr", "b"), out("stdout", "c")]
    for event in events:
        log(event)
    end = Event(kind="exit", exit_code=0)
    assert log.events(end) == [*events, end]


def test_each_stream_keeps_head_and_tail_with_one_marker_between() -> None:
    """A flooded stream keeps its first and last half-limit; the other stream is untouched."""
    log = EventLog(1024)
    flood = "".join(f"{i:09d}\n" for i in range(200))  # 2,000 bytes in 10-byte events
    log(out("stderr", "early warning"))
    for index in range(200):
        log(out("stdout", flood[index * 10 : index * 10 + 10], at=index))
    log(out("stderr", "late warning"))
    kept = log.events()
    stdout = "".join(e.text for e in kept if e.kind == "stdout")
    marker = "\n[... athena-sandbox cut 978 bytes of stdout here ...]\n"
    assert stdout == flood[:512] + marker + flood[-510:]  # 51 whole events fit the tail
    assert [e.text for e in kept if e.kind == "stderr"] == ["early warning", "late warning"]
    assert kept[0].text == "early warning" and kept[-1].text == "late warning"


def test_a_character_is_never_split_between_head_and_tail() -> None:
    """The head is cut on a character boundary: every kept text is whole UTF-8 text."""
    log = EventLog(1024)
    for _ in range(100):
        log(out("stdout", "é" * 33))  # 66 bytes each
    text = "".join(e.text for e in log.events())
    assert text.startswith("é" * 256) and "\ufffd" not in text
    assert text.endswith("é" * 33)
