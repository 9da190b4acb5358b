"""Throughput and latency of the fast mode, side by side, in one run, on this machine (issue #13).

Throughput rows (runs/s of `print(1)`, or `pass` for the bare Docker cycle): Docker's own
create/start/wait/remove over 4 threads through the SDK's low-level client; our
``execute_code_batch`` at concurrency 8 under ``strict-fast`` (the fast mode) and under
``strict`` (one Docker container per run); epicbox 1.1.0's per-run containers at 4 and 8 in
flight; the host interpreter at 8 in flight. The rows are measured in alternated rounds (the
median is reported), so drift on a shared machine hits all of them. Latency rows (p50): the fast
mode and the Docker warm path at one run every 200 ms and back to back, against the host
interpreter's start. Every run of ours must succeed; the mode that ran each is counted, so a
policy that fell back to Docker shows as such. Targets are ratios between rows of this run.

Prints a Markdown table and writes benchmarks/results/fast.json. BENCH_RUNS (runs per
throughput row), BENCH_THROUGHPUT_ROUNDS and BENCH_ROUNDS (samples per latency row) shrink it
for a smoke run.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from athena.mcp.memory_api import MemoryAPI
from benchmarks.bench_latency import (
    IMAGE,
    host_python,
    ours,
    publish,
    timed,
    wait_for_no_containers,
)
from orchestrator.policy import shipped_policy_names
from orchestrator.settings import Settings

RUNS = int(os.environ.get("BENCH_RUNS", "150"))
THROUGHPUT_ROUNDS = int(os.environ.get("BENCH_THROUGHPUT_ROUNDS", "3"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
CONCURRENCY, RAW_THREADS, EPICBOX_IN_FLIGHT = 8, 4, (4, 8)
PACE_S = 0.2
FAST_POLICY, DOCKER_POLICY = "strict-fast", "strict"
PLAIN_IMAGE = "athena-bench/python-plain"  # epicbox runs its command through the image's entrypoint
BENCH_LABEL = "athena.bench"
OUT = Path(__file__).resolve().parent / "results" / "fast.json"
RAW = f"raw Docker create/start/wait/remove, python3 -c pass, {RAW_THREADS} threads"
FAST = f"ours, fast (strict-fast), execute_code_batch, concurrency {CONCURRENCY}"
DOCKER = f"ours, docker per run (strict), execute_code_batch, concurrency {CONCURRENCY}"
HOST = f"host: /usr/bin/python3 -c 'print(1)', {CONCURRENCY} in flight"
FAST_PACED, FAST_B2B = "ours, fast, warm, 1 run / 200 ms", "ours, fast, warm, back to back"
DOCKER_PACED, DOCKER_B2B = "ours, docker, warm, 1 run / 200 ms", "ours, docker, warm, back to back"
HOST_START = "host: /usr/bin/python3 -c pass, serial"
TARGETS = {  # name -> (comparison, goal); the fast ones count only if every run ran in `fast`
    "fast throughput (runs/s)": (">=", 60.0),
    "fast throughput / raw Docker lifecycle": (">=", 6.0),
    "docker per-run throughput / epicbox (its best in-flight count)": (">=", 1.0),
    "fast warm p50 / host start p50 (1 run / 200 ms)": ("<=", 1.0),
    "fast warm p50 / host start p50 (back to back)": ("<=", 1.0),
}


def epicbox_row(in_flight: int) -> str:
    """The throughput row of epicbox at ``in_flight`` runs in flight."""
    return f"epicbox 1.1.0, a container per run, {in_flight} in flight"


def machine(client: docker.DockerClient) -> str:
    """One line naming this machine, its cores, OS, Docker and Python."""
    return (
        f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}, "
        f"Docker {client.version()['Version']}, Python {platform.python_version()}"
    )


def fast_policy() -> str:
    """``strict-fast`` when it is shipped, else ``strict`` (the mode counts then say so)."""
    return FAST_POLICY if FAST_POLICY in shipped_policy_names() else DOCKER_POLICY


def rate(action: Callable[[], object], runs: int, threads: int) -> float:
    """Runs per second for ``runs`` calls of ``action`` over ``threads`` threads."""
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: action(), range(runs)))
    return round(runs / (time.perf_counter() - start), 2)


def raw_lifecycle(api: docker.APIClient) -> None:
    """Docker's bare cycle as the issue defines it: `python3 -c pass`, network none.

    Raises:
        AssertionError: the container exited non-zero.
    """
    container = api.create_container(
        IMAGE,
        ["python3", "-c", "pass"],
        entrypoint=[],
        labels={BENCH_LABEL: "raw"},  # found and removed at the end if a run fails midway
        host_config=api.create_host_config(network_mode="none"),
    )
    try:
        api.start(container["Id"])
        status = api.wait(container["Id"])["StatusCode"]
    finally:
        api.remove_container(container["Id"], force=True)
    assert status == 0, f"raw container exited {status}"


def host_print() -> None:
    """Debian's interpreter on the host running `print(1)`."""
    done = subprocess.run(["/usr/bin/python3", "-c", "print(1)"], capture_output=True, check=True)
    assert done.stdout == b"1\n", done


