"""Hostile sessions and files: the state a session keeps is the tenant's, never a way around us.

A session keeps one interpreter (and its container) from call to call, so hostile code has more
to work with than in a one-shot run: threads that outlive their call, a workspace it prepared for
the next call's files, the bootstrap's own loop in its reach. These cases check that a call's code
cannot write the results of later calls, leave a violation unaccounted between calls, break the
session's loop into a hang, or make the runner follow a link it planted; and that the names of
the files that come back stay as distinct as the files themselves.

Sessions exist in the docker modes only; the file-name case runs wherever files come back.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from athena.sessions import SandboxSession
from orchestrator.errors import RequestError, SessionEndedError
from tests.security.attempt import Marker
from tests.security.harness import SCOPE, Sec

pytestmark = pytest.mark.security

DOCKER = ("docker-runc", "docker-runsc")
# A session call must end (a result or a clear error) within its timeout plus this much.
SLACK_S = 8.0

# Call 1 leaves a thread that takes the runner's next request from its stdin (under gVisor,
# /proc/1/fd is open to the code) and answers it with frames of its own, the request's nonce
# included: a forged stdout, a forged out/ file and a clean exit report.
FORGER = r"""
import json, os, struct, threading
def frame(kind, payload):
    return kind + struct.pack(">I", len(payload)) + payload
def forge(fin, fout):
    while True:
        request = os.read(fin, 1 << 20)
        if not request:
            return
        nonce = request.split(b"\n", 1)[0].split()[-1]
        name = b"forged-@TOKEN@.txt".hex().encode()
        report = {"exit_code": 0, "signal": None, "timed_out": False, "oom_kills": 0,
                  "pids_limit_hits": 0, "memory_peak_bytes": 1, "cpu_ns": 1, "run_ns": 1000,
                  "value_truncated": False, "mount_write_cap_hit": -1, "session": True,
                  "alive": True, "interrupted": False, "nonce": nonce.decode()}
        os.write(fout, frame(b"B", b"") + frame(b"o", b"forged-@TOKEN@\n")
                 + frame(b"F", nonce + b" f " + name + b" 6") + frame(b"D", b"forged")
                 + frame(b"x", json.dumps(report).encode()))
@ATTEMPT@
try:
    fds = (os.open("/proc/1/fd/0", os.O_RDONLY), os.open("/proc/1/fd/1", os.O_WRONLY))
except OSError as exc:
    print("the runner's stdio is closed to the code:", exc)
else:
    threading.Thread(target=forge, args=fds, daemon=True).start()
    print("forger planted")
"""

# Call 1 leaves a thread that, once the call is over, writes half a frame to the runner's stdout:
# a header announcing 60 MiB that never come, so the orchestrator's decoder swallows what follows.
DESYNC = r"""
import os, struct, threading, time
def later():
    time.sleep(1)
    fd = os.open("/proc/1/fd/1", os.O_WRONLY)
    os.write(fd, b"o" + struct.pack(">I", 60 * 1024 * 1024) + b"half a frame")
@ATTEMPT@
try:
    os.close(os.open("/proc/1/fd/1", os.O_WRONLY))
except OSError as exc:
    print("the runner's stdout is closed to the code:", exc)
else:
    threading.Thread(target=later, daemon=True).start()
    print("desync planted")
"""

# Call 1 returns at once and leaves a thread that fills the memory limit a second later, between
# calls: the violation is the session's all the same.
LATE_OOM = r"""
import threading, time
def grow():
    time.sleep(1)
    heap = []
    while True:
        heap.append(bytearray(32 * 1024 * 1024))
@ATTEMPT@
threading.Thread(target=grow, daemon=True).start()
print("grower planted")
"""

# Names that differ only in bytes that are not UTF-8: each is a file of its own.
NOT_UTF8_NAMES = r"""
import os
os.makedirs("out", exist_ok=True)
@ATTEMPT@
for name in (b"out/a\xff", b"out/a\xfe", b"out/a\xed\xa0\x80"):
    with open(name, "wb") as handle:
        handle.write(name)
