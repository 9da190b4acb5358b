"""Writable and shared mounts: sources swapped after the check, channels between runs, set-id
files and disk fills left in the host directory.

Each case runs a development-like policy (the project writable, network none) against the
project directory, judged by the host: which directory a mount showed, what special files and
modes the project holds afterwards, how much was written.
"""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import PolicyError
from tests.security import hostenv
from tests.security.attempt import Marker
from tests.security.harness import Sec

pytestmark = pytest.mark.security

MIB = 1024 * 1024


def _writer_policy(
    sec: Sec, limits: dict[str, Any] | None = None, **filesystem: Any
) -> dict[str, Any]:
    mount = {"source": "${project_dir}", "target": "/project", "read_only": False}
    return sec.policy(filesystem={"mounts": [mount], **filesystem}, limits=limits or {})


SWAPPER = r"""
@ATTEMPT@
cd /project 2>/dev/null || cd "$HOME/project"  # srt: a link in the work dir
end=$((SECONDS + 8))
while [ $SECONDS -lt $end ]; do
  mv sub sub.real 2>/dev/null && ln -s @OUTSIDE@ sub 2>/dev/null
  rm -f sub 2>/dev/null; mv sub.real sub 2>/dev/null
done
echo swapped
"""
READER = 'D=/data; [ -d "$D" ] || D="$HOME/data"; ls "$D" 2>&1; cat "$D"/* 2>&1 | head -c 4096'


def test_mount_source_swapped_after_the_check(sec: Sec) -> None:
    """A concurrent run swapping a mount's source for a link to a host dir never shows that dir."""
    sec.only("docker-runc", "docker-runsc", "srt")
    sub = sec.project / "sub"
    sub.mkdir()
    (sub / "mine.txt").write_text("the checked directory\n")
    sec.project.chmod(0o777)  # the writable policy's user may rename what the project holds
    outside = str(sec.host.world_canary.parent)
    reader_policy = sec.policy(
        filesystem={"mounts": [{"source": "${project_dir}/sub", "target": "/data"}]}
    )
    done = threading.Event()
    attack: list[object] = []
    marker = Marker.fresh()

    def swap() -> None:
        try:
            code = sec.host.fill(SWAPPER, sec.token, sec.project).replace("@OUTSIDE@", outside)
            code = marker.place(code, "bash")
            attack.append(sec.api.execute_code(code, "bash", None, 30, _writer_policy(sec)))
        except Exception as exc:  # reported below: the case needs its attacker
            attack.append(exc)
        finally:
            done.set()

    attacker = threading.Thread(target=swap, name="sec-swapper")
    attacker.start()
    shown, refused = 0, 0
    try:
        while not done.is_set():
            try:  # not sec.run: a refused run is the expected outcome here, not an error
                code = sec.host.fill(READER, sec.token, sec.project)
                result = sec.api.execute_code(code, "bash", None, 30, reader_policy)
            except PolicyError:  # the check itself saw the link: refused before any container
                refused += 1
                continue
            sec.results.append(result)  # judged with the rest: no canary may come back
            shown += "the checked directory" in result["stdout"]
            refused += result["error"] is not None
    finally:
        attacker.join(60)
    _restore(sub)
    sec.notes.append(f"{shown} runs saw the checked directory, {refused} were refused")
    sec.expect(shown + refused > 0, f"no reader run happened during the swaps: {attack}")
    for outcome in attack:  # the swapper itself must have reached its attempt
        if isinstance(outcome, dict):
            sec.check_attempted(outcome, marker, "bash")
        else:
            sec.unattempted.append(f"the swapper did not run: {outcome!r}")
    sec._project_before = hostenv.tree_state(sec.project)
    sec.finish()


def _restore(sub: Path) -> None:
    real = sub.with_name("sub.real")
    if sub.is_symlink():
        sub.unlink()
    if real.is_dir() and not sub.exists():
        real.rename(sub)


CHANNELS = r"""
@ATTEMPT@
import os, socket
P = '/project' if os.path.isdir('/project') else os.path.expanduser('~/project')
for name, make in (
    ('fifo-@TOKEN@', lambda p: os.mkfifo(p)),
    ('sock-@TOKEN@', lambda p: socket.socket(socket.AF_UNIX).bind(p)),
    ('dgram-@TOKEN@', lambda p: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).bind(p)),
):
    try:
        make(os.path.join(P, name))
        print(name, 'made')
    except OSError as exc:
        print(name, repr(exc), exc.errno)
os.mkfifo('/tmp/private-fifo')  # the run's own tmpfs: allowed
print('private ok')
"""


