"""One behavioural contract, run over every isolation mode and every registered language.

The code of each behaviour in each language is in ``tests/contract.py`` (``SNIPPETS``). Modes: docker (cold, warm and gVisor), fast (strict-fast, the fast mode alone allowed), srt,
restricted and inprocess. For the fallback modes the Docker
engine is made unreachable (a bogus DOCKER_HOST) and the process allows only that mode, so the
ladder itself picks it. ``remote`` runs every call through ``MemoryAPI.connect`` against one real
``athena-sandbox serve`` for the module (Docker only, the strict policy, a tenant's token), or,
when ATHENA_URL is set, against that server with ATHENA_TOKEN (``make cluster-test``: the load
balancer of a cluster, whose nodes have the canary in their environment; not ours to stop).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from athena.mcp.memory_api import MemoryAPI
from athena.service.client import RemoteMemoryAPI
from orchestrator.languages import LANGUAGES as REGISTRY
from tests.contract import FILES_IN, FILES_IN_SEEN, REPORT_CSV, RESULT_KEYS, SNIPPETS
from tests.integration.conftest import mode_settings
from tests.service_server import ServiceServer, running_server

pytestmark = pytest.mark.docker

MODES = [
    "docker-cold",
    "docker-warm",
    "docker-runsc",
    "fast",
    "srt",
    "restricted",
    "inprocess",
    "remote",
]
ALL = [lang.name for lang in REGISTRY]
LANGUAGES = {mode: set(ALL) for mode in MODES}
LANGUAGES["restricted"] = {lang.name for lang in REGISTRY if lang.restricted}
# The modes whose sandboxes run the image's runner (the fast mode runs it under bubblewrap).
DOCKER = ("docker-cold", "docker-warm", "docker-runsc", "fast", "remote")
CANARY = "canary-7f3a"  # in the environment of the orchestrator (the server's too)


class Mode:
    """A MemoryAPI bound to one isolation mode, and what that mode can do."""

    def __init__(self, name: str, api: MemoryAPI | RemoteMemoryAPI) -> None:
        self.name, self.api = name, api
        self.policy = {
            "inprocess": "development",
            "docker-runsc": "strict-gvisor",
            "fast": "strict-fast",
        }.get(name, "strict")
        self.sandbox_mode = "docker" if name == "remote" else name.split("-", maxsplit=1)[0]

    def run(self, code: str, language: str = "python", **kwargs: Any) -> dict[str, Any]:
        if language not in LANGUAGES[self.name]:
            pytest.skip(f"{self.name} does not run {language}")
        kwargs.setdefault("sandbox_policy", self.policy)
        result = self.api.execute_code(code, language, **kwargs)
        if result["error"] is None:
            assert result["sandbox_mode"] == self.sandbox_mode, result
        assert set(result) == RESULT_KEYS, result  # remote: the local dict, key for key
        return result

    def recorded(self, execution_id: str) -> tuple[str | None, bool]:
        """The sandbox mode and success of a run as the store recorded it."""
        if isinstance(self.api, RemoteMemoryAPI):
            record = self.api.get_execution(execution_id)
            assert record is not None
            return record["result"]["sandbox_mode"], record["result"]["success"]
        stored = self.api.store.get_execution(execution_id)
        assert stored is not None
        return stored.sandbox_mode, stored.success

    def needs(self, *modes: str) -> None:
        if self.name not in modes:
            pytest.skip(f"{self.name} does not have this behaviour")


@pytest.fixture(scope="module")
def remote_server(sandbox_images: Any) -> Iterator[ServiceServer]:
    """One `athena-sandbox serve` for the remote mode (Docker only); it must leave nothing."""
    env = {"ATHENA_SANDBOX_BACKENDS": "docker", "ATHENA_CANARY_SECRET": CANARY}
    with running_server(tenants={"contract": {"policies": ["strict"]}}, env=env) as server:
        yield server
        assert server.stop() == 0, server.log()
        assert server.containers() == [], server.log()


@pytest.fixture(params=MODES)
def mode(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    project_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Mode]:
    """Each isolation mode in turn; the fallback ones with no Docker engine reachable."""
    name = request.param
    if name == "remote":
        url, token = os.environ.get("ATHENA_URL"), os.environ.get("ATHENA_TOKEN")
        if not url:
            server: ServiceServer = request.getfixturevalue("remote_server")
            url, token = server.url, server.token
        with MemoryAPI.connect(url, token=token) as remote:
            yield Mode(name, remote)
        return
    settings = mode_settings(name, tmp_path, project_dir, monkeypatch)
    with MemoryAPI.create(tmp_path / "memory.db", settings=settings) as api:
        yield Mode(name, api)


@pytest.mark.parametrize("language", ALL)
def test_success_and_stdout(mode: Mode, language: str) -> None:
    """A print succeeds with exit 0 and exactly its output."""
    r = mode.run(SNIPPETS[language].hello, language)
    assert (r["success"], r["exit_code"], r["stdout"], r["error"]) == (True, 0, "hello\n", None)


@pytest.mark.parametrize("language", ALL)
def test_stderr_and_a_failing_exit(mode: Mode, language: str) -> None:
    """An exception fails the run with exit 1 and its error on stderr."""
    snippets = SNIPPETS[language]
    r = mode.run(snippets.fail, language)
    assert not r["success"] and r["exit_code"] == 1
    assert snippets.error in r["stderr"] and "boom" in r["stderr"]


@pytest.mark.parametrize("language", ALL)
def test_explicit_exit_codes(mode: Mode, language: str) -> None:
    """An explicit exit status comes back as the exit code (restricted: SystemExit is refused)."""
    if mode.name == "restricted":
        r = mode.run("raise SystemExit(0)", language)
        assert not r["success"] and "SystemExit" in r["stderr"]
        return
    r = mode.run(SNIPPETS[language].exit3, language)
    assert (r["success"], r["exit_code"]) == (False, 3)


SHUTDOWN = """
import atexit, threading, time, sys

