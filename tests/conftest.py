"""Shared test configuration: a private HOME for every test, the memory store backends, order.

``backend`` runs a test on a fresh SQLite file and on a fresh PostgreSQL schema (that variant
is marked ``postgres``); a PostgreSQL server that does not answer fails it, never skips it.
Tests marked ``engine_restart`` (they stop the Docker engine) run after every other test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.memory_backends import Backend, PostgresServer, SQLiteBackend, postgres_url

# pytester runs the ordering hook and the security suite's locator in a throwaway session.
pytest_plugins = ["pytester"]

LAST_MARKER = "engine_restart"


@pytest.hookimpl(trylast=True)  # after any plugin that reorders: the restart stays last
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the tests marked ``engine_restart`` to the end, keeping every other order."""
    items[:] = engine_restart_last(items)


def engine_restart_last(items: list[pytest.Item]) -> list[pytest.Item]:
    """``items`` with those marked ``engine_restart`` last: they stop the engine under the rest."""
    first = [item for item in items if item.get_closest_marker(LAST_MARKER) is None]
    last = [item for item in items if item.get_closest_marker(LAST_MARKER) is not None]
    return first + last


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
