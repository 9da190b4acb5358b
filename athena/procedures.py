"""Procedure code: deterministic generation from the stored steps, and validation (pure).

This lives in ``athena`` because validation applies the orchestrator's validator and strict
policy to what the store holds; the store itself imports neither.

:func:`template_code` needs no model. It writes a runnable Python module: a docstring listing
the steps, one function per step (named after it, typed, documented) that logs what it does
with the ``logging`` module, runs the step's own ``code`` when the step has some, and records
the step in a shared ``state`` dict; ``main(parameters)`` runs the steps in order inside
``try``/``except``, logs a failing step's traceback and returns 1, else 0; and an ``if
__name__ == "__main__":`` block that configures logging and exits with ``main``'s status.
In the sandbox, ``main`` receives the run's ``parameters``.

The caller's text (the procedure's name and category, the steps' names and descriptions) is
data: it reaches the module only inside escaped string literals, and the identifiers made from
it are ``[a-z0-9_]`` after a fixed prefix. A step's ``code`` is the caller's code by design and
becomes its function's body, but only when it parses on its own; otherwise nothing is generated
and the result says which step and why.

A :data:`CodeGenerator` (any callable from a procedure to source text, e.g. one that asks a
model) can replace the template; its code is validated the same way.

:func:`validate_code` checks syntax (the code must compile, not just parse), security (the
strict policy's rules, through :class:`~orchestrator.validator.CodeValidator`), docstrings,
error handling and type hints. Code that does not compile fails with score 0.
"""

from __future__ import annotations

import ast
import io
import re
import textwrap
import time
import tokenize
from datetime import UTC, datetime
from functools import cache

from memory_store.records import (
    CodeGenerator,
    CodeIssue,
    CodeValidation,
    GeneratedCode,
    ProcedureRecord,
)
from orchestrator.policy import Validation, load_policy
from orchestrator.validator import CodeValidator

WEIGHTS = {
    "syntax": 0.3,
    "security": 0.25,
    "docstring": 0.15,
    "error_handling": 0.15,
    "type_hints": 0.15,
}
SHARE_NEEDED = 0.8
"""Share of functions with docstrings (or type hints) for that check to pass."""


# --------------------------------------------------------------------------- generation
# The caller's text goes through repr() (in code) or _escaped() (in docstrings), never raw.

_INDENT = "    "
_ESCAPES = {"\\": "\\\\", '"': '\\"'}

_HEADER = """{docstring}

from __future__ import annotations

import logging
import sys
from typing import Any

State = dict[str, Any]

log = logging.getLogger({logger})
"""

_FOOTER = '''
STEPS = {steps}


def main(parameters: dict[str, Any] | None = None) -> int:
    """Run the steps in order; return 0 when all succeed, 1 when one fails."""
    state: State = {{"parameters": dict(parameters or {{}}), "completed": []}}
    for number, step in enumerate(STEPS, start=1):
        try:
            state = step(state)
        except Exception:
            log.exception("step %d of %d failed; stopping", number, len(STEPS))
            return 1
    log.info("all %d steps completed", len(STEPS))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(globals().get("parameters")))
'''


def _slug(text: str, limit: int = 40) -> str:
    """Return text as [a-z0-9_] (never empty); prefixed, it makes a safe identifier."""
    slug = re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")
    return slug[:limit].rstrip("_") or "step"


def _doc_line(text: str, limit: int = 88) -> str:
    """Return text on one line (whitespace collapsed), shortened to ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _escaped(text: str) -> str:
    """Return text escaped for the inside of a ``"`` or ``\"\"\"`` literal, on one line.

    Backslashes and double quotes are escaped, and so is every unprintable character (line
    breaks, NUL, U+0085, U+2028, lone surrogates...), so the literal holds the text exactly
    and nothing in it can close the literal or start a new line.
    """
    return "".join(_ESCAPES.get(c, c) if c.isprintable() else repr(c)[1:-1] for c in text)


def _docstring(lines: list[str], indent: str = "") -> str:
    """Return a ``\"\"\"`` docstring whose value is the lines joined by newlines."""
    body = f"\n{indent}".join(_escaped(line) for line in lines)
    return f'{indent}"""{body}"""'


