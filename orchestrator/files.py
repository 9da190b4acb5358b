"""Files in and out of a run (pure code): the checks of ``files=``, and the items that come back.

Files a call sends (``files={"data.csv": b"..."}``) are checked here before anything runs: each
name is a relative path inside the workspace (no absolute path, no ``..``, no empty or ``.``
part, no NUL, valid UTF-8), none is the code's own file, and all of them together fit the
policy's ``files.max_in_bytes`` and the workspace's tmpfs. The sandbox writes them without
following links (a link the code left in a session's workspace is an error, not a way out).

What comes back (``/workspace/out`` and figures) is built into
:class:`~orchestrator.models.OutputFile` items by :func:`output_file`.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from orchestrator.errors import RequestError
from orchestrator.models import InputFile, OutputFile, check_text

MAX_FILES = 1000
"""The most files one call may send."""
MAX_NAME_BYTES = 1024
"""The longest name (its whole path under the workspace) in UTF-8 bytes."""
MAX_PART_BYTES = 255
"""The longest part of a name (Linux's limit for one file name)."""
OUT_DIR = "out"
"""Where the code writes what it returns: ``/workspace/out``."""
FIGURES_DIR = "/tmp/.athena/figures"
"""Where the Python bootstrap saves the figures a call leaves open (the runner sends them)."""
_MIB = 1024 * 1024
_EXTRA_TYPES = {".csv": "text/csv", ".md": "text/markdown", ".parquet": "application/x-parquet"}


def _shown(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:80] + "...")


def check_name(name: object, code_file: str) -> str:
    """Return ``name`` when it can name a file under the workspace.

    Raises:
        RequestError: not a string, empty, absolute, with ``..``/``.``/empty parts, NUL, a lone
            surrogate, over the length limits, or the code's own file.
    """
    if not isinstance(name, str):
        raise RequestError(f"a file name must be a string, not {type(name).__name__}")
    check_text(name, "a file name")
    if not name or "\x00" in name:
        raise RequestError(f"file name {_shown(name)} is empty or holds NUL: name the file")
    if name.startswith("/"):
        raise RequestError(
            f"file name {_shown(name)} is absolute: give a path relative to /workspace "
            "(e.g. 'data.csv' or 'input/data.csv')"
        )
    parts = name.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        raise RequestError(
            f"file name {_shown(name)} has an empty, '.' or '..' part: give a plain relative "
            "path inside /workspace (e.g. 'input/data.csv')"
        )
    if len(name.encode()) > MAX_NAME_BYTES or any(len(p.encode()) > MAX_PART_BYTES for p in parts):
        raise RequestError(
            f"file name {_shown(name)} is too long: at most {MAX_NAME_BYTES} bytes, "
            f"{MAX_PART_BYTES} per part"
        )
    if name == code_file:
        raise RequestError(
            f"file name {name!r} is where the code itself is written: choose another name"
        )
    return name


def check_files(
    files: Mapping[str, Any] | None, code_file: str, max_in_bytes: int, tmpfs_mb: int
) -> tuple[InputFile, ...]:
    """Check a call's ``files`` and return them as input files, in the caller's order.

    Args:
        files: name -> content (bytes, bytearray, memoryview or str, written as UTF-8).
        code_file: the language's code file name (a file may not take its place).
        max_in_bytes: the policy's ``files.max_in_bytes``.
        tmpfs_mb: the policy's ``filesystem.tmpfs_mb`` (the workspace must hold them).

    Raises:
        RequestError: (a ``ValueError``) a name that cannot be used (see :func:`check_name`),
            a name given twice or used as a directory by another, content that is not bytes
            or text, too many files, or more bytes than the policy allows.
    """
    if files is None:
        return ()
    if not isinstance(files, Mapping):
        raise RequestError(
            f"files must be a dict of name -> bytes or str, not {type(files).__name__}"
        )
    if len(files) > MAX_FILES:
        raise RequestError(f"{len(files)} files sent; at most {MAX_FILES} per call")
    checked: list[InputFile] = []
    total = 0
    for name, content in files.items():
        check_name(name, code_file)
        data = _content_bytes(name, content)
        total += len(data)
        checked.append(InputFile(name=name, data=data))
    _check_tree([f.name for f in checked])
    if total > max_in_bytes:
        raise RequestError(
            f"files add up to {total} bytes; the policy allows {max_in_bytes} "
            "(files.max_in_bytes): send less, or raise the limit in the policy"
        )
    if total > tmpfs_mb * _MIB:
        raise RequestError(
            f"files add up to {total} bytes, more than the workspace holds "
            f"({tmpfs_mb} MiB, filesystem.tmpfs_mb): send less, or raise tmpfs_mb in the policy"
        )
    return tuple(checked)


def _content_bytes(name: str, content: object) -> bytes:
    if isinstance(content, str):
        check_text(content, f"file {name!r}")
        return content.encode("utf-8")
    if isinstance(content, bytes | bytearray | memoryview):
        return bytes(content)
    raise RequestError(f"file {_shown(name)} must be bytes or str, not {type(content).__name__}")


def _check_tree(names: list[str]) -> None:
    """No name is given twice, and none is a directory of another ('a' and 'a/b')."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise RequestError(f"file name {_shown(name)} is given twice")
        seen.add(name)
    for name in names:
        parts = PurePosixPath(name).parts
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in seen:
                raise RequestError(
                    f"{_shown(parent)} is sent as a file and used as a directory by "
                    f"{_shown(name)}: rename one of them"
                )


def encode_files(files: tuple[InputFile, ...]) -> bytes:
    r"""The files as the runner reads them: per file ``<name bytes> <size>\n<name><data>``."""
    chunks: list[bytes] = []
    for item in files:
        name = item.name.encode()
        chunks += [f"{len(name)} {len(item.data)}\n".encode(), name, item.data]
    return b"".join(chunks)


def mime_type(name: str) -> str:
    """The MIME type a name suggests (``application/octet-stream`` when none)."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in _EXTRA_TYPES:
        return _EXTRA_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def output_file(name: str, content: bytes) -> OutputFile:
    """An item of ``files`` or ``artifacts``: name, size, SHA-256, MIME type and content."""
    return OutputFile(
        name=name,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        mime_type=mime_type(name),
        content=content,
    )
