"""The fast mode's pure parts: the bubblewrap plan, its launch line, the seccomp rules, the ladder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.backends.fast.compile import (
    PIDS_ALLOWANCE,
    compile_fast,
    declines,
    launch_argv,
)
from orchestrator.backends.fast.host import uid_range_reason
from orchestrator.backends.fast.rootfs import ImageRoot
from orchestrator.backends.fast.seccomp import ALLOWED, ARGUMENT_RULES, ENOSYS, filter_bpf
from orchestrator.backends.hostlimits import UidPool
from orchestrator.models import ExecutionRequest
from orchestrator.orchestrator import Orchestrator
from orchestrator.policy import Policy, load_policy
from orchestrator.settings import Settings
from orchestrator.testing import FakeBackend

IMAGE = ImageRoot(
    image_id="sha256:abc",
    reference="athena-sandbox/python:latest",
    rootfs=Path("/var/lib/athena-sandbox/fast/abc/rootfs"),
    command=("/opt/athena/runner", "--", "python3", "-I"),
    environment=(("PATH", "/usr/sbin:/usr/bin"), ("MPLBACKEND", "agg")),
    workdir="/workspace",
)


def strict_fast(**update: object) -> Policy:
    return load_policy("strict-fast").model_copy(update=update)


def test_strict_fast_is_strict_run_in_the_fast_mode_first() -> None:
    """strict-fast keeps strict's rules; only its ladder differs, fast before docker."""
    fast, strict = load_policy("strict-fast"), load_policy("strict")
    assert fast.fallback == ("fast", "docker", "srt", "restricted")
    assert fast.model_copy(update={"name": "strict", "fallback": strict.fallback,
                                   "description": strict.description, "extends": None}) == strict  # fmt: skip


@pytest.mark.parametrize(
    ("listed", "kept"),
    [
        (["fast", "docker"], ("fast", "docker")),
        (["docker", "fast"], ("docker", "fast")),
        (["restricted", "fast"], ("fast", "restricted")),
        (["srt", "fast", "docker"], ("fast", "docker", "srt")),
    ],
)
def test_docker_and_fast_are_peers_a_weaker_mode_never_comes_first(
    listed: list[str], kept: tuple[str, ...]
) -> None:
    """The list is ordered by containment class; between docker and fast the policy's order."""
    assert Policy(name="p", fallback=listed).fallback == kept  # type: ignore[arg-type]


def test_the_plan_is_the_policy_in_bubblewrap_terms() -> None:
    """Namespaces, uid, read-only image root, sized tmpfs, environment from nothing (exact)."""
    plan = compile_fast(load_policy("strict-fast"), "python", IMAGE, "/run/athena-sandbox/hosts")
    mib = str(64 * 1024 * 1024)
    assert plan.bwrap == (
        "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
        "--unshare-cgroup", "--disable-userns", "--as-pid-1", "--new-session",
        "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
        "--ro-bind", "/var/lib/athena-sandbox/fast/abc/rootfs", "/",
        "--ro-bind", "/run/athena-sandbox/hosts", "/etc/hosts",
        "--proc", "/proc", "--dev", "/dev",
        "--size", mib, "--perms", "1777", "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
        "--size", mib, "--perms", "1777", "--tmpfs", "/tmp",
        "--size", mib, "--perms", "0755", "--tmpfs", "/workspace",
        "--perms", "0555", "--tmpfs", "/sys",
        "--chdir", "/workspace", "--cap-drop", "ALL", "--clearenv",
        "--setenv", "ATHENA_DENY", "processes,sockets",
        "--setenv", "HOME", "/tmp/home",
        "--setenv", "LANG", "C.UTF-8",
        "--setenv", "LC_ALL", "C.UTF-8",
        "--setenv", "MPLBACKEND", "agg",
        "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
        "--setenv", "TMPDIR", "/tmp",
    )  # fmt: skip
    assert (plan.memory_bytes, plan.pids, plan.cpus) == (256 * 1024**2, 64 + PIDS_ALLOWANCE, 1.0)
    assert (plan.open_files, plan.file_size_bytes) == (256, 16 * 1024**2)


def test_a_policy_without_enforced_validation_has_no_kernel_denials() -> None:
    """The runner's per-language refusals come from the guard: none when it is not enforced."""
    policy = strict_fast(
        validation=load_policy("strict").validation.model_copy(update={"enforce": False})
    )
    plan = compile_fast(policy, "python", IMAGE)
    assert "ATHENA_DENY" not in plan.bwrap


