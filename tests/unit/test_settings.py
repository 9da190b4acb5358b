"""Settings: ATHENA_* variables, pool sizes per language, the store's options, their checks."""

from __future__ import annotations

import pydantic
import pytest

from memory_store import StoreOptions
from orchestrator.settings import Settings


def test_pool_sizes_accept_aliases_and_fall_back_to_pool_size() -> None:
    """Per-language pool sizes take aliases; languages not named get pool_size."""
    settings = Settings(pool_size=3, pool_sizes={"js": 1, "SH": 0})
    assert settings.pool_size_for("javascript") == 1
    assert settings.pool_size_for("bash") == 0
    assert settings.pool_size_for("python") == 3


def test_pool_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """ATHENA_POOL_SIZE, ATHENA_POOL_SIZES (JSON) and ATHENA_POOL_IDLE_TTL_SECONDS are read."""
    monkeypatch.setenv("ATHENA_POOL_SIZE", "5")
    monkeypatch.setenv("ATHENA_POOL_SIZES", '{"python": 7}')
    monkeypatch.setenv("ATHENA_POOL_IDLE_TTL_SECONDS", "12.5")
    settings = Settings()
    assert settings.pool_size_for("python") == 7 and settings.pool_size_for("bash") == 5
    assert settings.pool_idle_ttl_seconds == 12.5


@pytest.mark.parametrize("sizes", [{"cobol": 1}, {"python": -1}])
def test_bad_pool_sizes_are_refused(sizes: dict[str, int]) -> None:
    """An unknown language or a negative size is a validation error naming the field."""
    with pytest.raises(pydantic.ValidationError, match="pool_sizes"):
        Settings(pool_sizes=sizes)


def test_unknown_settings_are_refused() -> None:
    """A misspelt setting is an error, not silently ignored."""
    with pytest.raises(pydantic.ValidationError, match="pool_szie"):
        Settings(pool_szie=1)  # type: ignore[call-arg]


# --------------------------------------------------------------------------- athena.settings


def test_store_variables_become_the_store_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """ATHENA_MEMORY_URL/DB, redaction, retention, size and embeddings fill StoreOptions."""
    from athena.settings import Settings as AthenaSettings

    monkeypatch.setenv("ATHENA_MEMORY_DB", "/from/env.db")
    monkeypatch.setenv("ATHENA_REDACT_PARAMETERS", "true")
    monkeypatch.setenv("ATHENA_RETENTION_DAYS", "3")
    monkeypatch.setenv("ATHENA_MAX_MEMORY_BYTES", "4096")
    monkeypatch.setenv("ATHENA_MEMORY_EMBEDDINGS", "off")
    monkeypatch.setenv("ATHENA_POOL_SIZE", "5")
    settings = AthenaSettings()
    assert settings.store == StoreOptions(
        target="/from/env.db",
        redact_parameters=True,
        retention_days=3,
        max_memory_bytes=4096,
        embeddings="off",
    )
    assert settings.orchestrator.pool_size == 5
    monkeypatch.setenv("ATHENA_MEMORY_URL", "sqlite:///from/url.db")
    assert AthenaSettings().store.target == "sqlite:///from/url.db"  # the URL wins


def test_the_orchestrator_settings_hold_nothing_of_the_store() -> None:
    """The store's fields left the orchestrator's settings: passing one there is an error."""
    with pytest.raises(pydantic.ValidationError, match="max_memory_bytes"):
        Settings(max_memory_bytes=10)  # type: ignore[call-arg]


def test_orchestrator_settings_alone_are_completed_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settings.of(orchestrator settings) keeps them and takes the store's from ATHENA_*."""
    from athena.settings import Settings as AthenaSettings

    monkeypatch.setenv("ATHENA_MAX_MEMORY_BYTES", "123")
    orchestrator = Settings(pool_size=0)
    settings = AthenaSettings.of(orchestrator)
    assert settings.orchestrator is orchestrator
    assert settings.store.max_memory_bytes == 123
    assert AthenaSettings.of(settings) is settings
