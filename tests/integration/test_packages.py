"""``requirements=`` on the real engine: packages installed through the real egress proxy.

A package index (PEP 503, plain HTTP) and a static npm registry run in one container of our own
on the egress network, pinned under pypi.org and registry.npmjs.org through the test-only
setting ``egress_pinned_hosts`` (as tests/integration/test_egress.py does). Nothing here
reaches a public index.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.backends.docker import egress
from orchestrator.errors import PolicyError, RequestError
from orchestrator.settings import Settings
from tests.integration.test_egress import _wheel

pytestmark = pytest.mark.docker

SERVER = "import http.server\nhttp.server.test(http.server.SimpleHTTPRequestHandler, port=80, bind='0.0.0.0')"


def _npm_package(root: Path) -> None:
    """A static npm registry: /athena-leftpad (the packument) and its tarball."""
    files = {
        "package/package.json": json.dumps({"name": "athena-leftpad", "version": "1.0.0"}),
        "package/index.js": "module.exports = (s, n) => String(s).padStart(n, '*');\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    tarball = buffer.getvalue()
    (root / "tarballs").mkdir()
    (root / "tarballs" / "athena-leftpad-1.0.0.tgz").write_bytes(tarball)
    version = {
        "name": "athena-leftpad",
        "version": "1.0.0",
        "dist": {
            "tarball": "http://registry.npmjs.org/tarballs/athena-leftpad-1.0.0.tgz",
            "shasum": hashlib.sha1(tarball).hexdigest(),
        },
    }
    packument = {
        "name": "athena-leftpad",
        "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": version},
    }
    (root / "athena-leftpad").write_text(json.dumps(packument))


@pytest.fixture(scope="module")
def index(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One HTTP server of our own holding a pip index and an npm registry; yields its address."""
    assert egress.ensure_network(docker_client.api)
    root = tmp_path_factory.mktemp("index")
    (root / "simple" / "athena-probe").mkdir(parents=True)
    wheel = _wheel(root / "simple" / "athena-probe")
    (root / "simple" / "athena-probe" / "index.html").write_text(f'<a href="{wheel}">{wheel}</a>\n')
    _npm_package(root)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    container = docker_client.containers.run(
        "athena-sandbox/python:latest",
        ["-c", SERVER],
        entrypoint=["python3"],
        user="0:0",
        working_dir="/srv",
        network=egress.NETWORK,
        detach=True,
        remove=True,
        volumes={str(root): {"bind": "/srv", "mode": "ro"}},
        labels={"athena.test": "packages"},
    )
    try:
        container.reload()
        yield container.attrs["NetworkSettings"]["Networks"][egress.NETWORK]["IPAddress"]
    finally:
        container.remove(force=True)


@pytest.fixture
def api(index: str, tmp_path: Path, project_dir: Path) -> Iterator[MemoryAPI]:
    """A MemoryAPI whose proxy resolves pypi.org and registry.npmjs.org to our server."""
    settings = Settings(
        project_dir=project_dir,
        egress_pinned_hosts={"pypi.org": index, "registry.npmjs.org": index},
        pip_index_url="http://pypi.org/simple",
        npm_registry="http://registry.npmjs.org",
        pool_size=0,
    )
    with MemoryAPI.create(tmp_path / "m.db", settings=settings) as created:
        yield created


