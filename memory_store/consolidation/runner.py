"""Consolidation against a store, for every backend: reading the window, patterns, merging, decay.

The decisions are in :mod:`memory_store.consolidation.strategies` (pure); these functions
read and write through :class:`~memory_store.sql.db.Db`. Each writing function runs inside one
transaction the caller holds.

A consolidation is one tenant's: it reads, groups, merges, decays and prunes that tenant's
records only, and its patterns are the tenant's (a pattern key is unique per tenant).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from memory_store.checks import iso
from memory_store.consolidation.strategies import (
    PINNED,
    EventFacts,
    ExecutionFacts,
    Group,
    Strategy,
    decayed,
    group_events,
    group_executions,
    importance_of,
    pattern_text,
)
from memory_store.records import ConsolidationReport, MemoryRecord
from memory_store.requests import NewMemory
from memory_store.sql.db import Db, Transactions, utc_now
from memory_store.sql.documents import memory_document
from memory_store.sql.index import replace_document
from memory_store.sql.ranking import Ranker
from memory_store.sql.records import delete_record, insert_memory, update_memory
from memory_store.sql.rows import json_text, memory_from_row
from memory_store.sql.search import jaccard, query_terms, words

_STDERR_TAIL = 2000
# The last characters of stderr, in the SQL both dialects speak (SQLite's substr(x, -n) is not).
_TAIL = (
    f"CASE WHEN length(stderr) > {_STDERR_TAIL} "
    f"THEN substr(stderr, length(stderr) - {_STDERR_TAIL - 1}) ELSE stderr END"
)


def run(
    tx: Transactions, ranker: Ranker, strategy: Strategy, days_back: float, tenant: str
) -> ConsolidationReport:
    """Consolidate a tenant's last ``days_back`` days under ``strategy`` (see ``consolidate``).

    Each phase is its own transaction, so other writers never wait for the whole run.
    """
    started = time.perf_counter()
    now = datetime.now(UTC)
    since = iso(now - timedelta(days=days_back))
    runs = tx.read(lambda db: executions_since(db, since, tenant))
    events = tx.read(lambda db: events_since(db, since, tenant))
    groups = group_executions(runs, strategy) + group_events(events, strategy)
    outcomes = tx.write(lambda db: [upsert_pattern(db, g, tenant) for g in groups])
    ranker.embed_ids([i for what, i in outcomes if what != "unchanged"])
    merged = _merge_window(tx, strategy, since, tenant)
    decayed_count = tx.write(lambda db: decay(db, strategy, now, tenant))
    pruned = tx.write(lambda db: prune(db, strategy, now, tenant))
    vectors = ranker.embed_pending(strategy.embed_limit, tenant)
    return ConsolidationReport(
        strategy=strategy.name,
        days_back=days_back,
        patterns_created=sum(1 for what, _ in outcomes if what == "created"),
        patterns_updated=sum(1 for what, _ in outcomes if what == "updated"),
        memories_merged=merged,
        memories_decayed=decayed_count,
        memories_pruned=pruned,
        executions_scanned=len(runs),
        events_scanned=len(events),
        vectors_added=vectors,
        duration_seconds=round(time.perf_counter() - started, 4),
    )


def _merge_window(tx: Transactions, strategy: Strategy, since: str, tenant: str) -> int:
    """Find a tenant's near-duplicates with reads, then merge them in one short write."""
    window = tx.read(lambda db: memories_since(db, since, strategy.max_memories_scanned, tenant))
    pairs: list[tuple[int, int]] = []
    for memory in window:
        if PINNED in memory.tags:
            continue
        other = tx.read(partial(duplicate_of, memory=memory, strategy=strategy, tenant=tenant))
        if other is not None:
            pairs.append((other.id, memory.id))

    def apply(db: Db) -> int:
        kept_by: dict[int, int] = {}
        done = 0
        for older_id, newer_id in pairs:
            keep_id = kept_by.get(older_id, older_id)
            keep, newer = _memory(db, keep_id, tenant), _memory(db, newer_id, tenant)
            if keep is None or newer is None or keep.id == newer.id:
                continue
            merge(db, keep, newer, tenant)
            kept_by[newer_id] = keep_id
            done += 1
        return done

    return tx.write(apply) if pairs else 0


