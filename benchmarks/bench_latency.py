"""Latency side by side, in one run: the host interpreter, a naive `docker run`, and our cold path.

Prints a Markdown table (the one in the README) and writes the figures to
benchmarks/results/latest.json. Targets are ratios between rows of the same run, never absolute
times: machines are shared and noisy.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from orchestrator.models import ExecutionRequest
from orchestrator.orchestrator import Orchestrator

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
OUT = Path(__file__).resolve().parent / "results" / "latest.json"
PRINT_ONE = {"python": "print(1)", "javascript": "console.log(1)", "bash": "echo 1"}


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 1), "p95": round(p95, 1), "n": len(ordered)}


def _time(action: Callable[[], object], rounds: int = ROUNDS) -> dict[str, float]:
    action()  # warm caches once; not counted
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return _percentiles(samples)


def _host_python() -> None:
    subprocess.run(["/usr/bin/python3", "-c", "pass"], check=True)


def _naive_docker_run(client: docker.DockerClient) -> Callable[[], object]:
    def run() -> object:
        return client.containers.run(
            "athena-sandbox/python:latest",
            ["python3", "-c", "print(1)"],
            entrypoint=[],
            remove=True,
            network_mode="none",
        )

    return run


def _ours(orchestrator: Orchestrator, language: str) -> Callable[[], object]:
    def run() -> object:
        result = orchestrator.execute(
            ExecutionRequest.create(PRINT_ONE[language], language, record=False)
        )
        assert result.success, result.error or result.stderr
        return result

    return run


def _overshoot(
    orchestrator: Orchestrator, timeout: float = 1.0, rounds: int = 5
) -> dict[str, float]:
    """How far past its timeout a killed run returns, from the code's start and from the call."""
    from_start, from_call = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        result = orchestrator.execute(
            ExecutionRequest.create("while True: pass", timeout_seconds=timeout)
        )
        total = (time.perf_counter() - start) * 1000
        from_call.append(total - timeout * 1000)
        from_start.append(result.execution_time_ms - timeout * 1000)
    return {"code_ms": _percentiles(from_start)["p50"], "call_ms": _percentiles(from_call)["p50"]}


def measure() -> dict[str, Any]:
    """Run every measurement and return the figures."""
    client = docker.from_env()
    rows: dict[str, dict[str, float]] = {}
    with Orchestrator() as orchestrator:
        rows["host: /usr/bin/python3 -c pass"] = _time(_host_python)
        rows["naive docker run (SDK), python print(1)"] = _time(_naive_docker_run(client))
        for language, code in PRINT_ONE.items():
            rows[f"ours, cold path, {language} {code}"] = _time(_ours(orchestrator, language))
        overshoot = _overshoot(orchestrator)
    deadline = time.monotonic() + 5  # removal may take a moment after the last run returns
    while True:
        leftover = client.containers.list(all=True, filters={"label": "athena.sandbox"})
        if not leftover or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}, "
        f"Docker {client.version()['Version']}, Python {platform.python_version()}",
        "rounds": ROUNDS,
        "latency_ms": rows,
        "timeout_overshoot_ms": overshoot,
        "containers_left": len(leftover),
    }


def table(figures: dict[str, Any]) -> str:
    """Render the figures as the README's Markdown table."""
    naive = figures["latency_ms"]["naive docker run (SDK), python print(1)"]["p50"]
    lines = ["| what | p50 ms | p95 ms | p50 / naive docker run |", "|---|---:|---:|---:|"]
    for name, row in figures["latency_ms"].items():
        lines.append(f"| {name} | {row['p50']} | {row['p95']} | {row['p50'] / naive:.2f} |")
    over = figures["timeout_overshoot_ms"]
    lines.append("")
    lines.append(
        f"Timeout overshoot (1 s timeout, p50): {over['code_ms']} ms past the timeout from the "
        f"code's start, {over['call_ms']} ms from the call (container start included)."
    )
    lines.append(f"Containers of ours left afterwards: {figures['containers_left']}.")
    lines.append(
        f"Measured {figures['when']} on {figures['machine']}, {figures['rounds']} rounds each."
    )
    return "\n".join(lines)


def main() -> int:
    """Measure, print the table, write the JSON."""
    figures = measure()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(table(figures))
    print(f"\nfigures written to {OUT}")
    return 0 if figures["containers_left"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
