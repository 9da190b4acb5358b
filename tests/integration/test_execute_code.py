"""execute_code against the real engine: the result dict, languages, parameters, exit codes."""

from __future__ import annotations

from datetime import datetime

import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.languages import LANGUAGES
from tests.contract import ISSUE_RESULT_KEYS

pytestmark = pytest.mark.docker


def test_python_prints_and_result_has_every_key(api: MemoryAPI, sandbox_path: str) -> None:
    """print(2 + 2) runs in a Docker sandbox and the dict carries every documented key."""
    r = api.execute_code(
        code="print(2 + 2)",
        language="python",
        parameters=None,
        timeout_seconds=30,
        sandbox_policy=None,
    )
    assert r.keys() >= ISSUE_RESULT_KEYS
    assert (r["success"], r["stdout"], r["stderr"], r["exit_code"]) == (True, "4\n", "", 0)
    assert r["sandbox_mode"] == "docker"
    assert r["isolation"]["runtime"] == "runc" and r["isolation"]["path"] == sandbox_path
    assert r["language"] == "python" and r["policy"] == "strict"
    assert r["violations"] == [] and r["violation_details"] == [] and r["issues"] == []
    assert r["error"] is None and r["output"] is None
    assert len(r["sandbox_id"]) == 12 and r["execution_time_ms"] > 0
    assert datetime.fromisoformat(r["timestamp"]).utcoffset().total_seconds() == 0


@pytest.mark.parametrize(
    ("language", "code", "expected"),
    [
        ("javascript", "console.log(6 * 7)", "42\n"),
        ("JS", "console.log('alias')", "alias\n"),
        ("node", "process.stdout.write('n')", "n"),
        ("bash", "echo $((6 * 7))", "42\n"),
        ("sh", "printf sh", "sh"),
        ("Python", "print('case')", "case\n"),
    ],
)
def test_languages_and_aliases_run(api: MemoryAPI, language: str, code: str, expected: str) -> None:
    """JavaScript and bash run too; names are case-insensitive and js/node/sh are aliases."""
    r = api.execute_code(code, language)
    assert r["success"], r
    assert r["stdout"] == expected
    assert r["language"] in {language.name for language in LANGUAGES}


def test_python_sees_parameters_and_json_without_import(api: MemoryAPI) -> None:
    """Python code gets a global dict `parameters` and the json module without importing it."""
    code = "print(json.dumps({'sum': parameters['a'] + parameters['b'], 't': type(parameters).__name__}))"
    r = api.execute_code(code, "python", {"a": 2, "b": 3})
    assert r["stdout"] == '{"sum": 5, "t": "dict"}\n'


def test_javascript_sees_global_parameters(api: MemoryAPI) -> None:
    """JavaScript code sees a global object `parameters`."""
    r = api.execute_code(
        "console.log(parameters.items.length, typeof parameters)",
        "javascript",
        {"items": [1, 2, 3]},
    )
    assert r["stdout"] == "3 object\n"


def test_bash_gets_parameters_json_and_param_variables(api: MemoryAPI) -> None:
    """Bash gets PARAMETERS (JSON) and PARAM_<KEY> for top-level scalars with identifier keys."""
    code = 'echo "$PARAMETERS"; echo "$PARAM_NAME|$PARAM_COUNT|$PARAM_OK|${PARAM_NESTED-unset}"'
    params = {"name": "a b", "count": 3, "ok": True, "nested": {"x": 1}}
    r = api.execute_code(code, "bash", params)
    lines = r["stdout"].splitlines()
    assert lines[0] == '{"name": "a b", "count": 3, "ok": true, "nested": {"x": 1}}'
    assert lines[1] == "a b|3|true|unset"


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "print(parameters['evil'])"),
        ("javascript", "console.log(parameters.evil)"),
        ("bash", 'printf "%s\\n" "$PARAM_EVIL"'),
    ],
)
def test_parameters_travel_as_data_not_source(api: MemoryAPI, language: str, code: str) -> None:
    """A parameter that looks like code is printed literally, never executed."""
    evil = "'); import os; print('pwned'); (\" $(echo pwned) `echo pwned`"
    r = api.execute_code(code, language, {"evil": evil})
    assert r["success"], r
    assert r["stdout"] == evil + "\n"


def test_python_output_variable_is_returned(api: MemoryAPI) -> None:
    """A top-level `output` holding JSON-serialisable data comes back as `output`."""
    r = api.execute_code("output = {'rows': [1, 2], 'ok': True, 'name': 'é'}")
    assert r["output"] == {"rows": [1, 2], "ok": True, "name": "é"}


def test_python_output_not_serialisable_is_none_with_a_note(api: MemoryAPI) -> None:
    """An `output` that is not JSON-serialisable gives None and says why on stderr."""
    r = api.execute_code("output = {1, 2}")
    assert r["success"] and r["output"] is None
    assert "not JSON-serialisable" in r["stderr"]


