"""What the HTTP app shares between requests: the API, its tenant views, limits, metrics, drain.

:class:`Service` lives on ``app.state.service``. Each request's tenant gets its own view of the
one :class:`~athena.api.MemoryAPI` (``for_tenant``, cached by name), so everything it reads
and writes is confined to that tenant. Runs started over HTTP are asyncio tasks the service
keeps, so a drain that outlasts its grace period can cancel them (which kills their sandboxes
and records them as cancelled).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from athena.service.inflight import InFlight
from athena.service.metrics import ServiceMetrics
from athena.service.wire import ServiceUnavailableError
from orchestrator.errors import QueueFullError, RequestError

if TYPE_CHECKING:
    from athena.api import MemoryAPI
    from athena.service.proxy import Cluster
    from athena.service.tokens import Tenant
    from athena.sessions import SandboxSession

log = structlog.get_logger(__name__)
T = TypeVar("T")
DRAINING_MESSAGE = "the server is shutting down and takes no new runs; retry on another server"
DEFAULT_MAX_SESSIONS_PER_TENANT = 8
"""How many sessions one tenant may have open at once (``ATHENA_MAX_SESSIONS_PER_TENANT``)."""
SESSIONS_PER_TENANT_ENV = "ATHENA_MAX_SESSIONS_PER_TENANT"
DRAIN_REASON = "the server shut down (SIGTERM): its sessions were closed after their calls"
ENDED_KEPT = 1024  # ended sessions whose reason a later request can still be told


def sessions_per_tenant_from_env() -> int:
    """``ATHENA_MAX_SESSIONS_PER_TENANT``, or :data:`DEFAULT_MAX_SESSIONS_PER_TENANT`.

    Raises:
        RequestError: the variable is set but not a whole number of at least 1.
    """
    raw = os.environ.get(SESSIONS_PER_TENANT_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_SESSIONS_PER_TENANT
    if not raw.isdigit() or int(raw) < 1:
        raise RequestError(
            f"{SESSIONS_PER_TENANT_ENV} must be a whole number of at least 1, not {raw!r}"
        )
    return int(raw)


class Service:
    """The state one HTTP app shares between its requests.

    Args:
        api: the local API every tenant's view shares.
        grace_seconds: how long a drain lets runs in flight finish before it kills them.
        in_flight: the per-tenant counter (shared with the MCP mount; default: a new one).
    """

    def __init__(
        self,
        api: MemoryAPI,
        grace_seconds: float,
        in_flight: InFlight | None = None,
        max_sessions_per_tenant: int = DEFAULT_MAX_SESSIONS_PER_TENANT,
    ) -> None:
        self.api = api
        self.grace_seconds = grace_seconds
        self.in_flight = in_flight or InFlight()
        self.max_sessions_per_tenant = max_sessions_per_tenant
        self._opening: dict[str, int] = {}
        # Sessions opened or closed here, newest last: (tenant, session).
        self._known: OrderedDict[str, tuple[str, SandboxSession]] = OrderedDict()
        self._sessions_closer: threading.Thread | None = None
        self.metrics = ServiceMetrics(api.orchestrator, self.in_flight.counts, self.is_draining)
        self._views: dict[str, MemoryAPI] = {}
        self._lock = threading.Lock()
        self._draining_since: float | None = None
        self._killed = False
        self._runs: set[asyncio.Task[Any]] = set()
        self.cluster: Cluster | None = None  # set on a node of a cluster

    def view(self, tenant: Tenant) -> MemoryAPI:
        """The API confined to ``tenant`` (made once per tenant name)."""
        with self._lock:
            view = self._views.get(tenant.name)
            if view is None:
                view = self.api.for_tenant(tenant.name)
                self._views[tenant.name] = view
            return view

    # ------------------------------------------------------------------ drain

    def is_draining(self) -> bool:
        """Whether the server drains (no new runs)."""
        return self._draining_since is not None

    def start_draining(self) -> None:
        """Take no new runs from now on (idempotent; safe from a signal handler)."""
        if self._draining_since is None:
            self._draining_since = time.monotonic()

    def refuse_if_draining(self) -> None:
        """Refuse a new run while draining.

        Raises:
            ServiceUnavailableError: the server drains (HTTP 503 ``Draining``).
        """
        if self._draining_since is not None:
            raise ServiceUnavailableError(DRAINING_MESSAGE)

    def drain_done(self) -> bool:
        """Whether the drain may end: no run in flight, or the grace period is over.

        Once the grace period is over, the runs still going are cancelled (killed, recorded).
        """
        if self._draining_since is None:
            return False
        if self.in_flight.total() == 0 and not self._runs:
            return self._sessions_closed()
        if time.monotonic() - self._draining_since < self.grace_seconds:
            return False
        if not self._killed:  # once: a second cancel would cut short the kill and the record
            self._killed = True
            log.warning("grace period over: killing runs in flight", runs=len(self._runs))
            for task in list(self._runs):
                task.cancel()
        return not self._runs and self._sessions_closed()

    def _sessions_closed(self) -> bool:
        """Close every open session (once, in a thread: each kills a container); True when done."""
        if self._sessions_closer is None:
            sessions = self.api.orchestrator.sessions()
            log.info("closing sessions", sessions=len(sessions))

            def close_all() -> None:
                for session in sessions:
                    session.close(DRAIN_REASON)

            self._sessions_closer = threading.Thread(
                target=close_all, name="athena-drain-sessions", daemon=True
            )
            self._sessions_closer.start()
        return not self._sessions_closer.is_alive()

    # ------------------------------------------------------------------ sessions

    @contextmanager
    def session_slot(self, tenant: Tenant) -> Iterator[None]:
        """Hold a place for one session of ``tenant`` while it opens.

        Raises:
            QueueFullError: the tenant has ``max_sessions_per_tenant`` sessions open (or
                opening) already (HTTP 429).
        """
        name = tenant.name
        with self._lock:
            held = len(self.api.orchestrator.sessions(tenant=name)) + self._opening.get(name, 0)
            if held >= self.max_sessions_per_tenant:
                raise QueueFullError(
                    f"tenant {name!r} has {held} sessions open, its limit "
                    f"({SESSIONS_PER_TENANT_ENV}={self.max_sessions_per_tenant}): close one "
                    "(DELETE /v1/sessions/{id}) or let one expire"
                )
            self._opening[name] = self._opening.get(name, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._opening[name] - 1
                if left:
                    self._opening[name] = left
                else:
                    del self._opening[name]

    def remember_session(self, tenant: Tenant, session: SandboxSession) -> None:
        """Keep a session of ``tenant``, so a request after its end is told why it ended."""
        with self._lock:
            self._known[session.session_id] = (tenant.name, session)
            while len(self._known) > ENDED_KEPT + self.api.orchestrator.settings.max_sessions:
                oldest = next(iter(self._known))
                if not self._known[oldest][1].closed:
                    self._known.move_to_end(oldest)  # still open: the oldest ended one goes
                    continue
                del self._known[oldest]

    def ended_session(self, session_id: str, tenant: Tenant) -> SandboxSession | None:
        """The ended session of ``tenant`` with this id, if the service keeps it."""
        with self._lock:
            known = self._known.get(session_id)
        if known is None or known[0] != tenant.name or not known[1].closed:
            return None
        return known[1]

    # ------------------------------------------------------------------ runs

    @contextmanager
    def running(self, task: asyncio.Task[Any]) -> Iterator[None]:
        """Count ``task`` (one awaiting a run) among those a drain waits for and may cancel."""
        self._runs.add(task)
        try:
            yield
        finally:
            self._runs.discard(task)

    @property
    def killed(self) -> bool:
        """Whether the drain's grace period ended and the runs still going were cancelled."""
        return self._killed

    def start_run(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` as a task the drain can cancel."""
        task = asyncio.ensure_future(work)
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        return task

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` to its end as a task the drain can cancel.

        Raises:
            ServiceUnavailableError: the drain's grace period ended first; the run was killed.
        """
        task = self.start_run(work)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():  # our caller was cancelled, not the run: stop the run too
                task.cancel()
                await asyncio.wait([task])
                raise
            raise ServiceUnavailableError(
                "the server shut down before the run finished; the run was killed"
            ) from None
