"""Hostile cases aimed at the fast mode: what bubblewrap, the run's cgroup and seccomp must hold.

The fast mode (policy ``strict-fast``) runs each request in a fresh bubblewrap sandbox on this
host instead of a container: new user, mount, pid, ipc, uts, net and cgroup namespaces, the
image's root filesystem exported once and bound read-only, tmpfs for /tmp, /workspace and
/dev/shm, a cgroup and a host uid of its own, and a seccomp allowlist. The suite's general cases
run in it too (``fast`` is one of the modes); these attack what this mode shares or does its own
way: concurrent sandboxes on one kernel, the exported root filesystem every sandbox binds, the
host uid and the kernel's per-user and host-wide budgets, the view of the host, the kernel's
less used interfaces, the runner's frames and the orchestrator's own death. Each applies to the
fast mode only (n.a. elsewhere) and is judged by the state of the host, as the others are.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.settings import Settings
from tests.security import hostenv
from tests.security.harness import Sec
from tests.security.judge import fast_cgroups, leftovers
from tests.security.test_host_access import expect_own_exit_status

pytestmark = pytest.mark.security

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]
# As test_resources: far above what strict allows, far below what an unlimited bomb takes.
PROCESS_RISE_LIMIT = 400
MEMORY_DROP_LIMIT = 1536 * MIB
# strict's memory limit, plus what the kernel keeps of a tmpfs beyond its pages.
TMPFS_RISE_LIMIT = 256 * MIB + 32 * MIB
NEIGHBOUR_LANES = 4
NEIGHBOUR_MAX_S = 20.0  # a plain run beside the bombs, on two cores
PROBES = 5  # runs beside the inotify hog, per orchestrator
SYS_IO_SETUP, SYS_IO_DESTROY = 206, 207

# Every process forks until its run's pids limit refuses; all of them stop after 8 s.
FORK_BOMB = r"""
import os, time
@ATTEMPT@
first = os.getpid()
end = time.monotonic() + 8
while time.monotonic() < end:
    try:
        os.fork()
    except OSError:
        time.sleep(0.005)
if os.getpid() != first:
    os._exit(0)
print("fork bomb over")
"""
# Four hogs at a time, each replaced when the run's OOM killer takes it: the run stays at its
# memory limit for 8 s.
MEMORY_BOMB = r"""
import os, time
@ATTEMPT@
end = time.monotonic() + 8
hogs = set()
while time.monotonic() < end:
    while len(hogs) < 4:
        pid = os.fork()
        if pid == 0:
            hog = []
            while True:
                hog.append(bytearray(16 << 20))
        hogs.add(pid)
    hogs.discard(os.wait()[0])
print("memory bomb over")
"""
# A plain run that needs memory, a process and CPU of its own: what the bombs would take.
NEIGHBOUR = r"""
import hashlib, subprocess
room = bytearray(96 << 20)
child = subprocess.run(["/bin/echo", "child"], capture_output=True, text=True).stdout.strip()
print(hashlib.sha256(room).hexdigest()[:16], child, sum(i * i for i in range(200000)))
"""
# The victim plants one of everything a neighbour could find or break, holds it, then checks it.
VICTIM = r"""
import ctypes, os, socket, subprocess, time
libc = ctypes.CDLL(None, use_errno=True)
tag = "@VICTIM@"
key = int(tag[-6:], 16)
places = ["/tmp", "/dev/shm", "/workspace", os.environ["HOME"]]
for place in places:
    os.makedirs(place, exist_ok=True)
    with open(f"{place}/{tag}", "w") as handle:
        handle.write(tag)
listener = socket.socket(socket.AF_UNIX)
listener.bind("\0" + tag)
listener.listen()
listener.setblocking(False)
made = {
    "shm": libc.shmget(key, 4096, 0o1666),
    "msg": libc.msgget(key, 0o1666),
    "sem": libc.semget(key, 1, 0o1666),
    "mq": libc.mq_open(("/" + tag).encode(), os.O_CREAT | os.O_RDWR, 0o666, None),
}
sleeper = subprocess.Popen(["bash", "-c", f"exec -a {tag} sleep 60"])
if min(made.values()) < 0:
    print("NOT PLANTED", made, flush=True)
