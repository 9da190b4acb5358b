"""The Docker cold path on the real engine: networking disabled at creation, and a fresh API.

A sandbox without a network is created with networking disabled (no engine network set-up) and
our hosts file: these tests check from inside, under runc and gVisor, that it still sees only
``lo`` and reaches nothing of the host, and that a fresh API's first run and close wait for
nothing they did not ask for.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.backends.docker.owners import LABEL_OWNER_PID, LABEL_POOL, LABEL_RUN
from orchestrator.settings import Settings
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.docker

PROBE = r"""
import errno, json, os, socket
def rows(path):
    try:
        with open(path) as handle:
            return handle.read().splitlines()
    except OSError as exc:
        return ['unreadable: ' + repr(exc)]
def connect(family, address):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.connect(address)
            return 'connected'
        except OSError as exc:
            return errno.errorcode.get(exc.errno, repr(exc))
print(json.dumps({
    'interfaces': sorted(name for _, name in socket.if_nameindex()),
    'sys_class_net': sorted(os.listdir('/sys/class/net')),
    'proc_net_dev': sorted(r.split(':')[0].strip() for r in rows('/proc/net/dev')[2:]),
    'ipv4_routes': rows('/proc/net/route')[1:],
    'gateway': connect(socket.AF_INET, (parameters['gateway'], parameters['port'])),
    'abstract': connect(socket.AF_UNIX, '\0' + parameters['abstract']),
    'localhost': sorted({a[4][0] for a in socket.getaddrinfo('localhost', 80)}),
}))
"""


@pytest.fixture
def host_listeners() -> Iterator[dict[str, Any]]:
    """A TCP listener on every host address and an abstract Unix socket; what reaches them."""
    tcp = socket.create_server(("0.0.0.0", 0))
    abstract_name = f"athena-test-{secrets.token_hex(6)}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind("\0" + abstract_name)
    unix.listen()
    reached: list[str] = []

    def accept(listener: socket.socket, what: str) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            reached.append(what)
            connection.close()

    for listener, what in ((tcp, "tcp"), (unix, "abstract")):
        threading.Thread(target=accept, args=(listener, what), daemon=True).start()
    yield {"port": tcp.getsockname()[1], "abstract": abstract_name, "reached": reached}
    tcp.close()
    unix.close()


def _bridge_gateway(docker_client: docker.DockerClient) -> str:
    (config,) = docker_client.api.inspect_network("bridge")["IPAM"]["Config"]
    return str(config["Gateway"])


@pytest.mark.parametrize(("base", "runtime"), [("strict", "runc"), ("strict-gvisor", "runsc")])
def test_a_sandbox_without_network_sees_only_loopback_and_reaches_nothing(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    host_listeners: dict[str, Any],
    base: str,
    runtime: str,
) -> None:
    """No interface but lo (in every view), no IPv4 route, the bridge gateway unreachable, the
    host's abstract Unix sockets out of reach (another network namespace); localhost resolves."""
    # Validation off: no run-time guard, so the kernel allows sockets and only the network
    # namespace stands between the code and the host.
    policy = {"name": f"{base}-probe", "extends": base, "validation": {"enforce": False}}
    parameters = {"gateway": _bridge_gateway(docker_client), **host_listeners}
    del parameters["reached"]
    with MemoryAPI.create(tmp_path / "m.db", settings=Settings(pool_size=0)) as api:
        result = api.execute_code(PROBE, parameters=parameters, sandbox_policy=policy)
    assert result["success"], result
    assert result["isolation"]["runtime"].startswith(runtime)
    seen = json.loads(result["stdout"])
    assert seen["interfaces"] == seen["sys_class_net"] == seen["proc_net_dev"] == ["lo"]
    assert seen["ipv4_routes"] == []
    assert seen["gateway"] in ("ENETUNREACH", "EHOSTUNREACH"), seen
    assert seen["abstract"] == "ECONNREFUSED", seen
    assert seen["localhost"] == ["127.0.0.1", "::1"]  # the hosts file stands in for Docker's
    time.sleep(0.5)
    assert host_listeners["reached"] == []


def _events(docker_client: docker.DockerClient, since: float, policy: str) -> list[dict[str, Any]]:
    """Container create and start events of ``policy``'s sandboxes since ``since``, in order."""
    stream = docker_client.api.events(
        since=since,
        until=time.time(),
        filters={"type": "container", "label": f"athena.policy={policy}"},
        decode=True,
    )
    return [e for e in stream if e.get("Action") in ("create", "start")]


def test_a_fresh_apis_first_run_starts_before_the_pool_fills(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """The first run of a fresh API (empty pool) has its container started before the pool
    creates any: the pool's launches do not compete with it; the pool still fills."""
    policy = f"coldpath-{secrets.token_hex(4)}"  # its label tells this test's containers apart
    since = time.time() - 1
    with MemoryAPI.create(tmp_path / "m.db", settings=Settings(pool_size=2)) as api:
        result = api.execute_code("print(1)", sandbox_policy={"name": policy})
        assert result["success"] and result["isolation"]["path"] == "cold"
        assert wait_until(lambda: api.orchestrator.pool_sizes().get(("docker", "python")) == 2, 30)
    events = _events(docker_client, since, policy)
    cold_start = [
        e["timeNano"]
        for e in events
        if e["Action"] == "start"
        and e["Actor"]["Attributes"].get(LABEL_RUN) == result["execution_id"]
    ]
    pooled = [
        e["timeNano"]
        for e in events
        if e["Action"] == "create" and LABEL_POOL in e["Actor"]["Attributes"]
    ]
    assert len(cold_start) == 1 and len(pooled) >= 2
    assert min(pooled) > cold_start[0]


def _watchdogs_of(pid: int) -> list[int]:
    """Processes running the watchdog of owner ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            any(a.endswith(b"watcher.py") for a in argv)
            and f"{LABEL_OWNER_PID}={pid}".encode() in argv
        ):
            found.append(int(entry.name))
    return found


def test_closing_a_fresh_api_leaves_no_watchdog_and_no_container(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """close() ends the watchdog (both watchers) before it returns, and the pooled and
    in-flight containers go."""
    label = f"{LABEL_OWNER_PID}={os.getpid()}"  # other APIs of this process may hold some

    def containers() -> set[str]:
        listed = docker_client.api.containers(all=True, filters={"label": label})
        return {c["Id"] for c in listed}

    watchdogs, before = set(_watchdogs_of(os.getpid())), containers()
    api = MemoryAPI.create(tmp_path / "m.db", settings=Settings(pool_size=2))
    try:
        assert api.execute_code("print(1)")["success"]
        assert set(_watchdogs_of(os.getpid())) - watchdogs
        assert api.prewarm("python")
        assert containers() - before
    finally:
        api.close()
    assert set(_watchdogs_of(os.getpid())) - watchdogs == set()
    assert wait_until(lambda: containers() <= before, 10)
