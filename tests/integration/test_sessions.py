"""Sessions over the real engine, runc and gVisor: state, interrupts, violations, limits, files.

Every test runs in python, javascript and bash where the behaviour exists in that language, on
runc (the strict policy) and on gVisor (strict-gvisor).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.backends.docker.owners import LABEL_OWNER_PID
from orchestrator.errors import RequestError, SessionEndedError
from orchestrator.settings import Settings
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.docker

RUNTIMES = {"runc": "strict", "runsc": "strict-gvisor"}

# Per language: code that sets state, code that reads it back (printing "7"), and code that
# never ends by itself.
STATE = {
    "python": ("import math\nx = 6\ndef more(v):\n    return v + 1", "print(more(x))"),
    "javascript": (
        "var x = 6; let y = 1; function more(v) { return v + y; }",
        "console.log(more(x))",
    ),
    "bash": ("cd /tmp; x=6; more() { echo $(( $1 + 1 )); }", "more $x; pwd"),
}
SPIN = {
    "python": "while True: pass",
    "javascript": "while (true) {}",
    "bash": "while :; do :; done",
}


@pytest.fixture(params=list(RUNTIMES), ids=list(RUNTIMES))
def policy(request: pytest.FixtureRequest) -> str:
    """The policy of one runtime: strict (runc) or strict-gvisor (runsc)."""
    return RUNTIMES[str(request.param)]


@pytest.fixture
def sapi(tmp_path: Path) -> Iterator[MemoryAPI]:
    """A MemoryAPI whose session pools stay small and whose limits are checked often."""
    settings = Settings(project_dir=tmp_path, pool_size=1, session_check_seconds=0.2)
    with MemoryAPI.create(str(tmp_path / "memory.db"), settings=settings) as api:
        yield api


def gone(client: docker.DockerClient, sandbox_id: str | None) -> bool:
    """Whether the container of this short id no longer exists (in any state)."""
    assert sandbox_id
    return not client.api.containers(all=True, filters={"id": sandbox_id})


@pytest.mark.parametrize("language", list(STATE))
def test_a_session_keeps_its_state_between_calls(
    sapi: MemoryAPI, policy: str, language: str
) -> None:
    """Python globals and imports, JavaScript's global scope, bash's directory, variables and
    functions survive from one call to the next, in one sandbox that says so."""
    setup, read = STATE[language]
    with sapi.open_session(language, policy) as session:
        first = session.execute_code(setup)
        second = session.execute_code(read)
    assert first["success"], first
    assert second["success"], second
    assert second["stdout"].split("\n")[0] == "7"
    if language == "bash":
        assert second["stdout"].split("\n")[1] == "/tmp"
    assert first["session_id"] == second["session_id"] == session.session_id
    assert first["session_state"] == second["session_state"] == "kept"
    assert first["sandbox_id"] == second["sandbox_id"]
    assert second["isolation"]["runtime"].startswith("runsc" if "gvisor" in policy else "runc")


def test_one_shot_runs_never_share_a_session_sandbox(sapi: MemoryAPI) -> None:
    """One-shot results carry session_id None and a sandbox no session call used."""
    with sapi.open_session("python") as session:
        call = session.execute_code("y = 1")
        one_shot = sapi.execute_code("print(1)")
    assert one_shot["session_id"] is None and one_shot["session_state"] is None
    assert one_shot["sandbox_id"] != call["sandbox_id"]


def test_parameters_and_output_are_the_calls_own(sapi: MemoryAPI) -> None:
    """Each call sees its own parameters; output comes back only from the call that set it."""
    with sapi.open_session("python") as session:
        first = session.execute_code("output = parameters['n'] * 2", {"n": 4})
        second = session.execute_code("z = parameters.get('n')", {})
        third = session.execute_code("print(z)")
    assert first["output"] == 8
    assert second["output"] is None
    assert third["stdout"] == "None\n"


@pytest.mark.parametrize("language", ["python", "javascript"])
def test_a_timeout_interrupts_the_call_and_the_session_survives(
    sapi: MemoryAPI, policy: str, language: str
) -> None:
    """A call past its timeout is interrupted (KeyboardInterrupt, or node's interrupt) and the
    state stays: the next call sees what came before."""
    setup, read = STATE[language]
    with sapi.open_session(language, policy) as session:
        session.execute_code(setup)
        stuck = session.execute_code(SPIN[language], timeout_seconds=1)
        after = session.execute_code(read)
    assert not stuck["success"]
    assert stuck["session_state"] == "kept"
    assert any(v.startswith("timeout:") and "interrupted" in v for v in stuck["violations"])
    assert "interrupted" in stuck["stderr"].lower() or "KeyboardInterrupt" in stuck["stderr"]
    assert after["success"] and after["stdout"] == "7\n", after
    assert after["sandbox_id"] == stuck["sandbox_id"]


@pytest.mark.parametrize(
    ("language", "stubborn"),
    [
        ("python", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"),
        ("bash", SPIN["bash"]),
    ],
)
def test_a_call_that_cannot_be_interrupted_restarts_the_session(
    sapi: MemoryAPI, policy: str, language: str, stubborn: str
) -> None:
    """When the interrupt does not stop the code, the sandbox is killed, the result says the
    state was lost, and the next call runs in a fresh sandbox without it."""
    setup, read = STATE[language]
    with sapi.open_session(language, policy) as session:
        session.execute_code(setup)
        stuck = session.execute_code(stubborn, timeout_seconds=1)
        after = session.execute_code(read)
        info = session.info()
    assert stuck["session_state"] == "restarted"
    assert any(v.startswith("timeout:") and "killed" in v for v in stuck["violations"])
    assert "state is lost" in stuck["stderr"]
    assert after["sandbox_id"] != stuck["sandbox_id"]
    assert "7" not in after["stdout"]  # the state went with the old sandbox
    assert info["restarts"] == 1


@pytest.mark.parametrize(
    ("language", "exit_code"),
    [("python", "import os\nos._exit(3)"), ("javascript", "process.exit(3)"), ("bash", "exit 3")],
)
def test_code_that_ends_its_interpreter_restarts_the_session(
    sapi: MemoryAPI, language: str, exit_code: str
) -> None:
    """Ending the interpreter (os._exit, process.exit, exit) gives its status; the state is lost
    and the session goes on in a fresh sandbox."""
    setup, read = STATE[language]
    with sapi.open_session(language) as session:
        session.execute_code(setup)
        ended = session.execute_code(exit_code)
        after = session.execute_code(read)
    assert (ended["exit_code"], ended["session_state"]) == (3, "restarted")
    assert after["sandbox_id"] != ended["sandbox_id"] and "7" not in after["stdout"]


def test_python_system_exit_ends_the_call_not_the_session(sapi: MemoryAPI) -> None:
    """sys.exit() in a call gives its status, like a notebook cell; the state stays."""
    with sapi.open_session("python") as session:
        session.execute_code("x = 6")
        ended = session.execute_code("import sys\nsys.exit(4)")
        after = session.execute_code("print(x + 1)")
    assert (ended["exit_code"], ended["session_state"]) == (4, "kept")
    assert after["stdout"] == "7\n"


MEMORY_POLICY = {"name": "small", "extends": "strict", "limits": {"memory_mb": 64}}


@pytest.mark.parametrize(
    ("policy_spec", "code", "category"),
    [
        (MEMORY_POLICY, "x = bytearray(512 * 1024 * 1024)", "memory"),
        (
            {"name": "forks", "extends": "development", "limits": {"pids": 16}},
            "for i in $(seq 40); do sleep 5 & done; wait",
            "processes",
        ),
    ],
    ids=["memory", "processes"],
)
def test_a_memory_or_process_violation_ends_the_session(
    sapi: MemoryAPI, docker_client: docker.DockerClient, policy_spec: Any, code: str, category: str
) -> None:
    """The call with the violation returns its result (session_state ended); the next call
    raises SessionEndedError saying why, at once; the sandbox is gone."""
    language = "python" if category == "memory" else "bash"
    session = sapi.open_session(language, policy_spec)
    result = session.execute_code(code, timeout_seconds=20)
    sandbox = session.info()["sandbox_id"] or result["sandbox_id"]
    assert any(v.startswith(f"{category}:") for v in result["violations"]), result
    assert result["session_state"] == "ended"
    started = time.monotonic()
    with pytest.raises(SessionEndedError, match=r"memory|process") as caught:
        session.execute_code("print(1)" if language == "python" else "echo 1")
    assert time.monotonic() - started < 1
    assert caught.value.session_id == session.session_id
    assert session.closed
    assert wait_until(lambda: gone(docker_client, sandbox), timeout=10)


def test_closing_ends_the_session_and_removes_its_sandbox(
    sapi: MemoryAPI, docker_client: docker.DockerClient
) -> None:
    """close() kills the sandbox; later calls raise SessionEndedError; sessions() drops it."""
    session = sapi.open_session("python")
    sandbox = session.execute_code("x = 1")["sandbox_id"]
    assert [s["session_id"] for s in sapi.sessions()] == [session.session_id]
    session.close()
    with pytest.raises(SessionEndedError, match="closed by its caller"):
        session.execute_code("print(x)")
    assert sapi.sessions() == []
    assert wait_until(lambda: gone(docker_client, sandbox), timeout=10)


@pytest.mark.parametrize("limit", ["idle_timeout_seconds", "max_lifetime_seconds"])
def test_idle_and_lifetime_limits_end_sessions_the_caller_forgot(
    sapi: MemoryAPI, docker_client: docker.DockerClient, limit: str
) -> None:
    """A session left open ends at its idle timeout or its lifetime, with its sandbox."""
    kwargs = {"idle_timeout_seconds": 600.0, "max_lifetime_seconds": 600.0, limit: 1.5}
    session = sapi.open_session("python", **kwargs)
    sandbox = session.execute_code("x = 1")["sandbox_id"]
    assert wait_until(lambda: session.closed, timeout=10)
    reason = "idle" if limit.startswith("idle") else "lifetime"
    with pytest.raises(SessionEndedError, match=reason):
        session.execute_code("print(x)")
    assert wait_until(lambda: gone(docker_client, sandbox), timeout=10)


def test_limits_are_checked(sapi: MemoryAPI) -> None:
    """Limits that are not positive numbers of seconds (at most a week) are refused."""
    for bad in (0, -1, float("nan"), True, "10", 8 * 24 * 3600):
        with pytest.raises(RequestError, match="idle_timeout_seconds"):
            sapi.open_session("python", idle_timeout_seconds=bad)


def test_a_language_without_sessions_is_refused(sapi: MemoryAPI) -> None:
    """Ruby has no session bootstrap: a clear RequestError naming the languages that do."""
    with pytest.raises(RequestError, match="python, javascript, bash"):
        sapi.open_session("ruby")


OWNER = textwrap.dedent(
    """
    import sys, time
    from athena.mcp.memory_api import MemoryAPI
    api = MemoryAPI.create(sys.argv[1])
    session = api.open_session("python")
    session.execute_code("x = 1")
    print("open", flush=True)
    time.sleep(300)
    """
)


def test_a_dead_owner_leaves_no_session_sandbox(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """SIGKILL of the process holding a session removes the session's sandbox within seconds."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "m.db")], stdout=subprocess.PIPE, text=True
    )
    label = f"{LABEL_OWNER_PID}={owner.pid}"
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "open"
        assert docker_client.api.containers(filters={"label": [label, "athena.session=1"]})
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        gone = wait_until(
            lambda: not docker_client.api.containers(all=True, filters={"label": label}), 15
        )
        assert gone, "a session sandbox outlived its SIGKILLed owner"
    finally:
        owner.kill()


