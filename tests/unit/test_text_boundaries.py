"""Text at the boundaries: lone surrogates and deep nesting, refused from callers, repaired from
sandboxes; no RecursionError for deep input (orchestrator.text, requests, the value frame).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator import models
from orchestrator.backends.reader import outcome_from_frames
from orchestrator.context import ExecutionContext
from orchestrator.errors import RequestError
from orchestrator.languages import LANGUAGES
from orchestrator.models import ExecutionRequest, Isolation
from orchestrator.orchestrator import Orchestrator
from orchestrator.run import RunOutcome, RunSpec
from orchestrator.settings import Settings
from orchestrator.testing import FakeBackend
from orchestrator.text import (
    MAX_JSON_DEPTH,
    check_json_text,
    check_text,
    find_lone_surrogate,
    json_depth,
    repair_json,
    repair_text,
)


def nested(depth: int, leaf: Any = 1) -> Any:
    """A list nested ``depth`` levels deep around ``leaf``, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def run_with_value_frame(value: bytes) -> dict[str, Any]:
    """Run through the orchestrator with a backend whose runner sent ``value`` as its frame."""

    @dataclass
    class ValueFrameBackend(FakeBackend):
        def run(
            self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
        ) -> RunOutcome:
            fields = outcome_from_frames({"exit_code": 0, "run_ns": 1000}, value, False)
            isolation = Isolation(mode=self.name, runtime="fake", path="fake")
            return RunOutcome(isolation=isolation, started=True, sandbox_id="fake", **fields)

    with Orchestrator(settings=Settings(), backends=[ValueFrameBackend()]) as orchestrator:
        return orchestrator.execute(ExecutionRequest.create("output = 1")).to_dict()


def encodes(result: dict[str, Any]) -> bytes:
    """The result as strict JSON, encoded as UTF-8 (raises if either is impossible)."""
    return json.dumps(result, allow_nan=False, ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- the helpers


def test_find_lone_surrogate_gives_the_first_index() -> None:
    """The index of the first surrogate code point, None for valid text (astral included)."""
    assert find_lone_surrogate("abc\ud800d\udfff") == 3
    assert find_lone_surrogate("\udc80") == 0
    assert find_lone_surrogate("\ud83d\ude00") == 0  # a pair of code points is not an emoji
    assert find_lone_surrogate("plain ascii") is None
    assert find_lone_surrogate("é 😀 \ufffd \U0010ffff") is None
    assert find_lone_surrogate("") is None


def test_check_text_names_the_argument_the_surrogate_and_its_index() -> None:
    """check_text returns valid text and refuses a lone surrogate with a message saying what to do."""
    assert check_text("héllo 😀", "content") == "héllo 😀"
    with pytest.raises(RequestError) as caught:
        check_text("abc\ud800", "content")
    assert str(caught.value) == (
        "content contains a lone surrogate (\\ud800 at index 3); pass valid Unicode text"
    )
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("value", "place"),
    [
        ({"a": [1, {"b": "x\udcff"}]}, r"parameters\['a'\]\[1\]\['b'\] contains"),
        ({"a": {"\ud800": 1}}, r"a key of parameters\['a'\] contains"),
        ({"\udfff": 1}, r"a key of parameters contains"),
        ([["ok", "\ud800"]], r"parameters\[0\]\[1\] contains"),
        ("\ud800", r"parameters contains"),
    ],
)
def test_check_json_text_finds_surrogates_in_keys_and_values_at_any_depth(
    value: object, place: str
) -> None:
    """Keys and strings are checked at every depth; the message gives the place."""
    with pytest.raises(RequestError, match=place + r" a lone surrogate .*valid Unicode"):
        check_json_text(value, "parameters")


def test_check_json_text_leaves_other_values_to_the_encoder() -> None:
    """Numbers, None, booleans, non-string keys and unknown objects pass the text check."""
    check_json_text({"n": 1.5, 2: None, "t": (True, "é"), "s": {1, 2}}, "parameters")
    check_json_text(42, "parameters")


def test_check_json_text_limits_depth_without_recursing() -> None:
    """64 levels pass; 65 and 100,000 are refused with RequestError, never RecursionError."""
    assert MAX_JSON_DEPTH == 64
    check_json_text(nested(MAX_JSON_DEPTH), "context")
    check_json_text({"a": nested(MAX_JSON_DEPTH - 1)}, "context")
    for depth in (MAX_JSON_DEPTH + 1, 100_000):
        with pytest.raises(RequestError, match="context is nested more than 64 levels deep"):
            check_json_text(nested(depth), "context")
    with pytest.raises(RequestError, match="more than 2 levels"):
        check_json_text({"a": {"b": {}}}, "context", max_depth=2)


