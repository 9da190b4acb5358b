"""MemoryAPI: what an agent calls to run code in a sandbox, remember, recall and learn.

The code-running half is here; the memory half (remember, recall, forget, events,
procedures, entities, consolidate) is :class:`~memory_store.memory_methods.MemoryMethods`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from memory_store.base import Store
from memory_store.embeddings import EmbeddingsMode
from memory_store.factory import open_store
from memory_store.memory_methods import MemoryMethods
from memory_store.procedures import CodeGenerator
from orchestrator.backends.base import Backend
from orchestrator.errors import PolicyError, RequestError
from orchestrator.models import Event, ExecutionRequest
from orchestrator.orchestrator import Orchestrator
from orchestrator.policy import Policy, load_policy
from orchestrator.settings import Settings

PolicySpec = Policy | Mapping[str, Any] | str | os.PathLike[str] | None
_CALL_KEYS = frozenset(
    {
        "code",
        "language",
        "parameters",
        "timeout_seconds",
        "sandbox_policy",
        "track_resources",
        "record",
    }
)


def _output_listener(
    on_stdout: Callable[[str], None] | None, on_stderr: Callable[[str], None] | None
) -> Callable[[Event], None] | None:
    if on_stdout is None and on_stderr is None:
        return None

    def listen(event: Event) -> None:
        if event.kind == "stdout" and on_stdout is not None:
            on_stdout(event.text)
        elif event.kind == "stderr" and on_stderr is not None:
            on_stderr(event.text)

    return listen


class MemoryAPI(MemoryMethods):
    """Runs code in throwaway sandboxes, persists every run, and remembers what agents learn.

    Build one with :meth:`create`; close it (or use ``with``) to release the store and kill
    runs still going. The memory methods (remember, recall, forget, remember_event,
    recall_events, remember_procedure, generate_procedure_code, validate_procedure_code,
    remember_entity, relate_entities, consolidate) come from
    :class:`~memory_store.memory_methods.MemoryMethods`.
    """

    def __init__(
        self,
        store: Store,
        orchestrator: Orchestrator,
        settings: Settings,
        *,
        code_generator: CodeGenerator | None = None,
    ) -> None:
        self._store = store
        self._orchestrator = orchestrator
        self._settings = settings
        self._code_generator = code_generator

    @classmethod
    def create(
        cls,
        db_path: str | os.PathLike[str] | None = None,
        *,
        settings: Settings | None = None,
        backends: Sequence[Backend] | None = None,
        embeddings: EmbeddingsMode | None = None,
        code_generator: CodeGenerator | None = None,
    ) -> MemoryAPI:
        """Open the memory store and an orchestrator.

        Args:
            db_path: the store: a SQLite path or ``sqlite:///`` URL, or a
                ``postgresql://user:password@host/database`` URL (the ``postgres`` extra).
                None: ``ATHENA_MEMORY_URL``, then ``ATHENA_MEMORY_DB``, then
                ``~/.athena/memory.db``.
            settings: settings (default: from ``ATHENA_*`` environment variables).
            backends: isolation backends (default: Docker).
            embeddings: ``auto`` (hybrid ranking when the embeddings extra is installed),
                ``on`` (required) or ``off``; None: ``ATHENA_MEMORY_EMBEDDINGS``, else auto.
            code_generator: what ``generate_procedure_code`` uses instead of its template
                (any callable from a procedure record to Python source).

        Raises:
            StoreConfigError: the store path or URL cannot be used.
            StoreError: the store cannot be opened (e.g. the PostgreSQL server refuses).
            MissingExtraError: embeddings are ``on`` but the embeddings extra is not installed,
                or a PostgreSQL URL is given without the postgres extra.
        """
        settings = settings or Settings()
        store = open_store(db_path, settings, embeddings=embeddings)
        orchestrator = Orchestrator(settings=settings, backends=backends, recorder=store)
        return cls(store, orchestrator, settings, code_generator=code_generator)

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
        sandbox_policy: PolicySpec = None,
        *,
        track_resources: bool = False,
        record: bool = True,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Run code in a never-used sandbox and return the result as a plain dict.

        The dict always has: success, execution_id, stdout, stderr, exit_code,
        execution_time_ms, violations, violation_details, sandbox_id, language, timestamp,
        sandbox_mode, isolation, output, error, error_type, issues (and policy,
        timeout_seconds, resources, total_time_ms). A run that could not happen (no Docker
        engine, a missing image, NUL bytes the language cannot take, a full queue) gives
        ``success: False`` with ``error`` and ``error_type``; rejected code gives
        ``error: "Code validation failed"`` and ``issues``.

        Args:
            code: the source text.
            language: python, javascript or bash (case-insensitive; js, node, sh too).
            parameters: a JSON object handed to the code as data.
            timeout_seconds: seconds before the run is killed; capped by the policy's limit.
            sandbox_policy: a shipped name, a YAML path, a dict or a Policy; None: strict.
            track_resources: add cgroup figures (peak memory, CPU time, wall time).
            record: persist the run in the memory store.
            on_stdout: called with each chunk of stdout as it arrives.
            on_stderr: called with each chunk of stderr as it arrives.

        Raises:
            RequestError: bad arguments (unknown language, timeout <= 0, parameters that are not
                JSON-serialisable, code over the size limit).
            PolicyError: an unknown or invalid policy.
        """
        request = self._request(
            code, language, parameters, timeout_seconds, sandbox_policy, track_resources, record
        )
        listener = _output_listener(on_stdout, on_stderr)
        return self._orchestrator.execute(request, on_event=listener).to_dict()

    def execute_code_stream(
        self,
        code: str,
        language: str = "python",
        parameters: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
        sandbox_policy: PolicySpec = None,
        *,
        track_resources: bool = False,
        record: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Run code and yield its events as they happen, as plain dicts.

        Each event has ``type``: ``begin``, ``stdout``/``stderr`` (with ``text``),
        ``violation`` (with ``violation`` and ``detail``) and, last, ``exit`` (with
        ``exit_code`` and ``result``, the dict :meth:`execute_code` returns). Closing the
        iterator early kills the run.

        Raises:
            RequestError: bad arguments, as :meth:`execute_code` (before anything runs).
            PolicyError: an unknown or invalid policy.
        """
        request = self._request(
            code, language, parameters, timeout_seconds, sandbox_policy, track_resources, record
        )
        return (event.to_dict() for event in self._orchestrator.stream(request))

    async def execute_code_async(
        self,
        code: str,
        language: str = "python",
        parameters: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
        sandbox_policy: PolicySpec = None,
        *,
        track_resources: bool = False,
        record: bool = True,
    ) -> dict[str, Any]:
        """Like :meth:`execute_code`, for asyncio; cancelling the awaiting task kills the run.

        Raises:
            RequestError: bad arguments, as :meth:`execute_code`.
            PolicyError: an unknown or invalid policy.
        """
        request = self._request(
            code, language, parameters, timeout_seconds, sandbox_policy, track_resources, record
        )
        return (await self._orchestrator.aexecute(request)).to_dict()

    def execute_code_batch(
        self, calls: Sequence[Mapping[str, Any]], concurrency: int = 4
    ) -> list[dict[str, Any]]:
        """Run several calls, ``concurrency`` at a time; return their dicts in the same order.

        Each call is a mapping of :meth:`execute_code`'s arguments (``code`` required). Every
        call is checked before any runs.

        Raises:
            RequestError: a call has bad arguments (the message names its index).
            PolicyError: a call names an unknown or invalid policy.
        """
        requests = []
        for index, call in enumerate(calls):
            try:
                request = self._request_from_call(call)
                self._orchestrator.check(request)  # mounts too: nothing runs if any call is bad
            except (RequestError, PolicyError) as exc:
                raise type(exc)(f"calls[{index}]: {exc}") from exc
            requests.append(request)
        return [r.to_dict() for r in self._orchestrator.run_many(requests, concurrency)]

    def prewarm(self, language: str = "python", sandbox_policy: PolicySpec = None) -> bool:
        """Fill the warm pool of (language, policy) now, so the next run skips a cold start."""
        return self._orchestrator.prewarm(language, load_policy(sandbox_policy))

    def _request(
        self,
        code: str,
        language: str,
        parameters: Mapping[str, Any] | None,
        timeout_seconds: float | None,
        sandbox_policy: PolicySpec,
        track_resources: bool,
        record: bool,
    ) -> ExecutionRequest:
        return ExecutionRequest.create(
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

    def _request_from_call(self, call: Mapping[str, Any]) -> ExecutionRequest:
        if not isinstance(call, Mapping):
            raise RequestError(
                f"a call must be a dict of execute_code's arguments, not {type(call).__name__}"
            )
        for flag in ("track_resources", "record"):
            if not isinstance(call.get(flag, False), bool):
                raise RequestError(f"'{flag}' must be true or false, not {call[flag]!r}")
        unknown = set(call) - _CALL_KEYS
        if unknown or "code" not in call:
            raise RequestError(
                f"a call needs 'code' and may have {', '.join(sorted(_CALL_KEYS - {'code'}))}"
                + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else "")
            )
        return self._request(
            call["code"],
            call.get("language", "python"),
            call.get("parameters"),
            call.get("timeout_seconds"),
            call.get("sandbox_policy"),
            call.get("track_resources", False),
            call.get("record", True),
        )

    def close(self) -> None:
        """Kill runs still going and close the store."""
        self._orchestrator.close()
        self._store.close()

    def __enter__(self) -> MemoryAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
