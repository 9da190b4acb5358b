"""Whether this host can run fast-mode sandboxes, and if not, why and how to fix it."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

from orchestrator.backends.fast.seccomp import filter_bpf

_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_CGROUPS = "/sys/fs/cgroup"
_PROBE_TIMEOUT_S = 10.0


def host_reason() -> str | None:
    """Why this host cannot run fast-mode sandboxes (None: it can), with how to fix it.

    The mode needs root (for the cgroups and the uid switch), bubblewrap and setpriv, cgroup
    controllers for memory, pids and cpu, libseccomp, and user namespaces that can really be
    made (a sysctl or a security module may forbid them).
    """
    if os.geteuid() != 0:
        return "needs root to give each run its own cgroup and host uid (run as root)"
    for check in (_tools_reason, _cgroup_reason, _seccomp_reason, _userns_reason):
        reason = check()
        if reason is not None:
            return reason
    return None


def uid_range_reason(base: int, count: int) -> str | None:
    """Why the host uids ``base`` to ``base + count - 1`` may not be used (None: they may).

    A user account there would share a uid with sandboxes on the host: its processes could
    signal or trace them, and they would share its per-user kernel budgets.
    """
    for entry in pwd.getpwall():
        if base <= entry.pw_uid < base + count:
            return (
                f"host uid {entry.pw_uid} ({entry.pw_name}) is in the fast mode's range "
                f"{base}-{base + count - 1}: set ATHENA_FAST_UID_BASE to a range no account uses"
            )
    return None


def _tools_reason() -> str | None:
    for tool, package in (("bwrap", "bubblewrap"), ("setpriv", "util-linux")):
        if shutil.which(tool, path=_PATH) is None:
            return f"{tool} is missing: apt-get install {package}"
    return None


def _cgroup_reason() -> str | None:
    if os.path.exists(f"{_CGROUPS}/cgroup.controllers"):
        return None  # v2: one hierarchy, delegated to root
    for controller in ("memory", "pids", "cpu"):
        if not os.access(f"{_CGROUPS}/{controller}", os.W_OK):
            return f"no writable cgroup v1 {controller} hierarchy under {_CGROUPS}"
    return None


def _seccomp_reason() -> str | None:
    try:
        filter_bpf()
    except OSError as exc:
        return str(exc)
    return None


def _userns_reason() -> str | None:
    probe = [
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
        "bwrap", "--unshare-user", "--unshare-pid", "--unshare-net", "--disable-userns",
        "--ro-bind", "/", "/", "--proc", "/proc", "--", "/bin/true",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            probe, capture_output=True, timeout=_PROBE_TIMEOUT_S, check=False, env={"PATH": _PATH}
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not be run: {exc}"
    if done.returncode == 0:
        return None
    said = done.stderr.decode(errors="replace").strip()[-300:]
    return (
        f"bubblewrap cannot make user namespaces here ({said or f'exit {done.returncode}'}): "
        "enable unprivileged user namespaces (sysctl user.max_user_namespaces)"
    )
