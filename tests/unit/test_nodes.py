"""Nodes of a cluster, the pure parts: ids, the directory over SQLite, the lock, who sweeps what."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from athena.service.nodes import (
    FORGOTTEN_SECONDS,
    ORPHAN_SECONDS,
    STALE_SECONDS,
    NodeDirectory,
    NodeLock,
    SQLiteDatabase,
)
from athena.service.proxy import foreign_holder
from athena.service.serve import check_node_id, default_url
from orchestrator.backends.docker.owners import (
    LABEL_OWNER_NODE,
    left_by_predecessor,
    owner_labels,
)
from orchestrator.errors import RequestError
from orchestrator.sessions import new_session_id, session_node


class Clock:
    """Seconds since the epoch that a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A hand-moved clock."""
    return Clock()


@pytest.fixture
def directory(tmp_path: Path, clock: Clock) -> NodeDirectory:
    """A directory in a fresh SQLite file."""
    return NodeDirectory(SQLiteDatabase(tmp_path / "nodes.db"), clock=clock)


def _row(directory: NodeDirectory, node: str, host: str, seen: float) -> None:
    directory._db.execute(
        "INSERT INTO athena_nodes VALUES (?, ?, ?, ?, ?, ?)",
        (node, f"http://{node}:8000", host, 1, seen, seen),
    )


def test_a_node_session_id_names_the_node_and_a_plain_one_names_none() -> None:
    """``<node>.<32 hex>`` on a node; 32 hex digits (no node) otherwise."""
    on_node = new_session_id("node-1")
    assert session_node(on_node) == "node-1" and len(on_node) == len("node-1.") + 32
    plain = new_session_id()
    assert len(plain) == 32 and session_node(plain) is None
    assert session_node(".abc") is None


def test_only_another_nodes_session_routes_are_sent_on() -> None:
    """Session routes of another node's ids go on; ours, replays and other paths stay."""
    other, mine = "node-2." + "a" * 32, "node-1." + "b" * 32

    def scope(path: str) -> dict[str, object]:
        return {"type": "http", "path": path}

    assert foreign_holder(scope(f"/v1/sessions/{other}/execute"), "node-1") == (other, "node-2")
    assert foreign_holder(scope(f"/v1/sessions/{other}"), "node-1") == (other, "node-2")
    assert foreign_holder(scope(f"/v1/sessions/{mine}/execute"), "node-1") is None
    assert foreign_holder(scope(f"/v1/sessions/{other}/replay"), "node-1") is None
    assert foreign_holder(scope("/v1/sessions/" + "c" * 32), "node-1") is None
    assert foreign_holder(scope("/v1/execute"), "node-1") is None
    assert foreign_holder(scope(f"/v1/sessions/{other}/files"), "node-1") is None
    assert foreign_holder(scope(f"/v1/sessions/{other}/../../metrics"), "node-1") is None
    assert foreign_holder(scope("/v1/sessions/node-2.x/execute"), "node-1") is None


@pytest.mark.parametrize("bad", ["", "a.b", "a/b", "-a", "a" * 64, "nöde", "a b"])
def test_a_node_id_must_be_a_plain_name(bad: str) -> None:
    """Dots, slashes, spaces, a leading dash or over 63 characters are refused, saying why."""
    with pytest.raises(RequestError, match="letters, digits"):
        check_node_id(bad)
    assert check_node_id("athena-7d9f8c-x2k4p") == "athena-7d9f8c-x2k4p"


def test_the_default_url_brackets_an_ipv6_host() -> None:
    """http://HOST:PORT, with [] around an IPv6 address."""
    assert default_url("127.0.0.1", 8801) == "http://127.0.0.1:8801"
    assert default_url("::1", 8801) == "http://[::1]:8801"


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", "[::]"])
def test_a_node_on_every_address_must_say_where_it_is_reached(wildcard: str) -> None:
    """0.0.0.0 is no address another node can reach: --advertise-url is asked for."""
    with pytest.raises(RequestError, match="--advertise-url"):
        default_url(wildcard, 8000)


def test_a_heartbeat_says_when_the_row_is_gone(directory: NodeDirectory) -> None:
    """heartbeat is True while the row is there and False once it was removed."""
    directory.register("node-1", "http://a:1")
    assert directory.heartbeat("node-1")
    directory._db.execute("DELETE FROM athena_nodes")
    assert not directory.heartbeat("node-1")


