r"""The memory half of ``MemoryAPI``: remember, recall, forget, procedures, entities, consolidate.

Every method checks its arguments (``RequestError`` saying what to change), works through the
:class:`~memory_store.base.Store` protocol, and returns plain ints, bools, dicts and lists.
Values such as memory types, event types, outcomes, categories, entity and relation types are
free-form: trimmed and lower-cased (``"Failure "`` is stored as ``"failure"``). Every text
argument must be valid Unicode (a lone surrogate such as ``"\ud800"`` is a ``RequestError``
naming the argument), and contexts nest at most 64 levels of dicts and lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memory_store import procedures, values
from memory_store.base import Store
from memory_store.consolidate import days_back as check_days_back
from memory_store.consolidate import strategy_named
from memory_store.errors import RecordNotFoundError
from memory_store.inputs import (
    EventQuery,
    NewEntity,
    NewEvent,
    NewMemory,
    NewProcedure,
    NewRelation,
    RecallQuery,
)
from memory_store.models import ProcedureRecord
from memory_store.procedures import CodeGenerator
from orchestrator.errors import RequestError
from orchestrator.models import check_text
from orchestrator.settings import Settings


class MemoryMethods:
    """What an agent calls to remember and learn; ``MemoryAPI`` inherits these methods."""

    _store: Store
    _settings: Settings
    _code_generator: CodeGenerator | None

    @property
    def _max_bytes(self) -> int:
        return self._settings.max_memory_bytes

    def remember(
        self,
        content: str,
        memory_type: str = "semantic",
        context: Mapping[str, Any] | None = None,
        tags: list[str] | None = None,
    ) -> int:
        """Remember a piece of knowledge; return its id.

        Args:
            content: the text (not empty; at most ``max_memory_bytes``, 1 MiB by default).
            memory_type: free-form: semantic, episodic, procedural, preference...
            context: JSON data to keep with it (``recall(context=...)`` filters on it).
            tags: words to file it under (tag it ``pinned`` to keep it from decay and pruning).

        Raises:
            RequestError: empty or over-size content, or a bad type, context or tags.
            StoreError: the store cannot write.
        """
        memory = NewMemory.create(content, memory_type, context, tags, max_bytes=self._max_bytes)
        return self._store.add_memory(memory)

    def recall(
        self,
        query: str,
        limit: int = 5,
        context: Mapping[str, Any] | None = None,
        kinds: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Return what the store knows that best matches ``query``, best first.

        Searches memories, events, executions, procedures and entities (``kinds`` narrows,
        e.g. ``["memory", "execution"]``). Ranking: BM25 keyword scores (stemmed, stop words
        dropped, identifiers split, so ``division by zero`` finds ``ZeroDivisionError``),
        fused with vector similarity by reciprocal rank fusion when the embeddings extra is
        installed, weighted mildly by recency and importance. Any text is a valid query:
        quotes, operators and SQL are just words.

        Each result is a dict: ``id`` (forget takes it), ``kind``, ``content`` (an
        execution's one-line summary, a procedure's name and steps, an entity's name),
        ``tags`` (a memory's; others have none), ``score`` (0..1, higher is better; the best
        keyword match scores about 1), ``created_at`` (ISO 8601, UTC), ``type`` (the memory
        or event type, an execution's language, a procedure's category, an entity's type) and
        ``context`` (the record's context with its own fields, e.g. ``language``,
        ``outcome``, ``memory_type``).

        Args:
            query: the words to look for.
            limit: how many results at most (1..1000).
            context: a filter: only records whose context has each of these key/value pairs.
            kinds: the kinds to search (default: all five; plurals are accepted).

        Raises:
            RequestError: an empty query, a bad limit, an unknown kind or a bad context.
            StoreError: the store cannot be read.
        """
        hits = self._store.recall(RecallQuery.create(query, limit, context, kinds))
        return [hit.to_dict() for hit in hits]

    def forget(self, memory_id: int) -> bool:
        """Forget a record of any kind by id; return False when no record has that id.

        Forgetting also removes what hangs on the record: its relations and, for an
        execution, its event.

        Raises:
            RequestError: the id is not a positive whole number.
            StoreError: the store cannot write.
        """
        return self._store.forget(values.object_id(memory_id, "memory_id"))

    def remember_event(
        self,
        event_type: str,
        content: str,
        outcome: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> int:
        """Remember something that happened; return its id.

        Args:
            event_type: free-form: action, decision, error, observation...
            content: what happened.
            outcome: free-form: success, failure, partial, unknown... (or None).
            context: JSON data to keep with it.

        Raises:
            RequestError: empty or over-size content, or a bad type, outcome or context.
            StoreError: the store cannot write.
        """
        event = NewEvent.create(event_type, content, outcome, context, max_bytes=self._max_bytes)
        return self._store.add_event(event)

    def recall_events(
        self,
        query: str | None = None,
        event_type: str | None = None,
        start_date: Any = None,
        end_date: Any = None,
        limit: int = 10,
    ) -> list[dict[str, Any]]:
        """Return events, newest first, or ranked by ``query`` when it is given.

        Each is a dict: ``id``, ``kind`` (``event``), ``event_type``, ``content``,
        ``outcome``, ``context``, ``created_at`` (ISO 8601, UTC) and ``score`` (0..1 with a
        query, else None). Runs recorded by ``execute_code`` appear as ``execution`` events.

        Args:
            query: words to rank by (None: no ranking; a query without words matches nothing).
            event_type: only events of this type.
            start_date: only events at or after this (datetime, date or ISO 8601 string).
            end_date: only events before this (a bare date includes that whole day).
            limit: how many at most (1..1000).

        Raises:
            RequestError: a bad type, date or limit, or an end before the start.
            StoreError: the store cannot be read.
        """
        query_ = EventQuery.create(query, event_type, start_date, end_date, limit)
        return [hit.to_dict() for hit in self._store.recall_events(query_)]

    def remember_procedure(
        self,
        name: str,
        steps: list[Any],
        category: str = "general",
        context: Mapping[str, Any] | None = None,
    ) -> int:
        """Remember how to do something, as ordered steps; return its id.

        Args:
            name: what the procedure is called.
            steps: strings, or dicts with a ``description`` (or ``action``), an optional
                ``name`` and optional Python ``code`` that the generated step runs.
            category: free-form: general, analysis, deployment...
            context: JSON data to keep with it.

        Raises:
            RequestError: an empty name, no steps, a step without a description, over-size.
            StoreError: the store cannot write.
        """
        procedure = NewProcedure.create(name, steps, category, context, max_bytes=self._max_bytes)
        return self._store.add_procedure(procedure)

    def generate_procedure_code(
        self, procedure_id: int, generator: CodeGenerator | None = None
    ) -> dict[str, Any]:
        """Turn a remembered procedure into runnable Python, and validate it.

        Without a model: a module with a docstring, one typed, documented function per step
        that logs what it does, ``main()`` with error handling, and an ``if __name__ ==
        "__main__":`` block; it runs under the strict policy. ``generator`` (or the one given
        to ``MemoryAPI.create``) replaces the template: any callable taking the procedure
        record and returning source text.

        Returns:
            ``{success, procedure_id, code, confidence, validation, issues, generator,
            duration_seconds, timestamp}``; ``confidence`` is the validation's quality score.
            A generator that fails, or returns text with a lone surrogate, gives ``success:
            False`` with the reason in ``issues``.

        Raises:
            RequestError: the id is not a positive whole number.
            RecordNotFoundError: no procedure has this id.
            StoreError: the store cannot be read.
        """
        procedure = self._procedure(procedure_id)
        custom = generator or self._code_generator
        made = procedures.generate(procedure, None if custom is None else _checked(custom))
        return made.to_dict()

    def validate_procedure_code(self, code: str, procedure_id: int | None = None) -> dict[str, Any]:
        """Check Python code: syntax, security (strict policy), docstrings, errors, type hints.

        Returns:
            ``{success, procedure_id, quality_score, checks: {syntax, security, docstring,
            error_handling, type_hints}, issues, duration_seconds, timestamp}``; ``success``
            means it parses and breaks no strict rule; ``quality_score`` is in [0, 1].

        Raises:
            RequestError: ``code`` is not a string, or holds a lone surrogate.
            RecordNotFoundError: ``procedure_id`` is given and no procedure has it.
            StoreError: the store cannot be read.
        """
        if not isinstance(code, str):
            raise RequestError(f"code must be a string, not {type(code).__name__}")
        check_text(code, "code")
        checked = None if procedure_id is None else self._procedure(procedure_id).id
        return procedures.validate_code(code, checked).to_dict()

    def _procedure(self, procedure_id: object) -> ProcedureRecord:
        object_id = values.object_id(procedure_id, "procedure_id")
        record = self._store.get(object_id)
        if not isinstance(record, ProcedureRecord):
            kind = self._store.kind_of(object_id)
            what = "no record has this id" if kind is None else f"that record is of kind {kind!r}"
            raise RecordNotFoundError(f"procedure_id {object_id}: {what}, not a procedure")
        return record

    def remember_entity(
        self, name: str, entity_type: str, context: Mapping[str, Any] | None = None
    ) -> int:
        """Remember an entity (a person, service, dataset, process...); return its id.

        The same type and name again (case-insensitively) returns the same id, with the new
        context merged over the old.

        Raises:
            RequestError: an empty or over-size name, or a bad type or context.
            StoreError: the store cannot write.
        """
        entity = NewEntity.create(name, entity_type, context, max_bytes=self._max_bytes)
        return self._store.add_entity(entity)

    def relate_entities(
        self,
        source_id: int,
        target_id: int,
        relation_type: str,
        context: Mapping[str, Any] | None = None,
    ) -> int:
        """Link two records (entities, or records of any kind); return the relation's id.

        The same link (source, target, type) again returns the same id, its context replaced.
        Forgetting either end forgets the relation.

        Raises:
            RequestError: an id that is not a positive whole number, a bad type or context.
            RecordNotFoundError: the source or the target does not exist.
            StoreError: the store cannot write.
        """
        relation = NewRelation.create(
            source_id, target_id, relation_type, context, max_bytes=self._max_bytes
        )
        return self._store.add_relation(relation)

    def consolidate(self, strategy: str = "balanced", days_back: float = 7) -> dict[str, Any]:
        """Learn from the last ``days_back`` days, and tidy the memories.

        Groups similar executions (failures by language and error signature, successes by
        their first line of code) and events into semantic pattern memories tagged
        ``pattern`` with counts (running it again updates the counts), merges near-duplicate
        memories into the older one, decays unused memories and prunes those that decayed
        below the strategy's floor. Strategies, from least to most work: ``minimal``,
        ``speed``, ``balanced``, ``quality`` (see :mod:`memory_store.consolidate`).

        Returns:
            ``{strategy, days_back, patterns_created, patterns_updated, memories_merged,
            memories_decayed, memories_pruned, executions_scanned, events_scanned,
            vectors_added, duration_seconds}``.

        Raises:
            RequestError: an unknown strategy, or days_back not above 0.
            StoreError: the store cannot be read or written.
        """
        chosen = strategy_named(strategy)
        return self._store.consolidate(chosen, check_days_back(days_back)).to_dict()


def _checked(generator: CodeGenerator) -> CodeGenerator:
    """Wrap a caller's generator so that code UTF-8 cannot encode counts as its failure."""

    def generate(procedure: ProcedureRecord) -> str:
        code = generator(procedure)
        if isinstance(code, str):  # anything else: generate() reports it
            check_text(code, "the generated code")
        return code

    generate.__name__ = getattr(generator, "__name__", "custom")  # what the result names
    return generate