print("planted at", time.time(), flush=True)
time.sleep(6)
lost = [place for place in places if not os.path.exists(f"{place}/{tag}")]
try:
    listener.accept()
    lost.append("a connection came to the abstract socket")
except BlockingIOError:
    pass
still = {
    "shm": libc.shmget(key, 0, 0),
    "msg": libc.msgget(key, 0),
    "sem": libc.semget(key, 0, 0),
}
lost += [kind for kind, ident in still.items() if ident != made[kind]]
lost += [] if sleeper.poll() is None else [f"the sleeper died ({sleeper.returncode})"]
sleeper.kill()
print("checked at", time.time())
print("INTACT" if not lost else f"DISTURBED {lost}")
"""
# The attacker knows the victim's names (the strongest case) and looks everywhere for them.
ATTACKER = r"""
import ctypes, os, signal, socket, time
libc = ctypes.CDLL(None, use_errno=True)
tag = "@VICTIM@"
key = int(tag[-6:], 16)
found = []
@ATTEMPT@
print("probed at", time.time(), flush=True)
for place in ("/tmp", "/dev/shm", "/workspace", "/tmp/home", "/dev", "/var/tmp", "/run", ""):
    path = f"{place}/{tag}"
    if os.path.lexists(path):
        found.append(path)
        os.unlink(path)
probe = socket.socket(socket.AF_UNIX)
try:
    probe.connect("\0" + tag)
    found.append("the abstract socket")
except OSError:
    pass
with open("/proc/net/unix") as table:
    found += ["/proc/net/unix"] if tag in table.read() else []
for kind, ident, remove in (
    ("shm", libc.shmget(key, 0, 0), libc.shmctl),
    ("msg", libc.msgget(key, 0), libc.msgctl),
    ("sem", libc.semget(key, 0, 0), lambda i, c, a: libc.semctl(i, 0, c)),
):
    if ident >= 0:
        found.append(f"SysV {kind}")
        remove(ident, 0, None)  # IPC_RMID
if libc.mq_open(("/" + tag).encode(), os.O_RDWR) >= 0:
    found.append("the POSIX message queue")
    libc.mq_unlink(("/" + tag).encode())
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            found += [f"process {pid}"] if tag.encode() in handle.read() else []
    except OSError:
        pass
print("FOUND" if found else "NOTHING", found, flush=True)
os.kill(-1, signal.SIGKILL)  # every process this run may signal
"""
# What the code can learn of the host: processes, kernel addresses and logs, /sys, the network.
HOST_VIEW = r"""
import json, os
@ATTEMPT@
def read(path, size=4096):
    try:
        with open(path, "rb") as handle:
            return handle.read(size).decode(errors="replace")
    except OSError:
        return None
pids = [p for p in os.listdir("/proc") if p.isdigit()]
cmdlines = [(read(f"/proc/{p}/cmdline") or "").replace("\0", " ") for p in pids]
host_words = ("sshd", "dockerd", "containerd", "pytest", "systemd", "athena-sec")
kallsyms = (read("/proc/kallsyms", 1 << 22) or "").splitlines()
secret_files = (
    "/proc/timer_list", "/proc/sched_debug", "/proc/kmsg", "/proc/kcore", "/proc/slabinfo",
    "/proc/vmallocinfo", "/proc/kpageflags", "/proc/1/environ", "/proc/1/mem", "/proc/1/maps",
    "/proc/1/fd/0", "/sys/kernel/debug/tracing/trace", "/sys/firmware/dmi/tables/DMI",
)
sys_tree = [
    os.path.relpath(os.path.join(root, name), "/sys")
    for root, dirs, files in os.walk("/sys") for name in dirs + files
]
mounts = [line.split() for line in (read("/proc/self/mountinfo", 1 << 16) or "").splitlines()]
print(json.dumps({
    "nodename": os.uname().nodename,
    "pids": len(pids),
    "host_processes": [c[:100] for c in cmdlines if any(w in c for w in host_words)],
    "kallsyms_lines": len(kallsyms),
    "kallsyms_addresses": sum(1 for line in kallsyms if int(line.split()[0], 16)),
    "readable": [p for p in secret_files if read(p, 1) is not None],
    "sys_outside_cgroups": [p for p in sys_tree if not (p == "fs" or p.startswith("fs/cgroup"))],
    "interfaces": [l.split(":")[0].strip() for l in (read("/proc/net/dev") or "").splitlines()[2:]],
    "host_paths_in_mountinfo": sorted({m[3] for m in mounts if len(m) > 3 and m[3] != "/"}),
}))
"""
# Every way into the exported root filesystem from inside; the host's copy must not change.
ROOTFS_WRITES = r"""
@ATTEMPT@
T=@TOKEN@
for f in /opt/athena/runner /opt/athena/pyboot.pyc /usr/bin/python3 /etc/passwd /bin/sh; do
  (echo pwned > "$f") 2>/dev/null && echo "overwrote $f"
  truncate -s 0 "$f" 2>/dev/null && echo "truncated $f"
  chmod 4777 "$f" 2>/dev/null && echo "chmod $f"
  touch -d 2000-01-01 "$f" 2>/dev/null && echo "touched $f"
  mv "$f" "$f.$T" 2>/dev/null && echo "moved $f"
  ln "$f" "/tmp/hard-$T" 2>/dev/null && echo "hard-linked $f"