def test_plans_are_pool_keys_equal_for_equal_policies() -> None:
    """Two loads of one policy give one plan (one warm pool); another limit, another plan."""
    first = compile_fast(load_policy("strict-fast"), "python", IMAGE)
    assert first == compile_fast(load_policy("strict-fast"), "python", IMAGE)
    limits = load_policy("strict-fast").limits.model_copy(update={"memory_mb": 512})
    assert hash(first) != hash(compile_fast(strict_fast(limits=limits), "python", IMAGE))


def test_the_launch_line_joins_the_cgroup_drops_to_the_uid_then_sandboxes() -> None:
    """sh joins the cgroup and sets rlimits, setpriv drops to the host uid, bwrap runs (exact)."""
    plan = compile_fast(load_policy("strict-fast"), "python", IMAGE)
    dirs = [Path("/cg/memory/athena-fast/1-1"), Path("/cg/pids/athena-fast/1-1")]
    binds = [(dirs[0], "/sys/fs/cgroup/memory"), (dirs[1], "/sys/fs/cgroup/pids")]
    argv = launch_argv(plan, IMAGE.command, cgroup_dirs=dirs, cgroup_binds=binds, host_uid=62001,
                       seccomp_fd=9)  # fmt: skip
    assert argv[:3] == [
        "/bin/sh",
        "-c",
        'echo $$ > "/cg/memory/athena-fast/1-1/cgroup.procs" && '
        'echo $$ > "/cg/pids/athena-fast/1-1/cgroup.procs" && '
        'ulimit -n 256 && ulimit -f 32768 && ulimit -c 0 && exec "$0" "$@"',
    ]
    bwrap = argv.index("bwrap")
    assert argv[3:bwrap] == [
        "setpriv", "--reuid=62001", "--regid=62001", "--clear-groups", "--no-new-privs",
        "--inh-caps=-all", "--",
    ]  # fmt: skip
    assert argv[bwrap + 1 : bwrap + 1 + len(plan.bwrap)] == list(plan.bwrap)
    assert argv[bwrap + 1 + len(plan.bwrap) :] == [
        "--ro-bind", "/cg/memory/athena-fast/1-1", "/sys/fs/cgroup/memory",
        "--ro-bind", "/cg/pids/athena-fast/1-1", "/sys/fs/cgroup/pids",
        "--remount-ro", "/sys", "--seccomp", "9",
        "--", "/opt/athena/runner", "--", "python3", "-I",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "extra", "said"),
    [
        ("research", {}, "network mode none only"),
        ("strict-fast", {"image": "athena-user/tool:1"}, "shipped images only"),
        ("strict-fast", {"requirements": ("six",)}, "installs no requirements"),
        ("strict-gvisor", {}, "has no gVisor"),
        ("development", {}, "network mode none only"),
    ],
)
def test_the_mode_declines_what_it_cannot_do_as_asked(
    policy: str, extra: dict[str, object], said: str
) -> None:
    """A network, a custom image, requirements, gVisor: declined, never run with less."""
    request = ExecutionRequest(
        code="print(1)", language="python", policy=load_policy(policy), **extra
    )  # type: ignore[arg-type]
    assert said in (declines(request) or "")
    assert (
        declines(
            ExecutionRequest(code="print(1)", language="python", policy=load_policy("strict-fast"))
        )
        is None
    )


def test_a_policy_with_mounts_is_declined() -> None:
    """Host directories are not mounted in the fast mode: the policy goes down its list."""
    mounts = load_policy("research").filesystem
    policy = strict_fast(filesystem=mounts.model_copy(update={"read_only_root": True}))
    assert "mounts no host directories" in (
        declines(ExecutionRequest(code="1", language="python", policy=policy)) or ""
    )


# ------------------------------------------------------------------ the ladder


@dataclass
class DecliningFake(FakeBackend):
    """A fake fast mode that declines requests whose code says so."""

    def declines(self, request: ExecutionRequest) -> str | None:
        return "declined by the test" if "decline" in request.code else None


def fast_ladder() -> tuple[Orchestrator, FakeBackend, FakeBackend]:
    docker, fast = FakeBackend(name="docker"), DecliningFake(name="fast")
    return Orchestrator(settings=Settings(), backends=[docker, fast]), docker, fast


