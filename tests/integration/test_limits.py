"""Limits on the real engine: timeouts, memory, processes, output, disk, files."""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.backends.docker.backend import DockerBackend
from orchestrator.backends.docker.engine import KMSG, DockerEngine, kernel_oom
from orchestrator.settings import Settings

pytestmark = pytest.mark.docker

SPIN = {
    "python": "print('started', flush=True)\nwhile True:\n    pass\n",
    "javascript": "console.log('started'); while (true) {}",
    "bash": "echo started; while :; do :; done",
}


@pytest.mark.parametrize("language", sorted(SPIN))
def test_timeout_kills_keeps_output_and_returns_promptly(api: MemoryAPI, language: str) -> None:
    """An endless loop is killed at its timeout; output so far is kept; the call returns soon."""
    start = time.monotonic()
    r = api.execute_code(SPIN[language], language, timeout_seconds=2)
    elapsed = time.monotonic() - start
    assert elapsed < 2 + 5, f"returned after {elapsed:.1f} s"
    assert not r["success"] and r["exit_code"] == 137
    assert r["stdout"] == "started\n"
    assert r["violations"] == ["timeout: the run exceeded its 2 s timeout and was killed"]


def test_call_timeout_is_capped_by_the_policy(api: MemoryAPI) -> None:
    """A call asking for more time than the policy allows gets the policy's limit."""
    policy = {"extends": "strict", "limits": {"timeout_seconds": 1}}
    start = time.monotonic()
    r = api.execute_code("import time\ntime.sleep(20)", timeout_seconds=20, sandbox_policy=policy)
    assert time.monotonic() - start < 1 + 5
    assert r["timeout_seconds"] == 1.0
    assert r["violations"][0].startswith("timeout:")


def test_sleeping_child_processes_do_not_outlive_the_timeout(api: MemoryAPI) -> None:
    """A timeout kills the whole run, background children included, and still returns promptly."""
    start = time.monotonic()
    r = api.execute_code("sleep 100 & sleep 100 & wait", "bash", timeout_seconds=1)
    assert time.monotonic() - start < 1 + 5
    assert r["violations"][0].startswith("timeout:")


def test_background_daemon_does_not_hold_the_run(api: MemoryAPI) -> None:
    """A daemon left running when the code exits is killed; the call does not wait for it."""
    start = time.monotonic()
    r = api.execute_code(
        "(setsid sleep 300 &) ; nohup sleep 300 >/dev/null 2>&1 & echo done", "bash"
    )
    assert time.monotonic() - start < 10
    assert r["success"] and r["stdout"] == "done\n"


def test_memory_bomb_is_oom_killed(api: MemoryAPI) -> None:
    """Allocating past the memory limit kills the code with a `memory:` violation."""
    r = api.execute_code("hog = bytearray(1024 * 1024 * 1024)\nprint('survived')")
    assert not r["success"] and r["exit_code"] == 137
    assert r["stdout"] == ""
    assert [v["category"] for v in r["violation_details"]] == ["memory"]
    assert "256 MiB" in r["violations"][0]


def test_memory_limit_has_no_swap(api: MemoryAPI) -> None:
    """The memory limit of the cgroup is the policy's, and swap is not added on top of it."""
    r = api.execute_code(
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
        "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null",
        "bash",
    )
    values = {int(v) for v in r["stdout"].split()}
    assert values == {256 * 1024 * 1024}


def test_fork_bomb_hits_the_process_limit(api: MemoryAPI) -> None:
    """A fork bomb meets the pids limit: a `processes:` violation, and the host stays fine."""
    r = api.execute_code(":(){ :|:& };:\nsleep 1", "bash", timeout_seconds=10)
    assert not r["success"]
    assert "processes" in [v["category"] for v in r["violation_details"]]
    assert api.execute_code("print('still fine')")["stdout"] == "still fine\n"


@pytest.mark.parametrize("language", ["python", "bash"])
def test_output_flood_is_capped_head_and_tail(api: MemoryAPI, language: str) -> None:
    """Printing far more than the cap keeps the head and the tail, marks the cut, and says so."""
    code = {
        "python": "import sys\nprint('HEAD')\nfor _ in range(4000):\n    sys.stdout.write('x' * 1023 + '\\n')\nprint('TAIL')",
        "bash": "echo HEAD; head -c 4000000 /dev/zero | tr '\\0' x; echo; echo TAIL",
    }[language]
    policy = {"extends": "strict", "limits": {"max_output_bytes": 65536}}
    r = api.execute_code(code, language, sandbox_policy=policy)
    assert r["success"], r
    assert r["stdout"].startswith("HEAD\n") and r["stdout"].endswith("TAIL\n")
    assert "athena-sandbox cut" in r["stdout"]
    assert len(r["stdout"].encode()) < 65536 + 200
    (violation,) = r["violation_details"]
    assert violation["category"] == "output" and violation["detail"]["stream"] == "stdout"
    assert violation["detail"]["total_bytes"] > 4_000_000


