"""Hostile input to the service's policy gate and token file: each class of attack found in review."""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from athena.service import tokens as tokens_module
from athena.service.gate import resolve_policy
from athena.service.tokens import Tenant, TokenFile, TokenFileError, local_tenant
from orchestrator.errors import PolicyError, PolicyNotFoundError, RequestError
from orchestrator.policy import load_policy, shipped_policy_names
from tests.unit.test_tokens import _replace  # the same atomic edit

TENANT = local_tenant()  # strict, research: what a default token may use
EVERYTHING = Tenant(name="ops", policies=tuple(shipped_policy_names()))


def _refusal(spec: object, tenant: Tenant = TENANT) -> str:
    with pytest.raises(PolicyError) as caught:
        resolve_policy(spec, tenant)
    return str(caught.value)


# ----------------------------------------------------------------------------- the policy gate


@pytest.mark.parametrize(
    ("base", "fallback"),
    [
        ("strict", ["restricted"]),
        ("strict", ["srt"]),
        ("research", ["srt", "restricted"]),
        ("research", ["docker", "restricted"]),
        ("development", ["inprocess"]),
        ("development", ["docker", "inprocess"]),
    ],
)
def test_fallback_may_not_skip_the_bases_stronger_modes(base: str, fallback: list[str]) -> None:
    """A fallback that drops a stronger mode (restricted on a docker host) is refused."""
    message = _refusal({"extends": base, "fallback": fallback}, EVERYTHING)
    assert "sandbox_policy.fallback" in message and "only its weakest modes" in message
    assert "docker | docker, srt" in message


@pytest.mark.parametrize("fallback", [["docker"], ["docker", "srt"], ["srt", "docker"]])
def test_fallback_may_drop_the_bases_weakest_modes(fallback: list[str]) -> None:
    """Dropping modes from the weak end (in any order written) narrows strict: accepted."""
    policy = resolve_policy({"extends": "strict", "fallback": fallback}, TENANT)
    assert policy.fallback == ("docker", "srt")[: len(fallback)]


@pytest.mark.parametrize("module", ["linecache", "glob", "shutil", "sqlite3", "urllib.request"])
def test_allowed_imports_may_not_grow(module: str) -> None:
    """allowed_imports is the restricted mode's wall on the host: a module the base lacks is refused."""
    spec = {"extends": "strict", "validation": {"allowed_imports": ["math", module]}}
    message = _refusal(spec)
    assert "sandbox_policy.validation.allowed_imports" in message and repr(module) in message


def test_allowed_imports_may_shrink_and_other_validation_may_change() -> None:
    """Fewer allowed imports, and the other validation fields, are the tenant's to change."""
    spec = {
        "extends": "research",
        "validation": {"allowed_imports": ["math"], "enforce": False, "forbidden_calls": []},
        "fallback": ["docker"],
    }
    policy = resolve_policy(spec, TENANT)
    assert policy.validation.allowed_imports == ("math",) and not policy.validation.enforce


@pytest.mark.parametrize(
    "name",
    [
        "Strict",
        "STRICT",
        "strict ",
        " strict",
        "\u0455trict",  # Cyrillic dze
        "strict\u200b",
        "strict\x00",
        "strict\n",
        "\uff53trict",  # fullwidth s
        "strict_gvisor",
        "Strict.GVisor",
        "development",
        "Research",
        "",
        None,
        7,
    ],
)
def test_an_inline_name_may_not_pass_for_a_shipped_one(name: object) -> None:
    """A name that is not plain ASCII, or looks like a shipped policy's, is refused."""
    assert "sandbox_policy.name" in _refusal({"extends": "strict", "name": name})


@pytest.mark.parametrize("name", ["custom", "strict2", "my.strict-copy", "A" * 100])
def test_other_inline_names_are_kept(name: str) -> None:
    """Plain names unlike any shipped policy's are kept as given."""
    assert resolve_policy({"extends": "strict", "name": name}, TENANT).name == name


