"""Unit tests of the Docker backend's pure parts: compile_docker, frames -> outcome, owners."""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends import message
from orchestrator.backends.docker import (
    DockerBackend,
    EgressRoute,
    Engine,
    compile_docker,
)
from orchestrator.backends.docker.owners import (
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_STARTED,
    LABEL_RUN,
    LABEL_SANDBOX,
    owner_is_dead,
    owner_labels,
    process_start_ticks,
)
from orchestrator.backends.protocol import encode_request
from orchestrator.backends.reader import outcome_from_frames
from orchestrator.context import ExecutionContext
from orchestrator.errors import SandboxFailedError
from orchestrator.languages import get_language
from orchestrator.models import ExecutionRequest, Resources
from orchestrator.policy import load_policy, resolve_mounts
from orchestrator.run import RunSpec
from orchestrator.settings import Settings
from orchestrator.testing import FakeEngine

MIB = 1024 * 1024
IMAGE = "athena-sandbox/python:latest"
LABELS = {"athena.run": "abc123", "athena.policy": "strict"}
ENVIRONMENT = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp/home",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}
BEYOND_PID_MAX = 4194304 + 1  # above the largest pid_max Linux allows: never a live process


HOSTS_FILE = "/run/athena-sandbox/hosts"


def test_strict_compiles_to_exact_docker_settings() -> None:
    """strict becomes no network (disabled at creation, the hosts file bound read-only),
    read-only root, small tmpfs, 256 MiB, no capabilities."""
    config = compile_docker(
        load_policy("strict"), RunSpec(30.0), image=IMAGE, labels=LABELS, hosts_file=HOSTS_FILE
    )
    assert config == {
        "create": {
            "network_disabled": True,
            "image": IMAGE,
            "user": "65534:65534",
            "working_dir": "/workspace",
            "hostname": "sandbox",
            "environment": ENVIRONMENT,
            "labels": LABELS,
            "stdin_open": True,
            "tty": False,
        },
        "host_config": {
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {
                "/tmp": "rw,nosuid,nodev,size=64m,mode=1777",
                "/workspace": "rw,nosuid,nodev,size=64m,uid=65534,gid=65534",
            },
            "mounts": [
                {"Type": "bind", "Source": HOSTS_FILE, "Target": "/etc/hosts", "ReadOnly": True}
            ],
            "mem_limit": 268435456,
            "memswap_limit": 268435456,
            "nano_cpus": 1000000000,
            "pids_limit": 64,
            "ulimits": [
                {"name": "nofile", "soft": 256, "hard": 256},
                {"name": "fsize", "soft": 16777216, "hard": 16777216},
                {"name": "core", "soft": 0, "hard": 0},
            ],
            "shm_size": 67108864,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "privileged": False,
            "ipc_mode": "private",
            "init": False,
            "runtime": "runc",
            "auto_remove": True,
            "log_config": {"type": "none", "config": {}},
        },
    }


def test_without_a_hosts_file_no_network_is_dockers_none_network() -> None:
    """With no hosts file (an engine on another host), strict gets Docker's none network:
    networking is not disabled at creation and nothing is mounted."""
    config = compile_docker(load_policy("strict"), RunSpec(30.0), image=IMAGE, labels=LABELS)
    with_hosts = compile_docker(
        load_policy("strict"), RunSpec(30.0), image=IMAGE, labels=LABELS, hosts_file=HOSTS_FILE
    )
    assert "network_disabled" not in config["create"]
    assert config["host_config"]["network_mode"] == "none"
    assert config["host_config"]["mounts"] == []
    del with_hosts["create"]["network_disabled"]
    with_hosts["host_config"]["mounts"] = []
    assert config == with_hosts  # the rest is the same


@pytest.mark.parametrize("mode", ["open", "allowlist"])
def test_a_hosts_file_changes_nothing_for_a_policy_with_a_network(mode: str) -> None:
    """Only network mode none uses the hosts file: a networked sandbox keeps the engine's."""
    policy = load_policy({"extends": "strict", "network": {"mode": mode}})
    route = EgressRoute("athena-egress", "http://10.0.0.1:3128")
    config = compile_docker(
        policy, RunSpec(30.0), image=IMAGE, labels=LABELS, route=route, hosts_file=HOSTS_FILE
    )
    assert "network_disabled" not in config["create"]
    assert config["host_config"]["mounts"] == []
    assert config["host_config"]["network_mode"] in ("bridge", "athena-egress")


