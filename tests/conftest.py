"""Shared test configuration: a private HOME for every test, and the memory store backends.

``backend`` runs a test on a fresh SQLite file and on a fresh PostgreSQL schema (that variant
is marked ``postgres``); a PostgreSQL server that does not answer fails it, never skips it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.memory_backends import Backend, PostgresServer, SQLiteBackend, postgres_url


@pytest.fixture(autouse=True)
def _private_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Point HOME and the ATHENA_* store variables at a fresh directory for each test."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name in ("ATHENA_MEMORY_DB", "ATHENA_MEMORY_URL", "ATHENA_PROJECT_DIR"):
        monkeypatch.delenv(name, raising=False)
    yield home


# ----------------------------------------------------------------------------- memory backends


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """The PostgreSQL test server; one that does not answer fails the test (CI must have one)."""
    server = PostgresServer(postgres_url())
    problem = server.check()
    if problem is not None:
        pytest.fail(
            f"no PostgreSQL server answers at {server.shown} ({problem}); run "
            "`sudo bash scripts/ensure-postgres.sh` or set ATHENA_TEST_POSTGRES_URL",
            pytrace=False,
        )
    return server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh store location on each backend: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield SQLiteBackend(tmp_path / "memory.db")
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.fresh_schema() as fresh:
        yield fresh
