"""Per-run limits on this host for the srt mode: a cgroup, a tmpfs work directory, an IPC namespace.

rlimits bind one process each: a run of many processes could take ``pids x memory_mb`` of RAM,
and a work directory on the host's disk only knows RLIMIT_FSIZE per file. So, when we are root,
each srt run gets its own cgroup (memory, pids) that every process of the run is born into, a
work directory that is a tmpfs of the policy's size (its pages count against the cgroup), and
its own SysV IPC namespace (srt's bubblewrap does not unshare IPC, so shared memory a run made
would otherwise outlive it in the host's namespace). Without root, srt keeps only its rlimits;
docs/isolation.md says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path("/sys/fs/cgroup")
_GROUP = "athena-srt"


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
    """One run's cgroup (v1: memory and pids controllers; v2: one unified group)."""

    dirs: tuple[Path, ...]
    unified: bool

    @classmethod
    def create(cls, name: str, memory_bytes: int, pids: int) -> RunCgroup | None:
        """Make the cgroup with its limits; None when this host does not let us (not root)."""
        if os.geteuid() != 0:
            return None
        unified = (_ROOT / "cgroup.controllers").exists()
        bases = (
            [_ROOT / _GROUP] if unified else [_ROOT / "memory" / _GROUP, _ROOT / "pids" / _GROUP]
        )
        try:
            dirs = tuple(cls._make(base, name, unified) for base in bases)
            group = cls(dirs, unified)
            group._limit(memory_bytes, pids)
        except OSError:
            return None
        return group

    @staticmethod
    def _make(base: Path, name: str, unified: bool) -> Path:
        base.mkdir(exist_ok=True)
        if unified:  # children may use the controllers only when the parent hands them down
            (base.parent / "cgroup.subtree_control").write_text("+memory +pids")
            (base / "cgroup.subtree_control").write_text("+memory +pids")
        path = base / name
        path.mkdir()
        return path

    def _limit(self, memory_bytes: int, pids: int) -> None:
        if self.unified:
            (group,) = self.dirs
            (group / "memory.max").write_text(str(memory_bytes))
            with suppress(OSError):  # no swap beyond the memory limit, where swap is accounted
                (group / "memory.swap.max").write_text("0")
            (group / "pids.max").write_text(str(pids))
            return
        memory, pid_dir = self.dirs
        (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
        with suppress(OSError):
            (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
        (pid_dir / "pids.max").write_text(str(pids))

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """Run ``argv`` inside this cgroup and a new IPC namespace, born there (no window)."""
        joins = " && ".join(f'echo $$ > "{d}/cgroup.procs"' for d in self.dirs)
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
        memory, pid_dir = self.dirs
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
                directory.rmdir()


def _read_pids(directory: Path) -> list[int]:
    try:
        return [int(line) for line in (directory / "cgroup.procs").read_text().split()]
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