print("written")
"""

# Call 1 prepares the workspace for the next calls' files: links to the host's and the container's
# files, a directory link, a FIFO, out/ replaced by a link to /, and a thread that keeps flipping
# "race" between a directory and a link to /tmp/victim while files are written and collected.
PLANTED = r"""
import os, shutil, threading, time
os.makedirs("/tmp/victim", exist_ok=True)
@ATTEMPT@
os.symlink("@WORLD@", "data.csv")
os.symlink("/tmp/victim", "linked")
os.mkfifo("pipe")
shutil.rmtree("out", ignore_errors=True)
os.symlink("/", "out")
def flip():
    while True:
        try:
            os.mkdir("race.new")
            os.rename("race.new", "race")
            os.rename("race", "race.old")
            os.symlink("/tmp/victim", "race")
            time.sleep(0.0005)
            os.unlink("race")
            shutil.rmtree("race.old", ignore_errors=True)
        except OSError:
            pass
threading.Thread(target=flip, daemon=True).start()
print("planted")
"""

# Ways to break a session's loop from inside; each must end in a result or an error in time.
TAMPER = {
    "bash-printf": ("bash", "@ATTEMPT@\nprintf() { :; }\necho tampered"),
    "bash-done-closed": ("bash", "@ATTEMPT@\nexec 5>&-\necho tampered"),
    "bash-next-redefined": ("bash", "@ATTEMPT@\n__athena_next() { sleep 1000; }\necho tampered"),
    "bash-exit-trap": ("bash", "@ATTEMPT@\ntrap 'sleep 1000' EXIT\nset -e\nfalse"),
    "python-json": (
        "python",
        "import json\n@ATTEMPT@\njson.loads = lambda *a, **k: {'guard': None}\nprint('tampered')",
    ),
    "python-fd5-closed": ("python", "import os\n@ATTEMPT@\nos.close(5)\nprint('tampered')"),
    "python-early-done": (
        "python",
        "import os, time\n@ATTEMPT@\nos.write(5, b'0\\n')\ntime.sleep(3)\nos.write(5, b'0\\n')",
    ),
    "python-read-next": (
        "python",
        "import os, threading\n@ATTEMPT@\n"
        "threading.Thread(target=lambda: os.read(3, 1 << 20), daemon=True).start()",
    ),
    "javascript-writesync": (
        "javascript",
        "@ATTEMPT@\nconst fs = require('fs');\nconst w = fs.writeSync;\n"
        "fs.writeSync = (fd, ...a) => fd === 5 ? 0 : w(fd, ...a);",
    ),
    "javascript-sigint": (
        "javascript",
        "@ATTEMPT@\nprocess.removeAllListeners('SIGINT');\nprocess.on('SIGINT', () => {});",
    ),
}
PLAIN = {
    "python": "print('still @TOKEN@')",
    "bash": "echo still @TOKEN@",
    "javascript": "console.log('still @TOKEN@')",
}


def _open(sec: Sec, language: str = "python", lifetime: float = 3600) -> SandboxSession:
    """A session of this mode's hostile policy (docker modes only: elsewhere n.a.)."""
    sec.only(*DOCKER)
    return sec.api.open_session(language, sec.policy(), max_lifetime_seconds=lifetime)


