"""Consolidation: strategies, and what turns runs and events into pattern memories (pure).

``consolidate`` does four things, each within the strategy's limits:

1. **Patterns.** Executions in the window are grouped by language and outcome: failures by
   their error signature (the exception line of stderr, numbers and quoted values blanked, or
   the error and violations when there is no traceback), successes by their first line of
   code. Events (other than the ``execution`` events that mirror runs) are grouped by type,
   outcome and the first words of their content. A group of ``min_group`` or more becomes one
   semantic memory tagged ``pattern``, e.g. "6 python runs failed with ZeroDivisionError:
   division by zero ...". Its key is kept, and the records it counts are listed, so running
   consolidate again updates the count instead of writing a second memory.
2. **Merging.** A memory from the window and an older one of the same type and context whose
   word sets have a Jaccard similarity at or above the threshold are merged: the older id is
   kept, tags are united, importance and use are combined, and the newer id is listed in
   ``merged_ids``. Candidates come from the full-text index, so this scales.
3. **Decay.** A memory unused (never recalled, or not lately) for ``idle_days`` loses
   importance, halving every ``half_life_days`` of further idleness.
4. **Pruning.** A memory whose importance fell below ``prune_below`` and that is idle is removed.

Memories tagged ``pinned`` are never decayed, merged away or pruned.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from memory_store.summary import clip, first_code_line, last_stderr_line
from orchestrator.errors import RequestError
from orchestrator.models import shown_number

PINNED = "pinned"
PATTERN = "pattern"


class Strategy(BaseModel):
    """How much consolidation does, and its thresholds.

    Attributes:
        name: balanced, speed, quality or minimal.
        min_group: records of one group needed for a pattern memory.
        success_patterns: also write patterns of succeeding runs.
        event_patterns: also write patterns of events.
        merge_threshold: Jaccard similarity of word sets at or above which memories merge.
        merge_candidates: full-text candidates compared per memory.
        max_memories_scanned: most memories of the window compared for merging.
        half_life_days: importance halves every so many idle days (None: no decay).
        idle_days: unused this long before decay starts and before pruning may happen.
        prune_below: idle memories with importance below this are removed (None: never).
        embed_limit: most records without a vector embedded on the way (hybrid only).

    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    min_group: int
    success_patterns: bool
    event_patterns: bool
    merge_threshold: float
    merge_candidates: int
    max_memories_scanned: int
    half_life_days: float | None
    idle_days: float
    prune_below: float | None
    embed_limit: int


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            name="minimal", min_group=3, success_patterns=False, event_patterns=False,
            merge_threshold=1.0, merge_candidates=3, max_memories_scanned=200,
            half_life_days=None, idle_days=30, prune_below=None, embed_limit=0,
        ),
        Strategy(
            name="speed", min_group=3, success_patterns=False, event_patterns=True,
            merge_threshold=0.9, merge_candidates=3, max_memories_scanned=500,
            half_life_days=90, idle_days=30, prune_below=0.05, embed_limit=0,
        ),
        Strategy(
            name="balanced", min_group=3, success_patterns=True, event_patterns=True,
            merge_threshold=0.8, merge_candidates=5, max_memories_scanned=2000,
            half_life_days=60, idle_days=14, prune_below=0.1, embed_limit=500,
        ),
        Strategy(
            name="quality", min_group=2, success_patterns=True, event_patterns=True,
            merge_threshold=0.7, merge_candidates=10, max_memories_scanned=10_000,
            half_life_days=30, idle_days=7, prune_below=0.15, embed_limit=5000,
        ),
    )
}  # fmt: skip
"""The strategies ``consolidate`` accepts, from least to most work."""


def strategy_named(name: object) -> Strategy:
    """Return the strategy of a (case-insensitive) name.

    Raises:
        RequestError: no strategy has this name.

    """
    key = name.strip().lower() if isinstance(name, str) else name
    if not isinstance(key, str) or key not in STRATEGIES:
        raise RequestError(f"unknown strategy {name!r}: choose {', '.join(STRATEGIES)}")
    return STRATEGIES[key]


