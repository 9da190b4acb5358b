"""The service's figures, side by side in one run: HTTP and MCP over the same runs in-process.

Rows, all of a warm python ``print(1)`` on the Docker engine, recorded in a fresh SQLite store:

(a) one run at a time in-process (``MemoryAPI.execute_code``) against the same run through
    ``athena-sandbox serve`` on loopback (``POST /v1/execute``), interleaved so drift on a
    shared machine hits every side; p50/p95 and the p50 overhead. Three HTTP clients: a
    minimal one (the standard library's ``http.client`` on a kept-alive connection: what the
    service itself adds, the figure the target is about), httpx, and the remote client
    (``MemoryAPI.connect``, built on httpx): the last two add httpx's own per-request cost,
    which is reported apart. The run's own time (``total_time_ms``, measured inside the
    orchestrator) is subtracted from each wall time too: what is left is the layers around the
    run (recording, serialisation, thread hand-offs, HTTP), with the engine's noise taken out.
    Two rows help read the overhead: ``execute_code_async`` awaited on an event loop thread
    in-process (what the server does per run, without HTTP), and a call the validator refuses
    (no sandbox, not recorded) in-process and over HTTP: the service's own cost alone.
(b) 8 concurrent clients: 8 threads on one in-process ``MemoryAPI`` against 8 threads each
    with its own remote client; runs per second, alternated rounds, the median.
(c) ``execute_code`` as an MCP tool call with the official SDK's client: over stdio (the
    client spawns ``athena-sandbox mcp``) and over Streamable HTTP (``/mcp`` on the server).
(d) the server's resident memory (VmRSS of the serve process) after 1,000 and after 10,000
    runs, 8 at a time over HTTP, in a server of its own. Its runs take the restricted mode (a
    child process per run) by default: the engine's ~5 containers a second on a small machine
    would make 10,000 runs take half an hour (BENCH_SERVICE_RSS_BACKENDS=docker measures that).

Both sides have the same settings (this process's ``ATHENA_*`` environment plus the pool size
below) and warm pools before anything is timed. Everything listens on 127.0.0.1 and is
stopped afterwards; no container of ours may be left. Prints a Markdown table and writes
benchmarks/results/service.json.

Environment: BENCH_SERVICE_ROUNDS (runs per latency row, default 60), BENCH_SERVICE_RSS_RUNS
(default ``1000,10000``), BENCH_SERVICE_RSS_BACKENDS (``ATHENA_SANDBOX_BACKENDS`` of the
memory leg's server; default ``restricted``, see (d)), BENCH_SERVICE_SKIP (comma-separated
legs to skip: latency, throughput, mcp, rss; such a partial run writes service-partial.json).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx

from athena.mcp.memory_api import MemoryAPI
from orchestrator.backends.docker.owners import (
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_STARTED,
    LABEL_SANDBOX,
    process_start_ticks,
)
from orchestrator.settings import Settings

OUT = Path(__file__).resolve().parent / "results" / "service.json"
ROUNDS = int(os.environ.get("BENCH_SERVICE_ROUNDS", "100"))
PACE_S = 0.25  # between two timed runs; each side's pool refills in the meantime
POOL_SIZE = 2  # the default, on both sides
CLIENTS = 8
RUNS_PER_CLIENT = 6
THROUGHPUT_ROUNDS = 3
RSS_RUNS = tuple(int(n) for n in os.environ.get("BENCH_SERVICE_RSS_RUNS", "1000,10000").split(","))
# The engine starts ~5 containers a second on a 2-core machine: 10,000 runs would take half an
# hour. The memory leg's server runs them in the restricted mode (a child process per run, no
# engine) unless BENCH_SERVICE_RSS_BACKENDS says otherwise (``docker``: the engine).
RSS_BACKENDS = os.environ.get("BENCH_SERVICE_RSS_BACKENDS", "restricted")
SKIP = {leg.strip() for leg in os.environ.get("BENCH_SERVICE_SKIP", "").split(",") if leg.strip()}
CODE = "print(1)"
REFUSED = "import socket"  # the strict policy's validator refuses it before any sandbox starts
NO_SANDBOX_ROUNDS = 300
TENANT = "bench"
START_TIMEOUT_S = 60.0
LOCAL = "in-process (MemoryAPI)"
MINIMAL = "HTTP, minimal client (http.client)"
HTTPX = "HTTP, httpx"
REMOTE = "HTTP, remote client (MemoryAPI.connect)"
TARGETS = {
    "HTTP p50 overhead, minimal client (ms)": ("<=", 2.0),
    "HTTP p50 overhead around the run, minimal client (ms)": ("<=", 2.0),
    "throughput over HTTP / in-process, 8 clients": (">=", 0.9),
    "server RSS after 10,000 runs / after 1,000": ("<=", 1.10),
}


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p95 and the count of samples (ms)."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 2), "p95": round(p95, 2), "n": len(ordered)}


def checked(result: dict[str, Any]) -> dict[str, Any]:
    """A successful ``print(1)`` run's result, or an AssertionError saying what went wrong."""
    assert result["success"] and result["stdout"] == "1\n", (
        result.get("error") or result.get("stderr") or result
    )
    return result


