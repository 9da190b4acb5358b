"""Process-wide settings, from arguments or ``ATHENA_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.models import DEFAULT_MAX_CODE_BYTES, DEFAULT_MAX_PARAMETERS_BYTES


class Settings(BaseSettings):
    """Settings of an orchestrator and its memory store.

    Every field can be set by an environment variable named ``ATHENA_<FIELD>`` (upper case),
    e.g. ``ATHENA_PROJECT_DIR`` or ``ATHENA_MEMORY_DB``; arguments win over the environment.

    Attributes:
        memory_db: SQLite file of the memory store (``ATHENA_MEMORY_DB``).
        memory_url: store URL, ``sqlite:///path`` (``ATHENA_MEMORY_URL``); wins over memory_db.
        project_dir: the directory research and development mount (default: working directory).
        image_prefix: repository prefix of the sandbox images.
        image_tag: tag of the sandbox images that runs use.
        max_code_bytes: largest code accepted (UTF-8 bytes).
        max_parameters_bytes: largest parameters accepted (as JSON).
        docker_api_timeout: seconds a single Docker API call may take.
        startup_timeout: seconds a container may take to become ready before the run fails.
        sweep_on_start: remove containers whose labelled owner process is dead, at first use.
    """

    model_config = SettingsConfigDict(env_prefix="ATHENA_", frozen=True, extra="forbid")

    memory_db: Path | None = None
    memory_url: str | None = None
    project_dir: Path | None = None
    image_prefix: str = "athena-sandbox"
    image_tag: str = "latest"
    max_code_bytes: int = Field(DEFAULT_MAX_CODE_BYTES, gt=0)
    max_parameters_bytes: int = Field(DEFAULT_MAX_PARAMETERS_BYTES, gt=0)
    docker_api_timeout: float = Field(60.0, gt=0)
    startup_timeout: float = Field(30.0, gt=0)
    sweep_on_start: bool = True

    def resolved_project_dir(self) -> Path:
        """Return the project directory: the setting, or the current working directory."""
        return self.project_dir if self.project_dir is not None else Path.cwd()

    def image_ref(self, image: str) -> str:
        """Return a language's image reference, e.g. ``athena-sandbox/python:latest``."""
        return f"{self.image_prefix}/{image}:{self.image_tag}"
