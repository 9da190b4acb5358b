"""Generated procedure code runs under the strict policy in a real sandbox."""

from __future__ import annotations

import pytest

from athena.mcp.memory_api import MemoryAPI

pytestmark = pytest.mark.docker

STEPS = [
    "Read the rows from the parameters",
    {
        "action": "Compute the average",
        "code": "rows = state['parameters'].get('rows', [])\n"
        "state['average'] = sum(rows) / len(rows)\n"
        "print('average', state['average'])",
    },
    {"name": "Report", "description": "Log the result"},
]


def test_generated_code_scores_and_runs_under_strict(api: MemoryAPI) -> None:
    """Code generated from a procedure scores above 0.7 and runs successfully under strict."""
    procedure = api.remember_procedure("Average of rows", STEPS, "analysis")
    made = api.generate_procedure_code(procedure)
    assert made["success"] and made["confidence"] > 0.7, made["issues"]

    run = api.execute_code(made["code"], parameters={"rows": [2, 4, 9]}, sandbox_policy="strict")

    assert run["success"], run["stderr"] or run["error"]
    assert run["sandbox_mode"] == "docker" and run["violations"] == []
    assert run["stdout"] == "average 5.0\n"
    for n in (1, 2, 3):
        assert f"step {n}/3" in run["stderr"]
    assert "all 3 steps completed" in run["stderr"]


def test_a_failing_step_fails_the_run_with_its_traceback(api: MemoryAPI) -> None:
    """With no rows the average divides by zero: exit 1, the step and the exception logged."""
    procedure = api.remember_procedure("Average of rows", STEPS, "analysis")
    run = api.execute_code(api.generate_procedure_code(procedure)["code"], parameters={"rows": []})
    assert not run["success"] and run["exit_code"] == 1
    assert "step 2 of 3 failed; stopping" in run["stderr"]
    assert "ZeroDivisionError: division by zero" in run["stderr"]