def test_flood_keeps_the_orchestrators_memory_bounded(api: MemoryAPI) -> None:
    """200 MB printed on both streams costs the orchestrator a few MB at most."""
    code = (
        "import sys\nchunk = 'y' * 65535 + '\\n'\nfor _ in range(1600):\n"
        "    sys.stdout.write(chunk)\n    sys.stderr.write(chunk)\n"
    )
    tracemalloc.start()
    try:
        r = api.execute_code(code, timeout_seconds=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r["success"], r["error"]
    assert {v["detail"]["stream"] for v in r["violation_details"]} == {"stdout", "stderr"}
    assert peak < 24 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_tmp_is_writable_but_size_capped(api: MemoryAPI) -> None:
    """/tmp and the working directory are writable tmpfs, capped at the policy's size."""
    code = (
        "echo ok > /tmp/a && echo ok > ./b && cat /tmp/a b\n"
        "for i in $(seq 1 10); do dd if=/dev/zero of=/tmp/f$i bs=1M count=10 2>/dev/null || break; done\n"
        "du -sm /tmp | cut -f1"
    )
    r = api.execute_code(code, "bash")
    lines = r["stdout"].split()
    assert lines[:2] == ["ok", "ok"]
    assert int(lines[2]) <= 64


def test_file_size_limit(api: MemoryAPI) -> None:
    """A single file larger than file_size_mb cannot be written."""
    code = "with open('/tmp/big', 'wb') as f:\n    f.write(b'0' * (20 * 1024 * 1024))"
    r = api.execute_code(code)
    assert not r["success"]
    assert "File too large" in r["stderr"]


def test_open_files_limit(api: MemoryAPI) -> None:
    """Opening more files than open_files allows fails inside the sandbox."""
    r = api.execute_code("fs = [open('/tmp/f%d' % i, 'w') for i in range(400)]")
    assert "Too many open files" in r["stderr"]


def test_resources_are_reported_when_tracked(api: MemoryAPI) -> None:
    """With track_resources the result carries peak memory, CPU time and wall time."""
    r = api.execute_code("x = bytearray(50 * 1024 * 1024)\nsum(range(10**6))", track_resources=True)
    resources = r["resources"]
    assert resources["peak_memory_bytes"] > 50 * 1024 * 1024
    assert resources["cpu_time_ms"] > 0 and resources["wall_time_ms"] > 0
    assert api.execute_code("pass")["resources"] is None


class LateEngine(DockerEngine):
    """The real engine, asked too late: an ended container reads as removed already."""

    def state(self, container_id: str) -> dict[str, Any]:
        state = super().state(container_id)
        return state if state.get("Running") else {}


@pytest.fixture
def late_gvisor_api(tmp_path: Path, project_dir: Path) -> Iterator[MemoryAPI]:
    """A MemoryAPI whose Docker backend cannot inspect a container once it has ended."""
    settings = Settings(project_dir=project_dir, pool_size=0)
    factory = partial(LateEngine.from_env, settings.docker_api_timeout)
    backend = DockerBackend(settings, engine_factory=factory)
    with MemoryAPI.create(tmp_path / "m.db", settings=settings, backends=[backend]) as api:
        yield api


def test_an_oom_kill_of_the_whole_gvisor_sandbox_is_a_memory_violation(
    late_gvisor_api: MemoryAPI,
) -> None:
    """Under runsc the OOM kill takes the sandbox, runner and all; with no exit frame and no
    container left to inspect, the engine's event log still makes it a `memory:` violation."""
    for code in ("hog = b'x' * 2**31", "hog = bytearray(2 * 1024 ** 3)"):
        r = late_gvisor_api.execute_code(code, timeout_seconds=20, sandbox_policy="strict-gvisor")
        assert r["error"] is None and r["isolation"]["runtime"].startswith("runsc"), r
        assert not r["success"] and r["exit_code"] == 137
        assert [v["category"] for v in r["violation_details"]] == ["memory"], r


@pytest.mark.skipif(not os.access(KMSG, os.R_OK), reason="the kernel log needs CAP_SYSLOG")
def test_the_kernel_log_names_the_sandbox_the_oom_killer_hit(api: MemoryAPI) -> None:
    """The kernel's log records the OOM kill in a gVisor sandbox's cgroup, and in no other."""
    bomb = api.execute_code("hog = b'x' * 2**31", sandbox_policy="strict-gvisor")
    calm = api.execute_code("pass", sandbox_policy="strict-gvisor")
    assert bomb["sandbox_id"] and calm["sandbox_id"]
    assert kernel_oom(bomb["sandbox_id"]) and not kernel_oom(calm["sandbox_id"])
