"""Writable host mounts in host modes (srt): the write cap while the run goes, a sweep after it.

In docker mode the runner inside the container measures what a run adds to its writable mounts
and refuses set-id modes and special files with seccomp and Landlock. srt has no runner of
ours, so for it this process does what it can from outside: :class:`WriteCapWatch` measures each
writable mount's filesystem (free space, every 0.1 s, as the runner does) and cancels the run
past ``filesystem.max_mount_write_bytes``; :func:`sweep_mount` then removes what a run must not
leave there: set-user-id and set-group-id bits on what the run's uid owns, and unix sockets and
FIFOs it created (so no later run can use them as a channel). Between the code writing such a
file and the sweep, the file exists: that window is the run's lifetime.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Sequence
from contextlib import suppress

from orchestrator.run import CancelToken

CHECK_S = 0.1
_SET_ID = stat.S_ISUID | stat.S_ISGID


def _free(path: str) -> int | None:
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


class WriteCapWatch:
    """Cancels ``cancel`` when a filesystem of ``paths`` lost more than ``cap`` bytes.

    Use as a context manager around the run; :attr:`exceeded` names the mount that went over.
    """

    def __init__(self, paths: Sequence[tuple[str, str]], cap: int, cancel: CancelToken) -> None:
        self._paths = [(source, target, _free(source)) for source, target in paths]
        self._cap, self._cancel = cap, cancel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="athena-mount-cap", daemon=True)
        self.exceeded: str | None = None

    def __enter__(self) -> WriteCapWatch:
        if self._paths:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(CHECK_S):
            for source, target, start in self._paths:
                now = _free(source)
                if start is not None and now is not None and start - now > self._cap:
                    self.exceeded = target
                    self._cancel.cancel()
                    return


def sweep_mount(root: str, uid: int | None, since: float) -> int:
    """Strip set-id bits from, and remove sockets and FIFOs of, what the run left under ``root``.

    What the run left: entries ``uid`` owns, or (``uid`` None: srt without a dedicated uid, the
    files are ours) entries changed since ``since`` (epoch seconds). No link is followed. Returns
    how many entries were changed.
    """
    changed = 0
    for directory, dirs, files in os.walk(root, followlinks=False):
        for name in (*dirs, *files):
            path = os.path.join(directory, name)
            with suppress(OSError):
                changed += _clean(path, uid, since)
    return changed


def _clean(path: str, uid: int | None, since: float) -> int:
    # By descriptor, never by name twice: the entry may be swapped for a link meanwhile.
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        left = info.st_uid == uid if uid is not None else info.st_ctime >= since
        if not left or stat.S_ISLNK(info.st_mode):
            return 0
        if stat.S_ISSOCK(info.st_mode) or stat.S_ISFIFO(info.st_mode):
            os.unlink(path)
            return 1
        if info.st_mode & _SET_ID:
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(info.st_mode) & ~_SET_ID)
            return 1
        return 0
    finally:
        os.close(fd)
