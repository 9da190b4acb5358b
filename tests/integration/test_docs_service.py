"""The examples of docs/service.md work as written, against a real `athena-sandbox serve`.

Each ```bash block is run with ``bash -euo pipefail`` against one server started with a tokens
file, with ``ATHENA_TOKEN`` holding a token of it; the blocks say ``http://127.0.0.1:8000``,
which is replaced by the server's own address (it listens on a free port of 127.0.0.1). Each
```json block parses, and the two MCP client configurations say what the docs promise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from athena.service.tokens import TokenFile
from tests.service_server import ServiceServer, running_server

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "service.md"
DOCS_URL = "http://127.0.0.1:8000"
FENCE = re.compile(r"^```([^`\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)


def _blocks(info: str) -> list[tuple[int, str]]:
    """The page's blocks with this info string, with their line numbers."""
    text = PAGE.read_text()
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(2))
        for match in FENCE.finditer(text)
        if " ".join(match.group(1).split()) == info
    ]


BASH = _blocks("bash")
TENANTS = {"docs": {}, "revoked": {}}  # the first one's token is ATHENA_TOKEN


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceServer]:
    """One server with a tokens file (tenants ``docs`` and ``revoked``, the default options)."""
    with running_server(tmp_path_factory.mktemp("serve"), tenants=TENANTS) as running:
        yield running
        assert running.stop() == 0, running.log()
    assert running.containers() == [], "the examples left a container behind"


def test_the_page_has_curl_examples() -> None:
    """docs/service.md holds curl examples of the routes it documents."""
    text = "\n".join(block for _, block in BASH)
    for route in ("/v1/execute", "/v1/execute/stream", "/v1/executions/", "/v1/recall", "/metrics"):
        assert route in text
    assert all(DOCS_URL in block for _, block in BASH)


@pytest.mark.parametrize(("line", "block"), BASH, ids=[f"service.md:{n}" for n, _ in BASH])
def test_bash_example_runs(server: ServiceServer, tmp_path: Path, line: int, block: str) -> None:
    """Each bash block of docs/service.md runs against the server without an error or a 5xx."""
    assert server.token is not None
    env = {
        **os.environ,
        "ATHENA_TOKEN": server.token,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.replace(DOCS_URL, server.url)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    shown = f"service.md:{line} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, shown
    assert not re.search(r" 5\d\d$", done.stdout, re.M), shown
    assert "Internal Server Error" not in done.stdout, shown


def test_the_error_examples_answer_as_documented(server: ServiceServer, tmp_path: Path) -> None:
    """The error block prints 401, 400, 400 and 422, each with the documented envelope type."""
    (block,) = [b for _, b in BASH if "cobol" in b and "%{http_code}" in b]
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.replace(DOCS_URL, server.url)],
        cwd=tmp_path,
        env={**os.environ, "ATHENA_TOKEN": server.token or ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = done.stdout.splitlines()
    answers = [(json.loads(body)["error"]["type"], status) for body, _, status in
               (line.rpartition(" ") for line in lines)]  # fmt: skip
    assert answers == [
        ("Unauthorized", "401"),
        ("UnknownLanguageError", "400"),
        ("PolicyError", "400"),
        ("RequestError", "422"),
    ], done.stdout


def test_the_documented_metrics_exist(server: ServiceServer) -> None:
    """Every metric the page lists is one the server exports."""
    names = re.findall(r"^\| `(athena_[a-z_]+)` \|", PAGE.read_text(), re.M)
    assert len(names) >= 8
    scraped = httpx.get(f"{server.url}/metrics", headers=server.headers(), timeout=30).text
    missing = [name for name in names if name not in scraped]
    assert not missing, missing


def test_revocation_takes_effect_without_a_restart(server: ServiceServer) -> None:
    """A token revoked with the documented command gets 401 on its next request; others work."""
    assert server.tokens_file is not None
    url = f"{server.url}/v1/policies"
    assert httpx.get(url, headers=server.headers("revoked"), timeout=30).status_code == 200
    (token_id,) = [i.id for i in TokenFile(server.tokens_file).list() if i.tenant == "revoked"]
    done = subprocess.run(
        [sys.executable, "-m", "athena.cli", "tokens", "revoke", token_id],
        env={**os.environ, "ATHENA_TOKENS_FILE": str(server.tokens_file)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    refused = httpx.get(url, headers=server.headers("revoked"), timeout=30)
    assert refused.status_code == 401
    assert refused.json() == {
        "error": {"type": "Unauthorized", "message": "a valid bearer token is required"}
    }
    assert httpx.get(url, headers=server.headers(), timeout=30).status_code == 200


def test_mcp_client_configurations() -> None:
    """The JSON blocks parse; the stdio one runs `athena-sandbox mcp`, the HTTP one /mcp."""
    configs = [json.loads(block) for _, block in _blocks("json")]
    servers = [c["mcpServers"]["athena-sandbox"] for c in configs if "mcpServers" in c]
    stdio, http = servers
    assert (stdio["command"], stdio["args"]) == ("athena-sandbox", ["mcp"])
    assert http["url"] == f"{DOCS_URL}/mcp"
    assert http["headers"]["Authorization"].startswith("Bearer ath_")
    envelope = [c for c in configs if "error" in c]
    assert set(envelope[0]["error"]) == {"type", "message"}
