"""The Docker backend's cold path and lifecycle: the hosts file, the watchdog, closing quickly."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends import hostsfile
from orchestrator.backends.docker import watchdog
from orchestrator.backends.docker.blueprints import Blueprints
from orchestrator.backends.docker.egress import EgressSetup
from orchestrator.backends.docker.live import LiveContainers
from orchestrator.backends.docker.sandbox import Sandbox
from orchestrator.backends.docker.watchdog import Watchdog
from orchestrator.backends.mountstage import MountStage
from orchestrator.policy import load_policy
from orchestrator.run import RunSpec
from orchestrator.settings import Settings
from orchestrator.testing import FakeEngine

# ----------------------------------------------------------------------------- the hosts file


def test_the_hosts_file_holds_what_docker_writes_and_everyone_may_read_it(tmp_path: Path) -> None:
    """It names localhost on both loopbacks, is read-only to others, in a directory of ours."""
    path = hostsfile.hosts_file(tmp_path / "dir")
    assert path == str(tmp_path / "dir" / "hosts")
    text = Path(path).read_text("ascii")
    assert text == hostsfile.HOSTS_TEXT
    assert "127.0.0.1\tlocalhost\n" in text and "::1\tlocalhost " in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert not os.stat(tmp_path / "dir").st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def test_the_hosts_file_is_written_once_and_mended_when_changed(tmp_path: Path) -> None:
    """A second call keeps the same file; a file with other lines is replaced, not appended."""
    path = Path(str(hostsfile.hosts_file(tmp_path)))
    inode = path.stat().st_ino
    assert hostsfile.hosts_file(tmp_path) == str(path)
    assert path.stat().st_ino == inode
    path.write_text("10.0.0.1\tlocalhost\n")
    assert hostsfile.hosts_file(tmp_path) == str(path)
    assert path.read_text("ascii") == hostsfile.HOSTS_TEXT
    assert [p.name for p in tmp_path.iterdir()] == ["hosts"]  # no temporary file left


def test_a_directory_others_may_write_is_not_used(tmp_path: Path) -> None:
    """A group- or world-writable directory (someone could swap the file) gives no hosts file."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert hostsfile.hosts_file(shared) is None
    assert not (shared / "hosts").exists()


def test_a_link_in_place_of_the_directory_is_not_followed(tmp_path: Path) -> None:
    """A symlink where the directory should be gives no hosts file, and nothing is written."""
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    assert hostsfile.hosts_file(tmp_path / "link") is None
    assert list(target.iterdir()) == []


# ----------------------------------------------------------------------------- blueprints


class LocalEngine(FakeEngine):
    """An engine on this host; its bodies show the create call's NetworkDisabled too."""

    def local(self) -> bool:
        return True

    def container_body(self, create: dict[str, Any], host_config: dict[str, Any]) -> dict[str, Any]:
        body = super().container_body(create, host_config)
        return {**body, "NetworkDisabled": create.get("network_disabled", False)}


@pytest.fixture
def blueprints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Blueprints]:
    monkeypatch.setattr(hostsfile, "default_dir", lambda: tmp_path / "hosts-dir")
    stage = MountStage()
    yield Blueprints(Settings(), EgressSetup(), stage)
    stage.close()


@pytest.fixture
def pair() -> Iterator[socket.socket]:
    ours, theirs = socket.socketpair()
    yield ours
    ours.close()
    theirs.close()


def test_a_local_engine_gets_networking_disabled_and_the_hosts_file(
    blueprints: Blueprints, pair: socket.socket, tmp_path: Path
) -> None:
    """On an engine of this host, a no-network policy's containers are created with networking
    disabled and our hosts file bound read-only at /etc/hosts."""
    body = blueprints.build(LocalEngine(pair), "python", load_policy("strict"), RunSpec(5.0)).body
    assert body["NetworkDisabled"] is True
    assert body["HostConfig"]["network_mode"] == "none"
    hosts = str(tmp_path / "hosts-dir" / "hosts")
    assert body["HostConfig"]["mounts"] == [
        {"Type": "bind", "Source": hosts, "Target": "/etc/hosts", "ReadOnly": True}
    ]
    assert Path(hosts).read_text("ascii") == hostsfile.HOSTS_TEXT


def test_an_engine_elsewhere_keeps_dockers_none_network(
    blueprints: Blueprints, pair: socket.socket, tmp_path: Path
) -> None:
    """An engine that is not on this host cannot bind our file: Docker's none network, no mount."""
    body = blueprints.build(FakeEngine(pair), "python", load_policy("strict"), RunSpec(5.0)).body
    assert body["HostConfig"]["network_mode"] == "none"
    assert body["HostConfig"]["mounts"] == []
    assert not (tmp_path / "hosts-dir").exists()


