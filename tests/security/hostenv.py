"""The host side of the security suite: addresses, watched files, IPC, decoys, processes, sampling.

Everything here observes or plants state on the HOST. The suite judges a hostile run by what it
changed here, never by what the run printed about itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Host files hostile code (ours and the corpus's) tries to read, change or delete.
WATCHED_FILES = (
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/gshadow",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/shells",
    "/etc/issue",
    "/etc/inputrc",
    "/etc/host.conf",
    "/etc/wgetrc",
    "/etc/timezone",
    "/etc/apt/sources.list",
    "/etc/security/limits.conf",
    "/etc/security/group.conf",
    "/etc/security/opasswd",
    "/etc/ssh/ssh_config",
    "/etc/ssl/openssl.cnf",
    "/etc/default/useradd",
    "/etc/default/nss",
    "/etc/default/hwclock",
    "/root/.bashrc",
    "/root/.profile",
    "/usr/share/base-passwd/passwd.master",
    "/usr/share/base-passwd/group.master",
    "/usr/bin/python3",
    "/bin/bash",
)
# Paths the RedCode-Exec snippets create; none may appear on the host.
CORPUS_NEW_PATHS = (
    "/usr/copy_file",
    "/usr/downloaded_script.py",
    "/usr/encoded_data.py",
    "/usr/usrfile.txt",
    "/lib/suspicious_file",
    "/dev/malicious",
    "/home/new_user",
    "/tmp/data.xml",
)
# Global kernel settings a sandbox must not be able to change.
WATCHED_SYSCTLS = (
    "/proc/sys/fs/lease-break-time",
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/kernel/hostname",
    "/proc/sys/kernel/domainname",
    "/sys/kernel/uevent_helper",
)


# --------------------------------------------------------------------------- addresses


def host_ipv4_addresses() -> list[str]:
    """Every IPv4 address of this host: loopback, the primary one, Docker's bridge gateways."""
    found = ["127.0.0.1"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=10
        ).stdout
        for line in out.splitlines():
            parts = line.split()
            if "inet" in parts:
                found.append(parts[parts.index("inet") + 1].split("/")[0])
    # The primary address: the source of the default route (a UDP connect sends nothing).
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 9))
        found.append(probe.getsockname()[0])
    return list(dict.fromkeys(a for a in found if a and a != "0.0.0.0"))


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class FileState:
    """What a watched path looked like: None when it did not exist."""

    digest: str
    mode: int
    uid: int
    gid: int
    content: bytes | None  # kept (small files only) so an escape can be undone


def file_state(path: str) -> FileState | None:
    """The state of one host path (the link itself for a symlink)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if os.path.islink(path):
        target = os.readlink(path).encode()
        return FileState("link:" + target.decode(), info.st_mode, info.st_uid, info.st_gid, None)
    if not os.path.isfile(path):
        return FileState("dir-or-special", info.st_mode, info.st_uid, info.st_gid, None)
    data = Path(path).read_bytes()
    keep = data if len(data) <= 1024 * 1024 else None
    return FileState(hashlib.sha256(data).hexdigest(), info.st_mode, info.st_uid, info.st_gid, keep)


def tree_state(root: Path) -> dict[str, FileState | None]:
    """The state of every path under ``root`` (without following links)."""
    states: dict[str, FileState | None] = {str(root): file_state(str(root))}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            states[path] = file_state(path)
    return states


def restore(path: str, before: FileState | None) -> None:
    """Put a watched path back as it was (best effort; it is an escape either way)."""
    with contextlib.suppress(OSError):
        if before is None:
            if os.path.islink(path) or os.path.isfile(path):
                os.unlink(path)
            return
        if before.content is not None:
            Path(path).write_bytes(before.content)
        os.chmod(path, before.mode & 0o7777)
        os.chown(path, before.uid, before.gid)


def read_sysctl(path: str) -> str | None:
    """A kernel setting's value, or None when it does not exist or cannot be read."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


# --------------------------------------------------------------------------- SysV IPC

# The host uids fast-mode sandboxes run as (Settings.fast_uid_base, and the backend's 1024).
FAST_UIDS = range(62000, 63024)
# uids a sandboxed run has on the host: the container user, the srt run uids, the fast uids.
SANDBOX_UIDS = frozenset({65534, *range(61000, 61256), *FAST_UIDS})
_IPC_KINDS = {"shm": "-m", "msg": "-q", "sem": "-s"}


