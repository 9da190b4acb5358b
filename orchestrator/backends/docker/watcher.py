"""The watchdog's own process (see :mod:`.watchdog`): wait for the owner's end, then sweep.

Run as ``python -I -S watcher.py --pipe=FD LABEL=VALUE...`` by path, never imported by the owner:
it imports only ``os``, ``signal`` and ``sys`` before it reports ready (the owner's first
container waits for that line), and the Docker SDK only when it has to sweep.

It forks a second watcher in a session of its own, reading the owner's second pipe (``FD``),
before it reports ready. Each watcher reads its pipe to the end: a pipe that ends with
:data:`CLEAN` means the owner closed cleanly and removed its containers itself; any other end
(the owner died) makes the watcher remove every container carrying all the labels.
"""

# try/except/pass instead of contextlib.suppress: importing contextlib takes longer here than
# everything else the watcher does before it reports ready.
# ruff: noqa: SIM105

from __future__ import annotations

import os
import signal
import sys

READY = b"armed\n"
CLEAN = b"closed cleanly\n"
PIPE_FLAG = "--pipe="


def remove_owned(labels: list[str]) -> int:
    """Remove every container carrying all these ``key=value`` labels; return how many."""
    import site

    site.main()  # started with -S: site-packages (the Docker SDK) only now
    import docker
    import docker.errors

    client = docker.from_env(timeout=30)
    removed = 0
    for container in client.api.containers(all=True, filters={"label": labels}):
        try:
            client.api.remove_container(container["Id"], force=True)
            removed += 1
        except docker.errors.APIError:
            pass
    return removed


def watch(fd: int, labels: list[str]) -> None:
    """Read ``fd`` to its end; unless the owner said it closed cleanly, remove its containers."""
    tail = b""
    try:
        while chunk := os.read(fd, 4096):
            tail = (tail + chunk)[-len(CLEAN) :]
    except OSError:
        pass
    if tail == CLEAN:
        return
    try:
        remove_owned(labels)
    except Exception:  # nothing to report to: the owner is gone
        pass


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def main(args: list[str]) -> int:
    """Wait for the end of both pipes, then remove the owner's containers (two watchers do)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if len(args) < 2 or not args[0].startswith(PIPE_FLAG):
        return 64
    pipe, labels = int(args[0].removeprefix(PIPE_FLAG)), args[1:]
    second = os.fork()
    if second == 0:  # the second watcher: its own session, so a kill of the first's spares it
        os.setsid()
        _close(0)  # the first watcher's pipe and the ready line are not its own
        _close(1)
        watch(pipe, labels)
        os._exit(0)
    _close(pipe)
    try:
        os.write(1, READY)
    except OSError:
        pass
    _close(1)
    watch(0, labels)
    try:  # the owner's close() returns once both are done
        os.waitpid(second, 0)
    except ChildProcessError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
