"""Reading a runner: its frames become context feeds as they arrive, and a RunOutcome at the end.

Pure code (no I/O): a backend hands it the bytes of the attach stream.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import JsonValue

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
from orchestrator.models import Event, Resources
from orchestrator.text import MAX_JSON_DEPTH, json_depth, repair_json


def outcome_from_frames(
    exit_info: Mapping[str, Any] | None,
    value: bytes | None,
    track_resources: bool,
    mount_targets: Sequence[str] = (),
) -> dict[str, Any]:
    """Turn the runner's exit frame and value frame into RunOutcome fields (pure).

    The value frame holds JSON lines: the run-time policy layer's refusals (``{"policy":
    ...}``), then the bootstrap's ``output`` envelope. Its text is the sandbox's: repaired (each
    lone surrogate becomes U+FFFD), and an ``output`` that is not plain JSON (NaN, infinity) or
    nests deeper than ``MAX_JSON_DEPTH`` levels is dropped with a note, so the result always
    encodes as JSON. ``mount_targets`` name the policy's mounts, in order, for the runner's
    report of a mount whose write cap was hit.
    """
    info = dict(exit_info or {})
    notes: list[str] = []
    output = None
    if info.get("value_truncated"):
        notes.append("`output` was larger than the output limit and was dropped")
    refusals, value = split_policy_reports(value or b"")
    if value:
        output = _output(value, notes)
    hit = info.get("mount_write_cap_hit", -1)
    exceeded = (
        mount_targets[hit] if isinstance(hit, int) and 0 <= hit < len(mount_targets) else None
    )
    resources = None
    if track_resources:
        peak, cpu = info.get("memory_peak_bytes", -1), info.get("cpu_ns", -1)
        resources = Resources(
            peak_memory_bytes=peak if peak >= 0 else None,
            cpu_time_ms=cpu / 1e6 if cpu >= 0 else None,
            wall_time_ms=info.get("run_ns", 0) / 1e6,
        )
    return {
        "exit_code": info.get("exit_code"),
        "signal": info.get("signal"),
        "timed_out": bool(info.get("timed_out")),
        "oom_killed": info.get("oom_kills", 0) > 0,
        "pids_limit_hits": max(info.get("pids_limit_hits", 0), 0),
        "run_ms": info.get("run_ns", 0) / 1e6,
        "output": output,
        "notes": tuple(notes),
        "resources": resources,
        "policy_refusals": refusals,
        "mount_write_exceeded": exceeded,
    }


_MAX_REFUSAL_CHARS = 500


def split_policy_reports(value: bytes) -> tuple[tuple[dict[str, JsonValue], ...], bytes]:
    """Separate the run-time layer's refusal lines from the output line of a value frame.

    Returns the refusals (``{kind, message, detail}``, text repaired and clipped) and what is
    left for the output envelope. The code can write to that channel too: a line it forges can
    only add a refusal of its own to its result.
    """
    refusals: list[dict[str, JsonValue]] = []
    last = b""  # the bootstrap writes its envelope last, after anything the code wrote
    for line in value.split(b"\n"):
        if line.startswith(b'{"policy"'):
            report = _policy_line(line)
            if report is not None:
                refusals.append(report)
        elif line.strip():
            last = line
    return tuple(refusals), last


def _policy_line(line: bytes) -> dict[str, JsonValue] | None:
    try:
        report = json.loads(line).get("policy")
    except (ValueError, RecursionError, AttributeError):
        return None
    if not isinstance(report, dict) or not isinstance(report.get("message"), str):
        return None
    detail = report.get("detail")
    if not isinstance(detail, dict):
        detail = {}
    clean = repair_json(
        {
            "kind": str(report.get("kind", "policy"))[:40],
            "message": report["message"][:_MAX_REFUSAL_CHARS],
            "detail": {str(k)[:40]: str(v)[:_MAX_REFUSAL_CHARS] for k, v in detail.items()},
        }
    )
    return clean if isinstance(clean, dict) else None


_NOT_OURS = "what arrived on fd 4 is not the bootstrap's JSON"


def _output(value: bytes, notes: list[str]) -> JsonValue:
    """Decode the bootstrap's value frame: the output, repaired; what happened goes to notes."""
    envelope = _envelope(value)
    if envelope is None:
        notes.append(f"`output` is nested more than {MAX_JSON_DEPTH} levels deep; it is None")
        return None
    repaired = repair_json(envelope)
    if "error" in repaired:
        notes.append(f"`output` is not JSON-serialisable ({repaired['error']}); it is None")
    elif repaired != envelope:
        notes.append("`output` held lone surrogates; each was replaced by U+FFFD")
    output: JsonValue = repaired.get("value")
    return output


def _envelope(value: bytes) -> dict[str, Any] | None:
    """The envelope the bootstrap sent, or None when it is nested deeper than the limit."""
    try:
        envelope = json.loads(value, parse_constant=_not_finite, parse_float=_finite)
    except RecursionError:  # far deeper than the limit: never decoded whole
        return None
    except ValueError:  # the code wrote to fd 4 itself
        return {"error": _NOT_OURS}
    if not isinstance(envelope, dict):
        return {"error": _NOT_OURS}
    if json_depth(envelope, MAX_JSON_DEPTH + 1) > MAX_JSON_DEPTH + 1:  # + 1: the envelope
        return None
    return envelope


def _not_finite(name: str) -> float:
    raise ValueError(f"{name} is not JSON")  # the bootstrap never sends NaN or infinity


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400: an infinity in disguise
        raise ValueError(f"{text} is not a finite number")
    return number


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
