"""Container lifecycle: nothing outlives its run, its owner, or a failure; errors are clear."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.backends.docker import DockerBackend
from orchestrator.backends.docker.owners import (
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_STARTED,
    LABEL_SANDBOX,
    owner_labels,
)
from orchestrator.settings import Settings
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.docker


@pytest.mark.parametrize(
    ("language", "code", "timeout"),
    [
        ("python", "print('ok')", 10),
        ("python", "while True: pass", 1),
        ("bash", "kill -SEGV $$", 10),
        ("python", "x = bytearray(2 * 1024**3)", 10),
        ("javascript", "throw new Error('crash')", 10),
    ],
    ids=["success", "timeout", "crash", "oom", "exception"],
)
def test_container_is_removed_after_the_run(
    api: MemoryAPI,
    containers_of: Callable[[dict[str, Any]], list[Any]],
    language: str,
    code: str,
    timeout: float,
) -> None:
    """Whatever way a run ends, its container is gone within a few seconds."""
    r = api.execute_code(code, language, timeout_seconds=timeout)
    assert r["sandbox_id"]
    assert wait_until(lambda: not containers_of(r), timeout=5)


OWNER_SCRIPT = textwrap.dedent(
    """
    import sys
    from athena.mcp.memory_api import MemoryAPI
    api = MemoryAPI.create(sys.argv[1])
    api.execute_code("import time\\nprint('in', flush=True)\\ntime.sleep(120)", timeout_seconds=100)
    """
)


def test_container_dies_with_its_owner_even_on_sigkill(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """SIGKILL of the process that asked for a run removes its container within seconds."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT, str(tmp_path / "m.db")])
    label = f"{LABEL_OWNER_PID}={owner.pid}"

    def running() -> bool:
        return bool(docker_client.api.containers(filters={"label": label, "status": "running"}))

    try:
        assert wait_until(running, timeout=30), "the owner never started its sandbox"
        time.sleep(0.5)  # let the code start sleeping
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        gone = wait_until(
            lambda: not docker_client.api.containers(all=True, filters={"label": label}), 10
        )
        assert gone, "the sandbox outlived its SIGKILLed owner"
    finally:
        owner.kill()


def _orphan(docker_client: docker.DockerClient, labels: dict[str, str]) -> Any:
    return docker_client.containers.create(
        "athena-sandbox/bash:latest",
        entrypoint=["sleep", "300"],
        labels=labels,
        network_mode="none",
        user="65534:65534",
    )


def test_startup_sweep_removes_containers_of_dead_owners(
    docker_client: docker.DockerClient,
) -> None:
    """At first use the backend removes containers whose labelled owner is dead, not live ones."""
    dead = _orphan(
        docker_client,
        {
            LABEL_SANDBOX: "1",
            LABEL_OWNER_HOST: socket.gethostname(),
            LABEL_OWNER_PID: "4194305",
            LABEL_OWNER_STARTED: "1",
        },
    )
    reused_pid = _orphan(docker_client, {**owner_labels(), LABEL_OWNER_STARTED: "12345"})
    alive = _orphan(docker_client, owner_labels())
    other_host = _orphan(docker_client, {**owner_labels(), LABEL_OWNER_HOST: "some-other-host"})
    try:
        with DockerBackend(Settings(sweep_on_start=False)) as backend:
            removed = backend.sweep()
        remaining = {
            c["Id"]
            for c in docker_client.api.containers(all=True, filters={"label": LABEL_SANDBOX})
        }
        assert removed == 2
        assert dead.id not in remaining and reused_pid.id not in remaining
        assert alive.id in remaining and other_host.id in remaining
    finally:
        for container in (dead, reused_pid, alive, other_host):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


def test_first_run_sweeps_orphans(api: MemoryAPI, docker_client: docker.DockerClient) -> None:
    """The first run of a new orchestrator removes containers left by a dead owner."""
    dead = _orphan(
        docker_client,
        {
            LABEL_SANDBOX: "1",
            LABEL_OWNER_HOST: socket.gethostname(),
            LABEL_OWNER_PID: "4194305",
            LABEL_OWNER_STARTED: "1",
        },
    )
    try:
        assert api.execute_code("print(1)")["success"]
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(dead.id)
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            dead.remove(force=True)


