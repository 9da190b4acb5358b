r"""Text and JSON values at the boundaries: refused from callers, repaired from sandboxes (pure).

A Python string can hold surrogate code points (U+D800 to U+DFFF, e.g. ``"\ud800"``) that are
not part of a pair: UTF-8 cannot encode them, so they break JSON encoding, SQLite, PostgreSQL
and every transport. Deeply nested JSON values break in another way: encoding and decoding
them recurses, and Python raises ``RecursionError``. The rule of athena-sandbox:

- **Text from callers is refused.** Code, parameters and everything the memory API takes are
  checked before anything is run or stored; :func:`check_text` and :func:`check_json_text` raise
  :class:`~orchestrator.errors.RequestError` naming the argument (and the place inside it).
- **Text from a sandbox is repaired.** What the code's ``output`` decodes to has each lone
  surrogate replaced by U+FFFD (:func:`repair_json`), in keys and values at any depth, and the
  run keeps its success.
- **JSON values are nested at most** :data:`MAX_JSON_DEPTH` **levels deep** (the outermost dict
  or list is level 1). Deeper caller data is refused; a deeper ``output`` is dropped with a note.

Every walk here is iterative, so no input, however deep, makes these functions recurse. The
caller-facing checks are re-exported by :mod:`orchestrator.models` (the memory store imports
them from there).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.errors import RequestError

MAX_JSON_DEPTH = 64
"""The deepest nesting of dicts and lists accepted in a JSON value (the outermost is level 1)."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_KEY_SHOWN = 40  # characters of a key shown in a path; longer keys are shortened

# A place inside a JSON value, as a chain of links back to the outermost value:
# (the parent's place, the key or index, the id of the container at this place).
_Place = tuple["_Place", object, int] | None
_ROOT = object()  # the key of the outermost value's place


def find_lone_surrogate(text: str) -> int | None:
    """Return the index of the first surrogate code point in ``text``, or None when it has none.

    In a Python string every surrogate is a lone one: a proper pair is one code point.
    """
    if text.isascii():  # O(1) in CPython: the common case skips the search
        return None
    found = _SURROGATE.search(text)
    return None if found is None else found.start()


def _surrogate_message(what: str, text: str, index: int) -> str:
    return (
        f"{what} contains a lone surrogate (\\u{ord(text[index]):04x} at index {index}); "
        "pass valid Unicode text"
    )


def check_text(value: str, what: str) -> str:
    """Return ``value`` when UTF-8 can encode it.

    Args:
        value: text a caller passed.
        what: the argument's name, for the message (``content``, ``tags[2]``...).

    Raises:
        RequestError: the text holds a lone surrogate; the message names ``what``, the
            surrogate and its index.
    """
    index = find_lone_surrogate(value)
    if index is not None:
        raise RequestError(_surrogate_message(what, value, index))
    return value


def _steps(place: _Place) -> list[tuple[object, int]]:
    """The (key, container id) steps from the outermost value to ``place``."""
    steps = []
    while place is not None:
        place, key, ident = place
        steps.append((key, ident))
    return steps[::-1]


def _render(steps: list[tuple[object, int]], what: str, most: int | None = None) -> str:
    keys = [key for key, _ in steps if key is not _ROOT]
    shown = keys if most is None else keys[:most]
    parts = [what]
    for key in shown:
        short = key[:_KEY_SHOWN] + "..." if isinstance(key, str) and len(key) > _KEY_SHOWN else key
        parts.append(f"[{short!r}]")
    return "".join(parts) + ("..." if len(shown) < len(keys) else "")


def _too_deep(place: _Place, what: str, max_depth: int) -> RequestError:
    steps = _steps(place)
    first: dict[int, int] = {}
    for index, (_, ident) in enumerate(steps):
        if ident in first:  # a container holds itself: no depth would ever be enough
            return RequestError(
                f"{what} must be JSON-serialisable: {_render(steps[: first[ident] + 1], what)} "
                "contains itself. Pass plain data (dicts, lists, strings, numbers, booleans and "
                "None)."
            )
        first[ident] = index
    return RequestError(
        f"{what} is nested more than {max_depth} levels deep (at {_render(steps, what, 8)}); "
        f"pass flatter data: at most {max_depth} levels of dicts and lists"
    )


