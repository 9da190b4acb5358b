"""Shared test configuration: every test gets a private HOME so nothing touches the real one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


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
