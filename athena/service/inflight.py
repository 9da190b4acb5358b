"""How many runs each tenant has in flight, and the 429 when it asks for more than it may.

A tenant's token sets ``max_in_flight``. A run holds one slot from the moment it is admitted
until its result (or its cancellation) is recorded; a batch holds ``min(concurrency, calls,
free slots)`` at once and runs that many at a time. A request that finds no slot free fails at
once with :class:`~athena.service.wire.TooManyRunsError` (HTTP 429 with ``Retry-After``): the
service never queues a tenant's runs behind its own limit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from athena.service.wire import TooManyRunsError

RETRY_AFTER_SECONDS = 1


class InFlight:
    """Counts each tenant's runs in flight against the tenant's limit (thread-safe)."""

    def __init__(self, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._retry_after = retry_after

    def acquire(self, tenant: str, limit: int, wanted: int = 1) -> int:
        """Take up to ``wanted`` of ``tenant``'s free slots; return how many were taken (>= 1).

        Raises:
            TooManyRunsError: the tenant has ``limit`` runs in flight already.
        """
        with self._lock:
            held = self._counts.get(tenant, 0)
            free = limit - held
            if free < 1:
                raise TooManyRunsError(
                    f"tenant {tenant!r} already has {held} run(s) in flight, its limit "
                    f"({limit}); wait for one to finish and retry",
                    float(self._retry_after),
                )
            taken = min(max(wanted, 1), free)
            self._counts[tenant] = held + taken
            return taken

    def release(self, tenant: str, count: int = 1) -> None:
        """Give back ``count`` of ``tenant``'s slots."""
        with self._lock:
            left = self._counts.get(tenant, 0) - count
            if left > 0:
                self._counts[tenant] = left
            else:
                self._counts.pop(tenant, None)

    @contextmanager
    def slots(self, tenant: str, limit: int, wanted: int = 1) -> Iterator[int]:
        """Hold up to ``wanted`` slots for the block; yield how many are held.

        Raises:
            TooManyRunsError: no slot is free.
        """
        taken = self.acquire(tenant, limit, wanted)
        try:
            yield taken
        finally:
            self.release(tenant, taken)

    def counts(self) -> dict[str, int]:
        """Each tenant with runs in flight, and how many."""
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        """How many runs are in flight, all tenants together."""
        with self._lock:
            return sum(self._counts.values())

    @property
    def retry_after(self) -> int:
        """The seconds a 429 tells the client to wait."""
        return self._retry_after
