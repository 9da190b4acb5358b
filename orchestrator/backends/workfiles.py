"""Files in and out of a workspace on this host: what the docker runner does, for the host modes.

The srt, restricted and inprocess modes run the code in a work directory of their own; these
functions give them the docker mode's semantics (``images/runner/runner.c``: ``write_inputs``,
``collect_dir``, ``collect_outputs``) so ``files=`` and ``/workspace/out`` mean the same
everywhere:

- :func:`write_inputs` creates ``out/`` and writes the call's files, never through a link (each
  part of a name is opened relative to its directory with ``O_NOFOLLOW``) and never into
  something that is not a regular file (``O_NONBLOCK``, then ``fstat``).
- :func:`collect_outputs` walks ``out/`` after the run: names sorted (by their bytes), at most
  :data:`MAX_ENTRIES` entries and :data:`MAX_DEPTH` levels, no link followed, nothing opened that
  could block; links, FIFOs and sockets are reported as left out, and so is every file past the
  policy's ``files.max_out_bytes``.

The code may have written the directory (and, in srt, we may be root): every open is relative to
a directory fd we hold, so a link swapped in during the walk is never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection
from contextlib import suppress
from pathlib import Path

from orchestrator.backends.reader import _LEFT_OUT, file_name_text
from orchestrator.errors import RequestError
from orchestrator.files import OUT_DIR, output_file
from orchestrator.models import InputFile, OutputFile
from orchestrator.run import LeftOut

MAX_ENTRIES = 2000
"""Entries looked at per run (files, directories and the rest), as the runner."""
MAX_DEPTH = 16
"""Directory levels under ``out/`` that are walked, as the runner."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CHUNK = 1024 * 1024
# The reasons the docker mode's reader gives, so a result reads the same in every mode.
_SPECIAL, _OVER_CAP = _LEFT_OUT["s"], _LEFT_OUT["o"]


def write_inputs(
    root: Path,
    files: tuple[InputFile, ...],
    *,
    owner: int | None = None,
    reserved: Collection[str] = (),
) -> None:
    """Create ``root/out`` and write the call's files under ``root``, in order.

    Args:
        root: the workspace (the code's working directory).
        files: the checked files of the request (see :func:`orchestrator.files.check_files`).
        owner: a uid (and gid) to give what is created here (srt runs the code as its own uid).
        reserved: names the mode itself writes in the workspace (its parameters file...).

    Raises:
        RequestError: a name is reserved, or a file cannot be written: a link, a file or
            something that is not a regular file is in the way (links are never followed).
    """
    for item in files:
        if item.name in reserved:
            raise RequestError(
                f"input file {item.name} is a name this isolation mode uses itself: "
                "choose another name: nothing ran"
            )
    top = os.open(root, _DIR_FLAGS)
    try:
        with suppress(OSError):  # as the runner: out/ exists before the code runs, if it can
            os.close(_make_dir(top, OUT_DIR, owner))
        for item in files:
            _write_one(top, item, owner)
    finally:
        os.close(top)


def collect_outputs(root: Path, cap: int) -> tuple[tuple[OutputFile, ...], tuple[LeftOut, ...]]:
    """The files under ``root/out`` (sorted names, ``cap`` bytes at most) and what was left out.

    Nothing comes back when ``out`` is missing or not a directory (a link to one included).
    Names that are not UTF-8 come back with U+FFFD in place of the bytes, as from the runner.
    """
    walk = _Walk(cap)
    try:
        top = os.open(root, _DIR_FLAGS)
    except OSError:
        return (), ()
    try:
        out = os.open(OUT_DIR, _DIR_FLAGS, dir_fd=top)
    except OSError:
        return (), ()
    finally:
        os.close(top)
    walk.directory(out, b"", 0)
    return tuple(walk.files), tuple(walk.left_out)


def _in_the_way(name: str, exc: OSError) -> RequestError:
    """The runner's words for a file that cannot be written."""
    why = ""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        why = " (a link or a file is in the way; links are never followed)"
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return RequestError(f"input file {name} cannot be written: {reason}{why}: nothing ran")