class Noisy:
    def __init__(self, name):
        self.name = name
    def __del__(self):
        print("released", self.name)

plain = Noisy("plain")
looped = Noisy("looped")
looped.me = looped  # only the cycle collector frees this one

def late():
    time.sleep(0.3)
    print("thread done")

threading.Thread(target=late).start()
atexit.register(lambda: print("atexit ran"))
print("main done")
"""


def test_python_shutdown_still_happens(mode: Mode) -> None:
    """What the interpreter does at exit is seen: threads joined, atexit, objects released."""
    mode.needs(*DOCKER, "srt", "inprocess")
    r = mode.run(SHUTDOWN)
    assert r["success"], r["stderr"]
    lines = r["stdout"].splitlines()
    assert lines[:3] == ["main done", "thread done", "atexit ran"], r["stdout"]
    assert sorted(lines[3:]) == ["released looped", "released plain"], r["stdout"]


@pytest.mark.parametrize(
    ("ending", "exit_code", "stderr"),
    [("sys.exit('bad input')", 1, "bad input\n"), ("sys.exit(-1)", 255, ""), ("sys.exit()", 0, "")],
)
def test_python_exit_statuses(mode: Mode, ending: str, exit_code: int, stderr: str) -> None:
    """sys.exit with a message prints it and exits 1; a number is the status, mod 256."""
    mode.needs(*DOCKER, "srt", "inprocess")
    r = mode.run(f"import sys\nprint('before')\n{ending}")
    assert (r["exit_code"], r["stdout"], r["stderr"]) == (exit_code, "before\n", stderr)


@pytest.mark.parametrize("language", ALL)
def test_parameters_arrive_as_data(mode: Mode, language: str) -> None:
    """Parameters reach the code as data in every language the mode runs."""
    evil = "$(id) `id` ');#{`id`}"
    r = mode.run(SNIPPETS[language].parameters, language, parameters={"n": 41, "evil": evil})
    assert r["success"], r["stderr"]
    assert json.loads(r["stdout"]) == {"n": 42, "evil": evil}


@pytest.mark.parametrize("language", [n for n in ALL if SNIPPETS[n].output is not None])
def test_output_value(mode: Mode, language: str) -> None:
    """A top-level `output` comes back as JSON; a non-serialisable one as None with a note."""
    code = SNIPPETS[language].output
    assert code is not None
    assert mode.run(code, language)["output"] == {"rows": [1, 2], "name": "é"}
    if language == "python":
        r = mode.run("output = {1, 2}")
        assert r["output"] is None and "not JSON-serialisable" in r["stderr"]


@pytest.mark.parametrize("language", ALL)
def test_timeout_kills_the_run(mode: Mode, language: str) -> None:
    """An endless loop is killed at its timeout; the call returns soon after; output is kept."""
    start = time.monotonic()
    r = mode.run(SNIPPETS[language].loop, language, timeout_seconds=2)
    assert time.monotonic() - start < 2 + 5
    shown = {k: r.get(k) for k in ("exit_code", "error", "stderr", "sandbox_mode", "isolation")}
    assert not r["success"] and r["exit_code"] == 137, shown  # what it was, if it ever is not
    assert r["stdout"] == "started\n"
    assert [v["category"] for v in r["violation_details"]] == ["timeout"]


@pytest.mark.parametrize("language", ALL)
def test_output_is_capped_head_and_tail(mode: Mode, language: str) -> None:
    """A flood keeps head and tail within the cap and reports an output violation."""
    policy = {"extends": mode.policy, "limits": {"max_output_bytes": 65536}}
    r = mode.run(SNIPPETS[language].flood, language, sandbox_policy=policy)
    assert r["success"], r["stderr"]
    assert r["stdout"].startswith("HEAD\n") and r["stdout"].endswith("TAIL\n")
    assert len(r["stdout"].encode()) < 65536 + 200
    assert [v["category"] for v in r["violation_details"]] == ["output"]


@pytest.mark.parametrize("language", [n for n in ALL if SNIPPETS[n].memory is not None])
def test_memory_limit(mode: Mode, language: str) -> None:
    """Going over the memory limit fails the run with a memory violation."""
    mode.needs(*DOCKER, "srt", "restricted")
    code = SNIPPETS[language].memory
    if mode.name == "restricted":
        code = "hog = 'x' * (2 * 1024 ** 3)"  # RestrictedPython has no bytearray
    assert code is not None
    r = mode.run(code, language, timeout_seconds=20)
    assert not r["success"]
    assert "memory" in [v["category"] for v in r["violation_details"]], r


@pytest.mark.parametrize("language", [n for n in ALL if SNIPPETS[n].unseen_spawn is not None])
def test_the_kernel_refuses_a_process_the_validator_did_not_see(mode: Mode, language: str) -> None:
    """Under strict, docker's runner refuses process creation in the kernel for this language."""
    mode.needs(*DOCKER)
    code = SNIPPETS[language].unseen_spawn
    assert code is not None
    r = mode.run(code, language)
    assert r["issues"] == [] and r["stdout"] == "refused\n", r


