"""Who owns a sandbox container: labels naming the owner process, and telling if it is gone.

A container is labelled with the host, pid and start time (in clock ticks since boot) of the
process that asked for it; the start time tells a reused pid apart. The start-up sweep removes
containers whose owner on this host is dead.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

LABEL_SANDBOX = "athena.sandbox"
LABEL_OWNER_HOST = "athena.owner.host"
LABEL_OWNER_PID = "athena.owner.pid"
LABEL_OWNER_STARTED = "athena.owner.started"
LABEL_RUN = "athena.run"
LABEL_POOL = "athena.pool"


def process_start_ticks(pid: int) -> str | None:
    """Return a process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def owner_labels() -> dict[str, str]:
    """Labels naming this process as the owner of a container."""
    pid = os.getpid()
    return {
        LABEL_SANDBOX: "1",
        LABEL_OWNER_HOST: socket.gethostname(),
        LABEL_OWNER_PID: str(pid),
        LABEL_OWNER_STARTED: process_start_ticks(pid) or "",
    }


def owner_is_dead(labels: Mapping[str, str]) -> bool:
    """Whether the labelled owner of a container on this host is gone."""
    if labels.get(LABEL_OWNER_HOST) != socket.gethostname():
        return False  # another host's container: not ours to judge
    if process_start_ticks(os.getpid()) is None:
        return False  # no readable /proc here: we cannot tell, so we judge nobody dead
    try:
        pid = int(labels.get(LABEL_OWNER_PID, ""))
    except ValueError:
        return True
    started = process_start_ticks(pid)
    return started is None or started != labels.get(LABEL_OWNER_STARTED)