def test_check_json_text_reports_a_value_that_contains_itself() -> None:
    """A cycle is refused as not JSON-serialisable, naming the container, not as too deep."""
    loop: dict[str, Any] = {"a": []}
    loop["a"].append(loop)
    with pytest.raises(RequestError, match="JSON-serialisable: parameters contains itself"):
        check_json_text(loop, "parameters")
    inner: list[Any] = []
    inner.append(inner)
    with pytest.raises(RequestError, match=r"parameters\['k'\] contains itself"):
        check_json_text({"k": inner}, "parameters")


def test_repair_text_replaces_each_surrogate_with_one_replacement_character() -> None:
    """Each lone surrogate becomes one U+FFFD; valid text comes back as the same object."""
    assert repair_text("a\ud800b\udc00\udfff") == "a\ufffdb\ufffd\ufffd"
    text = "héllo 😀"
    assert repair_text(text) is text


def test_repair_json_repairs_keys_and_values_at_any_depth_without_recursing() -> None:
    """Keys and strings are repaired at every depth; the input is untouched; no recursion."""
    value = {"\ud800k": ["x\udc00", {"n": 1, "\udfff": ("t\ud800",)}], "ok": None}
    repaired = repair_json(value)
    assert repaired == {"\ufffdk": ["x\ufffd", {"n": 1, "\ufffd": ["t\ufffd"]}], "ok": None}
    assert "\ud800k" in value
    deep = repair_json(nested(100_000, "\ud800"))
    assert json_depth(deep) == 100_000
    while isinstance(deep, list):
        deep = deep[0]
    assert deep == "\ufffd"
    assert repair_json("\ud800") == "\ufffd"
    assert repair_json(3) == 3


def test_json_depth_counts_containers_and_stops_at_the_limit() -> None:
    """A scalar is 0, [] is 1, {"a": []} is 2; with a limit the walk stops just above it."""
    assert json_depth(7) == 0
    assert json_depth([]) == 1
    assert json_depth({"a": [], "b": {"c": [1]}}) == 3
    assert json_depth(nested(1000), limit=10) == 11


def test_models_re_exports_the_caller_checks() -> None:
    """orchestrator.models re-exports the checks the memory store imports from it."""
    assert models.check_text is check_text
    assert models.check_json_text is check_json_text
    assert models.find_lone_surrogate is find_lone_surrogate
    assert models.MAX_JSON_DEPTH == MAX_JSON_DEPTH
    assert {"check_text", "check_json_text", "find_lone_surrogate"} <= set(models.__all__)


# --------------------------------------------------------------------------- requests


def test_code_with_a_lone_surrogate_is_refused() -> None:
    """ExecutionRequest.create refuses code UTF-8 cannot encode, naming code and the index."""
    with pytest.raises(
        RequestError,
        match=r"^code contains a lone surrogate \(\\udcff at index 7\); pass valid Unicode text$",
    ):
        ExecutionRequest.create("print('\udcff')")


@pytest.mark.parametrize("language", [language.name for language in LANGUAGES])
@pytest.mark.parametrize(
    ("parameters", "place"),
    [
        ({"name": "a\ud800"}, r"parameters\['name'\]"),
        ({"rows": [{"k": "\udc00"}]}, r"parameters\['rows'\]\[0\]\['k'\]"),
        ({"\ud800": "v"}, "a key of parameters"),
        ({"a": {"b\udfff": 1}}, r"a key of parameters\['a'\]"),
    ],
)
def test_parameters_with_a_lone_surrogate_are_refused(
    language: str, parameters: dict[str, Any], place: str
) -> None:
    """A surrogate anywhere in parameters, keys included, is a RequestError naming its place."""
    with pytest.raises(RequestError, match=place + r" contains a lone surrogate"):
        ExecutionRequest.create("x", language, parameters)