def batch_rate(db: Path, policy: str, runs: int) -> dict[str, Any]:
    """Our sustained throughput: ``runs`` `print(1)` calls in one batch on a fresh API.

    A warm-up batch first (images, pools, anything a mode prepares once), then a full pool,
    as a process that has been running would have.
    """
    call = {"code": "print(1)", "sandbox_policy": policy}
    with MemoryAPI.create(db, settings=Settings()) as api:
        api.execute_code_batch([call] * CONCURRENCY, CONCURRENCY)
        api.prewarm("python", policy)
        time.sleep(2)
        start = time.perf_counter()
        results = api.execute_code_batch([call] * runs, CONCURRENCY)
        elapsed = time.perf_counter() - start
    failed = [r for r in results if not (r["success"] and r["stdout"].strip() == "1")]
    return {
        "runs_per_s": round(runs / elapsed, 2),
        "failed": len(failed),
        "first_failure": (failed[0]["error"] or failed[0]["stderr"]) if failed else None,
        "modes": dict(Counter(r["sandbox_mode"] for r in results)),
    }


def _epicbox_retry() -> type:
    """urllib3 2's Retry, taking the keyword epicbox 1.1.0 still passes.

    ``method_whitelist`` was renamed ``allowed_methods`` in urllib3 1.26 and removed in 2.0;
    without this, epicbox's first call raises TypeError.
    """
    from urllib3.util.retry import Retry

    class LegacyRetry(Retry):
        def __init__(self, *args: Any, method_whitelist: Any = None, **kwargs: Any) -> None:
            if method_whitelist is not None:  # False meant "every method", None does now
                kwargs.setdefault("allowed_methods", method_whitelist or None)
            super().__init__(*args, **kwargs)

    return LegacyRetry


def epicbox_rate(in_flight: int, runs: int) -> dict[str, Any]:
    """epicbox's throughput on our load: `print(1)` as a file, one container per run.

    Runs in a child process: importing epicbox configures structlog for the whole process.
    Its defaults otherwise (networking disabled in the create call, root, 64 MB).
    """
    import epicbox  # type: ignore[import-untyped]
    import epicbox.utils  # type: ignore[import-untyped]

    epicbox.utils.Retry = _epicbox_retry()
    epicbox.configure(profiles=[epicbox.Profile("python", PLAIN_IMAGE)])
    files = [{"name": "main.py", "content": b"print(1)"}]

    def one() -> bool:
        result = epicbox.run("python", "python3 main.py", files=files)
        return bool(result["exit_code"] == 0 and result["stdout"] == b"1\n")

    one()  # warm-up, as ours gets
    start = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        passed = list(pool.map(lambda _: one(), range(runs)))
    elapsed = time.perf_counter() - start
    return {"runs_per_s": round(runs / elapsed, 2), "failed": passed.count(False)}


