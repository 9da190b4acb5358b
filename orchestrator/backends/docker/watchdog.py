"""The watchdog: removes an owner's containers the moment the owner process dies.

A started container ends by itself when its owner dies (the runner sees EOF on stdin). One that
was created but not started yet has no runner to notice, and a warm pool creates containers all
the time. So the Docker backend starts this small process once: it blocks reading its stdin,
a pipe whose other end only the owner holds. When the owner is gone (exit, crash, SIGKILL), the
read returns EOF and the watchdog removes every container labelled with the owner's identity.
It forks a second watcher of the same pipe, in a session of its own, before it reports ready:
a created container goes even when the owner and the watchdog are killed together (the second
one outlives both; removals are idempotent).

Run as ``python watchdog.py LABEL=VALUE...`` (by path: importing the package would cost the
owner's first run a few hundred milliseconds).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

READY = b"armed\n"


def start(labels: dict[str, str], timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """Start the watchdog of an owner and wait until both watchers are armed.

    Closing its stdin (or the owner's death) sets it off.
    """
    process = subprocess.Popen(
        # -I: no user site or environment; the Docker SDK is the installed one.
        [
            sys.executable,
            "-I",
            str(Path(__file__).resolve()),
            *(f"{k}={v}" for k, v in labels.items()),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the owner's terminal must not kill the watchdog
        close_fds=True,
    )
    assert process.stdout is not None
    with suppress(OSError):  # it died at once: runs still work, containers still end by EOF
        process.stdout.readline()  # one line, written once both watchers wait on the pipe
    process.stdout.close()
    return process


class Watchdog:
    """The owner's handle on its watchdog: started once, before the first container; closed once.

    Thread-safe: ``_lock`` guards ``_process`` and ``_closed``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The first watcher's pid (its process group's id), once started."""
        with self._lock:
            return self._process.pid if self._process is not None else None

    def arm(self, labels: Callable[[], dict[str, str]]) -> None:
        """Start the watchdog of the owner that ``labels()`` names, unless it runs or was closed."""
        with self._lock:
            if self._process is None and not self._closed:
                self._process = start(labels())

    def close(self) -> None:
        """Close its stdin: it sweeps (nothing is left by then) and exits; wait for it."""
        with self._lock:
            process, self._closed = self._process, True
        if process is not None:
            with suppress(OSError):
                process.communicate(timeout=30)


def remove_owned(labels: list[str]) -> int:
    """Remove every container carrying all these ``key=value`` labels; return how many."""
    import docker
    import docker.errors

    client = docker.from_env(timeout=30)
    removed = 0
    for container in client.api.containers(all=True, filters={"label": labels}):
        with suppress(docker.errors.APIError):
            client.api.remove_container(container["Id"], force=True)
            removed += 1
    return removed


def _watch(labels: list[str]) -> None:
    with suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    with suppress(Exception):  # nothing to report to: the owner is gone
        remove_owned(labels)


def main(labels: list[str]) -> int:
    """Wait for EOF on stdin, then remove the owner's containers (two watchers do)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if not labels:
        return 64
    second = os.fork()
    if second == 0:  # the second watcher: its own session, so a kill of the first's spares it
        os.setsid()
        _watch(labels)
        os._exit(0)
    with suppress(OSError):
        os.write(1, READY)
        os.close(1)
    _watch(labels)
    with suppress(ChildProcessError):  # the owner's close() returns once both are done
        os.waitpid(second, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
