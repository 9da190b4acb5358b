"""Procedure code: deterministic generation from the stored steps, and validation (pure).

:func:`template_code` needs no model. It writes a runnable Python module: a docstring listing
the steps, one function per step (named after it, typed, documented) that logs what it does
with the ``logging`` module, runs the step's own ``code`` when the step has some, and records
the step in a shared ``state`` dict; ``main(parameters)`` runs the steps in order inside
``try``/``except``, logs a failing step's traceback and returns 1, else 0; and an ``if
__name__ == "__main__":`` block that configures logging and exits with ``main``'s status.
In the sandbox, ``main`` receives the run's ``parameters``.

A :data:`CodeGenerator` (any callable from a procedure to source text, e.g. one that asks a
model) can replace the template; its code is validated the same way.

:func:`validate_code` checks syntax (``ast``), security (the strict policy's rules, through
:class:`~orchestrator.validator.CodeValidator`), docstrings, error handling and type hints.
"""

from __future__ import annotations

import ast
import re
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache

from memory_store.models import CodeIssue, CodeValidation, GeneratedCode, ProcedureRecord
from orchestrator.policy import Validation, load_policy
from orchestrator.validator import CodeValidator

CodeGenerator = Callable[[ProcedureRecord], str]
"""Makes Python source from a procedure (e.g. by asking a model)."""

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


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")
    return slug[:limit].rstrip("_") or "step"


def _doc_line(text: str, limit: int = 88) -> str:
    """Return text fit for a docstring line: one line, no backslashes or triple quotes."""
    line = " ".join(text.split()).replace("\\", "/").replace('"""', "'''")
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _step_function(number: int, total: int, procedure: ProcedureRecord) -> str:
    step = procedure.steps[number - 1]
    name = f"step_{number}_{_slug(step.name or step.description)}"
    what = step.description
    body = [
        f'    """Step {number} of {total}: {_doc_line(what)}."""',
        f"    log.info('step {number}/{total}: %s', {what!r})",
    ]
    if step.code:
        body.append("    # The step's own code, as remembered:")
        body += textwrap.indent(textwrap.dedent(step.code).strip("\n"), "    ").splitlines()
    body += [f"    state['completed'].append({what!r})", "    return state"]
    return "\n".join([f"def {name}(state: State) -> State:", *body])


def template_code(procedure: ProcedureRecord) -> str:
    """Return a runnable Python module for a procedure (deterministic, no model)."""
    total = len(procedure.steps)
    steps = [_step_function(n, total, procedure) for n in range(1, total + 1)]
    names = [s.split("(", 1)[0].removeprefix("def ") for s in steps]
    listing = "\n".join(
        f"    {n}. {_doc_line(s.description, 80)}" for n, s in enumerate(procedure.steps, 1)
    )
    logger = f"procedure.{_slug(procedure.name)}"
    title = f"{_doc_line(procedure.name, 60)} (procedure {procedure.id}, {procedure.category})"
    header = f'''"""{title}.

Steps:
{listing}

Generated from the remembered steps: each step is a function that logs what it does and
records itself in a shared state; main() runs them in order and returns 1 if one fails.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

State = dict[str, Any]

log = logging.getLogger({logger!r})
'''
    steps_tuple = f"({names[0]},)" if len(names) == 1 else f"({', '.join(names)})"
    footer = f'''
STEPS = {steps_tuple}


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
    return header + "\n\n" + "\n\n\n".join(steps) + "\n\n" + footer


def generate(procedure: ProcedureRecord, generator: CodeGenerator | None = None) -> GeneratedCode:
    """Generate code for a procedure (the template, or ``generator``) and validate it.

    A generator that raises or returns something other than a string gives ``success:
    False`` with the error in ``issues``; it never raises.
    """
    started = time.perf_counter()
    name = "template" if generator is None else getattr(generator, "__name__", "custom")
    try:
        code = (generator or template_code)(procedure)
        if not isinstance(code, str) or not code.strip():
            raise TypeError(f"the generator returned {type(code).__name__}, not Python source")
    except Exception as exc:  # a user's generator: report, never propagate
        message = f"the generator failed: {type(exc).__name__}: {exc}"
        issue = CodeIssue(severity="error", rule="generator", message=message)
        return GeneratedCode(
            success=False, procedure_id=procedure.id, code="", confidence=0.0, validation=None,
            issues=(issue,), generator=name, duration_seconds=_since(started), timestamp=_now(),
        )  # fmt: skip
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


# --------------------------------------------------------------------------- validation


@cache
def _strict_rules() -> Validation:
    return load_policy("strict").validation


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
        Code that does not parse scores 0.

    """
    started = time.perf_counter()
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        issue = CodeIssue(severity="error", rule="syntax", message=f"{exc.msg}", line=exc.lineno)
        checks = dict.fromkeys(WEIGHTS, False)
        return CodeValidation(
            success=False, procedure_id=procedure_id, quality_score=0.0, checks=checks,
            issues=(issue,), duration_seconds=_since(started), timestamp=_now(),
        )  # fmt: skip
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
