"""RemoteSession: :class:`~athena.sessions.SandboxSession`'s methods, over the HTTP API.

``RemoteMemoryAPI.open_session(...)`` (and ``session``, ``replay_session``) return one. Its
``execute_code`` has the local signature and result dict (``files`` and ``artifacts`` contents
as bytes; with ``on_stdout`` or ``on_stderr`` the call is streamed and they get each chunk as
it arrives); a session that ended raises :class:`~orchestrator.errors.SessionEndedError` with
the server's reason (HTTP 410). What differs, because a process boundary is crossed:

- ``closed`` and ``info()`` ask the server (one request each) until the session is known to
  have ended;
- a call whose client is closed or cancelled is killed on the server, which kills the
  session's sandbox: the session goes on, and its next call starts with fresh state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from athena.service import remote, wire
from athena.sessions import DEFAULT_CALL_TIMEOUT
from orchestrator.errors import SessionEndedError
from orchestrator.models import ExecutionRequest

if TYPE_CHECKING:
    from athena.service.client import RemoteMemoryAPI

MAX_SESSION_ID_CHARS = 256


def session_path(session_id: object) -> str:
    """The URL path of a session.

    Raises:
        SessionEndedError: what a local lookup raises for an id no session can have (not a
            string, empty, over 256 characters, or with ``/``).
    """
    if (
        not isinstance(session_id, str)
        or not session_id
        or len(session_id) > MAX_SESSION_ID_CHARS
        or "/" in session_id
    ):
        shown = session_id[:80] if isinstance(session_id, str) else type(session_id).__name__
        raise SessionEndedError(
            f"no open session {shown!r}: it ended (closed, expired or ended by a violation) or "
            "never existed; open a new one",
            session_id=shown,
            reason="no open session has this id",
        )
    return f"/v1/sessions/{quote(session_id, safe='')}"


class RemoteSession:
    """An open session on a server (a context manager: leaving ``with`` closes it).

    Attributes:
        replayed: the results of the calls ``replay_session`` ran to rebuild this session's
            state (empty for a session opened with ``open_session``).
    """

    def __init__(self, client: RemoteMemoryAPI, info: Mapping[str, Any]) -> None:
        self._client = client
        self._info = dict(info)
        self._ended = self._info.get("state") == "ended"
        self.replayed: list[dict[str, Any]] = []

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "ended" if self._ended else "open"
        return f"<RemoteSession {self.session_id} {self.language} {state}>"

    @property
    def session_id(self) -> str:
        """The session's id (what ``session(id)`` takes)."""
        return str(self._info.get("session_id", ""))

    @property
    def language(self) -> str:
        """The language of its calls."""
        return str(self._info.get("language", ""))

    @property
    def policy(self) -> str:
        """The name of its policy."""
        return str(self._info.get("policy", ""))

    @property
    def closed(self) -> bool:
        """Whether the session has ended (closed, expired or ended by a violation).

        Raises:
            ServiceError: the server cannot be asked.
        """
        if not self._ended:
            self.info()
        return self._ended

    def info(self) -> dict[str, Any]:
        """What ``sessions()`` lists for it (ids, times, calls, state), as the server tells it.

        Raises:
            ServiceError: the server cannot be asked.
        """
        if not self._ended:
            try:
                answer = self._client._call("GET", self._path, None, self._client._timeouts(None))
            except SessionEndedError as exc:
                self._end(exc.reason)
            else:
                self._info = dict(answer) if isinstance(answer, dict) else self._info
                self._ended = self._info.get("state") == "ended"
        return dict(self._info)

    def execute_code(
        self,
        code: str,
        parameters: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = DEFAULT_CALL_TIMEOUT,
        files: Mapping[str, bytes | str] | None = None,
        *,
        capture_figures: bool = True,
        track_resources: bool = False,
        record: bool = True,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        requirements: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Run code in the session on the server; return the result dict (as locally).

        With ``on_stdout`` or ``on_stderr`` the call is streamed (Server-Sent Events) and each
        chunk of output is handed to them as it arrives.

        Raises:
            SessionEndedError: the session has ended (the message says why).
            RequestError: bad arguments, or files that could not be written (nothing ran).
            ServiceError: the service refused (``TooManyRunsError``: no slot is free).
        """
        body = {
            "code": code,
            "parameters": remote.plain(parameters),
            "timeout_seconds": timeout_seconds,
            "track_resources": track_resources,
            "record": record,
            **remote.extras(files, capture_figures, None, requirements),
        }

        def check() -> None:
            ExecutionRequest.create(code, self.language, parameters, timeout_seconds)

        content = remote.encode(body, check)
        timeouts = self._client._timeouts(timeout_seconds)
        try:
            if on_stdout is None and on_stderr is None:
                answer = self._client._call("POST", self._path + "/execute", content, timeouts)
                result: dict[str, Any] = wire.result_from_wire(answer)
            else:
                path = self._path + "/execute/stream"
                result = self._client._streamed(content, timeouts, on_stdout, on_stderr, path)
        except SessionEndedError as exc:
            self._end(exc.reason)
            raise
        if result.get("session_state") == "ended":
            self._ended = True
        return result

    def close(self) -> None:
        """End the session and kill its sandbox; later calls raise ``SessionEndedError``.

        Idempotent: closing a session that already ended does nothing.

        Raises:
            ServiceError: the server cannot be asked.
        """
        if self._ended:
            return
        try:
            answer = self._client._call("DELETE", self._path, None, self._client._timeouts(None))
        except SessionEndedError as exc:
            self._end(exc.reason)
            return
        if isinstance(answer, dict):
            self._info = dict(answer)
        self._ended = True

    @property
    def _path(self) -> str:
        return session_path(self.session_id)

    def _end(self, reason: str) -> None:
        self._ended = True
        self._info.update(state="ended", ended_reason=reason or self._info.get("ended_reason"))


__all__ = ["RemoteSession", "session_path"]
