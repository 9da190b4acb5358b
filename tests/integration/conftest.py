"""Integration fixtures: a real Docker engine, the images built once, nothing of ours left."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.backends.docker.owners import (
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_STARTED,
    LABEL_RUN,
    LABEL_SANDBOX,
    owner_labels,
)
from orchestrator.images import ImageBuilder
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A docker-py client; a missing engine fails the run (CI must have one)."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker engine answers ({exc}); run `make docker-up` first", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session", autouse=True)
def sandbox_images(docker_client: docker.DockerClient) -> dict[str, str]:
    """Build the sandbox images once per session (a no-op when they are up to date)."""
    return ImageBuilder(progress=lambda _line: None, client=docker_client).build_all()


OWNER_KEYS = (LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_OWNER_STARTED)


def owned_by(
    containers: Iterable[dict[str, Any]], owner: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Keep the containers (low-level list entries) whose owner labels all equal ``owner``'s."""
    return [
        c for c in containers if all((c.get("Labels") or {}).get(k) == owner[k] for k in OWNER_KEYS)
    ]


@pytest.fixture(scope="session", autouse=True)
def no_leftover_containers(docker_client: docker.DockerClient) -> Iterator[None]:
    """After the whole suite, no sandbox container this test process owns may exist.

    Only this process's (host, pid and start time): another user of the same engine, or a
    second suite running beside this one, never fails it. Containers of the suite's child
    processes are left to the start-up sweep and to .ci/run's check of dead owners.
    """
    yield
    mine = owner_labels()
    deadline = time.monotonic() + 10
    while True:
        listed = docker_client.api.containers(all=True, filters={"label": LABEL_SANDBOX})
        left = owned_by(listed, mine)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not left, f"sandbox containers left behind: {[c['Names'] for c in left]}"


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A project directory with one file, for the research and development mounts."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "data.csv").write_text("a,b\n1,2\n3,4\n")
    return project


@pytest.fixture(params=["cold", "warm"])
def sandbox_path(request: pytest.FixtureRequest) -> str:
    """Run the test on the cold path (a container per run) and on the warm path (the pool)."""
    return str(request.param)


@pytest.fixture
def settings(project_dir: Path, sandbox_path: str) -> Settings:
    """Settings for one path: no pool, or a pool every run waits for (so every run is warm)."""
    if sandbox_path == "cold":
        return Settings(project_dir=project_dir, pool_size=0)
    return Settings(project_dir=project_dir, pool_size=1, pool_wait_seconds=60)


@pytest.fixture
def memory_target(tmp_path: Path) -> str:
    """Where the ``api`` fixture's store lives: a fresh SQLite file (a module may override it)."""
    return str(tmp_path / "memory.db")


@pytest.fixture
def api(memory_target: str, settings: Settings, sandbox_path: str) -> Iterator[MemoryAPI]:
    """A MemoryAPI on a fresh store and the real engine; every run takes ``sandbox_path``."""
    with MemoryAPI.create(memory_target, settings=settings) as memory_api:
        run = memory_api.execute_code

        def checked(*args: Any, **kwargs: Any) -> dict[str, Any]:
            result = run(*args, **kwargs)
            if result["sandbox_mode"] == "docker":
                assert result["isolation"]["path"] == sandbox_path, result["isolation"]
            return result

        memory_api.execute_code = checked  # type: ignore[method-assign]
        yield memory_api


@pytest.fixture
def containers_of(docker_client: docker.DockerClient) -> Callable[[dict[str, Any]], list[Any]]:
    """Return a function listing the containers (any state) a run's result points at."""

    def find(result: dict[str, Any]) -> list[Any]:
        # The low-level list: it does not inspect each container, which races with removal.
        api = docker_client.api
        found: list[Any] = api.containers(
            all=True, filters={"label": f"{LABEL_RUN}={result['execution_id']}"}
        )
        if result["sandbox_id"]:
            found += api.containers(all=True, filters={"id": result["sandbox_id"]})
        return found

    return find


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# ----------------------------------------------------------------------------- pytest-docker


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    """Debian's docker-compose (v1); .ci/run installs it."""
    return "docker-compose"


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    """Our compose file: a web server of our own on Docker's default bridge."""
    return str(ROOT / "tests" / "integration" / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    """A fixed project name, so a crashed run's leftovers are replaced, not duplicated."""
    return "athena-sandbox-tests"


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    """docker-compose v1 knows no `--wait`: start detached; web_server waits for readiness."""
    return ["up -d"]


@pytest.fixture(scope="session")
def web_server(
    docker_services: Any, docker_ip: str, docker_client: docker.DockerClient, sandbox_images: Any
) -> str:
    """Start the compose web server; return its ``http://<bridge ip>:8080/`` address."""
    import urllib.request

    host_port = docker_services.port_for("web", 8080)

    def responsive() -> bool:
        try:
            with urllib.request.urlopen(f"http://{docker_ip}:{host_port}/pyboot.py", timeout=1):
                return True
        except OSError:
            return False

    docker_services.wait_until_responsive(check=responsive, timeout=30.0, pause=0.2)
    (web,) = docker_client.containers.list(filters={"label": "athena.test=web"})
    address = web.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    return f"http://{address}:8080/"


def mode_settings(
    name: str, tmp_path: Path, project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings that bind a MemoryAPI or Orchestrator to one mode of the contract suites.

    ``docker-cold``/``docker-warm``/``docker-runsc`` use the engine (the pool off, or one every
    run waits for); a fallback mode gets an unreachable engine, so the ladder itself picks it.
    """
    if name == "fast":  # the engine answers (the image's export), but only this mode may run
        return Settings(project_dir=project_dir, sandbox_backends=("fast",))
    if name.startswith("docker"):
        warm = name == "docker-warm"
        return Settings(
            project_dir=project_dir, pool_size=1 if warm else 0, pool_wait_seconds=60 if warm else 0
        )
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    return Settings(project_dir=project_dir, sandbox_backends=("docker", name))
