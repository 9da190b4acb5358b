"""The fast mode on this machine: what a run sees from inside, what it cannot do, what it leaves.

Real bubblewrap, real cgroups, the real python image's root filesystem. Hostile cases (escapes,
cross-run interference, concurrent bombs) are in tests/security/test_fast_mode.py; the contract
suite (tests/integration/test_contract.py, mode ``fast``) checks results behave as in docker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.backends.fast import FastBackend, host_reason
from orchestrator.backends.fast.cell import GROUP
from orchestrator.settings import Settings
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.docker

UID_BASE = Settings().fast_uid_base
UIDS = range(UID_BASE, UID_BASE + 1024)
CGROUPS = Path("/sys/fs/cgroup")


@pytest.fixture(scope="module", autouse=True)
def fast_mode_works() -> None:
    """The mode this file tests must be there (make test installs bubblewrap): fail, not skip."""
    assert host_reason() is None, host_reason()


@pytest.fixture
def unguarded(tmp_path: Path) -> str:
    """strict-fast without validation: the code may try anything; only the sandbox stops it."""
    path = tmp_path / "unguarded-fast.yaml"
    path.write_text(
        "name: unguarded-fast\nextends: strict-fast\nvalidation: {enforce: false}\n"
        "fallback: [fast]\n"
    )
    return str(path)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[MemoryAPI]:
    with MemoryAPI.create(tmp_path / "m.db", settings=Settings(pool_size=1)) as memory:
        yield memory


def fast_processes() -> list[int]:
    """Processes of this machine running as a fast-mode host uid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid in UIDS:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def run_groups(owner: int) -> list[Path]:
    """Run cgroups of ``owner`` left under any controller."""
    return [p for p in CGROUPS.glob(f"*/{GROUP}/{owner}-*") if p.is_dir()]


def ran(api: MemoryAPI, code: str, policy: str, **kwargs: Any) -> dict[str, Any]:
    result = api.execute_code(textwrap.dedent(code), sandbox_policy=policy, **kwargs)
    assert result["sandbox_mode"] == "fast", result
    return result


INSIDE = """
    import json, os, socket
    status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines())
    def writable(path):
        try:
            with open(path, "w") as handle:
                handle.write("x")
            return "yes"
        except OSError as exc:
            return os.strerror(exc.errno)
    def size_mib(path):
        st = os.statvfs(path)
        return st.f_blocks * st.f_frsize // 2**20
    print(json.dumps({
        "ids": [os.getuid(), os.getgid(), os.getgroups()],
        "hostname": socket.gethostname(),
        "interfaces": sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]),
        "pid1": open("/proc/1/cmdline").read().split("\\0")[0],
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "caps": [status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")],
        "no_new_privs": status["NoNewPrivs"].strip(),
        "seccomp": status["Seccomp"].strip(),
        "root": writable("/usr/lib/athena-probe"),
        "workspace": writable("/workspace/probe"),
        "sizes": [size_mib(p) for p in ("/workspace", "/tmp", "/dev/shm")],
        "sys": sorted(os.listdir("/sys/fs/cgroup")),
        "uid_map": open("/proc/self/uid_map").read().split(),
        "cgroup": open("/proc/self/cgroup").read().strip(),
        "localhost": socket.gethostbyname("localhost"),
    }))
"""


