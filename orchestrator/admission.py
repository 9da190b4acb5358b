"""Admission: how many runs are in sandboxes at once, and the bounded queue in front of them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from orchestrator.errors import QueueFullError, RunCancelledError
from orchestrator.run import CancelToken

_POLL_S = 0.1  # how often a waiting run looks whether it was cancelled


class Admission:
    """At most ``running`` runs in sandboxes; at most ``queued`` more wait for a place.

    A run that finds the queue full blocks up to ``queue_wait`` seconds for a place in it, then
    fails with :class:`QueueFullError`. None is lost and none hangs: a queued run waits only
    for runs ahead of it, each bounded by its own timeout.
    """

    def __init__(self, running: int, queued: int, queue_wait: float) -> None:
        self._running = threading.Semaphore(running)
        self._admitted = threading.Semaphore(running + queued)
        self._limits = (running, queued)
        self._queue_wait = queue_wait
        self._waiting = 0  # admitted, not yet in a sandbox (read by the service's metrics)
        self._count_lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """How many admitted runs wait for a place in a sandbox right now."""
        return self._waiting

    def _wait_for_place(self, cancel: CancelToken) -> None:
        with self._count_lock:
            self._waiting += 1
        try:
            _acquire(self._running, None, cancel)
        finally:
            with self._count_lock:
                self._waiting -= 1

    @contextmanager
    def slot(self, cancel: CancelToken) -> Iterator[None]:
        """Hold a place in a sandbox for the duration of the block.

        Raises:
            QueueFullError: the queue stayed full for ``queue_wait`` seconds.
            RunCancelledError: the run was cancelled while it waited.
        """
        if not _acquire(self._admitted, self._queue_wait, cancel):
            running, queued = self._limits
            raise QueueFullError(
                f"queue full: {running} runs are running and {queued} are waiting, and no place "
                f"freed up within {self._queue_wait:g} s. Retry later, or raise "
                "ATHENA_MAX_QUEUED_RUNS or ATHENA_QUEUE_WAIT_SECONDS."
            )
        try:
            self._wait_for_place(cancel)
            try:
                yield
            finally:
                self._running.release()
        finally:
            self._admitted.release()


def _acquire(semaphore: threading.Semaphore, timeout: float | None, cancel: CancelToken) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if cancel.cancelled:
            raise RunCancelledError("the run was cancelled while it waited for a place")
        wait = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
        if semaphore.acquire(timeout=max(wait, 0)):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
