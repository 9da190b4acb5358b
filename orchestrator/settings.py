"""Process-wide settings, from arguments or ``ATHENA_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator.errors import UnknownLanguageError
from orchestrator.languages import get_language
from orchestrator.models import DEFAULT_MAX_CODE_BYTES, DEFAULT_MAX_PARAMETERS_BYTES
from orchestrator.policy import SandboxMode

NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
"""A node id: a DNS-label-like name (a Kubernetes pod name fits), safe in a label and a URL."""

# A package index: http(s)://host[:port][/path], nothing a command line could mistake for more.
_INDEX_URL = r"^https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$"


class Settings(BaseSettings):
    """Settings of an orchestrator (the memory store's are ``memory_store.StoreOptions``).

    Every field can be set by an environment variable named ``ATHENA_<FIELD>`` (upper case),
    e.g. ``ATHENA_PROJECT_DIR``; arguments win over the environment. ``athena.settings``
    composes these with the store's options.

    Attributes:
        project_dir: the directory research and development mount (default: working directory).
        image_prefix: repository prefix of the sandbox images.
        image_tag: tag of the sandbox images that runs use.
        max_code_bytes: largest code accepted (UTF-8 bytes).
        max_parameters_bytes: largest parameters accepted (as JSON).
        docker_api_timeout: seconds a single Docker API call may take.
        startup_timeout: seconds a container may take to become ready before the run fails.
        sweep_on_start: remove containers whose labelled owner process is dead, at first use.
        pool_size: warm containers kept per (language, policy) in use; 0 disables the pool.
        pool_sizes: per-language overrides of pool_size, e.g. ``{"javascript": 1}``
            (``ATHENA_POOL_SIZES`` takes JSON).
        pool_min_size: warm containers a (language, policy) keeps once idle for the TTL.
        pool_idle_ttl_seconds: seconds without a run after which a pool shrinks to the minimum.
        pool_max_keys: how many (language, policy) pairs keep warm containers at once; the
            least recently used beyond it shrink to none (so ever new inline policies cannot
            pile up idle containers).
        pool_refill_delay_seconds: how long a run's warm container waits for its replacement
            while its pool still holds another ready one, so the run and its answer do not
            compete with the engine starting a container (an emptied pool refills at once).
        pool_wait_seconds: how long a run waits for a warm container before it starts a cold
            one (0: never waits; an empty pool means the cold path).
        max_concurrent_runs: runs in sandboxes at once; more wait in the queue.
        max_queued_runs: runs that may wait for a free place; more block.
        queue_wait_seconds: how long a run blocks for a place in a full queue before it returns
            ``error: queue full``.
        sandbox_backends: the isolation modes this process may use, e.g. ``srt,restricted``
            (``ATHENA_SANDBOX_BACKENDS``, comma-separated). It can only remove modes; and
            ``inprocess`` is used only when named here. None: docker, srt, restricted.
        srt_path: the srt CLI (default: PATH, then node_modules/.bin/srt).
        srt_uid_base: first of the uids srt runs use when we are root, one per concurrent run.
        fast_root: where the fast mode keeps the images' root filesystems, exported once per
            image (default: /var/lib/athena-sandbox/fast).
        fast_uid_base: first of the host uids fast-mode sandboxes run as, one per live sandbox
            (ready or running); the sandbox's own uid (65534) maps to it.
        egress_pinned_hosts: names the egress proxy resolves to fixed addresses, skipping DNS
            and the public-address check. For tests with servers of our own; never in production.
        max_sessions: sessions open at once in this process (all tenants); opening another
            is refused until one ends.
        session_check_seconds: how often idle and lifetime limits of sessions are checked.
        pip_index_url: the package index ``requirements=`` installs Python packages from
            (``pip --index-url``); its host must be in the policy's allowed domains.
        pip_files_host: the host the index serves its files from (also must be allowed).
        npm_registry: the registry ``requirements=`` installs JavaScript packages from.
        node_id: this process's name as a node of a cluster (``serve --node-id``): its
            containers are labelled with it, its start-up sweep removes the containers an
            earlier process of the same id left (from any host), and its session ids begin
            with it, so any node can tell which one holds a session. None: not a node.
    """

    model_config = SettingsConfigDict(env_prefix="ATHENA_", frozen=True, extra="forbid")

    project_dir: Path | None = None
    image_prefix: str = "athena-sandbox"
    image_tag: str = "latest"
    max_code_bytes: int = Field(DEFAULT_MAX_CODE_BYTES, gt=0)
    max_parameters_bytes: int = Field(DEFAULT_MAX_PARAMETERS_BYTES, gt=0)
    docker_api_timeout: float = Field(60.0, gt=0)
    startup_timeout: float = Field(30.0, gt=0)
    sweep_on_start: bool = True
    pool_size: int = Field(2, ge=0, le=64)
    pool_sizes: dict[str, int] = Field(default_factory=dict)
    pool_min_size: int = Field(0, ge=0, le=64)
    pool_idle_ttl_seconds: float = Field(300.0, gt=0)
    pool_max_keys: int = Field(8, ge=1, le=1024)
    pool_refill_delay_seconds: float = Field(0.05, ge=0, le=60)
    pool_wait_seconds: float = Field(0.0, ge=0)
    max_concurrent_runs: int = Field(default_factory=lambda: 4 * (os.cpu_count() or 1), ge=1)
    max_queued_runs: int = Field(256, ge=0)
    queue_wait_seconds: float = Field(60.0, ge=0)
    sandbox_backends: Annotated[tuple[SandboxMode, ...] | None, NoDecode] = None
    srt_path: Path | None = None
    srt_uid_base: int = Field(61000, ge=1000, le=4_000_000_000)
    fast_root: Path = Path("/var/lib/athena-sandbox/fast")
    fast_uid_base: int = Field(62000, ge=1000, le=4_000_000_000)
    egress_pinned_hosts: dict[str, str] = Field(default_factory=dict)
    max_sessions: int = Field(32, ge=0, le=10000)
    session_check_seconds: float = Field(1.0, gt=0, le=60)
    pip_index_url: str = Field("https://pypi.org/simple", pattern=_INDEX_URL)
    pip_files_host: str = Field("files.pythonhosted.org", pattern=r"^[A-Za-z0-9.-]{1,253}$")
    npm_registry: str = Field("https://registry.npmjs.org", pattern=_INDEX_URL)
    node_id: str | None = Field(None, pattern=NODE_ID_PATTERN)

    @field_validator("sandbox_backends", mode="before")
    @classmethod
    def _split_modes(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @field_validator("pool_sizes")
    @classmethod
    def _canonical_languages(cls, sizes: dict[str, int]) -> dict[str, int]:
        try:
            canonical = {get_language(name).name: size for name, size in sizes.items()}
        except UnknownLanguageError as exc:
            raise ValueError(str(exc)) from exc
        if any(size < 0 for size in canonical.values()):
            raise ValueError("pool sizes must be 0 or more")
        return canonical

    def resolved_project_dir(self) -> Path:
        """Return the project directory: the setting, or the current working directory."""
        return self.project_dir if self.project_dir is not None else Path.cwd()

    def allows_mode(self, mode: str) -> bool:
        """Whether this process may use an isolation mode (inprocess only when named)."""
        if self.sandbox_backends is None:
            return mode != "inprocess"
        return mode in self.sandbox_backends

    def pool_size_for(self, language: str) -> int:
        """Return the warm pool size of a language (its override, or pool_size)."""
        return self.pool_sizes.get(language, self.pool_size)

    def image_ref(self, image: str) -> str:
        """Return a language's image reference, e.g. ``athena-sandbox/python:latest``."""
        return f"{self.image_prefix}/{image}:{self.image_tag}"
