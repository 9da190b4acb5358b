"""Sessions: calls that share one interpreter, so state survives from call to call.

A :class:`Session` runs its calls one at a time in one sandbox that serves it alone (the
backend's session object, e.g. the docker mode's ``DockerSession``). Each call goes through the
orchestrator's whole pipeline (validation, admission, the result, the record with the session's
id) and then the session judges what the call did to it (:func:`judge`):

- ``kept``: the state is there for the next call (a timeout the interpreter stopped at counts);
- ``restarted``: the interpreter is gone (it could not be interrupted at the timeout, or it
  exited): the next call starts in a fresh sandbox, and this call's result says so;
- ``ended``: a memory or process violation ended the session: the next call raises
  :class:`~orchestrator.errors.SessionEndedError` with the reason.

:class:`SessionRegistry` keeps the open sessions of an orchestrator, enforces their idle and
lifetime limits from a thread of its own (whether or not the caller remembers to close them), and
closes them all when the orchestrator closes. A process that dies leaves nothing behind either:
the sandboxes are the backend's, watched by its owner watchdog and swept at the next start.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from orchestrator.context import ExecutionContext
from orchestrator.errors import QueueFullError, RequestError, SessionEndedError
from orchestrator.models import ExecutionRequest, SessionState, finite_seconds, shown_number
from orchestrator.policy import Policy
from orchestrator.run import RunOutcome, RunSpec
from orchestrator.settings import NODE_ID_PATTERN

log = structlog.get_logger(__name__)

_RESTARTED = (
    "the session's interpreter ended (it could not be interrupted, or it exited): its state is "
    "lost, and the next call starts in a fresh sandbox"
)
MAX_SESSION_SECONDS = 7 * 24 * 3600.0
"""The longest idle timeout or lifetime a session may ask for (a week)."""


NODE_SEPARATOR = "."
# <node id>.<32 hex>: what new_session_id makes on a node, and nothing else.
_NODE_SESSION_ID = re.compile(
    f"({NODE_ID_PATTERN.removeprefix('^').removesuffix('$')})"
    + re.escape(NODE_SEPARATOR)
    + "[0-9a-f]{32}"
)


def new_session_id(node_id: str | None = None) -> str:
    """A new session id: 32 hex digits, after ``<node id>.`` on a node of a cluster.

    The node's name in the id is what lets any node of a cluster send a request for the
    session to the one that holds it (node ids have no ``.``).
    """
    unique = uuid.uuid4().hex
    return unique if node_id is None else f"{node_id}{NODE_SEPARATOR}{unique}"


def session_node(session_id: str) -> str | None:
    """The node a well-formed node session id names (None: an id of no node, or malformed)."""
    match = _NODE_SESSION_ID.fullmatch(session_id)
    return None if match is None else match[1]


class BackendSession(Protocol):
    """The sandbox side of a session (a backend's ``open_session`` returns one)."""

    @property
    def sandbox_id(self) -> str | None:
        """The sandbox serving the session now, if any."""

    def start(self, execution_id: str) -> None:
        """Take the session's sandbox now."""

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        """Run one call in the session's sandbox."""

    def close(self) -> None:
        """Kill the session's sandbox."""


def judge(outcome: RunOutcome) -> tuple[SessionState, str | None]:
    """What a call did to its session, and why it ended (pure).

    A memory or process violation ends the session even when the interpreter survived it (a
    fork bomb's leftovers or a half-freed heap are no state to go on with).
    """
    when = "what the code left running between calls" if outcome.between_calls else "a call"
    if outcome.oom_killed:
        return "ended", f"{when} ran out of memory (a memory violation ends the session)"
    if outcome.pids_limit_hits:
        return "ended", f"{when} reached the process limit (a process violation ends the session)"
    if outcome.session_alive:
        return "kept", None
    return "restarted", None


def check_limit(value: object, name: str) -> float:
    """A session's idle timeout or lifetime in seconds.

    Raises:
        RequestError: not a finite number of seconds in (0, a week].
    """
    seconds = None if isinstance(value, bool) else finite_seconds(value)
    if seconds is None or not 0 < seconds <= MAX_SESSION_SECONDS:
        raise RequestError(
            f"{name} must be a number of seconds greater than 0 and at most "
            f"{MAX_SESSION_SECONDS:g} (a week), not {shown_number(value)}"
        )
    return seconds


@dataclass(frozen=True)
class SessionLimits:
    """How long a session may sit unused, and live at all (seconds)."""

    idle_timeout: float = 600.0
    max_lifetime: float = 3600.0


class Session:
    """One open session (thread-safe; its calls run one at a time, in order of arrival).

    Built by :meth:`orchestrator.orchestrator.Orchestrator.open_session`; calls go through
    :meth:`Orchestrator.run` with ``session=``.

    Attributes:
        session_id: its id (32 hex digits).
        language: the language of every call.
        policy: the policy of every call (name).
        tenant: whose session it is.
        image: the custom image its sandbox runs, if any.
        policy_config: the policy itself.
    """

    def __init__(
        self,
        backend: BackendSession,
        *,
        mode: str,
        language: str,
        policy: str,
        tenant: str,
        limits: SessionLimits,
        image: str | None = None,
        policy_config: Policy | None = None,
        on_end: Callable[[Session], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        node_id: str | None = None,
    ) -> None:
        self.session_id = new_session_id(node_id)
        self.mode, self.language, self.policy, self.tenant = mode, language, policy, tenant
        self.image = image
        self.policy_config = policy_config
        self.limits = limits
        self._backend = backend
        self._on_end = on_end
        self._clock = clock
        self._lock = threading.Lock()
        self.call_lock = threading.Lock()  # one call at a time
        self.created_at = datetime.now(UTC)
        self._born = clock()
        self._last_used = self._born
        self._busy = 0
        self._calls = 0
        self._restarts = 0
        self._ended: str | None = None

    # ------------------------------------------------------------------ state

    @property
    def ended(self) -> str | None:
        """Why the session ended, or None while it is open."""
        with self._lock:
            return self._ended

    def check_open(self) -> None:
        """Raise when the session is over.

        Raises:
            SessionEndedError: with the reason it ended.
        """
        reason = self.ended
        if reason is not None:
            raise SessionEndedError(
                f"session {self.session_id} has ended: {reason}; open a new session "
                "(or replay this one into a new one with replay_session)",
                session_id=self.session_id,
                reason=reason,
            )

    def info(self) -> dict[str, Any]:
        """What ``sessions()`` lists: ids, language, policy, times, calls, state."""
        with self._lock:
            now = self._clock()
            return {
                "session_id": self.session_id,
                "language": self.language,
                "policy": self.policy,
                "tenant": self.tenant,
                "image": self.image,
                "sandbox_mode": self.mode,
                "sandbox_id": self._backend.sandbox_id,
                "created_at": self.created_at.isoformat(),
                "idle_seconds": round(0.0 if self._busy else now - self._last_used, 3),
                "age_seconds": round(now - self._born, 3),
                "idle_timeout_seconds": self.limits.idle_timeout,
                "max_lifetime_seconds": self.limits.max_lifetime,
                "calls": self._calls,
                "restarts": self._restarts,
                "busy": bool(self._busy),
                "state": "open" if self._ended is None else "ended",
                "ended_reason": self._ended,
            }

    # ------------------------------------------------------------------ calls

    def start(self, execution_id: str) -> None:
        """Take the session's sandbox (opening costs one warm-pool take)."""
        self._backend.start(execution_id)

    def begin_call(self) -> None:
        """Mark a call in flight (idle time stops); raise when the session is over.

        Raises:
            SessionEndedError: the session is over.
        """
        with self._lock:
            if self._ended is None:
                self._busy += 1
                self._calls += 1
                return
        self.check_open()

    def end_call(self) -> None:
        """Mark the call done: idle time counts from now."""
        with self._lock:
            self._busy -= 1
            self._last_used = self._clock()

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> tuple[RunOutcome, SessionState]:
        """Run one call in the session's sandbox; return its outcome and what it did to us.

        Raises:
            SessionEndedError: the session ended before or during the call.
            RequestError: the call's files could not be written (nothing ran; state kept).
            RunError: the call failed (the state is lost: the next call starts fresh).
        """
        try:
            outcome = self._backend.run(request, spec, context)
        except RequestError:
            raise
        except Exception as exc:
            reason = self.ended
            if reason is not None:
                raise SessionEndedError(
                    f"session {self.session_id} ended during the call: {reason}",
                    session_id=self.session_id,
                    reason=reason,
                ) from exc
            with self._lock:
                self._restarts += 1
            raise
        state, reason = judge(outcome)
        if state == "restarted":
            with self._lock:
                self._restarts += 1
            outcome = dataclasses.replace(outcome, notes=(*outcome.notes, _RESTARTED))
        elif state == "ended" and reason is not None:
            self.close(reason)
        return outcome, state

    def close(self, reason: str = "closed by its caller") -> bool:
        """End the session and kill its sandbox; later calls raise. Idempotent.

        Returns:
            True when this call ended it.
        """
        with self._lock:
            if self._ended is not None:
                return False
            self._ended = reason
        try:
            self._backend.close()
        finally:
            log.info("session ended", session_id=self.session_id, reason=reason)
            if self._on_end is not None:
                self._on_end(self)
        return True

    def expired(self) -> str | None:
        """Why the session should end now (idle or too old), or None."""
        with self._lock:
            if self._ended is not None:
                return None
            now = self._clock()
            if now - self._born >= self.limits.max_lifetime:
                return f"it reached its max lifetime of {self.limits.max_lifetime:g} s"
            if not self._busy and now - self._last_used >= self.limits.idle_timeout:
                return f"it was idle for {self.limits.idle_timeout:g} s (its idle timeout)"
            return None


class SessionRegistry:
    """The open sessions of one orchestrator, with the thread that enforces their limits.

    Args:
        max_sessions: how many may be open at once.
        check_every: seconds between two checks of the limits.
    """

    def __init__(self, max_sessions: int, check_every: float = 1.0) -> None:
        self._max = max_sessions
        self._every = check_every
        self._lock = threading.Condition()
        self._open: dict[str, Session] = {}
        self._closed = False
        self._thread: threading.Thread | None = None

    def reserve(self) -> None:
        """Raise when no further session may open.

        Raises:
            QueueFullError: ``max_sessions`` are open (the message says how to go on).
            SessionEndedError: the orchestrator is closed.
        """
        with self._lock:
            if self._closed:
                raise SessionEndedError("this orchestrator is closed; create a new one")
            if len(self._open) >= self._max:
                raise QueueFullError(
                    f"{len(self._open)} sessions are open, the most this process allows "
                    f"(ATHENA_MAX_SESSIONS={self._max}): close one, or let one expire"
                )

    def add(self, session: Session) -> None:
        """Keep an opened session (and start the limits' thread at the first)."""
        with self._lock:
            self._open[session.session_id] = session
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="athena-sessions", daemon=True
                )
                self._thread.start()
            self._lock.notify_all()

    def forget(self, session: Session) -> None:
        """Drop an ended session."""
        with self._lock:
            self._open.pop(session.session_id, None)

    def get(self, session_id: str) -> Session | None:
        """The open session of this id, or None."""
        with self._lock:
            return self._open.get(session_id)

    def all(self) -> list[Session]:
        """The open sessions, oldest first."""
        with self._lock:
            return sorted(self._open.values(), key=lambda s: s.created_at)

    def close(self) -> None:
        """End every session (the orchestrator is closing) and stop the thread."""
        with self._lock:
            self._closed = True
            sessions = list(self._open.values())
            thread, self._thread = self._thread, None
            self._lock.notify_all()
        for session in sessions:
            session.close("the orchestrator was closed")
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _watch(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                self._lock.wait(self._every)
                sessions = list(self._open.values())
            for session in sessions:
                reason = session.expired()
                if reason is not None:
                    session.close(reason)
