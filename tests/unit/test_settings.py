"""Settings: ATHENA_* variables, pool sizes per language, and their checks."""

from __future__ import annotations

import pydantic
import pytest

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
