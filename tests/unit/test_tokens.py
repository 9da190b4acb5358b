"""Bearer tokens: the token file, its verification, reload on change and failing closed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from athena.service import tokens as tokens_module
from athena.service.tokens import (
    DEFAULT_TENANT_POLICIES,
    Tenant,
    TokenFile,
    TokenFileError,
    local_tenant,
    make_tenant,
)
from orchestrator.errors import PolicyNotFoundError, RequestError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A token file path in a fresh directory (the file does not exist yet)."""
    return tmp_path / "tokens.json"


def _replace(path: Path, text: str) -> None:
    """Replace the file atomically, as an editor or the CLI would."""
    temporary = path.with_name("edit.tmp")
    temporary.write_text(text)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def test_add_returns_a_token_that_verifies_as_its_tenant(path: Path) -> None:
    """A new token verifies as its tenant with the policies and limit it was given."""
    info, token = TokenFile(path).add("team-a", ["research"], 3)
    assert token.startswith("ath_") and len(token) >= 40
    assert info.tenant == "team-a" and info.policies == ("research",) and info.max_in_flight == 3
    assert info.id.startswith("tok_") and len(info.id) == 12
    tenant = TokenFile(path).verify(token)
    assert tenant == Tenant(name="team-a", policies=("research",), max_in_flight=3)


def test_defaults_are_strict_research_and_eight(path: Path) -> None:
    """Without options a tenant may use strict and research, with 8 runs in flight."""
    info, token = TokenFile(path).add("team-a")
    assert info.policies == DEFAULT_TENANT_POLICIES == ("strict", "research")
    assert info.max_in_flight == 8
    assert TokenFile(path).verify(token) == local_tenant().model_copy(update={"name": "team-a"})