def days_back(value: object) -> float:
    """Return a window in days (more than 0, at most 36500).

    Raises:
        RequestError: not a number in that range.

    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 36500:
        raise RequestError(f"days_back must be a number of days above 0, not {shown_number(value)}")
    return float(value)


# --------------------------------------------------------------------------- signatures

_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)\b.*)$")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|(?<![A-Za-z_])\d+(?:\.\d+)?")  # 30s, 2.5 GB, 0x1f


def _blank(text: str) -> str:
    """Blank what varies between runs of the same failure: quoted values and numbers."""
    return " ".join(_NUMBER.sub("N", _QUOTED.sub("'…'", text)).lower().split())


@dataclass(frozen=True)
class ExecutionFacts:
    """What grouping needs of one execution."""

    id: int
    language: str
    success: bool
    code: str
    stderr_tail: str
    error: str | None
    error_type: str | None
    violations: Sequence[str]
    created_at: datetime


@dataclass(frozen=True)
class EventFacts:
    """What grouping needs of one event."""

    id: int
    event_type: str
    outcome: str | None
    content: str
    created_at: datetime


def failure_line(run: ExecutionFacts) -> str:
    """Return what a failure looked like: the exception line, the error or the violations."""
    last = last_stderr_line(run.stderr_tail)
    if _EXCEPTION_LINE.match(last):
        return last
    if run.error:
        return clip(f"{run.error_type + ': ' if run.error_type else ''}{run.error}", 160)
    if run.violations:
        return clip("; ".join(run.violations[:3]), 160)
    return last or "a non-zero exit"


@dataclass
class Group:
    """Records that look alike, and how to describe them."""

    key: str
    source_kind: str
    outcome: str
    label: str
    ids: list[int] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    examples: Counter[str] = field(default_factory=Counter)
    example_text: dict[str, str] = field(default_factory=dict)
    display: str = ""
    tags: tuple[str, ...] = ()

    def add(self, record_id: int, created_at: datetime, example: str, display: str) -> None:
        """Count one more record (records come oldest first: the latest wording is shown)."""
        self.ids.append(record_id)
        self.times.append(created_at)
        self.examples[_blank(example)] += 1
        self.example_text[_blank(example)] = example
        self.display = display

    def common_examples(self, count: int = 3) -> list[tuple[str, int]]:
        """Return the most common examples (alike ones counted together), latest wording."""
        return [(self.example_text[k], n) for k, n in self.examples.most_common(count)]


def _key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()[:24]


def group_executions(runs: Sequence[ExecutionFacts], strategy: Strategy) -> list[Group]:
    """Return the groups of executions big enough for a pattern under ``strategy``."""
    groups: dict[str, Group] = {}
    for run in runs:
        code = first_code_line(run.code)
        if run.success:
            if not strategy.success_patterns:
                continue
            signature, display, outcome = _blank(code), code, "success"
        else:
            display = failure_line(run)
            signature, outcome = _blank(display), "failure"
        key = "execution:" + _key(run.language, outcome, signature)
        exception = display.split(":", 1)[0] if _EXCEPTION_LINE.match(display) else ""
        tags = tuple(t.lower() for t in (PATTERN, outcome, run.language, exception) if t)
        group = groups.setdefault(key, Group(key, "execution", outcome, run.language, tags=tags))
        group.add(run.id, run.created_at, code, display)
    return [g for g in groups.values() if len(g.ids) >= strategy.min_group]


def group_events(events: Sequence[EventFacts], strategy: Strategy) -> list[Group]:
    """Return the groups of events big enough for a pattern under ``strategy``."""
    if not strategy.event_patterns:
        return []
    groups: dict[str, Group] = {}
    for event in events:
        signature = " ".join(_blank(event.content).split()[:12])
        outcome = event.outcome or "unknown"
        key = "event:" + _key(event.event_type, outcome, signature)
        tags = (PATTERN, outcome, event.event_type)
        group = groups.setdefault(key, Group(key, "event", outcome, event.event_type, tags=tags))
        group.add(event.id, event.created_at, clip(event.content, 200), clip(event.content, 200))
    return [g for g in groups.values() if len(g.ids) >= strategy.min_group]


def pattern_text(group: Group, count: int, first: datetime, last: datetime) -> str:
    """Return the content of a pattern memory: what recurred, how often, since when."""
    span = f"first seen {first:%Y-%m-%d %H:%M} UTC, last {last:%Y-%m-%d %H:%M} UTC"
    if group.source_kind == "event":
        return (
            f"Recurring {group.label} event ({group.outcome}), {count} times: "
            f"{group.display} ({span})."
        )
    verb = "succeeded" if group.outcome == "success" else "failed"
    text = f"{count} {group.label} runs {verb}"
    if group.outcome == "failure":
        text += f" with {group.display}"
    common = ", ".join(f"`{code}` ({n})" for code, n in group.common_examples())
    return f"{text} ({span}). Code: {common}."


def importance_of(count: int) -> float:
    """Return the importance of a pattern seen ``count`` times (0.55 up to 0.95)."""
    return round(min(0.95, 0.5 + 0.05 * count), 3)


def decayed(importance: float, idle_days: float, strategy: Strategy) -> float:
    """Return importance after ``idle_days`` of idleness past the strategy's grace period."""
    if strategy.half_life_days is None or idle_days <= 0:
        return importance
    return float(importance * 0.5 ** (idle_days / strategy.half_life_days))
