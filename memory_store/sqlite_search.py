"""Searching the SQLite store: keyword candidates (FTS5 BM25), filters, and result rows.

Every value reaches SQL as a bound parameter; the only text put into SQL is built here from
fixed names and counts of placeholders. The MATCH expression comes from
:func:`memory_store.search.match_expression`, which quotes every term.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import JsonValue

from memory_store.documents import BODY_WEIGHT, TAGS_WEIGHT, TITLE_WEIGHT, steps_text
from memory_store.inputs import EventQuery
from memory_store.models import EventRecord, ProcedureStep, RecallHit
from memory_store.rows import event_from_row
from memory_store.search import match_expression, term_expression
from memory_store.values import iso

_CTX_ENTRY = "SELECT 1 FROM json_each(search.ctx) j WHERE j.key = ?"
BROAD_MATCHES = 2000
"""A term matching more records than this is too common to score every match of."""
_BM25 = f"bm25(search, {TITLE_WEIGHT}, {BODY_WEIGHT}, {TAGS_WEIGHT})"


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _filters(kinds: Sequence[str], context: Mapping[str, JsonValue]) -> tuple[str, list[Any]]:
    """Return SQL conditions on ``search`` for kinds and context, and their parameters."""
    sql = f" AND search.kind IN ({_marks(len(kinds))})"
    args: list[Any] = list(kinds)
    for key, value in context.items():
        if value is None:
            sql += f" AND EXISTS ({_CTX_ENTRY} AND j.type = 'null')"
            args.append(key)
            continue
        sql += f" AND EXISTS ({_CTX_ENTRY} AND j.value = ?)"
        args += [key, _sql_value(value)]
    return sql, args


def _sql_value(value: JsonValue) -> Any:
    """Return a JSON value as ``json_each`` gives it: booleans 0/1, containers as JSON text."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


def _matches_at_most(conn: sqlite3.Connection, match: str, cap: int) -> int:
    """Count the records matching ``match``, stopping past ``cap`` (so it costs little)."""
    sql = "SELECT COUNT(*) FROM (SELECT 1 FROM search WHERE search MATCH ? LIMIT ?)"
    return int(conn.execute(sql, (match, cap + 1)).fetchone()[0])


def scoring_plan(conn: sqlite3.Connection, terms: Sequence[str]) -> tuple[str, int] | None:
    """Return the MATCH expression to score and the lowest id worth scoring.

    BM25 costs about a microsecond per matching record, too much for a word found in most
    of 100,000 records. So a term matching more than :data:`BROAD_MATCHES` records is
    *broad*: it is left out when narrower terms exist (it would add little to their scores).
    When every term is broad, only the :data:`BROAD_MATCHES` newest matches are scored.
    """
    counts = {t: _matches_at_most(conn, term_expression(t), BROAD_MATCHES) for t in terms}
    narrow = sorted((t for t in terms if counts[t] <= BROAD_MATCHES), key=counts.__getitem__)
    if narrow:
        chosen: list[str] = []
        budget = 0
        for term in narrow:  # the narrowest first, within a budget of scored rows
            if chosen and budget + counts[term] > 2 * BROAD_MATCHES:
                break
            chosen.append(term)
            budget += counts[term]
        match = " OR ".join(term_expression(t) for t in terms if t in chosen and counts[t])
        return (match, 0) if match else None
    every = match_expression(terms)
    if every is None:
        return None
    sql = "SELECT rowid FROM search WHERE search MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?"
    row = conn.execute(sql, (every, BROAD_MATCHES - 1)).fetchone()
    return every, 0 if row is None else int(row[0])


def keyword_ranking(
    conn: sqlite3.Connection,
    terms: Sequence[str],
    kinds: Sequence[str],
    context: Mapping[str, JsonValue],
    n: int,
) -> list[tuple[int, float]]:
    """Return up to ``n`` ``(id, bm25)`` pairs, best first (bm25 made positive)."""
    plan = scoring_plan(conn, terms)
    if plan is None:
        return []
    match, lowest = plan
    where, args = _filters(kinds, context)
    sql = (
        f"SELECT rowid, -{_BM25} AS s FROM search WHERE search MATCH ? AND rowid >= ?{where} "
        "ORDER BY s DESC LIMIT ?"
    )
    rows = conn.execute(sql, (match, lowest, *args, n)).fetchall()
    return [(r[0], float(r[1])) for r in rows]


def keep_matching(
    conn: sqlite3.Connection,
    ids: Sequence[int],
    kinds: Sequence[str],
    context: Mapping[str, JsonValue],
) -> list[int]:
    """Return the ids, in order, that exist and pass the kinds and context filters."""
    if not ids:
        return []
    where, args = _filters(kinds, context)
    sql = f"SELECT rowid FROM search WHERE rowid IN ({_marks(len(ids))}){where}"
    kept = {r[0] for r in conn.execute(sql, (*ids, *args)).fetchall()}
    return [i for i in ids if i in kept]