# --------------------------------------------------------------------------- the server


@dataclass
class Server:
    """A running ``athena-sandbox serve``: where it listens, its token, its process."""

    url: str
    token: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        """The bearer token header."""
        return {"Authorization": f"Bearer {self.token}"}

    def rss_kib(self) -> int:
        """The serve process's resident memory (VmRSS, KiB)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line for the server process")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli() -> list[str]:
    """The ``athena-sandbox`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "athena-sandbox"
    return [str(script)] if script.exists() else [sys.executable, "-m", "athena.cli"]


def child_env(directory: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server: ours, a private HOME, the pool size of both sides."""
    home = directory / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "ATHENA_TOKENS_FILE"}
    env.update({"HOME": str(home), "ATHENA_POOL_SIZE": str(POOL_SIZE)})
    env.update(extra or {})
    return env


def make_token(path: Path) -> str:
    """A tokens file with one tenant (strict and research, one run per client in flight)."""
    from athena.service.tokens import TokenFile

    _info, token = TokenFile(path).add(TENANT, max_in_flight=CLIENTS)
    return token


@contextmanager
def running_server(directory: Path, extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start ``athena-sandbox serve`` on 127.0.0.1 with a fresh store; stop it afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = directory / "tokens.json"
    token = make_token(tokens)
    port = free_port()
    command = [*cli(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--db", str(directory / "memory.db"), "--tokens", str(tokens)]
    log = directory / "server.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=child_env(directory, extra_env)
        )
    server = Server(url=f"http://127.0.0.1:{port}", token=token, process=process, log=log)
    try:
        wait_healthy(server)
        yield server
    finally:
        stop(server.process)


def wait_healthy(server: Server) -> None:
    """Wait until the server answers /healthz (RuntimeError with its log if it does not)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"serve exited: {server.log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"serve did not answer: {server.log.read_text(errors='replace')[-3000:]}")


def stop(process: subprocess.Popen[bytes], grace: float = 40.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``grace`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def owner_of(pid: int) -> dict[str, str]:
    """The owner labels a process puts on its containers."""
    return {
        LABEL_OWNER_HOST: socket.gethostname(),
        LABEL_OWNER_PID: str(pid),
        LABEL_OWNER_STARTED: process_start_ticks(pid) or "?",
    }


# --------------------------------------------------------------------------- (a) latency


def http_run(client: httpx.Client) -> dict[str, Any]:
    """One run by raw httpx: ``POST /v1/execute``."""
    response = client.post("/v1/execute", json={"code": CODE})
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


