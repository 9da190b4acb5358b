"""The wire protocol between the orchestrator and the runner inside a sandbox (pure code).

Two layers, both decoded incrementally from whatever chunks the socket gives:

- Docker's attach stream multiplexes the container's stdout and stderr: each block has an
  8-byte header (stream id, three zero bytes, big-endian length). :class:`DockerDemuxer`.
- The runner owns the container's stdout and writes frames: one type byte, a 4-byte big-endian
  length, the payload. :class:`FrameDecoder`. The frame types are documented in
  ``images/runner/runner.c``; the request format is :func:`encode_request`.
"""

from __future__ import annotations

import json
import secrets
import struct
from dataclasses import dataclass
from typing import Any

PROTOCOL = "ATHENA/3"
MAX_FRAME = 64 * 1024 * 1024  # far above any frame the runner sends; guards against garbage

FRAME_READY = b"R"
FRAME_BEGIN = b"B"
FRAME_STDOUT = b"o"
FRAME_STDERR = b"e"
FRAME_CUT = b"c"
FRAME_VALUE = b"v"
FRAME_EXIT = b"x"
FRAME_FAILURE = b"f"
FRAME_FILE = b"F"
FRAME_DATA = b"D"
FRAME_INPUT_ERROR = b"E"
_KNOWN = {
    FRAME_FILE,
    FRAME_DATA,
    FRAME_INPUT_ERROR,
    FRAME_READY,
    FRAME_BEGIN,
    FRAME_STDOUT,
    FRAME_STDERR,
    FRAME_CUT,
    FRAME_VALUE,
    FRAME_EXIT,
    FRAME_FAILURE,
}


class ProtocolError(Exception):
    """The byte stream does not follow the protocol (internal; backends translate it)."""


def new_nonce() -> str:
    """A fresh secret for one run, echoed in the runner's exit frame (hex, 32 digits)."""
    return secrets.token_hex(16)


FLAG_FIGURES = 1
"""Request flag: send back the figures the bootstrap saved."""
_MASK = (1 << 64) - 1


def encode_request(
    code: bytes,
    blob: bytes,
    timeout_ms: int,
    max_output_bytes: int,
    nonce: str,
    files: bytes = b"",
    files_cap: int = 0,
    flags: int = 0,
    install: bytes = b"",
) -> bytes:
    """Return the request the runner reads from stdin: a header line, the code, the blob, files.

    ``nonce`` comes back in the exit frame; an exit frame without it was written by the code.
    In a session, the first request's ``nonce`` field is the session's key and later ones carry
    their number (:func:`session_nonce` gives the nonces). ``files`` is
    :func:`orchestrator.files.encode_files`'s encoding; ``files_cap`` the most bytes of files
    and figures the runner sends back; ``flags`` is :data:`FLAG_FIGURES` or 0; ``install`` a
    NUL-separated command line the runner runs before the code (:func:`encode_argv`).
    """
    header = (
        f"{PROTOCOL} {len(code)} {len(blob)} {len(install)} {len(files)} {timeout_ms} "
        f"{max_output_bytes} {files_cap} {flags} {nonce}\n"
    )
    return header.encode() + code + blob + install + files


def encode_argv(argv: list[str] | None) -> bytes:
    """A command line as the runner reads it: each argument NUL-terminated (None: nothing)."""
    return b"".join(arg.encode() + b"\x00" for arg in argv or ())


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash24(key: bytes, data: bytes) -> int:
    """SipHash-2-4 of ``data`` under a 16-byte key (the runner's ``siphash_word`` for 8 bytes)."""
    k0, k1 = struct.unpack("<QQ", key)
    v: tuple[int, int, int, int] = (
        k0 ^ 0x736F6D6570736575,
        k1 ^ 0x646F72616E646F6D,
        k0 ^ 0x6C7967656E657261,
        k1 ^ 0x7465646279746573,
    )
    full = len(data) // 8 * 8
    words: list[int] = [m for (m,) in struct.iter_unpack("<Q", data[:full])]
    words.append(((len(data) & 0xFF) << 56) | int.from_bytes(data[full:], "little"))
    for m in words:
        v0, v1, v2, v3 = v[0], v[1], v[2], v[3] ^ m
        v0, v1, v2, v3 = _sipround(*_sipround(v0, v1, v2, v3))
        v = (v0 ^ m, v1, v2, v3)
    v0, v1, v2, v3 = v[0], v[1], v[2] ^ 0xFF, v[3]
    for _ in range(4):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def new_session_key() -> bytes:
    """A fresh 128-bit key for one session sandbox's nonces."""
    return secrets.token_bytes(16)


def session_nonce(key: bytes, call: int) -> str:
    """The nonce of a session's call number ``call`` (0 first), as the runner derives it.

    A session's later requests may be read by its own code under gVisor, so they carry no
    nonce: both ends derive it from the key the first request carried, before any code ran.
    """
    first = siphash24(key, struct.pack("<Q", 2 * call))
    second = siphash24(key, struct.pack("<Q", 2 * call + 1))
    return f"{first:016x}{second:016x}"


@dataclass(frozen=True)
class Frame:
    """One runner frame."""

    kind: bytes
    payload: bytes

    def json(self) -> dict[str, Any]:
        """Decode a JSON payload (exit frames)."""
        value = json.loads(self.payload)
        if not isinstance(value, dict):
            raise ProtocolError(f"frame {self.kind!r} payload is not a JSON object")
        return value


class FrameDecoder:
    """Incremental decoder of runner frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Take bytes, return the frames they complete.

        Raises:
            ProtocolError: an unknown frame type or an impossible length.
        """
        self._buffer += data
        frames = []
        while len(self._buffer) >= 5:
            kind = bytes(self._buffer[:1])
            (length,) = struct.unpack(">I", self._buffer[1:5])
            if kind not in _KNOWN or length > MAX_FRAME:
                raise ProtocolError(f"unexpected frame {kind!r} of {length} bytes from the runner")
            if len(self._buffer) < 5 + length:
                break
            frames.append(Frame(kind, bytes(self._buffer[5 : 5 + length])))
            del self._buffer[: 5 + length]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buffer)


class DockerDemuxer:
    """Incremental decoder of Docker's multiplexed attach stream (no TTY)."""

    STDOUT = 1
    STDERR = 2

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Take bytes, return the (stream id, payload) blocks they complete.

        Raises:
            ProtocolError: a header with an unknown stream id.
        """
        self._buffer += data
        blocks = []
        while len(self._buffer) >= 8:
            stream = self._buffer[0]
            (length,) = struct.unpack(">I", self._buffer[4:8])
            if stream not in (0, 1, 2):
                raise ProtocolError(f"unexpected Docker stream id {stream}")
            if len(self._buffer) < 8 + length:
                break
            blocks.append((stream, bytes(self._buffer[8 : 8 + length])))
            del self._buffer[: 8 + length]
        return blocks