def hydrate(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Return, per id, what a hit shows: kind, content, tags, type, context, importance, time."""
    if not ids:
        return {}
    marks = _marks(len(ids))
    found: dict[int, dict[str, Any]] = {}
    for rowid, kind, ctx, created_at in conn.execute(
        f"SELECT rowid, kind, ctx, created_at FROM search WHERE rowid IN ({marks})", ids
    ):
        found[rowid] = {
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
        for object_id, fields in _KIND_FIELDS[kind](conn, kind_ids):
            found[object_id].update(fields)
    return {i: d for i, d in found.items() if "content" in d}


def _memories(conn: sqlite3.Connection, ids: list[int]) -> Iterable[tuple[int, dict[str, Any]]]:
    sql = (
        "SELECT id, content, tags, memory_type, importance FROM memories "
        f"WHERE id IN ({_marks(len(ids))})"
    )
    for object_id, content, tags, memory_type, importance in conn.execute(sql, ids):
        fields = {"content": content, "tags": tuple(json.loads(tags)), "type": memory_type}
        yield object_id, {**fields, "importance": importance}


def _events(conn: sqlite3.Connection, ids: list[int]) -> Iterable[tuple[int, dict[str, Any]]]:
    sql = f"SELECT id, content, event_type FROM events WHERE id IN ({_marks(len(ids))})"
    for object_id, content, event_type in conn.execute(sql, ids):
        yield object_id, {"content": content, "type": event_type}


def _executions(conn: sqlite3.Connection, ids: list[int]) -> Iterable[tuple[int, dict[str, Any]]]:
    sql = (
        "SELECT x.id, x.language, s.title FROM executions x JOIN search s ON s.rowid = x.id "
        f"WHERE x.id IN ({_marks(len(ids))})"
    )
    for object_id, language, title in conn.execute(sql, ids):
        summary = title.split("\n", 1)[0]  # the title holds the summary, then identifier parts
        yield object_id, {"content": summary, "type": language}


def _procedures(conn: sqlite3.Connection, ids: list[int]) -> Iterable[tuple[int, dict[str, Any]]]:
    sql = f"SELECT id, name, steps, category FROM procedures WHERE id IN ({_marks(len(ids))})"
    for object_id, name, steps, category in conn.execute(sql, ids):
        parsed = tuple(ProcedureStep.model_validate(s) for s in json.loads(steps))
        yield object_id, {"content": f"{name}\n{steps_text(parsed)}", "type": category}


def _entities(conn: sqlite3.Connection, ids: list[int]) -> Iterable[tuple[int, dict[str, Any]]]:
    sql = f"SELECT id, name, entity_type FROM entities WHERE id IN ({_marks(len(ids))})"
    for object_id, name, entity_type in conn.execute(sql, ids):
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


def touch(conn: sqlite3.Connection, memory_ids: Sequence[int], now: str) -> None:
    """Count a recall of these memories (their use keeps them from decaying)."""
    conn.execute(
        "UPDATE memories SET access_count = access_count + 1, last_accessed_at = ? "
        f"WHERE id IN ({_marks(len(memory_ids))})",
        (now, *memory_ids),
    )


def find_events(
    conn: sqlite3.Connection, query: EventQuery, match: str | None
) -> list[tuple[EventRecord, float | None]]:
    """Return events by type and time: ranked by words when ``match`` is given, else newest first.

    The float is the raw BM25 (made positive), None without words.
    """
    where, args = "", []
    if query.event_type is not None:
        where += " AND e.event_type = ?"
        args.append(query.event_type)
    if query.start is not None:
        where += " AND e.created_at >= ?"
        args.append(iso(query.start))
    if query.end is not None:
        where += " AND e.created_at < ?"
        args.append(iso(query.end))
    if match is None:
        sql = (
            f"SELECT e.* FROM events e WHERE 1 = 1{where} "
            "ORDER BY e.created_at DESC, e.id DESC LIMIT ?"
        )
        rows = conn.execute(sql, (*args, query.limit)).fetchall()
        return [(event_from_row(dict(r)), None) for r in rows]
    sql = (
        f"SELECT e.*, -{_BM25} AS s FROM search JOIN events e ON e.id = search.rowid "
        f"WHERE search MATCH ? AND search.kind = 'event'{where} ORDER BY s DESC LIMIT ?"
    )
    found: list[tuple[EventRecord, float | None]] = []
    for row in conn.execute(sql, (match, *args, query.limit)).fetchall():
        data = dict(row)
        score = float(data.pop("s"))
        found.append((event_from_row(data), score))
    return found
