"""The attempt marker: proof that hostile code reached its attempt before it is called contained.

A snippet that breaks before its attempt (a syntax error, a missing module, a crash on its first
line) leaves the host exactly as a contained one does. So every hostile run gets a fresh nonce,
its code prints the line ``athena-attempt-<nonce>`` just before the attempt, and the judge counts
the run as contained only when that line is in its output; without it the run was *not
attempted*, a verdict of its own. Our own cases put the line by hand (a ``@ATTEMPT@`` line where
the attempt begins); corpus snippets get it injected before their body (:meth:`Marker.inject`).

The statement builds the line from two parts, so an error message quoting the source (a
traceback, bash's syntax errors) never prints it whole.
"""

from __future__ import annotations

import ast
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PLACEHOLDER = "@ATTEMPT@"
PREFIX = "athena-attempt"
_STATEMENTS = {
    "python": "print({prefix!r}, {nonce!r}, sep='-', flush=True)",
    "bash": "printf '%s-%s\\n' {prefix} {nonce}",
    "javascript": "console.log([{prefix!r}, {nonce!r}].join('-'));",
    "ruby": "puts [{prefix!r}, {nonce!r}].join('-')",
}
# Top-level statements that set a Python snippet up rather than attempt anything.
_PREAMBLE = (ast.Import, ast.ImportFrom)


@dataclass(frozen=True)
class Marker:
    """One run's attempt marker."""

    nonce: str

    @classmethod
    def fresh(cls) -> Marker:
        """A marker with a new random nonce."""
        return cls(secrets.token_hex(8))

    @property
    def line(self) -> str:
        """The line the code prints just before its attempt."""
        return f"{PREFIX}-{self.nonce}"

    def statement(self, language: str) -> str:
        """The statement of ``language`` that prints :attr:`line` (flushed at once)."""
        return _STATEMENTS[language].format(prefix=PREFIX, nonce=self.nonce)

    def place(self, code: str, language: str) -> str:
        """Put the print where the case's ``@ATTEMPT@`` placeholder stands.

        Raises:
            ValueError: the code has no placeholder (the case does not say where it attempts).
        """
        if PLACEHOLDER not in code:
            raise ValueError(f"a hostile case must mark its attempt with a {PLACEHOLDER} line")
        return code.replace(PLACEHOLDER, self.statement(language))

    def inject(self, code: str, language: str) -> str:
        """Put the print before a corpus snippet's body: after a Python snippet's leading imports
        (a missing module stops it before the marker), first in a bash or JavaScript snippet.

        Python that does not parse is returned unchanged: it never runs, so never prints it.
        """
        if language != "python":
            return f"{self.statement(language)}\n{code}"
        try:
            body = ast.parse(code).body
        except (SyntaxError, ValueError):
            return code
        first = next((s for s in body if not _is_preamble(s)), None)
        lines = code.splitlines(keepends=True)
        at = len(lines) if first is None else _first_line(first) - 1
        if lines[at - 1 : at] and not lines[at - 1].endswith("\n"):
            lines[at - 1] += "\n"
        return "".join([*lines[:at], self.statement(language) + "\n", *lines[at:]])

    def seen(self, result: Mapping[str, Any]) -> bool:
        """Whether the run printed the marker line, whole, on stdout or stderr."""
        streams = (result.get("stdout") or "", result.get("stderr") or "")
        return any(self.line in text.splitlines() for text in streams)

    def not_attempted(self, result: Mapping[str, Any]) -> str | None:
        """None when the run printed the marker; else why it stopped before (error or stderr)."""
        if self.seen(result):
            return None
        why = result.get("error") or (result.get("stderr") or "")[-300:].strip() or "no output"
        return f"never reached its attempt marker: {why}"


def _is_preamble(statement: ast.stmt) -> bool:
    docstring = isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
    return docstring or isinstance(statement, _PREAMBLE)


def _first_line(statement: ast.stmt) -> int:
    """Where a statement begins: a decorated definition begins at its first decorator."""
    decorators: list[ast.expr] = getattr(statement, "decorator_list", [])
    return min([statement.lineno, *(d.lineno for d in decorators)])