def _memory(db: Db, memory_id: int, tenant: str) -> MemoryRecord | None:
    row = db.execute(
        "SELECT * FROM memories WHERE id = ? AND tenant = ?", (memory_id, tenant)
    ).fetchone()
    return None if row is None else memory_from_row(dict(row))


def executions_since(db: Db, since: str, tenant: str) -> list[ExecutionFacts]:
    """Return the tenant's executions recorded since ``since``, oldest first."""
    rows = db.execute(
        f"SELECT id, language, success, substr(code, 1, 500), {_TAIL}, "
        "error, error_type, violations, created_at "
        "FROM executions WHERE tenant = ? AND created_at >= ? ORDER BY created_at, id",
        (tenant, since),
    )
    return [
        ExecutionFacts(
            id=r[0],
            language=r[1],
            success=bool(r[2]),
            code=r[3],
            stderr_tail=r[4],
            error=r[5],
            error_type=r[6],
            violations=json.loads(r[7]),
            created_at=datetime.fromisoformat(r[8]),
        )
        for r in rows.fetchall()
    ]


def events_since(db: Db, since: str, tenant: str) -> list[EventFacts]:
    """Return the tenant's events (not those of executions) since ``since``, oldest first."""
    rows = db.execute(
        "SELECT id, event_type, outcome, substr(content, 1, 1000), created_at FROM events "
        "WHERE tenant = ? AND created_at >= ? AND event_type != 'execution' "
        "ORDER BY created_at, id",
        (tenant, since),
    )
    return [
        EventFacts(r[0], r[1], r[2], r[3], datetime.fromisoformat(r[4])) for r in rows.fetchall()
    ]


def upsert_pattern(db: Db, group: Group, tenant: str) -> tuple[str, int]:
    """Write or update the tenant's pattern memory of a group.

    Returns:
        ``("created" | "updated" | "unchanged", memory id)``.

    """
    db.lock_writes()  # select-then-insert: two consolidations must not both create the pattern
    found = db.execute(
        "SELECT id, context FROM memories WHERE tenant = ? AND pattern_key = ?",
        (tenant, group.key),
    ).fetchone()
    if found is None:
        first, last, count = min(group.times), max(group.times), len(set(group.ids))
        memory = _pattern_memory(group, count, first, last)
        memory_id = insert_memory(db, memory, tenant, pattern_key=group.key)
        _add_sources(db, memory_id, group.ids)
        return "created", memory_id
    memory_id, old_context = found[0], json.loads(found[1])
    if not _add_sources(db, memory_id, group.ids):
        return "unchanged", memory_id
    count = db.execute(
        "SELECT COUNT(*) FROM pattern_sources WHERE pattern_id = ?", (memory_id,)
    ).fetchone()[0]
    first = min(datetime.fromisoformat(str(old_context.get("first_seen"))), *group.times)
    last = max(datetime.fromisoformat(str(old_context.get("last_seen"))), *group.times)
    update_memory(db, memory_id, _pattern_memory(group, count, first, last))
    return "updated", memory_id


def _add_sources(db: Db, memory_id: int, ids: list[int]) -> int:
    """Record which records a pattern counts; return how many were new to it."""
    cursor = db.executemany(
        "INSERT INTO pattern_sources (pattern_id, source_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(memory_id, i) for i in ids],
    )
    return cursor.rowcount


def _pattern_memory(group: Group, count: int, first: datetime, last: datetime) -> NewMemory:
    label_key = "event_type" if group.source_kind == "event" else "language"
    context = {
        "pattern_key": group.key,
        "source_kind": group.source_kind,
        "outcome": group.outcome,
        "occurrences": count,
        "first_seen": iso(first),
        "last_seen": iso(last),
        "example_ids": sorted(set(group.ids))[-5:],
        label_key: group.label,
    }
    return NewMemory(
        content=pattern_text(group, count, first, last),
        memory_type="semantic",
        context=context,
        tags=group.tags,
        importance=importance_of(count),
    )


# --------------------------------------------------------------------------- merging


def memories_since(db: Db, since: str, limit: int, tenant: str) -> list[MemoryRecord]:
    """Return up to ``limit`` of a tenant's non-pattern memories since ``since``, oldest first."""
    rows = db.execute(
        "SELECT * FROM memories WHERE tenant = ? AND created_at >= ? AND pattern_key IS NULL "
        "ORDER BY created_at, id LIMIT ?",
        (tenant, since, limit),
    )
    return [memory_from_row(dict(r)) for r in rows.fetchall()]


