"""A started container waiting for its one request, and what containers are created from."""

from __future__ import annotations

import select
import socket
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.backends.docker.compile import RUNTIME
from orchestrator.backends.docker.engine import Stream
from orchestrator.backends.protocol import (
    FRAME_READY,
    DockerDemuxer,
    FrameDecoder,
    new_session_key,
)
from orchestrator.errors import SandboxFailedError

PoolKey = tuple[str, str]  # (language, fingerprint of the container settings)


class NeverStarted(Exception):
    """The sandbox went away before the code started: the run may go to a fresh one."""


@dataclass(frozen=True)
class Blueprint:
    """What every container of one (language, policy, mounts) is created from.

    Attributes:
        key: the pool key: (language, fingerprint of the container settings).
        image: the image reference.
        body: the Engine API's create body, labels without the run's id.
        egress: its sandboxes sit on the egress network behind the proxy.
        runtime: the container runtime.
    """

    key: PoolKey
    image: str
    body: dict[str, Any]
    egress: bool = False
    runtime: str = RUNTIME


@dataclass(eq=False)
class Sandbox:
    """A started container whose runner waits for one request on the attached stdin.

    Attributes:
        container_id: the container's id.
        sock: the attach stream (stdin, and the runner's frames).
        attached: the engine's wrapper of the stream, kept so it is closed with it.
        image: the image reference.
        path: ``cold`` (started for this run) or ``warm`` (taken from the pool).
        pending: bytes read before the run (the ready frame), replayed to the run's reader.
        address: its address on the egress network (allowlist policies only).
        runtime: the container runtime.
        decoders: the stream's decoders, shared by a session's calls.
        session_key: the key of a session's nonces (see ``protocol.session_nonce``).
        session_calls: the session calls sent to it so far.
        idle_since: when its last session call ended (Unix time; its start before one).
    """

    container_id: str
    sock: socket.socket
    attached: Stream
    image: str
    path: Literal["cold", "warm"]
    pending: bytes = b""
    address: str | None = None
    runtime: str = RUNTIME
    decoders: tuple[DockerDemuxer, FrameDecoder] = field(
        default_factory=lambda: (DockerDemuxer(), FrameDecoder())
    )
    session_key: bytes = field(default_factory=new_session_key, repr=False)
    session_calls: int = 0
    idle_since: float = field(default_factory=time.time)

    def close(self) -> None:
        """Close the attach stream: the runner sees EOF and ends whatever it was doing."""
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            self.sock.close()
        with suppress(Exception):
            self.attached.close()

    def is_idle_and_alive(self) -> bool:
        """Whether a pooled sandbox can still take a run (nothing arrived since it was ready)."""
        try:
            readable = select.select([self.sock], [], [], 0)[0]
        except (OSError, ValueError):
            return False
        return not readable  # EOF or anything unexpected: it is not the fresh runner we left

    def await_ready(self, timeout: float) -> None:
        """Read until the runner's ready frame; keep what came with it in ``pending``.

        Raises:
            SandboxFailedError: the sandbox ended, or was not ready within ``timeout`` seconds.
        """
        demux, frames, seen = DockerDemuxer(), FrameDecoder(), b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not select.select([self.sock], [], [], deadline - time.monotonic())[0]:
                break
            data = self.sock.recv(65536)
            if not data:
                raise SandboxFailedError("a pooled sandbox ended before it was ready")
            seen += data
            for stream, payload in demux.feed(data):
                if stream == DockerDemuxer.STDOUT and any(
                    f.kind == FRAME_READY for f in frames.feed(payload)
                ):
                    self.pending = seen
                    return
        raise SandboxFailedError(f"a pooled sandbox was not ready within {timeout:g} s")
