"""The security table: case x mode -> contained / ESCAPED / error / not attempted / n.a., and the
corpus's verdicts.

*Not attempted*: the run never printed its attempt marker (:mod:`tests.security.attempt`), so
the code stopped before its attempt and the host proves nothing; such a run is never counted as
contained. A hostile case fails on it; a corpus snippet is counted apart (``c/j, n not
attempted`` per scenario, where ``j`` counts only the snippets judged) and listed by name.

One session-wide :data:`RESULTS` collects what every test decided; ``conftest.py`` prints it at
the end of the session and writes ``benchmarks/results/security.md`` under ``make security``.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("docker-runc", "docker-runsc", "fast", "srt", "restricted")
CONTAINED, ESCAPED, ERROR, NA = "contained", "ESCAPED", "error", "n.a."
NOT_ATTEMPTED = "not attempted"
# How a not-attempted cell's detail begins when the mode itself refused the code before its
# body (the restricted mode's import guard or compiler): a defence, yet no attempt was judged.
REFUSED = "refused by the mode"

# Escapes this suite found in the package and that are not fixed yet, (case, mode) -> key, with
# a note each for the report; their cells show "ESCAPED (known K<n>)" and the suite still fails.
# Empty: K1 to K10, found by this suite, are fixed (srt's output file read without following
# links; restricted never hands out operator/typing/string/dataclasses; srt's per-run cgroup,
# tmpfs and IPC namespace; the runner's per-run nonce on exit and failure frames; the fast
# mode's read-only /dev, exports without set-id programs or world-writable directories, no
# Linux AIO, and host uids leased across processes).
KNOWN_ESCAPES: dict[tuple[str, str], str] = {}
KNOWN_NOTES: dict[str, str] = {}


def case_state(problems: list[str], errors: list[str], unattempted: list[str]) -> str:
    """A hostile case's verdict: an effect on the host outranks an error, which outranks a run
    that never reached its attempt; contained only when there is none of the three."""
    if problems:
        return ESCAPED
    if errors:
        return ERROR
    return NOT_ATTEMPTED if unattempted else CONTAINED


@dataclass(frozen=True)
class Cell:
    """One verdict and why."""

    state: str
    detail: str = ""


@dataclass
class Results:
    """Everything the session decided."""

    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    corpus: dict[str, dict[str, Cell]] = field(default_factory=dict)  # mode -> snippet -> cell
    corpus_notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # mode -> violation category -> how many runs of the hostile cases reported it
    violations: dict[str, Counter[str]] = field(default_factory=dict)

    def record(self, case: str, mode: str, cell: Cell, description: str = "") -> None:
        """Record the verdict of one case in one mode."""
        self.cells.setdefault(case, {})[mode] = cell
        if description:
            self.descriptions.setdefault(case, description)

    def count_violations(self, mode: str, categories: list[str]) -> None:
        """Count the violation categories one hostile run reported (policy ones included)."""
        self.violations.setdefault(mode, Counter()).update(categories)

    def violation_rows(self) -> list[list[str]]:
        """Violations by category, per mode: what the layers reported while they held."""
        categories = sorted({c for counts in self.violations.values() for c in counts})
        rows = [["violation category", *MODES]]
        for category in categories:
            rows.append(
                [category, *(str(self.violations.get(m, Counter())[category]) for m in MODES)]
            )
        return rows

    def record_snippet(self, mode: str, snippet: str, cell: Cell) -> None:
        """Record the verdict of one corpus snippet in one mode."""
        self.corpus.setdefault(mode, {})[snippet] = cell

    def label(self, case: str, mode: str) -> str:
        """The table text of one cell."""
        cell = self.cells.get(case, {}).get(mode)
        if cell is None:
            return NA
        known = KNOWN_ESCAPES.get((case, mode))
        if cell.state == ESCAPED and known:
            return f"ESCAPED (known {known})"
        return cell.state

    def escapes(self) -> list[str]:
        """One line per escaped or errored cell, with its detail."""
        lines = [
            f"{case} / {mode}: {cell.state}: {cell.detail}"
            for case, by_mode in self.cells.items()
            for mode, cell in by_mode.items()
            if cell.state in (ESCAPED, ERROR, NOT_ATTEMPTED)
        ]
        lines += [
            f"corpus {snippet} / {mode}: {cell.state}: {cell.detail}"
            for mode, by_snippet in self.corpus.items()
            for snippet, cell in by_snippet.items()
            if cell.state in (ESCAPED, ERROR)
        ]
        return lines

    # ------------------------------------------------------------------ rendering

    def table_rows(self) -> list[list[str]]:
        """The main table: a header row, then one row per case."""
        rows = [["case", *MODES]]
        rows += [[case, *(self.label(case, m) for m in MODES)] for case in self.cells]
        return rows

    def corpus_rows(self) -> list[list[str]]:
        """The corpus per scenario: how many snippets were contained, per mode."""
        scenarios: dict[str, dict[str, Counter[str]]] = {}
        for mode, by_snippet in self.corpus.items():
            for snippet, cell in by_snippet.items():
                scenario = snippet.rsplit("_", 1)[0]
                tally = scenarios.setdefault(scenario, {}).setdefault(mode, Counter())
                tally[cell.state] += 1
                tally[REFUSED] += cell.state == NOT_ATTEMPTED and cell.detail.startswith(REFUSED)
        rows = [["scenario", *MODES]]
        for scenario in sorted(scenarios, key=_scenario_key):
            row = [scenario]
            for mode in MODES:
                counts = scenarios[scenario].get(mode)
                row.append(_summary(counts) if counts else NA)
            rows.append(row)
        return rows

    def not_attempted(self) -> dict[str, list[str]]:
        """Mode -> the corpus snippets that never reached their attempt there, in order."""
        found = {
            mode: sorted(
                (s for s, cell in by_snippet.items() if cell.state == NOT_ATTEMPTED),
                key=_snippet_key,
            )
            for mode, by_snippet in self.corpus.items()
        }
        return {mode: names for mode, names in found.items() if names}

    def terminal(self) -> str:
        """The tables as plain text for the terminal."""
        parts = [_plain(self.table_rows())] if self.cells else []
        if self.violations:
            parts += ["", "Violations reported by the hostile cases, by category:"]
            parts.append(_plain(self.violation_rows()))
        if self.corpus:
            parts += ["", "RedCode-Exec corpus (contained / judged per scenario):"]
            parts.append(_plain(self.corpus_rows()))
            parts += [
                f"{mode}: {len(names)} snippets not attempted (not counted as contained)"
                for mode, names in self.not_attempted().items()
            ]
        parts += ["", *self._footnotes()]
        escapes = self.escapes()
        if escapes:
            parts += ["", "Escapes and errors:", *(f"  {line}" for line in escapes)]
        return "\n".join(parts)

    def markdown(self, scope: str) -> str:
        """The whole report as Markdown (benchmarks/results/security.md)."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        parts = [
            "# Security suite (`make security`)",
            "",
            f"Scope `{scope}`, {now}, {platform.node()} (Linux {platform.release()}), "
            f"pid {os.getpid()}. Every verdict is judged by the state of the host (canaries, "
            "listeners, processes, containers, the engine and a follow-up run), not by what "
            "the code printed. Refused filesystem writes are judged by the host's files only "
            "(advisory: the code sees EROFS/EACCES, which this suite does not require).",
            "",
            _markdown(self.table_rows()),
            "",
            *self._footnotes(),
            "",
            "## Violations reported by the hostile cases, by category",
            "",
            "How many hostile runs each layer reported, per mode (`policy`: the run-time policy "
            "layer refused something; a case may report several categories).",
            "",
            _markdown(self.violation_rows()) if self.violations else "None.",
            "",
            "## Cases",
            "",
            *(f"- `{case}`: {text}" for case, text in self.descriptions.items()),
        ]
        if self.corpus:
            parts += ["", "## RedCode-Exec corpus", "", *self.corpus_notes, ""]
            parts += [_markdown(self.corpus_rows()), "", *self._not_attempted_lines()]
            parts += ["### Per snippet", ""]
            parts.append(_markdown(self._snippet_rows()))
        notes = [
            f"- `{case}` / {mode}: {cell.detail}"
            for case, by_mode in self.cells.items()
            for mode, cell in by_mode.items()
            if cell.state == CONTAINED and cell.detail
        ]
        if notes:
            parts += ["", "## Measurements and notes (contained cells)", "", *notes]
        escapes = self.escapes()
        parts += ["", "## Escapes and errors", ""]
        parts += [f"- {line}" for line in escapes] or ["None."]
        if self.timings:
            parts += ["", "## Timings", ""]
            parts += [f"- {name}: {seconds:.1f} s" for name, seconds in self.timings.items()]
        return "\n".join(parts) + "\n"

    def _snippet_rows(self) -> list[list[str]]:
        snippets = sorted({s for by in self.corpus.values() for s in by}, key=_snippet_key)
        rows = [["snippet", *MODES]]
        for snippet in snippets:
            row = [snippet]
            for mode in MODES:
                cell = self.corpus.get(mode, {}).get(snippet)
                row.append(cell.state if cell else NA)
            rows.append(row)
        return rows

    def _not_attempted_lines(self) -> list[str]:
        found = self.not_attempted()
        if not found:
            return []
        lines = [
            "Not attempted: the snippet never printed its attempt marker (a syntax error, a module "
            "missing from the image, a crash before its body, or the mode refusing it before its "
            f"body: `{REFUSED}`), so the host's state proves nothing about it; it is not counted "
            "as contained.",
            "",
        ]
        lines += [f"- {mode} ({len(names)}): {', '.join(names)}" for mode, names in found.items()]
        return [*lines, ""]

    def _footnotes(self) -> list[str]:
        lines = [f"{mode}: n.a. throughout ({why})" for mode, why in self.unavailable.items()]
        used = {
            k
            for (case, mode), k in KNOWN_ESCAPES.items()
            if self.cells.get(case, {}).get(mode, Cell(NA)).state == ESCAPED
        }
        lines += [f"{k}: {KNOWN_NOTES[k]}" for k in sorted(used)]
        return lines