def test_development_compiles_with_bridge_network_and_writable_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """development becomes the bridge network, a read-write bind mount and larger limits."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    project = tmp_path / "proj"
    project.mkdir()
    policy = load_policy("development")
    spec = RunSpec(300.0, resolve_mounts(policy, project))
    config = compile_docker(policy, spec, image=IMAGE, labels=LABELS)
    info = project.stat()
    checks = {  # what the runner checks before any code runs (and hides from the code)
        "ATHENA_MOUNTS": f"{info.st_dev}:{info.st_ino}:1:{b'/project'.hex()}",
        "ATHENA_MOUNT_WRITE_CAP": str(1024**3),
    }
    assert config["create"] == {
        "image": IMAGE,
        "user": "65534:65534",
        "working_dir": "/workspace",
        "hostname": "sandbox",
        "environment": {**ENVIRONMENT, **checks},
        "labels": LABELS,
        "stdin_open": True,
        "tty": False,
    }
    assert config["host_config"] == {
        "network_mode": "bridge",
        "read_only": True,
        "tmpfs": {
            "/tmp": "rw,nosuid,nodev,size=256m,mode=1777",
            "/workspace": "rw,nosuid,nodev,size=256m,uid=65534,gid=65534",
        },
        "mounts": [
            {
                "Type": "bind",
                "Source": str(project.resolve()),
                "Target": "/project",
                "ReadOnly": False,
            }
        ],
        "mem_limit": 2147483648,
        "memswap_limit": 2147483648,
        "nano_cpus": 2000000000,
        "pids_limit": 256,
        "ulimits": [
            {"name": "nofile", "soft": 256, "hard": 256},
            {"name": "fsize", "soft": 134217728, "hard": 134217728},
            {"name": "core", "soft": 0, "hard": 0},
        ],
        "shm_size": 67108864,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "privileged": False,
        "ipc_mode": "private",
        "init": False,
        "runtime": "runc",
        "auto_remove": True,
        "log_config": {"type": "none", "config": {}},
    }


def test_the_environment_never_comes_from_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable of os.environ reaches the container, not even PATH or HOME."""
    monkeypatch.setenv("ATHENA_CANARY", "leaked-secret")
    monkeypatch.setenv("PATH", "/host/evil/bin")
    monkeypatch.setenv("HOME", "/host/home")
    config = compile_docker(load_policy("strict"), RunSpec(30.0), image=IMAGE, labels={})
    environment = config["create"]["environment"]
    assert environment == ENVIRONMENT
    assert "ATHENA_CANARY" not in environment
    assert "leaked-secret" not in json.dumps(config)


def test_the_environment_is_a_fresh_copy_per_call() -> None:
    """Changing one compiled environment does not change the next one."""
    first = compile_docker(load_policy("strict"), RunSpec(30.0), image=IMAGE, labels={})
    first["create"]["environment"]["EVIL"] = "1"
    second = compile_docker(load_policy("strict"), RunSpec(30.0), image=IMAGE, labels={})
    assert "EVIL" not in second["create"]["environment"]


@pytest.mark.parametrize(
    ("user", "ids"), [("1000:2000", "uid=1000,gid=2000"), ("1234", "uid=1234,gid=1234")]
)
def test_workspace_tmpfs_belongs_to_the_runtime_user(user: str, ids: str) -> None:
    """The /workspace tmpfs has the uid and gid of runtime.user (the uid when no gid is given)."""
    policy = load_policy({"extends": "strict", "runtime": {"user": user}})
    config = compile_docker(policy, RunSpec(30.0), image=IMAGE, labels={})
    assert config["create"]["user"] == user
    assert config["host_config"]["tmpfs"]["/workspace"] == f"rw,nosuid,nodev,size=64m,{ids}"