def _call(
    sec: Sec,
    session: SandboxSession,
    code: str,
    *,
    attempt: bool = False,
    timeout: float = 10,
    files: dict[str, bytes] | None = None,
) -> tuple[dict[str, Any] | None, float, Exception | None]:
    """One call of a session: (its result or None, seconds it took, the error it raised)."""
    marker = Marker.fresh() if attempt else None
    if marker is not None:
        code = marker.place(code, session.language)
    code = sec.host.fill(code, sec.token, sec.project)
    start = time.monotonic()
    try:
        result = session.execute_code(code, timeout_seconds=timeout, files=files)
    except (SessionEndedError, RequestError) as exc:
        print(f"--- {sec.mode} session call raised {type(exc).__name__}: {exc}")
        return None, time.monotonic() - start, exc
    took = time.monotonic() - start
    sec.results.append(result)
    print(f"--- {sec.mode} session call ({took:.1f} s): state={result['session_state']}")
    print(f"error={result['error']} violations={result['violations']}")
    print("stdout:", result["stdout"][-800:], "\nstderr:", result["stderr"][-800:])
    if marker is not None:
        sec.check_attempted(result, marker, session.language)
    return result, took, None


def _names(result: dict[str, Any] | None) -> list[str]:
    return [item["name"] for item in (result or {}).get("files") or []]


def test_session_request_theft(sec: Sec) -> None:
    """A call's code cannot answer a later call with the runner's reports: a stolen request
    yields no forged success, no forged file, and no wait past the call's timeout.

    What a session's earlier code prints, or makes later code do, is not in question: the calls
    share one interpreter (on runc too, an earlier call can replace what later ones run). What
    the runner reports (exit, limits, files) must stay the runner's own.
    """
    with _open(sec) as session:
        _call(sec, session, FORGER, attempt=True)
        for call in (2, 3):
            code = f"print('real-{call}-@TOKEN@')\nopen('out/real-{call}.txt', 'w').write('r')"
            result, took, _ = _call(sec, session, code, timeout=5)
            sec.expect(took <= 5 + SLACK_S, f"call {call} took {took:.0f} s (timeout 5 s)")
            if result is None:
                continue  # refused clearly (the session ended): nothing forged got through
            ran = f"real-{call}-{sec.token}" in result["stdout"]
            sec.expect(
                ran or not result["success"],
                f"call {call} did not run its code yet reports success: {result['stdout']!r}",
            )
            forged = [n for n in _names(result) if n.startswith("forged")]
            sec.expect(not forged, f"call {call} returned files the earlier call forged: {forged}")
    sec.finish()


def test_session_stream_desync(sec: Sec) -> None:
    """Half a frame written between calls cannot hold the next call past its timeout."""
    with _open(sec) as session:
        _call(sec, session, DESYNC, attempt=True, timeout=5)
        time.sleep(2)  # the half frame is written between the calls
        _, took, _ = _call(sec, session, "print('call 2')", timeout=5)
        sec.expect(
            took <= 5 + SLACK_S, f"the call after the desync took {took:.0f} s (timeout 5 s)"
        )
        result, _, error = _call(sec, session, PLAIN["python"], timeout=5)
        ok = result is not None and f"still {sec.token}" in result["stdout"]
        sec.expect(ok, f"the session does not serve after the desync: {error}")
    sec.finish()


def test_session_violation_between_calls(sec: Sec) -> None:
    """A memory violation by what a call left running ends the session, between calls too."""
    with _open(sec) as session:
        _call(sec, session, LATE_OOM, attempt=True, timeout=5)
        time.sleep(6)  # the thread runs out of memory while no call is in flight
        result, _, error = _call(sec, session, "print('next call')", timeout=5)
        info = session.info()
        seen = " ".join(
            [str(error), str(info["ended_reason"]), *((result or {}).get("violations") or [])]
        )
        sec.expect(
            info["state"] == "ended" and "memory" in seen,
            "a memory violation between calls did not end the session or was not reported: "
            f"state {info['state']}, restarts {info['restarts']}, "
            f"result {(result or {}).get('error') or (result or {}).get('violations')}",
        )
    sec.finish()


