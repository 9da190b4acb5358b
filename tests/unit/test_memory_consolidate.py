"""consolidate: pattern memories from runs and events, merging, decay and pruning.

The store tests run on each backend (SQLite, and PostgreSQL marked ``postgres``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from memory_store import (
    STRATEGIES,
    MemoryRecord,
    NewEvent,
    NewMemory,
    RecallQuery,
    Store,
    StoreOptions,
)
from memory_store.consolidation.strategies import (
    ExecutionFacts,
    days_back,
    decayed,
    failure_line,
    group_executions,
    strategy_named,
)
from orchestrator.errors import RequestError
from orchestrator.models import ExecutionRequest, ExecutionResult
from tests.memory_backends import Backend

ZERO = (
    "Traceback (most recent call last):\n"
    '  File "/workspace/main.py", line 3, in <module>\n'
    "    average = total / len(rows)\n"
    "ZeroDivisionError: division by zero\n"
)


def run(
    code: str, *, stderr: str = "", success: bool = False
) -> tuple[ExecutionRequest, ExecutionResult]:
    request = ExecutionRequest.create(code=code)
    result = ExecutionResult(
        execution_id=request.execution_id,
        success=success,
        language="python",
        exit_code=0 if success else 1,
        stderr=stderr,
        sandbox_mode="docker",
    )
    return request, result


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    """A fresh store on each backend, keyword ranking."""
    with backend.open(StoreOptions(embeddings="off")) as opened:
        yield opened


def six_failed_reports(store: Store) -> None:
    for day in range(6):
        store.record_execution(*run(f"report = build_report('2026-11-{day + 10}')", stderr=ZERO))


def patterns(store: Store) -> list[MemoryRecord]:
    hits = store.recall(RecallQuery.create("pattern", limit=100, kinds=["memory"]))
    found = [store.get(h.id) for h in hits]
    return [m for m in found if isinstance(m, MemoryRecord) and m.pattern_key]


# --------------------------------------------------------------------------- patterns


def test_six_failures_become_one_recallable_pattern(store: Store) -> None:
    """Six runs failing with ZeroDivisionError give one memory with the count, found by both names."""
    six_failed_reports(store)
    store.record_execution(*run("print('fine')", success=True))

    report = store.consolidate(STRATEGIES["balanced"], 7)

    assert (report.patterns_created, report.executions_scanned) == (1, 7)
    (pattern,) = patterns(store)
    assert pattern.memory_type == "semantic" and "pattern" in pattern.tags
    assert pattern.content.startswith(
        "6 python runs failed with ZeroDivisionError: division by zero"
    )
    assert "build_report" in pattern.content
    assert pattern.context["occurrences"] == 6 and pattern.context["language"] == "python"
    for query in ("division by zero", "ZeroDivisionError", "why do reports fail"):
        first = store.recall(RecallQuery.create(query, kinds=["memory"]))[0]
        assert first.id == pattern.id, query


def test_running_again_updates_counts_instead_of_duplicating(store: Store) -> None:
    """A second consolidate adds new runs to the same pattern; with nothing new it changes nothing."""
    six_failed_reports(store)
    store.consolidate(STRATEGIES["balanced"], 7)
    (before,) = patterns(store)

    same = store.consolidate(STRATEGIES["balanced"], 7)
    store.record_execution(*run("report = build_report('2026-11-20')", stderr=ZERO))
    grown = store.consolidate(STRATEGIES["balanced"], 7)

    assert (same.patterns_created, same.patterns_updated) == (0, 0)
    assert (grown.patterns_created, grown.patterns_updated) == (0, 1)
    (after,) = patterns(store)
    assert after.id == before.id and after.context["occurrences"] == 7
    assert after.content.startswith("7 python runs failed")
    assert after.importance > before.importance


def test_different_failures_and_successes_make_different_patterns(store: Store) -> None:
    """Failures group by error signature; successes by their first line, only where asked."""
    six_failed_reports(store)
    for n in range(3):
        store.record_execution(
            *run(f"rows[{n + 10}]", stderr=f"IndexError: list index out of range {n}\n")
        )
        store.record_execution(*run("import json\nprint(1)", success=True))

    balanced = store.consolidate(STRATEGIES["balanced"], 7)
    assert balanced.patterns_created == 3
    contents = sorted(p.content for p in patterns(store))
    assert contents[0].startswith("3 python runs failed with IndexError: list index out of range 2")
    assert contents[0].endswith("Code: `rows[12]` (3).")
    assert contents[1].startswith("3 python runs succeeded (")
    assert contents[1].endswith("Code: `import json` (3).")
    assert contents[2].endswith("Code: `report = build_report('2026-11-15')` (6).")


def test_minimal_ignores_successes_and_events(store: Store) -> None:
    """minimal writes failure patterns only; quality also groups pairs of events."""
    for _ in range(3):
        store.record_execution(*run("import json\nprint(1)", success=True))
    for seconds in (30, 45):
        store.add_event(
            NewEvent.create("error", f"staging deploy timed out after {seconds}s", "failure")
        )
    assert store.consolidate(STRATEGIES["minimal"], 7).patterns_created == 0
    quality = store.consolidate(STRATEGIES["quality"], 7)
    assert quality.patterns_created == 2 and quality.events_scanned == 2
    event_pattern = store.recall(RecallQuery.create("staging deploy timed out", kinds=["memory"]))[
        0
    ]
    assert "2 times" in event_pattern.content and "pattern" in event_pattern.tags


def test_the_window_limits_what_is_scanned(store: Store, backend: Backend) -> None:
    """Runs older than days_back are not grouped."""
    six_failed_reports(store)
    old = (datetime.now(UTC) - timedelta(days=30)).isoformat(timespec="microseconds")
    backend.sql("UPDATE executions SET created_at = ?", (old,))
    report = store.consolidate(STRATEGIES["balanced"], 7)
    assert (report.executions_scanned, report.patterns_created) == (0, 0)


def test_failure_signatures_blank_what_varies() -> None:
    """Numbers and quoted values are blanked, so the same failure with other data groups."""
    now = datetime.now(UTC)
    runs = [
        ExecutionFacts(i, "python", False, "x()", f"KeyError: 'user_{i}'\n", None, None, [], now)
        for i in range(3)
    ]
    (group,) = group_executions(runs, STRATEGIES["balanced"])
    assert group.ids == [0, 1, 2] and "keyerror" in group.tags
    no_traceback = ExecutionFacts(
        9, "bash", False, "x", "", "Code validation failed", "ValidationError", [], now
    )
    assert failure_line(no_traceback) == "ValidationError: Code validation failed"


# --------------------------------------------------------------------------- merging


def test_near_duplicates_merge_into_the_older(store: Store) -> None:
    """Two near-identical memories become one: older id kept, tags united, merged id listed."""
    older = store.add_memory(
        NewMemory.create("The staging database password rotates every Monday", tags=["db"])
    )
    newer = store.add_memory(
        NewMemory.create("the staging database password rotates every monday.", tags=["ops"])
    )
    other = store.add_memory(NewMemory.create("The staging database is in eu-west-1"))
    scoped = store.add_memory(
        NewMemory.create(
            "The staging database password rotates every Monday", context={"team": "b"}
        )
    )

    report = store.consolidate(STRATEGIES["balanced"], 7)

    assert report.memories_merged == 1
    kept = store.get(older)
    assert isinstance(kept, MemoryRecord)
    assert kept.tags == ("db", "ops") and kept.merged_ids == (newer,)
    assert store.get(newer) is None
    assert (
        store.get(other) is not None and store.get(scoped) is not None
    )  # other text, other context
    assert [h.id for h in store.recall(RecallQuery.create("ops", kinds=["memory"]))] == [older]


def test_merge_thresholds_differ_per_strategy(store: Store) -> None:
    """A pair with Jaccard 0.75 merges under quality (0.7) but not under balanced (0.8)."""
    store.add_memory(NewMemory.create("alpha beta gamma delta epsilon zeta"))
    store.add_memory(NewMemory.create("alpha beta gamma delta epsilon zeta eta theta"))
    assert store.consolidate(STRATEGIES["balanced"], 7).memories_merged == 0
    assert store.consolidate(STRATEGIES["quality"], 7).memories_merged == 1


# --------------------------------------------------------------------------- decay and pruning


def age(backend: Backend, memory_id: int, days: float) -> None:
    then = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="microseconds")
    backend.sql(
        "UPDATE memories SET created_at = ?, updated_at = ? WHERE id = ?", (then, then, memory_id)
    )


def test_unused_memories_decay_and_the_lowest_are_pruned(store: Store, backend: Backend) -> None:
    """Idle memories lose importance; one idle for long enough falls below the floor and goes."""
    fresh = store.add_memory(NewMemory.create("fresh fact about kites"))
    idle = store.add_memory(NewMemory.create("idle fact about kites"))
    ancient = store.add_memory(NewMemory.create("ancient fact about kites"))
    pinned = store.add_memory(NewMemory.create("pinned fact about kites", tags=["pinned"]))
    age(backend, idle, 40)
    age(backend, ancient, 400)
    age(backend, pinned, 400)

    report = store.consolidate(STRATEGIES["balanced"], 7)

    assert (report.memories_decayed, report.memories_pruned) == (2, 1)
    assert store.get(fresh).importance == 0.5  # type: ignore[union-attr]
    assert 0.1 < store.get(idle).importance < 0.5  # type: ignore[union-attr]
    assert store.get(ancient) is None
    assert store.get(pinned).importance == 0.5  # type: ignore[union-attr]
    again = store.consolidate(STRATEGIES["balanced"], 7)
    assert again.memories_pruned == 0  # decay is by elapsed time: a rerun barely changes it


def test_minimal_neither_decays_nor_prunes(store: Store, backend: Backend) -> None:
    """minimal leaves importance alone."""
    ancient = store.add_memory(NewMemory.create("ancient fact"))
    age(backend, ancient, 400)
    report = store.consolidate(STRATEGIES["minimal"], 7)
    assert (report.memories_decayed, report.memories_pruned) == (0, 0)
    assert store.get(ancient).importance == 0.5  # type: ignore[union-attr]


def test_recalled_memories_do_not_decay(store: Store, backend: Backend) -> None:
    """A memory recall returned lately is not idle, however old."""
    used = store.add_memory(NewMemory.create("old but useful fact about gliders"))
    age(backend, used, 400)
    store.recall(RecallQuery.create("gliders"))
    assert store.consolidate(STRATEGIES["quality"], 7).memories_decayed == 0


# --------------------------------------------------------------------------- arguments


def test_report_counts_and_duration(store: Store) -> None:
    """The report has every count, the strategy and a duration."""
    data = store.consolidate(STRATEGIES["speed"], 1.5).to_dict()
    assert set(data) == {
        "strategy", "days_back", "patterns_created", "patterns_updated", "memories_merged",
        "memories_decayed", "memories_pruned", "executions_scanned", "events_scanned",
        "vectors_added", "duration_seconds",
    }  # fmt: skip
    assert (
        data["strategy"] == "speed" and data["days_back"] == 1.5 and data["duration_seconds"] >= 0
    )


@pytest.mark.parametrize("name", ["fast", "", 3, None])
def test_unknown_strategies_are_refused(name: object) -> None:
    """An unknown strategy raises RequestError naming the four."""
    with pytest.raises(RequestError, match="choose minimal, speed, balanced, quality"):
        strategy_named(name)


def test_strategy_names_are_case_insensitive() -> None:
    """' Quality ' is quality."""
    assert strategy_named(" Quality ").name == "quality"


@pytest.mark.parametrize("value", [0, -1, "7", True, 10**9])
def test_bad_windows_are_refused(value: object) -> None:
    """days_back must be a number of days above 0."""
    with pytest.raises(RequestError, match="days_back"):
        days_back(value)


def test_decay_halves_per_half_life() -> None:
    """Importance halves every half_life_days of idleness; minimal never decays."""
    assert decayed(0.8, 60, STRATEGIES["balanced"]) == pytest.approx(0.4)
    assert decayed(0.8, 60, STRATEGIES["minimal"]) == 0.8