def _make_dir(parent: int, part: str, owner: int | None) -> int:
    """Create ``part`` under ``parent`` if missing and open it (never through a link).

    Raises:
        OSError: a link, a file or something else than a directory is there.
    """
    try:
        os.mkdir(part, 0o755, dir_fd=parent)
        created = True
    except FileExistsError:
        created = False
    fd = os.open(part, _DIR_FLAGS, dir_fd=parent)
    if created and owner is not None:
        os.fchown(fd, owner, owner)
    return fd


def _write_one(top: int, item: InputFile, owner: int | None) -> None:
    """Write one input file under the workspace ``top``, creating its directories."""
    *parents, leaf = item.name.split("/")
    directory = os.dup(top)
    try:
        for part in parents:
            child = _make_dir(directory, part, owner)
            os.close(directory)
            directory = child
        fd = os.open(leaf, _WRITE_FLAGS, 0o644, dir_fd=directory)
    except OSError as exc:
        raise _in_the_way(item.name, exc) from exc
    finally:
        os.close(directory)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RequestError(
                f"input file {item.name}: something that is not a regular file is in the way: "
                "nothing ran"
            )
        if owner is not None:
            os.fchown(fd, owner, owner)
        _write_all(fd, item.data, item.name)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes, name: str) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise RequestError(f"input file {name} cannot be written: {reason}: nothing ran") from exc


class _Walk:
    """One walk of ``out/``: the budget and entry count it shares, and what it found."""

    def __init__(self, cap: int) -> None:
        self.budget = cap
        self.entries = 0
        self.files: list[OutputFile] = []
        self.left_out: list[LeftOut] = []

    def directory(self, fd: int, prefix: bytes, depth: int) -> None:
        """Walk the directory ``fd`` (closed here), its names under ``prefix``."""
        try:
            names = self._names(fd)
            for name in names:
                path = prefix + b"/" + name if prefix else name
                self._entry(fd, name, path, depth)
        finally:
            os.close(fd)

    def _names(self, fd: int) -> list[bytes]:
        """Its names in directory order up to the entry budget, then sorted as bytes."""
        try:
            listed = os.listdir(fd)
        except OSError:
            return []
        room = max(0, MAX_ENTRIES - self.entries)
        taken = [os.fsencode(name) for name in listed[:room]]
        self.entries += len(taken)
        return sorted(taken)

    def _entry(self, parent: int, name: bytes, path: bytes, depth: int) -> None:
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=parent)
        except OSError:  # a link (ELOOP), or gone
            self._leave_out(path, _SPECIAL)
            return
        try:
            info = os.fstat(fd)
        except OSError:
            os.close(fd)
            self._leave_out(path, _SPECIAL)
            return
        if stat.S_ISDIR(info.st_mode):
            if depth < MAX_DEPTH:
                self.directory(fd, path, depth + 1)
            else:
                os.close(fd)
            return
        try:
            if not stat.S_ISREG(info.st_mode):
                self._leave_out(path, _SPECIAL)
            elif info.st_size > self.budget:
                self._leave_out(path, _OVER_CAP, info.st_size)
            else:
                self._take(fd, path, info.st_size)
        finally:
            os.close(fd)

    def _take(self, fd: int, path: bytes, size: int) -> None:
        """Read the file, never more than the size it had (a file that grows is cut there)."""
        chunks: list[bytes] = []
        left = size
        while left > 0:
            try:
                chunk = os.read(fd, min(left, _CHUNK))
            except InterruptedError:  # pragma: no cover (Python retries EINTR itself)
                continue
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        content = b"".join(chunks)
        self.budget -= len(content)
        self.files.append(output_file(_text(path), content))

    def _leave_out(self, path: bytes, reason: str, size: int = 0) -> None:
        self.left_out.append(LeftOut(_text(path), reason, size))


def _text(path: bytes) -> str:
    """A name as text, as the reader's names (:func:`file_name_text`)."""
    return file_name_text(path)
