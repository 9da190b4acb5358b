"""Keyword queries and scores, shared by the store backends (pure).

A query is never handed to the full-text engine as written. It is cut into words (letters and
digits; everything else, quotes and operators included, separates words), stop words are
dropped, identifiers are split (``ZeroDivisionError`` also gives ``zero``, ``division``,
``error``), and each word becomes a quoted term, OR-joined, with its root when a common
suffix comes off (``deployment`` also searches ``deploy``). So quotes, ``AND``/``OR``/``NOT``/
``NEAR``, ``*``, ``^``, ``:``, parentheses, ``-`` and SQL fragments are only words, or
nothing: they can neither break the query syntax nor inject.

The same terms feed both backends: SQLite's FTS5 gets quoted terms
(:func:`match_expression`), PostgreSQL one bound ``plainto_tsquery`` per term
(:mod:`memory_store.postgres.dialect`).

Scores: keyword relevance is the backend's score (BM25, ``ts_rank_cd``) relative to the best
hit of the query (the best is 1.0);
hybrid relevance is reciprocal rank fusion (RRF, k=60) of the keyword and vector rankings,
divided by its maximum (first in both lists gives 1.0). Either is then weighted mildly by
recency and importance: ``relevance * (0.85 + 0.10 * recency + 0.05 * importance)``, where
recency halves every 30 days. Scores are in [0, 1], higher is better.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

RRF_K = 60
BROAD_MATCHES = 2000
"""A term matching more records than this is too common to score every match of."""
RECENCY_HALF_LIFE_DAYS = 30.0
MAX_QUERY_TERMS = 24
MAX_TERM_CHARS = 64
MIN_ROOT_CHARS = 4
_BASE, _RECENCY, _IMPORTANCE = 0.85, 0.10, 0.05

STOP_WORDS = frozenset((
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are",
    "aren", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both",
    "but", "by", "can", "cannot", "could", "couldn", "did", "didn", "do", "does", "doesn",
    "doing", "don", "down", "during", "each", "few", "for", "from", "further", "had", "hadn",
    "has", "hasn", "have", "haven", "having", "he", "her", "here", "hers", "herself", "him",
    "himself", "his", "how", "i", "if", "in", "into", "is", "isn", "it", "its", "itself", "just",
    "let", "me", "more", "most", "mustn", "my", "myself", "no", "nor", "not", "of", "off", "on",
    "once", "only", "or", "other", "ought", "our", "ours", "ourselves", "out", "over", "own",
    "same", "shan", "she", "should", "shouldn", "so", "some", "such", "than", "that", "the",
    "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those",
    "through", "to", "too", "under", "until", "up", "very", "was", "wasn", "we", "were", "weren",
    "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "won",
    "would", "wouldn", "you", "your", "yours", "yourself", "yourselves", "s", "t", "ll", "re",
    "ve", "d", "m", "o", "y", "also", "get", "got", "ever",
))  # fmt: skip
"""English words too common to help ranking; removed from queries (never from the index)."""

_WORD = re.compile(r"[^\W_]+")
_CAMEL_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_IDENTIFIER = re.compile(r"\b[A-Za-z][a-z0-9]*[A-Z][A-Za-z0-9]*\b")


def words(text: str) -> list[str]:
    """Return the words of ``text``: runs of letters and digits, lower case."""
    return [w.lower() for w in _WORD.findall(text)]


def identifier_parts(text: str) -> list[str]:
    """Return the parts of camel-case identifiers in ``text`` (``ZeroDivisionError`` -> 3)."""
    parts: list[str] = []
    for identifier in _IDENTIFIER.findall(text):
        pieces = _CAMEL_PART.findall(identifier)
        if len(pieces) > 1:
            parts.extend(p.lower() for p in pieces)
    return parts


def index_text(text: str) -> str:
    """Return ``text`` as the full-text index holds it: with identifier parts appended.

    The tokenizer (``porter unicode61``) splits on ``_`` and punctuation but not inside
    ``camelCase``; appending the parts lets "division by zero" find ``ZeroDivisionError``.
    """
    parts = identifier_parts(text)
    return f"{text}\n{' '.join(parts)}" if parts else text


def query_terms(query: str) -> list[str]:
    """Return the distinct search terms of a query, stop words out (unless nothing else).

    Identifier parts are added after the identifier; at most 24 terms, each cut to 64 chars.
    """
    found: dict[str, None] = {}
    for word in [*words(query), *identifier_parts(query)]:
        found[word[:MAX_TERM_CHARS]] = None
    terms = [t for t in found if t not in STOP_WORDS] or list(found)
    return terms[:MAX_QUERY_TERMS]


_SUFFIXES = (
    "ations", "ation", "ments", "ment", "ness", "ings", "ing", "ions", "ion", "ities", "ity",
    "able", "ible", "ers", "er", "ed", "es", "ly", "s",
)  # fmt: skip


def root(term: str) -> str:
    """Return ``term`` without one common English suffix, when 4 or more letters remain.

    The index stems with Porter's algorithm, whose stems do not always meet
    (``deployment`` -> ``deploi``, ``deploy`` -> ``deploy``); searching the root too finds
    both.
    """
    for suffix in _SUFFIXES:
        if term.endswith(suffix) and len(term) - len(suffix) >= MIN_ROOT_CHARS:
            return term[: -len(suffix)]
    return term


def _quoted(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def term_expression(term: str) -> str:
    """Return the MATCH expression of one term: quoted, OR its :func:`root` when different."""
    stem = root(term)
    return _quoted(term) if stem == term else f"{_quoted(term)} OR {_quoted(stem)}"


def match_expression(terms: Sequence[str]) -> str | None:
    """Return an FTS5 MATCH expression OR-ing quoted terms (None for no terms).

    Each term matches as written (stemmed by the index) and as its :func:`root`
    (``deployment`` also finds ``deploy``); no prefix queries: they cost a scan of every
    word sharing the prefix.
    """
    return " OR ".join(term_expression(t) for t in terms) or None


def plan_scoring(terms: Sequence[str], count: Callable[[str], int]) -> tuple[list[str], bool]:
    """Choose the terms worth scoring, given ``count`` (a term's matches, capped past BROAD).

    Scoring (BM25, ts_rank_cd) costs about a microsecond per matching record, too much for a
    word found in most of 100,000 records. So a term matching more than
    :data:`BROAD_MATCHES` records is *broad*: it is left out when narrower terms exist (it
    would add little to their scores); the narrowest are kept within a budget of scored rows.

    Returns:
        The terms to score, in query order, and whether they are all broad (then only the
        :data:`BROAD_MATCHES` newest matches should be scored). No terms: nothing matches.

    """
    counts = {t: count(t) for t in terms}
    narrow = sorted((t for t in terms if counts[t] <= BROAD_MATCHES), key=counts.__getitem__)
    if not narrow:
        return list(terms), bool(terms)
    chosen: set[str] = set()
    budget = 0
    for term in narrow:  # the narrowest first, within a budget of scored rows
        if chosen and budget + counts[term] > 2 * BROAD_MATCHES:
            break
        chosen.add(term)
        budget += counts[term]
    return [t for t in terms if t in chosen and counts[t]], False


def relative(scores: Sequence[float]) -> list[float]:
    """Return scores divided by the best (all 0 when none is positive)."""
    best = max(scores, default=0.0)
    return [max(s, 0.0) / best if best > 0 else 0.0 for s in scores]


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> dict[int, float]:
    """Fuse rankings (ids, best first) by reciprocal rank fusion, normalised to [0, 1].

    Returns:
        id -> sum over rankings of ``1 / (k + rank)``, divided by ``len(rankings) / (k + 1)``,
        so an id ranked first everywhere scores 1.0.

    """
    if not rankings:
        return {}
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    top = len(rankings) / (k + 1)
    return {item: value / top for item, value in fused.items()}


def recency(created_at: datetime, now: datetime) -> float:
    """Return 1.0 for now, halving every 30 days (never above 1)."""
    age_days = max((now - created_at).total_seconds(), 0.0) / 86400
    return float(0.5 ** (age_days / RECENCY_HALF_LIFE_DAYS))


def weighted(relevance: float, created_at: datetime, importance: float, now: datetime) -> float:
    """Return the final score: relevance with mild recency and importance boosts, in [0, 1]."""
    boost = _BASE + _RECENCY * recency(created_at, now) + _IMPORTANCE * importance
    return round(min(max(relevance, 0.0), 1.0) * min(boost, 1.0), 6)


def jaccard(left: Iterable[str], right: Iterable[str]) -> float:
    """Return the Jaccard similarity of two word collections (1.0 for two empty ones)."""
    a, b = set(left), set(right)
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
