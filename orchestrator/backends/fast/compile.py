"""The pure translation of a policy into a fast-mode sandbox: bubblewrap's arguments and limits.

Nothing here starts a process. :func:`compile_fast` turns (policy, language, exported image) into
a :class:`CellPlan`, hashable so the warm pool keys on it; :func:`launch_argv` adds what each
sandbox has of its own (its cgroup, its host uid, the seccomp program's fd). Exact-output unit
tests pin both; an integration test checks the result from inside a live sandbox.

Per sandbox: new user, mount, pid, ipc, uts, network and cgroup namespaces; the image's root
filesystem read-only; fresh size-capped tmpfs for /tmp, /workspace and /dev/shm; a private
/proc; no /sys but the run's own cgroup files (read-only, where the runner reads its counters);
the policy's uid inside, an otherwise unused host uid outside; no capabilities; no further user
namespaces; the seccomp filter of :mod:`.seccomp`; an environment built from nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.backends.fast.rootfs import ImageRoot
from orchestrator.guard import kernel_denials, runtime_guard
from orchestrator.models import ExecutionRequest
from orchestrator.policy import Policy

WORKDIR = "/workspace"
_MIB = 1024 * 1024
_ENVIRONMENT = (  # as the docker mode's containers have them
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", "/tmp/home"),
    ("TMPDIR", "/tmp"),
    ("LANG", "C.UTF-8"),
    ("LC_ALL", "C.UTF-8"),
)
# The bubblewrap process that waits outside the sandbox lives in the run's cgroup too (it is
# born there): one task more than the container's runner and code.
PIDS_ALLOWANCE = 1
LAUNCH_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class CellPlan:
    """Everything a sandbox of this (policy, language, image) is made of, but its own parts.

    Attributes:
        bwrap: bubblewrap's arguments from ``--unshare-user`` to the command, without the
            per-sandbox ones :func:`launch_argv` adds.
        memory_bytes: the cgroup's memory limit (swap included: none beyond it).
        pids: the cgroup's task limit.
        cpus: the cgroup's CPU limit in cores.
        open_files: RLIMIT_NOFILE.
        file_size_bytes: RLIMIT_FSIZE.
    """

    bwrap: tuple[str, ...]
    memory_bytes: int
    pids: int
    cpus: float
    open_files: int
    file_size_bytes: int


def declines(request: ExecutionRequest) -> str | None:
    """Why the fast mode does not run this request as asked (None: it does). Pure.

    The mode runs our own images with no network and no mounts; anything else goes on down
    the policy's list (to the docker mode, normally), never runs with less than it asked.
    """
    policy = request.policy
    named = f"policy {policy.name!r}"
    checks = (
        (
            policy.network.mode != "none",
            f"runs network mode none only; {named} has {policy.network.mode}",
        ),
        (bool(policy.filesystem.mounts), f"mounts no host directories; {named} has mounts"),
        (not policy.filesystem.read_only_root, f"keeps / read-only; {named} wants it writable"),
        (policy.runtime.gvisor == "require", f"has no gVisor; {named} requires it"),
        (
            bool(request.image or policy.image),
            "runs the shipped images only; custom ones run in docker",
        ),
        (bool(request.requirements), "installs no requirements; they are installed in docker"),
    )
    return next((why for failed, why in checks if failed), None)


def _ids(user: str) -> tuple[str, str]:
    uid, _, gid = user.partition(":")
    return uid, gid or uid


def compile_fast(
    policy: Policy, language: str, image: ImageRoot, hosts: str | None = None
) -> CellPlan:
    """Translate a policy into a :class:`CellPlan` for ``language``'s exported image (pure).

    ``hosts``: a file bound read-only as ``/etc/hosts`` (the image's own is empty: the engine
    writes one into each container, and an export has none), so ``localhost`` resolves.
    """
    limits, fs = policy.limits, policy.filesystem
    uid, gid = _ids(policy.runtime.user)
    tmpfs = str(fs.tmpfs_mb * _MIB)
    shm = str(min(fs.tmpfs_mb, 64) * _MIB)
    denied = kernel_denials(runtime_guard(policy, language))
    env = dict(image.environment) | dict(_ENVIRONMENT)
    if denied:
        env["ATHENA_DENY"] = ",".join(denied)
    setenv = [arg for name in sorted(env) for arg in ("--setenv", name, env[name])]
    bwrap = (
        "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
        "--unshare-cgroup", "--disable-userns", "--as-pid-1", "--new-session",
        "--uid", uid, "--gid", gid, "--hostname", "sandbox",
        "--ro-bind", str(image.rootfs), "/",
        *(("--ro-bind", hosts, "/etc/hosts") if hosts else ()),
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", shm, "--perms", "1777", "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",  # its tmpfs is the sandbox user's and unsized otherwise
        "--size", tmpfs, "--perms", "1777", "--tmpfs", "/tmp",
        "--size", tmpfs, "--perms", "0755", "--tmpfs", WORKDIR,
        "--perms", "0555", "--tmpfs", "/sys",
        "--chdir", WORKDIR,
        "--cap-drop", "ALL",
        "--clearenv", *setenv,
    )  # fmt: skip
    return CellPlan(
        bwrap=bwrap,
        memory_bytes=limits.memory_mb * _MIB,
        pids=limits.pids + PIDS_ALLOWANCE,
        cpus=limits.cpus,
        open_files=limits.open_files,
        file_size_bytes=limits.file_size_mb * _MIB,
    )


def launch_argv(
    plan: CellPlan,
    command: Sequence[str],
    *,
    cgroup_dirs: Sequence[Path],
    cgroup_binds: Sequence[tuple[Path, str]],
    host_uid: int,
    seccomp_fd: int,
) -> list[str]:
    """The command line that starts one sandbox (pure).

    ``/bin/sh`` moves itself into the run's cgroup and sets the rlimits (both inherited by
    everything after it, so no process of the run is ever outside), then becomes ``setpriv``,
    which drops to ``host_uid`` with no groups and no privileges to gain, then ``bwrap``.
    ``cgroup_dirs`` are the run's cgroup directories; ``cgroup_binds`` show them read-only
    inside, where the runner reads its counters (as in a container).
    """
    joins = [f'echo $$ > "{d}/cgroup.procs"' for d in cgroup_dirs]
    blocks = -(-plan.file_size_bytes // 512)  # dash counts RLIMIT_FSIZE in 512-byte blocks
    limits = [f"ulimit -n {plan.open_files}", f"ulimit -f {blocks}", "ulimit -c 0"]
    script = " && ".join([*joins, *limits, 'exec "$0" "$@"'])
    binds = [arg for d, target in cgroup_binds for arg in ("--ro-bind", str(d), target)]
    return [
        "/bin/sh", "-c", script,
        "setpriv", f"--reuid={host_uid}", f"--regid={host_uid}", "--clear-groups",
        "--no-new-privs", "--inh-caps=-all", "--",
        "bwrap", *plan.bwrap, *binds, "--remount-ro", "/sys", "--seccomp", str(seccomp_fd),
        "--", *command,
    ]  # fmt: skip
