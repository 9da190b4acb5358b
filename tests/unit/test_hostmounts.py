"""srt's writable mounts: the write cap measured from outside, and the sweep after a run."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

from orchestrator.backends.hostmounts import WriteCapWatch, sweep_mount
from orchestrator.run import CancelToken


def test_the_sweep_strips_set_id_bits_and_removes_special_files(tmp_path: Path) -> None:
    """What the run left loses set-id bits; its FIFOs and sockets go; nothing else changes."""
    mine = os.getuid()
    (tmp_path / "sub").mkdir()
    setuid = tmp_path / "sub" / "tool"
    setuid.write_text("#!/bin/sh\n")
    setuid.chmod(0o6755)
    os.mkfifo(tmp_path / "fifo")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock"))
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    plain.chmod(0o640)
    victim = tmp_path.parent / f"{tmp_path.name}-victim"
    victim.write_text("v")
    victim.chmod(0o4755)
    (tmp_path / "link").symlink_to(victim)  # a link is never followed
    assert sweep_mount(str(tmp_path), mine, 0) == 3
    assert stat.S_IMODE(setuid.stat().st_mode) == 0o755
    assert not (tmp_path / "fifo").exists() and not (tmp_path / "sock").exists()
    assert stat.S_IMODE(plain.stat().st_mode) == 0o640
    assert stat.S_IMODE(victim.stat().st_mode) == 0o4755


def test_without_a_dedicated_uid_only_what_changed_during_the_run_is_swept(
    tmp_path: Path,
) -> None:
    """The project's own FIFO, older than the run, stays; one made during the run goes."""
    os.mkfifo(tmp_path / "old")
    started = (tmp_path / "old").stat().st_ctime + 10
    assert sweep_mount(str(tmp_path), None, started) == 0
    assert (tmp_path / "old").exists()


def test_the_write_cap_cancels_a_run_that_fills_the_filesystem(tmp_path: Path) -> None:
    """Growing a writable mount's filesystem past the cap cancels the run and names the mount."""
    cancel = CancelToken()
    cancelled = threading.Event()
    cancel.on_cancel(cancelled.set)
    watch = WriteCapWatch([(str(tmp_path), "/project")], 1024 * 1024, cancel)
    with watch, (tmp_path / "big").open("wb") as handle:
        for _ in range(64):
            handle.write(b"x" * 1024 * 1024)
            handle.flush()
            os.fsync(handle.fileno())
            if cancelled.wait(0.05):
                break
    assert cancelled.is_set() and watch.exceeded == "/project"
