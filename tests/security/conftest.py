"""Security fixtures: host canaries, listeners and decoys, one judge per case and mode, the table.

``ATHENA_SECURITY_SCOPE`` (``ci``, the default, or ``full``) sets how much of the RedCode-Exec
corpus runs; ``make security`` and ``make security-full`` set it, and then the table is also
written to ``benchmarks/results/security.md``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from orchestrator.backends.docker.owners import LABEL_OWNER_PID
from tests.integration.conftest import docker_client, sandbox_images, wait_until
from tests.security import hostenv
from tests.security.harness import MODE_PARAMS, SCOPE, HostEnv, Sec, unavailable_reason
from tests.security.listeners import Listeners
from tests.security.results import ERROR, NA, RESULTS, Cell, write_markdown

__all__ = ["docker_client", "sandbox_images"]  # re-used session fixtures (images built once)

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "benchmarks" / "results" / "security.md"
# The corpus's own loopback ports (scenario 1 posts to 5758; 5388/5389 and 9999 are used by
# the reverse-shell, amplification and other snippets) and DNS, on the host's loopback.
FIXED_LISTENERS = (
    ("tcp", "127.0.0.1", 5758),
    ("tcp", "127.0.0.1", 5389),
    ("udp", "127.0.0.1", 5388),
    ("tcp", "127.0.0.1", 5388),
    ("tcp", "127.0.0.1", 9999),
    ("udp", "127.0.0.1", 53),
    ("tcp", "127.0.0.1", 53),
)
assert SCOPE in ("ci", "full"), f"ATHENA_SECURITY_SCOPE must be ci or full, not {SCOPE!r}"


def _ipv6_loopback() -> list[str]:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return []
    return ["::1"]


@pytest.fixture(scope="session")
def host_env(docker_client: docker.DockerClient) -> Iterator[HostEnv]:
    """Plant the host canaries, start the listeners and decoys; remove them all afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the security suite plants root-only canaries and decoys: run it as root")
    # Short paths: srt puts its bridge sockets in the run's tmp dir (108-byte socket paths).
    base = Path(tempfile.mkdtemp(prefix="asec-", dir="/tmp"))
    base.chmod(0o711)  # srt's run uids traverse it to reach their work directories
    outside = base / "outside"
    outside.mkdir(mode=0o755)
    world_secret, root_secret = (f"{kind}-secret-{secrets.token_hex(8)}" for kind in "wr")
    world = outside / "world-readable-canary.txt"
    world.write_text(world_secret + "\n")
    world.chmod(0o644)
    root_canary = Path(f"/root/athena-sec-canary-{secrets.token_hex(4)}.json")
    root_canary.write_text(json.dumps({"value": root_secret}))
    root_canary.chmod(0o600)
    listeners = Listeners(hostenv.host_ipv4_addresses() + _ipv6_loopback(), FIXED_LISTENERS)
    decoys = hostenv.Decoys()
    env = HostEnv(base, docker_client, listeners, decoys, world, root_canary)
    env.secrets = {
        "the world-readable host canary": world_secret,
        "the root-only canary": root_secret,
    }
    try:
        yield env
    finally:
        listeners.close()
        decoys.close()
        root_canary.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def none_of_ours_left(docker_client: docker.DockerClient) -> Iterator[None]:
    """After the suite, no container this process created may exist."""
    yield
    label = {"label": f"{LABEL_OWNER_PID}={os.getpid()}"}
    assert wait_until(lambda: not docker_client.api.containers(all=True, filters=label), 15)


@pytest.fixture(params=MODE_PARAMS)
def sec(
    request: pytest.FixtureRequest, host_env: HostEnv, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Sec]:
    """One hostile case (the test) in one isolation mode, judged by the host afterwards."""
    mode = str(request.param)
    case = request.function.__name__.removeprefix("test_").replace("_", "-")
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec else {}
    extra = [str(value) for name, value in params.items() if name != "sec"]
    case += "".join(f"-{value}" for value in extra)
    description = (request.function.__doc__ or "").strip().splitlines()[0]
    description += f" (this row: {', '.join(extra)})" if extra else ""
    reason = unavailable_reason(mode, host_env.client)
    if reason:
        RESULTS.unavailable[mode] = reason
        RESULTS.record(case, mode, Cell(NA, reason), description)
        pytest.skip(reason)
    workdir = host_env.base / "c" / secrets.token_hex(4)
    workdir.mkdir(mode=0o711, parents=True)
    (host_env.base / "c").chmod(0o711)
    judge = Sec(mode, case, description, host_env, workdir, monkeypatch)
    try:
        yield judge
    finally:
        judge.close()
        if not judge.finished:
            RESULTS.record(case, mode, Cell(ERROR, "the test ended before its judgement"))
        shutil.rmtree(workdir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the security table; under ``make security`` also write it to the results folder."""
    if not (RESULTS.cells or RESULTS.corpus):
        return
    terminalreporter.section(f"security (scope {SCOPE})")
    terminalreporter.write_line(RESULTS.terminal())
    if "ATHENA_SECURITY_SCOPE" in os.environ:
        write_markdown(REPORT, SCOPE)
        terminalreporter.write_line(f"written to {REPORT.relative_to(ROOT)}")
