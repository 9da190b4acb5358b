"""Reading a runner: its frames become context feeds as they arrive, and a RunOutcome at the end.

Pure code (no I/O): a backend hands it the bytes of the attach stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orchestrator.backends.protocol import (
    FRAME_BEGIN,
    FRAME_CUT,
    FRAME_DATA,
    FRAME_EXIT,
    FRAME_FAILURE,
    FRAME_FILE,
    FRAME_INPUT_ERROR,
    FRAME_STDERR,
    FRAME_STDOUT,
    FRAME_VALUE,
    DockerDemuxer,
    Frame,
    FrameDecoder,
)
from orchestrator.context import ExecutionContext
from orchestrator.errors import RequestError, SandboxFailedError
from orchestrator.files import output_file
from orchestrator.models import Event, Isolation, OutputFile
from orchestrator.run import ExitReport, LeftOut, RunOutcome, build_outcome


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
        self,
        context: ExecutionContext,
        sandbox_id: str | None = None,
        nonce: str | None = None,
        decoders: tuple[DockerDemuxer, FrameDecoder] | None = None,
    ) -> None:
        self.context = context
        self.sandbox_id = sandbox_id
        self.nonce = nonce
        self.forged_reports = 0  # exit or failure frames without the nonce: the code wrote them
        # A session's calls share one stream: its decoders carry over from call to call.
        self.demux, self.frames = decoders or (DockerDemuxer(), FrameDecoder())
        self.begun_at: float | None = None
        self.exit_info: dict[str, Any] | None = None
        self.value: bytes | None = None
        self.runner_stderr = bytearray()
        self._files: list[tuple[str, str, bytearray]] = []  # (kind, name, content) in order
        self.left_out: list[LeftOut] = []

    def outputs(self) -> tuple[tuple[OutputFile, ...], tuple[OutputFile, ...]]:
        """The files of ``/workspace/out`` and the figures, as the runner sent them."""
        files = tuple(output_file(n, bytes(c)) for k, n, c in self._files if k == "f")
        figures = tuple(output_file(n, bytes(c)) for k, n, c in self._files if k == "a")
        return files, figures

    def reported(
        self,
        build: Callable[..., RunOutcome],
        track_resources: bool,
        mount_targets: Sequence[str] = (),
    ) -> RunOutcome | None:
        """The outcome the runner reported (its exit frame, value, files), None without one.

        ``build`` is :func:`~orchestrator.run.build_outcome` with the backend's isolation and
        sandbox id bound.
        """
        if self.exit_info is None:
            return None
        files, figures = self.outputs()
        return build(
            ExitReport.from_runner(self.exit_info),
            self.value,
            started=self.begun_at is not None,
            track_resources=track_resources,
            mount_targets=mount_targets,
            files=files,
            artifacts=figures,
            left_out=tuple(self.left_out),
        )

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

    def _handle_files(self, frame: Frame) -> None:
        """A file, its data, or the runner's refusal of the call's input files."""
        if frame.kind == FRAME_FILE:
            self._file(frame.payload)
        elif frame.kind == FRAME_DATA:
            if self._files:  # data before any file frame is not ours: dropped
                self._files[-1][2].extend(frame.payload)
        else:
            head, _, rest = frame.payload.decode(errors="replace").partition(" ")
            if self.nonce is not None and head != self.nonce:
                self.forged_reports += 1
                return
            raise RequestError(f"{rest}: nothing ran")

    def _file(self, payload: bytes) -> None:
        """A file frame: ``<nonce> <kind> <name hex> <size>``; its data frames follow."""
        try:
            nonce, kind, hex_name, size = payload.decode("ascii").split(" ")
            name, declared = _name(hex_name), int(size)
        except ValueError as exc:
            raise SandboxFailedError("the sandbox runner sent a malformed file frame") from exc
        if self.nonce is not None and nonce != self.nonce:
            self.forged_reports += 1
            self._files.append(("forged", "", bytearray()))  # its data frames go nowhere
            return
        if kind in _KINDS:
            self._files.append((kind, name, bytearray()))
        elif kind in _LEFT_OUT:
            self.left_out.append(LeftOut(name, _LEFT_OUT[kind], declared))
            self._files.append(("left out", name, bytearray()))

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
        elif kind in _FILE_FRAMES:
            self._handle_files(frame)
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


_FILE_FRAMES = frozenset({FRAME_FILE, FRAME_DATA, FRAME_INPUT_ERROR})
_KINDS = {"f": "file", "a": "figure"}
_LEFT_OUT = {
    "s": "not a regular file (a link, a FIFO, a socket): never followed",
    "o": "over the cap",
}


def _name(hex_name: str) -> str:
    """A file name from the runner (hex of its bytes) as text."""
    return file_name_text(bytes.fromhex(hex_name))


def file_name_text(raw: bytes) -> str:
    r"""A file name's bytes as valid UTF-8 text, distinct names kept distinct.

    A byte that is not part of UTF-8 becomes ``\xNN`` (``a\xff`` and ``a\xfe`` stay two names;
    with U+FFFD they would collide).
    """
    return raw.decode("utf-8", errors="backslashreplace")