done
for d in / /usr /usr/bin /opt/athena /etc /var /var/tmp /run /run/lock /root /home /srv /mnt; do
  touch "$d/$T" 2>/dev/null && echo "created $d/$T"
  mkdir "$d/$T.d" 2>/dev/null && echo "made $d/$T.d"
  mkfifo "$d/$T.fifo" 2>/dev/null && echo "made $d/$T.fifo"
done
touch "/dev/$T" 2>/dev/null && echo "DEV-WRITABLE /dev/$T"
python3 - <<'PY'
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
MS_REMOUNT, MS_BIND = 32, 4096
if libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND, None) == 0:
    print("remounted / read-write")
if libc.mount(b"/tmp", b"/opt", None, MS_BIND, None) == 0:
    print("bound /tmp over /opt")
for path in ("/etc/passwd", "/opt/athena/runner"):
    for how in (
        lambda: os.open(path, os.O_RDWR),
        lambda: os.setxattr(path, "user.t", b"1"),
        lambda: os.chown(path, 65534, 65534),
        lambda: os.utime(path, (0, 0)),
    ):
        try:
            how()
            print("changed", path)
        except OSError:
            pass
PY
"""
# Calls whose success would widen the kernel's surface beyond the profile (each one: its name
# and how to make it). A forked child tries the foreign ABIs, which the filter kills.
KERNEL_SURFACE = r"""
import ctypes, mmap, os, signal, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
buf = ctypes.create_string_buffer(256)
null = ctypes.c_void_p(0)
ns = {"user": 0x10000000, "mount": 0x20000, "net": 0x40000000, "pid": 0x20000000,
      "ipc": 0x08000000, "uts": 0x04000000, "cgroup": 0x02000000, "time": 0x80}
calls = {f"unshare {k}": (lambda f=f: libc.unshare(f)) for k, f in ns.items()}
calls["clone newuser"] = lambda: libc.syscall(56, ns["user"] | signal.SIGCHLD, 0, 0, 0, 0)
calls.update({
    "setns": lambda: libc.setns(os.open("/proc/self/ns/net", os.O_RDONLY), 0),
    "mount proc": lambda: libc.mount(b"proc", b"/tmp", b"proc", 0, None),
    "umount /proc": lambda: libc.umount2(b"/proc", 2),
    "pivot_root": lambda: libc.syscall(155, b"/tmp", b"/tmp"),
    "chroot": lambda: libc.chroot(b"/tmp"),
    "io_uring_setup": lambda: libc.syscall(425, 8, buf),
    "bpf": lambda: libc.syscall(321, 0, buf, 48),
    "perf_event_open": lambda: libc.syscall(298, buf, 0, -1, -1, 0),
    "keyctl": lambda: libc.syscall(250, 0, -3, 0, 0, 0),
    "add_key": lambda: libc.syscall(248, b"user", b"t", b"x", 1, -3),
    "ptrace attach 1": lambda: libc.syscall(101, 16, 1, 0, 0),
    "ptrace traceme": lambda: libc.syscall(101, 0, 0, 0, 0),
    "process_vm_readv 1": lambda: libc.syscall(310, 1, buf, 1, buf, 1, 0),
    "kcmp": lambda: libc.syscall(312, 1, os.getpid(), 0, 0, 0),
    "pidfd_getfd": lambda: libc.syscall(438, libc.syscall(434, 1, 0), 0, 0),
    "userfaultfd": lambda: libc.syscall(323, 0),
    "open_by_handle_at": lambda: libc.syscall(304, -100, buf, 0),
    "name_to_handle_at": lambda: libc.syscall(303, -100, b"/etc/passwd", buf, buf, 0),
    "fanotify_init": lambda: libc.syscall(300, 0, 0),
    "init_module": lambda: libc.syscall(175, buf, 1, b""),
    "kexec_load": lambda: libc.syscall(246, 0, 0, null, 0),
    "swapon": lambda: libc.syscall(167, b"/tmp/x", 0),
    "clock_settime": lambda: libc.syscall(227, 0, buf),
    "personality exec": lambda: libc.personality(0x0400000),
    "mknod char device": lambda: libc.mknod(b"/tmp/mem", 0o20666, os.makedev(1, 1)),
})
def make_socket(family):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET, socket.SOCK_RAW):
        try:
            socket.socket(family, kind).close()
            return 0
        except OSError:
            pass
    return -1
