"""The pure translation of a policy into Docker's create-container settings.

Nothing here talks to the engine: exact-output unit tests pin :func:`compile_docker`, and an
integration test checks the same settings again against the engine's view of a live container.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import PolicyError
from orchestrator.guard import kernel_denials, runtime_guard
from orchestrator.policy import Policy, ResolvedMount
from orchestrator.run import RunSpec

WORKDIR = "/workspace"
HOSTS = "/etc/hosts"
RUNTIME = "runc"
# gVisor's runtimes as scripts/ensure-runsc.sh registers them: ptrace platform (its KVM platform
# hangs here), and --network=none for runs without a network.
RUNSC, RUNSC_NONET = "runsc", "runsc-nonet"
# Under runsc the pids cgroup counts gVisor's own tasks too: 38 for the sentry and its helpers,
# then about 9 per process of the code (measured: 10 sleeps 128, 40 sleeps 366).
RUNSC_PIDS_BASE, RUNSC_PIDS_PER_PROCESS = 40, 9
IMAGE_PROTOCOL_LABEL = "org.athena.protocol"
_MIB = 1024 * 1024
_ENVIRONMENT = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp/home",  # created by the runner: `pip install --user` lands on the tmpfs
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}


@dataclass(frozen=True)
class EgressRoute:
    """How an allowlist sandbox reaches the egress proxy: its network and the proxy's URL."""

    network: str
    proxy_url: str


