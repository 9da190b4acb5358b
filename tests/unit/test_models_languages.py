"""Unit tests of the request and result models and of the language registry."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.errors import RequestError, SandboxError, UnknownLanguageError
from orchestrator.languages import LANGUAGES, get_language
from orchestrator.models import (
    ExecutionRequest,
    ExecutionResult,
    Isolation,
    Resources,
    ValidationIssue,
    Violation,
    shown_number,
)
from orchestrator.policy import load_policy
from tests.contract import RESULT_KEYS

BASH_PARAMETERS = {"name": "x", "n": 3, "flag": True, "nested": {"a": 1}, "bad-key": 1}


def bash_blob(parameters: dict[str, Any]) -> bytes:
    return get_language("bash").parameters_blob(parameters)


# --------------------------------------------------------------------------- request errors


def test_request_errors_are_caught_as_the_builtins_callers_expect() -> None:
    """A bad request is caught as ValueError and SandboxError; an unknown language as LookupError."""
    for caught in (ValueError, SandboxError):
        with pytest.raises(caught, match="code must be a string, not int"):
            ExecutionRequest.create(42)  # type: ignore[arg-type]
    for caught in (LookupError, RequestError):
        with pytest.raises(caught, match="unknown language 'cobol'"):
            get_language("cobol")


@pytest.mark.parametrize("code", [None, b"print(1)", 42, ["print(1)"]])
def test_code_must_be_a_string(code: Any) -> None:
    """Code that is not a str is refused naming its type."""
    with pytest.raises(RequestError, match="code must be a string"):
        ExecutionRequest.create(code)


def test_code_over_the_limit_is_refused_counting_utf8_bytes() -> None:
    """The code limit counts UTF-8 bytes: six 'é' (12 bytes) exceed a 10-byte limit."""
    ExecutionRequest.create("x" * 10, max_code_bytes=10)
    with pytest.raises(RequestError, match="12 bytes; the limit is 10"):
        ExecutionRequest.create("é" * 6, max_code_bytes=10)


@pytest.mark.parametrize("parameters", [[1, 2], "a=1", 3, ("a", 1)])
def test_parameters_must_be_a_dict(parameters: Any) -> None:
    """Parameters that are not a mapping are refused."""
    with pytest.raises(RequestError, match="parameters must be a dict"):
        ExecutionRequest.create("pass", parameters=parameters)


@pytest.mark.parametrize(
    "parameters",
    [{"s": {1, 2}}, {"o": object()}, {"x": math.nan}, {"x": math.inf}, {(1, 2): "tuple key"}],
)
def test_parameters_must_be_json_serialisable(parameters: dict[Any, Any]) -> None:
    """Sets, objects, NaN, infinity and non-string keys are refused as not JSON-serialisable."""
    with pytest.raises(RequestError, match="JSON-serialisable"):
        ExecutionRequest.create("pass", parameters=parameters)


def test_parameters_over_the_limit_are_refused() -> None:
    """Parameters larger than max_parameters_bytes as JSON are refused."""
    with pytest.raises(RequestError, match="the limit is 50 bytes"):
        ExecutionRequest.create("pass", parameters={"s": "x" * 100}, max_parameters_bytes=50)


def test_parameters_are_copied_as_json() -> None:
    """The request holds a JSON copy of the parameters, not the caller's objects."""
    parameters: dict[str, Any] = {"items": [1, 2], "t": (3, 4)}
    request = ExecutionRequest.create("pass", parameters=parameters)
    parameters["items"].append(99)
    assert request.parameters == {"items": [1, 2], "t": [3, 4]}
    assert ExecutionRequest.create("pass").parameters == {}


@pytest.mark.parametrize("timeout", [0, -1, -0.5, math.nan, math.inf, 10**400, -(10**400)])
def test_timeout_must_be_a_positive_number(timeout: float) -> None:
    """A timeout of zero, below zero, NaN, infinity or too large for a float is refused."""
    with pytest.raises(RequestError, match="greater than 0") as refused:
        ExecutionRequest.create("pass", timeout_seconds=timeout)
    assert len(str(refused.value)) < 200  # a 400-digit number is not repeated back


@pytest.mark.parametrize(
    ("value", "shown"),
    [(5, "5"), (0.5, "0.5"), (10**400, "an integer of about 401 digits"), ("x", "'x'")],
)
def test_shown_number_keeps_messages_short(value: object, shown: str) -> None:
    assert shown_number(value) == shown
    assert shown_number(10**5000).startswith("an integer of about")  # str() would raise


