"""A warm pool of never-used sandboxes, kept per key, refilled in the background.

The pool knows nothing of Docker: it is given a ``launch(key)`` that starts a sandbox ready to
take a run, a ``discard(sandbox)`` that lets one go, and an ``is_alive(sandbox)`` check. A
sandbox taken from the pool is the caller's and never comes back: the pool only ever hands out
sandboxes that have never run anything.

Pools start lazily: a key gets sandboxes only after something asked for it (``take`` or
``prewarm``). A key not asked for during ``idle_ttl`` seconds shrinks to ``min_size``, so an idle
process holds no more than that minimum. At most ``max_keys`` keys (the most recently asked for)
keep sandboxes at once: an older key shrinks to none and is forgotten, so callers that ask for
ever new keys (a service whose tenants send ever new inline policies) cannot pile up idle
sandboxes or bookkeeping.

Keys do not hold each other up. A few worker threads launch for different keys at once, each key
with at most one launch in flight, so a key whose launches hang holds one worker, not the pool.
A key whose launches fail backs off on its own (1 s, 2 s, 4 s ... up to 10 s) while other keys
refill at full speed, and after a few failures in a row it is not tried again until a ``take``
or ``prewarm`` asks for it: a policy whose sandboxes can never start costs nothing while nobody
uses it. ``last_error(key)`` says why a key's launches fail.

A take that leaves its key other ready sandboxes holds the key's refill back ``refill_delay``
seconds: the run that took the sandbox starts, ends and answers before the engine starts its
replacement. On a small machine the two compete for the same cores (a warm run took 5.2 ms
with the replacement starting beside it, 4.3 ms without). A take that empties its key refills
at once: the next caller would otherwise wait for a cold start.
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
# Launches run in parallel across keys. Starting a container keeps the engine busy (runc,
# namespaces, cgroups): three at once is about what two cores take, and it leaves two workers
# for the other keys when one key's launches hang until their start-up timeout.
_LAUNCH_WORKERS = 3
_LAUNCHES_PER_KEY = 1  # so a key that hangs or fails holds one worker at most
_BACKOFF_FIRST_S = 1.0  # pause after a key's first failed launch; doubles with each failure
_BACKOFF_MAX_S = 10.0  # longest pause between a key's failed launches
_GIVE_UP_AFTER = 6  # failures in a row after which a key waits for new demand (~25 s of tries)
_CLOSE_WAIT_S = 30.0  # how long close() waits for launches in flight (their sandboxes are dropped)


@dataclass
class _Slot(Generic[S]):
    ready: deque[S] = field(default_factory=deque)
    last_demand: float = 0.0
    launching: int = 0
    failures: int = 0  # failed launches in a row
    retry_at: float = 0.0  # after a failure, no launch before this (the injected clock)
    last_error: str | None = None  # why the last launch failed; None once one succeeds
    not_before: float = 0.0  # after a take that left others ready, no launch before this

    @property
    def given_up(self) -> bool:
        return self.failures >= _GIVE_UP_AFTER


class WarmPool(Generic[K, S]):
    """Keeps up to ``size_for(key)`` ready sandboxes for each key that was asked for.

    Args:
        launch: starts a sandbox for a key and returns it once it can take a run. It is called
            from several threads at once, never twice at once for the same key.
        discard: lets a sandbox go (it was never used, or it died, or it expired).
        is_alive: whether an idle sandbox can still take a run.
        size_for: how many ready sandboxes a key in use should have.
        min_size: how many a key keeps once idle for ``idle_ttl`` seconds.
        idle_ttl: seconds without demand after which a key shrinks to ``min_size``.
        max_keys: how many keys, the most recently asked for, keep sandboxes at once.
        refill_delay: seconds a take that leaves its key other ready sandboxes holds the key's
            refill back (0: refill at once).
        clock: monotonic clock of the idle TTL and the launch backoff (tests pass a fake one);
            ``take`` and ``prewarm`` wait in real time.
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
        max_keys: int = 8,
        refill_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        if refill_delay < 0:
            raise ValueError(f"refill_delay must be 0 or more, not {refill_delay}")
        self._refill_delay = refill_delay
        self._launch, self._discard, self._is_alive = launch, discard, is_alive
        self._size_for, self._min_size, self._idle_ttl = size_for, min_size, idle_ttl
        self._max_keys = max_keys
        self._kept: set[K] = set()  # the keys that may hold sandboxes (the newest demand)
        self._clock = clock
        self._slots: dict[K, _Slot[S]] = {}  # in the order keys get their next launch
        self._cond = threading.Condition()
        self._closed = False
        self._workers: list[threading.Thread] = []

    # ------------------------------------------------------------------ public

    def take(self, key: K, wait: float = 0.0) -> S | None:
        """Return a never-used ready sandbox for ``key``, or None when there is none in time.

        Taking records demand, so the key's pool (re)fills in the background; a key that had
        stopped retrying after failed launches is tried again. The wait ends early when the
        key's launches keep failing.
        """
        deadline = time.monotonic() + wait  # real time: the injected clock is for the pool
        with self._cond:
            slot = self._demand(key)
            while True:
                sandbox = self._pop_alive(slot)
                if sandbox is not None:
                    slot.not_before = self._clock() + self._refill_delay if slot.ready else 0.0
                if sandbox is not None or self._closed or slot.given_up:
                    self._cond.notify_all()  # a refill is due
                    return sandbox
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def prewarm(self, key: K, timeout: float = 60.0) -> bool:
        """Ask for ``key``'s pool and wait until it holds at least one ready sandbox.

        Returns False after ``timeout`` seconds, once the pool is closed, or once the key's
        launches have failed too often in a row (see ``last_error``).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            slot = self._demand(key)
            while not slot.ready and not self._closed and not slot.given_up:
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

    def ready_counts(self) -> dict[K, int]:
        """How many ready sandboxes each key that was asked for has right now."""
        with self._cond:
            return {key: len(slot.ready) for key, slot in self._slots.items()}

    def last_error(self, key: K) -> str | None:
        """Why the last launch for ``key`` failed, as ``"ErrorType: message"``.

        None when the key's last launch succeeded or none has ended yet. A run that finds the
        key's pool empty can report it: it is usually why the pool is empty (the engine refuses
        the key's settings, or is down).
        """
        with self._cond:
            slot = self._slots.get(key)
            return slot.last_error if slot else None

    def close(self) -> None:
        """Stop refilling and discard every idle sandbox.

        Waits up to a bounded time for launches in flight; a sandbox whose launch ends after
        close() began is discarded by its worker, never kept.
        """
        with self._cond:
            self._closed = True
            idle = [s for slot in self._slots.values() for s in slot.ready]
            for slot in self._slots.values():
                slot.ready.clear()
            workers = list(self._workers)
            self._cond.notify_all()
        for sandbox in idle:
            self._discard(sandbox)
        deadline = time.monotonic() + _CLOSE_WAIT_S
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join(timeout=max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ inside the lock

    def _demand(self, key: K) -> _Slot[S]:
        slot = self._slots.setdefault(key, _Slot())
        slot.last_demand = self._clock()
        self._keep_newest()
        if slot.given_up:  # someone wants the key again: it gets a fresh series of tries
            slot.failures, slot.retry_at = 0, 0.0
        if not self._workers and not self._closed:
            self._start_worker(siblings=_LAUNCH_WORKERS - 1)
        self._cond.notify_all()
        return slot

    def _start_worker(self, siblings: int = 0) -> None:
        worker = threading.Thread(
            target=self._work,
            args=(siblings,),
            name=f"athena-pool-{len(self._workers)}",
            daemon=True,
        )
        worker.start()
        self._workers.append(worker)

    def _pop_alive(self, slot: _Slot[S]) -> S | None:
        while slot.ready:
            sandbox = slot.ready.popleft()
            if self._is_alive(sandbox):
                return sandbox
            self._discard_later(sandbox)
        return None

    def _keep_newest(self) -> None:
        """Keep the ``max_keys`` most recently asked-for keys; forget older ones once empty."""
        if len(self._slots) <= self._max_keys:
            self._kept = set(self._slots)
            return
        newest = sorted(self._slots, key=lambda k: self._slots[k].last_demand, reverse=True)
        self._kept = set(newest[: self._max_keys])
        for key in newest[self._max_keys :]:
            slot = self._slots[key]
            if not slot.ready and not slot.launching:
                del self._slots[key]

    def _target(self, slot: _Slot[S], key: K) -> int:
        if key not in self._kept:
            return 0
        if self._clock() - slot.last_demand > self._idle_ttl:
            return min(self._min_size, self._size_for(key))
        return self._size_for(key)

    def _sweep(self) -> list[S]:
        """Take out the sandboxes to discard: dead ones, and those over their key's target."""
        drop: list[S] = []
        for key, slot in self._slots.items():
            target = self._target(slot, key)
            while len(slot.ready) > target:
                drop.append(slot.ready.pop())
            alive = [s for s in slot.ready if self._is_alive(s)]
            drop.extend(s for s in slot.ready if s not in alive)
            slot.ready = deque(alive)
        self._keep_newest()  # forgets the old keys emptied above
        return drop

    def _next_key(self, now: float) -> K | None:
        """Pick a key to launch for, and send it to the back of the line (round robin)."""
        key = next((k for k, slot in self._slots.items() if self._due(k, slot, now)), None)
        if key is not None:
            self._slots[key] = self._slots.pop(key)
        return key

    def _due(self, key: K, slot: _Slot[S], now: float) -> bool:
        """Whether ``key`` needs a launch and may have one now."""
        return (
            slot.launching < _LAUNCHES_PER_KEY
            and not slot.given_up
            and slot.retry_at <= now
            and slot.not_before <= now
            and len(slot.ready) + slot.launching < self._target(slot, key)
        )

    def _pause(self, now: float) -> float:
        """How long an idle worker sleeps: a tick, or until the next backoff or delay ends."""
        ends = [
            max(s.retry_at, s.not_before) - now
            for s in self._slots.values()
            if max(s.retry_at, s.not_before) > now
        ]
        return max(0.001, min([_TICK_S, *ends]))  # never a busy loop, whatever the clock does

    def _discard_later(self, sandbox: S) -> None:
        threading.Thread(target=self._discard, args=(sandbox,), daemon=True).start()

    # ------------------------------------------------------------------ the worker threads

    def _work(self, siblings: int) -> None:
        with self._cond:  # the first worker starts the others: a take waits for one thread only
            for _ in range(siblings):
                if not self._closed:
                    self._start_worker()
        while True:
            with self._cond:
                if self._closed:
                    return
                drop = self._sweep()
                now = self._clock()
                key = self._next_key(now)
                if key is None and not drop:
                    self._cond.wait(self._pause(now))
                    continue
                if key is not None:
                    self._slots[key].launching += 1
            for sandbox in drop:
                self._discard(sandbox)
            if key is not None:
                self._launch_one(key)

    def _launch_one(self, key: K) -> None:
        sandbox: S | None = None
        error: str | None = None
        try:
            if not self._closed:
                sandbox = self._launch(key)
        except Exception as exc:  # the engine refused or is gone: this key backs off
            error = f"{type(exc).__name__}: {exc}"
            if not self._closed:
                log.warning("could not start a pooled sandbox", key=key, error=error)
        finally:
            with self._cond:
                late, gave_up = self._landed(key, sandbox, error)
        if late is not None:  # closed while it was starting
            self._discard(late)
        if gave_up:
            log.warning(
                "pooled sandboxes keep failing: no more tries until the key is asked for",
                key=key,
                failures=_GIVE_UP_AFTER,
            )

    def _landed(self, key: K, sandbox: S | None, error: str | None) -> tuple[S | None, bool]:
        """Book a launch's outcome: the sandbox to discard, if any, and whether the key gave up."""
        slot = self._slots[key]
        slot.launching -= 1
        self._cond.notify_all()
        if self._closed:
            return sandbox, False
        if sandbox is not None:
            slot.ready.append(sandbox)
            slot.failures, slot.retry_at, slot.last_error = 0, 0.0, None
        elif error is not None:
            slot.failures += 1
            slot.last_error = error
            delay = _BACKOFF_FIRST_S * 2 ** (slot.failures - 1)
            slot.retry_at = self._clock() + min(_BACKOFF_MAX_S, delay)
            return None, slot.given_up
        return None, False
