"""The watchdog: removes an owner's containers the moment the owner process dies.

A started container ends by itself when its owner dies (the runner sees EOF on stdin). One that
was created but not started yet has no runner to notice, and a warm pool creates containers all
the time. So the Docker backend starts this small process once: it blocks reading a pipe whose
other end only the owner holds. When the owner is gone (exit, crash, SIGKILL), the read returns
EOF and the watchdog removes every container labelled with the owner's identity. It forks a
second watcher, in a session of its own and reading a second pipe of the owner's, before it
reports ready: a created container goes even when the owner and the watchdog are killed
together (the second one outlives both; removals are idempotent).

An owner that closes cleanly has removed its containers itself: it writes ``CLEAN`` down both
pipes before closing them, and the watchers exit without sweeping (a sweep imports the Docker
SDK and asks the engine: a quarter of a second the owner's ``close()`` would wait for).

The owner starts it as early as it can (:meth:`Watchdog.launch`, at its first use of the engine)
and waits for its ready line only before its first container (:meth:`Watchdog.arm`): the
watchdog's interpreter starts while the owner asks the engine for images and runtimes. Its
process is :mod:`.watcher`, run by path with almost no imports (importing the package would
cost the owner's first run a few hundred milliseconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import suppress

from orchestrator.backends.docker import watcher
from orchestrator.backends.docker.watcher import CLEAN, PIPE_FLAG

_CLOSE_WAIT_S = 30.0


class _Started:
    """A started watchdog: its process, the second watcher's pipe, whether it reported ready."""

    def __init__(self, process: subprocess.Popen[bytes], second_pipe: int) -> None:
        self.process = process
        self.second_pipe = second_pipe  # our write end of the second watcher's pipe
        self.armed = False

    def await_armed(self) -> None:
        """Wait for the ready line, written once both watchers wait on their pipes."""
        if self.armed:
            return
        self.armed = True
        assert self.process.stdout is not None
        with suppress(OSError):  # it died at once: runs still work, containers still end by EOF
            self.process.stdout.readline()
        self.process.stdout.close()

    def release(self) -> None:
        """Say down both pipes that nothing is left, close them, and wait for the watchers."""
        stdin = self.process.stdin
        assert stdin is not None
        with suppress(OSError):  # BrokenPipeError: the watchdog is gone already
            stdin.write(CLEAN)
        with suppress(OSError):
            stdin.close()
        with suppress(OSError):
            os.write(self.second_pipe, CLEAN)
        with suppress(OSError):
            os.close(self.second_pipe)
        if self.process.stdout is not None and not self.process.stdout.closed:
            self.process.stdout.close()
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=_CLOSE_WAIT_S)


def spawn(labels: dict[str, str]) -> _Started:
    """Start the watchdog of an owner; :meth:`_Started.await_armed` waits until it watches."""
    second_read, second_write = os.pipe()
    try:
        process = subprocess.Popen(
            # -I: no user site or environment; the Docker SDK is the installed one. -S: no
            # site-packages until a sweep needs the SDK (a faster start: the owner waits for it).
            [
                sys.executable,
                "-I",
                "-S",
                os.path.realpath(watcher.__file__),
                f"{PIPE_FLAG}{second_read}",
                *(f"{k}={v}" for k, v in labels.items()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the owner's terminal must not kill it
            close_fds=True,
            pass_fds=(second_read,),
        )
    except BaseException:
        os.close(second_write)
        raise
    finally:
        os.close(second_read)  # the watchers hold it now; we keep only the write end
    return _Started(process, second_write)


class Watchdog:
    """The owner's handle on its watchdog: started once, before the first container; closed once.

    Thread-safe: ``_lock`` guards ``_started`` and ``_closed``; ``_arming`` makes the callers of
    :meth:`arm` wait for one ready line together.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arming = threading.Lock()
        self._started: _Started | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The first watcher's pid (its process group's id), once started."""
        with self._lock:
            return self._started.process.pid if self._started is not None else None

    def launch(self, labels: Callable[[], dict[str, str]]) -> None:
        """Start the watchdog of the owner ``labels()`` names without waiting for it (once)."""
        self._spawned(labels)

    def arm(self, labels: Callable[[], dict[str, str]]) -> None:
        """Start the watchdog (unless it runs or was closed) and wait until it watches."""
        started = self._spawned(labels)
        if started is not None:
            with self._arming:
                started.await_armed()

    def close(self) -> None:
        """Tell the watchers the owner closed cleanly, close their pipes, and wait for them."""
        with self._arming, self._lock:
            started, self._closed = self._started, True
        if started is not None:
            started.release()

    def _spawned(self, labels: Callable[[], dict[str, str]]) -> _Started | None:
        with self._lock:
            if self._started is None and not self._closed:
                self._started = spawn(labels())
            return self._started if not self._closed else None
