"""The srt backend: Anthropic's Sandbox Runtime (bubblewrap, no network, a read-only view).

:func:`compile_srt` is the pure translation of a policy into srt's own settings JSON: srt reads
everything not denied, so ``/`` is denied and only the system directories the interpreters need,
the bootstrap files and the run's fresh work directory (the only writable place) are allowed
back. :class:`SrtBackend` runs the real ``srt`` CLI per run, as a dedicated non-root uid (when we
are root), with an environment built from nothing and the policy's limits applied inside with
``prlimit`` (srt sets none). It keeps its own clock: srt exits 0 when its child dies of SIGTERM,
so a timeout is killed and recorded here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from orchestrator.backends.base import ensure_available
from orchestrator.backends.hostlimits import RunCgroup, UidPool, tmpfs_dir
from orchestrator.backends.hostmounts import WriteCapWatch, sweep_mount
from orchestrator.backends.mountstage import MountStage
from orchestrator.backends.process import Supervised, run_supervised
from orchestrator.backends.workfiles import collect_outputs, write_inputs
from orchestrator.context import ExecutionContext
from orchestrator.errors import SandboxFailedError
from orchestrator.languages import get_language
from orchestrator.models import ExecutionRequest, Isolation, OutputFile
from orchestrator.policy import Policy, ResolvedMount
from orchestrator.run import (
    CancelToken,
    LeftOut,
    RunOutcome,
    RunSpec,
    build_outcome,
    process_exit,
)
from orchestrator.settings import Settings

log = structlog.get_logger(__name__)

# What the interpreters need to start, read-only; everything else under / is denied.
SYSTEM_READ = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/alternatives",
)
_PATH = "/usr/local/bin:/usr/bin:/bin"
# srt, its socat bridges, bubblewrap and the seccomp helper run as the run's uid too, and
# RLIMIT_NPROC counts their tasks (node's threads included): measured at 22 for a run.
NPROC_ALLOWANCE = 32
# srt's own node process and helpers share the run's cgroup with the code: their memory on top
# of the policy's memory_mb (measured: about 60 MiB for srt and its proxies).
SRT_MEMORY_ALLOWANCE_MB = 128
_MIB = 1024 * 1024
# The files this mode writes in the work directory itself: a call's files may not take them.
_OWN_FILES = (".athena-params.json", ".athena-output.json")
# What the interpreters print when an rlimit refuses memory or a process (Python, Node, bash,
# Ruby): without a cgroup, this is all that tells such a failure apart.
_MEMORY_MARKERS = re.compile(
    r"MemoryError|heap out of memory|Cannot allocate memory|xmalloc|failed to allocate memory"
)
_FORK_MARKERS = re.compile(
    r"fork: (retry: )?Resource temporarily unavailable"
    r"|Resource temporarily unavailable - fork"
    r"|spawn EAGAIN"
    r"|\[Errno 11\] Resource temporarily"
)


def compile_srt(
    policy: Policy, *, workdir: str, readable: Sequence[str], mounts: Sequence[ResolvedMount]
) -> dict[str, Any]:
    """Translate a policy into srt's settings JSON (pure).

    The network is off for every policy: srt's proxy takes an allowlist, and ``open`` cannot
    be expressed as one, so a run here never has more network than the policy gives.
    """
    return {
        "network": {
            "allowedDomains": list(policy.network.allowed_domains)
            if policy.network.mode == "allowlist"
            else [],
            "deniedDomains": [],
        },
        "filesystem": {
            "denyRead": ["/"],
            "allowRead": [*SYSTEM_READ, *readable, workdir, *(m.source for m in mounts)],
            "allowWrite": [workdir, *(m.source for m in mounts if not m.read_only)],
            "denyWrite": [],
        },
    }


def limits_argv(policy: Policy) -> list[str]:
    """``prlimit`` arguments applying the policy's limits to the code (pure).

    Memory is RLIMIT_DATA: Node aborts at start under a small RLIMIT_AS.
    """
    limits = policy.limits
    return [
        "prlimit",
        f"--data={limits.memory_mb * _MIB}",
        f"--nproc={limits.pids + NPROC_ALLOWANCE}",
        f"--nofile={limits.open_files}",
        f"--fsize={limits.file_size_mb * _MIB}",
        "--core=0",
        "--",
    ]


def find_srt(settings: Settings) -> Path | None:
    """Find the srt CLI: the configured path, PATH, or a project-local node_modules."""
    candidates = [settings.srt_path] if settings.srt_path else []
    on_path = shutil.which("srt")
    if on_path:
        candidates.append(Path(on_path))
    package_root = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), package_root):  # the working directory's project first
        candidates.append(base / "node_modules" / ".bin" / "srt")
    for candidate in candidates:
        if candidate and candidate.exists() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    return None


def missing_for_srt(settings: Settings) -> list[str]:
    """What srt needs and this machine lacks, each with how to get it (empty: ready)."""
    missing = []
    if find_srt(settings) is None:
        missing.append(
            "the srt CLI: `npm install @anthropic-ai/sandbox-runtime` (or set ATHENA_SRT_PATH)"
        )
    for tool, package in (
        ("node", "nodejs"),
        ("bwrap", "bubblewrap"),
        ("socat", "socat"),
        ("rg", "ripgrep"),
        ("prlimit", "util-linux"),
    ):
        if shutil.which(tool, path=_PATH) is None:
            missing.append(f"{tool}: `apt-get install {package}`")
    return missing


def read_sandbox_file(path: Path, limit: int) -> bytes | None:
    """Read a file the code could have tampered with, without trusting it.

    We are root and the code wrote the directory: the name may be a symlink to a host file, a
    FIFO that never ends, or huge. So: no symlink is followed, only a regular file is read, and
    no more than ``limit`` bytes of it (a longer one is dropped: its JSON would be cut anyway).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


