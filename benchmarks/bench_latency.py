"""Latency and throughput side by side, in one run, on this machine.

Rows: the host starting Debian's Python; a naive `docker run --rm` of our python image through
the SDK; our cold path (pool disabled); our warm path at one run every 500 ms (the pool keeps up)
and back to back (it may not); `print(1)` in python, javascript and bash; a burst of 48 runs over
8 threads against the raw Docker create/start/wait/remove cycle; the orchestrator's own CPU per
warm run (background threads included); the timeout overshoot. Targets are ratios between rows
of the same run, never absolute times: machines are shared and noisy.

Prints a Markdown table (the one in docs/benchmarks.md) and writes benchmarks/results/latest.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from athena.mcp.memory_api import MemoryAPI
from orchestrator.settings import Settings

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
BURST, BURST_THREADS, BURST_ROUNDS = 48, 8, 3
OUT = Path(__file__).resolve().parent / "results" / "latest.json"
IMAGE = "athena-sandbox/python:latest"
PRINT_ONE = {
    "python": "print(1)",
    "javascript": "console.log(1)",
    "bash": "echo 1",
    "ruby": "puts 1",
}
TARGETS = {
    "srt mode p50 / srt CLI p50": 1.10,
    "warm python p50 / naive docker run p50": 0.06,
    "warm python p50 / host interpreter start p50": 1.0,
    "burst throughput / raw Docker lifecycle": 0.9,
    "orchestrator CPU per warm run (ms)": 5.0,
}


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p95 and the count of samples (ms)."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 2), "p95": round(p95, 2), "n": len(ordered)}


def timed(
    action: Callable[[], object], rounds: int = ROUNDS, pace: float = 0.0
) -> dict[str, float]:
    """Time ``action`` ``rounds`` times (after one warm-up), ``pace`` seconds apart."""
    action()
    samples = []
    for _ in range(rounds):
        if pace:
            time.sleep(pace)
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)


def host_python() -> None:
    """Start Debian's own interpreter on the host."""
    subprocess.run(["/usr/bin/python3", "-c", "pass"], check=True)


def naive_docker_run(client: docker.DockerClient) -> None:
    """What a naive sandbox does per call: `docker run --rm` through the SDK."""
    client.containers.run(
        IMAGE, ["python3", "-c", "print(1)"], entrypoint=[], remove=True, network_mode="none"
    )


def raw_lifecycle(client: docker.DockerClient) -> None:
    """The bare Docker cycle a container-per-run design cannot avoid: create, start, wait, remove."""
    api = client.api
    container = api.create_container(
        IMAGE,
        ["python3", "-c", "print(1)"],
        entrypoint=[],
        host_config=api.create_host_config(network_mode="none"),
    )
    api.start(container["Id"])
    api.wait(container["Id"])
    api.remove_container(container["Id"], force=True)


def ours(api: MemoryAPI, language: str, policy: str | None = None) -> Callable[[], dict[str, Any]]:
    """One of our runs through the public API (recorded in the store, as users run)."""

    def run() -> dict[str, Any]:
        result = api.execute_code(PRINT_ONE[language], language, sandbox_policy=policy)
        assert result["success"], result["error"] or result["stderr"]
        return result

    return run