# ----------------------------------------------------------------------------- files


WRITE_OUT = {
    "python": "import shutil\nshutil.copy('in/data.bin', 'out/copy.bin')",
    "javascript": "require('fs').copyFileSync('in/data.bin', 'out/copy.bin')",
    "bash": "cp in/data.bin out/copy.bin",
}


@pytest.mark.parametrize("language", list(WRITE_OUT))
def test_files_go_in_persist_and_come_back_when_changed(
    sapi: MemoryAPI, policy: str, language: str
) -> None:
    """A call's files land in the workspace and stay for the session; a file written under
    out/ comes back from the call that wrote it, with its bytes and SHA-256, and not again."""
    data = bytes(range(256)) * 64
    with sapi.open_session(language, policy) as session:
        sent = session.execute_code(
            "true" if language == "bash" else "0", None, 30, {"in/data.bin": data}
        )
        copied = session.execute_code(WRITE_OUT[language])
        again = session.execute_code("true" if language == "bash" else "0")
    assert sent["success"] and sent["files"] == [], sent
    assert copied["success"], copied
    (item,) = copied["files"]
    assert (item["name"], item["content"], item["size"]) == ("copy.bin", data, len(data))
    assert item["sha256"] == hashlib.sha256(data).hexdigest()
    assert item["mime_type"] == "application/octet-stream"
    assert again["files"] == []