def _step_source(code: str) -> str:
    """Return a step's code as it is checked and placed: LF line ends, dedented."""
    return textwrap.dedent(code.replace("\r\n", "\n").replace("\r", "\n")).strip("\n")


def _indented(source: str) -> str:
    """Indent code one level, leaving the lines inside multi-line strings as they are."""
    inside: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        inside.update(range(token.start[0] + 1, token.end[0] + 1))
    lines = []
    for number, line in enumerate(source.split("\n"), start=1):
        code = line.lstrip(" \t\f")
        if number in inside or not code:
            lines.append(line)
        else:  # a form feed resets Python's column count: indent after the last one
            lines.append(_INDENT + line[: len(line) - len(code)].rpartition("\f")[2] + code)
    return "\n".join(lines)


def _step_body(number: int, code: str) -> tuple[str, CodeIssue | None]:
    """Return a step's code indented for its function, or why it cannot be placed there."""
    source = _step_source(code)
    where = f"step {number}'s code"
    problem = _compile_error(source, "<step>", ast.PyCF_ONLY_AST)  # alone, `return` is fine
    if problem is not None:
        return "", _error("syntax", f"{where} does not parse: {_at(*problem)}")
    try:
        body = _indented(source)
    except (SyntaxError, tokenize.TokenError) as exc:
        return "", _error("syntax", f"{where} cannot be tokenized: {exc}")
    wrapped = f"def step(state):\n{_INDENT}pass\n{body}\n{_INDENT}return state\n"
    problem = _compile_error(wrapped, "<step>")
    if problem is not None:
        message, line = problem  # the wrapper puts two lines before the step's code
        return "", _error(
            "syntax", f"{where} does not compile in a function: {_at(message, line and line - 2)}"
        )
    changed = _changed(source, wrapped)
    return ("", _error("syntax", f"{where} {changed}")) if changed else (body, None)


def _changed(source: str, wrapped: str) -> str | None:
    """Return how the wrapped code differs from the code alone, or None when it holds the same."""
    placed = ast.parse(wrapped).body
    alone = ast.parse(source).body
    try:  # ast.dump recurses, and the compiler takes deeper code than Python's stack
        same = (
            len(placed) == 1
            and isinstance(placed[0], ast.FunctionDef)
            and ([ast.dump(s) for s in placed[0].body[1:-1]] == [ast.dump(s) for s in alone])
        )
    except RecursionError:
        return "is too deeply nested to check"
    return None if same else "changes meaning when indented into a function"


def _at(message: str, line: int | None) -> str:
    return message if line is None else f"{message} (line {line} of that code)"


def _step_function(number: int, procedure: ProcedureRecord) -> tuple[str, str, CodeIssue | None]:
    """Return a step's function name and source, and why its code cannot be used if so."""
    total = len(procedure.steps)
    step = procedure.steps[number - 1]
    name = f"step_{number}_{_slug(step.name or step.description)}"
    what = step.description
    lines = [
        f"def {name}(state: State) -> State:",
        _docstring([f"Step {number} of {total}: {_doc_line(what)}."], _INDENT),
        f"{_INDENT}log.info('step {number}/{total}: %s', {what!r})",
    ]
    issue = None
    if step.code and _step_source(step.code).strip():
        body, issue = _step_body(number, step.code)
        lines += [f"{_INDENT}# The step's own code, as remembered:", body]
    lines += [f"{_INDENT}state['completed'].append({what!r})", f"{_INDENT}return state"]
    return name, "\n".join(lines), issue


