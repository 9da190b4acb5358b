"""One fast-mode sandbox: started ready for one run, then destroyed with everything it made.

A :class:`Cell` is a bubblewrap sandbox whose runner has started the interpreter and waits for
its request on stdin, in a cgroup of its own, as a host uid no other live sandbox has. It
serves exactly one run. Destroying it kills every process of its cgroup, removes the cgroup and
gives the uid back; its tmpfs mounts and namespaces end with its last process. When this
process dies, the runner sees its stdin close and kills everything at once (as in a container).
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field

from orchestrator.backends.fast.compile import LAUNCH_PATH, CellPlan, launch_argv
from orchestrator.backends.fast.seccomp import filter_bpf, memfd_with
from orchestrator.backends.hostlimits import RunCgroup, UidPool
from orchestrator.backends.protocol import FRAME_READY, PROTOCOL
from orchestrator.errors import SandboxFailedError

GROUP = "athena-fast"
_READY = FRAME_READY + len(PROTOCOL).to_bytes(4, "big") + PROTOCOL.encode()
_STDERR_KEEP = 4096
_counter = itertools.count(1)


@dataclass
class Cell:
    """A started sandbox waiting for its one request.

    Attributes:
        cell_id: ``fast-<owner pid>-<n>``; its cgroup has the same name without the prefix.
        process: the launcher (``sh``, then ``setpriv``, then ``bwrap`` in its place).
        cgroup: the run's cgroup.
        uid: the host uid the sandbox runs as.
        pending: bytes read after the ready frame (the caller's reader takes them first).
    """

    cell_id: str
    process: subprocess.Popen[bytes]
    cgroup: RunCgroup
    uid: int
    uids: UidPool
    pending: bytes = b""
    stderr_tail: bytearray = field(default_factory=bytearray)
    stderr_closed: bool = False
    destroyed: bool = False

    @classmethod
    def start(
        cls, plan: CellPlan, command: Sequence[str], uids: UidPool, startup_timeout: float
    ) -> Cell:
        """Start a sandbox and wait until its runner is ready for the request.

        Raises:
            SandboxFailedError: no cgroup could be made, or the sandbox did not become ready.
        """
        name = f"{os.getpid()}-{next(_counter)}"
        cgroup = RunCgroup.create(name, plan.memory_bytes, plan.pids, group=GROUP, cpus=plan.cpus)
        if cgroup is None:
            raise SandboxFailedError("could not make the run's cgroup (the fast mode needs root)")
        uid = uids.take()
        try:
            process = _spawn(plan, command, cgroup, uid)
        except BaseException:
            cgroup.destroy()
            uids.give(uid)
            raise
        cell = cls(f"fast-{name}", process, cgroup, uid, uids)
        try:
            cell._await_ready(startup_timeout)
        except BaseException:
            cell.destroy()
            raise
        return cell

    def _await_ready(self, timeout: float) -> None:
        """Read the runner's ready frame; what follows it stays in ``pending``."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        data = b""
        while len(data) < len(_READY):
            left = deadline - time.monotonic()
            chunk = self.read(min(left, 1.0)) if left > 0 else None
            if chunk == b"" or (chunk is None and left <= 0):
                self.process.poll()
                detail = self.stderr_text()
                why = "ended" if chunk == b"" else f"was not ready within {timeout:g} s"
                raise SandboxFailedError(
                    f"the fast-mode sandbox {why} before its runner was ready"
                    + (f": {detail}" if detail else "")
                )
            data += chunk or b""
        if not data.startswith(_READY):
            raise SandboxFailedError("the fast-mode sandbox's runner did not speak " + PROTOCOL)
        self.pending = data[len(_READY) :]

    def read(self, wait: float) -> bytes | None:
        """The next bytes of the runner's stdout: None when none came in ``wait``, b"" at EOF.

        Whatever the launcher wrote on stderr meanwhile is kept (its last 4 KiB).
        """
        assert self.process.stdout is not None and self.process.stderr is not None
        out, err = self.process.stdout.fileno(), self.process.stderr.fileno()
        watched = [out] if self.stderr_closed else [out, err]
        readable = select.select(watched, [], [], max(wait, 0.0))[0]
        if err in readable:
            chunk = os.read(err, 65536)
            self.stderr_closed = not chunk  # at its end it would be readable forever
            self.stderr_tail = (self.stderr_tail + chunk)[-_STDERR_KEEP:]
        if out in readable:
            return os.read(out, 262144)
        return None

    def send(self, payload: bytes) -> None:
        """Write the request to the runner's stdin (kept open: its EOF means we are gone).

        Raises:
            OSError: the runner is gone.
        """
        assert self.process.stdin is not None
        view = memoryview(payload)
        fd = self.process.stdin.fileno()
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def stderr_text(self) -> str:
        """What the launcher or bubblewrap said on stderr (last 4 KiB), as text."""
        return self.stderr_tail.decode(errors="replace").strip()

    def alive(self) -> bool:
        """Whether the sandbox can still take its run."""
        return not self.destroyed and self.process.poll() is None

    def kill(self) -> None:
        """Kill every process of the sandbox now (its cgroup's too)."""
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for directory in self.cgroup.dirs[:1]:
            for pid in _pids(directory):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def destroy(self) -> None:
        """Kill what is left, reap it, remove the cgroup and give the uid back (idempotent)."""
        if self.destroyed:
            return
        self.destroyed = True
        if self.process.poll() is None:
            self.kill()
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.cgroup.destroy()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                with suppress(OSError):
                    stream.close()
        self.uids.give(self.uid)


def _spawn(
    plan: CellPlan, command: Sequence[str], cgroup: RunCgroup, uid: int
) -> subprocess.Popen[bytes]:
    """Start the launcher with the seccomp program on an inherited in-memory file."""
    seccomp_fd = memfd_with(filter_bpf())
    try:
        argv = launch_argv(
            plan,
            command,
            cgroup_dirs=cgroup.dirs,
            cgroup_binds=cgroup.binds(),
            host_uid=uid,
            seccomp_fd=seccomp_fd,
        )
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": LAUNCH_PATH},
            cwd="/",
            pass_fds=(seccomp_fd,),
            start_new_session=True,
        )
    except OSError as exc:
        raise SandboxFailedError(f"could not start the fast-mode sandbox: {exc}") from exc
    finally:
        os.close(seccomp_fd)


def _pids(directory: os.PathLike[str]) -> list[int]:
    try:
        with open(os.path.join(directory, "cgroup.procs")) as procs:
            return [int(line) for line in procs.read().split()]
    except OSError:
        return []
