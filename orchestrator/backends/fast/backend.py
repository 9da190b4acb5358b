"""The fast backend: every run in a fresh bubblewrap sandbox over its image's root filesystem.

No container lifecycle per run: the image is exported once (:mod:`.rootfs`), and each run gets
a new sandbox (:mod:`.cell`) made of kernel namespaces, a cgroup, tmpfs mounts and a seccomp
filter, started in well under the time a container takes. The runner inside is the docker
mode's, so the request, the frames, the files, the limits' reports and the result are the same;
only ``sandbox_mode`` ("fast") and ``isolation`` differ. Sandboxes are never reused: a warm
pool keeps a few started ones per (language, policy) for latency, each used once.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from functools import lru_cache, partial
from typing import Any

import structlog

from orchestrator.backends.base import ensure_available
from orchestrator.backends.fast.cell import GROUP, Cell
from orchestrator.backends.fast.compile import CellPlan, compile_fast, declines
from orchestrator.backends.fast.host import host_reason, uid_range_reason
from orchestrator.backends.fast.rootfs import ImageRoot, RootfsStore
from orchestrator.backends.hostlimits import UidPool, pid_alive, sweep_groups
from orchestrator.backends.hostsfile import hosts_file
from orchestrator.backends.message import runner_message
from orchestrator.backends.pool import WarmPool
from orchestrator.backends.protocol import DockerDemuxer, FrameDecoder, ProtocolError
from orchestrator.backends.reader import RunReader
from orchestrator.context import ExecutionContext
from orchestrator.errors import RequestError, RunCancelledError, SandboxFailedError
from orchestrator.languages import get_language
from orchestrator.models import ExecutionRequest, Isolation
from orchestrator.policy import Policy
from orchestrator.run import SIGKILL, ExitReport, RunOutcome, RunSpec, build_outcome
from orchestrator.settings import Settings

log = structlog.get_logger(__name__)

KILL_GRACE_S = 0.5  # past the timeout, how long the runner has to report before we kill
_IMAGE_CHECK_S = 30.0  # how often the image a reference names is looked up again
_UIDS = 1024  # host uids for live sandboxes (ready in the pool or running)
PoolKey = tuple[str, str, CellPlan]  # (language, image id, plan)


class _Passthrough(DockerDemuxer):
    """The runner's stdout is a pipe of its own here: no Docker multiplexing to undo."""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        return [(DockerDemuxer.STDOUT, data)] if data else []