def _template(procedure: ProcedureRecord) -> tuple[str, list[CodeIssue]]:
    """Return the template's module and the issues that make it unusable (none: usable)."""
    made = [_step_function(n, procedure) for n in range(1, len(procedure.steps) + 1)]
    names = [name for name, _, _ in made]
    issues = [issue for _, _, issue in made if issue is not None]
    title = (
        f"{_doc_line(procedure.name, 60)} "
        f"(procedure {int(procedure.id)}, {_doc_line(procedure.category, 40)})."
    )
    listing = [
        f"{_INDENT}{n}. {_doc_line(s.description, 80)}" for n, s in enumerate(procedure.steps, 1)
    ]
    docstring = _docstring([
        title,
        "",
        "Steps:",
        *listing,
        "",
        "Generated from the remembered steps: each step is a function that logs what it does and",
        "records itself in a shared state; main() runs them in order and returns 1 if one fails.",
        "",
    ])  # fmt: skip
    header = _HEADER.format(docstring=docstring, logger=repr(f"procedure.{_slug(procedure.name)}"))
    steps = "\n\n\n".join(source for _, source, _ in made)
    footer = _FOOTER.format(steps=f"({names[0]},)" if len(names) == 1 else f"({', '.join(names)})")
    return header + "\n\n" + steps + "\n\n" + footer, issues


def template_code(procedure: ProcedureRecord) -> str:
    """Return a runnable Python module for a procedure (deterministic, no model).

    Raises:
        ValueError: a step's code does not parse (or does not compile inside a function).

    """
    code, issues = _template(procedure)
    if issues:
        raise ValueError("; ".join(i.message for i in issues))
    return code


def generate(procedure: ProcedureRecord, generator: CodeGenerator | None = None) -> GeneratedCode:
    """Generate code for a procedure (the template, or ``generator``) and validate it.

    It never raises. ``success: False`` with confidence 0 and the reason in ``issues`` when a
    generator raises or returns something other than source text, when a step's code does not
    parse (the template then gives no code), or when the code does not compile.
    """
    started = time.perf_counter()
    name = "template" if generator is None else getattr(generator, "__name__", "custom")
    try:
        if generator is None:
            code, issues = _template(procedure)
            if issues:
                return _failed(procedure, name, issues, started)
        else:
            code = generator(procedure)
        if not isinstance(code, str) or not code.strip():
            raise TypeError(f"the generator returned {type(code).__name__}, not Python source")
    except Exception as exc:  # a user's generator: report, never propagate
        message = f"the generator failed: {type(exc).__name__}: {exc}"
        return _failed(procedure, name, [_error("generator", message)], started)
    validation = validate_code(code, procedure.id)
    return GeneratedCode(
        success=validation.success,
        procedure_id=procedure.id,
        code=code,
        confidence=validation.quality_score,
        validation=validation,
        issues=validation.issues,
        generator=name,
        duration_seconds=_since(started),
        timestamp=_now(),
    )


def _failed(
    procedure: ProcedureRecord, generator: str, issues: list[CodeIssue], started: float
) -> GeneratedCode:
    return GeneratedCode(
        success=False, procedure_id=procedure.id, code="", confidence=0.0, validation=None,
        issues=tuple(issues), generator=generator, duration_seconds=_since(started),
        timestamp=_now(),
    )  # fmt: skip


# --------------------------------------------------------------------------- validation


@cache
def _strict_rules() -> Validation:
    return load_policy("strict").validation


def _compile_error(code: str, filename: str, flags: int = 0) -> tuple[str, int | None] | None:
    """Return why code does not compile (the message and line), or None when it compiles.

    ``compile`` rather than ``ast.parse``: it also rejects what parses but cannot run, such as
    ``return`` outside a function or a late ``from __future__`` import. With ``flags`` set to
    ``ast.PyCF_ONLY_AST`` it only parses.
    """
    try:
        compile(code, filename, "exec", flags=flags, dont_inherit=True)
    except SyntaxError as exc:  # with IndentationError and TabError
        return exc.msg, exc.lineno or _nul_line(code)
    except ValueError as exc:  # a NUL byte (before 3.12) or a lone surrogate
        return str(exc), _nul_line(code)
    except (RecursionError, MemoryError):  # the parser's stack overflows on deep nesting
        return "too deeply nested to compile", None
    return None