def _network(
    policy: Policy, route: EgressRoute | None, hosts_file: str | None
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    """A policy's network mode as create settings, host-config settings, mounts and environment.

    ``none`` with a hosts file: networking disabled at creation (``NetworkDisabled``), so the
    engine sets up no network of its own: the runtime gives the container a fresh network
    namespace holding only ``lo``, as Docker's ``none`` network does, without the engine's
    per-container network set-up (a start hook that execs dockerd, a namespace file to mount
    and remove: measured here, 40% of a cold ``print(1)`` run at 4 in flight). The engine then
    writes no ``/etc/hosts``, so ``localhost`` resolves through the hosts file, bound
    read-only. Without one (an engine on another host cannot bind our file), Docker's ``none``
    network.
    """
    if policy.network.mode == "none":
        if hosts_file is None:
            return {}, {"network_mode": "none"}, [], {}
        hosts = {"Type": "bind", "Source": hosts_file, "Target": HOSTS, "ReadOnly": True}
        return {"network_disabled": True}, {"network_mode": "none"}, [hosts], {}
    if policy.network.mode == "open":
        return {}, {"network_mode": "bridge"}, [], {}
    if route is None:
        raise PolicyError("network.mode 'allowlist' needs the egress route; none was given")
    proxy = {
        name: route.proxy_url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    }
    # 127.0.0.1: Docker's embedded DNS forwards to nothing there, so names resolve only at
    # the proxy, and only allowed ones.
    return {}, {"network_mode": route.network, "dns": ["127.0.0.1"]}, [], proxy


def _mount_check_env(
    policy: Policy, mounts: tuple[ResolvedMount, ...], runtime: str
) -> dict[str, str]:
    """What the runner checks of the mounts before any code runs (it hides these from the code).

    ``ATHENA_MOUNTS``: per mount ``dev:ino:writable:target-in-hex``; the runner refuses the run
    when a mount root is not the checked directory. gVisor shows no host inode (0:0 there: its
    sources are staged instead, see ``mountstage``). ``ATHENA_MOUNT_WRITE_CAP``: bytes the run
    may add to its writable mounts' filesystems.
    """
    if not mounts:
        return {}
    gvisor = runtime.startswith(RUNSC)
    entries = [
        f"{0 if gvisor else m.device}:{0 if gvisor else m.inode}:{int(not m.read_only)}:"
        f"{m.target.encode().hex()}"
        for m in mounts
    ]
    env = {"ATHENA_MOUNTS": ",".join(entries)}
    if any(not m.read_only for m in mounts):
        env["ATHENA_MOUNT_WRITE_CAP"] = str(policy.filesystem.max_mount_write_bytes)
    return env


def _denial_env(policy: Policy, language: str | None) -> dict[str, str]:
    """``ATHENA_DENY``: what the runner refuses in the kernel for this language's interpreter."""
    if language is None:
        return {}
    denied = kernel_denials(runtime_guard(policy, language))
    return {"ATHENA_DENY": ",".join(denied)} if denied else {}


def _pids_limit(pids: int, runtime: str) -> int:
    if runtime.startswith(RUNSC):
        return RUNSC_PIDS_BASE + RUNSC_PIDS_PER_PROCESS * pids
    return pids


def choose_runtime(policy: Policy, registered: frozenset[str]) -> str | None:
    """The container runtime a policy gets on an engine with these runtimes (pure).

    Returns None when the policy requires gVisor and the engine has none.
    """
    wants = policy.runtime.gvisor
    if wants == "never" or (wants == "prefer" and RUNSC not in registered):
        return RUNTIME
    if RUNSC not in registered:
        return None
    if policy.network.mode == "none" and RUNSC_NONET in registered:
        return RUNSC_NONET
    return RUNSC


def compile_docker(
    policy: Policy,
    spec: RunSpec,
    *,
    image: str,
    labels: Mapping[str, str],
    route: EgressRoute | None = None,
    container_runtime: str = RUNTIME,
    language: str | None = None,
    hosts_file: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Translate a policy into the arguments of Docker's create-container call.

    Returns ``{"create": kwargs of APIClient.create_container (without host_config),
    "host_config": kwargs of APIClient.create_host_config}``. With ``language``, what the
    runner refuses in the kernel for that language's interpreter is included
    (``ATHENA_DENY``, from the policy's run-time guard). With ``hosts_file`` (a path the engine
    binds as the sandbox's ``/etc/hosts``), a policy without network gets networking disabled
    at creation instead of Docker's ``none`` network: the same isolation, started faster (see
    ``_network``).

    Raises:
        PolicyError: an allowlist policy without an egress route.
    """
    limits, fs, runtime = policy.limits, policy.filesystem, policy.runtime
    tmpfs = f"size={fs.tmpfs_mb}m"
    create, network, network_mounts, network_env = _network(policy, route, hosts_file)
    return {
        "create": {
            **create,
            "image": image,
            "user": runtime.user,
            "working_dir": WORKDIR,
            "hostname": "sandbox",
            "environment": {
                **_ENVIRONMENT,
                **network_env,
                **_mount_check_env(policy, spec.mounts, container_runtime),
                **_denial_env(policy, language),
            },
            "labels": dict(labels),
            # stdin stays attached (StdinOnce): its EOF tells the runner that we are gone.
            "stdin_open": True,
            "tty": False,
        },
        "host_config": {
            **network,
            "read_only": fs.read_only_root,
            "tmpfs": {
                "/tmp": f"rw,nosuid,nodev,{tmpfs},mode=1777",
                WORKDIR: f"rw,nosuid,nodev,{tmpfs},uid={runtime.uid},gid={runtime.gid}",
            },
            "mounts": [
                {"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}
                for m in spec.mounts
            ]
            + network_mounts,
            "mem_limit": limits.memory_mb * _MIB,
            "memswap_limit": limits.memory_mb * _MIB,  # swap equal to memory: no swap at all
            "nano_cpus": round(limits.cpus * 1e9),
            "pids_limit": _pids_limit(limits.pids, container_runtime),
            "ulimits": [
                {"name": "nofile", "soft": limits.open_files, "hard": limits.open_files},
                {
                    "name": "fsize",
                    "soft": limits.file_size_mb * _MIB,
                    "hard": limits.file_size_mb * _MIB,
                },
                {"name": "core", "soft": 0, "hard": 0},
            ],
            "shm_size": min(fs.tmpfs_mb, 64) * _MIB,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "privileged": False,
            "ipc_mode": "private",
            "init": False,  # the runner is PID 1: it reaps, and kill(-1) reaches every process
            "runtime": container_runtime,
            "auto_remove": True,
            # Output reaches us over the attach stream; a log driver would copy floods to disk.
            "log_config": {"type": "none", "config": {}},
        },
    }
