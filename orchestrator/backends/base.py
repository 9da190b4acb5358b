"""The seam every isolation backend implements.

A backend runs one request in its sandbox, feeds the :class:`ExecutionContext` as output arrives
and returns a :class:`~orchestrator.run.RunOutcome`: the facts of the run (exit status, timeout,
OOM, ...). The orchestrator turns facts into violations and the public result, the same way for
every backend.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from orchestrator.context import ExecutionContext
from orchestrator.errors import BackendUnavailableError
from orchestrator.models import ExecutionRequest
from orchestrator.run import RunOutcome, RunSpec


@runtime_checkable
class Backend(Protocol):
    """An isolation backend: docker, srt, restricted or inprocess."""

    name: str

    def unavailable_reason(self, language: str) -> str | None:
        """Why this backend cannot run ``language`` on this machine now, with how to fix it.

        None means it can. Called before each run; a backend caches what is costly to check.
        """
        ...

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        """Run the request in a fresh sandbox, feeding ``context`` as output arrives.

        Raises:
            RunError: the sandbox could not start or broke before reporting.
        """
        ...

    def close(self) -> None:
        """Release everything the backend holds; kill runs still going."""
        ...


def ensure_available(backend: Backend, language: str) -> None:
    """Raise when ``backend`` cannot run ``language`` here.

    Raises:
        BackendUnavailableError: with the backend's reason and how to fix it.
    """
    reason = backend.unavailable_reason(language)
    if reason:
        raise BackendUnavailableError(reason)