def test_limits_follow_the_policy() -> None:
    """Memory, swap, CPUs, pids, open files, file size and shm follow the policy's fields."""
    policy = load_policy(
        {
            "extends": "strict",
            "filesystem": {"tmpfs_mb": 32, "read_only_root": False},
            "limits": {
                "memory_mb": 100,
                "cpus": 0.5,
                "pids": 10,
                "open_files": 50,
                "file_size_mb": 3,
            },
        }
    )
    host = compile_docker(policy, RunSpec(30.0), image=IMAGE, labels={})["host_config"]
    assert (host["mem_limit"], host["memswap_limit"]) == (100 * MIB, 100 * MIB)
    assert host["nano_cpus"] == 500_000_000
    assert host["pids_limit"] == 10
    assert host["ulimits"][0] == {"name": "nofile", "soft": 50, "hard": 50}
    assert host["ulimits"][1] == {"name": "fsize", "soft": 3 * MIB, "hard": 3 * MIB}
    assert host["shm_size"] == 32 * MIB
    assert host["read_only"] is False
    assert host["tmpfs"]["/tmp"] == "rw,nosuid,nodev,size=32m,mode=1777"


# --------------------------------------------------------------------------- outcome_from_frames


def test_an_exit_frame_gives_the_outcome_fields() -> None:
    """The exit frame's figures become exit code, signal, timeout, OOM, pids hits and time."""
    info = {
        "exit_code": None,
        "signal": 9,
        "timed_out": True,
        "oom_kills": 2,
        "pids_limit_hits": 3,
        "run_ns": 1_500_000,
    }
    assert outcome_from_frames(info, None, track_resources=False) == {
        "exit_code": None,
        "signal": 9,
        "timed_out": True,
        "oom_killed": True,
        "pids_limit_hits": 3,
        "run_ms": 1.5,
        "output": None,
        "notes": (),
        "resources": None,
        "policy_refusals": (),
        "mount_write_exceeded": None,
    }


def test_a_missing_exit_frame_gives_neutral_fields() -> None:
    """Without an exit frame nothing is claimed: no exit code, no timeout, no OOM."""
    fields = outcome_from_frames(None, None, track_resources=False)
    assert fields["exit_code"] is None
    assert fields["signal"] is None
    assert fields["timed_out"] is False
    assert fields["oom_killed"] is False
    assert fields["pids_limit_hits"] == 0
    assert fields["run_ms"] == 0


def test_a_value_envelope_becomes_output() -> None:
    """A {"value": ...} envelope becomes output, with no note."""
    value = json.dumps({"value": {"sum": 45, "items": [1, "a", None]}}).encode()
    fields = outcome_from_frames({"exit_code": 0}, value, track_resources=False)
    assert fields["output"] == {"sum": 45, "items": [1, "a", None]}
    assert fields["notes"] == ()


def test_an_error_envelope_becomes_a_note() -> None:
    """An {"error": ...} envelope leaves output None and explains why in a note."""
    value = json.dumps({"error": "Object of type set is not JSON serializable"}).encode()
    fields = outcome_from_frames({"exit_code": 0}, value, track_resources=False)
    assert fields["output"] is None
    assert fields["notes"] == (
        "`output` is not JSON-serialisable (Object of type set is not JSON serializable); "
        "it is None",
    )


def test_a_truncated_value_becomes_a_note() -> None:
    """value_truncated in the exit frame gives a note that output was dropped."""
    fields = outcome_from_frames({"exit_code": 0, "value_truncated": True}, None, False)
    assert fields["output"] is None
    assert fields["notes"] == ("`output` was larger than the output limit and was dropped",)


def test_resources_only_when_tracked() -> None:
    """Resource figures are reported only with track_resources."""
    info = {"exit_code": 0, "memory_peak_bytes": 1000, "cpu_ns": 2_000_000, "run_ns": 3_000_000}
    assert outcome_from_frames(info, None, track_resources=False)["resources"] is None
    assert outcome_from_frames(info, None, track_resources=True)["resources"] == Resources(
        peak_memory_bytes=1000, cpu_time_ms=2.0, wall_time_ms=3.0
    )