class FastBackend:
    """Runs each request in a never-used bubblewrap sandbox on this host.

    Args:
        settings: where the root filesystems go, uid range, pool sizes, timeouts.
        docker_factory: makes a docker-py client for image look-ups and exports.
    """

    name = "fast"

    def __init__(self, settings: Settings | None = None, *, docker_factory: Any = None) -> None:
        self._settings = settings or Settings()
        self._store = RootfsStore(self._settings.fast_root, docker_factory or _docker_client)
        self._uids = UidPool(self._settings.fast_uid_base, _UIDS)  # leased: one run per uid
        self._lock = threading.Lock()
        self._host_reason: str | bool | None = False  # False: not checked yet
        self._image_reasons: dict[str, tuple[float, str | None]] = {}
        self._closed = False
        self._reaper = Reaper()
        self._pool: WarmPool[PoolKey, Cell] = WarmPool(
            self._launch_pooled,
            Cell.destroy,
            Cell.alive,
            # Twice docker's count, refilled at once: a sandbox starts in about 15 ms and holds
            # about 10 MB, so back-to-back runs find a started one instead of starting their own.
            size_for=lambda key: 2 * self._settings.pool_size_for(key[0]),
            min_size=self._settings.pool_min_size,
            idle_ttl=self._settings.pool_idle_ttl_seconds,
            max_keys=self._settings.pool_max_keys,
            refill_delay=0.0,
        )

    # ------------------------------------------------------------------ availability

    def unavailable_reason(self, language: str) -> str | None:
        """Why this backend cannot run ``language`` here (None: it can)."""
        with self._lock:
            if self._host_reason is False:
                self._host_reason = host_reason() or uid_range_reason(
                    self._settings.fast_uid_base, _UIDS
                )
                if self._host_reason is None:
                    sweep_groups(GROUP, pid_alive)
            if isinstance(self._host_reason, str):
                return self._host_reason
        return self._image_reason(get_language(language).image)

    def prepare(self, language: str) -> str:
        """Export ``language``'s image for this mode now (else its first run does); its path.

        Raises:
            OSError: the image is missing or could not be exported.
        """
        reference = self._settings.image_ref(get_language(language).image)
        return str(self._store.image_root(reference).rootfs)

    def declines(self, request: ExecutionRequest) -> str | None:
        """Why this mode does not run this request as asked (see :func:`.compile.declines`)."""
        return declines(request)

    def _image_reason(self, image: str) -> str | None:
        """Whether the language's image can be found and exported (checked every 30 s)."""
        reference = self._settings.image_ref(image)
        now = time.monotonic()
        checked = self._image_reasons.get(reference)
        if checked is not None and now - checked[0] < _IMAGE_CHECK_S:
            return checked[1]
        try:
            self._store.image_root(reference)
            reason = None
        except OSError as exc:
            reason = (
                f"the fast mode runs {reference}'s root filesystem, and it is not usable: "
                f"{exc} (build the images: make images)"
            )
        self._image_reasons[reference] = (now, reason)
        return reason

    # ------------------------------------------------------------------ runs

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        """Run one request in a fresh sandbox; see :class:`Backend`."""
        ensure_available(self, request.language)
        if self._closed:
            raise SandboxFailedError("the fast backend is closed")
        key, image = self._key(request.language, request.policy)
        cell = self._pool.take(key, self._settings.pool_wait_seconds) or self._launch(key)
        message = runner_message(request, spec, self._settings)
        reader = RunReader(context, cell.cell_id, message.nonce, (_Passthrough(), FrameDecoder()))
        forget = spec.cancel.on_cancel(cell.kill)
        try:
            outcome = self._converse(cell, message.payload, reader, spec, request, image)
            return dataclasses.replace(outcome, forged_reports=reader.forged_reports)
        finally:
            forget()
            if reader.exit_info is None:
                cell.kill()  # the runner did not end the run itself
            self._reaper.put(cell)

    def _key(self, language: str, policy: Policy) -> tuple[PoolKey, ImageRoot]:
        lang = get_language(language)
        reference = self._settings.image_ref(lang.image)
        image = self._store.cached(reference) or self._store.image_root(reference)
        return (lang.name, image.image_id, _plan(policy, lang.name, image)), image

    def _launch(self, key: PoolKey) -> Cell:
        language, image_id, plan = key
        image = self._store.cached(self._settings.image_ref(get_language(language).image))
        if image is None or image.image_id != image_id:
            raise SandboxFailedError("the image changed since this sandbox was planned")
        return Cell.start(plan, image.command, self._uids, self._settings.startup_timeout)

    def _launch_pooled(self, key: PoolKey) -> Cell:
        if self._closed:
            raise SandboxFailedError("the fast backend is closed")
        return self._launch(key)

    def _converse(
        self,
        cell: Cell,
        payload: bytes,
        reader: RunReader,
        spec: RunSpec,
        request: ExecutionRequest,
        image: ImageRoot,
    ) -> RunOutcome:
        _take(reader, cell.pending)
        reader.context.dispatch()
        try:
            cell.send(payload)
        except OSError as exc:
            raise SandboxFailedError(f"the fast-mode sandbox took no request: {exc}") from exc
        timed_out = self._pump(cell, reader, spec)
        if spec.cancel.cancelled and reader.exit_info is None:
            raise RunCancelledError("the run was cancelled; its sandbox was killed")
        isolation = Isolation(
            mode="fast", runtime="bubblewrap", path="fresh", image=image.reference
        )
        build = partial(build_outcome, isolation=isolation, sandbox_id=cell.cell_id)
        started = reader.begun_at is not None
        reported = reader.reported(build, request.track_resources)
        if reported is not None:
            return reported
        elapsed = (time.monotonic() - (reader.begun_at or time.monotonic())) * 1000
        if timed_out:
            return build(ExitReport(signal=SIGKILL, timed_out=True, run_ms=elapsed))
        cell.kill()
        stats = cell.cgroup.stats()
        if stats.get("oom_kills", 0) > 0:
            return build(
                ExitReport(signal=SIGKILL, oom_killed=True, run_ms=elapsed), started=started
            )
        detail = cell.stderr_text()
        raise SandboxFailedError(
            "the fast-mode sandbox ended without reporting a result"
            + (f": {detail}" if detail else "")
        )

    def _pump(self, cell: Cell, reader: RunReader, spec: RunSpec) -> bool:
        """Read frames until the exit report. Returns True when we had to time out."""
        ready_by = time.monotonic() + self._settings.startup_timeout
        while reader.exit_info is None and not spec.cancel.cancelled:
            begun = reader.begun_at
            limit = ready_by if begun is None else begun + spec.timeout_seconds + KILL_GRACE_S
            left = limit - time.monotonic()
            if left <= 0:
                cell.kill()
                if begun is None:
                    raise SandboxFailedError(
                        "the fast-mode sandbox did not start the code within "
                        f"{self._settings.startup_timeout:g} s"
                    )
                return True
            try:
                data = cell.read(min(left, 1.0))
            except (OSError, ValueError):  # closed under us by a cancel
                data = b""
            if data is None:
                continue
            if not data:
                return False
            _take(reader, data)
        return False

    # ------------------------------------------------------------------ pool and lifecycle

    def prewarm(self, language: str, policy: Policy, spec: RunSpec, timeout: float = 60.0) -> bool:
        """Start the pool of (language, policy) and wait until it holds a ready sandbox."""
        ensure_available(self, language)
        key, _ = self._key(language, policy)
        return self._pool.prewarm(key, timeout)

    def pool_sizes(self) -> dict[str, int]:
        """Ready sandboxes per language right now (all policies together)."""
        sizes: dict[str, int] = {}
        for (language, _image, _plan), ready in self._pool.ready_counts().items():
            sizes[language] = sizes.get(language, 0) + ready
        return sizes

    def close(self) -> None:
        """Destroy the ready sandboxes; runs still going are killed by their callers' cancel."""
        self._closed = True
        self._pool.close()
        self._reaper.close()