class MinimalClient:
    """The least a client can do: JSON over one kept-alive connection (``http.client``)."""

    def __init__(self, server: Server) -> None:
        port = int(server.url.rsplit(":", 1)[1])
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self._headers = {**server.headers, "Content-Type": "application/json"}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` as JSON; the JSON answer (AssertionError unless 200)."""
        self._connection.request("POST", path, json.dumps(body).encode(), self._headers)
        response = self._connection.getresponse()
        data = response.read()
        assert response.status == 200, (response.status, data[:500])
        answer: dict[str, Any] = json.loads(data)
        return answer

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()


def latency(api: MemoryAPI, server: Server) -> dict[str, Any]:
    """Warm runs one at a time, in-process and over HTTP, interleaved; wall and layer times."""
    remote = MemoryAPI.connect(server.url, token=server.token)
    raw = httpx.Client(base_url=server.url, headers=server.headers, timeout=60)
    minimal = MinimalClient(server)
    loop = asyncio.new_event_loop()
    looper = threading.Thread(target=loop.run_forever, daemon=True)
    looper.start()

    def in_loop() -> dict[str, Any]:
        # What the server does per run: execute_code_async awaited on an event loop thread.
        return asyncio.run_coroutine_threadsafe(api.execute_code_async(CODE), loop).result()

    # Alternating sides of the two pools, so each pool has two paces to refill.
    sides: dict[str, Callable[[], dict[str, Any]]] = {
        LOCAL: lambda: api.execute_code(CODE),
        MINIMAL: lambda: minimal.post("/v1/execute", {"code": CODE}),
        "in-process, execute_code_async on a loop thread": in_loop,
        HTTPX: lambda: http_run(raw),
        REMOTE: lambda: remote.execute_code(CODE),
    }
    try:
        api.prewarm("python")
        assert remote.prewarm("python"), "the server's pool did not fill"
        time.sleep(2)
        for run in sides.values():  # a first call each: connections, imports, caches
            checked(run())
            time.sleep(PACE_S)
        wall: dict[str, list[float]] = {name: [] for name in sides}
        around: dict[str, list[float]] = {name: [] for name in sides}
        warm: dict[str, int] = dict.fromkeys(sides, 0)
        for _ in range(ROUNDS):
            for name, run in sides.items():
                start = time.perf_counter()
                result = checked(run())
                elapsed = (time.perf_counter() - start) * 1000
                wall[name].append(elapsed)
                around[name].append(elapsed - result["total_time_ms"])
                warm[name] += result["isolation"]["path"] == "warm"
                time.sleep(PACE_S)
    finally:
        raw.close()
        minimal.close()
        remote.close()
        loop.call_soon_threadsafe(loop.stop)
        looper.join()
        loop.close()
    return {
        "wall_ms": {name: percentiles(samples) for name, samples in wall.items()},
        "around_the_run_ms": {name: percentiles(samples) for name, samples in around.items()},
        "warm_runs": warm,
        "no_sandbox_ms": no_sandbox(api, server),
    }


def no_sandbox(api: MemoryAPI, server: Server) -> dict[str, dict[str, float]]:
    """The service's own cost: a call the validator refuses (no sandbox, not recorded)."""
    body = {"code": REFUSED, "record": False}
    raw = httpx.Client(base_url=server.url, headers=server.headers, timeout=60)
    minimal = MinimalClient(server)
    sides: dict[str, Callable[[], dict[str, Any]]] = {
        LOCAL: lambda: api.execute_code(REFUSED, record=False),
        MINIMAL: lambda: minimal.post("/v1/execute", body),
        HTTPX: lambda: raw.post("/v1/execute", json=body).json(),
    }
    samples: dict[str, list[float]] = {name: [] for name in sides}
    try:
        for _ in range(10):
            for run in sides.values():
                run()
        for _ in range(NO_SANDBOX_ROUNDS):
            for name, run in sides.items():
                start = time.perf_counter()
                result = run()
                samples[name].append((time.perf_counter() - start) * 1000)
                assert result["error"] == "Code validation failed", result
    finally:
        raw.close()
        minimal.close()
    return {name: percentiles(values) for name, values in samples.items()}


# --------------------------------------------------------------------------- (b) throughput


def burst(make_run: Callable[[], Callable[[], dict[str, Any]]]) -> float:
    """Runs per second of CLIENTS threads, each doing RUNS_PER_CLIENT runs back to back."""
    runs = [make_run() for _ in range(CLIENTS)]
    barrier = threading.Barrier(CLIENTS + 1)

    def client(run: Callable[[], dict[str, Any]]) -> None:
        barrier.wait()
        for _ in range(RUNS_PER_CLIENT):
            checked(run())

    with ThreadPoolExecutor(CLIENTS) as pool:
        done = [pool.submit(client, run) for run in runs]
        barrier.wait()
        start = time.perf_counter()
        for future in done:
            future.result()
        elapsed = time.perf_counter() - start
    return round(CLIENTS * RUNS_PER_CLIENT / elapsed, 2)


def throughput(api: MemoryAPI, server: Server) -> dict[str, Any]:
    """In-process and HTTP bursts, alternated; each starts from a full pool."""
    remotes: list[Any] = []

    def remote_run() -> Callable[[], dict[str, Any]]:
        remote = MemoryAPI.connect(server.url, token=server.token)
        remotes.append(remote)
        return lambda: remote.execute_code(CODE)

    local_rates, http_rates = [], []
    try:
        for _ in range(THROUGHPUT_ROUNDS):
            api.prewarm("python")
            time.sleep(2)
            local_rates.append(burst(lambda: lambda: api.execute_code(CODE)))
            with MemoryAPI.connect(server.url, token=server.token) as remote:
                remote.prewarm("python")
            time.sleep(2)
            http_rates.append(burst(remote_run))
            for remote in remotes:
                remote.close()
            remotes.clear()
    finally:
        for remote in remotes:
            remote.close()
    return {
        "in-process (MemoryAPI)": statistics.median(local_rates),
        "HTTP, 8 remote clients": statistics.median(http_rates),
        "rounds": {"in-process": local_rates, "HTTP": http_rates},
    }


# --------------------------------------------------------------------------- (c) MCP


def tool_ok(result: Any) -> None:
    """An MCP tool result of a successful ``print(1)``."""
    assert not result.is_error, result
    content = result.structured_content
    assert content is not None and content.get("success") and content.get("stdout") == "1\n", result


async def mcp_rounds(client: Any) -> dict[str, float]:
    """Paced ``execute_code`` tool calls on a connected MCP client; p50/p95 of the round trip."""
    for _ in range(3):  # warm-up: the session, the pool
        tool_ok(await client.call_tool("execute_code", {"code": CODE}))
        await asyncio.sleep(PACE_S * 2)
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        result = await client.call_tool("execute_code", {"code": CODE})
        samples.append((time.perf_counter() - start) * 1000)
        tool_ok(result)
        await asyncio.sleep(PACE_S * 2)
    return percentiles(samples)


def mcp_children() -> list[int]:
    """Pids of this process's children running ``athena-sandbox mcp``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and b"mcp" in cmdline:
            found.append(int(entry.name))
    return found


async def mcp_stdio(directory: Path, owners: list[dict[str, str]]) -> dict[str, float]:
    """Round trips over stdio: the SDK's client spawns ``athena-sandbox mcp``."""
    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters

    command, *args = cli()
    env = child_env(directory, {"ATHENA_MEMORY_DB": str(directory / "mcp-stdio.db")})
    params = StdioServerParameters(command=command, args=[*args, "mcp"], env=env)
    async with Client(params, read_timeout_seconds=120) as client:
        owners.extend(owner_of(pid) for pid in mcp_children())
        return await mcp_rounds(client)


async def mcp_http(server: Server) -> dict[str, float]:
    """Round trips over Streamable HTTP: ``/mcp`` on the server, with the bearer token."""
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(headers=server.headers, timeout=120) as http,
        Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client,
    ):
        return await mcp_rounds(client)


# --------------------------------------------------------------------------- (d) memory


def server_memory(directory: Path) -> dict[str, Any]:
    """The serve process's VmRSS after each count of RSS_RUNS runs, 8 at a time over HTTP."""
    extra = {"ATHENA_SANDBOX_BACKENDS": RSS_BACKENDS}
    with running_server(directory, extra) as server:
        clients = [
            httpx.Client(base_url=server.url, headers=server.headers, timeout=120)
            for _ in range(CLIENTS)
        ]
        done, failed, rss, curve = 0, 0, {}, []
        lock = threading.Lock()
        started = time.perf_counter()

        def client(index: int, until: int) -> None:
            nonlocal done, failed
            while True:
                with lock:
                    if done >= until:
                        return
                    done += 1
                result = http_run(clients[index])
                if not result["success"]:
                    with lock:
                        failed += 1

        try:
            httpx.post(f"{server.url}/v1/prewarm", json={}, headers=server.headers, timeout=120)
            step = max(1, min(RSS_RUNS) // 2)
            targets = sorted({*range(step, max(RSS_RUNS) + 1, step), *RSS_RUNS})
            for until in targets:
                with ThreadPoolExecutor(CLIENTS) as pool:
                    list(pool.map(lambda i, u=until: client(i, u), range(CLIENTS)))
                curve.append((done, server.rss_kib()))
                if until in RSS_RUNS:
                    rss[until] = curve[-1][1]
                print(f"  {done} runs, VmRSS {curve[-1][1]} KiB", file=sys.stderr)
        finally:
            for http in clients:
                http.close()
        elapsed = time.perf_counter() - started
        owners = [owner_of(server.process.pid)]
    return {
        "backends": RSS_BACKENDS,
        "vmrss_kib": {str(n): kib for n, kib in rss.items()},
        "curve": curve,
        "failed_runs": failed,
        "runs_per_s": round(done / elapsed, 2),
        "owners": owners,
    }


# --------------------------------------------------------------------------- the run


def containers_of(client: docker.DockerClient, owners: list[dict[str, str]]) -> int:
    """Sandbox containers (any state) whose owner labels name one of ``owners``."""
    listed = client.api.containers(all=True, filters={"label": LABEL_SANDBOX})
    keys = (LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_OWNER_STARTED)
    return sum(
        any(all((c.get("Labels") or {}).get(k) == o[k] for k in keys) for o in owners)
        for c in listed
    )


def measure() -> dict[str, Any]:
    """Run every leg and return the figures."""
    engine = docker.from_env()
    owners = [owner_of(os.getpid())]
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="athena-bench-service-") as tmp:
        base = Path(tmp)
        settings = Settings(pool_size=POOL_SIZE)
        with (
            MemoryAPI.create(base / "in-process.db", settings=settings) as api,
            running_server(base / "server") as server,
        ):
            owners.append(owner_of(server.process.pid))
            if "latency" not in SKIP:
                print("(a) latency ...", file=sys.stderr)
                figures["latency"] = latency(api, server)
            if "throughput" not in SKIP:
                print("(b) throughput ...", file=sys.stderr)
                figures["throughput_runs_per_s"] = throughput(api, server)
            if "mcp" not in SKIP:
                print("(c) MCP ...", file=sys.stderr)
                figures["mcp_ms"] = {
                    "stdio": asyncio.run(mcp_stdio(base, owners)),
                    "Streamable HTTP": asyncio.run(mcp_http(server)),
                }
        if "rss" not in SKIP:
            print("(d) server memory ...", file=sys.stderr)
            memory = server_memory(base / "rss")
            owners += memory.pop("owners")
            figures["server_memory"] = memory
    deadline = time.monotonic() + 15
    while (left := containers_of(engine, owners)) and time.monotonic() < deadline:
        time.sleep(0.2)
    figures.update(
        {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(engine),
            "rounds": ROUNDS,
            "containers_left": left,
        }
    )
    engine.close()
    return figures


def machine(engine: docker.DockerClient) -> str:
    """Host, cores, CPU model, OS, Docker and Python versions."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{platform.node()}: {os.cpu_count()} cores ({model}), {platform.platform()}, "
        f"Docker {engine.version()['Version']}, Python {platform.python_version()}"
    )


def ratios(figures: dict[str, Any]) -> dict[str, float]:
    """The figures the targets are about."""
    out: dict[str, float] = {}
    if "latency" in figures:
        wall = figures["latency"]["wall_ms"]
        out["HTTP p50 overhead, minimal client (ms)"] = round(
            wall[MINIMAL]["p50"] - wall[LOCAL]["p50"], 2
        )
        around = figures["latency"]["around_the_run_ms"]
        out["HTTP p50 overhead around the run, minimal client (ms)"] = round(
            around[MINIMAL]["p50"] - around[LOCAL]["p50"], 2
        )
    if "throughput_runs_per_s" in figures:
        rates = figures["throughput_runs_per_s"]
        out["throughput over HTTP / in-process, 8 clients"] = round(
            rates["HTTP, 8 remote clients"] / rates["in-process (MemoryAPI)"], 3
        )
    if "server_memory" in figures:
        rss = figures["server_memory"]["vmrss_kib"]
        low, high = str(min(RSS_RUNS)), str(max(RSS_RUNS))
        out["server RSS after 10,000 runs / after 1,000"] = round(rss[high] / rss[low], 3)
    return out


def client_costs(figures: dict[str, Any]) -> dict[str, float]:
    """Overheads with httpx clients, which add httpx's own cost (reported, no target)."""
    wall = figures["latency"]["wall_ms"]
    return {
        f"p50 overhead, {name.removeprefix('HTTP, ')} (ms)": round(
            wall[name]["p50"] - wall[LOCAL]["p50"], 2
        )
        for name in (HTTPX, REMOTE)
    }


def table(figures: dict[str, Any]) -> str:
    """Render the figures as Markdown."""
    lines: list[str] = []
    if "latency" in figures:
        lat = figures["latency"]
        lines += [
            "| warm python print(1), one at a time | p50 ms | p95 ms | around the run, p50 ms | warm |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in lat["wall_ms"].items():
            around = lat["around_the_run_ms"][name]["p50"]
            lines.append(
                f"| {name} | {row['p50']} | {row['p95']} | {around} | "
                f"{lat['warm_runs'][name]}/{row['n']} |"
            )
        lines += [
            "",
            "| a call the validator refuses (no sandbox, record=False) | p50 ms | p95 ms |",
            "|---|---:|---:|",
        ]
        for name, row in lat["no_sandbox_ms"].items():
            lines.append(f"| {name} | {row['p50']} | {row['p95']} |")
        costs = ", ".join(f"{name} {value}" for name, value in client_costs(figures).items())
        lines += ["", f"Through httpx clients (no target; httpx's own cost included): {costs}.", ""]
    if "mcp_ms" in figures:
        lines += ["| MCP execute_code round trip | p50 ms | p95 ms |", "|---|---:|---:|"]
        for name, row in figures["mcp_ms"].items():
            lines.append(f"| {name} | {row['p50']} | {row['p95']} |")
        lines.append("")
    if "throughput_runs_per_s" in figures:
        rates = figures["throughput_runs_per_s"]
        lines.append(
            f"{CLIENTS} concurrent clients, {RUNS_PER_CLIENT} runs each (median of "
            f"{THROUGHPUT_ROUNDS} alternated rounds): in-process {rates['in-process (MemoryAPI)']} "
            f"runs/s, over HTTP {rates['HTTP, 8 remote clients']} runs/s."
        )
    if "server_memory" in figures:
        memory = figures["server_memory"]
        shown = ", ".join(
            f"after {int(n):,} runs {kib / 1024:.1f} MiB" for n, kib in memory["vmrss_kib"].items()
        )
        lines.append(
            f"Server VmRSS ({memory['backends']}, {CLIENTS} clients, "
            f"{memory['runs_per_s']} runs/s, {memory['failed_runs']} failed): {shown}."
        )
    lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
    for name, value in ratios(figures).items():
        sense, goal = TARGETS[name]
        met = value <= goal if sense == "<=" else value >= goal
        lines.append(f"| {name} | {value} | {sense} {goal} | {'yes' if met else 'NO'} |")
    left = figures["containers_left"]
    lines.append(
        f"| containers of ours left afterwards | {left} | 0 | {'yes' if not left else 'NO'} |"
    )
    lines += ["", f"Measured {figures['when']} on {figures['machine']}, {ROUNDS} rounds per row."]
    return "\n".join(lines)


def main() -> int:
    """Measure, print the table, write the JSON."""
    figures = measure()
    figures["ratios"] = ratios(figures)
    if "latency" in figures:
        figures["httpx_client_overheads_ms"] = client_costs(figures)
    # A partial run (legs skipped) must not replace the figures of a whole one.
    out = OUT.with_name("service-partial.json") if SKIP else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(table(figures))
    print(f"\nfigures written to {out}")
    return 0 if figures["containers_left"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