def test_unknown_cgroup_figures_become_none() -> None:
    """-1 (unknown) memory and CPU figures become None; negative pids hits become 0."""
    info = {
        "exit_code": 0,
        "memory_peak_bytes": -1,
        "cpu_ns": -1,
        "run_ns": 0,
        "pids_limit_hits": -1,
    }
    fields = outcome_from_frames(info, None, track_resources=True)
    assert fields["resources"] == Resources(
        peak_memory_bytes=None, cpu_time_ms=None, wall_time_ms=0.0
    )
    assert fields["pids_limit_hits"] == 0


# --------------------------------------------------------------------------- owner identity


def test_owner_labels_name_this_process() -> None:
    """owner_labels gives the sandbox label, this host, this pid and its start time."""
    labels = owner_labels()
    assert labels == {
        LABEL_SANDBOX: "1",
        LABEL_OWNER_HOST: socket.gethostname(),
        LABEL_OWNER_PID: str(os.getpid()),
        LABEL_OWNER_STARTED: process_start_ticks(os.getpid()),
    }
    assert labels[LABEL_OWNER_STARTED].isdigit()


def test_process_start_ticks_is_stable_and_none_for_no_process() -> None:
    """A live pid has a fixed start time; a pid beyond pid_max has none."""
    assert process_start_ticks(os.getpid()) == process_start_ticks(os.getpid())
    assert process_start_ticks(BEYOND_PID_MAX) is None


def test_our_own_process_is_alive() -> None:
    """A container labelled with this live process is not judged dead."""
    assert owner_is_dead(owner_labels()) is False


def test_a_pid_with_no_process_is_dead() -> None:
    """A labelled pid that names no process is judged dead."""
    labels = {**owner_labels(), LABEL_OWNER_PID: str(BEYOND_PID_MAX)}
    assert owner_is_dead(labels) is True


def test_a_reused_pid_is_dead() -> None:
    """A live pid whose start time differs from the label is another process: dead owner."""
    labels = {**owner_labels(), LABEL_OWNER_STARTED: "1"}
    assert owner_is_dead(labels) is True


@pytest.mark.parametrize("pid", ["", "abc", "12.5"])
def test_a_malformed_pid_is_dead(pid: str) -> None:
    """A pid label that is not a number is judged dead."""
    assert owner_is_dead({**owner_labels(), LABEL_OWNER_PID: pid}) is True


def test_another_hosts_container_is_never_judged_dead() -> None:
    """A container of another host is never judged dead, whatever its pid."""
    labels = {
        **owner_labels(),
        LABEL_OWNER_HOST: socket.gethostname() + "-elsewhere",
        LABEL_OWNER_PID: str(BEYOND_PID_MAX),
    }
    assert owner_is_dead(labels) is False
    assert owner_is_dead({LABEL_SANDBOX: "1"}) is False


# --------------------------------------------------------------------------- a fake engine


def runner_reply(exit_info: dict[str, Any]) -> bytes:
    """What the runner answers on the attach stream: begin and exit frames in a stdout block."""
    frames = b"B" + struct.pack(">I", 0)
    body = json.dumps(exit_info).encode()
    frames += b"x" + struct.pack(">I", len(body)) + body
    return bytes([1, 0, 0, 0]) + struct.pack(">I", len(frames)) + frames


NONCE = "f00d"


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeEngine, socket.socket]]:
    """A fake engine whose container's runner reports exit 0 at once; yields (api, peer)."""
    monkeypatch.setattr(message, "new_nonce", lambda: NONCE)  # the runner echoes it
    ours, peer = socket.socketpair()
    peer.sendall(runner_reply({"exit_code": 0, "run_ns": 2_000_000, "nonce": NONCE}))
    yield FakeEngine(ours), peer
    peer.close()
    ours.close()


def run_on(api: FakeEngine, request: ExecutionRequest, timeout: float) -> dict[str, Any]:
    settings = Settings(sweep_on_start=False, pool_size=0)  # the cold path: one container
    backend = DockerBackend(settings, engine_factory=lambda: api)
    with backend:
        outcome = backend.run(request, RunSpec(timeout), ExecutionContext(capture_io=False))
    return {"exit_code": outcome.exit_code, "run_ms": outcome.run_ms}


