"""The containers this backend started whose runs are not done, and their removal."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from orchestrator.backends.docker.engine import Engine
from orchestrator.backends.docker.sandbox import Sandbox


class LiveContainers:
    """Every container created and not let go yet; removes the ones let go in the background.

    Thread-safe: ``_lock`` guards ``_live`` (container id -> its sandbox, None until attached)
    and ``_closed``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, Sandbox | None] = {}
        self._closed = False
        # Removals are engine calls that wait on a container's end: a few at once, so a
        # closing backend's pooled containers go together.
        self._reaper = ThreadPoolExecutor(max_workers=4, thread_name_prefix="athena-reaper")

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: runs still going are being cut short."""
        with self._lock:
            return self._closed

    def add(self, container_id: str, sandbox: Sandbox | None = None) -> bool:
        """Record a created container (again once it has its sandbox).

        Returns:
            False when the backend is closing: the caller lets the container go.
        """
        with self._lock:
            self._live[container_id] = sandbox
            return not self._closed

    def release(self, engine: Engine, container_id: str, *, finished: bool) -> None:
        """Forget a container; unless its runner ended the run, remove it in the background.

        While the backend closes, removals still go to the background, beside each other:
        :meth:`close` waits for them all. After it, they happen here.
        """
        with self._lock:
            sandbox = self._live.pop(container_id, None)
        if sandbox is not None:
            sandbox.close()
        if finished:
            return  # the runner exits after its report and AutoRemove removes the container
        try:
            self._reaper.submit(engine.remove, container_id)
        except RuntimeError:  # the reaper has shut down (closed): remove it here
            engine.remove(container_id)

    def refuse_new(self) -> None:
        """Mark the backend closing: containers created from now on are let go at once."""
        with self._lock:
            self._closed = True

    def cut(self) -> None:
        """Close every stream in flight: runs and pooled runners see EOF (their runner ends).

        The containers stay recorded: :meth:`close` removes them.
        """
        with self._lock:
            sandboxes = [s for s in self._live.values() if s is not None]
        for sandbox in sandboxes:
            sandbox.close()

    def close(self, engine: Engine | None) -> None:
        """Cut every run short (its reader and runner see EOF), remove its container, and wait."""
        with self._lock:
            self._closed = True
            live, self._live = dict(self._live), {}
        for sandbox in live.values():
            if sandbox is not None:
                sandbox.close()
        if engine is not None:
            for container_id in live:
                self._reaper.submit(engine.remove, container_id)
        self._reaper.shutdown(wait=True)