def test_a_base_mount_may_not_be_listed_twice() -> None:
    """Repeating research's mount is refused before anything reaches the engine."""
    mount = {"source": "${project_dir}", "target": "/project"}
    message = _refusal({"extends": "research", "filesystem": {"mounts": [mount, mount]}})
    assert "filesystem.mounts.1" in message and "twice" in message


@pytest.mark.parametrize(
    "network",
    [
        {"allowed_domains": ["evil.example"]},
        {"mode": "none", "allowed_domains": ["*.com"]},
    ],
)
def test_a_base_without_network_takes_no_dormant_domains(network: dict[str, Any]) -> None:
    """Domains strict does not list are refused even with the network off."""
    message = _refusal({"extends": "strict", "network": network})
    assert "sandbox_policy.network.allowed_domains" in message


@pytest.mark.parametrize(
    "domain", ["*.github.com", "github.com:22", "evil.github.com", "GITHUB.COM.evil.example"]
)
def test_research_domains_only_narrow(domain: str) -> None:
    """Wildcards, other ports, subdomains and case tricks beyond research's list are refused."""
    spec = {"extends": "research", "network": {"allowed_domains": ["pypi.org", domain]}}
    assert "sandbox_policy.network.allowed_domains" in _refusal(spec)


def test_case_is_folded_before_domains_are_compared() -> None:
    """An upper-case spelling of one of research's domains is that domain."""
    spec = {"extends": "research", "network": {"allowed_domains": ["PyPI.org"]}}
    assert resolve_policy(spec, TENANT).network.allowed_domains == ("pypi.org",)


@pytest.mark.parametrize(
    "spec",
    [
        "~",
        "$HOME",
        "..",
        ".",
        "strict\x00",
        "strict.yaml ",
        "..\\strict",
        "\uff0fetc\uff0fpasswd",
        "\ud800",
        "a" * 1_000_000,
        {"extends": "~"},
        {"extends": "${HOME}/p.yaml"},
        {"extends": "\ud800"},
        {"extends": "strict", "filesystem": {"mounts": [{"source": "~", "target": "/data"}]}},
        {"extends": "research", "filesystem": {"mounts": [{"source": "$HOME", "target": "/x"}]}},
    ],
)
def test_no_string_reaches_a_file_on_the_servers_disk(spec: object) -> None:
    """Home, env vars, dots, NULs, look-alike slashes and long names are refused as names."""
    message = _refusal(spec)
    assert "cannot be resolved" not in message and "does not exist" not in message
    assert len(message) < 1000


def test_an_unprintable_name_is_escaped_once_in_the_message() -> None:
    """An unknown name with a surrogate is shown escaped, with one backslash."""
    with pytest.raises(PolicyNotFoundError) as caught:
        resolve_policy("\ud800x", TENANT)
    assert "unknown policy '\\ud800x'" in str(caught.value)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _cyclic() -> dict[str, Any]:
    spec: dict[str, Any] = {"extends": "strict"}
    spec["limits"] = spec
    return spec


@pytest.mark.parametrize(
    "spec",
    [
        {1: "x"},
        {"extends": "strict", None: 1},
        {"extends": "strict", ("a",): 1},
        {"extends": "research", "filesystem": {1: 2}},
        {"extends": "research", "filesystem": {"mounts": [{1: 2}]}},
        {"extends": "strict", "limits": _nested(5000)},
        {"extends": "research", "filesystem": {"mounts": [_nested(5000)]}},
        _cyclic(),
        {"extends": "strict", "limits": {"memory_mb": 10**10000}},
        {"extends": "strict", "limits": {"timeout_seconds": float("nan")}},
        {"extends": "strict", "runtime": {"user": "9" * 100_000}},
        {"extends": "strict", "runtime": {"gvisor": ["require"]}},
        {"extends": "strict", "fallback": [["docker"]]},
        {"extends": "strict", "description": b"\xff"},
        {"extends": "strict", "description": object()},
        {"extends": "strict", "name": "x" * 1_000_000},
        {"extends": "research", "network": {"allowed_domains": [1]}},
        {"extends": "research", "filesystem": {"mounts": {"a": 1}}},
        b"strict",
        {"strict"},
    ],
)
def test_hostile_specs_raise_only_policy_errors(spec: object) -> None:
    """Non-string keys, deep or cyclic nesting, huge numbers, odd types: a PolicyError, no 500."""
    try:
        resolve_policy(spec, TENANT)
    except (PolicyError, RequestError):
        return
    pytest.fail("accepted")


