"""The restricted mode (RestrictedPython in a child process): what runs, and escapes that fail.

No Docker here: the process allows the restricted mode only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.settings import Settings


@pytest.fixture
def api(tmp_path: Path) -> Iterator[MemoryAPI]:
    settings = Settings(project_dir=tmp_path, sandbox_backends=("restricted",))
    with MemoryAPI.create(tmp_path / "m.db", settings=settings) as memory_api:
        yield memory_api


def run(api: MemoryAPI, code: str, **kwargs: Any) -> dict[str, Any]:
    # enforce: false, so the restricted mode itself is judged, not the validator in front of it
    policy = {"extends": "strict", "validation": {"enforce": False}}
    result = api.execute_code(code, sandbox_policy=policy, **kwargs)
    assert result["sandbox_mode"] == "restricted", result
    return result


def test_ordinary_code_runs_with_parameters_json_and_allowed_imports(api: MemoryAPI) -> None:
    """Allowed modules, parameters, json, print and output work as in Docker."""
    code = (
        "import math, statistics\nfrom collections import Counter\n"
        "print(math.sqrt(parameters['n']), statistics.mean([1, 2, 3]), Counter('aab')['a'])\n"
        "output = json.loads(json.dumps({'ok': True}))\n"
    )
    r = run(api, code, parameters={"n": 16})
    assert r["success"], r["stderr"]
    assert r["stdout"] == "4.0 2 2\n" and r["output"] == {"ok": True}


@pytest.mark.parametrize(
    ("code", "refusal"),
    [
        ("print(().__class__.__base__.__subclasses__())", '"__class__" is an invalid attribute'),
        ("g = (i for i in [1])\nprint(g.gi_frame.f_back)", '"gi_frame" is a restricted name'),
        (
            "try:\n    1 / 0\nexcept Exception as e:\n    print(e.__traceback__.tb_frame.f_globals)",
            '"__traceback__" is an invalid attribute',
        ),
        ("print('{0.__class__.__mro__}'.format(1))", "access to 'format' is not allowed"),
        ("f = '{0.x}'.format\nprint(f)", "access to 'format' is not allowed"),
        ("__import__('os').system('id')", '"__import__" is an invalid variable name'),
        ("import importlib", "import of 'importlib' is never allowed"),
        ("import os", "import of 'os' is never allowed"),
        ("print(getattr((), '__cl' + 'ass__'))", "access to '__class__' is not allowed"),
        ("print(getattr((i for i in []), 'gi_' + 'frame'))", "access to 'gi_frame' is not allowed"),
        ("import statistics\nprint(statistics.sys.modules['os'])", "has no attribute 'sys'"),
        ("import json as j\nprint(j.codecs)", "has no attribute 'codecs'"),
        ("import datetime\nprint(datetime.sys)", "has no attribute 'sys'"),
        ("open('/etc/passwd').read()", "'/etc/passwd': give a path relative to the work directory"),
        ("import math\nmath.pi = 3", "attribute-less object"),
    ],
    ids=[
        "subclasses", "generator-frame", "traceback-frame", "str-format", "format-method",
        "dunder-import", "importlib", "os", "getattr-built-dunder", "getattr-built-frame",
        "statistics-sys", "json-codecs", "datetime-sys", "open", "write-module",
    ],
)  # fmt: skip
def test_escapes_fail(api: MemoryAPI, code: str, refusal: str) -> None:
    """Each classic escape from a Python-level sandbox is refused by the mode's own guard."""
    r = run(api, code)
    assert not r["success"], r
    assert refusal in r["stderr"], r["stderr"]
    assert "root:" not in r["stdout"] and "uid=" not in r["stdout"]
    assert "<module" not in r["stdout"]


@pytest.mark.parametrize(
    "code",
    [
        "import operator\nprint(operator.attrgetter('__class__.__mro__')(1))",
        "from typing import get_type_hints\nprint(get_type_hints)",
        "import string\nprint(string.Formatter().vformat('{0.__class__.__mro__}', [1], {}))",
        "import dataclasses\nprint(dataclasses.make_dataclass)",
        "import os.path\nprint(os.path)",
    ],
    ids=["operator-attrgetter", "typing-hints", "string-formatter", "dataclasses", "os-path"],
)
def test_modules_that_bypass_the_guards_are_refused_even_when_a_policy_allows_them(
    api: MemoryAPI, code: str
) -> None:
    """A policy listing operator, typing, string, dataclasses or os does not hand them out."""
    allowed = ["math", "operator", "typing", "string", "dataclasses", "os"]
    policy = {"extends": "strict", "validation": {"enforce": False, "allowed_imports": allowed}}
    r = api.execute_code(code, sandbox_policy=policy)
    assert r["sandbox_mode"] == "restricted", r
    assert not r["success"], r
    assert "never allowed in the restricted mode" in r["stderr"], r["stderr"]
    assert "<class" not in r["stdout"] and "<function" not in r["stdout"], r["stdout"]


def test_system_exit_is_a_failure(api: MemoryAPI) -> None:
    """Raising SystemExit(0) does not pass for success."""
    r = run(api, "raise SystemExit(0)")
    assert not r["success"] and r["exit_code"] == 1
    assert "SystemExit" in r["stderr"]


@pytest.mark.parametrize("code", ["while True:\n    pass", "x = 10 ** 10 ** 8"])
def test_cpu_bombs_are_stopped(api: MemoryAPI, code: str) -> None:
    """An endless loop and a huge power are stopped by the limits, within the timeout."""
    start = time.monotonic()
    r = run(api, code, timeout_seconds=2)
    assert time.monotonic() - start < 2 + 5
    assert not r["success"]
    assert {v["category"] for v in r["violation_details"]} & {"timeout", "memory", "signal"}


def test_memory_bombs_are_stopped(api: MemoryAPI) -> None:
    """Allocating past the memory limit gives a memory violation, not a dead host."""
    r = run(api, "hog = 'x' * (3 * 1024 ** 3)", timeout_seconds=10)
    assert not r["success"]
    assert [v["category"] for v in r["violation_details"]] == ["memory"]


def test_tracebacks_show_the_code_only(api: MemoryAPI) -> None:
    """A failure's traceback shows the code's line and none of the orchestrator's files."""
    r = run(api, "x = 1\ny = x / 0")
    assert "ZeroDivisionError" in r["stderr"] and "line 2" in r["stderr"]
    assert "restricted_child" not in r["stderr"]


@pytest.mark.parametrize("language", ["javascript", "bash"])
def test_other_languages_get_a_clear_error(api: MemoryAPI, language: str) -> None:
    """JavaScript and bash cannot run here: the error says so and what would run them."""
    r = api.execute_code("echo 1", language)
    assert not r["success"] and r["error_type"] == "BackendUnavailableError"
    assert f"runs Python only, not {language}" in r["error"]
