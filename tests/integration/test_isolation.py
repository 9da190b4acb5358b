"""What the sandbox isolates, checked from inside it and through the engine's own view."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import docker
import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.models import Event, ExecutionRequest, ExecutionResult
from orchestrator.orchestrator import Orchestrator
from orchestrator.policy import load_policy
from orchestrator.settings import Settings
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.docker


def _inspect_running(
    settings: Settings, policy: str, docker_client: docker.DockerClient
) -> tuple[dict[str, Any], ExecutionResult]:
    """Start a run that sleeps, read the engine's view of its container, then let it finish."""
    request = ExecutionRequest.create(
        "import time\ntime.sleep(3)", "python", policy=load_policy(policy)
    )
    sandbox: list[str] = []
    results: list[ExecutionResult] = []

    def listen(event: Event) -> None:
        if event.kind == "begin" and event.sandbox_id:
            sandbox.append(event.sandbox_id)

    with Orchestrator(settings=settings) as orchestrator:
        worker = threading.Thread(
            target=lambda: results.append(orchestrator.execute(request, on_event=listen))
        )
        worker.start()
        assert wait_until(lambda: bool(sandbox), timeout=30)
        attrs = docker_client.containers.get(sandbox[0]).attrs
        worker.join(30)
    return attrs, results[0]


def test_strict_container_settings_as_the_engine_sees_them(
    settings: Settings, docker_client: docker.DockerClient
) -> None:
    """strict maps to no network, read-only root, tmpfs, limits, no capabilities, a non-root user."""
    attrs, result = _inspect_running(settings, "strict", docker_client)
    host, config = attrs["HostConfig"], attrs["Config"]
    assert result.success
    # No network: disabled at creation, so the engine made no endpoint and no namespace file.
    assert host["NetworkMode"] == "none" and config["NetworkDisabled"] is True
    assert attrs["NetworkSettings"]["Networks"] == {}
    assert attrs["NetworkSettings"]["SandboxKey"] == ""
    assert host["ReadonlyRootfs"] is True
    assert set(host["Tmpfs"]) == {"/tmp", "/workspace"} and "size=64m" in host["Tmpfs"]["/tmp"]
    assert host["Memory"] == host["MemorySwap"] == 256 * 1024 * 1024
    assert host["NanoCpus"] == 1_000_000_000 and host["PidsLimit"] == 64
    assert {u["Name"]: u["Hard"] for u in host["Ulimits"]} == {
        "nofile": 256,
        "fsize": 16 * 1024 * 1024,
        "core": 0,
    }
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Privileged"] is False and host["AutoRemove"] is True
    assert host["Runtime"] == "runc" and host["LogConfig"]["Type"] == "none"
    assert config["User"] == "65534:65534" and config["OpenStdin"] and config["StdinOnce"]
    (hosts,) = attrs["Mounts"]  # strict mounts nothing but the hosts file, read-only
    assert (hosts["Type"], hosts["Destination"], hosts["RW"]) == ("bind", "/etc/hosts", False)
    assert config["Labels"]["athena.sandbox"] == "1" and config["Labels"]["athena.owner.pid"]


def test_research_mounts_the_project_read_only(
    settings: Settings, docker_client: docker.DockerClient, project_dir: Path
) -> None:
    """research bind-mounts the project directory read-only at /project and nothing else."""
    attrs, _ = _inspect_running(settings, "research", docker_client)
    (mount,) = attrs["Mounts"]
    assert (mount["Source"], mount["Destination"], mount["RW"]) == (
        str(project_dir),
        "/project",
        False,
    )
    assert attrs["HostConfig"]["Memory"] == 1024 * 1024 * 1024


