"""The watchdog: removes an owner's containers the moment the owner process dies.

A started container ends by itself when its owner dies (the runner sees EOF on stdin). One that
was created but not started yet has no runner to notice, and a warm pool creates containers all
the time. So the Docker backend starts this small process once: it blocks reading its stdin,
a pipe whose other end only the owner holds. When the owner is gone (exit, crash, SIGKILL), the
read returns EOF and the watchdog removes every container labelled with the owner's identity.

Run as ``python -m orchestrator.backends.watchdog PID STARTED HOST``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from contextlib import suppress

from orchestrator.backends.owners import LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_OWNER_STARTED


def start(pid: int, started: str, host: str) -> subprocess.Popen[bytes]:
    """Start the watchdog of an owner; closing its stdin (or dying) sets it off."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.backends.watchdog", str(pid), started, host],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the owner's terminal must not kill the watchdog
        close_fds=True,
    )


def remove_owned(pid: str, started: str, host: str) -> int:
    """Remove every container labelled with this owner; return how many."""
    import docker
    import docker.errors

    labels = [
        f"{LABEL_OWNER_PID}={pid}",
        f"{LABEL_OWNER_STARTED}={started}",
        f"{LABEL_OWNER_HOST}={host}",
    ]
    client = docker.from_env(timeout=30)
    removed = 0
    for container in client.api.containers(all=True, filters={"label": labels}):
        with suppress(docker.errors.APIError):
            client.api.remove_container(container["Id"], force=True)
            removed += 1
    return removed


def main(argv: list[str]) -> int:
    """Wait for EOF on stdin, then remove the owner's containers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    pid, started, host = argv
    with suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    with suppress(Exception):  # nothing to report to: the owner is gone
        remove_owned(pid, started, host)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
