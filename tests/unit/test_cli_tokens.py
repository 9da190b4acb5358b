"""`athena-sandbox tokens add|list|revoke`: the token file from the command line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from athena.cli import main
from athena.service.tokens import TokenFile

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, env: dict[str, str] | None = None) -> Result:
    runner = CliRunner(env={"ATHENA_TOKENS_FILE": None, **(env or {})})
    return runner.invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A token file path (not created yet)."""
    return tmp_path / "tokens.json"


def test_add_prints_the_token_alone_on_stdout(path: Path) -> None:
    """add prints only the token on stdout; the id, tenant and warning go to stderr."""
    result = _cli("tokens", "add", "team-a", "--file", str(path))
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.startswith("ath_")
    assert "team-a" in result.stderr and "shown only" in result.stderr
    tenant = TokenFile(path).verify(token)
    assert tenant is not None and tenant.policies == ("strict", "research")
    assert tenant.max_in_flight == 8
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_add_takes_policies_and_max_in_flight(path: Path) -> None:
    """--policies and --max-in-flight set what the tenant may use and run at once."""
    result = _cli(
        "tokens", "add", "ops", "--file", str(path), "--policies", "development, strict",
        "--max-in-flight", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tenant = TokenFile(path).verify(result.stdout.strip())
    assert tenant is not None
    assert (tenant.policies, tenant.max_in_flight) == (("development", "strict"), 2)


def test_the_file_defaults_to_the_environment(path: Path) -> None:
    """ATHENA_TOKENS_FILE names the file when --file is not given."""
    result = _cli("tokens", "add", "team-a", env={"ATHENA_TOKENS_FILE": str(path)})
    assert result.exit_code == 0, result.output
    assert TokenFile(path).verify(result.stdout.strip()) is not None


@pytest.mark.parametrize("command", [["add", "team-a"], ["list"], ["revoke", "tok_00000000"]])
def test_no_file_anywhere_is_a_usage_error(command: list[str]) -> None:
    """Without --file or ATHENA_TOKENS_FILE each command says how to name the file."""
    result = _cli("tokens", *command)
    assert result.exit_code == 2
    assert "--file FILE, or set ATHENA_TOKENS_FILE" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad Name"], "tenant name 'Bad Name' is not valid"),
        (["team-a", "--policies", "nope"], "unknown policy 'nope'"),
        (["team-a", "--policies", ","], "at least one policy"),
        (["team-a", "--max-in-flight", "0"], "1<=x<=1024"),
        (["team-a", "--max-in-flight", "1025"], "1<=x<=1024"),
    ],
)
def test_add_refuses_bad_arguments(path: Path, args: list[str], message: str) -> None:
    """Bad names, policies and limits fail with a message on stderr and nothing on stdout."""
    result = _cli("tokens", "add", *args, "--file", str(path))
    assert result.exit_code != 0
    assert message in result.stderr
    assert result.stdout == ""
    assert not path.exists()


def test_list_shows_a_table_and_json_without_secrets(path: Path) -> None:
    """list prints id, tenant, policies, limit and date; --json the same as a list."""
    token = _cli("tokens", "add", "team-a", "--file", str(path)).stdout.strip()
    _cli("tokens", "add", "team-b", "--file", str(path), "--policies", "strict")
    table = _cli("tokens", "list", "--file", str(path))
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "TENANT", "POLICIES", "MAX", "IN", "FLIGHT", "CREATED"]
    assert lines[1].split()[1:4] == ["team-a", "strict,research", "8"]
    assert lines[2].split()[1:4] == ["team-b", "strict", "8"]
    as_json = json.loads(_cli("tokens", "list", "--file", str(path), "--json").stdout)
    assert [entry["tenant"] for entry in as_json] == ["team-a", "team-b"]
    assert set(as_json[0]) == {"id", "tenant", "policies", "max_in_flight", "created_at"}
    sha = json.loads(path.read_text())["tokens"][0]["sha256"]
    for output in (table.stdout, json.dumps(as_json)):
        assert token not in output and sha not in output


def test_list_of_an_empty_file_says_so(path: Path) -> None:
    """A file whose tokens were all revoked lists nothing and says so on stderr."""
    _cli("tokens", "add", "team-a", "--file", str(path))
    token_id = TokenFile(path).list()[0].id
    _cli("tokens", "revoke", token_id, "--file", str(path))
    result = _cli("tokens", "list", "--file", str(path))
    assert result.exit_code == 0 and result.stdout == ""
    assert "no tokens in" in result.stderr
    assert json.loads(_cli("tokens", "list", "--file", str(path), "--json").stdout) == []


def test_list_of_a_missing_or_corrupt_file_explains(path: Path) -> None:
    """A missing file says how to create one; a corrupt one names the file."""
    missing = _cli("tokens", "list", "--file", str(path))
    assert missing.exit_code == 1 and "tokens add" in missing.stderr
    path.write_text("{")
    os.chmod(path, 0o600)
    corrupt = _cli("tokens", "list", "--file", str(path))
    assert corrupt.exit_code == 1 and f"token file {path}: not valid JSON" in corrupt.stderr


def test_revoke_removes_the_token(path: Path) -> None:
    """revoke makes the token fail verification; an unknown id is an error."""
    server = TokenFile(path)
    token = _cli("tokens", "add", "team-a", "--file", str(path)).stdout.strip()
    token_id = server.list()[0].id
    assert server.verify(token) is not None
    result = _cli("tokens", "revoke", token_id, "--file", str(path))
    assert result.exit_code == 0 and f"revoked {token_id}" in result.stderr
    assert server.verify(token) is None
    again = _cli("tokens", "revoke", token_id, "--file", str(path))
    assert again.exit_code == 1 and "tokens list" in again.stderr


def test_add_in_a_real_process_writes_only_the_token_to_stdout(path: Path) -> None:
    """The installed entry point (logging configured) prints the token alone on stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "athena.cli", "tokens", "add", "team-a", "--file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "ATHENA_TOKENS_FILE": ""},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and done.stdout.startswith("ath_")
    assert TokenFile(path).verify(done.stdout.strip()) is not None
