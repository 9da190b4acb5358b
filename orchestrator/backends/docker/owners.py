"""Who owns a sandbox container: labels naming the owner process, and telling if it is gone.

A container is labelled with the host, pid and start time (in clock ticks since boot) of the
process that asked for it; the start time tells a reused pid apart. The start-up sweep removes
containers whose owner on this host is dead.

A node of a cluster (``serve --node-id``) also labels its containers with its node id, which
outlives the process: a node restarted under its id removes every container of that id it does
not own (its predecessor's, even from another host or pid namespace sharing the engine, where
the pid cannot be judged), and never one of another node.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

LABEL_SANDBOX = "athena.sandbox"
LABEL_OWNER_HOST = "athena.owner.host"
LABEL_OWNER_PID = "athena.owner.pid"
LABEL_OWNER_STARTED = "athena.owner.started"
LABEL_OWNER_NODE = "athena.owner.node"
LABEL_RUN = "athena.run"
_IDENTITY = (LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_OWNER_STARTED)
LABEL_POOL = "athena.pool"


def process_start_ticks(pid: int) -> str | None:
    """Return a process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def owner_labels(node_id: str | None = None) -> dict[str, str]:
    """Labels naming this process (and its node, when it is one) as the owner of a container."""
    pid = os.getpid()
    labels = {
        LABEL_SANDBOX: "1",
        LABEL_OWNER_HOST: socket.gethostname(),
        LABEL_OWNER_PID: str(pid),
        LABEL_OWNER_STARTED: process_start_ticks(pid) or "",
    }
    if node_id is not None:
        labels[LABEL_OWNER_NODE] = node_id
    return labels


def left_by_predecessor(labels: Mapping[str, str], node_id: str | None) -> bool:
    """Whether a container is of node ``node_id`` but not of this process: an earlier life's.

    One process at a time holds a node id (``serve`` refuses a second on a host), so a
    container of this node that this process did not create was left by the process that held
    the id before it, whatever host name or pid it had.
    """
    if node_id is None or labels.get(LABEL_OWNER_NODE) != node_id:
        return False
    mine = owner_labels()
    return any(labels.get(key) != mine[key] for key in _IDENTITY)


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