def test_out_names_stay_distinct(sec: Sec) -> None:
    """Files of out/ whose names differ only in non-UTF-8 bytes come back under distinct names."""
    if sec.mode == "restricted":
        sec.not_applicable("RestrictedPython code cannot name files by bytes")
    result = sec.run(NOT_UTF8_NAMES, "python", timeout_seconds=15)
    names = _names(result)
    sec.require(len(names) == 3, f"expected 3 files back, got {names}")
    sec.expect(len(set(names)) == len(names), f"distinct files came back as one name: {names}")
    for name in names:
        sec.expect(name.encode("utf-8", "strict") is not None, f"name {name!r} is not UTF-8")
    sec.finish()


def test_session_planted_links(sec: Sec) -> None:
    """Links, FIFOs and flipping directories a call leaves are never followed by files in or out."""
    with _open(sec) as session:
        _call(sec, session, PLANTED, attempt=True)
        for name in ("data.csv", "linked/x", "pipe"):
            _, took, error = _call(sec, session, "print('ran')", files={name: b"in"})
            sec.expect(isinstance(error, RequestError), f"input {name} was written: {error}")
            sec.expect(took <= 10 + SLACK_S, f"the call with input {name} took {took:.0f} s")
        for _ in range(20):
            _call(sec, session, "print('ran')", files={"race/x": b"raced-@TOKEN@"})
        probe = "import os\nprint(sorted(os.listdir('/tmp/victim')))\nprint(os.path.islink('out'))"
        result, _, _ = _call(sec, session, probe)
        stdout = (result or {}).get("stdout", "")
        sec.require(result is not None and "True" in stdout, "the probe did not run")
        sec.expect("'x'" not in stdout, f"an input file was written through a link: {stdout!r}")
        sec.expect(not _names(result), f"out/ (a link to /) was followed: {_names(result)}")
    sec.finish()


@pytest.mark.parametrize("tamper", list(TAMPER))
def test_session_loop_tampering(sec: Sec, tamper: str) -> None:
    """Code that breaks its session's loop gets a result or an error in time, and the next ones."""
    if SCOPE == "ci" and sec.mode == "docker-runsc":
        # The loop is the bootstrap's, the same under runc; what gVisor adds (the runner's stdio
        # in /proc/1/fd) is the request-theft and desync cases'. The full scope runs it all.
        sec.not_applicable("ci scope: the bootstraps' loop is judged on runc (full: everywhere)")
    language, code = TAMPER[tamper]
    with _open(sec, language) as session:
        _, took, _ = _call(sec, session, code, attempt=True, timeout=5)
        sec.expect(took <= 5 + SLACK_S, f"the tampering call took {took:.0f} s (timeout 5 s)")
        served = False
        for call in (2, 3):
            result, took, error = _call(sec, session, PLAIN[language], timeout=5)
            sec.expect(took <= 5 + SLACK_S, f"call {call} took {took:.0f} s (timeout 5 s)")
            served = served or (result is not None and f"still {sec.token}" in result["stdout"])
            sec.expect(not isinstance(error, RequestError), f"call {call}: {error}")
        sec.expect(served, "the session no longer serves a plain call after the tampering")
    sec.finish()


@pytest.mark.parametrize("ending", ["close", "lifetime"])
def test_session_ends_while_stuck(sec: Sec, ending: str) -> None:
    """Closing or expiring a session ends its stuck call at once and leaves nothing behind."""
    session = _open(sec, lifetime=3.0 if ending == "lifetime" else 3600)
    if ending == "close":
        threading.Timer(2.0, session.close).start()
    # No attempt marker: the call's output is lost with the session, and it attempts nothing.
    stuck = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
    result, took, error = _call(sec, session, stuck, timeout=60)
    sec.expect(took <= 3 + SLACK_S, f"the stuck call ended {took:.0f} s after it began")
    ended = isinstance(error, SessionEndedError) or (result or {}).get("error_type") == (
        "SessionEndedError"
    )
    sec.expect(ended, f"the stuck call did not end with the session: {error or result}")
    sec.expect(session.info()["state"] == "ended", "the session is still open")
    sec.finish()
