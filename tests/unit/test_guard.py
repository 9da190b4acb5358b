"""The run-time policy layer's configuration (orchestrator.guard) and its request envelope."""

from __future__ import annotations

import json
import marshal

from orchestrator.guard import kernel_denials, python_forbidden_modules, runtime_guard
from orchestrator.languages import get_language
from orchestrator.policy import load_policy


def test_forbidding_a_module_forbids_its_private_twins() -> None:
    """socket brings _socket, subprocess brings _posixsubprocess, importlib brings _imp."""
    names = python_forbidden_modules(("socket", "subprocess", "importlib", "concurrent.futures.x"))
    assert {"_socket", "_posixsubprocess", "_imp", "_frozen_importlib"} <= set(names)
    assert "concurrent.futures.x" in names and "_concurrent.futures.x" not in names


def test_strict_python_guard() -> None:
    """strict refuses processes, ctypes and sockets at run time, and names itself."""
    guard = runtime_guard(load_policy("strict"), "python")
    assert guard is not None
    assert (guard["policy"], guard["processes"], guard["ctypes"], guard["sockets"]) == (
        "strict",
        True,
        True,
        True,
    )
    assert {"_socket", "_ctypes", "_posixsubprocess", "subprocess"} <= set(guard["imports"])


def test_no_guard_without_enforcement_or_for_bash() -> None:
    """No guard when nothing is enforced or forbidden (development), nor ever for bash."""
    assert runtime_guard(load_policy("development"), "python") is None
    assert runtime_guard(load_policy({"validation": {"enforce": False}}), "python") is None
    assert runtime_guard(load_policy({"validation": {"enforce": False}}), "javascript") is None
    assert runtime_guard(load_policy("strict"), "bash") is None


def test_javascript_guard_lists_modules_without_the_node_prefix() -> None:
    """The JavaScript guard names the forbidden modules as the loader sees them."""
    policy = load_policy(
        {"validation": {"javascript": {"forbidden_modules": ["node:child_process", "net"]}}}
    )
    guard = runtime_guard(policy, "javascript")
    assert guard is not None and guard["modules"] == ["child_process", "net"]
    assert guard["processes"] is True


def test_request_blob_carries_parameters_and_guard() -> None:
    """Python and JavaScript bootstraps get an envelope; bash gets its environment pairs.

    Python's is in marshal form (its bootstrap reads it without importing json), with the
    values JSON would give: a tuple arrives as a list.
    """
    guard = {"policy": "strict", "imports": ["_socket"]}
    blob = get_language("python").request_blob({"n": 1, "t": (1, "é")}, guard)  # type: ignore[dict-item]
    assert marshal.loads(blob) == {"parameters": {"n": 1, "t": [1, "é"]}, "guard": guard}
    assert json.loads(get_language("js").request_blob({}, None)) == {
        "parameters": {},
        "guard": None,
    }
    assert get_language("bash").request_blob({"n": 1}, guard) == get_language(
        "bash"
    ).parameters_blob({"n": 1})


def test_a_key_with_a_trailing_newline_is_not_an_identifier() -> None:
    """A parameter key 'n\\n' gets no PARAM_ variable (fullmatch, not '$')."""
    from orchestrator.languages import bash_environment

    env = bash_environment({"n\n": "x", "m": "y"})
    assert "PARAM_M" in env and not any(k.startswith("PARAM_N") for k in env)


def test_sockets_are_refused_whoever_asks_only_without_a_network() -> None:
    """research (allowlist) lets libraries open sockets to allowed domains; strict does not."""
    research = runtime_guard(load_policy("research"), "python")
    strict = runtime_guard(load_policy("strict"), "python")
    assert research is not None and strict is not None
    assert research["sockets"] is False and "_socket" in research["imports"]
    assert strict["sockets"] is True
    assert kernel_denials(strict) == ["processes", "sockets"]
    assert kernel_denials(research) == ["processes"]
    assert kernel_denials(None) == []


def test_subinterpreters_are_always_refused() -> None:
    """A subinterpreter has no audit hook: its modules are refused wherever a guard exists."""
    guard = runtime_guard(load_policy({"validation": {"forbidden_imports": ["pickle"]}}), "python")
    assert guard is not None and "_xxsubinterpreters" in guard["imports"]
