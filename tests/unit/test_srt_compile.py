"""The pure parts of the srt mode: policy -> srt settings, limits -> prlimit, finding srt."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.backends.srt import (
    NPROC_ALLOWANCE,
    SYSTEM_READ,
    compile_srt,
    find_srt,
    limits_argv,
)
from orchestrator.policy import ResolvedMount, load_policy
from orchestrator.settings import Settings


def test_strict_compiles_to_deny_everything_but_the_system_and_the_work_dir() -> None:
    """strict: no network, / denied, system dirs, bootstraps and the work dir readable, only it writable."""
    settings = compile_srt(
        load_policy("strict"), workdir="/run/w", readable=["/boot.py"], mounts=()
    )
    assert settings == {
        "network": {"allowedDomains": [], "deniedDomains": []},
        "filesystem": {
            "denyRead": ["/"],
            "allowRead": [*SYSTEM_READ, "/boot.py", "/run/w"],
            "allowWrite": ["/run/w"],
            "denyWrite": [],
        },
    }


def test_open_network_is_still_no_network_and_mounts_follow_their_mode() -> None:
    """development's open network stays off under srt; a read-write mount is writable, a read-only one not."""
    mounts = (ResolvedMount("/data/ro", "/project", True), ResolvedMount("/data/rw", "/out", False))
    settings = compile_srt(load_policy("development"), workdir="/w", readable=[], mounts=mounts)
    assert settings["network"]["allowedDomains"] == []
    assert settings["filesystem"]["allowRead"][-3:] == ["/w", "/data/ro", "/data/rw"]
    assert settings["filesystem"]["allowWrite"] == ["/w", "/data/rw"]


def test_limits_become_prlimit_arguments() -> None:
    """Memory is RLIMIT_DATA; processes get srt's own tasks on top; no core dumps."""
    assert limits_argv(load_policy("strict")) == [
        "prlimit",
        f"--data={256 * 1024 * 1024}",
        f"--nproc={64 + NPROC_ALLOWANCE}",
        "--nofile=256",
        f"--fsize={16 * 1024 * 1024}",
        "--core=0",
        "--",
    ]


def test_a_configured_srt_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATHENA_SRT_PATH (Settings.srt_path) is used before PATH and node_modules."""
    srt = tmp_path / "my-srt"
    srt.write_text("#!/bin/sh\n")
    srt.chmod(0o755)
    monkeypatch.setenv("ATHENA_SRT_PATH", str(srt))
    assert find_srt(Settings()) == srt.resolve()


def test_a_project_local_srt_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """node_modules/.bin/srt under the working directory is found when PATH has none."""
    local = tmp_path / "node_modules" / ".bin" / "srt"
    local.parent.mkdir(parents=True)
    local.write_text("#!/bin/sh\n")
    local.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    assert find_srt(Settings()) == local.resolve()
