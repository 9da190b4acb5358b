"""Custom images on the real engine: built FROM ours, selected by a call or a policy, refused."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.custom_images import (
    CallImageRefusedError,
    ImageRefusedError,
    PolicyImageRefusedError,
    build_custom,
)
from orchestrator.errors import RequestError
from orchestrator.images import DEBIAN_SUITE
from orchestrator.models import ExecutionRequest
from orchestrator.orchestrator import Orchestrator
from orchestrator.settings import Settings

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / ".venv" / "bin" / "athena-sandbox"
PREFIX = Settings().image_prefix
PROBE = "import athena_custom_probe; print(athena_custom_probe.VALUE, open('/opt/custom/data.txt').read())"
Build = Callable[[str, str], str]


def _unique(stem: str) -> str:
    return f"athena-test-{stem}-{uuid.uuid4().hex[:8]}:1"


def _remove(client: docker.DockerClient, name: str) -> None:
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.api.remove_image(name, force=True)


@pytest.fixture(scope="module")
def images_built(
    docker_client: docker.DockerClient, sandbox_images: dict[str, str], tmp_path_factory: Any
) -> Iterator[Build]:
    """Build Dockerfiles with build-image's code (``build_custom``); remove each at the end."""
    built: list[str] = []

    def build(stem: str, dockerfile: str) -> str:
        context = tmp_path_factory.mktemp(stem)
        (context / "Dockerfile").write_text(dockerfile)
        name = _unique(stem)
        built.append(name)
        build_custom(name, context, progress=lambda _line: None, client=docker_client)
        return name

    yield build
    for name in built:
        _remove(docker_client, name)


@pytest.fixture(scope="module")
def token() -> str:
    """What the custom python image's module and data file hold: unique to this session."""
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def custom_python(images_built: Build, token: str) -> str:
    """A python image with a module in dist-packages and a data file of its own."""
    return images_built(
        "python",
        f"FROM {PREFIX}/python:latest\n"
        "USER 0:0\n"
        f"RUN echo 'VALUE = \"{token}\"' > /usr/lib/python3/dist-packages/athena_custom_probe.py"
        f" && mkdir -p /opt/custom && printf data > /opt/custom/data.txt\n"
        "USER 65534:65534\n",
    )


@pytest.fixture(scope="module")
def custom_javascript(images_built: Build) -> str:
    """A javascript image with one more file."""
    return images_built(
        "javascript",
        f"FROM {PREFIX}/javascript:latest\nUSER 0:0\nRUN echo hi > /opt/hi.txt\nUSER 65534:65534\n",
    )


@pytest.fixture(scope="module")
def unlabelled(docker_client: docker.DockerClient, tmp_path_factory: Any) -> Iterator[str]:
    """An image FROM our Debian base (no runner, no labels), built with plain docker-py."""
    context = tmp_path_factory.mktemp("unlabelled")
    (context / "Dockerfile").write_text(f"FROM {PREFIX}/base:{DEBIAN_SUITE}\nRUN echo x > /x\n")
    name = _unique("unlabelled")
    docker_client.images.build(path=str(context), tag=name, rm=True, forcerm=True, pull=False)
    yield name
    _remove(docker_client, name)


@pytest.fixture
def cold_api(tmp_path: Path) -> Iterator[MemoryAPI]:
    """A MemoryAPI without a warm pool: each run starts its own container."""
    with MemoryAPI.create(str(tmp_path / "memory.db"), settings=Settings(pool_size=0)) as api:
        yield api


def _check_probe(result: dict[str, Any], image: str, token: str) -> None:
    assert result["success"], result
    assert result["stdout"].split() == [token, "data"]
    assert result["isolation"]["image"] == image


def test_a_call_runs_in_its_custom_image(
    cold_api: MemoryAPI, custom_python: str, token: str
) -> None:
    """image= on execute_code: the code sees the image's module and file; isolation names it."""
    _check_probe(cold_api.execute_code(PROBE, image=custom_python), custom_python, token)


def test_a_policy_selects_its_custom_image(
    cold_api: MemoryAPI, custom_python: str, token: str
) -> None:
    """image: in a policy dict (extends strict) runs the code in that image."""
    policy = {"extends": "strict", "image": custom_python}
    _check_probe(cold_api.execute_code(PROBE, sandbox_policy=policy), custom_python, token)
    plain = cold_api.execute_code("print(1)")
    assert plain["isolation"]["image"] == f"{PREFIX}/python:latest"