def duplicate_of(
    db: Db, memory: MemoryRecord, strategy: Strategy, tenant: str
) -> MemoryRecord | None:
    """Return the tenant's older memory near-identical to ``memory`` (same type, context)."""
    terms = query_terms(memory.content)
    candidates = db.keyword_ranking(
        tenant,
        terms,
        ["memory"],
        {"memory_type": memory.memory_type},
        strategy.merge_candidates + 1,
    )
    mine = set(words(memory.content))
    for candidate_id, _score in candidates:
        if candidate_id >= memory.id:
            continue  # only into an older one: the older id is kept
        row = db.execute(
            "SELECT * FROM memories WHERE id = ? AND tenant = ?", (candidate_id, tenant)
        ).fetchone()
        if row is None or row["pattern_key"] is not None:
            continue
        other = memory_from_row(dict(row))
        if other.context != memory.context:
            continue
        if jaccard(mine, words(other.content)) >= strategy.merge_threshold:
            return other
    return None


def merge(db: Db, keep: MemoryRecord, newer: MemoryRecord, tenant: str) -> None:
    """Merge ``newer`` into ``keep`` (the older): tags, importance, use, merged ids."""
    tags = list(dict.fromkeys([*keep.tags, *newer.tags]))
    merged_ids = [*keep.merged_ids, newer.id, *newer.merged_ids]
    accessed = [t for t in (keep.last_accessed_at, newer.last_accessed_at) if t is not None]
    db.execute(
        "UPDATE memories SET tags = ?, merged_ids = ?, importance = ?, access_count = ?, "
        "last_accessed_at = ?, updated_at = ? WHERE id = ?",
        (
            json_text(tags),
            json_text(merged_ids),
            max(keep.importance, newer.importance),
            keep.access_count + newer.access_count,
            iso(max(accessed)) if accessed else None,
            utc_now(),
            keep.id,
        ),
    )
    if tuple(tags) != keep.tags:
        memory = NewMemory(
            content=keep.content,
            memory_type=keep.memory_type,
            context=keep.context,
            tags=tuple(tags),
            importance=keep.importance,
        )
        replace_document(db, keep.id, memory_document(memory), iso(keep.created_at))
    delete_record(db, newer.id, tenant)


# --------------------------------------------------------------------------- decay and pruning


def _idle_rows(db: Db, before: str, tenant: str) -> list[Any]:
    return db.execute(
        "SELECT id, importance, tags, COALESCE(last_accessed_at, created_at) AS idle_since, "
        "decayed_at FROM memories WHERE tenant = ? AND COALESCE(last_accessed_at, created_at) < ?",
        (tenant, before),
    ).fetchall()


def decay(db: Db, strategy: Strategy, now: datetime, tenant: str) -> int:
    """Decay the importance of a tenant's memories idle past the grace period; return how many."""
    if strategy.half_life_days is None:
        return 0
    grace = timedelta(days=strategy.idle_days)
    updates = []
    for row in _idle_rows(db, iso(now - grace), tenant):
        if PINNED in json.loads(row["tags"]):
            continue
        start = datetime.fromisoformat(row["idle_since"]) + grace
        if row["decayed_at"] is not None:
            start = max(start, datetime.fromisoformat(row["decayed_at"]))
        idle_days = (now - start).total_seconds() / 86400
        new = decayed(row["importance"], idle_days, strategy)
        if row["importance"] - new > 1e-6:
            updates.append((new, iso(now), row["id"]))
    db.executemany("UPDATE memories SET importance = ?, decayed_at = ? WHERE id = ?", updates)
    return len(updates)


def prune(db: Db, strategy: Strategy, now: datetime, tenant: str) -> int:
    """Remove a tenant's idle memories whose importance fell below the floor; return how many."""
    if strategy.prune_below is None:
        return 0
    rows = _idle_rows(db, iso(now - timedelta(days=strategy.idle_days)), tenant)
    doomed = [
        r["id"]
        for r in rows
        if r["importance"] < strategy.prune_below and PINNED not in json.loads(r["tags"])
    ]
    for memory_id in doomed:
        delete_record(db, memory_id, tenant)
    return len(doomed)
