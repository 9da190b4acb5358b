"""A session of :class:`~athena.api.MemoryAPI`: calls that share one interpreter.

``api.open_session("python")`` returns a :class:`SandboxSession`. Its calls run one at a time in
one sandbox that serves this session alone: Python keeps its globals and imports, JavaScript its
global scope, bash its working directory, variables and functions; files under ``/workspace``
stay for the session's life. Each result is :meth:`MemoryAPI.execute_code`'s dict with
``session_id`` and ``session_state`` (``kept``, ``restarted`` or ``ended``; see
:mod:`orchestrator.sessions`). Every call is recorded under the session's id, so
``api.replay_session(session_id)`` can rebuild its state in a new session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.errors import RequestError, SessionEndedError
from orchestrator.models import Event
from orchestrator.policy import Policy
from orchestrator.sessions import Session

if TYPE_CHECKING:
    from athena.api import MemoryAPI

DEFAULT_CALL_TIMEOUT = 30.0
"""A session call's timeout when none is given (capped by the policy's)."""


class SandboxSession:
    """An open session (a context manager: leaving the ``with`` block closes it).

    Attributes:
        replayed: the results of the calls :meth:`MemoryAPI.replay_session` ran to rebuild
            this session's state (empty for a session opened with ``open_session``).
    """

    def __init__(self, api: MemoryAPI, session: Session, policy: Policy) -> None:
        self._api = api
        self._session = session
        self._policy = policy
        self.replayed: list[dict[str, Any]] = []

    def __enter__(self) -> SandboxSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._session.ended is None else "ended"
        return f"<SandboxSession {self.session_id} {self.language} {state}>"

    @property
    def session_id(self) -> str:
        """The session's id (what ``api.session(id)`` and the service take)."""
        return self._session.session_id

    @property
    def language(self) -> str:
        """The language of its calls."""
        return self._session.language

    @property
    def policy(self) -> str:
        """The name of its policy."""
        return self._session.policy

    @property
    def closed(self) -> bool:
        """Whether the session has ended (closed, expired or ended by a violation)."""
        return self._session.ended is not None

    def info(self) -> dict[str, Any]:
        """What :meth:`MemoryAPI.sessions` lists for it (ids, times, calls, state)."""
        return self._session.info()

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
        """Run code in the session, after its earlier calls; return the result dict.

        The dict is :meth:`MemoryAPI.execute_code`'s, with ``session_id`` and
        ``session_state``: ``kept`` (a timeout included, when the interpreter stopped at the
        interrupt), ``restarted`` (the interpreter could not be interrupted or exited: the state
        is lost, the next call starts fresh) or ``ended`` (a memory or process violation ended
        the session). ``output`` is per call: set it in the call whose value you want.

        Args:
            code: the source text.
            parameters: a JSON object, this call's ``parameters``.
            timeout_seconds: seconds before the call is interrupted (capped by the policy).
            files: written under ``/workspace`` before the code starts (see
                :meth:`MemoryAPI.execute_code`); only files under ``/workspace/out`` that
                changed during the call come back.
            capture_figures: return figures left open or shown as PNG artifacts.
            track_resources: add cgroup figures (memory peak: the session's so far).
            record: persist the call in the memory store (under the session's id).
            on_stdout: called with each chunk of stdout as it arrives.
            on_stderr: called with each chunk of stderr as it arrives.
            requirements: packages installed before this call's code, on top of the
                session's (see :meth:`MemoryAPI.execute_code`); they stay for later calls
                (a ``restarted`` session has lost them with the rest of its state).

        Raises:
            SessionEndedError: the session has ended (the message says why).
            RequestError: bad arguments, or files that could not be written (nothing ran).
            PolicyError: requirements the session's policy cannot install.
        """
        self._session.check_open()
        request = self._api._request(
            code,
            self.language,
            parameters,
            timeout_seconds,
            self._policy,
            track_resources,
            record,
            files=files,
            capture_figures=capture_figures,
            image=self._session.image,
            session_id=self.session_id,
            requirements=requirements,
        )
        listener = output_listener(on_stdout, on_stderr)
        result = self._api.orchestrator.execute(request, on_event=listener, session=self._session)
        return result.to_dict()

    def _install(self, requirements: Sequence[str]) -> None:
        """Install packages for the session's later calls (an internal call, not recorded).

        Raises:
            SessionEndedError: the session has ended.
            RequestError: the packages could not be installed (the message has the
                installer's error).
            PolicyError: requirements the session's policy cannot install.
        """
        result = self.execute_code(
            "",
            timeout_seconds=self._policy.limits.timeout_seconds,
            capture_figures=False,
            record=False,
            requirements=requirements,
        )
        if not result["success"]:
            raise RequestError(
                f"the session's requirements could not be installed: "
                f"{(result['error'] or result['stderr'])[-2000:]}"
            )

    def close(self) -> None:
        """End the session and kill its sandbox; later calls raise ``SessionEndedError``."""
        self._session.close()


def output_listener(
    on_stdout: Callable[[str], None] | None, on_stderr: Callable[[str], None] | None
) -> Callable[[Event], None] | None:
    """An event listener that hands stdout and stderr chunks to two callbacks (None: none)."""
    if on_stdout is None and on_stderr is None:
        return None

    def listen(event: Event) -> None:
        if event.kind == "stdout" and on_stdout is not None:
            on_stdout(event.text)
        elif event.kind == "stderr" and on_stderr is not None:
            on_stderr(event.text)

    return listen


__all__ = ["DEFAULT_CALL_TIMEOUT", "SandboxSession", "SessionEndedError"]