def test_the_file_keeps_only_a_hash_and_is_private(path: Path) -> None:
    """The token never appears in the file, which (and its lock) has mode 0600."""
    _, token = TokenFile(path).add("team-a")
    text = path.read_text()
    assert token not in text and token.removeprefix("ath_") not in text
    document = json.loads(text)
    assert document["version"] == 1
    assert set(document["tokens"][0]) == {
        "id",
        "tenant",
        "sha256",
        "policies",
        "max_in_flight",
        "created_at",
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.with_name("tokens.json.lock").stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_list_never_shows_a_token_or_hash(path: Path) -> None:
    """list gives ids, tenants, policies, limits and dates, nothing secret."""
    file = TokenFile(path)
    first, _ = file.add("team-a")
    second, _ = file.add("team-b", ["strict"], 2)
    listed = file.list()
    assert [info.id for info in listed] == [first.id, second.id]
    dumped = listed[0].model_dump()
    assert set(dumped) == {"id", "tenant", "policies", "max_in_flight", "created_at"}
    assert listed[1].to_tenant() == Tenant(name="team-b", policies=("strict",), max_in_flight=2)


def test_revocation_is_seen_without_a_new_tokenfile(path: Path) -> None:
    """A server's TokenFile refuses a token revoked by another (the CLI) on its next call."""
    server = TokenFile(path)
    info, token = TokenFile(path).add("team-a")
    _, other = TokenFile(path).add("team-b")
    assert server.verify(token) is not None
    assert TokenFile(path).revoke(info.id) is True
    assert server.verify(token) is None
    assert server.verify(other) is not None
    assert TokenFile(path).revoke(info.id) is False


def test_a_new_token_is_seen_without_a_new_tokenfile(path: Path) -> None:
    """A token added after the server read the file verifies at once."""
    server = TokenFile(path)
    TokenFile(path).add("team-a")
    assert server.verify("ath_nothing") is None
    _, token = TokenFile(path).add("team-b")
    assert server.verify(token) is not None


def test_a_same_size_replacement_is_reread(path: Path) -> None:
    """A file replaced by one of equal size (another inode) is read again."""
    file = TokenFile(path)
    _, first = file.add("team-a")
    document = json.loads(path.read_text())
    entry = document["tokens"][0]
    _, second = TokenFile(path.with_name("other.json")).add("team-a")
    entry["sha256"] = json.loads(path.with_name("other.json").read_text())["tokens"][0]["sha256"]
    assert file.verify(first) is not None
    before = path.stat().st_size
    _replace(path, json.dumps(document, indent=2) + "\n")
    assert path.stat().st_size == before
    assert file.verify(first) is None
    assert file.verify(second) is not None


@pytest.mark.parametrize(
    "presented",
    ["", "ath_wrong", "nope", "ath_\u00e9\u00e9", "ath_\ud800", "x" * 10_000, None, 42, b"ath_"],
)
def test_wrong_empty_or_odd_tokens_verify_as_nobody(path: Path, presented: object) -> None:
    """Wrong, empty, non-ASCII, huge or non-string tokens return None, never raise."""
    TokenFile(path).add("team-a")
    assert TokenFile(path).verify(presented) is None


def test_a_token_differing_in_one_character_is_refused(path: Path) -> None:
    """Only the exact token verifies."""
    _, token = TokenFile(path).add("team-a")
    changed = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert TokenFile(path).verify(changed) is None
    assert TokenFile(path).verify(token + " ") is None


def test_verify_compares_against_every_entry(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hash is compared with every entry, even after the first one matched."""
    file = TokenFile(path)
    _, token = file.add("team-a")
    for name in ("team-b", "team-c"):
        file.add(name)
    calls: list[bytes] = []
    real = tokens_module.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(tokens_module.hmac, "compare_digest", counting)
    assert file.verify(token) is not None
    assert len(calls) == 3


def test_a_corrupt_file_fails_closed_and_recovers(path: Path) -> None:
    """A corrupt file verifies nobody (logged once); fixing it makes tokens verify again."""
    file = TokenFile(path)
    _, token = file.add("team-a")
    good = path.read_text()
    assert file.verify(token) is not None
    with capture_logs() as logs:
        _replace(path, good[:-20])
        assert file.verify(token) is None
        assert file.verify(token) is None
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1 and str(path) in errors[0]["problem"]
    with pytest.raises(TokenFileError, match="not valid JSON"):
        file.list()
    _replace(path, good)
    assert file.verify(token) is not None


def test_a_missing_file_fails_closed(path: Path) -> None:
    """A token file that disappears verifies nobody, and says how to create one."""
    file = TokenFile(path)
    _, token = file.add("team-a")
    assert file.verify(token) is not None
    path.unlink()
    with capture_logs() as logs:
        assert file.verify(token) is None
    assert [entry["log_level"] for entry in logs] == ["error"]
    with pytest.raises(TokenFileError, match=r"does not exist.*tokens add"):
        file.list()
    with pytest.raises(TokenFileError, match="does not exist"):
        file.revoke("tok_00000000")


def test_a_file_others_may_write_is_refused(path: Path) -> None:
    """A token file writable by other users verifies nobody and says to chmod it."""
    file = TokenFile(path)
    _, token = file.add("team-a")
    os.chmod(path, 0o666)
    assert file.verify(token) is None
    with pytest.raises(TokenFileError, match="chmod 600"):
        file.list()


def _entry(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "id": "tok_0123abcd",
        "tenant": "team-a",
        "sha256": "a" * 64,
        "policies": ["strict"],
        "max_in_flight": 8,
        "created_at": "2026-01-01T00:00:00Z",
    }
    entry.update(changes)
    return entry


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"version": 2, "tokens": []}, r"version: must be 1"),
        ({"tokens": []}, r"version: Field required"),
        ({"version": 1, "tokens": [_entry(tenant="Team A")]}, r"tokens\.0\.tenant: tenant name"),
        ({"version": 1, "tokens": [_entry(policies=["nope"])]}, r"tokens\.0\.policies: unknown"),
        ({"version": 1, "tokens": [_entry(max_in_flight=0)]}, r"tokens\.0\.max_in_flight"),
        ({"version": 1, "tokens": [_entry(sha256="xyz")]}, r"tokens\.0\.sha256"),
        ({"version": 1, "tokens": [_entry(extra=1)]}, r"tokens\.0\.extra: unknown key"),
        ({"version": 1, "tokens": [_entry(), _entry()]}, r"tokens\.1\.id: .* appears twice"),
        ([], r"(top level)|Input should be"),
    ],
)
def test_a_malformed_file_names_the_file_and_the_field(
    path: Path, document: object, message: str
) -> None:
    """Each malformed file is refused with the file, the field and what to change."""
    _replace(path, json.dumps(document))
    with pytest.raises(TokenFileError, match=message) as caught:
        TokenFile(path).list()
    assert str(path) in str(caught.value)
    assert TokenFile(path).verify("ath_anything") is None


def test_add_never_overwrites_a_corrupt_file(path: Path) -> None:
    """add refuses a corrupt file and leaves it as it was."""
    _replace(path, "{not json")
    with pytest.raises(TokenFileError):
        TokenFile(path).add("team-a")
    assert path.read_text() == "{not json"


def test_add_into_a_missing_directory_says_so(tmp_path: Path) -> None:
    """A token file in a directory that does not exist: the error names the directory."""
    with pytest.raises(TokenFileError, match="does not exist; create it"):
        TokenFile(tmp_path / "nope" / "tokens.json").add("team-a")


@pytest.mark.parametrize(
    ("tenant", "policies", "limit", "error", "message"),
    [
        ("Team A", ["strict"], 8, RequestError, "tenant name"),
        ("", ["strict"], 8, RequestError, "tenant name"),
        ("team-a", ["nope"], 8, PolicyNotFoundError, "strict"),
        ("team-a", [], 8, RequestError, "at least one policy"),
        ("team-a", ["strict", "strict"], 8, RequestError, "once"),
        ("team-a", "strict", 8, RequestError, "list of policy names"),
        ("team-a", ["strict"], 0, RequestError, "1..1024"),
        ("team-a", ["strict"], 1025, RequestError, "1..1024"),
        ("team-a", ["strict"], True, RequestError, "integer"),
    ],
)
def test_add_refuses_bad_arguments(
    path: Path, tenant: str, policies: object, limit: int, error: type[Exception], message: str
) -> None:
    """Bad tenant names, policies and limits are refused, and no file is written."""
    with pytest.raises(error, match=message):
        TokenFile(path).add(tenant, policies, limit)  # type: ignore[arg-type]
    assert not path.exists()


def test_make_and_local_tenant() -> None:
    """The local tenant is 'default' with strict,research and 8; make_tenant checks names."""
    assert local_tenant() == Tenant(
        name="default", policies=("strict", "research"), max_in_flight=8
    )
    assert make_tenant("t.1_x-y", ["development"], 1024).policies == ("development",)


def test_concurrent_adds_from_threads_lose_nothing(path: Path) -> None:
    """Threads adding at once through separate TokenFiles keep every token."""
    found: list[str] = []

    def add_many(name: str) -> None:
        file = TokenFile(path)
        for _ in range(10):
            found.append(file.add(name)[1])

    threads = [threading.Thread(target=add_many, args=(f"t{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    file = TokenFile(path)
    assert len(file.list()) == len(found) == 60
    assert all(file.verify(token) is not None for token in found)


def test_concurrent_adds_from_processes_lose_nothing(path: Path) -> None:
    """Processes adding at once keep every token."""
    script = (
        "import sys\n"
        "from athena.service.tokens import TokenFile\n"
        "f = TokenFile(sys.argv[1])\n"
        "for _ in range(15): print(f.add(sys.argv[2])[1])\n"
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path), f"p{i}"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(5)
    ]
    found = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        found += out.split()
    file = TokenFile(path)
    assert len(found) == 75 and len(file.list()) == 75
    assert all(file.verify(token) is not None for token in found)