def test_parameters_nested_too_deep_are_refused_not_a_recursion_error() -> None:
    """5,000 levels (RecursionError before) and 65 levels are refused; 64 levels are kept."""
    for depth in (5000, MAX_JSON_DEPTH):  # the parameters dict is level 1
        with pytest.raises(RequestError, match="parameters is nested more than 64 levels deep"):
            ExecutionRequest.create("x", parameters={"a": nested(depth)})
    kept = ExecutionRequest.create("x", parameters={"a": nested(MAX_JSON_DEPTH - 1)})
    assert json_depth(kept.parameters) == MAX_JSON_DEPTH


def test_parameters_that_contain_themselves_are_refused() -> None:
    """A self-containing parameters dict is refused as not JSON-serialisable."""
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(RequestError, match="JSON-serialisable"):
        ExecutionRequest.create("x", parameters=loop)


def test_valid_unicode_parameters_and_code_still_pass() -> None:
    """Non-ASCII, astral and U+FFFD text is accepted as before."""
    request = ExecutionRequest.create("print('é 😀')", parameters={"ключ": ["😀", "\ufffd"]})
    assert request.parameters == {"ключ": ["😀", "\ufffd"]}


# --------------------------------------------------------------------------- the value frame


def test_surrogate_escapes_in_the_value_frame_are_repaired() -> None:
    """\\ud800 escapes in keys and values at any depth become U+FFFD, with a note."""
    value = b'{"value": {"\\ud800k": ["x\\udc00", {"\\uDFFF": "\\ud83d\\ude00"}]}}'
    fields = outcome_from_frames({"exit_code": 0}, value, track_resources=False)
    assert fields["output"] == {"\ufffdk": ["x\ufffd", {"\ufffd": "😀"}]}
    assert fields["notes"] == ("`output` held lone surrogates; each was replaced by U+FFFD",)


def test_raw_surrogate_bytes_in_the_value_frame_are_repaired() -> None:
    """Surrogates sent as UTF-8-like bytes (json.loads passes them through) are repaired too."""
    value = b'{"value": "a' + "\ud800".encode("utf-8", "surrogatepass") + b'"}'
    assert outcome_from_frames({"exit_code": 0}, value, False)["output"] == "a\ufffd"


def test_a_run_with_surrogates_in_output_keeps_its_success_and_encodes_as_json() -> None:
    """The whole result dict is strict JSON and UTF-8 when the output had lone surrogates."""
    result = run_with_value_frame(b'{"value": {"\\ud800": ["\\udc00", {"k\\udfff": 1}]}}')
    assert result["success"] is True
    assert result["output"] == {"\ufffd": ["\ufffd", {"k\ufffd": 1}]}
    assert "replaced by U+FFFD" in result["stderr"]
    assert json.loads(encodes(result))["output"] == result["output"]


@pytest.mark.parametrize(
    "value",
    [
        b'{"value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"value": ' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}",
    ],
    ids=["100000-deep", "65-deep"],
)
def test_output_nested_too_deep_is_dropped_with_a_note(value: bytes) -> None:
    """A value nested deeper than the limit gives output None and a note, no RecursionError."""
    fields = outcome_from_frames({"exit_code": 0}, value, track_resources=False)
    assert fields["output"] is None
    assert fields["notes"] == ("`output` is nested more than 64 levels deep; it is None",)


def test_output_at_the_depth_limit_is_kept() -> None:
    """Output nested exactly 64 levels deep is kept whole."""
    value = json.dumps({"value": nested(MAX_JSON_DEPTH)}).encode()
    fields = outcome_from_frames({"exit_code": 0}, value, track_resources=False)
    assert json_depth(fields["output"]) == MAX_JSON_DEPTH
    assert fields["notes"] == ()


@pytest.mark.parametrize(
    "value", [b'{"value": NaN}', b'{"value": [-Infinity]}', b'{"value": {"big": 1e400}}']
)
def test_output_that_is_not_strict_json_is_dropped(value: bytes) -> None:
    """NaN and infinities (which the bootstrap never sends) leave output None, with a note."""
    result = run_with_value_frame(value)
    assert result["success"] is True
    assert result["output"] is None
    assert "is not the bootstrap's JSON" in result["stderr"]
    encodes(result)


def test_an_error_envelope_with_surrogates_gives_a_valid_note() -> None:
    """The bootstrap's error text is repaired before it becomes a note in stderr."""
    result = run_with_value_frame(b'{"error": "bad \\udcff value"}')
    assert result["output"] is None
    assert "(bad \ufffd value)" in result["stderr"]
    encodes(result)
