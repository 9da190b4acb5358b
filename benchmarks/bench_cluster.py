"""The cluster on one machine: throughput through HAProxy with one, two and three nodes.

Starts the cluster of ``make cluster-up`` (``scripts/cluster.sh up``: PostgreSQL, three nodes,
HAProxy on 127.0.0.1; a cluster already up is torn down first) and stops it afterwards.

Rows, all of a small python run (``print(1)``) on the Docker engine:

(a) throughput: CLIENTS threads, each with its own remote client (``MemoryAPI.connect``),
    running back to back for SECONDS: against node-1 directly, then through the load balancer
    with node-1 alone in its backend, node-1 and node-2, and all three (the others are taken
    out with HAProxy's runtime API, ``set server ... state maint``). Runs per second and the
    runs' p50/p95.
(b) what the load balancer adds: one client, one call at a time (paced, so the warm pool
    keeps up), alternating between node-1 directly and through the load balancer with node-1
    alone behind it, so drift on a shared machine hits both sides: the p50 of a run each way
    and of a request that runs nothing (``GET /v1/whoami``), and their differences (target:
    the load balancer adds at most 2 ms p50).

Every node shares this machine's cores and engine: with two cores, more nodes cannot run
more at once, so (a) shows the per-node figure and the cost of spreading, not scaling.

Prints a Markdown table and writes benchmarks/results/cluster.json.

Environment: BENCH_CLUSTER_SECONDS (per throughput row, default 20), BENCH_CLUSTER_CLIENTS
(default 6), BENCH_ROUNDS (pairs in (b), default 60; the request row takes four times as many).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx

from athena.mcp.memory_api import MemoryAPI
from benchmarks.bench_latency import percentiles, publish

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "cluster.json"
SECONDS = float(os.environ.get("BENCH_CLUSTER_SECONDS", "20"))
CLIENTS = int(os.environ.get("BENCH_CLUSTER_CLIENTS", "6"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "60"))
PACE_S = 0.2
NODES = ("node-1", "node-2", "node-3")
TARGET_ADDED_P50_MS = 2.0


class Cluster:
    """The running cluster: URLs, token, and HAProxy's runtime API."""

    def __init__(self, env: dict[str, str], state: Path) -> None:
        self.url, self.token, self.state = env["ATHENA_URL"], env["ATHENA_TOKEN"], state
        self.port = int(self.url.rsplit(":", 1)[1])

    def node_url(self, node: str) -> str:
        """A node's own URL (node N listens on the load balancer's port + N)."""
        return f"http://127.0.0.1:{self.port + int(node.removeprefix('node-'))}"

    def haproxy(self, command: str) -> str:
        """Send one command to HAProxy's runtime API; return its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(self.state / "haproxy.sock"))
            sock.sendall(command.encode() + b"\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        return answer.decode()

    def backend(self, count: int) -> None:
        """Keep the first ``count`` nodes in the load balancer's backend, the rest out."""
        for index, node in enumerate(NODES):
            state = "ready" if index < count else "maint"
            answer = self.haproxy(f"set server nodes/{node} state {state}")
            if answer.strip():
                raise RuntimeError(f"HAProxy refused to set {node} {state}: {answer}")