def _nul_line(code: str) -> int | None:
    """Return the line of the first NUL byte (the compiler does not say), if there is one."""
    return code.count("\n", 0, code.index("\0")) + 1 if "\0" in code else None


def _error(rule: str, message: str, line: int | None = None) -> CodeIssue:
    return CodeIssue(severity="error", rule=rule, message=message, line=line)


def _functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _typed(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    args = [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
    args = [a for a in args if a.arg not in {"self", "cls"}]
    return function.returns is not None and all(a.annotation is not None for a in args)


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0  # no functions: nothing is typed


def _quality(tree: ast.Module) -> tuple[dict[str, float], list[CodeIssue]]:
    """Return the shares for docstrings, error handling and type hints, and their issues."""
    functions = _functions(tree)
    documented = [ast.get_docstring(tree) is not None] + [
        ast.get_docstring(f) is not None for f in functions
    ]
    handled = any(isinstance(n, ast.Try) and n.handlers for n in ast.walk(tree))
    typed = [_typed(f) for f in functions]
    shares = {"docstring": _share(documented), "error_handling": float(handled)}
    shares["type_hints"] = _share(typed)
    issues = []
    if not documented[0]:
        issues.append(_warning("docstring", "the module has no docstring"))
    issues += [
        _warning("docstring", f"function {f.name}() has no docstring", f.lineno)
        for f, ok in zip(functions, documented[1:], strict=True)
        if not ok
    ]
    if not handled:
        issues.append(_warning("error_handling", "no try/except: a failing step ends the run"))
    issues += [
        _warning("type_hints", f"function {f.name}() lacks type hints", f.lineno)
        for f, ok in zip(functions, typed, strict=True)
        if not ok
    ]
    return shares, issues


def _warning(rule: str, message: str, line: int | None = None) -> CodeIssue:
    return CodeIssue(severity="warning", rule=rule, message=message, line=line)


def validate_code(code: str, procedure_id: int | None = None) -> CodeValidation:
    """Check Python code for syntax, security (strict policy), docstrings, errors, type hints.

    Returns:
        The checks, a quality score in [0, 1] (see :class:`CodeValidation`) and the issues.
        Code that does not compile (not only code that does not parse) fails every check
        and scores 0, with one ``syntax`` error giving the compiler's message and the line.

    """
    started = time.perf_counter()
    problem = _compile_error(code, "<procedure>")
    if problem is not None:
        message, line = problem
        issue = _error("syntax", f"the code does not compile: {message}", line)
        checks = dict.fromkeys(WEIGHTS, False)
        return CodeValidation(
            success=False, procedure_id=procedure_id, quality_score=0.0, checks=checks,
            issues=(issue,), duration_seconds=_since(started), timestamp=_now(),
        )  # fmt: skip
    tree = ast.parse(code)
    found = CodeValidator().validate(code, "python", _strict_rules())
    security = [
        CodeIssue(severity=i.severity, rule="security", message=i.message, line=i.line)
        for i in found
    ]
    secure = not any(i.severity == "error" for i in security)
    shares, issues = _quality(tree)
    shares.update(syntax=1.0, security=float(secure))
    score = round(sum(WEIGHTS[name] * share for name, share in shares.items()), 3)
    checks = {name: shares[name] >= SHARE_NEEDED for name in WEIGHTS}
    return CodeValidation(
        success=secure,
        procedure_id=procedure_id,
        quality_score=score,
        checks=checks,
        issues=(*security, *issues),
        duration_seconds=_since(started),
        timestamp=_now(),
    )


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 6)


def _now() -> datetime:
    return datetime.now(UTC)