def test_forged_ids_do_not_grow_the_cache_without_end(directory: NodeDirectory) -> None:
    """Looking up thousands of unknown nodes keeps the cache bounded."""
    for n in range(3000):
        directory.live_url(f"forged-{n}")
    assert len(directory._cache) <= 1024


def test_a_registered_node_is_live_until_it_goes_silent(
    directory: NodeDirectory, clock: Clock
) -> None:
    """live_url answers while heartbeats come, and None once STALE_SECONDS pass without one."""
    directory.register("node-1", "http://10.0.0.1:8000")
    assert directory.live_url("node-1") == "http://10.0.0.1:8000"
    clock.now += STALE_SECONDS - 1
    directory.heartbeat("node-1")
    clock.now += STALE_SECONDS - 1
    assert directory.node("node-1", cached=False) is not None
    assert directory.live_url("node-1") is not None
    clock.now += 2
    assert directory.live_url("node-1") is None
    assert directory.live_url("node-9") is None


def test_unregistering_removes_only_this_processs_row(directory: NodeDirectory) -> None:
    """A node's clean stop removes its row; a row of another process of the id stays."""
    directory.register("node-1", "http://a:1")
    directory.unregister("node-1")
    assert directory.node("node-1", cached=False) is None
    _row(directory, "node-2", socket.gethostname(), 1_000_000.0)
    directory.unregister("node-2")  # pid 1 holds it, not us
    assert directory.node("node-2", cached=False) is not None


def test_a_live_node_on_another_host_keeps_its_id(directory: NodeDirectory, clock: Clock) -> None:
    """Registering an id a live node of another host holds is refused; once silent, taken."""
    _row(directory, "node-1", "other-host", clock.now)
    with pytest.raises(RequestError, match="held by a live node on host 'other-host'"):
        directory.register("node-1", "http://me:1")
    clock.now += STALE_SECONDS + 1
    directory.register("node-1", "http://me:1")
    node = directory.node("node-1", cached=False)
    assert node is not None and node.url == "http://me:1" and node.pid == os.getpid()


def test_dead_nodes_are_judged_against_the_newest_heartbeat(
    directory: NodeDirectory, clock: Clock
) -> None:
    """Silent ORPHAN_SECONDS longer than the newest: dead. All silent alike (a store outage): none."""
    _row(directory, "old", "h", clock.now - ORPHAN_SECONDS - 5)
    _row(directory, "recent", "h", clock.now - 1)
    _row(directory, "newest", "h", clock.now)
    assert directory.dead_nodes() == {"old"}
    clock.now += 10 * ORPHAN_SECONDS  # nobody could beat: the store was out
    assert directory.dead_nodes() == {"old"}


def test_rows_of_long_dead_nodes_are_dropped(directory: NodeDirectory, clock: Clock) -> None:
    """A row silent FORGOTTEN_SECONDS before the newest goes; a younger dead one stays."""
    _row(directory, "ancient", "h", clock.now - FORGOTTEN_SECONDS - 1)
    _row(directory, "dead", "h", clock.now - 2 * ORPHAN_SECONDS)
    _row(directory, "live", "h", clock.now)
    assert directory.dead_nodes() == {"ancient", "dead"}
    assert directory.node("ancient", cached=False) is None
    assert directory.node("dead", cached=False) is not None


def test_a_node_id_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    """A second claim of a held id fails naming the holder's pid; after release it succeeds."""
    first, second = NodeLock("node-1", tmp_path), NodeLock("node-1", tmp_path)
    first.claim()
    with pytest.raises(
        RequestError, match=f"in use by another process on this host \\(pid {os.getpid()}\\)"
    ):
        second.claim()
    NodeLock("node-2", tmp_path).claim()  # another id: free
    first.release()
    second.claim()
    second.release()


def test_a_nodes_predecessor_is_told_apart_from_itself_and_other_nodes() -> None:
    """Only containers of this node id with another owner are an earlier life's."""
    mine = owner_labels("node-1")
    assert mine[LABEL_OWNER_NODE] == "node-1"
    assert not left_by_predecessor(mine, "node-1")
    earlier = {**mine, "athena.owner.pid": "1", "athena.owner.host": "old-pod"}
    assert left_by_predecessor(earlier, "node-1")
    assert not left_by_predecessor(earlier, "node-2")
    assert not left_by_predecessor(earlier, None)
    assert not left_by_predecessor(owner_labels(), "node-1")  # no node label: not a node's
    assert LABEL_OWNER_NODE not in owner_labels()