def cluster_sh(*args: str) -> str:
    """Run scripts/cluster.sh; return its stdout.

    Raises:
        subprocess.CalledProcessError: the script failed (its messages are on stderr).
    """
    done = subprocess.run(
        ["bash", "scripts/cluster.sh", *args],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    return done.stdout


@contextmanager
def running_cluster() -> Iterator[Cluster]:
    """``cluster.sh up``, the cluster it printed, ``cluster.sh down`` at the end."""
    printed = cluster_sh("up").strip().splitlines()[-2:]
    env = dict(line.split("=", 1) for line in printed)
    try:
        yield Cluster(env, Path(cluster_sh("dir").strip()))
    finally:
        cluster_sh("down")


def small_run(api: Any) -> None:
    """One ``print(1)``; a failed run fails the benchmark."""
    result = api.execute_code("print(1)")
    if not result["success"]:
        raise RuntimeError(f"a run failed: {result['error'] or result['stderr']}")


def throughput(url: str, token: str) -> dict[str, float]:
    """CLIENTS threads running back to back for SECONDS: runs per second and latency."""
    samples: list[list[float]] = [[] for _ in range(CLIENTS)]
    errors: list[BaseException] = []
    ready = threading.Barrier(CLIENTS + 1)

    def client(mine: list[float]) -> None:
        with MemoryAPI.connect(url, token=token, timeout=60) as api:
            for _ in range(3):  # warm-up: the connection, the node's pool
                small_run(api)
            ready.wait()
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    small_run(api)
                except Exception as exc:
                    errors.append(exc)
                    return
                mine.append((time.perf_counter() - start) * 1000)

    threads = [threading.Thread(target=client, args=(mine,)) for mine in samples]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.monotonic()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    if errors:
        raise RuntimeError(f"{len(errors)} runs failed, the first: {errors[0]!r}")
    every = [ms for mine in samples for ms in mine]
    return {"runs_per_s": round(len(every) / elapsed, 1), **percentiles(every)}


def alternating(
    direct: Callable[[], object], balanced: Callable[[], object], rounds: int, pace: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Time two calls alternately (which goes first alternates too); their percentiles."""
    direct()
    balanced()
    times: tuple[list[float], list[float]] = ([], [])
    for index in range(rounds):
        pair = [(0, direct), (1, balanced)]
        for side, action in pair if index % 2 == 0 else reversed(pair):
            time.sleep(pace)
            start = time.perf_counter()
            action()
            times[side].append((time.perf_counter() - start) * 1000)
    return percentiles(times[0]), percentiles(times[1])


def added_latency(cluster: Cluster) -> dict[str, dict[str, float]]:
    """One call at a time, node-1 directly and through the load balancer, alternately."""
    node = cluster.node_url("node-1")
    rows: dict[str, dict[str, float]] = {}
    with (
        MemoryAPI.connect(node, token=cluster.token) as direct,
        MemoryAPI.connect(cluster.url, token=cluster.token) as balanced,
    ):
        rows["run, node-1 directly"], rows["run, through HAProxy"] = alternating(
            lambda: small_run(direct), lambda: small_run(balanced), ROUNDS, PACE_S
        )
    headers = {"Authorization": f"Bearer {cluster.token}"}
    with (
        httpx.Client(base_url=node, headers=headers) as direct_http,
        httpx.Client(base_url=cluster.url, headers=headers) as balanced_http,
    ):
        rows["GET /v1/whoami, node-1 directly"], rows["GET /v1/whoami, through HAProxy"] = (
            alternating(
                lambda: direct_http.get("/v1/whoami").raise_for_status(),
                lambda: balanced_http.get("/v1/whoami").raise_for_status(),
                ROUNDS * 4,
                0.01,
            )
        )
    return rows


def containers_left() -> int:
    """Sandbox containers of the cluster's nodes still on the engine (10 s grace)."""
    client = docker.from_env()
    try:
        deadline = time.monotonic() + 10
        while True:
            left = [
                c
                for node in NODES
                for c in client.api.containers(
                    all=True, filters={"label": f"athena.owner.node={node}"}
                )
            ]
            if not left or time.monotonic() > deadline:
                return len(left)
            time.sleep(0.1)
    finally:
        client.close()


def measure() -> dict[str, Any]:
    """Run every measurement and return the figures."""
    rows: dict[str, dict[str, float]] = {}
    with running_cluster() as cluster:
        cluster.backend(1)
        rows["node-1 directly"] = throughput(cluster.node_url("node-1"), cluster.token)
        for count in (1, 2, 3):
            cluster.backend(count)
            time.sleep(1)
            name = f"through HAProxy, {count} node{'s' if count > 1 else ''}"
            rows[name] = throughput(cluster.url, cluster.token)
        cluster.backend(1)
        latency = added_latency(cluster)
    client = docker.from_env()
    try:
        engine = client.version()["Version"]
    finally:
        client.close()
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}, "
        f"Docker {engine}, Python {platform.python_version()}",
        "clients": CLIENTS,
        "seconds": SECONDS,
        "rounds": ROUNDS,
        "throughput": rows,
        "latency_ms": latency,
        "containers_left": containers_left(),
    }


def added(figures: dict[str, Any]) -> dict[str, float]:
    """What the load balancer adds to the p50 of a run and of a request that runs nothing."""
    latency = figures["latency_ms"]
    return {
        what: round(
            latency[f"{what}, through HAProxy"]["p50"] - latency[f"{what}, node-1 directly"]["p50"],
            2,
        )
        for what in ("run", "GET /v1/whoami")
    }


def table(figures: dict[str, Any]) -> str:
    """Render the figures as Markdown."""
    lines = [
        f"| {figures['clients']} clients, back to back (python) | runs/s | p50 ms | p95 ms |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {row['runs_per_s']} | {row['p50']} | {row['p95']} |"
        for name, row in figures["throughput"].items()
    ]
    lines += ["", "| one call at a time, alternating | p50 ms | p95 ms |", "|---|---:|---:|"]
    lines += [
        f"| {name} | {row['p50']} | {row['p95']} |" for name, row in figures["latency_ms"].items()
    ]
    lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
    for what, value in added(figures).items():
        met = "yes" if value <= TARGET_ADDED_P50_MS else "NO"
        lines.append(
            f"| HAProxy's added p50, {what} (ms) | {value} | <= {TARGET_ADDED_P50_MS} | {met} |"
        )
    left = figures["containers_left"]
    lines.append(
        f"| containers of the nodes left afterwards | {left} | 0 | {'yes' if left == 0 else 'NO'} |"
    )
    lines += [
        "",
        f"Measured {figures['when']} on {figures['machine']}: three nodes and HAProxy on this "
        f"one machine, {figures['seconds']:g} s per throughput row, {figures['rounds']} "
        "alternating pairs of runs (paced 200 ms) for the added latency.",
    ]
    return "\n".join(lines)


def main() -> int:
    """Measure, print the table, write the JSON."""
    figures = measure()
    figures["added_p50_ms"] = added(figures)
    return publish(figures, OUT, table)


if __name__ == "__main__":
    sys.exit(main())