def test_a_link_the_code_left_is_never_written_through(sapi: MemoryAPI, policy: str) -> None:
    """Files sent over a link the session's code planted are refused before anything runs (a
    RequestError naming the file), and the session's state stays."""
    lenient: dict[str, Any] = {
        "name": "lenient",
        "extends": "development",
        "network": {"mode": "none"},
        "runtime": {"gvisor": "never"},
    }
    if "gvisor" in policy:
        lenient["runtime"] = {"gvisor": "require"}
    with sapi.open_session("bash", lenient) as session:
        session.execute_code("ln -s /tmp data; mkdir -p /tmp/x; touch /tmp/mark; k=1")
        with pytest.raises(RequestError, match=r"data/x\.csv.*link"):
            session.execute_code("echo no", files={"data/x.csv": "a"})
        after = session.execute_code("echo $k; ls /tmp")
    assert after["stdout"].split("\n")[0] == "1"
    assert "x.csv" not in after["stdout"]


def test_out_links_and_fifos_are_reported_never_followed(sapi: MemoryAPI, policy: str) -> None:
    """A link to a secret and a FIFO under out/ do not come back and do not hang the call."""
    code = "echo s3cret > /tmp/secret; ln -s /tmp/secret out/link; ln -s /tmp out/dir; mkfifo out/pipe; echo ok > out/ok"
    result = sapi.execute_code(code, "bash", sandbox_policy=policy)
    assert result["success"], result
    assert [f["name"] for f in result["files"]] == ["ok"]
    assert b"s3cret" not in b"".join(f["content"] for f in result["files"])
    assert any("link" in v and "not returned" in v for v in result["violations"])


