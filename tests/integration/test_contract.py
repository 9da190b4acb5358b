"""One behavioural contract, run over every isolation mode that supports each behaviour.

Modes: docker (cold and warm), srt, restricted and inprocess. For the fallback modes the Docker
engine is made unreachable (a bogus DOCKER_HOST) and the process allows only that mode, so the
ladder itself picks it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from athena.mcp.memory_api import MemoryAPI
from tests.integration.conftest import mode_settings

pytestmark = pytest.mark.docker

MODES = ["docker-cold", "docker-warm", "docker-runsc", "srt", "restricted", "inprocess"]
LANGUAGES = {
    "docker-cold": {"python", "javascript", "bash"},
    "docker-warm": {"python", "javascript", "bash"},
    "docker-runsc": {"python", "javascript", "bash"},
    "srt": {"python", "javascript", "bash"},
    "restricted": {"python"},
    "inprocess": {"python", "javascript", "bash"},
}


class Mode:
    """A MemoryAPI bound to one isolation mode, and what that mode can do."""

    def __init__(self, name: str, api: MemoryAPI) -> None:
        self.name, self.api = name, api
        self.policy = {"inprocess": "development", "docker-runsc": "strict-gvisor"}.get(
            name, "strict"
        )
        self.sandbox_mode = name.split("-", maxsplit=1)[0]

    def run(self, code: str, language: str = "python", **kwargs: Any) -> dict[str, Any]:
        if language not in LANGUAGES[self.name]:
            pytest.skip(f"{self.name} does not run {language}")
        kwargs.setdefault("sandbox_policy", self.policy)
        result = self.api.execute_code(code, language, **kwargs)
        if result["error"] is None:
            assert result["sandbox_mode"] == self.sandbox_mode, result
        return result

    def needs(self, *modes: str) -> None:
        if self.name not in modes:
            pytest.skip(f"{self.name} does not have this behaviour")


@pytest.fixture(params=MODES)
def mode(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    project_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Mode]:
    """Each isolation mode in turn; the fallback ones with no Docker engine reachable."""
    name = request.param
    settings = mode_settings(name, tmp_path, project_dir, monkeypatch)
    with MemoryAPI.create(tmp_path / "memory.db", settings=settings) as api:
        yield Mode(name, api)


@pytest.mark.parametrize("language", ["python", "javascript", "bash"])
def test_success_and_stdout(mode: Mode, language: str) -> None:
    """A print succeeds with exit 0 and exactly its output."""
    code = {"python": "print('hello')", "javascript": "console.log('hello')", "bash": "echo hello"}
    r = mode.run(code[language], language)
    assert (r["success"], r["exit_code"], r["stdout"], r["error"]) == (True, 0, "hello\n", None)


def test_stderr_and_a_failing_exit(mode: Mode) -> None:
    """An exception fails the run with exit 1 and its traceback on stderr."""
    r = mode.run("x = 1\nraise ValueError('boom')")
    assert not r["success"] and r["exit_code"] == 1
    assert "ValueError" in r["stderr"] and "boom" in r["stderr"]


def test_explicit_exit_codes(mode: Mode) -> None:
    """An explicit exit status comes back as the exit code (restricted: SystemExit is refused)."""
    if mode.name == "restricted":
        r = mode.run("raise SystemExit(0)")
        assert not r["success"] and "SystemExit" in r["stderr"]
        return
    r = mode.run("exit 3", "bash")
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
    mode.needs("docker-cold", "docker-warm", "docker-runsc", "srt", "inprocess")
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
    mode.needs("docker-cold", "docker-warm", "docker-runsc", "srt", "inprocess")
    r = mode.run(f"import sys\nprint('before')\n{ending}")
    assert (r["exit_code"], r["stdout"], r["stderr"]) == (exit_code, "before\n", stderr)


@pytest.mark.parametrize("language", ["python", "javascript", "bash"])
def test_parameters_arrive_as_data(mode: Mode, language: str) -> None:
    """Parameters reach the code as data in every language the mode runs."""
    code = {
        "python": "print(json.dumps({'n': parameters['n'] + 1, 'evil': parameters['evil']}))",
        "javascript": "console.log(JSON.stringify({n: parameters.n + 1, evil: parameters.evil}))",
        "bash": 'printf \'{"n": %s, "evil": "%s"}\\n\' "$((PARAM_N + 1))" "$PARAM_EVIL"',
    }
    r = mode.run(code[language], language, parameters={"n": 41, "evil": "$(id) `id` ');"})
    assert r["success"], r["stderr"]
    assert json.loads(r["stdout"]) == {"n": 42, "evil": "$(id) `id` ');"}


def test_output_value(mode: Mode) -> None:
    """A top-level `output` comes back as JSON; a non-serialisable one as None with a note."""
    assert mode.run("output = {'rows': [1, 2], 'name': 'é'}")["output"] == {
        "rows": [1, 2],
        "name": "é",
    }
    r = mode.run("output = {1, 2}")
    assert r["output"] is None and "not JSON-serialisable" in r["stderr"]


def test_timeout_kills_the_run(mode: Mode) -> None:
    """An endless loop is killed at its timeout; the call returns soon after; output is kept."""
    start = time.monotonic()
    r = mode.run("print('started', flush=True)\nwhile True:\n    pass", timeout_seconds=2)
    assert time.monotonic() - start < 2 + 5
    assert not r["success"] and r["exit_code"] == 137
    assert r["stdout"] == "started\n"
    assert [v["category"] for v in r["violation_details"]] == ["timeout"]


def test_output_is_capped_head_and_tail(mode: Mode) -> None:
    """A flood keeps head and tail within the cap and reports an output violation."""
    policy = {"extends": mode.policy, "limits": {"max_output_bytes": 65536}}
    r = mode.run("print('HEAD')\nprint('x' * 3000000)\nprint('TAIL')", sandbox_policy=policy)
    assert r["success"], r["stderr"]
    assert r["stdout"].startswith("HEAD\n") and r["stdout"].endswith("TAIL\n")
    assert len(r["stdout"].encode()) < 65536 + 200
    assert [v["category"] for v in r["violation_details"]] == ["output"]


def test_memory_limit(mode: Mode) -> None:
    """Going over the memory limit fails the run with a memory violation."""
    mode.needs("docker-cold", "docker-warm", "docker-runsc", "srt", "restricted")
    code = (
        "hog = 'x' * (2 * 1024 ** 3)"
        if mode.name == "restricted"
        else "hog = bytearray(2 * 1024 ** 3)"
    )
    r = mode.run(code, timeout_seconds=20)
    assert not r["success"]
    assert "memory" in [v["category"] for v in r["violation_details"]], r


def test_killed_by_a_signal(mode: Mode) -> None:
    """Code killed by a signal exits 128+N with a signal violation."""
    r = mode.run("kill -SEGV $$", "bash")
    assert r["exit_code"] == 139 and not r["success"]
    assert [v["category"] for v in r["violation_details"]] == ["signal"]


def test_host_environment_does_not_leak(mode: Mode, monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret in the orchestrator's environment does not reach bash code."""
    monkeypatch.setenv("ATHENA_CANARY_SECRET", "canary-7f3a")
    r = mode.run("env", "bash")
    assert r["success"] and "canary-7f3a" not in r["stdout"]


def test_every_run_is_recorded_with_its_mode(mode: Mode) -> None:
    """Each run, failed ones included, is in the store with the mode that ran it."""
    ok = mode.run("print(1)")
    failed = mode.run("raise RuntimeError('x')")
    for result in (ok, failed):
        record = mode.api.store.get_execution(result["execution_id"])
        assert record is not None and record.sandbox_mode == mode.sandbox_mode
        assert record.success == result["success"]


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