class Reaper:
    """Destroys used sandboxes off the run's thread, so a result does not wait for cleanup.

    The runner ends its run's processes itself before it reports; what is left (waiting for the
    launcher, removing the cgroup, giving the uid back) happens here, in order. :meth:`close`
    waits until every sandbox handed over is gone.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Cell | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, cell: Cell) -> None:
        """Hand over a used sandbox."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="athena-fast-reaper", daemon=True
                )
                self._thread.start()
        self._queue.put(cell)

    def _work(self) -> None:
        while True:
            cell = self._queue.get()
            if cell is None:
                return
            try:
                cell.destroy()
            except Exception:  # one sandbox's cleanup must not stop the others'
                log.exception("could not clean up a fast-mode sandbox", sandbox=cell.cell_id)

    def close(self) -> None:
        """Wait until every sandbox handed over is destroyed."""
        with self._lock:
            thread = self._thread
            self._thread = None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join()


@lru_cache(maxsize=64)  # policies are frozen and hashable; a few are in use at a time
def _plan(policy: Policy, language: str, image: ImageRoot) -> CellPlan:
    return compile_fast(policy, language, image, hosts_file())


def _take(reader: RunReader, data: bytes) -> None:
    try:
        reader.take(data)
    except RequestError:
        raise
    except (ProtocolError, ValueError) as exc:
        raise SandboxFailedError(f"the sandbox runner sent garbage: {exc}") from exc


def _docker_client() -> Any:
    import docker

    return docker.from_env(timeout=120)