def _run(api: MemoryAPI, code: str, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("sandbox_policy", "research")
    result = api.execute_code(code, timeout_seconds=90, **kwargs)
    assert result["sandbox_mode"] == "docker", (result["error_type"], result["error"])
    return result


def test_a_pip_requirement_is_installed_and_importable_under_research(api: MemoryAPI) -> None:
    """research installs athena-probe from the (pinned) index before the code, quietly."""
    code = "import athena_probe\nprint(athena_probe.VALUE)"
    r = _run(api, code, requirements=["athena-probe==1.0"])
    assert r["success"], r["stderr"]
    assert r["stdout"] == "installed through the egress proxy\n"
    assert r["stderr"] == "" and r["violations"] == []


def test_an_npm_requirement_is_installed_and_requirable_under_research(api: MemoryAPI) -> None:
    """npm installs athena-leftpad from our registry under /workspace, under research itself,
    whose guard refuses processes to the code (npm is the runner's process); require() finds
    it."""
    code = "console.log(require('athena-leftpad')('x', 3))"
    r = _run(api, code, language="javascript", requirements=["athena-leftpad@^1.0"])
    assert r["success"], r["stderr"]
    assert r["stdout"] == "**x\n"


def test_a_failed_npm_install_fails_the_run_clearly(api: MemoryAPI) -> None:
    """A package the registry lacks: the code does not run; stderr and a violation say why."""
    r = _run(api, "console.log('ran')", language="javascript", requirements=["athena-missing"])
    assert not r["success"] and r["exit_code"] == 1 and r["stdout"] == ""
    assert "[athena-sandbox] requirements could not be installed (npm exited" in r["stderr"]
    (violation,) = r["violation_details"]
    assert violation["category"] == "policy" and violation["detail"]["kind"] == "requirements"


def test_a_javascript_session_keeps_its_packages(api: MemoryAPI) -> None:
    """npm installs as a JavaScript session's call starts; later calls require it too."""
    with api.open_session("javascript", "research") as session:
        first = session.execute_code(
            "var pad = require('athena-leftpad')", requirements=["athena-leftpad"]
        )
        again = session.execute_code("console.log(pad('y', 2), require('athena-leftpad')('z', 2))")
    assert first["success"], first["stderr"]
    assert again["stdout"] == "*y *z\n"


def test_requirements_are_refused_under_strict(api: MemoryAPI) -> None:
    """strict has no network: PolicyError naming the policy and network.allowed_domains."""
    with pytest.raises(PolicyError, match=r"'strict'.*network.allowed_domains"):
        api.execute_code("print(1)", sandbox_policy="strict", requirements=["athena-probe"])


def test_npm_under_strict_is_refused_with_the_reason(api: MemoryAPI) -> None:
    """strict has no network: npm is refused before anything runs, naming the key."""
    with pytest.raises(PolicyError, match=r"'strict'.*network.allowed_domains"):
        api.execute_code("1", "javascript", sandbox_policy="strict", requirements=["lodash"])


@pytest.mark.parametrize(
    "spec",
    ["http://evil.test/x.whl", "./pkg", "--index-url=http://evil", "x; rm -rf /", "-e ."],
)
def test_bad_specs_are_refused_before_anything_runs(api: MemoryAPI, spec: str) -> None:
    """URLs, paths, options and shell words are not requirement specs."""
    with pytest.raises(RequestError, match=r"requirements\[0\]"):
        api.execute_code("print(1)", sandbox_policy="research", requirements=[spec])


def test_an_unknown_package_fails_the_run_clearly(api: MemoryAPI) -> None:
    """A package the index lacks: the code does not run, stderr says so, a violation too."""
    r = _run(api, "print('ran')", requirements=["athena-missing"])
    assert not r["success"] and r["exit_code"] == 1 and r["stdout"] == ""
    assert "[athena-sandbox] requirements could not be installed" in r["stderr"]
    assert "athena-missing" in r["stderr"]
    (violation,) = r["violation_details"]
    assert violation["category"] == "policy" and violation["detail"]["kind"] == "requirements"


def test_a_session_keeps_its_packages(api: MemoryAPI) -> None:
    """Installed as the session opens, importable in every later call."""
    with api.open_session("python", "research", requirements=["athena-probe"]) as session:
        first = session.execute_code("import athena_probe\nprint(athena_probe.VALUE)")
        again = session.execute_code("print(athena_probe.VALUE.upper())")
    assert first["stdout"] == "installed through the egress proxy\n", first["stderr"]
    assert again["stdout"] == "INSTALLED THROUGH THE EGRESS PROXY\n"


def test_a_session_that_cannot_install_does_not_open(api: MemoryAPI) -> None:
    """A failed install at open raises with pip's error, and leaves no session."""
    with pytest.raises(RequestError, match="athena-missing"):
        api.open_session("python", "research", requirements=["athena-missing"])
    assert api.sessions() == []


def test_a_session_call_installs_on_top_under_the_guard(api: MemoryAPI) -> None:
    """A later call's own requirements install in-process after research's guard is in place."""
    with api.open_session("python", "research") as session:
        session.execute_code("x = 1")
        added = session.execute_code(
            "import athena_probe\nprint(athena_probe.VALUE, x)", requirements=["athena-probe"]
        )
        later = session.execute_code("print(athena_probe.VALUE)")
    assert added["success"], added["stderr"]
    assert added["stdout"] == "installed through the egress proxy 1\n"
    assert added["violation_details"] == [] and later["success"], added["violation_details"]


def test_the_packages_page_examples_run_against_our_index(
    index: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/packages.md's ``python packages`` blocks run as written, against our own index."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "packages.md").read_text()
    blocks = re.findall(r"^```python packages\n(.*?)^```", page, flags=re.M | re.S)
    assert blocks, "docs/packages.md has no python packages block"
    monkeypatch.setenv("ATHENA_EGRESS_PINNED_HOSTS", json.dumps({"pypi.org": index}))
    monkeypatch.setenv("ATHENA_PIP_INDEX_URL", "http://pypi.org/simple")
    monkeypatch.setenv("ATHENA_MEMORY_DB", str(tmp_path / "docs.db"))
    monkeypatch.delenv("ATHENA_MEMORY_URL", raising=False)
    for block in blocks:
        exec(compile(block, "docs/packages.md", "exec"), {})