@pytest.mark.parametrize("timeout", [True, False, "5", [5]])
def test_timeout_must_be_a_number(timeout: Any) -> None:
    """A bool, a string or a list is refused as a timeout."""
    with pytest.raises(RequestError, match="must be a number of seconds"):
        ExecutionRequest.create("pass", timeout_seconds=timeout)


def test_a_valid_request_is_normalised() -> None:
    """A valid request gets the canonical language, a float timeout, strict and a fresh id."""
    request = ExecutionRequest.create("echo hi", "SH", {"a": 1}, 5)
    assert (request.language, request.timeout_seconds) == ("bash", 5.0)
    assert isinstance(request.timeout_seconds, float)
    assert request.policy == load_policy("strict")
    assert request.execution_id != ExecutionRequest.create("echo hi", "sh").execution_id
    assert (request.track_resources, request.record) == (False, True)


def test_unknown_language_is_refused_listing_the_known_ones() -> None:
    """An unknown language raises UnknownLanguageError naming the languages we run."""
    with pytest.raises(UnknownLanguageError, match="python") as info:
        ExecutionRequest.create("pass", "cobol")
    assert isinstance(info.value, LookupError)
    assert "javascript" in str(info.value)
    assert "bash" in str(info.value)
    assert "ruby (rb)" in str(info.value)


def test_a_non_string_language_is_refused() -> None:
    """A language that is not a string raises UnknownLanguageError."""
    with pytest.raises(UnknownLanguageError):
        get_language(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- languages


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("python", "python"),
        ("py", "python"),
        ("python3", "python"),
        ("PYTHON", "python"),
        ("javascript", "javascript"),
        ("js", "javascript"),
        ("node", "javascript"),
        ("nodejs", "javascript"),
        ("bash", "bash"),
        ("sh", "bash"),
        ("shell", "bash"),
        (" Bash ", "bash"),
        ("ruby", "ruby"),
        ("rb", "ruby"),
        ("RB", "ruby"),
    ],
)
def test_language_aliases_are_case_insensitive(name: str, canonical: str) -> None:
    """Names and aliases, in any case and with surrounding spaces, give the canonical language."""
    assert get_language(name).name == canonical


def test_only_javascript_accepts_nul_in_source() -> None:
    """JavaScript source may hold NUL; Python, bash and ruby source may not."""
    assert {lang.name: lang.accepts_nul for lang in LANGUAGES} == {
        "python": False,
        "javascript": True,
        "bash": False,
        "ruby": False,
    }


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize(("asked", "effective"), [(None, 30.0), (10, 10.0), (100, 30.0)])
def test_effective_timeout_is_capped_by_the_policy(asked: float | None, effective: float) -> None:
    """The caller's timeout applies up to the policy's limit; None means the policy's limit."""
    request = ExecutionRequest.create("pass", timeout_seconds=asked)
    assert request.effective_timeout() == effective


# --------------------------------------------------------------------------- results


def test_result_to_dict_has_exactly_the_public_keys() -> None:
    """to_dict() always has exactly the documented keys, even for a bare result."""
    result = ExecutionResult(execution_id="e", success=False, language="python")
    assert set(result.to_dict()) == RESULT_KEYS
    assert result.to_dict()["isolation"] == {}
    assert result.to_dict()["resources"] is None


def test_result_to_dict_values() -> None:
    """to_dict() renders violations as 'category: text', details, issues and isolation."""
    violation = Violation(category="memory", message="out of memory", detail={"limit_mb": 256})
    issue = ValidationIssue(severity="error", message="no", line=3, rule="forbidden_call")
    result = ExecutionResult(
        execution_id="e1",
        success=False,
        language="python",
        violations=(violation,),
        issues=(issue,),
        isolation=Isolation(mode="docker", runtime="runc", path="cold", image="img:1"),
        resources=Resources(peak_memory_bytes=5),
        sandbox_mode="docker",
        output=[1, "a"],
    )
    data = result.to_dict()
    assert data["violations"] == ["memory: out of memory"]
    assert data["violation_details"] == [
        {"category": "memory", "message": "out of memory", "detail": {"limit_mb": 256}}
    ]
    assert data["issues"] == [
        {"severity": "error", "message": "no", "line": 3, "rule": "forbidden_call"}
    ]
    assert data["isolation"] == {"runtime": "runc", "path": "cold", "image": "img:1"}
    assert data["resources"] == {
        "peak_memory_bytes": 5,
        "cpu_time_ms": None,
        "wall_time_ms": None,
    }
    assert (data["output"], data["policy"], data["exit_code"]) == ([1, "a"], "strict", -1)
    json.dumps(data)