class SrtBackend:
    """Runs each request under ``srt`` in a fresh work directory on this host."""

    name = "srt"

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings or Settings()
        self._uids = UidPool(self._settings.srt_uid_base, self._settings.max_concurrent_runs)
        self._stage = MountStage()

    def unavailable_reason(self, language: str) -> str | None:
        """Why this backend cannot run ``language`` here (None: it can)."""
        missing = missing_for_srt(self._settings)
        if missing:
            return "srt is not usable here; install " + "; ".join(missing)
        interpreter = get_language(language).interpreter
        if not os.access(interpreter, os.X_OK):
            return f"srt runs {language} with {interpreter}, which is missing on this host"
        return None

    def close(self) -> None:
        """Remove the staged mount sources; every run cleans up the rest after itself."""
        self._stage.close()

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        """Run one request under srt; see :class:`Backend`."""
        ensure_available(self, request.language)
        if spec.mounts and MountStage.available() is None:  # bind what was checked (root)
            staged = tuple(
                replace(m, source=self._stage.stage(m.source, m.device, m.inode))
                for m in spec.mounts
            )
            spec = replace(spec, mounts=staged)
        limits = request.policy.limits
        with ExitStack() as cleanup:  # undone in reverse: cgroup, tmpfs, uid, directory
            rundir = Path(tempfile.mkdtemp(prefix="athena-srt-"))
            cleanup.callback(shutil.rmtree, rundir, ignore_errors=True)
            uid = self._uids.take() if os.geteuid() == 0 else None
            if uid is not None:
                cleanup.callback(self._uids.give, uid)
            # As root, the run directory is a tmpfs sized like the container's /workspace and
            # /tmp together (the code's files, its TMPDIR), and every process of the run lives
            # in one cgroup.
            tmpfs_mb = request.policy.filesystem.tmpfs_mb
            cleanup.enter_context(tmpfs_dir(rundir, 2 * tmpfs_mb + 1))
            cgroup = RunCgroup.create(
                rundir.name,
                (limits.memory_mb + SRT_MEMORY_ALLOWANCE_MB) * _MIB,
                limits.pids + NPROC_ALLOWANCE,
            )
            if cgroup is not None:
                cleanup.callback(cgroup.destroy)
            argv, env, workdir = self._prepare(request, spec, rundir, uid)
            # The work directory is the code's cwd (/workspace in docker); out/ is made here.
            write_inputs(workdir, request.files, owner=uid, reserved=_OWN_FILES)
            if cgroup is not None:
                argv = cgroup.wrap(argv)
            writable = [(m.source, m.target) for m in spec.mounts if not m.read_only]
            started = time.time()
            for source, _ in writable:  # after the run: no set-id bit, socket or FIFO stays
                cleanup.callback(sweep_mount, source, uid, started - 1)
            cancel = CancelToken()  # the caller's cancel, or the write cap's
            cleanup.callback(spec.cancel.on_cancel(cancel.cancel))
            cap = request.policy.filesystem.max_mount_write_bytes
            with WriteCapWatch(writable, cap, cancel) as watch:
                supervised = self._spawn(argv, env, workdir, replace(spec, cancel=cancel), context)
            collected = collect_outputs(workdir, request.policy.files.max_out_bytes)
            outcome = self._outcome(request, supervised, workdir, context, uid, cgroup, collected)
            return replace(outcome, mount_write_exceeded=watch.exceeded)
        raise AssertionError("unreachable")  # pragma: no cover (mypy: ExitStack may swallow)

    def _prepare(
        self, request: ExecutionRequest, spec: RunSpec, rundir: Path, uid: int | None
    ) -> tuple[list[str], dict[str, str], Path]:
        language = get_language(request.language)
        rundir.chmod(0o711)
        workdir, srt_tmp = rundir / "work", rundir / "tmp"
        for directory in (workdir, srt_tmp):
            directory.mkdir(mode=0o700)
            if uid is not None:
                os.chown(directory, uid, uid)
        code_file = workdir / language.code_file
        code_file.write_text(request.code, encoding="utf-8", errors="surrogatepass")
        params_file = workdir / ".athena-params.json"
        guard = language.runtime_guard(request.policy)
        params_file.write_bytes(language.request_blob(request.parameters, guard))
        for mount in spec.mounts:  # mounts stay at their host path; a link shows them here
            (workdir / Path(mount.target).name).symlink_to(mount.source)
        for path in (code_file, params_file):
            if uid is not None:
                os.chown(path, uid, uid)
        boots = [str(language.boot_path())]
        srt = find_srt(self._settings)
        assert srt is not None  # checked by unavailable_reason
        vendor = (
            srt.parent.parent / "vendor"
        )  # srt is <package>/dist/cli.js; its helpers sit beside
        settings = compile_srt(
            request.policy, workdir=str(workdir), readable=[*boots, str(vendor)], mounts=spec.mounts
        )
        settings_file = rundir / "srt-settings.json"
        settings_file.write_text(json.dumps(settings))
        settings_file.chmod(0o644)
        env = {
            "PATH": _PATH,
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TMPDIR": str(srt_tmp),
        }
        # The bootstrap reads the parameters and writes `output` here (no runner holds fds 3, 4).
        env["ATHENA_PARAMS_FILE"] = str(params_file)
        env["ATHENA_OUTPUT_FILE"] = str(workdir / ".athena-output.json")
        as_uid = (
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
            if uid is not None
            else []
        )
        command = [
            *as_uid,
            str(srt),
            "--settings",
            str(settings_file),
            "--",
            *limits_argv(request.policy),
            *language.argv(code_file, language.boot_path()),
        ]
        return command, env, workdir

    def _spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        workdir: Path,
        spec: RunSpec,
        context: ExecutionContext,
    ) -> Supervised:
        try:
            return run_supervised(argv, env, str(workdir), spec, context)
        except OSError as exc:
            raise SandboxFailedError(f"could not start srt: {exc}") from exc

    def _outcome(
        self,
        request: ExecutionRequest,
        done: Supervised,
        workdir: Path,
        context: ExecutionContext,
        uid: int | None,
        cgroup: RunCgroup | None,
        collected: tuple[tuple[OutputFile, ...], tuple[LeftOut, ...]],
    ) -> RunOutcome:
        code, sig = done.exit_code, done.signal
        if code is not None and 128 < code <= 128 + 64:  # srt passes a signal death on as 128+N
            sig = code - 128
            code = None
        tail = context.get_stderr()[-4096:]
        value = read_sandbox_file(
            workdir / ".athena-output.json", request.policy.limits.max_output_bytes
        )
        # The cgroup's counters when there is one; what the interpreters print otherwise (an
        # rlimit refusal shows only there, so both count).
        counters = cgroup.stats() if cgroup is not None else {}
        peak = counters.get("memory_peak_bytes", -1)
        report = process_exit(
            done,
            status=(code, sig),
            oom_killed=counters.get("oom_kills", 0) > 0
            or (code != 0 and bool(_MEMORY_MARKERS.search(tail))),
            pids_limit_hits=max(
                len(_FORK_MARKERS.findall(tail)), counters.get("pids_limit_hits", 0)
            ),
            memory_peak_bytes=peak if peak >= 0 else None,
        )
        return build_outcome(
            report,
            value,
            isolation=Isolation(mode="srt", runtime="bubblewrap", path="srt", image=None),
            sandbox_id=f"srt-uid-{uid}" if uid is not None else "srt",
            track_resources=request.track_resources,
            files=collected[0],
            left_out=collected[1],
        )