@contextmanager
def plain_image(client: docker.DockerClient) -> Iterator[str]:
    """Our python image without its entrypoint, for epicbox; removed (with any container
    left from it, and our raw cycle's) when the block ends, even on failure."""
    dockerfile = f"FROM {IMAGE}\nENTRYPOINT []\n".encode()
    client.images.build(fileobj=io.BytesIO(dockerfile), tag=PLAIN_IMAGE, rm=True)
    try:
        yield PLAIN_IMAGE
    finally:
        for filters in ({"ancestor": PLAIN_IMAGE}, {"label": BENCH_LABEL}):
            for container in client.api.containers(all=True, filters=filters):
                client.api.remove_container(container["Id"], force=True)
        client.images.remove(PLAIN_IMAGE, force=True)


def throughput_round(client: docker.DockerClient, tmp: Path, index: int) -> dict[str, Any]:
    """One round of every throughput row, each on a quiet machine."""
    rows: dict[str, Any] = {}
    rows[RAW] = {"runs_per_s": rate(lambda: raw_lifecycle(client.api), RUNS, RAW_THREADS)}
    for name, policy in ((FAST, fast_policy()), (DOCKER, DOCKER_POLICY)):
        rows[name] = batch_rate(tmp / f"{policy}-{index}.db", policy, RUNS)
        wait_for_no_containers(client)
    spawn = multiprocessing.get_context("spawn")
    for in_flight in EPICBOX_IN_FLIGHT:
        with ProcessPoolExecutor(1, mp_context=spawn) as child:
            rows[epicbox_row(in_flight)] = child.submit(epicbox_rate, in_flight, RUNS).result()
    rows[HOST] = {"runs_per_s": rate(host_print, RUNS, CONCURRENCY)}
    return rows


def counted(api: MemoryAPI, policy: str, seen: Counter[str]) -> Callable[[], None]:
    """One of our `print(1)` runs (bench_latency's), counting the mode that ran it."""
    run = ours(api, "python", policy)

    def action() -> None:
        seen[run()["sandbox_mode"]] += 1

    return action


def warm_latency(tmp: Path) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """Warm p50s of the fast mode and the Docker path, paced and back to back, and the modes
    that ran them."""
    latency: dict[str, dict[str, float]] = {HOST_START: timed(host_python, ROUNDS)}
    modes: dict[str, dict[str, int]] = {}
    rows = ((fast_policy(), FAST_PACED, FAST_B2B), (DOCKER_POLICY, DOCKER_PACED, DOCKER_B2B))
    for policy, paced, b2b in rows:
        with MemoryAPI.create(tmp / f"latency-{policy}.db", settings=Settings()) as api:
            for name, pace in ((paced, PACE_S), (b2b, 0.0)):
                api.prewarm("python", policy)
                time.sleep(2)  # a full pool to start from
                seen: Counter[str] = Counter()
                latency[name] = timed(counted(api, policy, seen), ROUNDS, pace)
                modes[name] = dict(seen)
    return latency, modes


def median_rows(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each row's median rate, its rates, failed runs and modes over every round."""
    rows: dict[str, Any] = {}
    for name in rounds[0]:
        figures = [r[name] for r in rounds]
        modes: Counter[str] = Counter()
        for figure in figures:
            modes.update(figure.get("modes", {}))
        rows[name] = {
            "runs_per_s": statistics.median(f["runs_per_s"] for f in figures),
            "rounds_runs_per_s": [f["runs_per_s"] for f in figures],
            "failed": sum(f.get("failed", 0) for f in figures),
            **({"modes": dict(modes)} if modes else {}),
            **(
                {
                    "first_failure": next(
                        f["first_failure"] for f in figures if f.get("first_failure")
                    )
                }
                if any(f.get("first_failure") for f in figures)
                else {}
            ),
        }
    return rows


def measure() -> dict[str, Any]:
    """Run every measurement and return the figures."""
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="athena-bench-") as tmp, plain_image(client):
        rounds = [throughput_round(client, Path(tmp), i) for i in range(THROUGHPUT_ROUNDS)]
        latency, latency_modes = warm_latency(Path(tmp))
    left = wait_for_no_containers(client)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(client),
        "runs_per_row": RUNS,
        "throughput_rounds": THROUGHPUT_ROUNDS,
        "rounds": ROUNDS,
        "fast_policy": fast_policy(),
        "throughput": median_rows(rounds),
        "latency_ms": latency,
        "latency_modes": latency_modes,
        "containers_left": left,
    }