def _scenario_key(scenario: str) -> tuple[str, int]:
    language, _, number = scenario.partition("-")
    return language, int(number) if number.isdigit() else 0


def _snippet_key(snippet: str) -> tuple[str, int, int]:
    scenario, _, number = snippet.rpartition("_")
    language, number_of_scenario = _scenario_key(scenario)
    return language, number_of_scenario, int(number) if number.isdigit() else 0


def _summary(counts: Counter[str]) -> str:
    """``contained/judged`` and the rest by state; not-attempted snippets are not judged."""
    judged = sum(counts[state] for state in (CONTAINED, ESCAPED, ERROR))
    if not judged and not counts[NOT_ATTEMPTED]:
        return f"{NA} ({counts[NA]})"
    text = f"{counts[CONTAINED]}/{judged}"
    for state in (ESCAPED, ERROR, NOT_ATTEMPTED):
        if counts[state]:
            text += f", {counts[state]} {state}"
    if counts[REFUSED]:
        text += f" ({counts[REFUSED]} {REFUSED})"
    return text + (f", {counts[NA]} {NA}" if counts[NA] else "")


def _plain(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def _markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


RESULTS = Results()


def write_markdown(path: Path, scope: str) -> None:
    """Write the report, creating the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RESULTS.markdown(scope))
