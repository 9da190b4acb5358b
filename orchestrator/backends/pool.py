"""A warm pool of never-used sandboxes, kept per key, refilled in the background.

The pool knows nothing of Docker: it is given a ``launch(key)`` that starts a sandbox ready to
take a run, a ``discard(sandbox)`` that lets one go, and an ``is_alive(sandbox)`` check. A
sandbox taken from the pool is the caller's and never comes back: the pool only ever hands out
sandboxes that have never run anything.

Pools start lazily: a key gets sandboxes only after something asked for it (``take`` or
``prewarm``). A key not asked for during ``idle_ttl`` seconds shrinks to ``min_size``, so an idle
process holds no more than that minimum.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")

_TICK_S = 1.0  # how often an idle pool looks for dead or expired sandboxes
_BACKOFF_MAX_S = 10.0  # longest pause after failed launches (the engine is down or refusing)


@dataclass
class _Slot(Generic[S]):
    ready: deque[S] = field(default_factory=deque)
    last_demand: float = 0.0
    launching: int = 0


class WarmPool(Generic[K, S]):
    """Keeps up to ``size_for(key)`` ready sandboxes for each key that was asked for.

    Args:
        launch: starts a sandbox for a key and returns it once it can take a run.
        discard: lets a sandbox go (it was never used, or it died, or it expired).
        is_alive: whether an idle sandbox can still take a run.
        size_for: how many ready sandboxes a key in use should have.
        min_size: how many a key keeps once idle for ``idle_ttl`` seconds.
        idle_ttl: seconds without demand after which a key shrinks to ``min_size``.
        clock: monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        launch: Callable[[K], S],
        discard: Callable[[S], None],
        is_alive: Callable[[S], bool],
        *,
        size_for: Callable[[K], int],
        min_size: int = 0,
        idle_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._launch, self._discard, self._is_alive = launch, discard, is_alive
        self._size_for, self._min_size, self._idle_ttl = size_for, min_size, idle_ttl
        self._clock = clock
        self._slots: dict[K, _Slot[S]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._failures = 0
        self._backoff_until = 0.0  # after failed launches, no launch before this (monotonic)
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public

    def take(self, key: K, wait: float = 0.0) -> S | None:
        """Return a never-used ready sandbox for ``key``, or None when there is none in time.

        Taking records demand, so the key's pool (re)fills in the background.
        """
        deadline = time.monotonic() + wait  # real time: the injected clock is for the TTL
        with self._cond:
            slot = self._demand(key)
            while True:
                sandbox = self._pop_alive(slot)
                if sandbox is not None or self._closed:
                    self._cond.notify_all()  # a refill is due
                    return sandbox
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def prewarm(self, key: K, timeout: float = 60.0) -> bool:
        """Ask for ``key``'s pool and wait until it holds at least one ready sandbox."""
        deadline = time.monotonic() + timeout
        with self._cond:
            slot = self._demand(key)
            while not slot.ready and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return bool(slot.ready)

    def ready_count(self, key: K) -> int:
        """How many ready sandboxes ``key`` has right now."""
        with self._cond:
            slot = self._slots.get(key)
            return len(slot.ready) if slot else 0

    def close(self) -> None:
        """Stop refilling and discard every idle sandbox."""
        with self._cond:
            self._closed = True
            idle = [s for slot in self._slots.values() for s in slot.ready]
            for slot in self._slots.values():
                slot.ready.clear()
            self._cond.notify_all()
        for sandbox in idle:
            self._discard(sandbox)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    # ------------------------------------------------------------------ inside the lock

    def _demand(self, key: K) -> _Slot[S]:
        slot = self._slots.setdefault(key, _Slot())
        slot.last_demand = self._clock()
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._refill_loop, name="athena-pool", daemon=True
            )
            self._thread.start()
        self._cond.notify_all()
        return slot

    def _pop_alive(self, slot: _Slot[S]) -> S | None:
        while slot.ready:
            sandbox = slot.ready.popleft()
            if self._is_alive(sandbox):
                return sandbox
            self._discard_later(sandbox)
        return None

    def _target(self, slot: _Slot[S], key: K) -> int:
        if self._clock() - slot.last_demand > self._idle_ttl:
            return min(self._min_size, self._size_for(key))
        return self._size_for(key)

    def _next_job(self) -> tuple[K | None, list[S]]:
        """Pick a key to launch for, and collect sandboxes to discard (dead or over target)."""
        drop: list[S] = []
        job = None
        for key, slot in self._slots.items():
            target = self._target(slot, key)
            while len(slot.ready) > target:
                drop.append(slot.ready.pop())
            alive = [s for s in slot.ready if self._is_alive(s)]
            drop.extend(s for s in slot.ready if s not in alive)
            slot.ready = deque(alive)
            if job is None and len(slot.ready) + slot.launching < target:
                job = key
        return job, drop

    def _discard_later(self, sandbox: S) -> None:
        threading.Thread(target=self._discard, args=(sandbox,), daemon=True).start()

    # ------------------------------------------------------------------ the refill thread

    def _refill_loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                pause = self._backoff_until - time.monotonic()
                if pause > 0:  # demand wakes us, but launching must wait out the backoff
                    self._cond.wait(min(pause, _TICK_S))
                    continue
                key, drop = self._next_job()
                if key is None and not drop:
                    self._cond.wait(_TICK_S)
                    continue
                if key is not None:
                    self._slots[key].launching += 1
            for sandbox in drop:
                self._discard(sandbox)
            if key is not None:
                self._launch_one(key)

    def _launch_one(self, key: K) -> None:
        sandbox: S | None = None
        try:
            sandbox = self._launch(key)
            self._failures = 0
        except Exception as exc:  # the engine refused or is gone: back off, runs go cold
            if self._closed:
                return self._launch_aborted(key)
            self._failures += 1
            log.warning("could not start a pooled sandbox", error=f"{type(exc).__name__}: {exc}")
        with self._cond:
            slot = self._slots[key]
            slot.launching -= 1
            if sandbox is not None and not self._closed:
                slot.ready.append(sandbox)
                sandbox = None
            if self._failures:
                delay = min(_BACKOFF_MAX_S, 0.5 * 2**self._failures)
                self._backoff_until = time.monotonic() + delay
            self._cond.notify_all()
        if sandbox is not None:  # closed while it was starting
            self._discard(sandbox)

    def _launch_aborted(self, key: K) -> None:
        with self._cond:
            self._slots[key].launching -= 1
            self._cond.notify_all()
