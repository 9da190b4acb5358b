"""Keep every MCP message small enough for the clients that read it.

The official SDK's Streamable HTTP client refuses a Server-Sent Event over 1 MiB (the whole
call then fails with "SSE stream failed"), and a run's result alone may hold 1 MiB of stdout
and as much of stderr, which ``get_execution`` doubles with the events. So a tool's structured
content is cut to :data:`STRUCTURED_BUDGET` bytes of JSON and its text block to
:data:`TEXT_BUDGET` characters: long strings lose their middle (head and tail are kept, with a
marker saying how much was cut) and long lists their middle items. A result that was cut says
so in its ``truncated`` key.
"""

from __future__ import annotations

import json
from typing import Any

STRUCTURED_BUDGET = 640 * 1024
"""The most UTF-8 bytes of JSON a tool's structured content may take."""
TEXT_BUDGET = 32 * 1024
"""The most characters a tool's text block may take."""
MIN_STRING = 256
"""Strings are never cut below this many characters, nor lists below 4 items."""
TRUNCATED_NOTE = (
    "this result was too large for one MCP message (clients refuse messages over 1 MiB), so "
    "the middle of its longest texts and of its longest lists was cut; the HTTP API "
    "(GET /v1/executions/{id}) or the library returns it whole"
)


def json_size(data: Any) -> int:
    """The UTF-8 bytes of ``data`` as compact JSON (non-JSON values as their ``str``)."""
    text = json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":"))
    return len(text.encode("utf-8", "surrogatepass"))


def cut_text(text: str, limit: int, what: str = "text") -> str:
    """``text`` whole if it has at most ``limit`` characters, else its head and tail."""
    if len(text) <= limit:
        return text
    half = max(limit // 2 - 40, 1)
    cut = len(text) - 2 * half
    return f"{text[:half]}\n[... {cut} characters of {what} cut here ...]\n{text[-half:]}"


def fit(data: dict[str, Any], budget: int = STRUCTURED_BUDGET) -> dict[str, Any]:
    """``data`` itself when its JSON fits in ``budget`` bytes, else a cut copy that does.

    One knob cuts both: strings to at most ``c`` characters and lists to ``c // 64`` items
    (their head and tail), ``c`` the largest that fits.
    """
    if json_size(data) <= budget:
        return data
    room = budget - json_size({"truncated": TRUNCATED_NOTE}) - 16
    high = max(_longest(data, str), 64 * _longest(data, list), MIN_STRING)
    cap = _largest(MIN_STRING, high, lambda c: json_size(_cap(data, c)) <= room)
    if cap is None:
        return {"truncated": TRUNCATED_NOTE}
    return {**_cap(data, cap), "truncated": TRUNCATED_NOTE}


def _largest(low: int, high: int, fits: Any) -> int | None:
    """The largest n in [low, high] with ``fits(n)`` (monotone), or None."""
    if high < low or not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _longest(data: Any, kind: type[str] | type[list[Any]]) -> int:
    """The length of the longest ``kind`` (str or list) in ``data``."""
    found = len(data) if isinstance(data, str | list) and isinstance(data, kind) else 0
    if isinstance(data, dict):
        children: Any = data.values()
    elif isinstance(data, list | tuple):
        children = data
    else:
        return found
    return max([found, *(_longest(child, kind) for child in children)])


def _cap(data: Any, chars: int) -> Any:
    """A copy of ``data``: strings cut to about ``chars``, lists to ``chars // 64`` items."""
    if isinstance(data, str):
        return cut_text(data, chars)
    if isinstance(data, dict):
        return {key: _cap(value, chars) for key, value in data.items()}
    if isinstance(data, list | tuple):
        items = max(chars // 64, 2)
        kept = list(data)
        if len(kept) > items:  # the head and the tail (a run's exit event is its last)
            kept = kept[: items - items // 2] + kept[len(kept) - items // 2 :]
        return [_cap(value, chars) for value in kept]
    return data