def test_code_runs_unprivileged(api: MemoryAPI) -> None:
    """The code runs as uid 65534 with no capabilities, no-new-privileges and seccomp."""
    code = "id -u; grep -E '^(CapEff|CapPrm|NoNewPrivs|Seccomp):' /proc/self/status"
    out = api.execute_code(code, "bash")["stdout"].split("\n")
    assert out[0] == "65534"
    status = dict(line.split(":\t") for line in out[1:] if line)
    assert status["CapEff"] == status["CapPrm"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"


def test_environment_carries_nothing_from_the_host(
    api: MemoryAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret in the orchestrator's environment is not visible to the code."""
    monkeypatch.setenv("ATHENA_CANARY_SECRET", "canary-7f3a")
    r = api.execute_code(
        "import os\nprint(sorted(os.environ))\nprint(open('/proc/1/environ', 'rb').read())"
    )
    assert "canary-7f3a" not in r["stdout"] and "ATHENA_CANARY" not in r["stdout"]
    # Only what the image declares (pip's two settings for `pip install --user` under an
    # allowlist policy; matplotlib's backend, its config directory and our prebuilt font list)
    # and what the runner sets; nothing of the orchestrator's own.
    names = (
        "['ATHENA_MPL_CACHE', 'HOME', 'HOSTNAME', 'LANG', 'LC_ALL', 'MPLBACKEND', 'MPLCONFIGDIR',"
        " 'PATH', 'PIP_BREAK_SYSTEM_PACKAGES', 'PIP_DISABLE_PIP_VERSION_CHECK', 'TMPDIR']"
    )
    assert r["stdout"].splitlines()[0] == names


def test_javascript_sees_no_host_environment(
    api: MemoryAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """process.env in JavaScript carries nothing from the host either."""
    monkeypatch.setenv("ATHENA_CANARY_SECRET", "canary-7f3a")
    r = api.execute_code("console.log(JSON.stringify(process.env))", "javascript")
    assert r["success"], r["stderr"]  # an empty stdout would hide nothing
    seen = json.loads(r["stdout"])
    assert "PATH" in seen and "ATHENA_CANARY_SECRET" not in seen
    assert "canary" not in r["stdout"].lower()


def test_no_docker_socket_inside(api: MemoryAPI) -> None:
    """The Docker socket is not reachable from the sandbox under any shipped policy."""
    code = "ls -la /var/run/docker.sock /run/docker.sock 2>&1; grep -c docker.sock /proc/mounts"
    for policy in ("strict", "research", "development"):
        r = api.execute_code(code, "bash", sandbox_policy=policy)
        assert "No such file" in r["stdout"] and r["stdout"].strip().endswith("0"), policy


@pytest.mark.parametrize("path", ["/usr/x", "/etc/passwd", "/root/x", "/opt/athena/runner", "/x"])
def test_root_filesystem_is_read_only(api: MemoryAPI, path: str) -> None:
    """Writes outside /tmp and the working directory are refused."""
    r = api.execute_code(f"echo pwned >> {path}", "bash")
    assert not r["success"]
    assert "Read-only file system" in r["stderr"] or "Permission denied" in r["stderr"]


def test_every_run_gets_a_fresh_container(api: MemoryAPI) -> None:
    """Nothing written by one run is visible to the next; each has its own container."""
    first = api.execute_code("echo secret > /tmp/left-behind; echo ok > ./here", "bash")
    second = api.execute_code(
        "ls /tmp/left-behind ./here 2>&1 | wc -l; cat /tmp/left-behind", "bash"
    )
    assert first["success"]
    assert "No such file" in second["stderr"]
    assert first["sandbox_id"] != second["sandbox_id"]


def test_strict_has_no_network(api: MemoryAPI, web_server: str) -> None:
    """Under strict the only interface is loopback and a server on the bridge is unreachable."""
    code = (
        "import os, urllib.request\nprint(sorted(os.listdir('/sys/class/net')))\n"
        f"urllib.request.urlopen({web_server + 'pyboot.py'!r}, timeout=3)"
    )
    # The network itself, with the run-time policy layer out of the way:
    r = api.execute_code(code, sandbox_policy={"validation": {"enforce": False}})
    assert r["stdout"] == "['lo']\n"
    assert not r["success"] and "Network is unreachable" in r["stderr"]
    # Under strict as it is, the socket is refused before the network is even tried:
    r = api.execute_code(code)
    assert not r["success"] and "socket creation (family 2) refused" in r["stderr"]
    assert "policy: socket creation (family 2) refused" in r["violations"]


def test_development_reaches_a_server_on_the_bridge(api: MemoryAPI, web_server: str) -> None:
    """development's bridge network reaches a server of our own on this machine."""
    code = (
        f"import urllib.request\nbody = urllib.request.urlopen({web_server + 'pyboot.py'!r}, "
        "timeout=10).read()\nprint(b'Bootstrap of the Python sandbox' in body)"
    )
    r = api.execute_code(code, sandbox_policy="development")
    assert r["success"], r["stderr"]
    assert r["stdout"] == "True\n"


def test_research_reads_but_cannot_write_the_project(api: MemoryAPI, project_dir: Path) -> None:
    """research sees the project at /project, read-only, with numpy and pandas importable."""
    code = (
        "import pandas as pd, numpy as np\nprint(int(pd.read_csv('/project/data.csv')['b'].sum()))\n"
        "open('/project/new.txt', 'w')"
    )
    r = api.execute_code(code, sandbox_policy="research")
    assert r["stdout"] == "6\n"
    assert "Read-only file system" in r["stderr"]
    assert not (project_dir / "new.txt").exists()


def test_development_writes_the_project(api: MemoryAPI, project_dir: Path) -> None:
    """development mounts the project read-write: a file written there appears on the host."""
    project_dir.chmod(0o777)  # the sandbox user (65534) must be allowed to write it
    r = api.execute_code(
        "echo from-sandbox > /project/out.txt", "bash", sandbox_policy="development"
    )
    assert r["success"], r["stderr"]
    assert (project_dir / "out.txt").read_text() == "from-sandbox\n"


def test_a_file_left_open_is_flushed_at_exit(api: MemoryAPI, project_dir: Path) -> None:
    """Python code that never closes a file still leaves its whole content in the mount."""
    project_dir.chmod(0o777)
    code = "log = open('/project/left-open.txt', 'w')\nlog.write('kept ' * 1000)"
    r = api.execute_code(code, sandbox_policy="development")
    assert r["success"], r["stderr"]
    assert (project_dir / "left-open.txt").read_text() == "kept " * 1000


def test_strict_sees_no_project(api: MemoryAPI) -> None:
    """strict mounts nothing: /project does not exist."""
    r = api.execute_code("test -e /project && echo present || echo absent", "bash")
    assert r["stdout"] == "absent\n"