def test_a_run_sees_a_fresh_locked_down_sandbox(api: MemoryAPI, unguarded: str) -> None:
    """uid 65534 alone, only lo, the runner as PID 1, no capabilities, seccomp, a read-only root,
    64 MiB tmpfs, only its own cgroup files, a cgroup namespace of its own."""
    r = ran(api, INSIDE, unguarded)
    assert r["success"], r
    seen = json.loads(r["stdout"])
    assert seen["ids"] == [65534, 65534, []]
    assert seen["hostname"] == "sandbox" and seen["interfaces"] == ["lo"]
    assert seen["localhost"] == "127.0.0.1"  # our hosts file: the export's is empty
    assert seen["pid1"] == "/opt/athena/runner"
    assert seen["pids"][0] == 1 and len(seen["pids"]) <= 3  # runner, interpreter (and /proc/self)
    assert seen["caps"] == ["0000000000000000"] * 5
    assert (seen["no_new_privs"], seen["seccomp"]) == ("1", "2")
    assert seen["root"] == "Read-only file system" and seen["workspace"] == "yes"
    assert seen["sizes"] == [64, 64, 64]
    assert seen["sys"] == ["cpu", "cpuacct", "memory", "pids"] or seen["sys"] == [
        "cgroup.controllers"
    ]
    inside, _, count = (int(x) for x in seen["uid_map"])  # host uid: see the owner test
    assert (inside, count) == (65534, 1)
    assert "athena-fast" not in seen["cgroup"]  # its own cgroup namespace: it sees "/"
    assert r["isolation"] == {
        "runtime": "bubblewrap",
        "path": "fresh",
        "image": "athena-sandbox/python:latest",
    }


SYSCALLS = """
    import ctypes, errno, json, os
    libc = ctypes.CDLL(None, use_errno=True)
    def call(number, *args):
        ctypes.set_errno(0)
        result = libc.syscall(number, *[ctypes.c_long(a) for a in args])
        return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]
    print(json.dumps({
        "unshare(NEWUSER)": call(272, 0x10000000),
        "unshare(NEWNS)": call(272, 0x00020000),
        "mount": call(165, 0, 0, 0, 0, 0),
        "keyctl": call(250, 0, 0, 0, 0, 0),
        "ptrace(TRACEME)": call(101, 0, 0, 0, 0),
        "bpf": call(321, 0, 0, 0),
        "io_uring_setup": call(425, 1, 0),
        "perf_event_open": call(298, 0, 0, -1, -1, 0),
        "personality(ADDR_NO_RANDOMIZE)": call(135, 0x0040000),
        "socket(AF_PACKET)": call(41, 17, 3, 0),
        "socket(AF_VSOCK)": call(41, 40, 1, 0),
        "clone3": call(435, 0, 0),
        "userfaultfd": call(323, 0),
        "setns": call(308, 0, 0),
        "socket(AF_INET)": call(41, 2, 1, 0),
        "personality(query)": call(135, 0xFFFFFFFF),
    }))
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    print(os.waitpid(pid, 0)[1] >> 8)
"""


def test_the_seccomp_filter_refuses_what_a_sandbox_must_not_do(
    api: MemoryAPI, unguarded: str
) -> None:
    """New namespaces, mounts, keys, ptrace, bpf, io_uring, perf, odd personalities and socket
    families are refused (EPERM), clone3 says ENOSYS; ordinary calls and fork still work."""
    r = ran(api, SYSCALLS, unguarded)
    assert r["success"], r
    verdicts_line, forked = r["stdout"].splitlines()
    verdicts = json.loads(verdicts_line)
    allowed = {"socket(AF_INET)", "personality(query)"}
    assert {k for k, v in verdicts.items() if v == "ok"} == allowed, verdicts
    assert verdicts["clone3"] == "ENOSYS"
    assert all(v == "EPERM" for k, v in verdicts.items() if k not in allowed | {"clone3"})
    assert forked == "7"


LEAVE = """
    import ctypes, os, time
    for path in ("/tmp/left", "/workspace/left", "/dev/shm/left"):
        open(path, "w").write("x")
    libc = ctypes.CDLL(None)
    print(libc.shmget(0x4154484e, 4096, 0o1666))  # IPC_CREAT | 0666, key "ATHN"
    if os.fork() == 0:
        os.setsid()
        time.sleep(300)
    print("left", flush=True)
"""
LOOK = """
    import os
    print([p for p in ("/tmp/left", "/workspace/left", "/dev/shm/left") if os.path.exists(p)])
    print(open("/proc/sysvipc/shm").read().count("\\n") - 1)
    print(sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[:3])
"""


