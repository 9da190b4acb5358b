"""The Docker backend feeds the ExecutionContext as output arrives, not after the exit."""

from __future__ import annotations

import time

import pytest

from orchestrator.models import Event, ExecutionRequest
from orchestrator.orchestrator import Orchestrator
from orchestrator.settings import Settings

pytestmark = pytest.mark.docker


def test_output_arrives_while_the_code_runs(settings: Settings) -> None:
    """The first line reaches the listener long before the run ends."""
    seen: list[tuple[float, Event]] = []
    code = "import time\nprint('first')\ntime.sleep(1.5)\nprint('second')"
    with Orchestrator(settings=settings) as orchestrator:
        result = orchestrator.run(
            ExecutionRequest.create(code), on_event=lambda e: seen.append((time.monotonic(), e))
        )
    assert result.stdout == "first\nsecond\n"
    kinds = [e.kind for _, e in seen]
    assert kinds[0] == "begin" and kinds[-1] == "exit"
    first = next(t for t, e in seen if e.kind == "stdout" and "first" in e.text)
    end = next(t for t, e in seen if e.kind == "exit")
    assert end - first >= 1.0, "stdout was delivered only at the end"
    assert seen[-1][1].exit_code == 0


def test_stderr_and_violations_are_events(settings: Settings) -> None:
    """stderr chunks and violations reach the listener as events of their own kind."""
    seen: list[Event] = []
    request = ExecutionRequest.create("echo oops >&2; sleep 10", "bash", timeout_seconds=1)
    with Orchestrator(settings=settings) as orchestrator:
        orchestrator.run(request, on_event=seen.append)
    assert any(e.kind == "stderr" and e.text == "oops\n" for e in seen)
    (violation,) = [e.violation for e in seen if e.kind == "violation"]
    assert violation is not None and violation.category == "timeout"
