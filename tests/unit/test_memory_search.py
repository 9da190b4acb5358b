"""Query terms, MATCH expressions and scores (pure), and input normalisation."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta

import pytest

from memory_store import NewProcedure, RecallQuery
from memory_store.checks import label, moment, object_id, tags
from memory_store.requests import search_kinds
from memory_store.sql.search import (
    identifier_parts,
    index_text,
    jaccard,
    match_expression,
    query_terms,
    recency,
    relative,
    root,
    rrf,
    weighted,
)
from orchestrator.errors import RequestError

NOW = datetime(2026, 11, 26, tzinfo=UTC)


def test_query_terms_drop_stop_words_and_split_identifiers() -> None:
    """Stop words go, case folds, identifiers add their parts, duplicates collapse."""
    assert query_terms("Why did the ZeroDivisionError happen in the report?") == [
        "zerodivisionerror", "happen", "report", "zero", "division", "error",
    ]  # fmt: skip
    assert query_terms("the and of") == ["the", "and", "of"]  # nothing else: keep them
    assert query_terms("!!! ''' ***") == []


def test_identifier_parts_and_index_text() -> None:
    """camelCase and acronyms split; plain words do not."""
    assert identifier_parts("HTTPError getUserName plain") == [
        "http",
        "error",
        "get",
        "user",
        "name",
    ]
    assert index_text("raise KeyError") == "raise KeyError\nkey error"
    assert index_text("no identifiers") == "no identifiers"


def test_roots_strip_one_common_suffix() -> None:
    """root() strips one suffix when four letters remain."""
    assert [root(w) for w in ["deployment", "configuring", "tables", "runs", "data"]] == [
        "deploy", "configur", "tabl", "runs", "data",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "query",
    [
        "'; DROP TABLE memories; --",
        'say "hello',
        "a NEAR b AND c OR NOT d",
        "col:value ^start (group) -not * prefix*",
        '""""',
        "emoji 🚀 and ünïcödé",
    ],
)
def test_match_expressions_are_always_valid_fts5(query: str) -> None:
    """Whatever the query, the expression parses in FTS5 (or is None for no words)."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(body, tokenize = 'porter unicode61')")
    conn.execute("INSERT INTO t VALUES ('drop the table of memories, say hello near a')")
    expression = match_expression(query_terms(query))
    if expression is not None:
        conn.execute("SELECT rowid FROM t WHERE t MATCH ?", (expression,)).fetchall()
    assert expression is None or all(part.count('"') == 2 for part in expression.split(" OR "))


def test_match_expression_quotes_each_term_with_its_root() -> None:
    """Each term is quoted and OR-ed, its root too when different."""
    assert match_expression(["deployment", "logs"]) == '"deployment" OR "deploy" OR "logs"'
    assert match_expression([]) is None


def test_relative_and_rrf_scores_are_normalised() -> None:
    """relative() puts the best at 1; rrf() gives 1 to first-everywhere and sums ranks."""
    assert relative([2.0, 1.0, 0.0]) == [1.0, 0.5, 0.0]
    assert relative([]) == [] and relative([0.0]) == [0.0]
    fused = rrf([[1, 2, 3], [1, 3]])
    assert fused[1] == pytest.approx(1.0)
    assert fused[3] > fused[2]  # in both lists beats only in one
    assert rrf([[7]]) == {7: pytest.approx(1.0)}
    assert rrf([]) == {}


def test_weighting_is_mild_and_bounded() -> None:
    """Recency and importance move a score by at most 15%, and it stays in [0, 1]."""
    assert recency(NOW, NOW) == 1.0
    assert recency(NOW - timedelta(days=30), NOW) == pytest.approx(0.5)
    assert weighted(1.0, NOW, 1.0, NOW) == 1.0
    assert weighted(1.0, NOW - timedelta(days=3650), 0.0, NOW) == pytest.approx(0.85, abs=1e-3)
    assert weighted(2.0, NOW, 2.0, NOW) == 1.0 and weighted(-1.0, NOW, 0.5, NOW) == 0.0


def test_jaccard() -> None:
    """Jaccard similarity of word collections."""
    assert jaccard(["a", "b"], ["b", "c"]) == pytest.approx(1 / 3)
    assert jaccard([], []) == 1.0


# --------------------------------------------------------------------------- values


def test_labels_are_trimmed_lower_case_and_bounded() -> None:
    """Free-form labels: trimmed, lower case, inner whitespace collapsed, 100 chars at most."""
    assert label("  Partial   Success ", "outcome") == "partial success"
    with pytest.raises(RequestError, match="outcome is 101 characters"):
        label("x" * 101, "outcome")


def test_tags_accept_a_string_or_a_list() -> None:
    """One string is one tag; duplicates and blanks go; order is kept."""
    assert tags("Ops") == ("ops",)
    assert tags(["B", "a", "b", " "]) == ("b", "a")
    with pytest.raises(RequestError, match="list of strings"):
        tags({"a": 1})


def test_ids_accept_digit_strings() -> None:
    """Ids are ints or strings of digits, 1 or more; bools are not ids."""
    assert object_id(" 12 ") == 12
    for bad in (True, 1.5, "-3", None):
        with pytest.raises(RequestError):
            object_id(bad)


def test_ids_beyond_bigint_or_odd_digits_are_request_errors() -> None:
    """An id over 2**63 - 1, a non-ASCII digit or 5,000 digits is a RequestError, not a crash."""
    assert object_id(2**63 - 1) == 2**63 - 1
    for bad in (2**63, 10**30, "\u00b2", "9" * 5000, "\u0661"):
        with pytest.raises(RequestError):
            object_id(bad)


def test_moments_accept_dates_datetimes_and_iso_text() -> None:
    """Dates, naive or aware datetimes and ISO strings become UTC; an end date covers its day."""
    assert moment(date(2026, 1, 2), "d") == datetime(2026, 1, 2, tzinfo=UTC)
    assert moment("2026-01-02", "d", end_of_day=True) == datetime(2026, 1, 3, tzinfo=UTC)
    assert moment("2026-01-02T10:00:00Z", "d") == datetime(2026, 1, 2, 10, tzinfo=UTC)
    assert moment(datetime(2026, 1, 2, 10), "d") == datetime(2026, 1, 2, 10, tzinfo=UTC)
    with pytest.raises(RequestError, match="d must be"):
        moment(20260102, "d")


def test_kinds_accept_plurals_and_refuse_unknowns() -> None:
    """kinds: singular or plural, any case; unknown or empty lists are refused."""
    assert search_kinds(["Memories", "entity"]) == ("memory", "entity")
    assert search_kinds(None) == ("memory", "event", "execution", "procedure", "entity")
    for bad in (["relation"], [], "nope"):
        with pytest.raises(RequestError, match="choose from"):
            search_kinds(bad)


def test_procedure_steps_keep_details() -> None:
    """Steps take strings or dicts; aliases for the description; other fields kept as details."""
    made = NewProcedure.create(
        "p", ["one", {"step": "two", "name": "Second", "code": "x = 1", "retries": 3}]
    )
    assert [s.description for s in made.steps] == ["one", "two"]
    assert (made.steps[1].name, made.steps[1].code, made.steps[1].details) == (
        "Second",
        "x = 1",
        {"retries": 3},
    )


def test_recall_query_is_capped() -> None:
    """A very long query is accepted and cut; limits outside 1..1000 are refused."""
    assert len(RecallQuery.create("word " * 10_000).query) == 10_000
    with pytest.raises(RequestError, match="1 to 1000"):
        RecallQuery.create("x", limit=1001)
