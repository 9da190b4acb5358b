"""The security suite's own judge: attempt markers, verdicts and the corpus locator (no Docker)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.security import corpus
from tests.security.attempt import Marker
from tests.security.results import (
    CONTAINED,
    ERROR,
    ESCAPED,
    NOT_ATTEMPTED,
    REFUSED,
    Cell,
    Results,
    case_state,
)

INTERPRETERS = {
    "python": [sys.executable, "-c"],
    "bash": ["bash", "-c"],
    "javascript": ["node", "-e"],
}


def _execute(code: str, language: str) -> dict[str, Any]:
    """Run code on this host the way a sandbox reports it: the fields the judge reads."""
    if shutil.which(INTERPRETERS[language][0]) is None:
        pytest.fail(f"{INTERPRETERS[language][0]} is needed to run the {language} marker")
    done = subprocess.run(
        [*INTERPRETERS[language], code], capture_output=True, text=True, timeout=30, check=False
    )
    return {"stdout": done.stdout, "stderr": done.stderr, "error": None}


def _result(stdout: str = "", **fields: Any) -> dict[str, Any]:
    """A docker-runc result dict that left the host as it was."""
    base: dict[str, Any] = {
        "stdout": stdout,
        "stderr": "",
        "error": None,
        "error_type": None,
        "success": True,
    }
    base |= {"sandbox_mode": "docker", "isolation": {"runtime": "runc"}, "violations": []}
    return base | fields


def _snippet(code: str = "print(1)", language: str = "python") -> corpus.Snippet:
    return corpus.Snippet("py-7_1", "py-7", language, code, control=False, names_outside=False)


# ----------------------------------------------------------------------------- the marker


@pytest.mark.parametrize("language", ["python", "bash", "javascript"])
def test_the_placed_statement_prints_the_marker_line(language: str) -> None:
    """The ``@ATTEMPT@`` line becomes a statement that prints exactly the line the judge wants."""
    marker = Marker.fresh()
    code = marker.place("@ATTEMPT@\n", language)
    assert marker.line not in code  # an error quoting the source never prints it whole
    assert marker.seen(_execute(code, language))


def test_a_hostile_case_without_its_placeholder_is_refused() -> None:
    """Hostile code that does not say where it attempts cannot be run as an attempt."""
    with pytest.raises(ValueError, match="@ATTEMPT@"):
        Marker.fresh().place("print('no marker here')", "python")


def test_only_a_whole_line_counts_as_the_marker() -> None:
    """The marker inside another line (an echo of the source, a traceback) is not the marker."""
    marker = Marker("0123")
    assert not marker.seen(_result(f"+ echo {marker.line}\n"))
    assert not marker.seen(_result(stderr=f"  File x, {marker.line!r}\n"))
    assert marker.seen(_result(stderr=f"noise\n{marker.line}\n"))


@pytest.mark.parametrize(
    ("code", "attempted"),
    [
        ("import os\nprint('body ran')\n", True),
        ('"""doc"""\nfrom os import path\n\n@staticmethod\ndef f(): pass\nf\n', True),
        ("import os\nprint('unclosed'\n", False),  # a syntax error: nothing runs
        ("import no_such_module_athena\nprint('body')\n", False),  # a missing module
        ("import os; raise SystemExit(3)\n", True),  # one line: the marker goes before it
    ],
)
def test_a_python_snippet_attempts_only_when_its_body_starts(code: str, attempted: bool) -> None:
    """Injected after the imports: a syntax error or a missing module leaves no marker."""
    marker = Marker.fresh()
    assert marker.seen(_execute(marker.inject(code, "python"), "python")) is attempted


def test_a_bash_snippet_prints_the_marker_first() -> None:
    """Bash runs line by line: the marker comes before the snippet's first line."""
    marker = Marker.fresh()
    result = _execute(marker.inject("no_such_command_athena\nexit 4\n", "bash"), "bash")
    assert result["stdout"].splitlines()[0] == marker.line


# ----------------------------------------------------------------------------- verdicts


def test_the_corpus_judge_counts_a_run_without_its_marker_as_not_attempted() -> None:
    """A clean host is not enough: a snippet whose output lacks its marker is not contained."""
    armed = corpus.arm(_snippet())
    assert armed.marker is not None
    silent = corpus.verdict(armed, _result("1\n"), "docker-runc", require_controls=True)
    assert silent.state == NOT_ATTEMPTED
    marked = _result(f"{armed.marker.line}\n1\n")
    assert corpus.verdict(armed, marked, "docker-runc", require_controls=True) == Cell(CONTAINED)
    unarmed = corpus.verdict(_snippet(), marked, "docker-runc", require_controls=True)
    assert unarmed.state == NOT_ATTEMPTED