def test_an_inline_policy_never_reaches_more_than_its_base() -> None:
    """Every property the gate guards, asked for at once, is refused field by field."""
    widen = {
        "network": {"mode": "open"},
        "runtime": {"user": "1000"},
        "filesystem": {"read_only_root": False},
        "fallback": ["restricted"],
        "validation": {"allowed_imports": ["shutil"]},
    }
    for key, value in widen.items():
        assert f"sandbox_policy.{key}" in _refusal({"extends": "research", key: value})
    assert resolve_policy({"extends": "research"}, TENANT).filesystem == (
        load_policy("research").filesystem
    )


# ----------------------------------------------------------------------------- the token file


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A token file path in a fresh private directory (the file does not exist yet)."""
    return tmp_path / "tokens.json"


def test_a_chmod_after_loading_is_noticed(path: Path) -> None:
    """Made writable by others, the file stops verifying at once; chmod 600 makes it verify again."""
    _, token = TokenFile(path).add("team-a")
    server = TokenFile(path)
    assert server.verify(token) is not None
    os.chmod(path, 0o666)
    assert server.verify(token) is None
    os.chmod(path, 0o600)
    assert server.verify(token) is not None


@pytest.mark.parametrize(
    "text",
    [
        "[" * 200_000,
        '{"version": 1, "tokens": [' + '{"a":' * 100_000 + "1" + "}" * 100_000 + "]}",
        '{"version": ' + "1" * 5000 + ', "tokens": []}',
        '{"version": 1, "tokens": [], "x": "\\ud800"}',
        '{"version": 1, "tokens": [{"id": "tok_0123abcd", "tenant": "a", "sha256": '
        + '"'
        + "a" * 64
        + '", "policies": ["strict"], "max_in_flight": 1e999, "created_at": "9999-99-99"}]}',
        "\xff\xfe",
    ],
)
def test_a_hostile_token_file_fails_closed_without_raising(path: Path, text: str) -> None:
    """Deep nesting, 5,000-digit numbers, bad dates or bytes: verify gives None, list a clear error."""
    TokenFile(path).add("team-a")
    server = TokenFile(path)
    _replace(path, text)
    with capture_logs() as logs:
        assert server.verify("ath_anything") is None
    assert [entry["log_level"] for entry in logs] == ["error"]
    with pytest.raises(TokenFileError, match=str(path)):
        server.list()


def test_a_symlinked_token_file_is_refused(path: Path) -> None:
    """A link verifies nobody, and add/revoke refuse it (they would leave its target stale)."""
    real = path.with_name("real.json")
    info, token = TokenFile(real).add("team-a")
    path.symlink_to(real)
    assert TokenFile(path).verify(token) is None
    with pytest.raises(TokenFileError, match="symbolic link"):
        TokenFile(path).list()
    with pytest.raises(TokenFileError, match="symbolic link"):
        TokenFile(path).revoke(info.id)
    assert path.is_symlink() and TokenFile(real).verify(token) is not None


def test_a_directory_in_place_of_the_file_fails_closed(path: Path) -> None:
    """A directory at the path: verify gives None; list and add raise TokenFileError, not OSError."""
    _, token = TokenFile(path).add("team-a")
    server = TokenFile(path)
    assert server.verify(token) is not None
    path.unlink()
    path.mkdir()
    assert server.verify(token) is None
    with pytest.raises(TokenFileError, match="not a regular file"):
        server.list()
    with pytest.raises(TokenFileError, match="not a regular file"):
        server.add("team-b")


def test_a_directory_others_may_write_in_is_refused(path: Path) -> None:
    """Others could replace the file: refused unless the directory is sticky (like /tmp)."""
    _, token = TokenFile(path).add("team-a")
    server = TokenFile(path)
    os.chmod(path.parent, 0o777)
    try:
        assert server.verify(token) is None
        with pytest.raises(TokenFileError, match="chmod go-w"):
            server.list()
        os.chmod(path.parent, 0o1777)
        assert server.verify(token) is not None
    finally:
        os.chmod(path.parent, 0o700)


def test_a_file_or_directory_of_another_user_is_refused(path: Path) -> None:
    """A token file (or its directory) owned by another user, who could add tokens: refused."""
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    _, token = TokenFile(path).add("team-a")
    server = TokenFile(path)
    os.chown(path, 12345, 12345)
    assert server.verify(token) is None
    with pytest.raises(TokenFileError, match="owned by uid 12345"):
        server.list()
    os.chown(path, 0, 0)
    assert server.verify(token) is not None
    os.chown(path.parent, 12345, 12345)
    try:
        assert server.verify(token) is None
    finally:
        os.chown(path.parent, 0, 0)
    assert server.verify(token) is not None


def test_a_path_with_a_nul_fails_closed(tmp_path: Path) -> None:
    """A NUL in the token file's path: verify gives None; list and add raise TokenFileError."""
    file = TokenFile(str(tmp_path) + "/tokens\x00.json")
    assert file.verify("ath_anything") is None
    with pytest.raises(TokenFileError, match="NUL"):
        file.list()
    with pytest.raises(TokenFileError, match="NUL"):
        file.add("team-a")