def srt_direct(workdir: Path) -> Callable[[], None]:
    """The srt CLI run by hand: the same settings, uid and limits as our srt mode, no orchestrator."""
    from orchestrator.backends.srt import compile_srt, find_srt, limits_argv
    from orchestrator.policy import load_policy

    srt = find_srt(Settings())
    assert srt is not None, "no srt CLI: run `make node-tools`"
    policy = load_policy("strict")
    workdir.chmod(0o711)  # as our srt mode does: the sandbox uid passes through, reads nothing
    work = workdir / "work"
    work.mkdir(mode=0o700)
    as_uid: list[str] = []
    if os.geteuid() == 0:
        os.chown(work, 61999, 61999)
        as_uid = ["setpriv", "--reuid=61999", "--regid=61999", "--clear-groups", "--"]
    settings = workdir / "srt-settings.json"
    settings.write_text(
        json.dumps(
            compile_srt(
                policy, workdir=str(work), readable=[str(srt.parent.parent / "vendor")], mounts=()
            )
        )
    )
    argv = [
        *as_uid,
        str(srt),
        "--settings",
        str(settings),
        "--",
        *limits_argv(policy),
        "/usr/bin/python3",
        "-I",
        "-c",
        "print(1)",
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8"}

    def run() -> None:
        done = subprocess.run(argv, env=env, cwd=work, capture_output=True, check=True)
        assert done.stdout == b"1\n", done

    return run


def burst(action: Callable[[], object]) -> float:
    """Runs per second for BURST calls of ``action`` over BURST_THREADS threads."""
    start = time.perf_counter()
    with ThreadPoolExecutor(BURST_THREADS) as pool:
        list(pool.map(lambda _: action(), range(BURST)))
    return round(BURST / (time.perf_counter() - start), 2)


def cpu_per_warm_run(api: MemoryAPI, rounds: int = ROUNDS) -> float:
    """This process's CPU time (all threads, the pool's refills included) per paced warm run."""
    run = ours(api, "python")
    run()
    time.sleep(1.0)
    start = time.process_time()
    for _ in range(rounds):
        run()
        time.sleep(0.5)  # lets the pool refill inside the measured window
    return round((time.process_time() - start) * 1000 / rounds, 2)


def overshoot(api: MemoryAPI, timeout: float = 1.0, rounds: int = 5) -> dict[str, float]:
    """How far past its timeout a killed run returns: from the code's start, and from the call."""
    from_code, from_call = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        result = api.execute_code("while True: pass", timeout_seconds=timeout)
        from_call.append((time.perf_counter() - start) * 1000 - timeout * 1000)
        from_code.append(result["execution_time_ms"] - timeout * 1000)
    return {
        "from_code_ms": percentiles(from_code)["p50"],
        "from_call_ms": percentiles(from_call)["p50"],
    }


def wait_for_no_containers(
    client: docker.DockerClient, timeout: float = 10, pooled_ok: bool = False
) -> int:
    """Wait until no sandbox container of ours (but pooled ones, if allowed) exists."""
    deadline = time.monotonic() + timeout
    while True:
        left = client.api.containers(all=True, filters={"label": "athena.sandbox"})
        if pooled_ok:
            left = [c for c in left if "athena.pool" not in (c.get("Labels") or {})]
        if not left or time.monotonic() > deadline:
            return len(left)
        time.sleep(0.1)


def measure() -> dict[str, Any]:
    """Run every measurement and return the figures."""
    client = docker.from_env()
    latency: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="athena-bench-") as tmp:
        latency["host: /usr/bin/python3 -c pass"] = timed(host_python)
        latency["naive docker run --rm (SDK), python"] = timed(lambda: naive_docker_run(client))
        with MemoryAPI.create(Path(tmp) / "cold.db", settings=Settings(pool_size=0)) as cold:
            for language in PRINT_ONE:
                latency[f"ours, cold (no pool), {language}"] = timed(ours(cold, language))
            over = overshoot(cold)
        with MemoryAPI.create(Path(tmp) / "warm.db", settings=Settings(pool_size=2)) as warm:
            for language in PRINT_ONE:
                warm.prewarm(language)
                latency[f"ours, warm, 1 run / 500 ms, {language}"] = timed(
                    ours(warm, language), pace=0.5
                )
            for language in PRINT_ONE:
                time.sleep(2)  # a full pool to start from
                latency[f"ours, warm, back to back, {language}"] = timed(ours(warm, language))
            cpu = cpu_per_warm_run(warm)
        if "runsc" in (client.info().get("Runtimes") or {}):
            with MemoryAPI.create(
                Path(tmp) / "gvisor.db", settings=Settings(pool_size=0)
            ) as gvisor:
                latency["ours, cold, gVisor (strict-gvisor), python"] = timed(
                    ours(gvisor, "python", "strict-gvisor")
                )
            with MemoryAPI.create(
                Path(tmp) / "gvisor-warm.db", settings=Settings(pool_size=2)
            ) as gvisor:
                gvisor.prewarm("python", "strict-gvisor")
                latency["ours, warm, 1 run / 500 ms, gVisor, python"] = timed(
                    ours(gvisor, "python", "strict-gvisor"), pace=0.5
                )
        srt_rows = {}
        if not os.environ.get("BENCH_NO_SRT"):
            srt_rows["srt CLI run directly, python"] = timed(srt_direct(Path(tmp)))
            with MemoryAPI.create(
                Path(tmp) / "srt.db", settings=Settings(sandbox_backends=("srt",))
            ) as srt_api:
                srt_rows["ours, srt mode, python"] = timed(ours(srt_api, "python"))
        latency.update(srt_rows)
        wait_for_no_containers(client)
        raw_rates, our_rates = [], []
        with MemoryAPI.create(Path(tmp) / "burst.db") as default_api:
            for _ in range(BURST_ROUNDS):  # alternated, so drift on a shared machine hits both
                raw_rates.append(burst(lambda: raw_lifecycle(client)))
                default_api.prewarm("python")
                time.sleep(2)  # a full pool, as a process that has been running would have
                our_rates.append(burst(ours(default_api, "python")))
                wait_for_no_containers(client, pooled_ok=True)
        raw_rate, our_rate = statistics.median(raw_rates), statistics.median(our_rates)
    left = wait_for_no_containers(client)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}, "
        f"Docker {client.version()['Version']}, Python {platform.python_version()}",
        "rounds": ROUNDS,
        "latency_ms": latency,
        "burst_runs_per_s": {
            "raw Docker create/start/wait/remove": raw_rate,
            "ours (default pool)": our_rate,
        },
        "burst_rounds_runs_per_s": {"raw": raw_rates, "ours": our_rates},
        "orchestrator_cpu_ms_per_warm_run": cpu,
        "timeout_overshoot_ms": over,
        "containers_left": left,
    }