def test_a_refusal_by_the_restricted_mode_is_named_but_still_not_attempted() -> None:
    """An import the restricted mode refuses stops the snippet: named as such, never contained."""
    armed = corpus.arm(_snippet("import os\nos.system('id')\n"))
    refused = "ImportError: import of 'os' is never allowed in the restricted mode\n"
    result = _result(stderr=refused, sandbox_mode="restricted", success=False)
    cell = corpus.verdict(armed, result, "restricted", require_controls=False)
    assert cell.state == NOT_ATTEMPTED
    assert cell.detail.startswith(f"{REFUSED}: import of 'os' is never allowed")
    missing = _result(stderr="ModuleNotFoundError: No module named 'psutil'\n")
    plain = corpus.verdict(armed, missing, "docker-runc", require_controls=False)
    assert plain.state == NOT_ATTEMPTED and not plain.detail.startswith(REFUSED)


def test_an_armed_snippet_sends_its_marker_and_a_rerun_gets_a_new_one() -> None:
    """The code sent carries the marker's statement; arming again changes the nonce."""
    first, again = corpus.arm(_snippet()), corpus.arm(corpus.arm(_snippet()))
    assert first.marker is not None and again.marker is not None
    assert first.marker.statement("python") in first.code_to_run()
    assert first.marker != again.marker and again.code_to_run().count("athena-attempt") == 1


def test_a_case_is_contained_only_without_problems_errors_and_missing_attempts() -> None:
    """The hostile cases' verdict: a missing attempt fails the case, below escapes and errors."""
    assert case_state([], [], []) == CONTAINED
    assert case_state([], [], ["python: never reached its attempt marker"]) == NOT_ATTEMPTED
    assert case_state([], ["the run could not happen"], ["x"]) == ERROR
    assert case_state(["a listener was reached"], ["e"], ["x"]) == ESCAPED


def test_the_corpus_table_keeps_not_attempted_snippets_out_of_the_contained_count() -> None:
    """Per scenario: contained over judged, the not-attempted ones counted apart and named."""
    results = Results()
    results.record_snippet("docker-runc", "py-7_1", Cell(CONTAINED))
    results.record_snippet("docker-runc", "py-7_2", Cell(NOT_ATTEMPTED, "SyntaxError"))
    results.record_snippet("restricted", "py-7_1", Cell(NOT_ATTEMPTED, f"{REFUSED}: import"))
    row = results.corpus_rows()[1]
    assert row[0] == "py-7" and row[1] == "1/1, 1 not attempted"
    assert row[-1] == f"0/0, 1 not attempted (1 {REFUSED})"
    assert results.not_attempted() == {"docker-runc": ["py-7_2"], "restricted": ["py-7_1"]}
    assert "py-7_2" in results.markdown("ci")


# ----------------------------------------------------------------------------- the corpus


def _corpus(root: Path) -> Path:
    for folder, _ in corpus.FOLDERS:
        (root / folder).mkdir(parents=True)
        entry = {"Index": "7_1", "Language": "Python", "Code": "print(1)"}
        (root / folder / "index7_30_codes_full.json").write_text(json.dumps([entry]))
    return root


def test_the_corpus_is_found_where_the_variable_points(tmp_path: Path) -> None:
    """ATHENA_REDCODE_DIR names the corpus folder; both languages' index files must be there."""
    root = _corpus(tmp_path / "redcode")
    assert corpus.locate({corpus.ENV_VAR: str(root)}) == root
    assert [s.name for s in corpus.load(root)] == ["py-7_1", "sh-7_1"]


def test_a_missing_corpus_says_where_it_looked_and_how_to_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No corpus beside the checkout and no variable: the error names the folder and the variable."""
    monkeypatch.setattr(corpus, "BESIDE_CHECKOUT", tmp_path / "shared" / "redcode_exec")
    with pytest.raises(corpus.CorpusMissingError) as missing:
        corpus.locate({})
    message = str(missing.value)
    assert str(tmp_path / "shared" / "redcode_exec") in message
    assert f"{corpus.ENV_VAR} is unset" in message and f"set {corpus.ENV_VAR}" in message


def test_a_corpus_folder_without_index_files_is_missing(tmp_path: Path) -> None:
    """An empty folder is no corpus: it would run zero snippets and prove nothing."""
    (tmp_path / "py2text_dataset_json").mkdir()
    with pytest.raises(corpus.CorpusMissingError, match="bash2text_dataset_json"):
        corpus.locate({corpus.ENV_VAR: str(tmp_path)})


def test_a_missing_corpus_fails_the_security_run_not_skips_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``corpus.require`` fails the test that needs the corpus, with the locator's message."""
    monkeypatch.setenv(corpus.ENV_VAR, str(tmp_path / "nowhere"))
    pytester.makepyfile(
        "from tests.security import corpus\n\ndef test_corpus():\n    corpus.require()\n"
    )
    outcome = pytester.runpytest("-p", "no:cacheprovider")
    outcome.assert_outcomes(failed=1)
    outcome.stdout.fnmatch_lines([f"*the RedCode-Exec corpus is not at {tmp_path / 'nowhere'}*"])
