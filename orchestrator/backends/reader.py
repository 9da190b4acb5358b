"""Reading a runner: its frames become context feeds as they arrive, and a RunOutcome at the end.

Pure code (no I/O): a backend hands it the bytes of the attach stream.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.backends.protocol import (
    FRAME_BEGIN,
    FRAME_CUT,
    FRAME_EXIT,
    FRAME_FAILURE,
    FRAME_STDERR,
    FRAME_STDOUT,
    FRAME_VALUE,
    DockerDemuxer,
    Frame,
    FrameDecoder,
)
from orchestrator.context import ExecutionContext
from orchestrator.errors import SandboxFailedError
from orchestrator.models import Event, Isolation
from orchestrator.run import ExitReport, build_outcome


def outcome_from_frames(
    exit_info: Mapping[str, Any] | None,
    value: bytes | None,
    track_resources: bool,
    mount_targets: Sequence[str] = (),
) -> dict[str, Any]:
    """The :class:`RunOutcome` fields that the runner's exit frame and value frame give (pure).

    For fakes and tests that build an outcome of their own: backends call
    :func:`orchestrator.run.build_outcome`, which this is a view of.
    """
    outcome = build_outcome(
        ExitReport.from_runner(exit_info),
        value,
        isolation=_NO_ISOLATION,
        sandbox_id=None,
        track_resources=track_resources,
        mount_targets=mount_targets,
    )
    return {name: getattr(outcome, name) for name in _FRAME_FIELDS}


_NO_ISOLATION = Isolation(mode="none", runtime=None, path="none")
_FRAME_FIELDS = (
    "exit_code",
    "signal",
    "timed_out",
    "oom_killed",
    "pids_limit_hits",
    "run_ms",
    "output",
    "notes",
    "resources",
    "policy_refusals",
    "mount_write_exceeded",
)


class RunReader:
    """Reads one run's attach stream: demuxes, decodes frames, feeds the context."""

    def __init__(
        self, context: ExecutionContext, sandbox_id: str | None = None, nonce: str | None = None
    ) -> None:
        self.context = context
        self.sandbox_id = sandbox_id
        self.nonce = nonce
        self.forged_reports = 0  # exit or failure frames without the nonce: the code wrote them
        self.demux = DockerDemuxer()
        self.frames = FrameDecoder()
        self.begun_at: float | None = None
        self.exit_info: dict[str, Any] | None = None
        self.value: bytes | None = None
        self.runner_stderr = bytearray()

    def take(self, data: bytes) -> None:
        """Take bytes of the attach stream.

        Raises:
            ProtocolError: the stream does not follow the protocol.
            SandboxFailedError: the runner reported that it failed.
        """
        for stream, payload in self.demux.feed(data):
            if stream == DockerDemuxer.STDERR:
                self.runner_stderr += payload[: max(0, 4096 - len(self.runner_stderr))]
                continue
            for frame in self.frames.feed(payload):
                self._handle(frame)

    def _handle(self, frame: Frame) -> None:
        kind = frame.kind
        if kind == FRAME_STDOUT:
            self.context.feed("stdout", frame.payload)
        elif kind == FRAME_STDERR:
            self.context.feed("stderr", frame.payload)
        elif kind == FRAME_BEGIN:
            self.begun_at = time.monotonic()
            self.context.emit(
                Event(
                    kind="begin", elapsed_ms=self.context.elapsed_ms(), sandbox_id=self.sandbox_id
                )
            )
        elif kind == FRAME_CUT:
            tag, count = frame.payload.decode().split()
            self.context.mark_cut("stdout" if tag == "o" else "stderr", int(count))
        elif kind == FRAME_VALUE:
            self.value = frame.payload
        elif kind == FRAME_EXIT:
            info = frame.json()
            if self.nonce is not None and info.get("nonce") != self.nonce:
                self.forged_reports += 1
                return
            self.exit_info = info
        elif kind == FRAME_FAILURE:
            text = frame.payload.decode(errors="replace")
            if self.nonce is not None:
                head, _, rest = text.partition(" ")
                if head == self.nonce:
                    text = rest
                elif self.begun_at is not None:  # the code runs: only nonce-led reports are ours
                    self.forged_reports += 1
                    return
            raise SandboxFailedError(f"the sandbox runner failed: {text}")
