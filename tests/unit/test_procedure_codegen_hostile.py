"""Procedure code from hostile text: the caller's words stay string data, the module compiles."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path

import pytest
from pydantic import JsonValue

from athena.procedures import generate, template_code, validate_code
from memory_store import ProcedureRecord, ProcedureStep

NOW = datetime(2026, 11, 26)

PAYLOADS = {
    "triple double quotes": '"""\nimport os\nos.system(\'id\')\n"""',
    "triple single quotes": "'''\nimport os\nos.system('id')\n'''",
    "return at module level": '"""\nreturn 1\n"""',
    "trailing backslash": "ends with a backslash\\",
    "only a backslash": "\\",
    "backslash and quotes": '\\"""\\',
    "newline then code": "x\n__import__('os').system('id')",
    "backslash newline": "x\\\nimport os",
    "comment and newline": "# comment\nimport os\n#",
    "NUL": "nul\x00import os",
    "carriage return": "cr\rimport os\r",
    "line separator": "ls\u2028import os\u2029",
    "next line": "nel\x85import os",
    "form feed and tab": "\x0c\timport os",
    "escape sequences as text": "\\N{BULLET} \\x00 \\u2028 %s {} {{}}",
    "lone surrogate": "\ud800 import os",
    "very long": '"""\\\n' * 25_000,
}
WHERE = ["name", "category", "step", "everywhere"]


def procedure(text: str = "", where: str = "", code: str | None = None) -> ProcedureRecord:
    """Return a two-step procedure, with ``text`` in the fields ``where`` names."""

    def pick(field: str, benign: str) -> str:
        return text if where in (field, "everywhere") else benign

    return ProcedureRecord(
        id=42,
        name=pick("name", "Weekly report"),
        category=pick("category", "analysis"),
        steps=(
            ProcedureStep(name=pick("step", "Load"), description=pick("step", "Load the rows")),
            ProcedureStep(description=pick("step", "Publish"), code=code),
        ),
        context={},
        created_at=NOW,
    )


class _Skeleton(ast.NodeTransformer):
    """Blanks every string constant, so that only the generator's own structure is left."""

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        return ast.Constant(value="") if isinstance(node.value, str) else node


def skeleton(code: str) -> str:
    """Return the module's AST with strings blanked and step names reduced to their numbers."""
    dump = ast.dump(_Skeleton().visit(ast.parse(code)))
    return re.sub(r"step_(\d+)_[a-z0-9_]+", r"step_\1", dump)


def calls_and_imports(code: str) -> tuple[list[str], list[str]]:
    """Return what the module calls and what it imports."""
    nodes = list(ast.walk(ast.parse(code)))
    calls = sorted(ast.unparse(n.func) for n in nodes if isinstance(n, ast.Call))
    imports = sorted(ast.dump(n) for n in nodes if isinstance(n, ast.Import | ast.ImportFrom))
    return calls, imports


BENIGN = template_code(procedure())


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("text", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_hostile_text_stays_in_string_literals(text: str, where: str) -> None:
    """Whatever the text, the module compiles cleanly and has the benign module's structure."""
    made = generate(procedure(text, where))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no invalid escape sequence either
        compile(made.code, "<hostile>", "exec", dont_inherit=True)
    assert skeleton(made.code) == skeleton(BENIGN)
    assert calls_and_imports(made.code) == calls_and_imports(BENIGN)
    functions = [n.name for n in ast.walk(ast.parse(made.code)) if isinstance(n, ast.FunctionDef)]
    assert all(re.fullmatch(r"main|step_\d+_[a-z0-9_]+", name) for name in functions)
    assert made.validation is not None and made.success
    assert made.confidence == made.validation.quality_score == 1.0
    assert made.confidence == validate_code(made.code).quality_score
    assert made.issues == ()


@pytest.mark.parametrize("text", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_step_descriptions_survive_exactly(text: str) -> None:
    """The logged description is the caller's text, character for character."""
    tree = ast.parse(template_code(procedure(text, "step")))
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    assert text in strings


def test_the_docstring_holds_the_text_not_code() -> None:
    """The finding: code in the category is in the module's docstring, collapsed to one line."""
    tree = ast.parse(template_code(procedure(PAYLOADS["triple double quotes"], "category")))
    title = (ast.get_docstring(tree) or "").splitlines()[0]
    assert title == 'Weekly report (procedure 42, """ import os os.system(\'id\') """).'


def test_context_is_not_in_the_code() -> None:
    """The procedure's context, however hostile, does not change the generated code."""
    hostile: dict[str, JsonValue] = {k: v for k, v in PAYLOADS.items() if "\ud800" not in v}
    assert template_code(procedure().model_copy(update={"context": hostile})) == BENIGN


def test_a_hostile_module_runs(tmp_path: Path) -> None:
    """With every payload in one procedure, the module runs every step and exits 0."""
    steps = tuple(
        ProcedureStep(name=text, description=text)
        for text in PAYLOADS.values()
        if "\ud800" not in text  # a lone surrogate cannot be logged to a UTF-8 stream
    )
    hostile = procedure(
        PAYLOADS["triple double quotes"], "everywhere"
    ).model_copy(update={"steps": steps})  # fmt: skip
    script = tmp_path / "procedure.py"
    script.write_text(template_code(hostile), encoding="utf-8")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == b""
    assert f"all {len(steps)} steps completed".encode() in run.stderr


BROKEN_STEP_CODE = {
    "unclosed bracket": ("x = (", "does not parse: '(' was never closed (line 1"),
    "unterminated string": ('x = 1\ny = """', "does not parse: unterminated triple-quoted"),
    "trailing backslash": ("x = 1 \\", "does not parse"),
    "header without body": ("if x:", "does not parse"),
    "NUL": ("x = 1\n\x00", "does not parse: source code string cannot contain null bytes"),
    "nonlocal": ("nonlocal x", "does not compile in a function: no binding for nonlocal"),
    "future import": ("from __future__ import annotations", "does not compile in a function"),
    "await": ("await x", "does not compile in a function: 'await' outside async"),
    "duplicate argument": ("x = 1\ndef f(a, a):\n    pass", "duplicate argument 'a' in"),
    "deep for the checker": ("x = " + "-" * 2_000 + "1", "too deeply nested"),
    "deep for the parser": ("x = " + "-" * 200_000 + "1", "too deeply nested"),
}


@pytest.mark.parametrize(
    ("code", "why"), BROKEN_STEP_CODE.values(), ids=BROKEN_STEP_CODE.keys()
)  # fmt: skip
def test_step_code_that_does_not_parse_generates_nothing(code: str, why: str) -> None:
    """A step's code that does not parse (or compile in a function) fails, naming the step."""
    made = generate(procedure(code=code))
    assert not made.success and made.confidence == 0.0
    assert made.code == "" and made.validation is None and len(made.issues) == 1
    issue = made.issues[0]
    assert (issue.rule, issue.severity) == ("syntax", "error")
    assert issue.message.startswith("step 2's code ") and why in issue.message
    with pytest.raises(ValueError, match="step 2's code"):
        template_code(procedure(code=code))


STEP_CODE_KEPT = {
    "multi-line string": ('s = """a\n  b\nc"""\nprint(repr(s))', "'a\\n  b\\nc'\n"),
    "CRLF line ends": ("x = 1\r\nif x:\r\n    print(x)\r\n", "1\n"),
    "CR line ends": ("x = 2\rprint(x)", "2\n"),
    "continued string": ("print('a\\\nb')", "ab\n"),
    "form feed": ("\x0cx = 3\n\x0c\nprint(x)", "3\n"),
    "indented as given": ("    x = 4\n    print(x)", "4\n"),
    "early return": ("print(5)\nreturn state", "5\n"),
    "quotes in a comment": ('print(6)  # """ \\', "6\n"),
}


@pytest.mark.parametrize(
    ("code", "stdout"), STEP_CODE_KEPT.values(), ids=STEP_CODE_KEPT.keys()
)  # fmt: skip
def test_step_code_means_what_it_meant(code: str, stdout: str, tmp_path: Path) -> None:
    """Indented into its function, a step's code runs as it would on its own."""
    made = generate(procedure(code=code))
    assert made.success and made.validation is not None
    assert made.confidence == made.validation.quality_score == 1.0
    script = tmp_path / "procedure.py"
    script.write_text(made.code)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (0, stdout), run.stderr
