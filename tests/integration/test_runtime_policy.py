"""The run-time policy layer: what static validation cannot see is refused inside the sandbox.

The static validator is replaced by one that approves everything, so each case here reaches the
sandbox and only the run-time layer (pyboot's audit hook and ``__import__`` wrapper, jsboot's
loader) stands between the code and what the policy forbids. Modes: docker cold, warm, gVisor,
and srt (the engine made unreachable).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.models import ExecutionRequest, ValidationIssue
from orchestrator.orchestrator import Orchestrator
from orchestrator.policy import Policy, Validation, load_policy
from tests.integration.conftest import mode_settings

pytestmark = pytest.mark.docker

MODES = ["docker-cold", "docker-warm", "docker-runsc", "srt"]
HOST_NUMPY = (
    subprocess.run(
        ["/usr/bin/python3", "-c", "import numpy, pandas"], capture_output=True
    ).returncode
    == 0
)


class ApproveAll:
    """A validator that finds nothing: the run-time layer alone is tested."""

    def validate(self, code: str, language: str, rules: Validation) -> list[ValidationIssue]:
        return []


class Runner:
    """Runs code under strict (strict-gvisor for runsc) with static validation out of the way."""

    def __init__(self, mode: str, orchestrator: Orchestrator) -> None:
        self.mode, self.orchestrator = mode, orchestrator
        self.policy = load_policy("strict-gvisor" if mode == "docker-runsc" else "strict")

    def run(
        self, code: str, language: str = "python", policy: Policy | None = None
    ) -> dict[str, Any]:
        if self.mode == "srt" and ("numpy" in code or "pandas" in code) and not HOST_NUMPY:
            pytest.skip("srt runs the host's python3, which has no numpy or pandas here")
        request = ExecutionRequest.create(
            code, language, timeout_seconds=60, policy=policy or self.policy, record=False
        )
        result = self.orchestrator.execute(request).to_dict()
        assert result["error"] is None, result
        assert result["sandbox_mode"] == self.mode.split("-", maxsplit=1)[0], result
        return result


@pytest.fixture(params=MODES)
def runner(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    project_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Runner]:
    """An orchestrator per mode, validating nothing."""
    name = request.param
    settings = mode_settings(name, tmp_path, project_dir, monkeypatch)
    with Orchestrator(settings=settings, validator=ApproveAll()) as orchestrator:  # type: ignore[arg-type]
        yield Runner(name, orchestrator)


def policy_violations(result: dict[str, Any]) -> list[str]:
    return [v["message"] for v in result["violation_details"] if v["category"] == "policy"]


@pytest.mark.parametrize(
    ("code", "refused"),
    [
        ("import _socket", "import of '_socket' refused"),
        ("import _ctypes", "import of '_ctypes' refused"),
        ("import json, numpy, pandas\nimport subprocess", "import of 'subprocess' refused"),
        (
            "m = parameters.get('m', '_posix' + 'subprocess')\n__import__(m)",
            "import of '_posixsubprocess' refused",
        ),
        ("exec('import _socket')", "import of '_socket' refused"),
        ("import timeit\ntimeit.timeit('import _socket', number=1)", "import of '_socket' refused"),
        (
            "from concurrent.futures import process",
            "import of 'concurrent.futures.process' refused",
        ),
        ("import os\no = os\no.system('id')", "process creation (os.system) refused"),
        (
            "import os\nos.__dict__['po' + 'pen']('id').read()",
            "process creation (subprocess.Popen) refused",
        ),
        (
            "import pandas, sys\nsys.modules['subprocess'].run(['id'])",
            "process creation (subprocess.Popen) refused",
        ),
        (
            "import pandas, sys\nsys.modules['_posixsubprocess'].fork_exec(*range(23))",
            "process creation (_posixsubprocess.fork_exec) refused",
        ),
        (
            "import numpy, sys\nsys.modules['ctypes'].CDLL('libc.so.6')",
            "native code loading (ctypes.dlopen) refused",
        ),
        (
            "import numpy, sys\nsys.modules['ctypes'].CDLL(None).system",
            "native code loading (ctypes.dlsym) refused",
        ),
        (
            "import pandas, sys\ns = sys.modules['socket']\ns.socket(s.AF_INET)",
            "socket creation (family 2) refused",
        ),
    ],
    ids=[
        "private-socket",
        "private-ctypes",
        "loaded-by-a-library",
        "computed-name",
        "exec-string",
        "timeit-string",
        "from-import",
        "module-alias",
        "module-dict",
        "sys-modules",
        "fork-exec",
        "ctypes-dlopen",
        "ctypes-dlsym",
        "socket",
    ],
)
def test_python_refusals_are_policy_violations(runner: Runner, code: str, refused: str) -> None:
    """Each form is refused inside the sandbox: PermissionError, and a policy violation."""
    r = runner.run(code)
    assert not r["success"] and r["exit_code"] == 1, r
    assert "PermissionError" in r["stderr"] and refused in r["stderr"], r["stderr"]
    assert refused in policy_violations(r), r["violation_details"]
    assert f"policy: {refused}" in r["violations"]


def test_a_caught_refusal_does_not_fail_the_run(runner: Runner) -> None:
    """Code that handles the PermissionError succeeds; the violation is still reported."""
    r = runner.run("try:\n    import _socket\nexcept PermissionError as e:\n    print('refused')")
    assert r["success"] and r["stdout"] == "refused\n", r
    detail = next(v for v in r["violation_details"] if v["category"] == "policy")
    assert detail["detail"] == {"kind": "import", "module": "_socket"}


def test_libraries_keep_working_under_strict(runner: Runner) -> None:
    """pandas, numpy and asyncio import what they need inside themselves: nothing is refused."""
    code = (
        "import asyncio, numpy as np, pandas as pd\n"
        "async def main():\n    return int(np.arange(4).sum())\n"
        "print(asyncio.run(main()), pd.DataFrame({'a': [1, 2]})['a'].sum())"
    )
    r = runner.run(code)
    assert r["success"], r["stderr"]
    assert r["stdout"] == "6 3\n" and policy_violations(r) == []


def test_no_guard_when_validation_is_not_enforced(runner: Runner) -> None:
    """With enforce: false the run-time layer follows: nothing is refused."""
    policy = runner.policy.model_copy(
        update={"validation": runner.policy.validation.model_copy(update={"enforce": False})}
    )
    r = runner.run("import _socket, _ctypes\nprint('ok')", policy=policy)
    assert r["success"] and r["stdout"] == "ok\n" and policy_violations(r) == [], r


@pytest.mark.parametrize(
    ("code", "refused"),
    [
        (
            "const r = require; r('child_process').execSync('id')",
            "import of 'child_process' refused",
        ),
        ("require.call(null, 'node:child_process')", "import of 'child_process' refused"),
        ("module.constructor._load('net')", "import of 'net' refused"),
        ("eval('req' + 'uire')('worker_threads')", "import of 'worker_threads' refused"),
        ("process['bind' + 'ing']('spawn_sync')", "process.binding refused"),
    ],
    ids=["alias", "call", "loader", "eval", "binding"],
)
def test_javascript_refusals_are_policy_violations(runner: Runner, code: str, refused: str) -> None:
    """require() by any route and process.binding are refused at the loader."""
    r = runner.run(code, "javascript")
    assert not r["success"] and "ERR_ACCESS_DENIED" in r["stderr"], r
    assert refused in policy_violations(r), r["violation_details"]


def test_javascript_dynamic_import_is_checked(runner: Runner) -> None:
    """import() of a forbidden module is refused; of an allowed one it works."""
    code = (
        "import('child_process').catch((e) => console.log('refused', e.code))"
        ".then(() => import('path')).then((p) => console.log(typeof p.join))"
    )
    r = runner.run(code, "javascript")
    assert r["success"] and r["stdout"] == "refused ERR_ACCESS_DENIED\nfunction\n", r
    assert policy_violations(r) == ["import of 'child_process' refused"]


def test_the_environment_is_unchanged_by_the_guard(runner: Runner) -> None:
    """The code sees the same environment (PATH included) with and without the guard."""
    # srt puts fresh proxy credentials in every run's environment: names and PATH compared.
    code = "import os\nprint(sorted(os.environ), os.environ['PATH'])"
    guarded = runner.run(code)
    policy = runner.policy.model_copy(
        update={"validation": runner.policy.validation.model_copy(update={"enforce": False})}
    )
    unguarded = runner.run(code, policy=policy)
    assert guarded["success"] and guarded["stdout"] == unguarded["stdout"]


UNDO_GUARD = """
cells = [c.cell_contents for c in __import__.__closure__]
guard = next(c for c in cells if hasattr(c, 'checks'))
guard.checks.clear()
guard.imports = frozenset()
import builtins
builtins.__import__ = next(c for c in cells if callable(c) and not hasattr(c, 'checks'))
"""


@pytest.mark.parametrize(
    "attempt",
    [
        "import os\nos.posix_spawn('/bin/sh', ['sh', '-c', 'echo SPAWNED'], {})",
        "import os\nos.fork()",
        "import os\nos.execv('/bin/sh', ['sh', '-c', 'echo EXECUTED'])",
        "import socket\nsocket.socket(socket.AF_INET)",
        "import socket\nsocket.socket(socket.AF_UNIX)",
        "import sys, os\nclass S:\n    name = '_posixsubprocess'\n"
        "ps = sys.__spec__.loader.create_module(S())\nr, w = os.pipe()\ner, ew = os.pipe()\n"
        "ps.fork_exec([b'/bin/sh', b'-c', b'echo FORKED'], (b'/bin/sh',), True, (w, ew), None,"
        " None, -1, -1, -1, w, -1, -1, er, ew, True, False, -1, None, None, None, -1, None,"
        " False)",
    ],
    ids=["posix-spawn", "fork", "exec", "inet-socket", "unix-socket", "fresh-fork-exec"],
)
def test_the_kernel_refuses_what_an_undone_guard_lets_through(runner: Runner, attempt: str) -> None:
    """Code that switches the in-process layer off still cannot start a process or open a
    socket: under strict the runner refused both in the kernel before the interpreter started."""
    if runner.mode == "srt":
        pytest.skip("srt has no runner: its run-time layer is the in-process one only")
    if runner.mode == "docker-runsc" and "execv" in attempt:
        pytest.skip("gVisor has no Landlock: exec replaces the one process (no new one starts)")
    r = runner.run(UNDO_GUARD + attempt)
    assert not r["success"], r
    assert "PermissionError" in r["stderr"] or "Operation not permitted" in r["stderr"], r
    for marker in ("SPAWNED", "EXECUTED", "FORKED"):
        assert marker not in r["stdout"]


def test_threads_and_socket_pairs_still_work_under_the_kernel_rules(runner: Runner) -> None:
    """What the interpreters need (threads, asyncio's socket pair, numpy) is not refused."""
    code = (
        "import asyncio, sys, threading\n"  # asyncio imports socket (a library may)
        "t = threading.Thread(target=print, args=('thread',))\nt.start()\nt.join()\n"
        "a, b = sys.modules['socket'].socketpair()\na.send(b'pair')\nprint(b.recv(4).decode())\n"
        "print(asyncio.run(asyncio.sleep(0, 'asyncio')))"
    )
    r = runner.run(code)
    assert r["success"] and r["stdout"] == "thread\npair\nasyncio\n", r
