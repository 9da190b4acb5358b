"""The warm pool on the real engine: never-used containers, lazy start, refill, TTL, faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.backends.docker.owners import LABEL_OWNER_PID, LABEL_POOL
from orchestrator.settings import Settings
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.docker


def _pooled(docker_client: docker.DockerClient, pid: int | None = None) -> list[dict[str, Any]]:
    labels = [LABEL_POOL, f"{LABEL_OWNER_PID}={pid or os.getpid()}"]
    containers: list[dict[str, Any]] = docker_client.api.containers(filters={"label": labels})
    return containers


@pytest.fixture
def warm_api(tmp_path: Path, project_dir: Path) -> Any:
    """A MemoryAPI with a pool of two per (language, policy) and a short idle TTL."""
    settings = Settings(project_dir=project_dir, pool_size=2, pool_idle_ttl_seconds=3)
    with MemoryAPI.create(tmp_path / "m.db", settings=settings) as api:
        yield api


def test_pools_start_lazily_and_only_for_what_is_used(
    warm_api: MemoryAPI, docker_client: docker.DockerClient
) -> None:
    """A new API holds no warm container; the first run fills only its own language's pool."""
    time.sleep(1)
    assert _pooled(docker_client) == []
    first = warm_api.execute_code("print(1)")
    assert first["isolation"]["path"] == "cold"  # the pool starts with this demand
    assert wait_until(lambda: len(_pooled(docker_client)) == 2, timeout=30)
    languages = {c["Labels"]["athena.language"] for c in _pooled(docker_client)}
    assert languages == {"python"}


def test_warm_runs_take_never_used_containers_and_the_pool_refills(
    warm_api: MemoryAPI, docker_client: docker.DockerClient
) -> None:
    """Each warm run gets its own container (never one that ran before); the pool refills."""
    assert warm_api.prewarm("python")
    seen = set()
    for index in range(4):
        assert warm_api.prewarm("python")  # waits until a pooled container is ready
        r = warm_api.execute_code(
            "import os\nprint(os.path.exists('/tmp/mark'))\nopen('/tmp/mark', 'w')"
        )
        assert r["isolation"]["path"] == "warm", index
        assert r["stdout"] == "False\n"
        seen.add(r["sandbox_id"])
    assert len(seen) == 4
    assert wait_until(lambda: len(_pooled(docker_client)) == 2, timeout=30)


def test_idle_pools_shrink_to_the_minimum(
    warm_api: MemoryAPI, docker_client: docker.DockerClient
) -> None:
    """A pool not used for its idle TTL lets its containers go (minimum 0)."""
    assert warm_api.prewarm("bash")
    assert wait_until(lambda: len(_pooled(docker_client)) == 2, timeout=30)
    assert wait_until(lambda: _pooled(docker_client) == [], timeout=15)


def test_a_pooled_container_that_died_is_replaced_before_the_code_starts(
    warm_api: MemoryAPI, docker_client: docker.DockerClient
) -> None:
    """Killing idle pooled containers does not fail the next run; its output is its own."""
    assert warm_api.prewarm("python")
    assert wait_until(lambda: len(_pooled(docker_client)) == 2, timeout=30)
    for container in _pooled(docker_client):
        docker_client.api.kill(container["Id"])
    r = warm_api.execute_code("print(parameters['n'] * 3)", parameters={"n": 14})
    assert r["success"], r["error"]
    assert r["stdout"] == "42\n"


def test_timeout_clock_starts_with_the_code_not_in_the_pool_wait(
    tmp_path: Path, project_dir: Path
) -> None:
    """A run that waited for a warm container still gets its whole timeout for its code."""
    settings = Settings(project_dir=project_dir, pool_size=1, pool_wait_seconds=60)
    with MemoryAPI.create(tmp_path / "m.db", settings=settings) as api:
        # No pool yet: this run waits for a container to be created and started (~0.2 s).
        r = api.execute_code("import time\ntime.sleep(0.8)\nprint('done')", timeout_seconds=1)
    assert r["success"], r["violations"]
    assert r["isolation"]["path"] == "warm"


OWNER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from athena.mcp.memory_api import MemoryAPI
    from orchestrator.settings import Settings
    api = MemoryAPI.create(sys.argv[1], settings=Settings(pool_size=3))
    api.prewarm("python")
    api.prewarm("bash")
    print("warm", flush=True)
    time.sleep(120)
    """
)


def test_pooled_containers_die_with_their_owner(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """SIGKILL of a process holding a warm pool removes all its pooled containers within seconds."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT, str(tmp_path / "m.db")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        # Log lines may come first (the start-up sweep says what it removed).
        assert "warm\n" in iter(owner.stdout.readline, "")
        assert wait_until(lambda: len(_pooled(docker_client, owner.pid)) >= 2, timeout=30)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        label = {"label": f"{LABEL_OWNER_PID}={owner.pid}"}
        gone = wait_until(lambda: not docker_client.api.containers(all=True, filters=label), 10)
        assert gone, "pooled containers outlived their SIGKILLed owner"
    finally:
        owner.kill()
        owner.wait(10)


def test_a_policy_the_engine_refuses_fails_clearly_and_starves_no_other_pool(
    warm_api: MemoryAPI,
) -> None:
    """A run the engine cannot start ends with the engine's own reason; other pools still fill."""
    bad = {"limits": {"cpus": 256}}
    for _ in range(3):  # the bad pool's refills keep failing in the background meanwhile
        r = warm_api.execute_code("print(1)", sandbox_policy=bad)
        assert not r["success"] and "CPUs" in r["error"], r["error"]
        assert "No such container" not in r["error"]
    assert warm_api.prewarm("python"), "strict's pool never filled"
    r = warm_api.execute_code("print('warm')")
    assert r["success"] and r["isolation"]["path"] == "warm", r
