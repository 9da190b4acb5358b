"""The srt mode on this host: what the sandbox hides and refuses, and what it leaves behind."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.settings import Settings
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.srt

UID_BASE = 61000


@pytest.fixture
def api(tmp_path: Path, project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryAPI]:
    """A MemoryAPI whose only reachable mode is srt (the Docker engine is made unreachable)."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    settings = Settings(project_dir=project_dir, sandbox_backends=("docker", "srt"))
    with MemoryAPI.create(tmp_path / "memory.db", settings=settings) as memory_api:
        yield memory_api


def run(api: MemoryAPI, code: str, language: str = "bash", **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("sandbox_policy", {"extends": "strict", "validation": {"enforce": False}})
    result = api.execute_code(code, language, **kwargs)
    assert result["sandbox_mode"] == "srt", result
    return result


def _sandbox_processes() -> list[str]:
    ps = subprocess.run(
        ["ps", "-eo", "uid=,pid=,comm="], capture_output=True, text=True, check=True
    )
    return [
        line
        for line in ps.stdout.splitlines()
        if UID_BASE <= int(line.split()[0]) < UID_BASE + 1000
    ]


def test_host_files_and_the_home_directory_are_hidden(api: MemoryAPI, tmp_path: Path) -> None:
    """A canary file on the host, /etc and the caller's home cannot be read."""
    canary = tmp_path / "canary.txt"
    canary.write_text("canary-6d1f")
    canary.chmod(0o644)
    code = f"cat {canary} /etc/hostname /etc/passwd ~root/.profile 2>&1; echo done"
    r = run(api, code)
    assert "canary-6d1f" not in r["stdout"] and "root:x:" not in r["stdout"]
    assert r["stdout"].endswith("done\n")


def test_only_the_work_directory_is_writable(api: MemoryAPI) -> None:
    """The work directory takes writes; /usr and / refuse them; /tmp is a throwaway tmpfs."""
    probe = f"/tmp/athena-srt-probe-{os.getpid()}"
    code = f"echo a > ./mine && cat ./mine; for p in /usr/x /x; do echo b > $p 2>/dev/null || echo refused $p; done; echo c > {probe}"
    r = run(api, code)
    assert r["stdout"] == "a\nrefused /usr/x\nrefused /x\n"
    assert not Path(probe).exists(), "a write inside the sandbox reached the host's /tmp"


def test_no_network_reaches_a_listener_on_the_host(api: MemoryAPI) -> None:
    """A connection to a listener on the host's loopback never arrives."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(server.accept())

    listener = threading.Thread(target=accept)
    listener.start()
    code = f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('connected')\nexcept OSError as e:\n    print('refused', type(e).__name__)"
    r = run(api, code, "python")
    listener.join(5)
    server.close()
    assert r["stdout"].startswith("refused") and not accepted


def test_code_runs_as_a_dedicated_unprivileged_uid(api: MemoryAPI) -> None:
    """When we are root, the code runs as a uid of its own, not root and not a container's."""
    if os.geteuid() != 0:
        pytest.skip("only root can switch the sandbox to a dedicated uid")
    uid = int(run(api, "id -u")["stdout"])
    assert UID_BASE <= uid < UID_BASE + 1000


def test_concurrent_runs_get_different_uids(api: MemoryAPI) -> None:
    """Two runs at once never share a uid (their process limits and signals stay apart)."""
    if os.geteuid() != 0:
        pytest.skip("only root can switch the sandbox to a dedicated uid")
    results = api.execute_code_batch(
        [{"code": "id -u; sleep 1", "language": "bash"}] * 2, concurrency=2
    )
    assert len({r["stdout"] for r in results}) == 2


def test_fork_bomb_hits_the_process_limit_and_leaves_nothing(api: MemoryAPI) -> None:
    """A fork bomb meets RLIMIT_NPROC (a processes violation) and no process outlives it."""
    r = run(api, ":(){ :|:& };:\nsleep 1", timeout_seconds=10)
    assert not r["success"]
    assert "processes" in [v["category"] for v in r["violation_details"]], r
    assert wait_until(lambda: not _sandbox_processes(), timeout=10), _sandbox_processes()


def test_a_timeout_kills_background_processes_too(api: MemoryAPI) -> None:
    """At the timeout the whole tree dies, background sleeps included."""
    r = run(api, "sleep 300 & sleep 300 & while :; do :; done", timeout_seconds=1)
    assert [v["category"] for v in r["violation_details"]] == ["timeout"]
    assert wait_until(lambda: not _sandbox_processes(), timeout=10), _sandbox_processes()


def test_no_temporary_directory_is_left_behind(api: MemoryAPI) -> None:
    """Each run's work directory and srt's own files are removed after the run."""
    before = set(glob.glob("/tmp/athena-srt-*"))
    run(api, "echo x > ./file; mkdir -p a/b; echo y > a/b/c")
    run(api, "while :; do :; done", timeout_seconds=1)
    assert set(glob.glob("/tmp/athena-srt-*")) == before


def test_the_project_mount_is_readable_through_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """research's project mount is readable (via ./project in the work dir) and not writable."""
    # The sandbox's uid must be able to reach the project, as uid 65534 must in a container.
    project = Path(tempfile.mkdtemp(prefix="athena-srt-project-"))
    try:
        project.chmod(0o755)
        (project / "data.csv").write_text("a,b\n1,2\n")
        (project / "data.csv").chmod(0o644)
        monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
        settings = Settings(project_dir=project, sandbox_backends=("docker", "srt"))
        with MemoryAPI.create(tmp_path / "m.db", settings=settings) as api:
            r = run(
                api,
                "cat project/data.csv; echo x > project/new 2>/dev/null || echo refused",
                sandbox_policy="research",
            )
        assert r["stdout"] == "a,b\n1,2\nrefused\n"
        assert not (project / "new").exists()
    finally:
        shutil.rmtree(project)


def test_the_output_file_is_read_without_following_links_or_blocking(api: MemoryAPI) -> None:
    """We read .athena-output.json as root: a symlink to a host file or a FIFO yields no value."""
    linked = run(api, "ln -s /etc/shadow .athena-output.json")
    assert linked["output"] is None and "root:" not in str(linked), linked
    fifo = run(api, "mkfifo .athena-output.json", timeout_seconds=10)
    assert fifo["success"] and fifo["output"] is None, fifo
    assert "timeout" not in [v["category"] for v in fifo["violation_details"]]


def _run_cgroups() -> list[str]:
    return glob.glob("/sys/fs/cgroup/*/athena-srt/athena-srt-*") + glob.glob(
        "/sys/fs/cgroup/athena-srt/athena-srt-*"
    )


def test_memory_is_capped_for_the_whole_run_not_per_process(api: MemoryAPI) -> None:
    """Four processes of 200 MiB each under a 256 MiB policy: the run's cgroup kills some."""
    hog = "python3 -c 'b = bytearray(200 << 20); b[::4096] = bytes(len(b[::4096])); import time; time.sleep(2)'"
    r = run(api, f"for i in 1 2 3 4; do {hog} & done; wait", track_resources=True)
    assert "memory" in [v["category"] for v in r["violation_details"]], r
    assert r["stderr"].count("Killed") >= 2, r["stderr"]
    peak = r["resources"]["peak_memory_bytes"]
    assert peak is not None and peak <= (256 + 128) << 20, r["resources"]
    assert wait_until(lambda: not _run_cgroups(), timeout=5), _run_cgroups()


def test_the_work_directory_is_a_tmpfs_of_the_policy_size(api: MemoryAPI) -> None:
    """Files written in the work directory fill a tmpfs of 2 x tmpfs_mb, not the host's disk."""
    policy = {
        "extends": "strict",
        "validation": {"enforce": False},
        "filesystem": {"tmpfs_mb": 8},
        "limits": {"file_size_mb": 64},
    }
    r = run(
        api,
        "for i in 1 2 3; do head -c 8M /dev/zero > f$i || echo full; done; df -m .",
        sandbox_policy=policy,
    )
    assert "full" in r["stdout"] and "No space left" in r["stderr"], r
    assert "athena-srt" in r["stdout"], r["stdout"]  # df names our tmpfs
    assert not [
        line for line in Path("/proc/mounts").read_text().splitlines() if "athena-srt" in line
    ]


def test_shared_memory_stays_in_the_run_ipc_namespace(api: MemoryAPI) -> None:
    """A SysV segment the code makes is neither visible on the host nor left behind."""
    before = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, check=True).stdout
    r = run(api, "ipcmk -M 65536 && ipcs -m | grep -c 65536")
    assert r["success"] and r["stdout"].strip().endswith("1"), r
    after = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, check=True).stdout
    assert after.count("65536") == before.count("65536"), after
