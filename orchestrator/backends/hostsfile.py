"""The ``/etc/hosts`` of a sandbox without a network: written once, bound read-only in each.

A container created with networking disabled gets no hosts file from the engine (its
``/etc/hosts`` is an empty placeholder), and an image's exported root filesystem (the fast
mode) has the same empty file, so ``localhost`` would not resolve. This module writes the lines
the engine writes for a container in Docker's ``none`` network to a file only this user (or
root) can change; the docker and fast backends bind it read-only in place of the empty one.

Where: ``/run/athena-sandbox/hosts`` as root (beside the staged mounts); otherwise a directory of
this user's own in the temporary directory (``athena-sandbox-<uid>``, mode 0700). A directory
that exists but is not ours alone (another owner, writable by others, a link) is not used: the
backend then falls back to Docker's ``none`` network.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from pathlib import Path

# What dockerd 20.10 writes into /etc/hosts for a container in network mode none.
HOSTS_TEXT = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)
ROOT_DIR = Path("/run/athena-sandbox")
FILE_NAME = "hosts"
_lock = threading.Lock()


def default_dir() -> Path:
    """Where this user's hosts file lives: root's under /run, others' in the temp directory."""
    uid = os.geteuid()
    return ROOT_DIR if uid == 0 else Path(tempfile.gettempdir()) / f"athena-sandbox-{uid}"


def hosts_file(directory: Path | None = None) -> str | None:
    """The path of the sandbox hosts file, written (atomically) when missing or different.

    Returns:
        The file's path, or None when ``directory`` (default: :func:`default_dir`) cannot be
        made or is not this user's alone, or the file cannot be written.
    """
    directory = directory or default_dir()
    with _lock:
        try:
            directory.mkdir(mode=0o755 if os.geteuid() == 0 else 0o700, exist_ok=True)
            if not _ours_alone(directory):
                return None
            path = directory / FILE_NAME
            if not _current(path):
                _write(directory, path)
        except OSError:
            return None
    return str(path)


def _ours_alone(directory: Path) -> bool:
    """Whether ``directory`` is a real directory of this user that nobody else may write."""
    info = os.lstat(directory)
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.geteuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def _current(path: Path) -> bool:
    """Whether ``path`` is already our file, readable by all, with the expected lines."""
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return False
        return stat.S_IMODE(info.st_mode) == 0o644 and path.read_text("ascii") == HOSTS_TEXT
    except (OSError, UnicodeDecodeError):
        return False


def _write(directory: Path, path: Path) -> None:
    """Write the file beside its final name and rename it there: readers never see half."""
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".hosts-")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(HOSTS_TEXT)
        os.chmod(temporary, 0o644)  # the sandbox's user reads it through the bind
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