def test_the_orchestrator_runs_a_request_in_its_image(custom_python: str, token: str) -> None:
    """ExecutionRequest.create(image=...) through the Orchestrator itself."""
    with Orchestrator(settings=Settings(pool_size=0)) as orchestrator:
        request = ExecutionRequest.create(PROBE, "python", image=custom_python)
        result = orchestrator.execute(request)
    assert result.success, result
    assert result.stdout.split() == [token, "data"]
    assert result.isolation is not None and result.isolation.image == custom_python


def test_a_warm_pool_serves_a_custom_image(tmp_path: Path, custom_python: str, token: str) -> None:
    """prewarm with the image's policy fills its pool; the next run of it takes a warm one."""
    policy = {"extends": "strict", "image": custom_python}
    settings = Settings(pool_size=1, pool_wait_seconds=60)
    with MemoryAPI.create(str(tmp_path / "memory.db"), settings=settings) as api:
        assert api.prewarm("python", policy)
        result = api.execute_code(PROBE, sandbox_policy=policy)
    _check_probe(result, custom_python, token)
    assert result["isolation"]["path"] == "warm"


def test_an_image_without_our_labels_is_refused(cold_api: MemoryAPI, unlabelled: str) -> None:
    """FROM our Debian base: refused before any container, naming the image and the fix."""
    with pytest.raises(CallImageRefusedError) as by_call:
        cold_api.execute_code("print(1)", image=unlabelled)
    assert isinstance(by_call.value, RequestError)
    message = str(by_call.value)
    assert unlabelled in message and f"not built FROM {PREFIX}/python:latest" in message
    with pytest.raises(PolicyImageRefusedError, match="not built FROM"):
        cold_api.execute_code("print(1)", sandbox_policy={"extends": "strict", "image": unlabelled})


def test_an_image_of_another_language_is_refused(
    cold_api: MemoryAPI, custom_javascript: str
) -> None:
    """A javascript-derived image for a python run: refused naming both languages; it still
    runs javascript."""
    with pytest.raises(ImageRefusedError, match="serves javascript, not python"):
        cold_api.execute_code("print(1)", image=custom_javascript)
    result = cold_api.execute_code(
        "console.log(require('fs').readFileSync('/opt/hi.txt', 'utf8').trim())",
        "javascript",
        image=custom_javascript,
    )
    assert result["success"] and result["stdout"].strip() == "hi", result
    assert result["isolation"]["image"] == custom_javascript


def test_a_missing_image_fails_the_run_saying_how_to_build_it(cold_api: MemoryAPI) -> None:
    """A custom image that does not exist: success False, ImageNotFoundError, build-image."""
    missing = _unique("missing")
    result = cold_api.execute_code("print(1)", image=missing)
    assert not result["success"]
    assert result["error_type"] == "ImageNotFoundError"
    assert missing in result["error"] and "athena-sandbox build-image" in result["error"]


def test_build_image_prints_the_language_it_serves(
    docker_client: docker.DockerClient, sandbox_images: dict[str, str], tmp_path: Path
) -> None:
    """The CLI builds a Dockerfile FROM our bash image and prints NAME: bash."""
    (tmp_path / "Dockerfile").write_text(f"FROM {PREFIX}/bash:latest\n")
    name = _unique("cli")
    try:
        done = subprocess.run(
            [str(CLI), "build-image", name, str(tmp_path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{name}: bash"
        assert "[build-image]" in done.stderr
    finally:
        _remove(docker_client, name)


def test_build_image_refuses_a_dockerfile_not_from_ours(
    docker_client: docker.DockerClient, sandbox_images: dict[str, str], tmp_path: Path
) -> None:
    """FROM our Debian base: exit 1, a message saying what to start FROM, and no tag left."""
    (tmp_path / "Dockerfile").write_text(f"FROM {PREFIX}/base:{DEBIAN_SUITE}\nRUN echo x > /x\n")
    name = _unique("refused")
    try:
        done = subprocess.run(
            [str(CLI), "build-image", name, str(tmp_path)], capture_output=True, text=True
        )
        assert done.returncode == 1
        assert "not built FROM one of our images" in done.stderr
        assert f"FROM {PREFIX}/<language>:latest" in done.stderr
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.api.inspect_image(name)
    finally:
        _remove(docker_client, name)