def ran_fast(figures: dict[str, Any]) -> bool:
    """Whether every run of the fast rows ran in the fast mode."""
    seen = [figures["throughput"][FAST]["modes"]]
    seen += [figures["latency_modes"][FAST_PACED], figures["latency_modes"][FAST_B2B]]
    return all(set(modes) == {"fast"} for modes in seen)


def ratios(figures: dict[str, Any]) -> dict[str, float]:
    """The figures the targets are about."""
    rates = {name: row["runs_per_s"] for name, row in figures["throughput"].items()}
    latency = figures["latency_ms"]
    host = latency[HOST_START]["p50"]
    epicbox_best = max(rates[epicbox_row(n)] for n in EPICBOX_IN_FLIGHT)
    return {
        "fast throughput (runs/s)": rates[FAST],
        "fast throughput / raw Docker lifecycle": round(rates[FAST] / rates[RAW], 3),
        "docker per-run throughput / epicbox (its best in-flight count)": round(
            rates[DOCKER] / epicbox_best, 3
        ),
        "fast warm p50 / host start p50 (1 run / 200 ms)": round(
            latency[FAST_PACED]["p50"] / host, 3
        ),
        "fast warm p50 / host start p50 (back to back)": round(latency[FAST_B2B]["p50"] / host, 3),
    }


def modes_text(modes: dict[str, int] | None) -> str:
    """``fast 150`` style counts, or a dash for rows that have no modes."""
    return ", ".join(f"{mode} {count}" for mode, count in sorted((modes or {}).items())) or "-"


def table(figures: dict[str, Any]) -> str:
    """Render the figures as Markdown."""
    raw = figures["throughput"][RAW]["runs_per_s"]
    lines = [
        "| throughput (print(1)) | runs/s | / raw Docker | failed | modes |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {name} | {row['runs_per_s']} | {row['runs_per_s'] / raw:.2f} | {row['failed']} | {modes_text(row.get('modes'))} |"
        for name, row in figures["throughput"].items()
    ]
    host = figures["latency_ms"][HOST_START]["p50"]
    lines += ["", "| warm latency (print(1)) | p50 ms | p95 ms | p50 / host start | modes |"]
    lines.append("|---|---:|---:|---:|---|")
    lines += [
        f"| {name} | {row['p50']} | {row['p95']} | {row['p50'] / host:.3f} | {modes_text(figures['latency_modes'].get(name))} |"
        for name, row in figures["latency_ms"].items()
    ]
    fast_ok = ran_fast(figures)
    lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
    for name, value in ratios(figures).items():
        sign, goal = TARGETS[name]
        met = value >= goal if sign == ">=" else value <= goal
        verdict = "yes" if met else "NO"
        if name.startswith("fast") and not fast_ok:
            verdict = "NO (not every run was in the fast mode)"
        lines.append(f"| {name} | {value} | {sign} {goal} | {verdict} |")
    failed = sum(row["failed"] for row in figures["throughput"].values())
    lines.append(f"| runs that failed | {failed} | 0 | {'yes' if failed == 0 else 'NO'} |")
    lines.append(
        f"| containers of ours left afterwards | {figures['containers_left']} | 0 | "
        f"{'yes' if figures['containers_left'] == 0 else 'NO'} |"
    )
    lines += [
        "",
        f"Fast rows ran under `{figures['fast_policy']}`. {figures['runs_per_row']} runs per "
        f"throughput row, median of {figures['throughput_rounds']} alternated rounds; "
        f"{figures['rounds']} samples per latency row.",
        f"Measured {figures['when']} on {figures['machine']}.",
    ]
    return "\n".join(lines)


def main() -> int:
    """Measure, print the table, write the JSON."""
    figures = measure()
    figures["ratios"] = ratios(figures)
    figures["all_fast"] = ran_fast(figures)
    failed = sum(row["failed"] for row in figures["throughput"].values())
    return publish(figures, OUT, table) or int(failed > 0)


if __name__ == "__main__":
    sys.exit(main())
