"""A session in the docker mode: one container whose interpreter serves one session's calls.

A session's container comes from a pool of its own (same policy settings, plus
``ATHENA_SESSION=1``, which makes the runner and the bootstrap serve call after call): opening a
session costs at most one warm-pool take. The container serves that session alone; when the
session ends, it is killed and removed, never reused. A call that leaves the interpreter gone
(it could not be interrupted at its timeout, or it exited) lets the container go; the next call
takes a fresh one (the orchestrator's session says the state was lost).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING

from orchestrator.backends.docker.sandbox import Blueprint, PoolKey, Sandbox
from orchestrator.context import ExecutionContext
from orchestrator.errors import RequestError, SessionEndedError
from orchestrator.languages import get_language
from orchestrator.models import ExecutionRequest
from orchestrator.run import RunOutcome, RunSpec

if TYPE_CHECKING:
    from orchestrator.backends.docker.backend import DockerBackend

SESSION_KEY_SUFFIX = "+session"
"""Marks a session pool's key (its fingerprint's end): those pools keep one ready container."""


def session_blueprint(blueprint: Blueprint, language: str) -> Blueprint:
    """The blueprint of a language's session containers, from its one-shot blueprint (pure).

    The same settings, plus ``ATHENA_SESSION=1`` in the environment and the language's session
    command when it has one; its own pool key.
    """
    body = dict(blueprint.body)
    body["Env"] = [*(body.get("Env") or []), "ATHENA_SESSION=1"]
    command = get_language(language).session_command
    if command is not None:
        body["Cmd"] = list(command)
    body["Labels"] = {**body.get("Labels", {}), "athena.session": "1"}
    key: PoolKey = (blueprint.key[0], blueprint.key[1] + SESSION_KEY_SUFFIX)
    return dataclasses.replace(blueprint, key=key, body=body)


def is_session_key(key: PoolKey) -> bool:
    """Whether a pool key is a session pool's."""
    return key[1].endswith(SESSION_KEY_SUFFIX)


class DockerSession:
    """The container side of one session: its sandbox, taken at the first call.

    One call at a time (the orchestrator's session serialises them); ``close`` may come from
    another thread (an idle expiry) and kills the container.
    """

    def __init__(self, backend: DockerBackend, blueprint: Blueprint) -> None:
        self._backend = backend
        self._blueprint = blueprint
        self._lock = threading.Lock()
        self._sandbox: Sandbox | None = None
        self._closed = False

    @property
    def sandbox_id(self) -> str | None:
        """The short id of the container serving the session now, if one does."""
        with self._lock:
            return self._sandbox.container_id[:12] if self._sandbox is not None else None

    def start(self, execution_id: str) -> None:
        """Take the session's container now (opening a session is one warm-pool take).

        Raises:
            SessionEndedError: the session was closed meanwhile.
            RunError: no container could be started.
        """
        self._current(execution_id)

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        """Run one call in the session's container (a fresh one after a lost state).

        Raises:
            SessionEndedError: the session was closed.
            RequestError: the call's files could not be written (nothing ran; the state stays).
            RunError: as a one-shot run's (the container is then let go).
        """
        sandbox = self._current(request.execution_id)
        try:
            outcome = self._backend.drive_session_call(sandbox, request, spec, context)
        except RequestError:  # its files were refused before anything ran: the state stays
            raise
        except BaseException:
            self._forget(sandbox)
            raise
        if not outcome.session_alive:
            self._forget(sandbox)
        return outcome

    def close(self) -> None:
        """Kill the session's container (idempotent)."""
        with self._lock:
            self._closed = True
            sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            self._backend.let_go(sandbox)

    def _current(self, execution_id: str) -> Sandbox:
        with self._lock:
            if self._closed:
                raise SessionEndedError("the session is closed")
            if self._sandbox is not None:
                return self._sandbox
        sandbox = self._backend.take_for_session(self._blueprint, execution_id)
        with self._lock:
            if not self._closed and self._sandbox is None:
                self._sandbox = sandbox
                return sandbox
        self._backend.let_go(sandbox)
        raise SessionEndedError("the session was closed while its container started")

    def _forget(self, sandbox: Sandbox) -> None:
        with self._lock:
            if self._sandbox is sandbox:
                self._sandbox = None
        self._backend.let_go(sandbox)