for family in (17, 40, 38, 44, 15, 30, 21, 29):  # packet vsock alg xdp key tipc rds can
    calls[f"socket family {family}"] = lambda family=family: make_socket(family)
@ATTEMPT@
allowed = []
for name, call in calls.items():
    try:
        result = call()
    except OSError:
        continue
    if result is not None and result >= 0:
        allowed.append(name)
        if result == 0 and name == "clone newuser":
            os._exit(0)  # the child of a clone that went through

def foreign(code):
    # Run machine code in a forked child: what the kernel did to it, or what it returned.
    pid = os.fork()
    if pid == 0:
        page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(code)
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        value = ctypes.CFUNCTYPE(ctypes.c_long)(address)()
        os._exit(1 if value > 0 else 0)
    status = os.waitpid(pid, 0)[1]
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
if foreign(b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"):  # getpid through int 0x80 (i386)
    allowed.append("i386 system calls")
if foreign(b"\xb8\x27\x00\x00\x40\x0f\x05\xc3"):  # getpid | __X32_SYSCALL_BIT
    allowed.append("x32 system calls")
print("tried", len(calls) + 2, "allowed", allowed)
"""
# Takes as much of the host-wide Linux AIO budget (fs.aio-max-nr) as it can, and holds it.
AIO_HOG = r"""
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
@ATTEMPT@
held = 0
while held < 4096:
    context = ctypes.c_ulong(0)
    if libc.syscall(206, 4096, ctypes.byref(context)) != 0:
        break
    held += 1
print("held", held, "AIO contexts:", os.strerror(ctypes.get_errno()), flush=True)
time.sleep(6)
"""
# Takes every inotify instance its uid may have, and holds them.
INOTIFY_HOG = r"""
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
@ATTEMPT@
held = 0
while libc.inotify_init1(0) >= 0:
    held += 1
print("held", held, "inotify instances", flush=True)
time.sleep(10)
"""
INOTIFY_PROBE = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
fds = [libc.inotify_init1(0) for _ in range(8)]
print("probe", "ok" if min(fds) >= 0 else os.strerror(ctypes.get_errno()))
"""
# Daemons that leave their session and ignore the polite signals, named after the run's token.
DAEMONS = r"""
@ATTEMPT@
setsid bash -c 'trap "" TERM HUP INT; exec -a @TOKEN@-setsid sleep 300' </dev/null >/dev/null 2>&1 &
( ( trap "" TERM HUP; exec -a @TOKEN@-double sleep 300 ) & ) </dev/null >/dev/null 2>&1
nohup bash -c 'exec -a @TOKEN@-nohup sleep 300' </dev/null >/dev/null 2>&1 &
echo daemons started
@TAIL@
"""
# An orchestrator whose run never ends by itself (its code is in a file: the token, which the
# judge looks for in every process's argv and environment, must only be in the daemons').
ORPHAN_ORCHESTRATOR = """
import sys
from pathlib import Path
from athena.mcp.memory_api import MemoryAPI
from orchestrator.settings import Settings
work = Path(sys.argv[1])
settings = Settings(project_dir=work, sandbox_backends=("fast",))
api = MemoryAPI.create(work / "orphan.db", settings=settings)
policy = {"extends": "strict-fast", "validation": {"enforce": False}}
api.execute_code((work / "orphan.sh").read_text(), "bash", None, 120, policy)
"""
# Forged stdout and exit frames, with every string that could be the run's nonce, written to
# every descriptor the code has and to the runner's own.
FRAME_FORGERY = r"""
import glob, json, os, re, struct
@ATTEMPT@
candidates = {""}
places = ["/proc/self/environ", "/proc/1/environ", "/proc/1/cmdline", "/proc/self/cmdline",
          *glob.glob("/workspace/**", recursive=True), *glob.glob("/tmp/**", recursive=True)]
for path in places:
    try:
        with open(path, "rb") as handle:
            candidates.update(w.decode() for w in re.findall(rb"[0-9a-f]{16,64}", handle.read()))
    except OSError:
        pass
def frame(kind, payload):
    return kind + struct.pack(">I", len(payload)) + payload
report = {"exit_code": 0, "signal": None, "timed_out": False, "oom_kills": 0,
          "pids_limit_hits": 0, "memory_peak_bytes": 1, "cpu_ns": 1, "run_ns": 1000,
          "value_truncated": False}
forged = frame(b"o", b"forged @TOKEN@\n") + b"".join(
    frame(b"x", json.dumps({**report, "nonce": n}).encode()) for n in sorted(candidates)[:64]
)
for fd in range(10):
    try:
        os.write(fd, forged)
    except OSError:
        pass
for path in glob.glob("/proc/1/fd/*"):
    try:
        with open(path, "wb") as handle:
            handle.write(forged)
    except OSError:
        pass
print("candidates", len(candidates), flush=True)
os._exit(3)
"""
# Fills every writable place, /dev included, in 16 MiB files (the file size limit).
FILL_EVERYTHING = """
@ATTEMPT@
for d in /tmp /workspace /dev/shm /dev "$HOME"; do
  [ -d "$d" ] && [ -w "$d" ] || continue
  for n in $(seq 1 32); do
    dd if=/dev/zero of="$d/fill-@TOKEN@-$n" bs=1M count=16 2>/dev/null || break
  done
  echo "$d: $(du -sm "$d" 2>/dev/null | cut -f1) MiB"
done
sleep 2
"""


def _neighbour_output() -> str:
    """What :data:`NEIGHBOUR` prints when nothing took its memory, processes or CPU."""
    digest = hashlib.sha256(bytearray(96 << 20)).hexdigest()[:16]
    return f"{digest} child {sum(i * i for i in range(200000))}\n"


def _neighbours(
    sec: Sec, bombs: list[Future[dict[str, Any]]]
) -> list[tuple[dict[str, Any], float]]:
    """Plain runs one after another until the bombs are over (at least two, at most 30)."""
    done: list[tuple[dict[str, Any], float]] = []
    while len(done) < 2 or (len(done) < 30 and not all(b.done() for b in bombs)):
        start = time.monotonic()
        result = sec.run(NEIGHBOUR, "python", timeout_seconds=30, attempt=False)
        done.append((result, time.monotonic() - start))
    return done


def _categories(result: dict[str, Any]) -> list[str]:
    return [v["category"] for v in result["violation_details"]]


def test_bombs_leave_concurrent_runs_unharmed(sec: Sec) -> None:
    """A fork bomb and a memory bomb at their limits leave concurrent runs correct and on time."""
    sec.only("fast")
    expected = _neighbour_output()
    probes = {"processes": hostenv.count_processes, "available": hostenv.mem_available_bytes}
    sampler = hostenv.Sampler(probes, interval=0.05)
    with sampler.running(), ThreadPoolExecutor(2 + NEIGHBOUR_LANES) as pool:
        bombs = [
            pool.submit(sec.run, code, timeout_seconds=20) for code in (FORK_BOMB, MEMORY_BOMB)
        ]
        time.sleep(1.5)  # both bombs are at their limits by now
        lanes = [pool.submit(_neighbours, sec, bombs) for _ in range(NEIGHBOUR_LANES)]
        fork, memory = (bomb.result() for bomb in bombs)
        neighbours = [run for lane in lanes for run in lane.result()]
    sec.require(
        "processes" in _categories(fork), f"the fork bomb hit no limit: {fork['violations']}"
    )
    sec.require(
        "memory" in _categories(memory), f"the memory bomb hit no limit: {memory['violations']}"
    )
    for result, took in neighbours:
        why = result["error"] or result["violations"] or result["stdout"][-200:]
        sec.expect(result["success"] and result["stdout"] == expected, f"a neighbour failed: {why}")
        sec.expect(took < NEIGHBOUR_MAX_S, f"a neighbour took {took:.1f} s")
    slowest = max(took for _, took in neighbours)
    rise, drop = sampler.rise("processes"), sampler.drop("available")
    sec.notes.append(
        f"{len(neighbours)} runs beside the bombs, all correct, slowest {slowest:.1f} s; host "
        f"processes rose by {rise} at most, MemAvailable fell by {drop // MIB} MiB at most"
    )
    sec.expect(rise < PROCESS_RISE_LIMIT, f"the host's process count rose by {rise}")
    sec.expect(drop < MEMORY_DROP_LIMIT, f"host memory fell by {drop // MIB} MiB")
    sec.finish()


def _timestamp(stdout: str, label: str) -> float:
    """The time a run printed after ``label`` (0.0 when it did not)."""
    for line in stdout.splitlines():
        if line.startswith(label):
            return float(line.removeprefix(label))
    return 0.0


def test_concurrent_sandboxes_share_nothing(sec: Sec) -> None:
    """A run knowing a neighbour's names finds and disturbs none of its files, IPC or processes."""
    sec.only("fast")
    values = {"@VICTIM@": f"athena-victim-{secrets.token_hex(3)}"}
    with ThreadPoolExecutor(1) as pool:
        planted = pool.submit(sec.run, VICTIM, timeout_seconds=30, attempt=False, values=values)
        time.sleep(2.0)  # the victim has planted by now (it says when: checked below)
        attacker = sec.run(ATTACKER, timeout_seconds=30, values=values)
        victim = planted.result()
    out = victim["stdout"]
    sec.require("NOT PLANTED" not in out, f"the victim could not plant: {out!r}")
    probed = _timestamp(attacker["stdout"], "probed at ")
    during = _timestamp(out, "planted at ") < probed < _timestamp(out, "checked at ")
    sec.require(during, f"the attack did not run while the victim held its things: {out!r}")
    sec.expect("NOTHING" in attacker["stdout"], f"the attacker found: {attacker['stdout']!r}")
    sec.expect(victim["success"] and "INTACT" in out, f"the victim was disturbed: {out!r}")
    sec.finish()


def test_host_is_not_visible(sec: Sec) -> None:
    """No host process, kernel address or log, /sys entry or interface but lo is visible inside."""
    sec.only("fast")
    result = sec.run(HOST_VIEW, timeout_seconds=30)
    lines = [line for line in result["stdout"].splitlines() if line.startswith("{")]
    sec.require(bool(lines), f"the probe printed no view: {result['stderr'][-300:]!r}")
    view = json.loads(lines[-1]) if lines else {}
    sec.expect(view.get("nodename") == "sandbox", f"the host name shows: {view.get('nodename')}")
    sec.expect(not view.get("host_processes"), f"host processes show: {view.get('host_processes')}")
    sec.expect(view.get("pids", 99) < 10, f"{view.get('pids')} processes show in /proc")
    sec.require(view.get("kallsyms_lines", 0) > 0, "/proc/kallsyms could not be read at all")
    sec.expect(not view.get("kallsyms_addresses"), "/proc/kallsyms shows kernel addresses")
    sec.expect(not view.get("readable"), f"readable: {view.get('readable')}")
    sec.expect(not view.get("sys_outside_cgroups"), f"/sys shows {view.get('sys_outside_cgroups')}")
    sec.expect(view.get("interfaces") == ["lo"], f"interfaces: {view.get('interfaces')}")
    # The docker mode shows its overlay's host paths the same way: noted, not failed.
    sec.notes.append(f"host paths in mountinfo: {view.get('host_paths_in_mountinfo')}")
    sec.finish()


def _exports() -> list[Path]:
    """The exported root filesystems on this host (every image's)."""
    return sorted(Settings().fast_root.glob("*/rootfs"))


def _changed_since(root: Path, mark: float) -> list[str]:
    """Paths under ``root`` whose inode changed (content, mode, owner, times, links) after ``mark``."""
    changed = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            try:
                if os.lstat(path).st_ctime > mark:
                    changed.append(os.path.normpath(path))
            except OSError:
                continue
    return changed


def test_exported_root_stays_as_it_was(sec: Sec) -> None:
    """Nothing done inside changes the exported root on the host; /dev takes no file either."""
    sec.only("fast")
    sec.run("echo exported", "bash", attempt=False)  # the image is exported before the mark
    mark = time.time()
    time.sleep(0.05)  # inode times have a tick; nothing of ours changes them meanwhile
    result = sec.run(ROOTFS_WRITES, "bash", timeout_seconds=60)
    changed = [path for root in _exports() for path in _changed_since(root, mark)]
    sec.require(bool(_exports()), "no exported root filesystem found on the host")
    sec.expect(not changed, f"the exported root changed on the host: {changed[:8]}")
    said = [line for line in result["stdout"].splitlines() if not line.startswith("athena-")]
    sec.notes.append(f"what the code managed: {said[:8] or 'nothing'}")
    sec.expect("DEV-WRITABLE" not in result["stdout"], "the code could create files in /dev")
    sec.finish()


def test_exported_roots_add_no_set_id_programs_to_the_host(sec: Sec) -> None:
    """The exported roots put no set-id program or world-writable directory on the host."""
    sec.only("fast")
    sec.run("print('exported')", attempt=False)
    set_id, world_writable = [], []
    for root in _exports():
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                mode = os.lstat(path).st_mode
                if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                    set_id.append(path)
                elif stat.S_ISDIR(mode) and mode & stat.S_IWOTH:
                    world_writable.append(path)
    sec.expect(not set_id, f"{len(set_id)} set-id programs on the host, e.g. {set_id[:4]}")
    sec.expect(not world_writable, f"world-writable directories: {world_writable[:4]}")
    sec.finish()


def test_kernel_surface_is_refused(sec: Sec) -> None:
    """New namespaces, mounts, io_uring, bpf, perf, keys, ptrace, odd sockets, 32-bit calls fail."""
    sec.only("fast")
    result = sec.run(KERNEL_SURFACE, timeout_seconds=30)
    said = [line for line in result["stdout"].splitlines() if line.startswith("tried")]
    sec.require(bool(said), f"the probe did not finish: {result['stderr'][-300:]!r}")
    sec.expect(not said or said[-1].endswith("allowed []"), f"the filter let through: {said}")
    sec.notes.append(said[-1] if said else "")
    sec.finish()


def _host_aio_refusal() -> int:
    """What setting up a 128-event AIO context on the host answers now: 0, or its errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    context = ctypes.c_ulong(0)
    if libc.syscall(SYS_IO_SETUP, 128, ctypes.byref(context)) != 0:
        return ctypes.get_errno()
    libc.syscall(SYS_IO_DESTROY, context)
    return 0


def test_host_wide_aio_budget_is_not_taken(sec: Sec) -> None:
    """A run cannot take the host-wide Linux AIO budget: host processes can still set up AIO."""
    sec.only("fast")
    aio_nr = Path("/proc/sys/fs/aio-nr")
    before = int(aio_nr.read_text())
    with ThreadPoolExecutor(1) as pool:
        hog = pool.submit(sec.run, AIO_HOG, timeout_seconds=30)
        deadline = time.monotonic() + 5
        while int(aio_nr.read_text()) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the hog's loop ends within this
        held = int(aio_nr.read_text()) - before
        refusal = _host_aio_refusal()
        hog.result()
    sec.notes.append(
        f"the run held {held} of {Path('/proc/sys/fs/aio-max-nr').read_text().strip()}"
    )
    sec.expect(refusal == 0, f"the host's io_setup failed: {os.strerror(refusal)} (held {held})")
    sec.finish()


@contextmanager
def _second_orchestrator(sec: Sec) -> Iterator[MemoryAPI]:
    """Another fast-mode orchestrator on this host (a second worker of a service)."""
    settings = Settings(project_dir=sec.project, sandbox_backends=("fast",))
    api = MemoryAPI.create(sec.workdir / "second.db", settings=settings)
    try:
        yield api
    finally:
        api.close()


def test_per_user_budgets_are_not_shared(sec: Sec) -> None:
    """A run's use of its uid's inotify budget leaves concurrent runs' own, in any orchestrator."""
    sec.only("fast")
    with _second_orchestrator(sec) as other, ThreadPoolExecutor(1) as pool:
        hog = pool.submit(sec.run, INOTIFY_HOG, timeout_seconds=30)
        time.sleep(2.5)  # the hog holds them all by now
        # Several runs each: a fresh orchestrator hands out its first uids in turn, and the
        # hog has one of those first uids in its own orchestrator.
        runs: dict[str, list[dict[str, Any]]] = {
            "the same orchestrator": [],
            "a second orchestrator": [],
        }
        for _ in range(PROBES):
            runs["the same orchestrator"].append(
                sec.run(INOTIFY_PROBE, timeout_seconds=30, attempt=False)
            )
            runs["a second orchestrator"].append(
                other.execute_code(INOTIFY_PROBE, "python", None, 30, sec.policy())
            )
        sec.results += runs["a second orchestrator"]
        held = hog.result()
    sec.require("held" in held["stdout"], f"the hog did not run: {held['stderr'][-300:]!r}")
    for where, results in runs.items():
        said = [r["stdout"].strip() or r["error"] for r in results]
        sec.expect(all(s == "probe ok" for s in said), f"runs beside it in {where}: {said}")
    sec.finish()


def test_processes_end_with_the_run(sec: Sec) -> None:
    """Daemons end with their run, whether it exits or is killed at its timeout: nothing is left."""
    sec.only("fast")
    for tail, timeout in (("exit 0", 30.0), ("while :; do sleep 1; done", 3.0)):
        result = sec.run(DAEMONS, "bash", timeout_seconds=timeout, values={"@TAIL@": tail})
        if timeout < 10:
            timed_out = "timeout" in _categories(result)
            sec.expect(timed_out, f"the run was not stopped at its timeout: {result['violations']}")
        left = leftovers(sec.host.client, [result], markers=[sec.token])
        sec.expect(not left, f"after a run that ended by {tail!r}: {left}")
    sec.finish()


def test_orchestrator_death_ends_its_sandboxes(sec: Sec) -> None:
    """The orchestrator's death ends its sandboxes; the next orchestrator removes their cgroups."""
    sec.only("fast")
    code = DAEMONS.replace("@ATTEMPT@", "").replace("@TAIL@", "sleep 300")
    (sec.workdir / "orphan.sh").write_text(code.replace("@TOKEN@", sec.token))
    argv = [sys.executable, "-c", ORPHAN_ORCHESTRATOR, str(sec.workdir)]
    orchestrator = subprocess.Popen(argv, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not hostenv.process_matches([sec.token]) and time.monotonic() < deadline:
            time.sleep(0.2)
        started = bool(hostenv.process_matches([sec.token]))
    finally:
        os.kill(orchestrator.pid, signal.SIGKILL)
        orchestrator.wait(30)
    sec.require(started, "the killed orchestrator's run never started its daemons")
    left = leftovers(sec.host.client, [], markers=[sec.token])
    sec.expect(not left, f"after the orchestrator died: {left}")
    sec.run("print('next')", attempt=False)  # a new orchestrator's first run sweeps
    cgroups = fast_cgroups([f"{orchestrator.pid}-*"])
    sec.expect(not cgroups, f"the dead orchestrator's cgroups are still there: {cgroups[:3]}")
    sec.finish()


def test_forged_frames_with_nonce_guesses(sec: Sec) -> None:
    """Frames forged with every nonce the code can find change nothing: its exit status holds."""
    sec.only("fast")
    result = sec.run(FRAME_FORGERY, timeout_seconds=20)
    expect_own_exit_status(sec, result)
    sec.finish()


def test_every_writable_place_counts_against_the_run(sec: Sec) -> None:
    """/tmp, /workspace, /dev/shm, /dev and HOME together stay within the run's memory limit."""
    sec.only("fast")
    sampler = hostenv.Sampler({"shmem": hostenv.shmem_bytes}, interval=0.05)
    with sampler.running():
        result = sec.run(FILL_EVERYTHING, "bash", timeout_seconds=60)
    rise = sampler.rise("shmem")
    said = [line for line in result["stdout"].splitlines() if "MiB" in line]
    sec.notes.append(f"host Shmem rose by {rise // MIB} MiB at most; the run wrote {said}")
    sec.expect(rise < TMPFS_RISE_LIMIT, f"host shared memory rose by {rise // MIB} MiB")
    sec.finish()
