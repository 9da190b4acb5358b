"""Unit tests of Admission (running limit, bounded queue) and CancelToken."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from orchestrator.admission import Admission
from orchestrator.errors import QueueFullError, RunCancelledError
from orchestrator.run import CancelToken


@pytest.fixture(autouse=True)
def _joins_its_threads() -> Iterator[None]:
    """Fail a test that leaves a thread of its own running."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not left, f"threads left running: {left}"


def eventually(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(0.005)
    return True


class Holder:
    """A thread that holds a place of an Admission until released; records what happened."""

    def __init__(self, admission: Admission, cancel: CancelToken | None = None) -> None:
        self.cancel = cancel or CancelToken()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None
        self._admission = admission
        self._thread = threading.Thread(target=self._hold)
        self._thread.start()

    def _hold(self) -> None:
        try:
            with self._admission.slot(self.cancel):
                self.entered.set()
                self.release.wait(5)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.release.set()
        self._thread.join(5)
        assert not self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end; return whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


# --------------------------------------------------------------------------- Admission


def test_at_most_running_holders_at_once() -> None:
    """With running=2, six concurrent runs never have more than two inside at once."""
    admission = Admission(running=2, queued=10, queue_wait=1.0)
    lock = threading.Lock()
    inside, most, done = 0, 0, 0

    def work() -> None:
        nonlocal inside, most, done
        with admission.slot(CancelToken()):
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.03)
            with lock:
                inside -= 1
                done += 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert (most, done) == (2, 6)


def test_a_queued_run_waits_for_its_turn_beyond_queue_wait() -> None:
    """A run admitted to the queue waits as long as it takes, not queue_wait, then runs."""
    admission = Admission(running=1, queued=1, queue_wait=0.05)
    first = Holder(admission)
    assert first.entered.wait(2)
    second = Holder(admission)
    assert not second.entered.wait(0.15)  # three times queue_wait: still waiting, no error
    assert second.error is None
    first.finish()
    assert second.entered.wait(2)
    second.finish()
    assert (first.error, second.error) == (None, None)


def test_a_full_queue_blocks_for_queue_wait_then_raises_queue_full() -> None:
    """With running + queued places taken, the next run waits queue_wait, then QueueFullError."""
    admission = Admission(running=1, queued=1, queue_wait=0.2)
    first = Holder(admission)
    assert first.entered.wait(2)
    second = Holder(admission)  # waits in the queue
    started = time.monotonic()
    with pytest.raises(QueueFullError) as caught, admission.slot(CancelToken()):
        pytest.fail("a third run got a place")
    waited = time.monotonic() - started
    assert 0.15 <= waited < 1.0
    assert str(caught.value).startswith("queue full: 1 runs are running and 1 are waiting")
    assert "0.2 s" in str(caught.value)
    first.finish()
    second.finish()
    assert (first.error, second.error) == (None, None)


def test_a_full_queue_admits_a_run_when_a_place_frees_in_time() -> None:
    """A run blocked on a full queue gets in when a place frees before queue_wait ends."""
    admission = Admission(running=1, queued=0, queue_wait=2.0)
    first = Holder(admission)
    assert first.entered.wait(2)
    second = Holder(admission)
    assert not second.entered.wait(0.05)
    first.finish()
    assert second.entered.wait(1)
    second.finish()
    assert second.error is None


def test_cancelling_a_queued_run_raises_run_cancelled_quickly() -> None:
    """A run waiting for a running place ends with RunCancelledError soon after cancel()."""
    admission = Admission(running=1, queued=1, queue_wait=5.0)
    first = Holder(admission)
    assert first.entered.wait(2)
    waiting = Holder(admission)
    time.sleep(0.02)
    started = time.monotonic()
    waiting.cancel.cancel()
    assert waiting.join(1.0)
    assert time.monotonic() - started < 0.5
    assert isinstance(waiting.error, RunCancelledError)
    assert not waiting.entered.is_set()
    # its queue place was given back: another run can queue without QueueFullError
    third = Holder(admission)
    first.finish()
    assert third.entered.wait(2)
    third.finish()
    assert third.error is None


def test_cancelling_a_run_blocked_on_a_full_queue_raises_run_cancelled_quickly() -> None:
    """A run blocked on a full queue ends with RunCancelledError, not after queue_wait."""
    admission = Admission(running=1, queued=0, queue_wait=5.0)
    first = Holder(admission)
    assert first.entered.wait(2)
    blocked = Holder(admission)
    time.sleep(0.02)
    started = time.monotonic()
    blocked.cancel.cancel()
    assert blocked.join(1.0)
    assert time.monotonic() - started < 0.5
    assert isinstance(blocked.error, RunCancelledError)
    first.finish()


def test_an_already_cancelled_run_gets_no_place() -> None:
    """A run whose token is already cancelled raises RunCancelledError without entering."""
    admission = Admission(running=1, queued=0, queue_wait=0.0)
    token = CancelToken()
    token.cancel()
    with pytest.raises(RunCancelledError), admission.slot(token):
        pytest.fail("a cancelled run got a place")
    with admission.slot(CancelToken()):  # the place is still free
        pass


def test_places_are_released_when_the_block_raises() -> None:
    """An exception inside the block gives both places back (no queue full afterwards)."""
    admission = Admission(running=1, queued=0, queue_wait=0.0)
    for _ in range(3):
        with pytest.raises(ValueError, match="boom"), admission.slot(CancelToken()):
            raise ValueError("boom")
    with admission.slot(CancelToken()):
        pass


# --------------------------------------------------------------------------- CancelToken


def test_cancel_runs_every_callback_once_and_sets_the_flag() -> None:
    """cancel() calls each registered callback exactly once, however often it is called."""
    token = CancelToken()
    calls: list[str] = []
    token.on_cancel(lambda: calls.append("a"))
    token.on_cancel(lambda: calls.append("b"))
    assert token.cancelled is False
    assert calls == []
    token.cancel()
    token.cancel()
    assert token.cancelled is True
    assert calls == ["a", "b"]


def test_a_callback_registered_after_cancel_runs_at_once() -> None:
    """on_cancel after cancel() calls the callback immediately, and only then."""
    token = CancelToken()
    token.cancel()
    calls: list[str] = []
    forget = token.on_cancel(lambda: calls.append("late"))
    assert calls == ["late"]
    forget()
    token.cancel()
    assert calls == ["late"]


def test_an_unregistered_callback_is_not_called() -> None:
    """The function on_cancel returns unregisters its callback; the others still run."""
    token = CancelToken()
    calls: list[str] = []
    forget = token.on_cancel(lambda: calls.append("gone"))
    token.on_cancel(lambda: calls.append("kept"))
    forget()
    forget()  # twice is harmless
    token.cancel()
    assert calls == ["kept"]


def test_cancel_from_another_thread_reaches_a_waiting_callback() -> None:
    """A callback registered in one thread runs when another thread cancels."""
    token = CancelToken()
    woken = threading.Event()
    token.on_cancel(woken.set)
    canceller = threading.Thread(target=token.cancel)
    canceller.start()
    assert woken.wait(2)
    canceller.join(2)
    assert token.cancelled is True
