"""The Docker backend: one fresh, throwaway container per run.

:class:`DockerBackend` coordinates the parts: the engine (:mod:`.engine`, the only code that
talks to Docker), the blueprints compiled from policies (:mod:`.blueprints`, :mod:`.compile`), the
warm pool (:mod:`orchestrator.backends.pool`), the containers in flight (:mod:`.live`), the run's
conversation with the runner (:mod:`.drive`), the egress proxy (:mod:`.egress`) and the watchdog.

Containers never outlive their run by more than a few seconds: they are created with
``AutoRemove``, the runner kills the run when stdin reaches EOF (which the engine delivers when
this process dies, even by SIGKILL, because stdin is attached with ``StdinOnce``), and at first
use the backend removes containers whose labelled owner process is dead.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from contextlib import suppress
from functools import partial
from typing import Literal

import structlog

from orchestrator.backends.docker.blueprints import Blueprints
from orchestrator.backends.docker.drive import KILL_GRACE_S, Driver
from orchestrator.backends.docker.egress import NETWORK, EgressSetup
from orchestrator.backends.docker.engine import DockerEngine, Engine
from orchestrator.backends.docker.errors import map_docker_errors, retry_connection, retry_transient
from orchestrator.backends.docker.live import LiveContainers
from orchestrator.backends.docker.owners import (
    LABEL_OWNER_HOST,
    LABEL_OWNER_NODE,
    LABEL_OWNER_PID,
    LABEL_OWNER_STARTED,
    LABEL_POOL,
    LABEL_RUN,
    LABEL_SANDBOX,
    left_by_predecessor,
    owner_is_dead,
    owner_labels,
)
from orchestrator.backends.docker.sandbox import Blueprint, NeverStarted, PoolKey, Sandbox
from orchestrator.backends.docker.session import DockerSession, is_session_key, session_blueprint
from orchestrator.backends.docker.watchdog import Watchdog
from orchestrator.backends.message import Message, runner_message
from orchestrator.backends.mountstage import MountStage
from orchestrator.backends.mountstage import sweep_stale as sweep_stale_mounts
from orchestrator.backends.pool import WarmPool
from orchestrator.context import ExecutionContext
from orchestrator.errors import BackendUnavailableError, RunCancelledError, SandboxFailedError
from orchestrator.languages import get_language
from orchestrator.models import ExecutionRequest, Isolation
from orchestrator.policy import Policy
from orchestrator.run import ExitReport, RunOutcome, RunSpec, build_outcome
from orchestrator.settings import Settings

log = structlog.get_logger(__name__)

# How long "no engine answers" is believed before the engine is asked again.
UNAVAILABLE_TTL_S = 5.0
# Fresh containers a run may go through when each dies before the code starts.
NEVER_STARTED_ATTEMPTS = 3
# A session call's time to stop after the runner interrupts it at its timeout (runner.c's
# INTERRUPT_GRACE_NS): only then does the runner kill it.
INTERRUPT_GRACE_S = 1.0
# How long a session call waits for its runner to take the request (it is already running).
SESSION_BEGIN_WAIT_S = 5.0
_WATCHDOG_LABELS = (LABEL_OWNER_PID, LABEL_OWNER_STARTED, LABEL_OWNER_HOST)


class DockerBackend:
    """Runs each request in a never-used container: a warm one from the pool, or a fresh one.

    Thread-safe. ``_lock`` guards ``_engine``, ``_closed``, ``_swept``, ``_down_until`` and
    ``_down_reason``; every part guards its own state with a lock of its own (the containers in
    flight, the blueprints, the egress set-up, the watchdog, the pool).

    Args:
        settings: image names, timeouts, pool sizes, start-up sweep.
        engine_factory: connects to the engine (default: :meth:`DockerEngine.from_env`, with
            the fast path when the engine listens on a Unix socket).
    """

    name = "docker"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        engine_factory: Callable[[], Engine] | None = None,
    ) -> None:
        self._settings = settings or Settings()
        self._factory = engine_factory or partial(
            DockerEngine.from_env, self._settings.docker_api_timeout
        )
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._closed = False
        self._swept = False
        self._down_until = 0.0
        self._down_reason: str | None = None
        self._live = LiveContainers()
        self._egress = EgressSetup(self._settings.egress_pinned_hosts)
        self._stage = MountStage()
        self._blueprints = Blueprints(self._settings, self._egress, self._stage)
        self._watchdog = Watchdog()
        self._session_blueprints: dict[PoolKey, Blueprint] = {}  # guarded by _lock
        self._pool: WarmPool[PoolKey, Sandbox] = WarmPool(
            self._launch_pooled,
            self._discard,
            Sandbox.is_idle_and_alive,
            size_for=self._pool_size,
            min_size=self._settings.pool_min_size,
            idle_ttl=self._settings.pool_idle_ttl_seconds,
            max_keys=self._settings.pool_max_keys,
            refill_delay=self._settings.pool_refill_delay_seconds,
        )
        atexit.register(_close_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> DockerBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill runs still going, let the pooled containers go, and drop the engine.

        Streams are cut first, so pooled launches waiting for their runner end at once
        instead of holding the pool's close; removals run in parallel in the background
        and are waited for together.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._live.refuse_new()
        self._live.cut()
        self._pool.close()
        with self._lock:
            engine = self._engine
        self._live.close(engine)
        with self._lock:
            self._engine = None
        if engine is not None:
            engine.close()
        self._egress.close()
        self._stage.close()
        self._watchdog.close()

    def unavailable_reason(self, language: str) -> str | None:
        """Why no container can run here (no engine answers), or None.

        An answer is remembered: a working engine for good, a missing one for a few seconds.
        """
        with self._lock:
            if self._engine is not None:
                return None
            if self._down_until > time.monotonic():
                return self._down_reason
        try:
            self._connect()
        except BackendUnavailableError as exc:
            with self._lock:
                self._down_until = time.monotonic() + UNAVAILABLE_TTL_S
                self._down_reason = str(exc)
            return str(exc)
        return None

    def _connect(self) -> Engine:
        """The engine, connected at the first call (which also sweeps, when configured)."""
        with self._lock:
            if self._closed:
                raise SandboxFailedError("this backend is closed; create a new one")
            engine = self._engine
            connected = engine is None
            if engine is None:
                with map_docker_errors("connect to the engine"):
                    engine = self._engine = self._factory()
            sweep = self._settings.sweep_on_start and not self._swept
            self._swept = True
        if connected:
            # Its interpreter starts while the first run asks the engine for images and
            # runtimes; the first container waits for it (``_ensure_watchdog``).
            self._watchdog.launch(_watchdog_labels)
        if sweep:
            self.sweep()
        return engine

    def sweep(self) -> int:
        """Remove containers whose labelled owner process on this host is dead.

        A node (``settings.node_id``) also removes its predecessor's containers, from any host
        (:func:`left_by_predecessor`).

        Returns:
            How many containers were removed.
        """
        engine = self._connect()
        with map_docker_errors("list containers"):
            containers = engine.containers(LABEL_SANDBOX)
        removed = 0
        for container in containers:
            labels = container.get("Labels") or {}
            if owner_is_dead(labels) or left_by_predecessor(labels, self._settings.node_id):
                engine.remove(container["Id"])
                removed += 1
        if removed:
            log.info("removed orphaned sandbox containers", count=removed)
        sweep_stale_mounts()
        return removed

    def sweep_nodes(self, gone: Callable[[str], bool]) -> int:
        """Remove the containers of other nodes that are ``gone`` (their node id), if any.

        A node killed with its watchdog (a Kubernetes pod is killed whole) leaves the
        containers it had created but not started; a node of a new name never sweeps them as
        its predecessor's, so the live nodes sharing the engine do, once the node directory
        says their node is gone.

        Returns:
            How many containers were removed (0 when the engine does not answer).
        """
        if self.unavailable_reason("python") is not None:
            return 0
        engine = self._connect()
        with map_docker_errors("list containers"):
            containers = engine.containers(LABEL_OWNER_NODE)
        removed = 0
        for container in containers:
            node = (container.get("Labels") or {}).get(LABEL_OWNER_NODE)
            if node and node != self._settings.node_id and gone(node):
                engine.remove(container["Id"])
                removed += 1
        if removed:
            log.info("removed the containers of gone nodes", count=removed)
        return removed

    # ------------------------------------------------------------------ runs

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        """Run one request in a never-used container; see :class:`Backend`.

        A container that dies before the code starts (a pooled runner gone, an engine hiccup)
        is replaced by a fresh one; once the code has started, nothing is retried.
        """
        engine = self._connect()
        blueprint = self._blueprints.build(
            engine, request.language, request.policy, spec, request.image
        )
        message = _message(request, spec, self._settings)
        driver = Driver(engine, self._live, self._egress, self._settings.startup_timeout)
        for attempt in range(1, NEVER_STARTED_ATTEMPTS + 1):
            if spec.cancel.cancelled:
                raise RunCancelledError("the run was cancelled before it started")
            try:
                sandbox = self._take(engine, blueprint, request.execution_id)
                return driver.drive(sandbox, message, request, spec, context)
            except NeverStarted as exc:
                if spec.cancel.cancelled:  # the cancel closed it: not a sandbox that was lost
                    raise RunCancelledError("the run was cancelled before it started") from exc
                log.warning(
                    "sandbox lost before the code started", attempt=attempt, reason=str(exc)
                )
                if attempt == NEVER_STARTED_ATTEMPTS:
                    raise SandboxFailedError(
                        f"the sandbox failed before the code started: {exc}"
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def prewarm(self, language: str, policy: Policy, spec: RunSpec, timeout: float = 60.0) -> bool:
        """Start the pool of (language, policy) and wait until it holds a ready container."""
        engine = self._connect()
        blueprint = self._blueprints.build(engine, get_language(language).name, policy, spec)
        return self._pool.prewarm(blueprint.key, timeout)

    def pool_sizes(self) -> dict[str, int]:
        """Ready warm containers per language right now (all policies together)."""
        sizes: dict[str, int] = {}
        for (language, _fingerprint), ready in self._pool.ready_counts().items():
            sizes[language] = sizes.get(language, 0) + ready
        return sizes

    # ------------------------------------------------------------------ sessions

    def open_session(self, request: ExecutionRequest, spec: RunSpec) -> DockerSession:
        """The container side of a new session of ``request``'s language, policy and image.

        Its container is taken at :meth:`DockerSession.start` (one warm-pool take).

        Raises:
            RunError: no engine, a missing image, a policy the engine cannot run.
        """
        engine = self._connect()
        one_shot = self._blueprints.build(
            engine, request.language, request.policy, spec, request.image
        )
        blueprint = session_blueprint(one_shot, request.language)
        with self._lock:
            blueprint = self._session_blueprints.setdefault(blueprint.key, blueprint)
        return DockerSession(self, blueprint)

    def take_for_session(self, blueprint: Blueprint, execution_id: str) -> Sandbox:
        """A never-used session container: from the session pool, or started now.

        Raises:
            SandboxFailedError: none could be started.
        """
        engine = self._connect()
        for attempt in range(1, NEVER_STARTED_ATTEMPTS + 1):
            try:
                sandbox = self._take(engine, blueprint, execution_id)
                if sandbox.path == "cold":
                    sandbox.await_ready(self._settings.startup_timeout)
                return sandbox
            except NeverStarted as exc:
                if attempt == NEVER_STARTED_ATTEMPTS:
                    raise SandboxFailedError(f"the session's sandbox did not start: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def drive_session_call(
        self, sandbox: Sandbox, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        """Run one call of a session in its container, which stays (see :class:`DockerSession`).

        Raises:
            SandboxFailedError: the container went away before the code started, or broke.
            RequestError: the call's files could not be written (nothing ran).
            RunCancelledError: the call was cancelled (its container is killed).
        """
        engine = self._connect()
        grace = KILL_GRACE_S + INTERRUPT_GRACE_S
        # The session's runner is up and waiting: a call it does not take at once (its request
        # went elsewhere) fails in seconds, not at the start-up timeout.
        begin_wait = min(self._settings.startup_timeout, SESSION_BEGIN_WAIT_S)
        driver = Driver(engine, self._live, self._egress, begin_wait, grace)
        try:
            message = _message(request, spec, self._settings, sandbox)
            return driver.drive(sandbox, message, request, spec, context, keep=True)
        except NeverStarted as exc:
            if spec.cancel.cancelled:
                raise RunCancelledError("the call was cancelled before it started") from exc
            # Under gVisor a memory limit hit between calls takes the whole sandbox, runner and
            # all: the engine's log says so, and the session ends for it as for any violation.
            if driver.ran_out_of_memory(sandbox.container_id, sandbox.idle_since):
                isolation = Isolation(
                    mode="docker", runtime=sandbox.runtime, path=sandbox.path, image=sandbox.image
                )
                report = ExitReport(oom_killed=True, session_alive=False, between_calls=True)
                return build_outcome(
                    report, isolation=isolation, sandbox_id=sandbox.container_id[:12], started=False
                )
            raise SandboxFailedError(
                f"the session's sandbox ended before the call started: {exc}"
            ) from exc
        finally:
            sandbox.idle_since = time.time()

    def let_go(self, sandbox: Sandbox) -> None:
        """Kill and remove a session's container (the session ended or lost its state)."""
        with self._lock:
            engine = self._engine
        sandbox.close()
        if engine is not None:
            self._live.release(engine, sandbox.container_id, finished=False)

    def _pool_size(self, key: PoolKey) -> int:
        size = self._settings.pool_size_for(key[0])
        return min(size, 1) if is_session_key(key) else size

    def _take(self, engine: Engine, blueprint: Blueprint, execution_id: str) -> Sandbox:
        """A warm sandbox when the pool has one ready (or within the pool wait), else a cold one.

        A run that finds the pool empty asks it for a refill only once its own container has
        started: the pool's launches would compete with that start for the engine and the
        cores (a fresh API's first run took twice as long beside them).
        """
        pooled = self._settings.pool_size_for(blueprint.key[0]) > 0
        wait = self._settings.pool_wait_seconds
        if pooled and (wait > 0 or self._pool.ready_count(blueprint.key)):
            sandbox = self._pool.take(blueprint.key, wait=wait)
            if sandbox is not None:
                return sandbox
        try:
            return self._launch(engine, blueprint, "cold", {LABEL_RUN: execution_id})
        finally:
            if pooled:  # the demand is recorded even when this start failed
                self._pool.prewarm(blueprint.key, timeout=0.0)  # returns at once

    def _launch(
        self,
        engine: Engine,
        blueprint: Blueprint,
        path: Literal["cold", "warm"],
        labels: Mapping[str, str],
    ) -> Sandbox:
        """Create, attach and start a container; its runner then waits for a request."""
        self._ensure_watchdog()
        body = {**blueprint.body, "Labels": {**blueprint.body["Labels"], **labels}}
        image = blueprint.image
        container_id = retry_transient(lambda: engine.create(body), "create the container", image)
        try:
            if not self._live.add(container_id):
                raise SandboxFailedError("the backend was closed while the run was starting")
            with map_docker_errors("attach to the container"):
                sock, attached = engine.attach(container_id)
            sandbox = Sandbox(container_id, sock, attached, image, path, runtime=blueprint.runtime)
            if not self._live.add(container_id, sandbox):  # closing: do not start it at all
                raise SandboxFailedError("the backend was closed while the run was starting")
            try:
                retry_connection(lambda: engine.start(container_id), "start the container", image)
            except SandboxFailedError as exc:  # the engine refused: a fresh container may start
                raise NeverStarted(str(exc)) from exc
            if blueprint.egress:
                with map_docker_errors("read the sandbox's address"):
                    sandbox.address = engine.address(container_id, NETWORK)
        except BaseException:
            self._live.release(engine, container_id, finished=False)
            raise
        return sandbox

    def _ensure_watchdog(self) -> None:
        """Start the watchdog that removes our containers if this process dies (once)."""
        with self._lock:
            if self._closed:
                return
        self._watchdog.arm(_watchdog_labels)

    def _launch_pooled(self, key: PoolKey) -> Sandbox:
        """Start a container for the pool and wait until its runner says it is ready."""
        engine = self._connect()
        with self._lock:
            blueprint = self._session_blueprints.get(key)
        if blueprint is None:
            blueprint = self._blueprints.get(key)
        sandbox = self._launch(engine, blueprint, "warm", {LABEL_POOL: "1"})
        try:
            sandbox.await_ready(self._settings.startup_timeout)
        except BaseException:
            self._live.release(engine, sandbox.container_id, finished=False)
            raise
        return sandbox

    def _discard(self, sandbox: Sandbox) -> None:
        """Let a pooled sandbox go (expired, surplus, dead, or the pool is closing)."""
        with self._lock:
            engine = self._engine
        sandbox.close()
        if engine is not None:
            self._live.release(engine, sandbox.container_id, finished=False)


def _message(
    request: ExecutionRequest, spec: RunSpec, settings: Settings, sandbox: Sandbox | None = None
) -> Message:
    """The request as the runner reads it (:func:`runner_message`).

    A session's ``sandbox`` counts its calls: their nonces derive from its key.
    """
    if sandbox is None:
        return runner_message(request, spec, settings)
    call = sandbox.session_calls
    sandbox.session_calls += 1
    return runner_message(request, spec, settings, session_key=sandbox.session_key, call=call)


def _watchdog_labels() -> dict[str, str]:
    """The labels the watchdog removes by: this process as the owner."""
    return {k: v for k, v in owner_labels().items() if k in _WATCHDOG_LABELS}


def _close_at_exit(ref: weakref.ref[DockerBackend]) -> None:
    backend = ref()
    if backend is not None:
        with suppress(Exception):
            backend.close()