def check_json_text(value: object, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Check the text and the depth of a JSON-like value a caller passed, without recursing.

    Walks dicts (any mapping), lists and tuples; checks every string key and string value;
    leaves other values to the JSON encoder, which refuses what JSON cannot hold.

    Args:
        value: the caller's value (a dict, a list, a string...).
        what: the argument's name; messages give the place inside it (``context['a'][0]``).
        max_depth: the deepest nesting of dicts and lists accepted; the outermost is level 1.

    Raises:
        RequestError: a key or string holds a lone surrogate, the value is nested deeper than
            ``max_depth``, or a container holds itself.
    """
    if isinstance(value, str):
        check_text(value, what)
        return
    if not isinstance(value, Mapping | list | tuple):
        return
    root: _Place = (None, _ROOT, id(value))
    if max_depth < 1:
        raise _too_deep(root, what, max_depth)
    stack: list[tuple[object, int, _Place]] = [(value, 1, root)]
    while stack:
        node, depth, place = stack.pop()
        for key, child in _items(node):
            if isinstance(key, str) and (index := find_lone_surrogate(key)) is not None:
                where = f"a key of {_render(_steps(place), what)}"
                raise RequestError(_surrogate_message(where, key, index))
            if isinstance(child, str) and (index := find_lone_surrogate(child)) is not None:
                where = _render(_steps((place, key, 0)), what)
                raise RequestError(_surrogate_message(where, child, index))
            if isinstance(child, Mapping | list | tuple):
                below: _Place = (place, key, id(child))
                if depth >= max_depth:
                    raise _too_deep(below, what, max_depth)
                stack.append((child, depth + 1, below))


def _items(node: object) -> Iterable[tuple[object, object]]:
    if isinstance(node, Mapping):
        return node.items()
    if isinstance(node, list | tuple):
        return enumerate(node)
    return ()


def repair_text(text: str) -> str:
    """Return ``text`` with each lone surrogate replaced by U+FFFD (``text`` itself if none)."""
    if find_lone_surrogate(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text)


def repair_json(value: Any) -> Any:
    """Return a copy of a decoded JSON value with each lone surrogate replaced by U+FFFD.

    Keys and strings are repaired at any depth, without recursing; tuples become lists. Two
    keys that differ only in their surrogates become one (the later value is kept).
    """
    root = _repaired_shell(value)
    stack: list[tuple[Any, Any]] = [(value, root)]
    while stack:
        source, target = stack.pop()
        if isinstance(source, dict):
            for key, child in source.items():
                fixed = repair_text(key) if isinstance(key, str) else key
                target[fixed] = _repaired_child(child, stack)
        elif isinstance(source, list | tuple):
            target.extend([_repaired_child(child, stack) for child in source])
    return root


def _repaired_shell(value: Any) -> Any:
    if isinstance(value, str):
        return repair_text(value)
    if isinstance(value, dict):
        return {}
    if isinstance(value, list | tuple):
        return []
    return value


def _repaired_child(child: Any, stack: list[tuple[Any, Any]]) -> Any:
    shell = _repaired_shell(child)
    if isinstance(child, dict | list | tuple):
        stack.append((child, shell))  # filled in later: the shell is already in its place
    return shell


def json_depth(value: object, limit: int | None = None) -> int:
    """Return how deep dicts and lists nest in a decoded JSON value (a scalar is 0), iteratively.

    Args:
        value: a decoded JSON value (no container may hold itself unless ``limit`` is given).
        limit: stop as soon as the depth is known to be above it, and return that depth.
    """
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if limit is not None and deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest
