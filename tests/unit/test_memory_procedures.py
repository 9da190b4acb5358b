"""Procedure code: deterministic generation that runs, validation that scores it."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from athena.procedures import generate, template_code, validate_code
from memory_store import ProcedureRecord, ProcedureStep

NOW = datetime(2026, 11, 26)


def procedure(*steps: ProcedureStep | str, name: str = "Weekly report") -> ProcedureRecord:
    return ProcedureRecord(
        id=42,
        name=name,
        category="analysis",
        steps=tuple(
            s if isinstance(s, ProcedureStep) else ProcedureStep(description=s) for s in steps
        ),
        context={},
        created_at=NOW,
    )


REPORT = procedure(
    "Load the sales rows from the parameters",
    ProcedureStep(
        description="Compute the total",
        code="rows = state['parameters'].get('rows', [])\nstate['total'] = sum(rows)\nprint('total', state['total'])",
    ),
    ProcedureStep(name="Publish", description='Post the """summary""" \\ to the channel'),
)


def run_module(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "procedure.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)


def test_generation_is_deterministic_and_complete() -> None:
    """The template gives the same module every time, with docstring, main, logging and steps."""
    code = template_code(REPORT)
    assert code == template_code(REPORT)
    assert code.startswith('"""Weekly report (procedure 42, analysis).')
    for part in (
        "def step_1_load_the_sales_rows_from_the_parameters(state: State) -> State:",
        "def step_2_compute_the_total(state: State) -> State:",
        "def step_3_publish(state: State) -> State:",
        "def main(parameters: dict[str, Any] | None = None) -> int:",
        "log.info('step 2/3: %s', 'Compute the total')",
        "except Exception:",
        'if __name__ == "__main__":',
        "import logging",
    ):
        assert part in code, part


def test_generated_code_scores_above_threshold() -> None:
    """The template's code passes every check and scores above 0.7."""
    made = generate(REPORT)
    assert made.success and made.generator == "template"
    assert made.confidence > 0.7 and made.validation is not None
    assert made.validation.checks == dict.fromkeys(
        ["syntax", "security", "docstring", "error_handling", "type_hints"], True
    )
    assert made.issues == ()


def test_generated_code_runs_and_logs_each_step(tmp_path: Path) -> None:
    """Run as a script, the module logs every step, runs step code and exits 0."""
    result = run_module(template_code(REPORT), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "total 0\n"
    for n in (1, 2, 3):
        assert f"step {n}/3" in result.stderr
    assert "all 3 steps completed" in result.stderr


def test_a_failing_step_is_logged_and_exits_1(tmp_path: Path) -> None:
    """A step whose code raises is logged with its traceback; main returns 1; later steps skip."""
    broken = procedure(ProcedureStep(description="divide", code="1 / 0"), "never reached")
    result = run_module(template_code(broken), tmp_path)
    assert result.returncode == 1
    assert "step 1 of 2 failed; stopping" in result.stderr and "ZeroDivisionError" in result.stderr
    assert "step 2/2" not in result.stderr


def test_hostile_descriptions_stay_data(tmp_path: Path) -> None:
    """Quotes, backslashes and code in names and descriptions never become code."""
    nasty = procedure(
        '"""; import os; os.system("x") #', "'); raise SystemExit(3) #", name='x"""\\'
    )
    made = generate(nasty)
    assert made.success and made.confidence > 0.7
    assert run_module(made.code, tmp_path).returncode == 0


def test_a_custom_generator_replaces_the_template() -> None:
    """Any callable from a procedure to source text generates; its code is validated."""

    def bare(record: ProcedureRecord) -> str:
        return f"print({record.name!r})\n"

    made = generate(REPORT, bare)
    assert made.generator == "bare" and made.code == "print('Weekly report')\n"
    assert made.success and made.confidence == 0.55  # syntax and security only
    assert {i.rule for i in made.issues} == {"docstring", "error_handling"}


@pytest.mark.parametrize("result", [RuntimeError("model offline"), None, 42])
def test_a_failing_generator_is_reported_not_raised(result: object) -> None:
    """A generator that raises or returns no text gives success False and the reason."""

    def broken(record: ProcedureRecord) -> str:
        if isinstance(result, Exception):
            raise result
        return result  # type: ignore[return-value]

    made = generate(REPORT, broken)
    assert not made.success and made.code == "" and made.confidence == 0.0
    assert made.issues[0].rule == "generator" and "the generator failed" in made.issues[0].message


def test_validation_rejects_syntax_errors() -> None:
    """Code that does not parse fails every check and scores 0, with the line."""
    checked = validate_code("def f(:\n    pass\n")
    assert not checked.success and checked.quality_score == 0.0
    assert set(checked.checks.values()) == {False}
    assert checked.issues[0].rule == "syntax" and checked.issues[0].line == 1


def test_validation_applies_the_strict_policy() -> None:
    """Forbidden imports and calls fail the security check."""
    checked = validate_code(
        '"""Doc."""\nimport subprocess\n\ntry:\n    eval("1")\nexcept Exception:\n    pass\n'
    )
    assert not checked.success and not checked.checks["security"]
    messages = " ".join(i.message for i in checked.issues if i.rule == "security")
    assert "subprocess" in messages and "eval" in messages
    assert checked.quality_score < 0.8


def test_validation_scores_partial_docstrings_and_hints() -> None:
    """Docstrings and type hints count by share of functions; try/except is required."""
    code = '"""Doc."""\n\ndef f(x: int) -> int:\n    """F."""\n    return x\n\ndef g(y):\n    return y\n'
    checked = validate_code(code, procedure_id=7)
    assert checked.success and checked.procedure_id == 7
    assert checked.checks == {
        "syntax": True, "security": True, "docstring": False, "error_handling": False, "type_hints": False,
    }  # fmt: skip
    # 0.3 + 0.25 + 0.15 * 2/3 (docstrings) + 0 + 0.15 * 1/2 (hints)
    assert checked.quality_score == pytest.approx(0.725, abs=0.001)
    assert {(i.rule, i.line) for i in checked.issues} == {
        ("docstring", 7), ("error_handling", None), ("type_hints", 7),
    }  # fmt: skip


def test_validation_result_shape() -> None:
    """The dict has success, procedure_id, quality_score, checks, issues, duration, timestamp."""
    data = validate_code("x = 1\n").to_dict()
    assert set(data) == {
        "success", "procedure_id", "quality_score", "checks", "issues", "duration_seconds", "timestamp",
    }  # fmt: skip
    assert set(data["issues"][0]) == {"severity", "message", "line", "rule"}


NOT_COMPILING = {
    "return outside a function": ("return 1\n", 1, "'return' outside function"),
    "late future import": (
        '"""Doc."""\nx = 1\nfrom __future__ import annotations\n',
        3,
        "beginning",
    ),
    "duplicate argument": ("def f(a, a) -> None:\n    pass\n", 1, "duplicate argument 'a'"),
    "break outside a loop": ("x = 1\nbreak\n", 2, "'break' outside loop"),
    "nonlocal at module level": ("nonlocal x\n", 1, "nonlocal declaration not allowed"),
    "NUL byte": ("x = 1\ny = 2\x00\n", 2, "null bytes"),
    "lone surrogate": ("x = '\ud800'\n", None, "surrogates not allowed"),
}


@pytest.mark.parametrize(
    ("code", "line", "why"), NOT_COMPILING.values(), ids=NOT_COMPILING.keys()
)  # fmt: skip
def test_code_that_parses_but_does_not_compile_fails(code: str, line: int | None, why: str) -> None:
    """Validation compiles: what parses but cannot run fails every check, scores 0, says where."""
    checked = validate_code(code, procedure_id=42)
    assert not checked.success and checked.quality_score == 0.0
    assert set(checked.checks.values()) == {False} and len(checked.issues) == 1
    issue = checked.issues[0]
    assert (issue.rule, issue.severity, issue.line) == ("syntax", "error", line)
    assert issue.message.startswith("the code does not compile: ") and why in issue.message


@pytest.mark.parametrize(
    ("code", "line", "why"), NOT_COMPILING.values(), ids=NOT_COMPILING.keys()
)  # fmt: skip
def test_a_generator_whose_code_does_not_compile_fails(
    code: str, line: int | None, why: str
) -> None:
    """A custom generator's module that does not compile is success False, confidence 0."""
    made = generate(REPORT, lambda record: code)
    assert not made.success and made.confidence == 0.0 and made.code == code
    assert made.validation is not None and made.validation.quality_score == 0.0
    assert [(i.rule, i.line) for i in made.issues] == [("syntax", line)]
    assert why in made.issues[0].message


def test_too_deeply_nested_code_fails_without_raising() -> None:
    """Code too deep for the parser is reported, not raised."""
    checked = validate_code("x = " + "-" * 200_000 + "1\n")
    assert not checked.success and checked.quality_score == 0.0
    assert checked.issues[0].rule == "syntax"


def test_a_broken_step_is_reported_not_generated() -> None:
    """A step whose code does not parse: no module, success False, confidence 0, the step named."""
    broken = procedure("fine", ProcedureStep(description="half", code="total = (1 +\n"))
    made = generate(broken)
    assert not made.success and made.confidence == 0.0 and made.code == ""
    assert [(i.rule, i.severity) for i in made.issues] == [("syntax", "error")]
    assert made.issues[0].message == (
        "step 2's code does not parse: '(' was never closed (line 1 of that code)"
    )