def test_a_transient_read_error_does_not_lock_everyone_out(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that fails for want of file descriptors is tried again without the file changing."""
    monkeypatch.setattr(tokens_module, "_RETRY_SECONDS", 0.0)
    _, token = TokenFile(path).add("team-a")
    server = TokenFile(path)
    TokenFile(path).add("team-b")  # the server must read the file again
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # the next open: EMFILE
    try:
        refused = server.verify(token)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert refused is None
    assert server.verify(token) is not None


def test_an_unexpected_error_while_loading_fails_closed(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong reading the file, verify returns None and logs; it never raises."""
    _, token = TokenFile(path).add("team-a")

    def broken(value: tuple[str, ...]) -> tuple[str, ...]:
        raise KeyError("boom")

    monkeypatch.setattr(tokens_module, "_check_policies", broken)
    with capture_logs() as logs:
        assert TokenFile(path).verify(token) is None
    assert "KeyError" in logs[0]["problem"]


def test_revocation_during_verification_never_refuses_another_token(path: Path) -> None:
    """While tokens are revoked and added, a kept token always verifies and no call raises."""
    _, kept = TokenFile(path).add("keeper")
    server = TokenFile(path)
    failures: list[object] = []
    stop = threading.Event()

    def verify_forever() -> None:
        while not stop.is_set():
            try:
                if server.verify(kept) is None:
                    failures.append("kept token refused")
            except Exception as exc:  # any exception is the failure we look for
                failures.append(exc)

    threads = [threading.Thread(target=verify_forever) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        writer = TokenFile(path)
        for _ in range(15):
            info, token = writer.add("churn")
            assert server.verify(token) is not None
            assert writer.revoke(info.id)
            assert server.verify(token) is None
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []


def test_a_file_with_many_tokens_loads_quickly(path: Path) -> None:
    """10,000 entries load in well under a second's work per change (no per-entry disk scans)."""
    entries = [
        {
            "id": f"tok_{index:08x}",
            "tenant": f"t{index}",
            "sha256": f"{index:064x}",
            "policies": ["strict", "research"],
            "max_in_flight": 8,
            "created_at": "2026-01-01T00:00:00Z",
        }
        for index in range(10_000)
    ]
    _replace(path, json.dumps({"version": 1, "tokens": entries}))
    started = time.process_time()
    assert TokenFile(path).verify("ath_none") is None
    assert time.process_time() - started < 1.5
