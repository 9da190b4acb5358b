"""Per-run limits on this host (srt and fast modes): a cgroup, a tmpfs work directory, a uid.

rlimits bind one process each: a run of many processes could take ``pids x memory_mb`` of RAM,
and a work directory on the host's disk only knows RLIMIT_FSIZE per file. So, when we are root,
each srt run gets its own cgroup (memory, pids) that every process of the run is born into, a
work directory that is a tmpfs of the policy's size (its pages count against the cgroup), and
its own SysV IPC namespace (srt's bubblewrap does not unshare IPC, so shared memory a run made
would otherwise outlive it in the host's namespace). Without root, srt keeps only its rlimits;
docs/isolation.md says so. The fast mode uses the same cgroups (with the cpu controller too) and
the same uid pool; it is unavailable without them.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_ROOT = Path("/sys/fs/cgroup")
UID_LEASES = Path("/run/athena-sandbox/uids")  # one lock file per host uid in use (root only)
_GROUP = "athena-srt"
_CPU_PERIOD_US = 100_000


def _read_value(path: Path, key: str | None = None) -> int:
    """The number in a cgroup file, or after ``key`` on one of its lines; -1 when absent."""
    try:
        text = path.read_text()
    except OSError:
        return -1
    if key is None:
        return int(text.split()[0]) if text.strip() else -1
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return -1


@dataclass(frozen=True)
class RunCgroup:
    """One run's cgroup (v1: memory, pids and optionally cpu controllers; v2: one group).

    ``dirs`` is (memory, pids), or (memory, pids, cpu[, cpuacct]) on v1, (group,) on v2;
    ``names`` the controller of each (v1), as the hierarchy is named under /sys/fs/cgroup.
    """

    dirs: tuple[Path, ...]
    unified: bool
    names: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        name: str,
        memory_bytes: int,
        pids: int,
        *,
        group: str = _GROUP,
        cpus: float | None = None,
    ) -> RunCgroup | None:
        """Make the cgroup with its limits; None when this host does not let us (not root).

        ``cpus`` also limits CPU time (the cpu controller) to that many cores.
        """
        if os.geteuid() != 0:
            return None
        try:
            unified, names, bases = _layout(group, cpus is not None)
        except OSError:
            return None
        made: list[str] = []
        try:
            for base in bases:
                os.mkdir(f"{base}/{name}")
                made.append(f"{base}/{name}")
            cgroup = cls(tuple(Path(d) for d in made), unified, names)
            _limit(made, unified, memory_bytes, pids, cpus)
        except OSError:
            for directory in made:
                with suppress(OSError):
                    os.rmdir(directory)
            return None
        return cgroup

    def binds(self) -> list[tuple[Path, str]]:
        """Where each directory shows inside a sandbox: (directory, path under /sys/fs/cgroup).

        The runner reads its counters there, as in a container. Co-mounted cpu and cpuacct
        hierarchies (Debian's default) are one directory shown under both names.
        """
        if self.unified:
            return [(self.dirs[0], str(_ROOT))]
        shown = [(d, f"{_ROOT}/{n}") for d, n in zip(self.dirs, self.names, strict=True)]
        if "cpu" in self.names and "cpuacct" not in self.names:
            shown.append((self.dirs[self.names.index("cpu")], f"{_ROOT}/cpuacct"))
        return shown

    def join_script(self) -> str:
        """A ``/bin/sh`` command list that moves the shell into this cgroup (paths are ours)."""
        return " && ".join(f'echo $$ > "{d}/cgroup.procs"' for d in self.dirs)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """Run ``argv`` inside this cgroup and a new IPC namespace, born there (no window)."""
        joins = self.join_script()
        return ["/bin/sh", "-c", f'{joins} && exec "$0" "$@"', "unshare", "--ipc", "--", *argv]

    def stats(self) -> dict[str, int]:
        """OOM kills, pids-limit hits and peak memory of the run (-1 where unknown)."""
        if self.unified:
            (group,) = self.dirs
            return {
                "oom_kills": _read_value(group / "memory.events", "oom_kill"),
                "pids_limit_hits": _read_value(group / "pids.events", "max"),
                "memory_peak_bytes": _read_value(group / "memory.peak"),
            }
        memory, pid_dir = self.dirs[:2]
        return {
            "oom_kills": _read_value(memory / "memory.oom_control", "oom_kill"),
            "pids_limit_hits": _read_value(pid_dir / "pids.events", "max"),
            "memory_peak_bytes": _read_value(memory / "memory.max_usage_in_bytes"),
        }

    def destroy(self) -> None:
        """Kill whatever is left in the cgroup and remove it."""
        for directory in self.dirs:
            for _ in range(50):
                procs = _read_pids(directory)
                if not procs:
                    break
                for pid in procs:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.02)
            with suppress(OSError):
                os.rmdir(directory)


@lru_cache(maxsize=8)
def _layout(group: str, cpu: bool) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """This host's cgroup layout for ``group``, its parents made (once per process).

    Returns (unified, controller names on v1, the parent directories of the runs' cgroups).

    Raises:
        OSError: a parent could not be made.
    """
    unified = (_ROOT / "cgroup.controllers").exists()
    names = [] if unified else ["memory", "pids"]
    if cpu and not unified:
        names.append("cpu")
        if not _same_hierarchy(_ROOT / "cpu", _ROOT / "cpuacct"):  # not co-mounted
            names.append("cpuacct")
    bases = [f"{_ROOT}/{c}/{group}" for c in names] or [f"{_ROOT}/{group}"]
    for base in bases:
        os.makedirs(base, exist_ok=True)
        if unified:  # children may use the controllers only when the parent hands them down
            wanted = "+memory +pids" + (" +cpu" if cpu else "")
            _write(f"{_ROOT}/cgroup.subtree_control", wanted)
            _write(f"{base}/cgroup.subtree_control", wanted)
    return unified, tuple(names), tuple(bases)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _limit(
    dirs: list[str], unified: bool, memory_bytes: int, pids: int, cpus: float | None
) -> None:
    """Write a new run cgroup's limits (memory with no swap beyond it, tasks, CPU time)."""
    quota = round(cpus * _CPU_PERIOD_US) if cpus is not None else None
    if unified:
        (group,) = dirs
        _write(f"{group}/memory.max", str(memory_bytes))
        with suppress(OSError):  # no swap beyond the memory limit, where swap is accounted
            _write(f"{group}/memory.swap.max", "0")
        _write(f"{group}/pids.max", str(pids))
        if quota is not None:
            _write(f"{group}/cpu.max", f"{quota} {_CPU_PERIOD_US}")
        return
    memory, pid_dir = dirs[:2]
    _write(f"{memory}/memory.limit_in_bytes", str(memory_bytes))
    with suppress(OSError):
        _write(f"{memory}/memory.memsw.limit_in_bytes", str(memory_bytes))
    _write(f"{pid_dir}/pids.max", str(pids))
    if quota is not None:
        _write(f"{dirs[2]}/cpu.cfs_period_us", str(_CPU_PERIOD_US))
        _write(f"{dirs[2]}/cpu.cfs_quota_us", str(quota))


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_hierarchy(first: Path, second: Path) -> bool:
    try:
        return first.resolve() == second.resolve() or first.stat().st_dev == second.stat().st_dev
    except OSError:
        return True  # one of them is missing: nothing separate to make


def sweep_groups(group: str, owner_alive: Callable[[int], bool]) -> int:
    """Remove run cgroups left by owners that died (named ``<owner pid>-...``); return how many.

    A killed owner cannot remove its runs' cgroups; their processes died with their sandboxes
    (the runner ends everything when its owner's pipe closes), so what is left is empty.
    """
    removed = 0
    for base in (_ROOT / group, *(_ROOT / c / group for c in ("memory", "pids", "cpu", "cpuacct"))):
        if not base.is_dir():
            continue
        for directory in base.iterdir():
            owner = directory.name.partition("-")[0]
            if not directory.is_dir() or not owner.isdigit() or owner_alive(int(owner)):
                continue
            RunCgroup((directory,), unified=False).destroy()
            removed += not directory.exists()
    return removed


class UidPool:
    """Hands each concurrent run its own host uid, so limits and signals never cross runs.

    Per-user kernel budgets (inotify instances, pipe pages, message queues) are shared by every
    process of a uid, so a uid is never held by two live runs, not even of two processes: as
    root, each take also leases the uid with an exclusive lock on ``<lease_dir>/<uid>``, which
    another process's pool skips; the kernel drops the lock when its holder dies.
    """

    def __init__(self, base: int, size: int, lease_dir: Path | None = UID_LEASES) -> None:
        self._free = list(range(base, base + size))
        self._cond = threading.Condition()
        self._leases: dict[int, int] = {}
        self._lease_dir = lease_dir if lease_dir is not None and os.geteuid() == 0 else None

    def take(self) -> int:
        """A free uid that no other process holds (blocks until one is given back)."""
        with self._cond:
            while True:
                for _ in range(len(self._free)):
                    uid = self._free.pop(0)
                    if self._lease(uid):
                        return uid
                    self._free.append(uid)  # another process's run has it: try the next
                self._cond.wait(0.05 if self._free else None)

    def give(self, uid: int) -> None:
        """Give a uid back (and its lease)."""
        with self._cond:
            lease = self._leases.pop(uid, None)
            if lease is not None:
                os.close(lease)
            self._free.append(uid)
            self._cond.notify()

    def _lease(self, uid: int) -> bool:
        if self._lease_dir is None:
            return True
        try:
            self._lease_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._lease_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return True  # no lease to be had here: this process's own pool still separates
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._leases[uid] = fd
        return True


def _read_pids(directory: Path) -> list[int]:
    try:
        with open(f"{directory}/cgroup.procs", "rb") as procs:
            return [int(line) for line in procs.read().split()]
    except OSError:
        return []


@contextmanager
def tmpfs_dir(path: Path, size_mb: int) -> Iterator[bool]:
    """Mount a tmpfs of ``size_mb`` (root's, mode 0711) on ``path`` while the block runs.

    Yields whether the mount is in place (False when we may not mount: not root).
    """
    if os.geteuid() != 0:
        yield False
        return
    options = f"size={size_mb}m,mode=0711,nosuid,nodev"
    argv = ["mount", "-t", "tmpfs", "-o", options, "athena-srt", str(path)]
    mounted = subprocess.run(argv, capture_output=True, check=False).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
