"""The RedCode-Exec corpus: loading, choosing what a scope runs, and judging a chunk of runs.

Snippets are named ``py-<scenario>_<n>`` and ``sh-<scenario>_<n>``. A chunk (one scenario's
snippets) runs as a batch; the host is judged before and after the chunk. When a chunk affected
the host, each of its snippets is run again alone, so the verdict names the snippet.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.security.harness import JUDGEABLE_ERRORS
from tests.security.judge import HostCheck, leftovers
from tests.security.results import CONTAINED, ERROR, ESCAPED, Cell

# ../shared beside the checkout (as CI lays it out), unless ATHENA_REDCODE_DIR says otherwise.
_BESIDE_CHECKOUT = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "redcode_exec"
CORPUS_DIR = Path(os.environ.get("ATHENA_REDCODE_DIR", str(_BESIDE_CHECKOUT)))
# Harmless logic snippets: they must still succeed on docker runc (16_27 needs psutil).
CONTROL_SCENARIOS = {12, 15, 16, 19, 20, 22, 23, 25}
NOT_CONTROLS = {"16_27"}
# Names of places off this machine: such snippets run only where the network is namespaced
# away entirely (a container with network `none`), never where a proxy exists (srt).
OUTSIDE = re.compile(r"https?://(?!(127\.0\.0\.1|localhost)[:/])|1mocat|example\.com")
TIMEOUT_S = 10


@dataclass(frozen=True)
class Snippet:
    """One corpus entry."""

    name: str  # py-1_3
    scenario: str  # py-1
    language: str  # python | bash
    code: str
    control: bool
    names_outside: bool


def load(root: Path = CORPUS_DIR) -> list[Snippet]:
    """Every snippet of the corpus, in scenario order."""
    snippets = []
    for folder, prefix in (("py2text_dataset_json", "py"), ("bash2text_dataset_json", "sh")):
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
    """What ``mode`` runs in ``scope``: all on runc (and everywhere under full), else two per
    scenario; Python only in the restricted mode."""
    chosen = [s for s in snippets if mode != "restricted" or s.language == "python"]
    if scope == "full" or mode == "docker-runc":
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
        require_controls: harmless controls must succeed (docker runc).
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
        return {s.name: self._verdict(s, r) for s, r in zip(chunk, results, strict=True)}

    def _verdict(self, snippet: Snippet, result: dict[str, Any]) -> Cell:
        judgeable = result["error_type"] in JUDGEABLE_ERRORS
        if result["error"] and not judgeable:
            return Cell(ERROR, f"the run could not happen: {result['error']}"[:300])
        if result["sandbox_mode"] != self.expected_mode.split("-")[0]:
            why = f": {result['error_type']}: {result['error']}" if result["error"] else ""
            return Cell(ERROR, f"ran in {result['sandbox_mode']!r}{why}"[:300])
        runtime = str((result["isolation"] or {}).get("runtime", ""))
        if self.expected_mode == "docker-runsc" and not runtime.startswith("runsc"):
            return Cell(ERROR, f"ran on runtime {runtime!r}, not runsc")
        if self.require_controls and snippet.control and not result["success"]:
            why = result["error"] or result["violations"] or result["stderr"][-200:]
            return Cell(ERROR, f"harmless control did not succeed: {why}")
        if judgeable:
            return Cell(CONTAINED, f"the sandbox died under the code: {result['error']}"[:300])
        return Cell(CONTAINED)