def test_strict_fast_runs_in_the_fast_mode_and_strict_in_docker() -> None:
    """The policy's order picks between the peers: strict never gets fast, strict-fast does."""
    orch, docker, fast = fast_ladder()
    policy = load_policy("strict-fast")
    assert (
        orch.execute(ExecutionRequest(code="x", language="python", policy=policy)).sandbox_mode
        == "fast"
    )
    assert (
        orch.execute(
            ExecutionRequest(code="x", language="python", policy=load_policy("strict"))
        ).sandbox_mode
        == "docker"
    )
    assert (len(fast.requests), len(docker.requests)) == (1, 1)


def test_a_declined_request_goes_on_down_the_list() -> None:
    """What the fast mode declines runs in docker, the next mode of the policy."""
    orch, docker, _ = fast_ladder()
    request = ExecutionRequest(code="decline", language="python", policy=load_policy("strict-fast"))
    assert orch.execute(request).sandbox_mode == "docker"
    assert docker.requests[0].code == "decline"


# ------------------------------------------------------------------ seccomp


DOCKER_REFUSES_WITHOUT_CAPABILITIES = {
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "init_module",
    "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon",
    "swapoff", "settimeofday", "clock_settime", "clock_adjtime", "acct", "bpf",
    "perf_event_open", "fanotify_init", "open_by_handle_at", "name_to_handle_at",
    "quotactl", "sethostname", "setdomainname", "iopl", "ioperm", "lookup_dcookie",
    "mbind", "set_mempolicy", "move_pages", "migrate_pages", "vhangup", "syslog",
    "keyctl", "add_key", "request_key", "userfaultfd", "fsopen", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr", "nfsservctl", "uselib", "_sysctl",
}  # fmt: skip
ALSO_REFUSED_HERE = {
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "personality", "socket",
    "clone", "clone3", "modify_ldt", "process_madvise", "io_setup", "io_submit",
    "io_getevents", "io_pgetevents", "io_cancel", "io_destroy",
}  # fmt: skip


def test_no_call_docker_refuses_without_capabilities_is_allowed() -> None:
    """What Docker's default profile grants only with a capability is not in the allowlist."""
    assert not (DOCKER_REFUSES_WITHOUT_CAPABILITIES | ALSO_REFUSED_HERE) & set(ALLOWED)
    assert len(set(ALLOWED)) == len(ALLOWED) and list(ALLOWED) == sorted(ALLOWED)


def test_clone_and_socket_are_allowed_only_in_their_harmless_forms() -> None:
    """clone without any namespace flag, four socket families, Docker's personalities."""
    clone = [rule for rule in ARGUMENT_RULES if rule[0] == "clone"]
    assert clone == [("clone", 0, "masked_eq", (0x7E020080, 0))]
    families = sorted(rule[3][0] for rule in ARGUMENT_RULES if rule[0] == "socket")
    assert families == [1, 2, 10, 16]
    assert ENOSYS == ("clone3", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents",
                      "io_setup", "io_submit")  # fmt: skip


def test_the_rules_compile_to_a_native_only_filter() -> None:
    """libseccomp compiles the rules; the program checks the architecture first (x86-64 here)."""
    program = filter_bpf()
    assert len(program) % 8 == 0 and len(program) > 8 * len(ALLOWED)
    first_load = int.from_bytes(program[4:8], "little")  # BPF_LD of seccomp_data.arch (offset 4)
    assert first_load == 4


# ------------------------------------------------------------------ host uids


@pytest.mark.skipif(os.geteuid() != 0, reason="uid leases are taken as root only")
def test_two_pools_never_hand_out_one_uid_at_once(tmp_path: Path) -> None:
    """Two orchestrators' pools (two processes, here two pools) lease each uid to one run."""
    first, second = UidPool(62000, 2, tmp_path), UidPool(62000, 2, tmp_path)
    taken = first.take()
    assert second.take() == 62001 != taken
    first.give(taken)
    assert second.take() == 62000  # its lease was given back with it


def test_a_uid_range_with_an_account_in_it_is_refused() -> None:
    """An account inside the range would share a uid with sandboxes: the mode says to move."""
    root = uid_range_reason(0, 1)
    assert root is not None and "ATHENA_FAST_UID_BASE" in root and "(root)" in root
    assert uid_range_reason(3_900_000_000, 1024) is None
