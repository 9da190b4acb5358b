"""What the language checkers share: findings, name matching and the tree-sitter helpers."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from functools import cache
from typing import Literal

import tree_sitter

from orchestrator.languages import get_language
from orchestrator.models import ValidationIssue

Severity = Literal["error", "warning"]


def issue(severity: Severity, rule: str, line: int, message: str) -> ValidationIssue:
    """Return one finding."""
    return ValidationIssue(severity=severity, rule=rule, line=line, message=message)


def error(rule: str, line: int, message: str) -> ValidationIssue:
    """Return one finding of severity ``error``."""
    return issue("error", rule, line, message)


def match(name: str, entries: Iterable[str], separator: str) -> str | None:
    """Return the entry that covers ``name``: the name itself or one of its parents."""
    return next((e for e in entries if name == e or name.startswith(e + separator)), None)


def covered(name: str, entry: str, field: str) -> str:
    """Say which policy field covers ``name``, and through which entry when it is a parent."""
    return field if name == entry else f"{field} lists {entry!r}"


def shorten(text: str, limit: int = 60) -> str:
    """Return ``text`` cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- tree-sitter


@cache
def _language(name: str) -> tree_sitter.Language:
    grammar = get_language(name).grammar
    if grammar is None:
        raise LookupError(f"{name} has no tree-sitter grammar in the language registry")
    return tree_sitter.Language(importlib.import_module(grammar).language())


def parse(name: str, code: str) -> tree_sitter.Node:
    """Parse ``code`` with the tree-sitter grammar of language ``name``; return the root."""
    # A parser per call: parsers are cheap and not safe to share between threads.
    parser = tree_sitter.Parser(_language(name))
    return parser.parse(code.encode("utf-8", errors="surrogatepass")).root_node


def walk(root: tree_sitter.Node) -> Iterator[tree_sitter.Node]:
    """Yield every node in source order, without recursion (deep code must not crash us)."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def text(node: tree_sitter.Node) -> str:
    """Return a node's source text."""
    return (node.text or b"").decode("utf-8", errors="replace")


def snippet(node: tree_sitter.Node) -> str:
    """Return the start of a node's text for a message, without decoding all of it."""
    return shorten((node.text or b"")[:100].decode("utf-8", errors="replace"))


def line(node: tree_sitter.Node) -> int:
    """Return a node's 1-based first line."""
    return node.start_point.row + 1


def refused(rule: str, node: tree_sitter.Node, what: str, why: str) -> ValidationIssue:
    """An error at ``node``: what was found, the code itself, then why it is refused."""
    return error(rule, line(node), f"{what} ({snippet(node)}){why}")


def syntax_warning(root: tree_sitter.Node, language: str, runtime: str) -> list[ValidationIssue]:
    """Return one warning for the first parse error: the grammar may lag behind the runtime."""
    errors = (n for n in walk(root) if n.is_error or n.is_missing)
    bad = next(errors, None) if root.has_error else None
    if bad is None:
        return []
    what = f"missing {bad.type!r}" if bad.is_missing else f"unexpected {snippet(bad)!r}"
    message = (
        f"the {language} parser found a syntax error ({what}); {runtime} will report the exact "
        "error when the code runs"
    )
    return [issue("warning", "syntax", line(bad), message)]
