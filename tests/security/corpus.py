"""The RedCode-Exec corpus: loading, choosing what a scope runs, and judging a chunk of runs.

Snippets are named ``py-<scenario>_<n>`` and ``sh-<scenario>_<n>``. A chunk (one scenario's
snippets) runs as a batch; the host is judged before and after the chunk. When a chunk affected
the host, each of its snippets is run again alone, so the verdict names the snippet. Each run's
code carries an attempt marker before its body (:mod:`tests.security.attempt`): a snippet that
never printed it is *not attempted*, never contained.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from tests.security.attempt import Marker
from tests.security.harness import JUDGEABLE_ERRORS
from tests.security.judge import HostCheck, leftovers
from tests.security.results import CONTAINED, ERROR, ESCAPED, NOT_ATTEMPTED, REFUSED, Cell

ENV_VAR = "ATHENA_REDCODE_DIR"
# ../shared beside the checkout (as CI lays it out), unless ATHENA_REDCODE_DIR says otherwise.
BESIDE_CHECKOUT = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "redcode_exec"
FOLDERS = (("py2text_dataset_json", "py"), ("bash2text_dataset_json", "sh"))
# Harmless logic snippets: they must still succeed on docker runc and in the fast mode (16_27
# needs psutil).
CONTROL_SCENARIOS = {12, 15, 16, 19, 20, 22, 23, 25}
NOT_CONTROLS = {"16_27"}
# Names of places off this machine: such snippets run only where the network is namespaced
# away entirely (a container with network `none`), never where a proxy exists (srt).
OUTSIDE = re.compile(r"https?://(?!(127\.0\.0\.1|localhost)[:/])|1mocat|example\.com")
TIMEOUT_S = 10
# Modes that run the whole corpus even in the ci scope: runc, the default, and the fast mode,
# whose sandboxes start in milliseconds (the whole corpus there takes under a minute).
WHOLE_CORPUS = ("docker-runc", "fast")
# The mode's own refusal of code before its body (its import guard, its compiler), by mode.
MODE_REFUSALS = {
    "restricted": re.compile(
        r"import of '[^']+' is (never allowed in the restricted mode|not allowed here)"
        r"|\S+ is an invalid attribute name because it starts with \"_\""
    )
}


@dataclass(frozen=True)
class Snippet:
    """One corpus entry."""

    name: str  # py-1_3
    scenario: str  # py-1
    language: str  # python | bash
    code: str
    control: bool
    names_outside: bool
    marker: Marker | None = None  # set by arm(): what code_to_run prints before the body

    def code_to_run(self) -> str:
        """The code as sent to the sandbox: with the attempt marker before its body, if armed."""
        return self.marker.inject(self.code, self.language) if self.marker else self.code


def arm(snippet: Snippet) -> Snippet:
    """The snippet with a fresh attempt marker (a snippet run again gets a new one)."""
    return replace(snippet, marker=Marker.fresh())


class CorpusMissingError(FileNotFoundError):
    """The RedCode-Exec corpus is not where the suite looked."""


def locate(environ: Mapping[str, str] = os.environ) -> Path:
    """The corpus folder: ``$ATHENA_REDCODE_DIR``, else ``../shared/corpora/redcode_exec``.

    Raises:
        CorpusMissingError: the folder, or the index files of either language, are not there;
            the message names the folder looked in and how to point the suite elsewhere.
    """
    given = environ.get(ENV_VAR)
    root = Path(given) if given else BESIDE_CHECKOUT
    missing = [f"{f}/index*.json" for f, _ in FOLDERS if not any((root / f).glob("index*.json"))]
    if missing:
        source = f"{ENV_VAR}={given}" if given else f"beside the checkout ({ENV_VAR} is unset)"
        raise CorpusMissingError(
            f"the RedCode-Exec corpus is not at {root} ({source}): {', '.join(missing)} missing. "
            f"Put the corpus there or set {ENV_VAR} to the folder holding "
            f"{' and '.join(f for f, _ in FOLDERS)}."
        )
    return root


def require() -> Path:
    """:func:`locate`, or fail the test (never skip it): a security run without it proves less."""
    try:
        return locate()
    except CorpusMissingError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the handler: the message once, no chain


def load(root: Path) -> list[Snippet]:
    """Every snippet of the corpus at ``root``, in scenario order."""
    snippets = []
    for folder, prefix in FOLDERS:
        for path in sorted((root / folder).glob("index*.json")):
            for entry in json.loads(path.read_text()):
                index = str(entry["Index"])
                scenario = int(index.split("_", maxsplit=1)[0])
                language = "python" if entry["Language"].lower() == "python" else "bash"
                control = prefix == "py" and scenario in CONTROL_SCENARIOS
                snippets.append(
                    Snippet(
                        name=f"{prefix}-{index}",
                        scenario=f"{prefix}-{scenario}",
                        language=language,
                        code=entry["Code"],
                        control=control and index not in NOT_CONTROLS,
                        names_outside=bool(OUTSIDE.search(entry["Code"])),
                    )
                )
    return sorted(snippets, key=lambda s: (s.scenario, int(s.name.rsplit("_", 1)[1])))


def select(snippets: Sequence[Snippet], mode: str, scope: str) -> list[Snippet]:
    """What ``mode`` runs in ``scope``: all on runc and fast (and everywhere under full), else
    two per scenario; Python only in the restricted mode."""
    chosen = [s for s in snippets if mode != "restricted" or s.language == "python"]
    if scope == "full" or mode in WHOLE_CORPUS:
        return chosen
    picked: dict[str, list[Snippet]] = {}
    for snippet in chosen:
        taken = picked.setdefault(snippet.scenario, [])
        if len(taken) < 2:
            taken.append(snippet)
    return [s for taken in picked.values() for s in taken]


def chunks(snippets: Sequence[Snippet]) -> list[list[Snippet]]:
    """The snippets grouped by scenario, in order."""
    grouped: dict[str, list[Snippet]] = {}
    for snippet in snippets:
        grouped.setdefault(snippet.scenario, []).append(snippet)
    return list(grouped.values())


Runner = Callable[[Sequence[Snippet]], list[dict[str, Any]]]


@dataclass
class ChunkJudge:
    """Runs chunks through ``run`` and decides per snippet.

    A chunk whose containers are still being removed when it returns is decided after the next
    chunk has run (its leftovers get that long to go), so the engine is never idle meanwhile.

    Args:
        run: runs snippets (a batch) and returns their result dicts in order.
        check: the host check (begun before each chunk).
        expected_mode: the ``sandbox_mode`` every result must have.
        require_controls: harmless controls must succeed (docker runc, fast).
        leftover_args: keyword arguments of :func:`leftovers` (markers, work dirs).
    """

    run: Runner
    check: HostCheck
    expected_mode: str
    require_controls: bool
    leftover_args: dict[str, Any]
    pending: list[tuple[Sequence[Snippet], list[dict[str, Any]], list[str]]] = field(
        default_factory=list
    )

    def judge_chunk(self, chunk: Sequence[Snippet]) -> dict[str, Cell]:
        """Run a chunk; return the verdicts decided now (this chunk's or an earlier one's)."""
        earlier, self.pending = self.pending, []
        self.check.begin()
        chunk = [arm(snippet) for snippet in chunk]
        results = self.run(chunk)
        problems = self.check.problems(results)
        verdicts = self._settle(earlier)
        if problems or leftovers(self.check.client, results, grace=0, **self.leftover_args):
            self.pending.append((chunk, results, problems))
        else:
            verdicts |= self._verdicts(chunk, results)
        return verdicts

    def flush(self) -> dict[str, Cell]:
        """Decide the chunks still pending (call once after the last chunk)."""
        earlier, self.pending = self.pending, []
        return self._settle(earlier)

    def _settle(
        self, pending: list[tuple[Sequence[Snippet], list[dict[str, Any]], list[str]]]
    ) -> dict[str, Cell]:
        verdicts: dict[str, Cell] = {}
        for chunk, results, found in pending:
            problems = found + leftovers(self.check.client, results, **self.leftover_args)
            if not problems:
                verdicts |= self._verdicts(chunk, results)
            elif len(chunk) == 1:
                verdicts[chunk[0].name] = Cell(ESCAPED, "; ".join(problems)[:400])
            else:
                verdicts |= self._alone(chunk, problems)
        return verdicts

    def _alone(self, chunk: Sequence[Snippet], problems: list[str]) -> dict[str, Cell]:
        """Run each snippet of an affected chunk alone, to name the one that did it."""
        verdicts: dict[str, Cell] = {}
        for snippet in chunk:
            verdicts |= self.judge_chunk([snippet])
            verdicts |= self.flush()
        if all(v.state != ESCAPED for v in verdicts.values()):
            note = "the chunk affected the host, no snippet alone did: " + "; ".join(problems)
            verdicts = {name: Cell(ESCAPED, note[:400]) for name in verdicts}
        return verdicts

    def _verdicts(self, chunk: Sequence[Snippet], results: list[dict[str, Any]]) -> dict[str, Cell]:
        return {
            s.name: verdict(s, r, self.expected_mode, require_controls=self.require_controls)
            for s, r in zip(chunk, results, strict=True)
        }


def verdict(
    snippet: Snippet, result: dict[str, Any], expected_mode: str, *, require_controls: bool
) -> Cell:
    """The verdict of one run that left the host as it was (pure).

    Contained only when the run happened as asked and printed the snippet's attempt marker; a
    run without the marker is *not attempted* (the snippet stopped before its body).
    """
    wrong = _wrong_run(snippet, result, expected_mode, require_controls)
    if wrong is not None:
        return Cell(ERROR, wrong[:300])
    missing = "not armed" if snippet.marker is None else snippet.marker.not_attempted(result)
    if missing is not None:
        refusal = MODE_REFUSALS.get(expected_mode)
        found = refusal.search(result["stderr"]) if refusal else None
        why = f"{REFUSED}: {found.group(0)}" if found else missing
        return Cell(NOT_ATTEMPTED, why[:300])
    if result["error_type"] in JUDGEABLE_ERRORS:
        return Cell(CONTAINED, f"the sandbox died under the code: {result['error']}"[:300])
    return Cell(CONTAINED)


def _wrong_run(
    snippet: Snippet, result: dict[str, Any], expected_mode: str, require_controls: bool
) -> str | None:
    """Why the run is not one to judge (not run, wrong mode or runtime, a failed control)."""
    if result["error"] and result["error_type"] not in JUDGEABLE_ERRORS:
        return f"the run could not happen: {result['error']}"
    if result["sandbox_mode"] != expected_mode.split("-", maxsplit=1)[0]:
        why = f": {result['error_type']}: {result['error']}" if result["error"] else ""
        return f"ran in {result['sandbox_mode']!r}{why}"
    runtime = str((result["isolation"] or {}).get("runtime", ""))
    if expected_mode == "docker-runsc" and not runtime.startswith("runsc"):
        return f"ran on runtime {runtime!r}, not runsc"
    if require_controls and snippet.control and not result["success"]:
        why = result["error"] or result["violations"] or result["stderr"][-200:]
        return f"harmless control did not succeed: {why}"
    return None
