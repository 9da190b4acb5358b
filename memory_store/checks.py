"""Checks and normalisation of what callers hand the memory store (pure).

Every function raises :class:`~orchestrator.errors.RequestError` with a message that says what
to change. Labels (memory, event, entity and relation types, outcomes, categories, tags) are
free-form: trimmed, lower case, runs of whitespace made one space, at most 100 characters.

Text must be valid Unicode: a string that holds a lone surrogate (a code point from U+D800 to
U+DFFF on its own) is refused, at any depth of a context, keys included. Contexts nest dicts
and lists at most ``MAX_JSON_DEPTH`` (64) levels deep, the context itself being level 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from pydantic import JsonValue

from memory_store.errors import RecordTooLargeError
from orchestrator.errors import RequestError
from orchestrator.models import check_json_text, check_text, shown_number

DEFAULT_MAX_MEMORY_BYTES = 1024 * 1024
"""The default largest content or context, as UTF-8 bytes (``StoreOptions.max_memory_bytes``)."""

MAX_LABEL_CHARS = 100
MAX_TAGS = 50
MAX_LIMIT = 1000


MAX_OBJECT_ID = 2**63 - 1
"""The largest id a record can have (SQL BIGINT)."""


def label(value: object, field: str) -> str:
    """Return a label normalised: trimmed, lower case, inner whitespace collapsed.

    Raises:
        RequestError: the value is not a string, holds a lone surrogate, is empty, or is over
            100 characters.

    """
    if not isinstance(value, str):
        raise RequestError(f"{field} must be a string, not {type(value).__name__}")
    check_text(value, field)
    normal = " ".join(value.split()).lower()
    if not normal:
        raise RequestError(f"{field} is empty: give a word such as 'semantic' or 'error'")
    if len(normal) > MAX_LABEL_CHARS:
        raise RequestError(
            f"{field} is {len(normal)} characters; the limit is {MAX_LABEL_CHARS}. "
            "Use a short word and put details in the content or the context."
        )
    return normal


def optional_label(value: object, field: str) -> str | None:
    """Return :func:`label` of the value, or None for None.

    Raises:
        RequestError: as :func:`label`.

    """
    return None if value is None else label(value, field)


def utf8_size(value: str) -> int:
    """Return the size of a string as UTF-8 bytes (lone surrogates, if any, counted as 3)."""
    return len(value.encode("utf-8", errors="surrogatepass"))


def json_size(value: object) -> int:
    """Return the size of JSON data as UTF-8 JSON text (keys sorted), as :func:`context` counts."""
    return utf8_size(json.dumps(value, ensure_ascii=False, sort_keys=True))


def within_limit(field: str, size: int, max_bytes: int, *, as_json: bool = False) -> None:
    """Refuse a size over the store's ``max_memory_bytes``, saying what to change.

    Raises:
        RecordTooLargeError: ``size`` is over ``max_bytes``.

    """
    if size > max_bytes:
        raise RecordTooLargeError(
            f"{field} is {size} bytes{' as JSON' if as_json else ''}; the limit is {max_bytes} "
            "bytes. Store a summary (or split it into several records), or raise "
            "max_memory_bytes (ATHENA_MAX_MEMORY_BYTES, StoreOptions.max_memory_bytes)."
        )


def content(value: object, field: str, max_bytes: int) -> str:
    """Return text content with its outer whitespace trimmed.

    Raises:
        RequestError: the value is not a string, holds a lone surrogate, is empty or blank, or
            is over ``max_bytes``.

    """
    if not isinstance(value, str):
        raise RequestError(f"{field} must be a string, not {type(value).__name__}")
    check_text(value, field)
    stripped = value.strip()
    if not stripped:
        raise RequestError(f"{field} is empty: give the text to remember")
    within_limit(field, utf8_size(stripped), max_bytes)
    return stripped


def context(
    value: object, max_bytes: int = DEFAULT_MAX_MEMORY_BYTES, *, field: str = "context"
) -> dict[str, JsonValue]:
    """Return a context dict as plain JSON data (None gives an empty dict).

    Args:
        value: the caller's dict.
        max_bytes: the largest size as JSON text, in UTF-8 bytes.
        field: the argument's name, for messages.

    Raises:
        RequestError: not a dict with string keys, a key or string with a lone surrogate,
            nested more than ``MAX_JSON_DEPTH`` levels, not JSON-serialisable, or over
            ``max_bytes``.

    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RequestError(f"{field} must be a dict or None, not {type(value).__name__}")
    if not all(isinstance(key, str) for key in value):
        raise RequestError(f"{field} keys must be strings")
    # Before json.dumps: lone surrogates cannot be encoded, and deep nesting makes it recurse.
    check_json_text(value, field)
    try:
        text = json.dumps(dict(value), allow_nan=False, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise RequestError(
            f"{field} must be JSON-serialisable: {exc}. Use dicts, lists, strings, numbers, "
            "booleans and None."
        ) from exc
    within_limit(field, utf8_size(text), max_bytes, as_json=True)
    loaded: dict[str, JsonValue] = json.loads(text)
    return loaded


def tags(value: object, field: str = "tags") -> tuple[str, ...]:
    """Return tags as normalised labels, duplicates and blanks dropped, order kept.

    A single string is one tag. None gives no tags.

    Args:
        value: a string or a list of strings.
        field: the argument's name, for messages (``kinds`` when kinds are given this way).

    Raises:
        RequestError: not a string or a list of strings, a tag with a lone surrogate or over
            100 characters, or more than 50 tags.

    """
    if value is None:
        return ()
    single = isinstance(value, str)
    items: Iterable[object] = [value] if single else _iterable(value, field)
    found: dict[str, None] = {}
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise RequestError(f"{field} must be strings, not {type(item).__name__}")
        if item.strip():
            found[label(item, field if single else f"{field}[{index}]")] = None
    if len(found) > MAX_TAGS:
        raise RequestError(f"{len(found)} {field}; the limit is {MAX_TAGS}")
    return tuple(found)


def _iterable(value: object, field: str) -> Iterable[object]:
    if isinstance(value, Mapping | bytes) or not isinstance(value, Iterable):
        raise RequestError(f"{field} must be a list of strings, not {type(value).__name__}")
    return value


def object_id(value: object, field: str = "id") -> int:
    """Return a store id: an int, or a string of ASCII digits (as JSON clients send them).

    Ids are SQL ``BIGINT`` values, so an id above ``MAX_OBJECT_ID`` (2**63 - 1) is refused here
    rather than overflowing in the database driver.

    Raises:
        RequestError: anything else, or an id below 1 or above ``MAX_OBJECT_ID``.

    """
    if isinstance(value, str):
        digits = value.strip()
        # isdigit() alone admits "²" and other digits int() refuses; cap the length before int().
        if digits.isascii() and digits.isdigit() and len(digits) <= 20:
            value = int(digits)
    if isinstance(value, bool) or not isinstance(value, int):
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "..."
        raise RequestError(f"{field} must be a whole number, not {shown!r}")
    if value < 1:
        raise RequestError(f"{field} must be 1 or more, not {value}")
    if value > MAX_OBJECT_ID:
        raise RequestError(f"{field} must be at most {MAX_OBJECT_ID} (2**63 - 1): no record has it")
    return value


def limit(value: object, field: str = "limit") -> int:
    """Return a result limit between 1 and 1000.

    Raises:
        RequestError: not a whole number in that range.

    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise RequestError(
            f"{field} must be a whole number from 1 to {MAX_LIMIT}, not {shown_number(value)}"
        )
    return value


def moment(value: object, field: str, *, end_of_day: bool = False) -> datetime | None:
    """Return a point in time (UTC) from a datetime, a date or an ISO 8601 string.

    A naive datetime is taken as UTC. A bare date means its first instant, or with
    ``end_of_day`` the first instant of the next day (so an end date includes that day).

    Raises:
        RequestError: the value is of another type, not ISO 8601, or holds a lone surrogate.

    """
    if value is None:
        return None
    if isinstance(value, str):
        value = _parse_iso(check_text(value, field).strip(), field)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        start = datetime.combine(value, time(), tzinfo=UTC)
        return start + timedelta(days=1) if end_of_day else start
    raise RequestError(
        f"{field} must be a datetime, a date or an ISO 8601 string, not {type(value).__name__}"
    )


def _parse_iso(text: str, field: str) -> date | datetime:
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise RequestError(
            f"{field} {text!r} is not ISO 8601: write e.g. 2026-11-26 or 2026-11-26T14:30:00Z"
        ) from exc


def iso(moment_: datetime) -> str:
    """Return a UTC time as the store writes it (fixed width, so text order is time order)."""
    return moment_.astimezone(UTC).isoformat(timespec="microseconds")


def json_object(value: Any) -> dict[str, JsonValue]:
    """Return ``value`` if it is a dict, else an empty dict (for JSON read back from a row)."""
    return value if isinstance(value, dict) else {}