# ----------------------------------------------------------------------------- closing


class SlowRemovals(FakeEngine):
    """Removals that take a while, as the engine's do for a running container."""

    def remove(self, container_id: str) -> None:
        time.sleep(0.5)
        super().remove(container_id)


def test_containers_let_go_while_closing_are_removed_together(pair: socket.socket) -> None:
    """While the backend closes, let-go containers are removed beside each other in the
    background, and close() returns once all are gone."""
    engine, live = SlowRemovals(pair), LiveContainers()
    for name in "abcd":
        live.add(name)
    live.refuse_new()
    started = time.monotonic()
    for name in "abcd":
        live.release(engine, name, finished=False)
    assert time.monotonic() - started < 0.4  # not one after the other on the caller's thread
    live.close(engine)
    assert sorted(engine.removed) == list("abcd")
    assert time.monotonic() - started < 1.6  # four half-second removals, not in a row


def test_cutting_closes_every_stream_and_keeps_the_containers_for_close(
    pair: socket.socket,
) -> None:
    """cut() gives every live sandbox's runner EOF; close() still removes its container."""
    engine, live = FakeEngine(pair), LiveContainers()
    ours, theirs = socket.socketpair()
    live.add("a", Sandbox("a", ours, ours, "img", "warm"))
    live.cut()
    theirs.settimeout(5)
    assert theirs.recv(1) == b""  # the runner's end sees EOF
    live.close(engine)
    assert engine.removed == ["a"]
    theirs.close()


# ----------------------------------------------------------------------------- the watchdog


@pytest.fixture
def fake_engine_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A Unix socket standing in for the engine: a watchdog's sweep connects to it."""
    path = tmp_path / "engine.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    yield listener
    listener.close()


def _connections(listener: socket.socket, wait: float, process: Any = None) -> int:
    """Accept (and drop) connections for ``wait`` s, or until ``process`` has exited; count them."""
    seen, deadline = 0, time.monotonic() + wait
    listener.settimeout(0.1)
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        connection.close()
        seen += 1
    return seen


LABELS = {"athena.test.watchdog": "1"}


def test_a_clean_close_ends_the_watchdog_without_a_sweep(
    fake_engine_socket: socket.socket,
) -> None:
    """close() tells both watchers nothing is left: they exit at once and never ask the engine."""
    dog = Watchdog()
    dog.arm(lambda: LABELS)
    pid = dog.pid
    assert pid is not None
    dog.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: close() waited for it
    assert _connections(fake_engine_socket, 0.5) == 0


def test_an_owner_gone_without_a_word_sets_both_watchers_off(
    fake_engine_socket: socket.socket,
) -> None:
    """Pipes closed without the clean word (the owner died): the watchers sweep (they ask the
    engine for the owner's containers)."""
    started = watchdog.spawn(LABELS)
    started.await_armed()
    assert started.process.stdin is not None
    started.process.stdin.close()
    os.close(started.second_pipe)
    assert _connections(fake_engine_socket, 30.0, started.process) >= 1
    assert started.process.wait(5) == 0


def test_launching_does_not_wait_and_arming_waits_once() -> None:
    """launch() returns before the watchdog is ready; arm() then waits for it, from any thread."""
    dog = Watchdog()
    try:
        dog.launch(lambda: LABELS)
        pid = dog.pid
        threads = [threading.Thread(target=dog.arm, args=(lambda: LABELS,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert dog.pid == pid  # one watchdog, however many callers
        assert not any(thread.is_alive() for thread in threads)
    finally:
        dog.close()


def test_a_hosts_file_removed_meanwhile_is_written_again(
    blueprints: Blueprints, pair: socket.socket, tmp_path: Path
) -> None:
    """A cleaner of the temporary directory removing the file does not break later runs: the
    next blueprint lookup writes it again (the engine would refuse to bind a missing file)."""
    engine, strict = LocalEngine(pair), load_policy("strict")
    blueprint = blueprints.build(engine, "python", strict, RunSpec(5.0))
    hosts = Path(blueprint.body["HostConfig"]["mounts"][0]["Source"])
    hosts.unlink()
    assert blueprints.build(engine, "python", strict, RunSpec(5.0)) is blueprint
    assert hosts.read_text("ascii") == hostsfile.HOSTS_TEXT
