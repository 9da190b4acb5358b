"""What callers ask the store to keep or find, checked (frozen pydantic models).

Build each with its ``create`` classmethod, which normalises the values and raises
:class:`~orchestrator.errors.RequestError` saying what to change; every store backend takes
these, so the checks are the same whatever the backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from memory_store import checks as values
from memory_store.records import ProcedureStep
from orchestrator.errors import RequestError
from orchestrator.models import check_text

SearchKind = Literal["memory", "event", "execution", "procedure", "entity"]
"""The kinds ``recall`` searches (relations are links, not text)."""

SEARCH_KINDS: tuple[SearchKind, ...] = ("memory", "event", "execution", "procedure", "entity")
MAX_STEPS = 200
_DESCRIPTION_KEYS = ("description", "action", "step", "text", "name")
_KIND_ALIASES = {
    "memories": "memory",
    "events": "event",
    "executions": "execution",
    "procedures": "procedure",
    "entities": "entity",
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NewMemory(_Frozen):
    """A memory to remember (see :meth:`create`)."""

    content: str
    memory_type: str = "semantic"
    context: dict[str, JsonValue] = Field(default_factory=dict)
    tags: tuple[str, ...] = ()
    importance: float = Field(0.5, ge=0.0, le=1.0)

    @classmethod
    def create(
        cls,
        content: object,
        memory_type: object = "semantic",
        context: object = None,
        tags: object = None,
        *,
        max_bytes: int = values.DEFAULT_MAX_MEMORY_BYTES,
    ) -> NewMemory:
        """Check and normalise a memory.

        Raises:
            RequestError: empty or over-size content, a bad type, context or tags.

        """
        return cls(
            content=values.content(content, "content", max_bytes),
            memory_type=values.label(memory_type, "memory_type"),
            context=values.context(context, max_bytes),
            tags=values.tags(tags),
        )


class NewEvent(_Frozen):
    """An episodic event to remember (see :meth:`create`)."""

    event_type: str
    content: str
    outcome: str | None = None
    context: dict[str, JsonValue] = Field(default_factory=dict)

    @classmethod
    def create(
        cls,
        event_type: object,
        content: object,
        outcome: object = None,
        context: object = None,
        *,
        max_bytes: int = values.DEFAULT_MAX_MEMORY_BYTES,
    ) -> NewEvent:
        """Check and normalise an event.

        Raises:
            RequestError: empty or over-size content, a bad type, outcome or context.

        """
        return cls(
            event_type=values.label(event_type, "event_type"),
            content=values.content(content, "content", max_bytes),
            outcome=values.optional_label(outcome, "outcome"),
            context=values.context(context, max_bytes),
        )


class NewProcedure(_Frozen):
    """A procedure (named steps) to remember (see :meth:`create`)."""

    name: str
    steps: tuple[ProcedureStep, ...]
    category: str = "general"
    context: dict[str, JsonValue] = Field(default_factory=dict)

    @classmethod
    def create(
        cls,
        name: object,
        steps: object,
        category: object = "general",
        context: object = None,
        *,
        max_bytes: int = values.DEFAULT_MAX_MEMORY_BYTES,
    ) -> NewProcedure:
        """Check and normalise a procedure.

        ``steps`` is a list whose items are strings (the step's description) or dicts with a
        description (key ``description``, ``action``, ``step``, ``text`` or ``name``), an
        optional ``name``, optional Python ``code`` and any other JSON fields (kept as
        ``details``).

        Raises:
            RequestError: an empty name, no steps, a step without a description, over-size.

        """
        checked = tuple(_step(item, index, max_bytes) for index, item in enumerate(_steps(steps)))
        values.within_limit("the steps", steps_size(checked), max_bytes, as_json=True)
        return cls(
            name=values.content(name, "name", max_bytes),
            steps=checked,
            category=values.label(category, "category"),
            context=values.context(context, max_bytes),
        )


def steps_size(steps: Iterable[ProcedureStep]) -> int:
    """Return the size of a procedure's steps: their JSON, in UTF-8 bytes."""
    return sum(values.utf8_size(step.model_dump_json()) for step in steps)


def _steps(steps: object) -> list[object]:
    if isinstance(steps, str | bytes | Mapping) or not isinstance(steps, Iterable):
        raise RequestError(
            "steps must be a list of strings or dicts, e.g. ['load the data', 'compute totals']"
        )
    items = list(steps)
    if not items:
        raise RequestError("steps is empty: a procedure needs at least one step")
    if len(items) > MAX_STEPS:
        raise RequestError(f"{len(items)} steps; the limit is {MAX_STEPS}")
    return items


def _step(item: object, index: int, max_bytes: int) -> ProcedureStep:
    field = f"steps[{index}]"
    if isinstance(item, str):
        return ProcedureStep(description=values.content(item, field, max_bytes))
    if not isinstance(item, Mapping):
        raise RequestError(f"{field} must be a string or a dict, not {type(item).__name__}")
    data = values.context(item, max_bytes, field=field)
    key = next((k for k in _DESCRIPTION_KEYS if isinstance(data.get(k), str) and data[k]), None)
    if key is None:
        raise RequestError(
            f"{field} has no description: give one as 'description' (or 'action', 'step', "
            "'text', 'name')"
        )
    description = values.content(data.pop(key), f"{field}.{key}", max_bytes)
    name = data.pop("name", None)
    code = data.pop("code", None)
    if code is not None and not isinstance(code, str):
        raise RequestError(f"{field}.code must be a string of Python, not {type(code).__name__}")
    return ProcedureStep(
        description=description,
        name=name.strip() or None if isinstance(name, str) else None,
        code=code if code and code.strip() else None,
        details=data,
    )


class NewEntity(_Frozen):
    """An entity (a person, a service, a dataset...) to remember (see :meth:`create`)."""

    name: str
    entity_type: str
    context: dict[str, JsonValue] = Field(default_factory=dict)

    @classmethod
    def create(
        cls,
        name: object,
        entity_type: object,
        context: object = None,
        *,
        max_bytes: int = values.DEFAULT_MAX_MEMORY_BYTES,
    ) -> NewEntity:
        """Check and normalise an entity.

        Raises:
            RequestError: an empty or over-size name, a bad type or context.

        """
        return cls(
            name=" ".join(values.content(name, "name", max_bytes).split()),
            entity_type=values.label(entity_type, "entity_type"),
            context=values.context(context, max_bytes),
        )


class NewRelation(_Frozen):
    """A typed link between two records of any kind (see :meth:`create`)."""

    source_id: int
    target_id: int
    relation_type: str
    context: dict[str, JsonValue] = Field(default_factory=dict)

    @classmethod
    def create(
        cls,
        source_id: object,
        target_id: object,
        relation_type: object,
        context: object = None,
        *,
        max_bytes: int = values.DEFAULT_MAX_MEMORY_BYTES,
    ) -> NewRelation:
        """Check and normalise a relation.

        Raises:
            RequestError: an id that is not a positive whole number, a bad type or context.

        """
        return cls(
            source_id=values.object_id(source_id, "source_id"),
            target_id=values.object_id(target_id, "target_id"),
            relation_type=values.label(relation_type, "relation_type"),
            context=values.context(context, max_bytes),
        )


class RecallQuery(_Frozen):
    """A ranked search across kinds (see :meth:`create`).

    ``context`` filters: an item is a candidate only when, for every key given, its context
    holds an equal value. An item's own fields count as context keys too: ``memory_type``,
    ``event_type``, ``outcome``, ``language``, ``policy``, ``success``, ``category``,
    ``entity_type`` and ``name``.
    """

    query: str
    limit: int = 5
    kinds: tuple[SearchKind, ...] = SEARCH_KINDS
    context: dict[str, JsonValue] = Field(default_factory=dict)

    @classmethod
    def create(
        cls, query: object, limit: object = 5, context: object = None, kinds: object = None
    ) -> RecallQuery:
        """Check a recall query.

        Raises:
            RequestError: an empty query or one with a lone surrogate, a bad limit, an unknown
                kind, a bad context.

        """
        if not isinstance(query, str):
            raise RequestError(f"query must be a string, not {type(query).__name__}")
        check_text(query, "query")
        if not query.strip():
            raise RequestError("query is empty: give words to search for")
        return cls(
            query=query[:10_000],
            limit=values.limit(limit),
            kinds=search_kinds(kinds),
            context=values.context(context),
        )


def search_kinds(kinds: object) -> tuple[SearchKind, ...]:
    """Return the kinds to search (None: all), normalised, in a fixed order; plurals accepted.

    Raises:
        RequestError: an unknown kind, or an empty list.

    """
    if kinds is None:
        return SEARCH_KINDS
    wanted = {_KIND_ALIASES.get(k, k) for k in values.tags(kinds, "kinds")}
    unknown = wanted - set(SEARCH_KINDS)
    if unknown or not wanted:
        what = f"unknown kinds {sorted(unknown)}" if unknown else "kinds is empty"
        raise RequestError(f"{what}: choose from {', '.join(SEARCH_KINDS)}")
    return tuple(k for k in SEARCH_KINDS if k in wanted)


class EventQuery(_Frozen):
    """A search of events by words, type and time (see :meth:`create`)."""

    query: str | None = None
    event_type: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    limit: int = 10

    @classmethod
    def create(
        cls,
        query: object = None,
        event_type: object = None,
        start_date: object = None,
        end_date: object = None,
        limit: object = 10,
    ) -> EventQuery:
        """Check an event query; a bare end date includes that whole day.

        Raises:
            RequestError: a bad query (a lone surrogate in it, say), type, date or limit, or an
                end before the start.

        """
        if query is not None and not isinstance(query, str):
            raise RequestError(f"query must be a string or None, not {type(query).__name__}")
        if query is not None:
            check_text(query, "query")
        start = values.moment(start_date, "start_date")
        end = values.moment(end_date, "end_date", end_of_day=True)
        if start is not None and end is not None and end < start:
            raise RequestError("end_date is before start_date: swap them")
        return cls(
            query=query[:10_000] if query and query.strip() else None,
            event_type=values.optional_label(event_type, "event_type"),
            start=start,
            end=end,
            limit=values.limit(limit),
        )
