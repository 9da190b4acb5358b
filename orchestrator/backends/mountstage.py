"""Mount sources no sandbox can swap: the checked directory, bound where only root can reach.

The engine, not this process, resolves a bind mount's source path when it creates a container.
A run whose policy can write the project could replace a checked ``${project_dir}/sub`` with a
symlink to a host directory between our check and the engine's bind. Under runc the runner
refuses the run when a mount root is not the checked directory (device and inode). gVisor shows
neither to the code, so for runsc the source itself is made safe: the checked directory is
opened without following links, its identity compared with the check's, and bind-mounted (by
its open descriptor, so by identity, not by path) onto a fresh directory under
``/run/athena-sandbox/mounts`` where only root can create or rename anything (others may only
pass through, so srt's unprivileged uids reach it). The engine, or srt, binds that path. This
needs root; the mounts are removed when the backend closes, and a later process's sweep removes
those of owners that died.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import threading
from contextlib import suppress
from pathlib import Path

import structlog

from orchestrator.errors import PolicyError

log = structlog.get_logger(__name__)

STAGE_ROOT = Path("/run/athena-sandbox/mounts")
_INSTANCES = itertools.count()


def open_checked(source: str, device: int, inode: int) -> int:
    """Open ``source`` (a directory, no symlink followed) and check it is the checked one.

    Returns:
        An ``O_PATH`` descriptor of it.

    Raises:
        PolicyError: it is gone, a link, or another directory than the check saw.
    """
    try:
        fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise PolicyError(f"mount source {source} cannot be opened: {exc.strerror}") from exc
    info = os.fstat(fd)
    if (info.st_dev, info.st_ino) != (device, inode) or os.readlink(
        f"/proc/self/fd/{fd}"
    ) != source:
        os.close(fd)
        raise PolicyError(
            f"mount source {source} was replaced after the policy check (a link or another "
            "directory is there now): run refused"
        )
    return fd


class MountStage:
    """Bind-mounts checked directories under a root-only directory, one per (source, identity)."""

    def __init__(self, root: Path = STAGE_ROOT) -> None:
        # <pid>-<n>: each stage of a process has its own folder (sweeps read the pid).
        self._root = root / f"{os.getpid()}-{next(_INSTANCES)}"
        self._lock = threading.Lock()
        self._staged: dict[tuple[str, int, int], str] = {}
        # The last net: a stage nobody closed (its backend dropped, not closed) is closed when
        # the process exits. Held strongly: a stage collected unclosed would leave its mounts.
        _LIVE.add(self)

    @staticmethod
    def available() -> str | None:
        """Why staging cannot work here (None: it can): it needs root."""
        if os.geteuid() != 0:
            return "binding a checked mount source needs root (gVisor shows no inode to check)"
        return None

    def stage(self, source: str, device: int, inode: int) -> str:
        """Return a path the engine can bind that is exactly the checked directory.

        Raises:
            PolicyError: staging is not possible here, or the source changed since the check.
        """
        reason = self.available()
        if reason:
            raise PolicyError(f"mount source {source}: {reason}")
        key = (source, device, inode)
        with self._lock:
            if key in self._staged:
                return self._staged[key]
            fd = open_checked(source, device, inode)
            target = self._root / str(len(self._staged))
            try:
                self._root.parent.mkdir(parents=True, exist_ok=True)
                for directory in (self._root.parent, self._root, target):
                    directory.mkdir(mode=0o711, exist_ok=True)
                    os.chmod(directory, 0o711)  # passable, not listable, root's alone
                _bind(f"/proc/self/fd/{fd}", str(target), fd)
            except BaseException:
                _unbind(str(target))
                with suppress(OSError):
                    self._root.rmdir()
                raise
            finally:
                os.close(fd)
            self._staged[key] = str(target)
            return str(target)

    def close(self) -> None:
        """Remove every staged mount of this stage."""
        _LIVE.discard(self)
        with self._lock:
            staged, self._staged = list(self._staged.values()), {}
        for path in staged:
            _unbind(path)
        with suppress(OSError):
            shutil.rmtree(self._root)


_LIVE: set[MountStage] = set()


@atexit.register
def _close_live_stages() -> None:
    for stage in list(_LIVE):
        with suppress(Exception):
            stage.close()


def _bind(source: str, target: str, fd: int) -> None:
    done = subprocess.run(
        ["mount", "--bind", source, target],
        pass_fds=(fd,),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise PolicyError(f"could not bind the checked mount source: {done.stderr.strip()}")


def _unbind(path: str) -> None:
    subprocess.run(["umount", "-l", path], capture_output=True, check=False)
    with suppress(OSError):
        os.rmdir(path)


def sweep_stale(root: Path = STAGE_ROOT) -> int:
    """Remove the staged mounts of processes that are gone; return how many owners were swept."""
    swept = 0
    with suppress(OSError):
        for owner in root.iterdir():
            pid = owner.name.partition("-")[0]
            if not pid.isdigit() or Path(f"/proc/{pid}").exists():
                continue
            for staged in owner.iterdir():
                _unbind(str(staged))
            with suppress(OSError):
                owner.rmdir()
            swept += 1
    return swept