def sent_request(peer: socket.socket) -> bytes:
    peer.settimeout(5)
    data = b""
    while chunk := peer.recv(65536):
        data += chunk
    return data


def test_the_backend_sends_the_encoded_request_and_reads_the_exit(
    engine: tuple[FakeEngine, socket.socket],
) -> None:
    """DockerBackend creates the compiled container, sends code, blob, timeout, cap; reads exit.

    No figures flag: only the python bootstrap saves figures.
    """
    api, peer = engine
    request = ExecutionRequest.create("echo $PARAM_N", "bash", {"n": 3}, timeout_seconds=2.5)
    assert run_on(api, request, 2.5) == {"exit_code": 0, "run_ms": 2.0}
    blob = get_language("bash").parameters_blob({"n": 3})
    assert sent_request(peer) == encode_request(
        b"echo $PARAM_N", blob, 2500, 1048576, NONCE, b"", 64 * 1024 * 1024, 0
    )
    assert api.created["Image"] == "athena-sandbox/bash:latest"
    assert api.created["Labels"][LABEL_RUN] == request.execution_id
    assert api.created["HostConfig"]["network_mode"] == "none"


def test_a_tiny_timeout_is_never_sent_as_no_timeout(
    engine: tuple[FakeEngine, socket.socket],
) -> None:
    """A positive timeout below a millisecond reaches the runner as at least 1 ms, never 0."""
    api, peer = engine
    run_on(api, ExecutionRequest.create("echo", "bash", timeout_seconds=0.0004), 0.0004)
    header = sent_request(peer).split(b"\n", 1)[0].split()
    assert int(header[5]) >= 1  # ATHENA/3 code blob install files timeout ...


