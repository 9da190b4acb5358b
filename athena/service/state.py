"""What the HTTP app shares between requests: the API, its tenant views, limits, metrics, drain.

:class:`Service` lives on ``app.state.service``. Each request's tenant gets its own view of the
one :class:`~athena.api.MemoryAPI` (``for_tenant``, cached by name), so everything it reads
and writes is confined to that tenant. Runs started over HTTP are asyncio tasks the service
keeps, so a drain that outlasts its grace period can cancel them (which kills their sandboxes
and records them as cancelled).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from athena.service.inflight import InFlight
from athena.service.metrics import ServiceMetrics
from athena.service.wire import ServiceUnavailableError

if TYPE_CHECKING:
    from athena.api import MemoryAPI
    from athena.service.tokens import Tenant

log = structlog.get_logger(__name__)
T = TypeVar("T")
DRAINING_MESSAGE = "the server is shutting down and takes no new runs; retry on another server"


class Service:
    """The state one HTTP app shares between its requests.

    Args:
        api: the local API every tenant's view shares.
        grace_seconds: how long a drain lets runs in flight finish before it kills them.
        in_flight: the per-tenant counter (shared with the MCP mount; default: a new one).
    """

    def __init__(
        self, api: MemoryAPI, grace_seconds: float, in_flight: InFlight | None = None
    ) -> None:
        self.api = api
        self.grace_seconds = grace_seconds
        self.in_flight = in_flight or InFlight()
        self.metrics = ServiceMetrics(api.orchestrator, self.in_flight.counts, self.is_draining)
        self._views: dict[str, MemoryAPI] = {}
        self._lock = threading.Lock()
        self._draining_since: float | None = None
        self._killed = False
        self._runs: set[asyncio.Task[Any]] = set()

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
            return True
        if time.monotonic() - self._draining_since < self.grace_seconds:
            return False
        if not self._killed:  # once: a second cancel would cut short the kill and the record
            self._killed = True
            log.warning("grace period over: killing runs in flight", runs=len(self._runs))
            for task in list(self._runs):
                task.cancel()
        return not self._runs

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