def test_files_over_the_cap_are_left_out_and_reported(sapi: MemoryAPI) -> None:
    """Files past files.max_out_bytes do not come back; a violation names them."""
    policy = {"name": "small-out", "extends": "strict", "files": {"max_out_bytes": 4096}}
    code = "open('out/a.txt','w').write('a' * 3000)\nopen('out/b.txt','w').write('b' * 3000)"
    result = sapi.execute_code(code, sandbox_policy=policy)
    assert [f["name"] for f in result["files"]] == ["a.txt"]
    (violation,) = [v for v in result["violation_details"] if "max_out_bytes" in v["message"]]
    assert violation["detail"]["files"] == ["b.txt"]


@pytest.mark.parametrize(
    "files",
    [
        {"/etc/passwd": "x"},
        {"../up.txt": "x"},
        {"a/../../b": "x"},
        {"main.py": "x"},
        {"a": "x", "a/b": "y"},
        {"ok.txt": 3},
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "code-file", "file-and-dir", "not-bytes"],
)
def test_bad_file_names_are_refused_before_anything_runs(
    sapi: MemoryAPI, files: dict[str, Any]
) -> None:
    """Names that leave the workspace or clash are a ValueError saying what to change."""
    with pytest.raises(ValueError, match="file"):
        sapi.execute_code("print(1)", files=files)


def test_files_over_the_policy_cap_are_refused(sapi: MemoryAPI) -> None:
    """More bytes than files.max_in_bytes is a ValueError naming the key."""
    policy = {"name": "tiny-in", "extends": "strict", "files": {"max_in_bytes": 10}}
    with pytest.raises(ValueError, match=r"files\.max_in_bytes"):
        sapi.execute_code("print(1)", files={"a.txt": "x" * 11}, sandbox_policy=policy)


# ----------------------------------------------------------------------------- figures


def test_open_figures_come_back_as_png_artifacts(sapi: MemoryAPI, policy: str) -> None:
    """A figure left open (and one shown) comes back as PNG under strict and gVisor; none with
    capture_figures=False."""
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\nplt.plot([3, 1])"
    result = sapi.execute_code(code, sandbox_policy=policy)
    assert result["success"], result
    assert [a["name"] for a in result["artifacts"]] == ["figure-1.png", "figure-2.png"]
    for artifact in result["artifacts"]:
        assert artifact["mime_type"] == "image/png"
        assert artifact["content"].startswith(b"\x89PNG\r\n\x1a\n")
        assert artifact["sha256"] == hashlib.sha256(artifact["content"]).hexdigest()
    off = sapi.execute_code(code, sandbox_policy=policy, capture_figures=False)
    assert off["success"] and off["artifacts"] == []


def test_a_session_returns_each_figure_once(sapi: MemoryAPI) -> None:
    """In a session a figure comes back from the call that left it open, not again."""
    with sapi.open_session("python") as session:
        session.execute_code("import matplotlib.pyplot as plt")
        drawn = session.execute_code("plt.plot([1, 2])")
        quiet = session.execute_code("x = 1")
    assert [a["name"] for a in drawn["artifacts"]] == ["figure-1.png"]
    assert quiet["artifacts"] == []


# ----------------------------------------------------------------------------- records


def test_calls_are_recorded_and_replayed_into_a_new_session(sapi: MemoryAPI) -> None:
    """Each call is recorded with the session's id; replay_session rebuilds the state."""
    with sapi.open_session("python") as session:
        session.execute_code("x = 20")
        session.execute_code("x += parameters['n']", {"n": 1})
        old_id = session.session_id
    calls = sapi.store.session_calls(old_id)
    assert [c.code for c in calls] == ["x = 20", "x += parameters['n']"]
    assert {c.session_id for c in calls} == {old_id}
    with sapi.replay_session(old_id) as replayed:
        assert [r["success"] for r in replayed.replayed] == [True, True]
        result = replayed.execute_code("print(x)")
        assert replayed.session_id != old_id
    assert result["stdout"] == "21\n"
    with pytest.raises(RequestError, match="no recorded calls"):
        sapi.replay_session("0" * 32)