def test_missing_image_is_a_clear_error(
    tmp_path: Path, containers_of: Callable[[dict[str, Any]], list[Any]]
) -> None:
    """A missing image gives success False with an error that says to run `make images`."""
    with MemoryAPI.create(tmp_path / "m.db", settings=Settings(image_tag="no-such-tag")) as api:
        r = api.execute_code("print(1)")
    assert not r["success"] and r["exit_code"] == -1
    assert r["error_type"] == "ImageNotFoundError" and "make images" in r["error"]
    assert not containers_of(r)


def test_unreachable_engine_is_a_clear_error_without_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no engine answering and only docker allowed, the run fails fast and says why."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    start = time.monotonic()
    with MemoryAPI.create(
        tmp_path / "m.db", settings=Settings(sandbox_backends=("docker",))
    ) as api:
        r = api.execute_code("print(1)")
        stored = api.store.get_execution(r["execution_id"])
    assert time.monotonic() - start < 10
    assert not r["success"] and r["error_type"] == "BackendUnavailableError"
    assert "make docker-up" in r["error"] and "no-engine.sock" in r["error"]
    assert stored is not None and stored.error_type == "BackendUnavailableError"


def test_closing_the_api_kills_runs_in_flight(
    tmp_path: Path,
    settings: Settings,
    containers_of: Callable[[dict[str, Any]], list[Any]],
) -> None:
    """close() while a run is going removes its container and the run returns."""
    import threading

    api = MemoryAPI.create(tmp_path / "m.db", settings=settings)
    results: list[dict[str, Any]] = []
    started = threading.Event()
    code = "import time\nprint('in', flush=True)\ntime.sleep(60)"
    worker = threading.Thread(
        target=lambda: results.append(
            api.execute_code(code, timeout_seconds=60, on_stdout=lambda _text: started.set())
        )
    )
    worker.start()
    assert started.wait(30), "the code never started"
    api.close()
    worker.join(15)
    assert not worker.is_alive()
    assert results and not results[0]["success"]
    assert "the API was closed" in results[0]["error"], results[0]["error"]
    assert "docker-up" not in results[0]["error"]
    assert wait_until(lambda: not containers_of(results[0]), timeout=5)


CREATOR_SCRIPT = textwrap.dedent(
    """
    import time, docker
    from orchestrator.backends.docker import DockerBackend
    from orchestrator.backends.docker.owners import owner_labels
    backend = DockerBackend()
    backend._ensure_watchdog()  # what the first run does
    client = docker.from_env()
    created = client.api.create_container(
        "athena-sandbox/bash:latest", entrypoint=["sleep", "300"], labels=owner_labels()
    )
    print(created["Id"], backend._watchdog.pid, flush=True)
    time.sleep(120)
    """
)


@pytest.mark.parametrize("with_watchdog", [False, True], ids=["owner", "owner-and-watchdog"])
def test_a_created_but_unstarted_container_goes_when_its_owner_dies(
    docker_client: docker.DockerClient, with_watchdog: bool
) -> None:
    """A container its SIGKILLed owner created but never started is removed, even when the
    owner's watchdog (its whole process group) is killed at the same moment."""
    owner = subprocess.Popen(
        [sys.executable, "-c", CREATOR_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        container_id, watchdog_pid = owner.stdout.readline().split()
        assert docker_client.api.inspect_container(container_id)["State"]["Status"] == "created"
        if with_watchdog:
            os.killpg(int(watchdog_pid), signal.SIGKILL)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        gone = wait_until(
            lambda: not docker_client.api.containers(all=True, filters={"id": container_id}), 10
        )
        assert gone, "a created container outlived its SIGKILLed owner"
    finally:
        owner.kill()
        owner.wait(10)
