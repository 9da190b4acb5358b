"""MemoryAPI: what an agent calls to run code in a sandbox and have the run remembered."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from memory_store.base import Store
from memory_store.factory import open_store
from orchestrator.backends.base import Backend
from orchestrator.models import ExecutionRequest
from orchestrator.orchestrator import Orchestrator
from orchestrator.policy import Policy, load_policy
from orchestrator.settings import Settings


class MemoryAPI:
    """Runs code in throwaway sandboxes and persists every run in the memory store.

    Build one with :meth:`create`; close it (or use ``with``) to release the store and kill
    runs still going.
    """

    def __init__(self, store: Store, orchestrator: Orchestrator, settings: Settings) -> None:
        self._store = store
        self._orchestrator = orchestrator
        self._settings = settings

    @classmethod
    def create(
        cls,
        db_path: str | os.PathLike[str] | None = None,
        *,
        settings: Settings | None = None,
        backends: Sequence[Backend] | None = None,
    ) -> MemoryAPI:
        """Open the memory store and an orchestrator.

        Args:
            db_path: the store: a SQLite path or URL. None: ``ATHENA_MEMORY_URL``, then
                ``ATHENA_MEMORY_DB``, then ``~/.athena/memory.db``.
            settings: settings (default: from ``ATHENA_*`` environment variables).
            backends: isolation backends (default: Docker).

        Raises:
            StoreConfigError: the store path or URL cannot be used.
        """
        settings = settings or Settings()
        store = open_store(db_path, settings)
        orchestrator = Orchestrator(settings=settings, backends=backends, recorder=store)
        return cls(store, orchestrator, settings)

    @property
    def store(self) -> Store:
        """The memory store runs are recorded in."""
        return self._store

    @property
    def orchestrator(self) -> Orchestrator:
        """The orchestrator that runs the code."""
        return self._orchestrator

    def execute_code(
        self,
        code: str,
        language: str = "python",
        parameters: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
        sandbox_policy: Policy | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        track_resources: bool = False,
        record: bool = True,
    ) -> dict[str, Any]:
        """Run code in a fresh sandbox and return the result as a plain dict.

        The dict always has: success, execution_id, stdout, stderr, exit_code,
        execution_time_ms, violations, violation_details, sandbox_id, language, timestamp,
        sandbox_mode, isolation, output, error, error_type, issues (and policy,
        timeout_seconds, resources, total_time_ms). A run that could not happen (no Docker
        engine, a missing image, NUL bytes the language cannot take) gives ``success: False``
        with ``error`` and ``error_type``; rejected code gives ``error: "Code validation
        failed"`` and ``issues``.

        Args:
            code: the source text.
            language: python, javascript or bash (case-insensitive; js, node, sh too).
            parameters: a JSON object handed to the code as data.
            timeout_seconds: seconds before the run is killed; capped by the policy's limit.
            sandbox_policy: a shipped name, a YAML path, a dict or a Policy; None: strict.
            track_resources: add cgroup figures (peak memory, CPU time, wall time).
            record: persist the run in the memory store.

        Raises:
            RequestError: bad arguments (unknown language, timeout <= 0, parameters that are not
                JSON-serialisable, code over the size limit).
            PolicyError: an unknown or invalid policy.
        """
        request = ExecutionRequest.create(
            code,
            language,
            parameters,
            timeout_seconds,
            load_policy(sandbox_policy),
            track_resources=track_resources,
            record=record,
            max_code_bytes=self._settings.max_code_bytes,
            max_parameters_bytes=self._settings.max_parameters_bytes,
        )
        return self._orchestrator.execute(request).to_dict()

    def close(self) -> None:
        """Kill runs still going and close the store."""
        self._orchestrator.close()
        self._store.close()

    def __enter__(self) -> MemoryAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