@pytest.mark.parametrize(
    ("language", "code", "exit_code"),
    [
        ("python", "import sys\nsys.exit(3)", 3),
        ("python", "raise ValueError('boom')", 1),
        ("javascript", "process.exit(4)", 4),
        ("javascript", "throw new Error('boom')", 1),
        ("bash", "exit 5", 5),
    ],
)
def test_nonzero_exit_codes(api: MemoryAPI, language: str, code: str, exit_code: int) -> None:
    """A non-zero exit is reported as such and is not a success."""
    r = api.execute_code(code, language)
    assert (r["success"], r["exit_code"]) == (False, exit_code)
    assert r["violations"] == []


def test_python_traceback_shows_user_code_only(api: MemoryAPI) -> None:
    """An exception's traceback points at the user's line, without the bootstrap's frames."""
    r = api.execute_code("x = 1\ny = x / 0\n")
    assert "ZeroDivisionError" in r["stderr"]
    assert "line 2" in r["stderr"] and "pyboot" not in r["stderr"]


def test_killed_by_signal_gives_128_plus_n_and_a_signal_violation(api: MemoryAPI) -> None:
    """Code killed by a signal exits 128+N with a `signal:` violation naming it."""
    r = api.execute_code("kill -SEGV $$", "bash")
    assert r["exit_code"] == 139 and not r["success"]
    assert r["violations"] == ["signal: the code was killed by SIGSEGV (11)"]
    assert r["violation_details"][0]["detail"]["signal"] == 11


def test_stdin_of_the_code_is_empty(api: MemoryAPI) -> None:
    """Reading stdin gets EOF at once instead of hanging."""
    r = api.execute_code("import sys\nprint(repr(sys.stdin.read()))", timeout_seconds=10)
    assert r["stdout"] == "''\n" and r["success"]


def test_unicode_output_survives(api: MemoryAPI) -> None:
    """Multi-byte UTF-8 output is decoded intact, even across chunk boundaries."""
    r = api.execute_code("print('é€😀' * 30000)")
    assert r["stdout"] == "é€😀" * 30000 + "\n"


def test_nul_in_python_code_is_an_error_not_a_crash(api: MemoryAPI) -> None:
    """NUL bytes in Python source give success False with an error saying what to change."""
    r = api.execute_code("print('a')\x00")
    assert not r["success"] and r["exit_code"] == -1
    assert r["error_type"] == "CodeNotAcceptedError" and "NUL" in r["error"]


def test_nul_in_javascript_string_is_accepted(api: MemoryAPI) -> None:
    """JavaScript can hold a NUL character in a string literal, so it runs."""
    r = api.execute_code("console.log(JSON.stringify('a\x00b'))", "javascript")
    assert r["success"], r
    assert r["stdout"] == '"a\\u0000b"\n'


def test_validation_rejects_forbidden_import_with_line(api: MemoryAPI) -> None:
    """Under strict, `import subprocess` is rejected before any container starts."""
    r = api.execute_code("x = 1\nimport subprocess\n")
    assert not r["success"] and r["error"] == "Code validation failed"
    assert r["exit_code"] == -1 and r["sandbox_id"] is None
    assert r["issues"][0]["line"] == 2 and r["issues"][0]["severity"] == "error"
    assert "subprocess" in r["issues"][0]["message"]


def test_validation_not_enforced_still_runs_and_reports(api: MemoryAPI) -> None:
    """With enforce: false the findings are reported and the code runs anyway."""
    policy = {"extends": "strict", "validation": {"enforce": False}}
    r = api.execute_code("import subprocess\nprint('ran')", sandbox_policy=policy)
    assert r["success"] and r["stdout"] == "ran\n"
    assert any("subprocess" in i["message"] for i in r["issues"])


def test_large_code_within_the_limit_runs(api: MemoryAPI) -> None:
    """Code close to the 1 MiB limit is delivered whole."""
    code = "# " + "x" * (1000 * 1000) + "\nprint('end')\n"
    r = api.execute_code(code)
    assert r["success"] and r["stdout"] == "end\n"


def test_lone_surrogates_out_of_the_sandbox_are_repaired(api: MemoryAPI) -> None:
    """Surrogates the code puts in `output` become U+FFFD; the run succeeds; all is JSON."""
    import json

    r = api.execute_code("output = {chr(0xD800): ['a' + chr(0xDFFF)], 'n': 1}")
    assert r["success"], r["stderr"]
    assert r["output"] == {"\ufffd": ["a\ufffd"], "n": 1}
    json.dumps(r, allow_nan=False).encode("utf-8")  # raises on anything not encodable
