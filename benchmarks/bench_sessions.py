"""Sessions and figures, side by side with one-shot runs, in one run on this machine.

Rows: a warm one-shot python run and a session call doing the same small step (``x += 1``),
both paced (one call every 200 ms) and back to back; opening a session (its pool warm) against
a warm one-shot run; a session call that draws one line plot with figure capture on and off
(pyplot already imported, so the import is not counted). Targets (issue #12) are ratios between
rows of the same run.

Prints a Markdown table (the one in docs/benchmarks.md) and writes
benchmarks/results/sessions.json.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from athena.mcp.memory_api import MemoryAPI
from benchmarks.bench_latency import percentiles, publish, wait_for_no_containers
from orchestrator.settings import Settings

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
PACE_S = 0.2
OUT = Path(__file__).resolve().parent / "results" / "sessions.json"
STEP = "x = globals().get('x', 0) + 1"
PLOT = "plt.close('all')\nplt.figure()\nplt.plot([1, 3, 2, 4])"
TARGETS = {
    "session call p50 / warm one-shot p50 (paced)": 1.0,
    "session call p50 / warm one-shot p50 (back to back)": 1.0,
    "figure capture: added p50 (ms)": 50.0,
}


def timed(
    action: Callable[[], object], rounds: int = ROUNDS, pace: float = 0.0
) -> dict[str, float]:
    """Time ``action`` ``rounds`` times after one warm-up, ``pace`` seconds apart."""
    action()
    samples = []
    for _ in range(rounds):
        if pace:
            time.sleep(pace)
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)


def checked(result: dict[str, Any]) -> dict[str, Any]:
    """The result, when it succeeded."""
    assert result["success"], result["error"] or result["stderr"]
    return result


def measure() -> dict[str, Any]:
    """Run every measurement and return the figures."""
    client = docker.from_env()
    latency: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="athena-bench-") as tmp,
        MemoryAPI.create(Path(tmp) / "m.db", settings=Settings(pool_size=2)) as api,
    ):
        api.prewarm("python")
        one_shot = lambda: checked(api.execute_code(STEP))  # noqa: E731
        with api.open_session("python") as session:
            call = lambda: checked(session.execute_code(STEP))  # noqa: E731
            for pace, label in (
                (PACE_S, f"1 call / {int(PACE_S * 1000)} ms"),
                (0.0, "back to back"),
            ):
                time.sleep(1)  # a full pool to start from
                latency[f"warm one-shot run, {label}"] = timed(one_shot, pace=pace)
                latency[f"session call, {label}"] = timed(call, pace=pace)
            checked(session.execute_code("import matplotlib.pyplot as plt"))
            latency["session call drawing a line plot, capture off"] = timed(
                lambda: checked(session.execute_code(PLOT, capture_figures=False)), pace=PACE_S
            )
            latency["session call drawing a line plot, capture on"] = timed(
                lambda: checked(session.execute_code(PLOT)), pace=PACE_S
            )
        opens = []
        for _ in range(max(5, ROUNDS // 4)):
            time.sleep(1.5)  # the session pool refilled
            start = time.perf_counter()
            opened = api.open_session("python")
            opens.append((time.perf_counter() - start) * 1000)
            opened.close()
        latency["open_session (session pool warm)"] = percentiles(opens)
    left = wait_for_no_containers(client)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}, "
        f"Docker {client.version()['Version']}, Python {platform.python_version()}",
        "rounds": ROUNDS,
        "latency_ms": latency,
        "containers_left": left,
    }


def ratios(figures: dict[str, Any]) -> dict[str, float]:
    """The figures the targets are about."""
    latency = figures["latency_ms"]
    paced = f"1 call / {int(PACE_S * 1000)} ms"

    def p50(name: str) -> float:
        return float(latency[name]["p50"])

    return {
        "session call p50 / warm one-shot p50 (paced)": round(
            p50(f"session call, {paced}") / p50(f"warm one-shot run, {paced}"), 3
        ),
        "session call p50 / warm one-shot p50 (back to back)": round(
            p50("session call, back to back") / p50("warm one-shot run, back to back"), 3
        ),
        "figure capture: added p50 (ms)": round(
            p50("session call drawing a line plot, capture on")
            - p50("session call drawing a line plot, capture off"),
            2,
        ),
    }


def table(figures: dict[str, Any]) -> str:
    """Render the figures as docs/benchmarks.md's Markdown."""
    lines = ["| what (python) | p50 ms | p95 ms |", "|---|---:|---:|"]
    lines += [
        f"| {name} | {row['p50']} | {row['p95']} |" for name, row in figures["latency_ms"].items()
    ]
    lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
    for name, value in ratios(figures).items():
        goal = TARGETS[name]
        lines.append(f"| {name} | {value} | <= {goal} | {'yes' if value <= goal else 'NO'} |")
    lines.append(
        f"| containers of ours left afterwards | {figures['containers_left']} | 0 | "
        f"{'yes' if figures['containers_left'] == 0 else 'NO'} |"
    )
    lines += [
        "",
        f"Measured {figures['when']} on {figures['machine']}, {figures['rounds']} rounds per row.",
    ]
    return "\n".join(lines)


def main() -> int:
    """Measure, print the table, write the JSON."""
    figures = measure()
    figures["ratios"] = ratios(figures)
    return publish(figures, OUT, table)


if __name__ == "__main__":
    sys.exit(main())