def test_killed_by_a_signal(mode: Mode) -> None:
    """Code killed by a signal exits 128+N with a signal violation."""
    r = mode.run("kill -SEGV $$", "bash")
    assert r["exit_code"] == 139 and not r["success"]
    assert [v["category"] for v in r["violation_details"]] == ["signal"]


def test_host_environment_does_not_leak(mode: Mode, monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret in the orchestrator's environment does not reach bash code."""
    monkeypatch.setenv("ATHENA_CANARY_SECRET", CANARY)
    r = mode.run("env", "bash")
    assert r["success"] and CANARY not in r["stdout"]


def test_every_run_is_recorded_with_its_mode(mode: Mode) -> None:
    """Each run, failed ones included, is in the store with the mode that ran it."""
    ok = mode.run("print(1)")
    failed = mode.run("raise RuntimeError('x')")
    for result in (ok, failed):
        assert mode.recorded(result["execution_id"]) == (mode.sandbox_mode, result["success"])


def test_the_fallback_is_logged_once_with_the_reason(mode: Mode) -> None:
    """The first fallback in a process logs why (the Docker error), and only once."""
    mode.needs("srt", "restricted")
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        mode.run("print(1)")
        mode.run("print(2)")
    fallbacks = [entry for entry in logs if "falling back" in entry["event"]]
    assert len(fallbacks) == 1
    assert fallbacks[0]["mode"] == mode.name
    assert any("no-engine.sock" in reason for reason in fallbacks[0]["reasons"])


# --------------------------------------------------------------------------- files in and out


@pytest.mark.parametrize("language", ALL)
def test_files_sent_in_are_read_by_the_code(mode: Mode, language: str) -> None:
    """Files sent with the call (text, binary, a nested name) are at their names for the code."""
    code = SNIPPETS[language].read_files
    assert code is not None
    r = mode.run(code, language, files=FILES_IN)
    assert r["success"], r["stderr"]
    assert r["stdout"] == FILES_IN_SEEN


@pytest.mark.parametrize("language", ALL)
def test_a_file_written_to_out_comes_back(mode: Mode, language: str) -> None:
    """A file the code writes under out/ comes back with its size, SHA-256, type and content."""
    code = SNIPPETS[language].write_out
    assert code is not None
    r = mode.run(code, language)
    assert r["success"], r["stderr"]
    assert r["files"] == [
        {
            "name": "report.csv",
            "size": len(REPORT_CSV),
            "sha256": hashlib.sha256(REPORT_CSV).hexdigest(),
            "mime_type": "text/csv",
            "content": REPORT_CSV,
        }
    ]
    assert r["artifacts"] == []


@pytest.mark.parametrize("language", [n for n in ALL if SNIPPETS[n].link_out is not None])
def test_a_link_in_out_is_reported_and_not_followed(mode: Mode, language: str) -> None:
    """A link in out/ is left out with an output violation; its target is never read."""
    mode.needs(*DOCKER, "srt", "inprocess")  # restricted code cannot make links
    code = SNIPPETS[language].link_out
    assert code is not None
    r = mode.run(code, language)
    assert [(f["name"], f["content"]) for f in r["files"]] == [("real.txt", b"ok")], r
    [violation] = [v for v in r["violation_details"] if v["category"] == "output"]
    assert "links, FIFOs" in violation["message"]
    assert violation["detail"]["files"] == ["passwd"]


@pytest.mark.parametrize("language", ALL)
def test_nothing_written_means_no_files_and_no_artifacts(mode: Mode, language: str) -> None:
    """A run that writes nothing returns files == [] and artifacts == []."""
    r = mode.run(SNIPPETS[language].hello, language)
    assert r["success"], r["stderr"]
    assert (r["files"], r["artifacts"]) == ([], [])