def test_without_a_readable_proc_nobody_is_judged_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /proc cannot be read, the sweep removes nothing rather than everything."""
    from orchestrator.backends.docker import owners

    labels = {**owner_labels(), "athena.owner.pid": "4194305"}
    assert owner_is_dead(labels) is True
    monkeypatch.setattr(owners, "process_start_ticks", lambda pid: None)
    assert owner_is_dead(labels) is False


def test_garbage_on_the_value_channel_is_a_note_not_a_crash() -> None:
    """Bytes the code itself wrote to fd 4 give output None and a note, never an exception."""
    for garbage in (b"not json", b"[1, 2]"):
        fields = outcome_from_frames({"exit_code": 0}, garbage, track_resources=False)
        assert fields["output"] is None
        assert "not JSON-serialisable" in fields["notes"][0]


def test_a_container_that_never_becomes_ready_fails_clearly_and_goes() -> None:
    """No word from the runner within startup_timeout: a clear error, and the container is removed."""
    ours, peer = socket.socketpair()  # the peer never answers
    api = FakeEngine(ours)
    settings = Settings(sweep_on_start=False, pool_size=0, startup_timeout=0.5)
    try:
        with DockerBackend(settings, engine_factory=lambda: api) as backend:
            request = ExecutionRequest.create("print(1)")
            with pytest.raises(SandboxFailedError, match=r"did not become ready within 0\.5 s"):
                backend.run(request, RunSpec(5.0), ExecutionContext(capture_io=False))
        assert api.removed == ["c0ffee" * 10]
    finally:
        peer.close()
        ours.close()


def test_mount_checks_are_compiled_per_runtime(tmp_path: Path) -> None:
    """runc gets each mount's device and inode; gVisor (staged sources) gets 0:0; no cap when
    every mount is read-only."""
    from orchestrator.policy import ResolvedMount

    mounts = (
        ResolvedMount("/src/a", "/data", True, 7, 11),
        ResolvedMount("/src/b", "/out", False, 7, 12),
    )
    policy = load_policy({"filesystem": {"max_mount_write_bytes": 5}})
    spec = RunSpec(30.0, mounts)
    runc = compile_docker(policy, spec, image=IMAGE, labels=LABELS)["create"]["environment"]
    assert runc["ATHENA_MOUNTS"] == f"7:11:0:{b'/data'.hex()},7:12:1:{b'/out'.hex()}"
    assert runc["ATHENA_MOUNT_WRITE_CAP"] == "5"
    runsc = compile_docker(policy, spec, image=IMAGE, labels=LABELS, container_runtime="runsc")[
        "create"
    ]["environment"]
    assert runsc["ATHENA_MOUNTS"] == f"0:0:0:{b'/data'.hex()},0:0:1:{b'/out'.hex()}"
    read_only = compile_docker(policy, RunSpec(30.0, mounts[:1]), image=IMAGE, labels=LABELS)
    assert "ATHENA_MOUNT_WRITE_CAP" not in read_only["create"]["environment"]


def test_policy_lines_and_a_mount_cap_hit_come_out_of_the_frames() -> None:
    """Refusal lines are split from the output line (repaired, clipped); a cap hit names its
    mount; forged or garbled lines cannot break the output."""
    value = (
        b'{"policy": {"kind": "import", "message": "import of \'_socket\' refused", '
        b'"detail": {"module": "_socket\\ud800"}}}\n'
        b'{"policy": "not a report"}\n'
        b'{"value": {"n": 1}}\n'
    )
    fields = outcome_from_frames(
        {"exit_code": 0, "mount_write_cap_hit": 1}, value, False, ["/a", "/b"]
    )
    assert fields["output"] == {"n": 1}
    assert fields["policy_refusals"] == (
        {
            "kind": "import",
            "message": "import of '_socket' refused",
            "detail": {"module": "_socket\ufffd"},
        },
    )
    assert fields["mount_write_exceeded"] == "/b"
    assert (
        outcome_from_frames({"mount_write_cap_hit": 7}, None, False, ["/a"])["mount_write_exceeded"]
        is None
    )


def test_guarded_interpreters_get_kernel_denials() -> None:
    """strict python and javascript: processes and sockets refused by the runner; bash, and a
    policy without enforcement, get nothing; research keeps sockets for its allowlist."""

    def denied(policy: str | dict[str, object], language: str) -> str | None:
        route = EgressRoute("athena-egress", "http://10.0.0.1:3128")
        config = compile_docker(
            load_policy(policy),
            RunSpec(30.0),
            image=IMAGE,
            labels=LABELS,
            route=route,
            language=language,
        )
        env: dict[str, str] = config["create"]["environment"]
        return env.get("ATHENA_DENY")

    assert denied("strict", "python") == "processes,sockets"
    assert denied("strict", "javascript") == "processes,sockets"
    assert denied("strict", "bash") is None
    assert denied("research", "python") == "processes"
    assert denied({"validation": {"enforce": False}}, "python") is None


def test_a_start_the_engine_refuses_goes_to_a_fresh_container_then_says_why(
    engine: tuple[FakeEngine, socket.socket],
) -> None:
    """A refused start is not retried on the same (auto-removed) container: a fresh one is
    created; a start refused every time ends with the engine's own reason."""
    api, _ = engine
    spare, spare_peer = socket.socketpair()  # the refused container's attach stream
    api.streams, api.refusals = [spare], ["a transient refusal"]
    request = ExecutionRequest.create("print(1)")
    assert run_on(api, request, 5.0)["exit_code"] == 0
    assert len(api.starts) == 2  # once per container, never twice on the refused one
    spare_peer.close()

    pairs = [socket.socketpair() for _ in range(3)]  # one attach stream per fresh container
    api.streams = [ours for ours, _ in pairs]
    api.refusals = ["Range of CPUs is from 0.01 to 2.00"] * 3
    with pytest.raises(SandboxFailedError, match="Range of CPUs") as caught:
        run_on(api, ExecutionRequest.create("print(1)"), 5.0)
    assert "No such container" not in str(caught.value)
    for ours, theirs in pairs:
        ours.close()
        theirs.close()


def test_the_fake_engine_is_an_engine() -> None:
    """The fake implements every method of the Engine interface, with the same parameters."""
    import inspect

    for name, member in inspect.getmembers(Engine, inspect.isfunction):
        if not name.startswith("_"):
            theirs = inspect.signature(member).parameters
            assert list(inspect.signature(getattr(FakeEngine, name)).parameters) == list(theirs)