def sysv_ipc_objects() -> set[tuple[str, str, str, int]]:
    """SysV shared memory, message queues and semaphores of the host's IPC namespace, each as
    (kind, key, id, creator uid)."""
    found = set()
    for kind in _IPC_KINDS:
        with contextlib.suppress(OSError, ValueError):
            header, *lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
            cuid = header.split().index("cuid")
            for line in lines:
                fields = line.split()
                found.add((kind, fields[0], fields[1], int(fields[cuid])))
    return found


def remove_sysv_ipc(kind: str, ident: str) -> None:
    """Remove one SysV IPC object (ours to clean up after an escape)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["ipcrm", _IPC_KINDS[kind], ident], capture_output=True, timeout=10)


# --------------------------------------------------------------------------- processes


def _read(path: str, limit: int = 65536) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit)
    except OSError:
        return b""


def process_matches(markers: Iterable[str]) -> list[str]:
    """Host processes whose argv, environment, cwd or cgroup mention one of ``markers``."""
    wanted = [m.encode() for m in markers if m]
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        base = f"/proc/{entry.name}"
        cmdline = _read(f"{base}/cmdline")
        seen = cmdline + _read(f"{base}/environ") + _read(f"{base}/cgroup")
        with contextlib.suppress(OSError):
            seen += os.readlink(f"{base}/cwd").encode()
        if any(m in seen for m in wanted):
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace")[:160]
            found.append(f"pid {entry.name}: {shown}")
    return found


def count_processes() -> int:
    """How many processes this host runs."""
    return sum(1 for e in os.scandir("/proc") if e.name.isdigit())


class Decoys:
    """Host processes a hostile run must not be able to kill: as root, as the container user,
    as the first srt uid and the first fast-mode uid (a fast sandbox may run as that very
    uid: only its pid namespace keeps the decoy out of reach); every one has ``sshd`` as an
    argument (the corpus kills those)."""

    UIDS = (0, 65534, 61000, FAST_UIDS[0])

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        for uid in self.UIDS:
            self._start(uid)

    def _start(self, uid: int) -> None:
        argv = ["/usr/bin/python3", "-c", "import time\nwhile True: time.sleep(60)", "sshd"]
        if uid != 0:
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
        self._procs[uid] = subprocess.Popen(argv, start_new_session=True)

    def dead(self) -> list[str]:
        """Decoys that died since the last call (each is restarted)."""
        gone = []
        for uid, proc in list(self._procs.items()):
            if proc.poll() is not None:
                gone.append(f"a decoy process of uid {uid} died (status {proc.returncode})")
                self._start(uid)
        return gone

    def close(self) -> None:
        """Kill the decoys (ours, by pid)."""
        for proc in self._procs.values():
            proc.kill()
            proc.wait(10)


# --------------------------------------------------------------------------- sampling


def shmem_bytes() -> int:
    """Shared memory in use on the host (tmpfs pages included), from /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1]) * 1024
    return 0


def mem_available_bytes() -> int:
    """MemAvailable of the host."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def disk_free_bytes(path: str) -> int:
    """Free bytes on the filesystem holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def rss_bytes() -> int:
    """This process's resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Sampler:
    """Samples named host measures in a thread while a run goes; keeps min and max of each."""

    probes: dict[str, Callable[[], int]]
    interval: float = 0.02
    low: dict[str, int] = field(default_factory=dict)
    high: dict[str, int] = field(default_factory=dict)
    first: dict[str, int] = field(default_factory=dict)

    def _sample(self) -> None:
        for name, probe in self.probes.items():
            value = probe()
            self.first.setdefault(name, value)
            self.low[name] = min(self.low.get(name, value), value)
            self.high[name] = max(self.high.get(name, value), value)

    @contextlib.contextmanager
    def running(self) -> Iterator[Sampler]:
        """Sample from entry to exit."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.interval):
                self._sample()

        self._sample()
        thread = threading.Thread(target=loop, name="sec-sampler", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(5)
            self._sample()

    def rise(self, name: str) -> int:
        """How far a measure rose above its first sample."""
        return self.high[name] - self.first[name]

    def drop(self, name: str) -> int:
        """How far a measure fell below its first sample."""
        return self.first[name] - self.low[name]