def test_no_socket_or_fifo_on_a_shared_mount(sec: Sec) -> None:
    """A run cannot leave a unix socket or FIFO in a mounted directory for another run to use."""
    sec.only("docker-runc", "docker-runsc", "srt")
    sec.project.chmod(0o777)
    result = sec.run(CHANNELS, "python", policy=_writer_policy(sec))
    special = [
        p.name
        for p in sec.project.iterdir()
        if stat.S_ISSOCK(p.lstat().st_mode) or stat.S_ISFIFO(p.lstat().st_mode)
    ]
    sec.expect(not special, f"special files were left in the project: {special}")
    sec.expect("private ok" in result["stdout"], f"the run's own /tmp refused a FIFO: {result}")
    sec._project_before = hostenv.tree_state(sec.project)
    sec.finish()


SETID = r"""
@ATTEMPT@
import os
P = '/project' if os.path.isdir('/project') else os.path.expanduser('~/project')
f = os.path.join(P, 'suid-@TOKEN@')
open(f, 'w').write('#!/bin/sh\nid\n')
for mode in (0o4755, 0o2755, 0o6777):
    try:
        os.chmod(f, mode)
    except OSError as exc:
        print('chmod', oct(mode), exc.errno)
for name, flags in (('created-@TOKEN@', os.O_CREAT | os.O_WRONLY),):
    try:
        os.close(os.open(os.path.join(P, name), flags, 0o6755))
    except OSError as exc:
        print('open', exc.errno)
try:
    os.mkdir(os.path.join(P, 'dir-@TOKEN@'), 0o2777)
except OSError as exc:
    print('mkdir', exc.errno)
"""


def test_no_set_id_file_is_left_in_a_writable_mount(sec: Sec) -> None:
    """Files a run leaves in a writable host directory never carry set-user or set-group id."""
    sec.only("docker-runc", "docker-runsc", "srt")
    sec.project.chmod(0o777)
    sec.run(SETID, "python", policy=_writer_policy(sec))
    marked = [
        f"{p.name} {oct(p.lstat().st_mode)}"
        for p in sec.project.iterdir()
        if p.lstat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    ]
    sec.expect(not marked, f"set-id bits on files the run left: {marked}")
    sec._project_before = hostenv.tree_state(sec.project)
    sec.finish()


FILL = r"""
@ATTEMPT@
import os
P = '/project' if os.path.isdir('/project') else os.path.expanduser('~/project')
chunk = b'x' * (4 * 1024 * 1024)
for i in range(64):  # 8 files of 32 MiB each at most, 1 GiB in all
    with open(os.path.join(P, 'fill-%d-@TOKEN@' % (i % 32)), 'ab') as handle:
        for _ in range(4):
            handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
print('wrote everything')
"""


def test_writes_to_a_writable_mount_are_capped(sec: Sec) -> None:
    """A run that writes past max_mount_write_bytes to the host directory is stopped."""
    sec.only("docker-runc", "docker-runsc", "srt")
    sec.project.chmod(0o777)
    cap = 64 * MIB
    started = time.monotonic()
    result = sec.run(
        FILL,
        "python",
        timeout_seconds=60,
        policy=_writer_policy(sec, {"file_size_mb": 64}, max_mount_write_bytes=cap),
    )
    written = sum(p.stat().st_size for p in sec.project.glob("fill-*"))
    categories = [v["category"] for v in result["violation_details"]]
    sec.notes.append(f"{written // MIB} MiB reached the host in {time.monotonic() - started:.1f} s")
    sec.expect("wrote everything" not in result["stdout"], "the run wrote 1 GiB to the host")
    sec.expect(written < 512 * MIB, f"{written // MIB} MiB reached the host (cap 64 MiB)")
    sec.expect("filesystem" in categories, f"no filesystem violation: {result['violations']}")
    for path in sec.project.glob("fill-*"):
        path.unlink()
    sec._project_before = hostenv.tree_state(sec.project)
    sec.finish()
