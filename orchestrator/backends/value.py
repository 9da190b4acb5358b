"""The value channel: the run-time layer's refusal lines, then the bootstrap's ``output`` envelope.

Pure code. The channel's text is the sandbox's: it is repaired (each lone surrogate becomes
U+FFFD), and an ``output`` that is not plain JSON (NaN, infinity) or nests deeper than
``MAX_JSON_DEPTH`` levels is dropped with a note, so a result always encodes as JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import JsonValue

from orchestrator.text import MAX_JSON_DEPTH, json_depth, repair_json

_TRUNCATED = "`output` was larger than the output limit and was dropped"


def decode_value(
    value: bytes | None, truncated: bool = False
) -> tuple[JsonValue, tuple[str, ...], tuple[dict[str, JsonValue], ...]]:
    """Decode a value channel into (output, notes for the caller, policy refusals).

    Args:
        value: the channel's bytes, if any arrived.
        truncated: the runner dropped a value larger than the output limit.
    """
    notes: list[str] = [_TRUNCATED] if truncated else []
    refusals, envelope = split_policy_reports(value or b"")
    output = _output(envelope, notes) if envelope else None
    return output, tuple(notes), refusals


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
