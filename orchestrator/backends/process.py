"""Supervising a process tree on this host: output into the context, our own clock, a group kill.

The srt, restricted and inprocess backends all run the code as a child process (of ``srt``, of
our own interpreter, or of the interpreter of the language). :func:`supervise` watches one: it
feeds stdout and stderr into the :class:`ExecutionContext` as they arrive (the context keeps
head and tail, so memory stays bounded), kills the child's whole process group at the timeout or
on cancel, kills what the child left running when it exits, and reports how it ended.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass

from orchestrator.context import ExecutionContext, Stream
from orchestrator.models import Event
from orchestrator.run import CancelToken, RunSpec

_CHUNK = 65536
_DRAIN_S = 1.0  # after the child exits, how long its leftovers may keep output pipes open


@dataclass(frozen=True)
class Supervised:
    """How a supervised process ended.

    Attributes:
        exit_code: its exit status, when it exited.
        signal: the signal that killed it.
        timed_out: we killed it at the timeout.
        cancelled: we killed it because the run was cancelled.
        run_ms: milliseconds from the start of supervision to its end.
        extra: what it wrote on the extra pipe (a value channel), capped.
        extra_truncated: the extra pipe carried more than the cap.
    """

    exit_code: int | None
    signal: int | None
    timed_out: bool
    cancelled: bool
    run_ms: float
    extra: bytes = b""
    extra_truncated: bool = False


def kill_group(pgid: int) -> None:
    """SIGKILL a whole process group (quietly, if it is gone)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _reap(pid: int, block: bool = False) -> int | None:
    try:
        reaped, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return 0  # reaped elsewhere: nothing more to learn
    return status if reaped == pid else None


def _watch_exit(selector: selectors.BaseSelector, pid: int) -> int | None:
    """Register a pidfd that becomes readable when the child exits (Linux 5.3+)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # the loop polls instead
    selector.register(pidfd, selectors.EVENT_READ, "exit")
    return pidfd


def supervise(
    pid: int,
    outputs: Mapping[int, Stream],
    context: ExecutionContext,
    timeout: float,
    cancel: CancelToken,
    *,
    extra_fd: int | None = None,
    extra_limit: int = 1024 * 1024,
) -> Supervised:
    """Watch child ``pid`` (leader of its own process group) until it ends.

    ``outputs`` maps pipe fds (read ends) to the stream they carry; they are closed here.
    """
    start = time.monotonic()
    selector = selectors.DefaultSelector()
    for fd, stream in outputs.items():
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ, stream)
    if extra_fd is not None:
        os.set_blocking(extra_fd, False)
        selector.register(extra_fd, selectors.EVENT_READ, "extra")
    pidfd = _watch_exit(selector, pid)
    forget = cancel.on_cancel(lambda: kill_group(pid))
    state = _Loop(pid, start + timeout, extra_limit)
    try:
        state.run(selector, context, cancel, polling=pidfd is None)
    finally:
        forget()
        for key in list(selector.get_map().values()):
            with suppress(OSError):
                os.close(key.fd)
        selector.close()
    end = state.ended_at or time.monotonic()
    status = state.status if state.status is not None else _reap(pid, block=True) or 0
    return Supervised(
        exit_code=os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None,
        signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        timed_out=state.timed_out,
        cancelled=cancel.cancelled,
        run_ms=(end - start) * 1000,
        extra=bytes(state.extra),
        extra_truncated=state.extra_truncated,
    )


class _Loop:
    """The state of one supervision loop."""

    def __init__(self, pid: int, deadline: float, extra_limit: int) -> None:
        self.pid, self.deadline, self.extra_limit = pid, deadline, extra_limit
        self.status: int | None = None
        self.ended_at: float | None = None
        self.timed_out = False
        self.extra = bytearray()
        self.extra_truncated = False

    def run(
        self,
        selector: selectors.BaseSelector,
        context: ExecutionContext,
        cancel: CancelToken,
        polling: bool,
    ) -> None:
        drain_until = None
        while True:
            now = time.monotonic()
            if self.status is None:
                self._check_exit(now)
                if self.status is not None:
                    drain_until = now + _DRAIN_S
            if self.status is None and now >= self.deadline and not self.timed_out:
                self.timed_out = True
                kill_group(self.pid)
            open_pipes = [k for k in selector.get_map().values() if k.data != "exit"]
            if self.status is not None and (not open_pipes or now >= (drain_until or now)):
                return
            wait = 0.05 if polling else None
            limit = drain_until if self.status is not None else self.deadline
            if limit is not None:
                left = max(0.0, limit - now)
                wait = left if wait is None else min(wait, left)
            for key, _ in selector.select(wait):
                self._take(selector, key, context)

    def _check_exit(self, now: float) -> None:
        status = _reap(self.pid)
        if status is not None:
            self.status, self.ended_at = status, now
            kill_group(self.pid)  # what it left running in its group dies with the run

    def _take(
        self,
        selector: selectors.BaseSelector,
        key: selectors.SelectorKey,
        context: ExecutionContext,
    ) -> None:
        if key.data == "exit":
            selector.unregister(key.fd)
            os.close(key.fd)
            return
        try:
            data = os.read(key.fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            selector.unregister(key.fd)
            os.close(key.fd)
        elif key.data == "extra":
            room = self.extra_limit - len(self.extra)
            self.extra += data[: max(room, 0)]
            self.extra_truncated = self.extra_truncated or len(data) > room
        else:
            context.feed(key.data, data)


def run_supervised(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    spec: RunSpec,
    context: ExecutionContext,
    *,
    stdin: int | None = None,
    extra: bool = False,
    extra_limit: int = 1024 * 1024,
) -> Supervised:
    """Start ``argv`` in a new session (its own process group) and supervise it.

    stdout and stderr go to the context; stdin is /dev/null unless a readable fd is given;
    with ``extra``, the child gets the write end of one more pipe (a value channel), its number
    in the environment variable ``ATHENA_VALUE_FD``.

    Raises:
        OSError: the program could not be started.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    extra_r, extra_w = os.pipe() if extra else (None, None)
    env = {**env, "ATHENA_VALUE_FD": str(extra_w)} if extra_w is not None else env
    try:
        context.dispatch()
        process = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            pass_fds=(extra_w,) if extra_w is not None else (),
            start_new_session=True,
            close_fds=True,
        )
    except BaseException:
        for fd in (out_r, err_r, extra_r):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in (out_w, err_w, extra_w):
            if fd is not None:
                os.close(fd)
    context.emit(Event(kind="begin", elapsed_ms=context.elapsed_ms()))
    done = supervise(
        process.pid,
        {out_r: "stdout", err_r: "stderr"},
        context,
        spec.timeout_seconds,
        spec.cancel,
        extra_fd=extra_r,
        extra_limit=extra_limit,
    )
    process.returncode = done.exit_code if done.exit_code is not None else -(done.signal or 9)
    return done