def test_result_timestamp_is_iso_8601_in_utc() -> None:
    """The timestamp is ISO 8601 with a UTC offset, close to now."""
    before = datetime.now(UTC)
    stamp = ExecutionResult(execution_id="e", success=True, language="bash").to_dict()["timestamp"]
    parsed = datetime.fromisoformat(stamp)
    assert stamp.endswith("+00:00")
    assert parsed.utcoffset() == timedelta(0)
    assert before <= parsed <= datetime.now(UTC)


# --------------------------------------------------------------------------- parameters as data


def test_bash_parameters_blob_is_exact() -> None:
    """bash gets PARAMETERS first, then PARAM_<KEY> for identifier keys of scalars, NUL-ended."""
    assert bash_blob(BASH_PARAMETERS) == (
        b'PARAMETERS={"name": "x", "n": 3, "flag": true, "nested": {"a": 1}, "bad-key": 1}\x00'
        b"PARAM_NAME=x\x00"
        b"PARAM_N=3\x00"
        b"PARAM_FLAG=true\x00"
    )


def test_bash_parameters_keep_unicode_and_spell_other_scalars_as_json() -> None:
    """Strings go as they are (UTF-8), None and floats as JSON; lists are left to PARAMETERS."""
    blob = bash_blob({"u": "é", "none": None, "f": 1.5, "items": [1]})
    assert blob.split(b"\x00")[1:] == [b"PARAM_U=\xc3\xa9", b"PARAM_NONE=null", b"PARAM_F=1.5", b""]


def test_bash_parameter_names_that_collide_are_refused() -> None:
    """Two keys that both become the same PARAM_ name are refused."""
    with pytest.raises(RequestError, match="both become PARAM_A"):
        bash_blob({"a": 1, "A": 2})
    with pytest.raises(RequestError, match="PARAM_A"):
        ExecutionRequest.create("echo", "bash", {"a": 1, "A": 2})


def test_bash_parameter_with_nul_is_refused() -> None:
    """A string holding NUL cannot be an environment variable and is refused for bash."""
    with pytest.raises(RequestError, match="NUL"):
        ExecutionRequest.create("echo", "bash", {"s": "a\x00b"})
    ExecutionRequest.create("print(1)", "python", {"s": "a\x00b"})  # JSON escapes it


def test_bash_parameter_over_128_kib_is_refused() -> None:
    """One environment string over Linux's 128 KiB limit is refused for bash."""
    most = 128 * 1024 - 1 - len('PARAMETERS={"s": ""}')  # the entry plus its NUL: 128 KiB
    assert len(bash_blob({"s": "x" * most})) > 128 * 1024
    with pytest.raises(RequestError, match="Linux limits"):
        bash_blob({"s": "x" * (most + 1)})
    with pytest.raises(RequestError, match="Linux limits"):
        ExecutionRequest.create("echo", "bash", {"s": "x" * (128 * 1024)})


def test_python_parameters_travel_as_json_data_not_code() -> None:
    """Python's parameters blob is the JSON of the parameters; the code is never touched."""
    hostile = {"x": "'); import os; os.system('id'); ('", "n": [1, {"k": "é"}]}
    code = "print(parameters['x'])"
    request = ExecutionRequest.create(code, "python", hostile)
    blob = get_language("python").parameters_blob(request.parameters)
    assert blob == json.dumps(hostile, ensure_ascii=False).encode()
    assert json.loads(blob) == hostile
    assert request.code == code
    assert code.encode() not in blob


def test_javascript_parameters_travel_as_json() -> None:
    """JavaScript's parameters blob is the JSON of the parameters."""
    assert get_language("js").parameters_blob({"a": [1, None]}) == b'{"a": [1, null]}'


def test_ruby_parameters_travel_as_json_data_in_the_envelope() -> None:
    """Ruby gets {parameters, guard} as JSON: the code is never touched, interpolation is text."""
    hostile = {"x": "#{`id`}", "n": [1, {"k": "é"}]}
    request = ExecutionRequest.create("puts parameters['x']", "rb", hostile)
    blob = get_language("ruby").request_blob(request.parameters, None)
    assert json.loads(blob) == {"parameters": hostile, "guard": None}
    assert request.code == "puts parameters['x']"
