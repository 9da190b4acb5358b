"""From ranked ids to results, for every backend: filters, hydration, use counts, events.

Keyword candidates come from the dialect (:meth:`~memory_store.sql.db.Db.keyword_ranking`); this
module checks vector candidates against the same filters, reads what a hit shows, counts the
use of memories, and answers ``recall_events``. Every value reaches SQL as a bound parameter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import JsonValue

from memory_store.checks import iso
from memory_store.records import EventRecord, ProcedureStep, RecallHit
from memory_store.requests import EventQuery
from memory_store.sql.db import Db, marks
from memory_store.sql.documents import steps_text
from memory_store.sql.rows import event_from_row


def keep_matching(
    db: Db,
    tenant: str,
    ids: Sequence[int],
    kinds: Sequence[str],
    context: Mapping[str, JsonValue],
) -> list[int]:
    """Return the ids, in order, that exist, are the tenant's and pass the kinds and context."""
    if not ids:
        return []
    where, args = db.filters(tenant, kinds, context)
    sid = db.search_id
    sql = f"SELECT {sid} FROM search WHERE {sid} IN ({marks(len(ids))}){where}"
    kept = {r[0] for r in db.execute(sql, (*ids, *args)).fetchall()}
    return [i for i in ids if i in kept]


def hydrate(db: Db, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Return, per id, what a hit shows: kind, content, tags, type, context, importance, time."""
    if not ids:
        return {}
    sid = db.search_id
    found: dict[int, dict[str, Any]] = {}
    for object_id, kind, ctx, created_at in db.execute(
        f"SELECT {sid}, kind, ctx, created_at FROM search WHERE {sid} IN ({marks(len(ids))})", ids
    ):
        found[object_id] = {
            "kind": kind,
            "context": json.loads(ctx),
            "created_at": datetime.fromisoformat(created_at),
            "tags": (),
            "importance": 0.5,
        }
    by_kind: dict[str, list[int]] = {}
    for object_id, data in found.items():
        by_kind.setdefault(data["kind"], []).append(object_id)
    for kind, kind_ids in by_kind.items():
        for object_id, fields in _KIND_FIELDS[kind](db, kind_ids):
            found[object_id].update(fields)
    return {i: d for i, d in found.items() if "content" in d}


def _memories(db: Db, ids: list[int]) -> Iterable[tuple[int, dict[str, Any]]]:
    sql = (
        "SELECT id, content, tags, memory_type, importance FROM memories "
        f"WHERE id IN ({marks(len(ids))})"
    )
    for object_id, content, tags, memory_type, importance in db.execute(sql, ids):
        fields = {"content": content, "tags": tuple(json.loads(tags)), "type": memory_type}
        yield object_id, {**fields, "importance": importance}


def _events(db: Db, ids: list[int]) -> Iterable[tuple[int, dict[str, Any]]]:
    sql = f"SELECT id, content, event_type FROM events WHERE id IN ({marks(len(ids))})"
    for object_id, content, event_type in db.execute(sql, ids):
        yield object_id, {"content": content, "type": event_type}


def _executions(db: Db, ids: list[int]) -> Iterable[tuple[int, dict[str, Any]]]:
    sql = (
        f"SELECT x.id, x.language, s.title FROM executions x JOIN search s ON s.{db.search_id} "
        f"= x.id WHERE x.id IN ({marks(len(ids))})"
    )
    for object_id, language, title in db.execute(sql, ids):
        summary = title.split("\n", 1)[0]  # the title holds the summary, then identifier parts
        yield object_id, {"content": summary, "type": language}


def _procedures(db: Db, ids: list[int]) -> Iterable[tuple[int, dict[str, Any]]]:
    sql = f"SELECT id, name, steps, category FROM procedures WHERE id IN ({marks(len(ids))})"
    for object_id, name, steps, category in db.execute(sql, ids):
        parsed = tuple(ProcedureStep.model_validate(s) for s in json.loads(steps))
        yield object_id, {"content": f"{name}\n{steps_text(parsed)}", "type": category}


def _entities(db: Db, ids: list[int]) -> Iterable[tuple[int, dict[str, Any]]]:
    sql = f"SELECT id, name, entity_type FROM entities WHERE id IN ({marks(len(ids))})"
    for object_id, name, entity_type in db.execute(sql, ids):
        yield object_id, {"content": name, "type": entity_type}


_KIND_FIELDS = {
    "memory": _memories,
    "event": _events,
    "execution": _executions,
    "procedure": _procedures,
    "entity": _entities,
}


def hit(object_id: int, data: Mapping[str, Any], score: float) -> RecallHit:
    """Return a hydrated candidate as a result."""
    return RecallHit(
        id=object_id,
        kind=data["kind"],
        content=data["content"],
        tags=data["tags"],
        score=score,
        created_at=data["created_at"],
        type=data["type"],
        context=data["context"],
    )


def touch(db: Db, memory_ids: Sequence[int], now: str) -> None:
    """Count a recall of these memories (their use keeps them from decaying)."""
    db.relax_durability()  # a use count lost in a crash harms nothing; recall need not wait
    db.execute(
        "UPDATE memories SET access_count = access_count + 1, last_accessed_at = ? "
        f"WHERE id IN ({marks(len(memory_ids))})",
        (now, *memory_ids),
    )


def find_events(
    db: Db, tenant: str, query: EventQuery, terms: Sequence[str] | None
) -> list[tuple[EventRecord, float | None]]:
    """Return a tenant's events by type and time: ranked by ``terms``, else newest first.

    The float is the dialect's raw score (higher is better), None without terms.
    """
    where, args = " AND e.tenant = ?", [tenant]
    if query.event_type is not None:
        where += " AND e.event_type = ?"
        args.append(query.event_type)
    if query.start is not None:
        where += " AND e.created_at >= ?"
        args.append(iso(query.start))
    if query.end is not None:
        where += " AND e.created_at < ?"
        args.append(iso(query.end))
    if terms is None:
        sql = (
            f"SELECT e.* FROM events e WHERE 1 = 1{where} "
            "ORDER BY e.created_at DESC, e.id DESC LIMIT ?"
        )
        rows = db.execute(sql, (*args, query.limit)).fetchall()
        return [(event_from_row(dict(r)), None) for r in rows]
    found: list[tuple[EventRecord, float | None]] = []
    for row in db.ranked_events(terms, where, args, query.limit):
        data = dict(row)
        score = float(data.pop("s"))
        found.append((event_from_row(data), score))
    return found