def ratios(figures: dict[str, Any]) -> dict[str, float]:
    """The figures the targets are about."""
    latency = figures["latency_ms"]
    warm = latency["ours, warm, 1 run / 500 ms, python"]["p50"]
    rates = figures["burst_runs_per_s"]
    return {
        "warm python p50 / naive docker run p50": round(
            warm / latency["naive docker run --rm (SDK), python"]["p50"], 3
        ),
        "warm python p50 / host interpreter start p50": round(
            warm / latency["host: /usr/bin/python3 -c pass"]["p50"], 3
        ),
        "burst throughput / raw Docker lifecycle": round(
            rates["ours (default pool)"] / rates["raw Docker create/start/wait/remove"], 3
        ),
        "orchestrator CPU per warm run (ms)": figures["orchestrator_cpu_ms_per_warm_run"],
        **(
            {
                "srt mode p50 / srt CLI p50": round(
                    latency["ours, srt mode, python"]["p50"]
                    / latency["srt CLI run directly, python"]["p50"],
                    3,
                )
            }
            if "ours, srt mode, python" in latency
            else {}
        ),
    }


def table(figures: dict[str, Any]) -> str:
    """Render the figures as docs/benchmarks.md's Markdown."""
    latency = figures["latency_ms"]
    naive = latency["naive docker run --rm (SDK), python"]["p50"]
    lines = [
        "| what (print(1)) | p50 ms | p95 ms | p50 / naive docker run |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {row['p50']} | {row['p95']} | {row['p50'] / naive:.3f} |"
        for name, row in latency.items()
    ]
    rates = figures["burst_runs_per_s"]
    lines += [
        "",
        f"Burst of {BURST} runs over {BURST_THREADS} threads (median of {BURST_ROUNDS}, alternated): "
        + ", ".join(f"{name} {rate} runs/s" for name, rate in rates.items())
        + ".",
    ]
    over = figures["timeout_overshoot_ms"]
    lines.append(
        f"Timeout overshoot (1 s timeout, p50): {over['from_code_ms']} ms past the timeout "
        f"from the code's start, {over['from_call_ms']} ms from the call."
    )
    lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
    for name, value in ratios(figures).items():
        goal = TARGETS[name]
        met = value >= goal if name.startswith("burst") else value <= goal
        lines.append(
            f"| {name} | {value} | {'>=' if name.startswith('burst') else '<='} {goal} | {'yes' if met else 'NO'} |"
        )
    lines.append(
        f"| containers of ours left afterwards | {figures['containers_left']} | 0 | "
        f"{'yes' if figures['containers_left'] == 0 else 'NO'} |"
    )
    lines.append("")
    lines.append(
        f"Measured {figures['when']} on {figures['machine']}, {figures['rounds']} rounds per row."
    )
    return "\n".join(lines)


def publish(figures: dict[str, Any], out: Path, render: Callable[[dict[str, Any]], str]) -> int:
    """Write a benchmark's figures as JSON, print its table; 1 when it left containers."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(render(figures))
    print(f"\nfigures written to {out}")
    return 0 if figures["containers_left"] == 0 else 1


def main() -> int:
    """Measure, print the table, write the JSON."""
    figures = measure()
    figures["ratios"] = ratios(figures)
    return publish(figures, OUT, table)


if __name__ == "__main__":
    sys.exit(main())