def test_a_run_sees_nothing_an_earlier_run_left(api: MemoryAPI, unguarded: str) -> None:
    """Files in /tmp, /workspace and /dev/shm, a SysV segment and a process of a run are gone
    for the next; the process is killed with its run, not left on the host."""
    first = ran(api, LEAVE, unguarded)
    assert first["success"] and first["stdout"].endswith("left\n"), first
    second = ran(api, LOOK, unguarded)
    files, segments, pids = second["stdout"].splitlines()
    assert (files, segments) == ("[]", "0")
    assert pids in {"[1, 2]", "[1]"}  # the runner and this interpreter only
    assert wait_until(lambda: not fast_processes() or _only_ready(api), timeout=5)


def _only_ready(api: MemoryAPI) -> bool:
    """Every fast-uid process left belongs to a ready sandbox of the pool (never used)."""
    return len(fast_processes()) <= 3 * max(1, sum(api.orchestrator.pool_sizes().values()))


def test_a_timed_out_run_is_killed_and_nothing_of_it_stays(tmp_path: Path) -> None:
    """An endless loop times out; once the API is closed no process or cgroup of ours is left."""
    with MemoryAPI.create(tmp_path / "m.db", settings=Settings(pool_size=0)) as api:
        r = api.execute_code("while True: pass", sandbox_policy="strict-fast", timeout_seconds=1)
        assert (r["sandbox_mode"], r["success"]) == ("fast", False)
        assert r["violations"][0].startswith("timeout:"), r
    assert wait_until(lambda: not fast_processes(), timeout=5), fast_processes()
    assert run_groups(os.getpid()) == []


OWNER = textwrap.dedent(
    """
    import sys
    from athena.mcp.memory_api import MemoryAPI
    from orchestrator.settings import Settings
    api = MemoryAPI.create(sys.argv[1], settings=Settings(pool_size=0))
    api.execute_code("import time\\nprint('in', flush=True)\\ntime.sleep(120)",
                     sandbox_policy="strict-fast", timeout_seconds=100)
    """
)


def test_the_sandbox_dies_with_its_owner_and_its_cgroup_is_swept(tmp_path: Path) -> None:
    """SIGKILL of the owner ends its sandbox within seconds (the runner sees its stdin close);
    the next fast backend removes the cgroup the dead owner could not."""
    before = set(fast_processes())
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "m.db")])
    try:
        assert wait_until(lambda: bool(run_groups(owner.pid)), timeout=60), "never started"
        assert wait_until(lambda: bool(set(fast_processes()) - before), timeout=30)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        assert wait_until(lambda: not set(fast_processes()) - before, timeout=10)
        assert run_groups(owner.pid), "expected the dead owner's cgroup to be left"
        backend = FastBackend(Settings(pool_size=0))
        try:
            assert backend.unavailable_reason("python") is None
        finally:
            backend.close()
        assert run_groups(owner.pid) == []
    finally:
        owner.kill()


def test_what_the_mode_declines_runs_in_docker(api: MemoryAPI, tmp_path: Path) -> None:
    """A policy that wants a writable root goes on to docker, its next mode, and says so."""
    path = tmp_path / "writable-root.yaml"
    path.write_text(
        "name: writable-root\nextends: strict-fast\nfilesystem: {read_only_root: false}\n"
    )
    r = api.execute_code("print(1)", sandbox_policy=str(path))
    assert (r["success"], r["sandbox_mode"]) == (True, "docker")


@pytest.mark.parametrize(
    ("language", "code", "expected"),
    [
        ("javascript", "console.log(6 * 7)", "42\n"),
        ("bash", "echo $((6 * 7))", "42\n"),
        ("ruby", "puts 6 * 7", "42\n"),
    ],
)
def test_every_language_runs_in_the_fast_mode(
    api: MemoryAPI, language: str, code: str, expected: str
) -> None:
    """Each image's runner and bootstrap work under bubblewrap as in a container."""
    r = api.execute_code(code, language, sandbox_policy="strict-fast")
    assert (r["sandbox_mode"], r["stdout"], r["success"]) == ("fast", expected, True), r
