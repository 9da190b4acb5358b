"""The Docker backend: one fresh, throwaway container per run.

:func:`compile_docker` is the pure translation of a policy into Docker settings (exact-output unit
tests pin it). :class:`DockerBackend` is the only code here that talks to the engine: it creates
the container with stdin attached, starts it, sends the request to the runner, and reads the
runner's frames into the :class:`ExecutionContext` as they arrive.

Containers never outlive their run by more than a few seconds: they are created with
``AutoRemove``, the runner kills the run when stdin reaches EOF (which the engine delivers when
this process dies, even by SIGKILL, because stdin is attached with ``StdinOnce``), and at first
use the backend removes containers whose labelled owner process is dead.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import select
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import docker
import docker.errors
import structlog
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from orchestrator.backends import egress, watchdog
from orchestrator.backends.base import RunOutcome, RunSpec
from orchestrator.backends.engine import EngineError, FastEngine
from orchestrator.backends.errors import (
    is_transient,
    map_docker_errors,
    unavailable,
    unix_socket_path,
)
from orchestrator.backends.mountstage import MountStage
from orchestrator.backends.mountstage import sweep_stale as sweep_stale_mounts
from orchestrator.backends.owners import (
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_STARTED,
    LABEL_POOL,
    LABEL_RUN,
    LABEL_SANDBOX,
    owner_is_dead,
    owner_labels,
)
from orchestrator.backends.pool import WarmPool
from orchestrator.backends.protocol import (
    FRAME_READY,
    PROTOCOL,
    DockerDemuxer,
    FrameDecoder,
    ProtocolError,
    encode_request,
    new_nonce,
)
from orchestrator.backends.reader import RunReader, outcome_from_frames
from orchestrator.context import ExecutionContext
from orchestrator.errors import (
    BackendUnavailableError,
    ImageNotFoundError,
    PolicyError,
    RunCancelledError,
    SandboxFailedError,
)
from orchestrator.guard import kernel_denials, runtime_guard
from orchestrator.languages import get_language
from orchestrator.models import ExecutionRequest, Isolation
from orchestrator.policy import Policy, ResolvedMount
from orchestrator.settings import Settings

log = structlog.get_logger(__name__)

WORKDIR = "/workspace"
RUNTIME = "runc"
# gVisor's runtimes as scripts/ensure-runsc.sh registers them: ptrace platform (its KVM platform
# hangs here), and --network=none for runs without a network.
RUNSC, RUNSC_NONET = "runsc", "runsc-nonet"
# Under runsc the pids cgroup counts gVisor's own tasks too: 38 for the sentry and its helpers,
# then about 9 per process of the code (measured: 10 sleeps 128, 40 sleeps 366).
RUNSC_PIDS_BASE, RUNSC_PIDS_PER_PROCESS = 40, 9
IMAGE_PROTOCOL_LABEL = "org.athena.protocol"
# How long past its timeout a run may go before we kill the container ourselves; the runner
# normally kills the code at the timeout and reports well within this.
KILL_GRACE_S = 0.5
IDLE_CHECK_S = 2.0
_RETRY_TRANSIENT = Retrying(
    retry=retry_if_exception(is_transient),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.1, max=1.0),
    reraise=True,
)
# Starting is retried only when the connection broke: a start the engine refused (say, more CPUs
# than it has) has already removed the container (AutoRemove), so a retry could only report
# "No such container" instead of the engine's reason.
_RETRY_CONNECTION = Retrying(
    retry=retry_if_exception(lambda exc: is_transient(exc) and not _is_refusal(exc)),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.1, max=1.0),
    reraise=True,
)
# How long "no engine answers" is believed before the engine is asked again.
UNAVAILABLE_TTL_S = 5.0
# Fresh containers a run may go through when each dies before the code starts.
NEVER_STARTED_ATTEMPTS = 3
_MIB = 1024 * 1024
_ENVIRONMENT = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp/home",  # created by the runner: `pip install --user` lands on the tmpfs
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}
T = TypeVar("T")
_CLOSED_MID_RUN = (
    "the run was cut short: the API was closed (close() was called) while it ran, "
    "and its sandbox was killed"
)


# --------------------------------------------------------------------------- pure translation


@dataclass(frozen=True)
class EgressRoute:
    """How an allowlist sandbox reaches the egress proxy: its network and the proxy's URL."""

    network: str
    proxy_url: str


def _network(policy: Policy, route: EgressRoute | None) -> tuple[dict[str, Any], dict[str, str]]:
    """Host-config network settings and extra environment for a policy's network mode."""
    if policy.network.mode == "none":
        return {"network_mode": "none"}, {}
    if policy.network.mode == "open":
        return {"network_mode": "bridge"}, {}
    if route is None:
        raise PolicyError("network.mode 'allowlist' needs the egress route; none was given")
    proxy = {
        name: route.proxy_url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    }
    # 127.0.0.1: Docker's embedded DNS forwards to nothing there, so names resolve only at
    # the proxy, and only allowed ones.
    return {"network_mode": route.network, "dns": ["127.0.0.1"]}, proxy


def _mount_check_env(
    policy: Policy, mounts: tuple[ResolvedMount, ...], runtime: str
) -> dict[str, str]:
    """What the runner checks of the mounts before any code runs (it hides these from the code).

    ``ATHENA_MOUNTS``: per mount ``dev:ino:writable:target-in-hex``; the runner refuses the run
    when a mount root is not the checked directory. gVisor shows no host inode (0:0 there: its
    sources are staged instead, see ``mountstage``). ``ATHENA_MOUNT_WRITE_CAP``: bytes the run
    may add to its writable mounts' filesystems.
    """
    if not mounts:
        return {}
    gvisor = runtime.startswith(RUNSC)
    entries = [
        f"{0 if gvisor else m.device}:{0 if gvisor else m.inode}:{int(not m.read_only)}:"
        f"{m.target.encode().hex()}"
        for m in mounts
    ]
    env = {"ATHENA_MOUNTS": ",".join(entries)}
    if any(not m.read_only for m in mounts):
        env["ATHENA_MOUNT_WRITE_CAP"] = str(policy.filesystem.max_mount_write_bytes)
    return env


def _denial_env(policy: Policy, language: str | None) -> dict[str, str]:
    """``ATHENA_DENY``: what the runner refuses in the kernel for this language's interpreter."""
    if language is None:
        return {}
    denied = kernel_denials(runtime_guard(policy, language))
    return {"ATHENA_DENY": ",".join(denied)} if denied else {}


def _pids_limit(pids: int, runtime: str) -> int:
    if runtime.startswith(RUNSC):
        return RUNSC_PIDS_BASE + RUNSC_PIDS_PER_PROCESS * pids
    return pids


def choose_runtime(policy: Policy, registered: frozenset[str]) -> str | None:
    """The container runtime a policy gets on an engine with these runtimes (pure).

    Returns None when the policy requires gVisor and the engine has none.
    """
    wants = policy.runtime.gvisor
    if wants == "never" or (wants == "prefer" and RUNSC not in registered):
        return RUNTIME
    if RUNSC not in registered:
        return None
    if policy.network.mode == "none" and RUNSC_NONET in registered:
        return RUNSC_NONET
    return RUNSC


def compile_docker(
    policy: Policy,
    spec: RunSpec,
    *,
    image: str,
    labels: Mapping[str, str],
    route: EgressRoute | None = None,
    container_runtime: str = RUNTIME,
    language: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Translate a policy into the arguments of Docker's create-container call.

    Returns ``{"create": kwargs of APIClient.create_container (without host_config),
    "host_config": kwargs of APIClient.create_host_config}``. With ``language``, what the
    runner refuses in the kernel for that language's interpreter is included
    (``ATHENA_DENY``, from the policy's run-time guard).

    Raises:
        PolicyError: an allowlist policy without an egress route.
    """
    limits, fs, runtime = policy.limits, policy.filesystem, policy.runtime
    tmpfs = f"size={fs.tmpfs_mb}m"
    network, network_env = _network(policy, route)
    return {
        "create": {
            "image": image,
            "user": runtime.user,
            "working_dir": WORKDIR,
            "hostname": "sandbox",
            "environment": {
                **_ENVIRONMENT,
                **network_env,
                **_mount_check_env(policy, spec.mounts, container_runtime),
                **_denial_env(policy, language),
            },
            "labels": dict(labels),
            # stdin stays attached (StdinOnce): its EOF tells the runner that we are gone.
            "stdin_open": True,
            "tty": False,
        },
        "host_config": {
            **network,
            "read_only": fs.read_only_root,
            "tmpfs": {
                "/tmp": f"rw,nosuid,nodev,{tmpfs},mode=1777",
                WORKDIR: f"rw,nosuid,nodev,{tmpfs},uid={runtime.uid},gid={runtime.gid}",
            },
            "mounts": [
                {"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}
                for m in spec.mounts
            ],
            "mem_limit": limits.memory_mb * _MIB,
            "memswap_limit": limits.memory_mb * _MIB,  # swap equal to memory: no swap at all
            "nano_cpus": round(limits.cpus * 1e9),
            "pids_limit": _pids_limit(limits.pids, container_runtime),
            "ulimits": [
                {"name": "nofile", "soft": limits.open_files, "hard": limits.open_files},
                {
                    "name": "fsize",
                    "soft": limits.file_size_mb * _MIB,
                    "hard": limits.file_size_mb * _MIB,
                },
                {"name": "core", "soft": 0, "hard": 0},
            ],
            "shm_size": min(fs.tmpfs_mb, 64) * _MIB,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "privileged": False,
            "ipc_mode": "private",
            "init": False,  # the runner is PID 1: it reaps, and kill(-1) reaches every process
            "runtime": container_runtime,
            "auto_remove": True,
            # Output reaches us over the attach stream; a log driver would copy floods to disk.
            "log_config": {"type": "none", "config": {}},
        },
    }


# --------------------------------------------------------------------------- the backend


def _raw_socket(attached: Any) -> socket.socket:
    # docker-py returns a SocketIO over a Unix socket (or the socket itself for TLS).
    raw = getattr(attached, "_sock", attached)
    if not isinstance(raw, socket.socket):
        raise SandboxFailedError(f"cannot use the attach stream of type {type(raw).__name__}")
    return raw


@dataclass(eq=False)
class Sandbox:
    """A started container whose runner waits for one request on the attached stdin.

    Attributes:
        container_id: the container's id.
        sock: the attach stream (stdin, and the runner's frames).
        attached: docker-py's wrapper of the stream, kept so it is closed with it.
        image: the image reference.
        path: ``cold`` (started for this run) or ``warm`` (taken from the pool).
        pending: bytes read before the run (the ready frame), replayed to the run's reader.
        address: its address on the egress network (allowlist policies only).
    """

    container_id: str
    sock: socket.socket
    attached: Any
    image: str
    path: Literal["cold", "warm"]
    pending: bytes = b""
    address: str | None = None
    runtime: str = RUNTIME

    def close(self) -> None:
        """Close the attach stream: the runner sees EOF and ends whatever it was doing."""
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            self.sock.close()
        with suppress(Exception):
            self.attached.close()

    def is_idle_and_alive(self) -> bool:
        """Whether a pooled sandbox can still take a run (nothing arrived since it was ready)."""
        try:
            readable = select.select([self.sock], [], [], 0)[0]
        except (OSError, ValueError):
            return False
        return not readable  # EOF or anything unexpected: it is not the fresh runner we left


class _NeverStarted(Exception):
    """The sandbox went away before the code started: the run may go to a fresh one."""


PoolKey = tuple[str, str]  # (language, fingerprint of the container settings)


@dataclass(frozen=True)
class _Blueprint:
    """What every container of one (language, policy, mounts) is created from."""

    key: PoolKey
    image: str
    body: dict[str, Any]  # the Engine API's create body, labels without the run's id
    egress: bool = False  # sandboxes sit on the egress network behind the proxy
    runtime: str = RUNTIME


def _attach(
    api: docker.APIClient, fast: FastEngine | None, container_id: str
) -> tuple[socket.socket, Any]:
    if fast is not None:
        sock = fast.attach(container_id)
        return sock, sock
    params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
    attached = api.attach_socket(container_id, params=params)
    return _raw_socket(attached), attached


class DockerBackend:
    """Runs each request in a never-used container: a warm one from the pool, or a fresh one.

    Args:
        settings: image names, timeouts, pool sizes, start-up sweep.
        client_factory: builds the docker-py client (default: ``docker.from_env``).
    """

    name = "docker"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client_factory: Callable[[], docker.DockerClient] | None = None,
    ) -> None:
        self._settings = settings or Settings()
        self._factory = client_factory or self._default_client
        # The http.client fast path talks to the socket docker-py found; a caller's own client
        # (a fake, a remote engine) is used for everything instead.
        self._fast_allowed = client_factory is None
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()
        self._images_ok: set[str] = set()
        # container id -> its sandbox, for every container we started that is not done yet
        self._live: dict[str, Sandbox | None] = {}
        self._blueprints: dict[tuple[str, Policy, tuple[ResolvedMount, ...]], _Blueprint] = {}
        self._pool_blueprints: dict[PoolKey, _Blueprint] = {}
        self._fast: FastEngine | Literal[False] | None = None
        self._pool: WarmPool[PoolKey, Sandbox] = WarmPool(
            self._launch_pooled,
            self._discard,
            Sandbox.is_idle_and_alive,
            size_for=lambda key: self._settings.pool_size_for(key[0]),
            min_size=self._settings.pool_min_size,
            idle_ttl=self._settings.pool_idle_ttl_seconds,
        )
        self._reaper = ThreadPoolExecutor(max_workers=2, thread_name_prefix="athena-reaper")
        self._stage = MountStage()
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._egress: tuple[EgressRoute, egress.EgressProxy, bool] | None = None
        self._registered: frozenset[str] | None = None
        self._closed = False
        self._swept = False
        self._down_until = 0.0
        self._down_reason: str | None = None
        atexit.register(_close_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> DockerBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill runs still going, let the pooled containers go, and drop the client."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()
        with self._lock:
            live, self._live = dict(self._live), {}
            client = self._client
        for sandbox in live.values():
            if sandbox is not None:  # the run's reader sees EOF at once; the runner too
                sandbox.close()
        if client is not None:
            for container_id in live:
                self._reaper.submit(_remove_quietly, client.api, container_id)
        self._reaper.shutdown(wait=True)
        with self._lock:
            self._client = None
        if client is not None:
            client.close()
        if self._egress is not None:
            _, proxy, shielded = self._egress
            proxy.close()
            if shielded:
                host, port = proxy.address
                egress.unshield_host(host, port)
        self._stage.close()
        if self._watchdog is not None:  # its stdin closes: it sweeps (nothing left) and exits
            with suppress(OSError):
                self._watchdog.communicate(timeout=30)

    def unavailable_reason(self, language: str) -> str | None:
        """Why no container can run here (no engine answers), or None.

        An answer is remembered: a working engine for good, a missing one for a few seconds.
        """
        with self._lock:
            if self._client is not None:
                return None
            if self._down_until > time.monotonic():
                return self._down_reason
        try:
            self._api()
        except BackendUnavailableError as exc:
            with self._lock:
                self._down_until = time.monotonic() + UNAVAILABLE_TTL_S
                self._down_reason = str(exc)
            return str(exc)
        return None

    def _default_client(self) -> docker.DockerClient:
        client = docker.from_env(timeout=int(self._settings.docker_api_timeout), max_pool_size=64)
        # requests would read proxy variables and .netrc from the environment on every call,
        # a large share of a warm run's CPU; the engine is reached directly.
        client.api.trust_env = False
        return client

    def _api(self) -> docker.APIClient:
        with self._lock:
            if self._closed:
                raise SandboxFailedError("this backend is closed; create a new one")
            if self._client is None:
                try:
                    self._client = self._factory()
                except docker.errors.DockerException as exc:
                    raise unavailable(exc) from exc
            client = self._client
            sweep = self._settings.sweep_on_start and not self._swept
            self._swept = True
        if sweep:
            self.sweep()
        return client.api

    def sweep(self) -> int:
        """Remove containers whose labelled owner process on this host is dead.

        Returns:
            How many containers were removed.
        """
        api = self._api()
        with map_docker_errors("list containers"):
            containers = api.containers(all=True, filters={"label": LABEL_SANDBOX})
        removed = 0
        for container in containers:
            if owner_is_dead(container.get("Labels") or {}):
                _remove_quietly(api, container["Id"])
                removed += 1
        if removed:
            log.info("removed orphaned sandbox containers", count=removed)
        sweep_stale_mounts()
        return removed

    # ------------------------------------------------------------------ runs

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        """Run one request in a never-used container; see :class:`Backend`.

        A container that dies before the code starts (a pooled runner gone, an engine hiccup)
        is replaced by a fresh one; once the code has started, nothing is retried.
        """
        api = self._api()
        blueprint = self._configure(api, request.language, request.policy, spec)
        nonce = new_nonce()
        payload = encode_request(
            request.code.encode("utf-8", errors="surrogatepass"),
            get_language(request.language).request_blob(
                request.parameters, runtime_guard(request.policy, request.language)
            ),
            max(1, round(spec.timeout_seconds * 1000)),  # 0 would mean "no deadline"
            request.policy.limits.max_output_bytes,
            nonce,
        )
        for attempt in range(1, NEVER_STARTED_ATTEMPTS + 1):
            if spec.cancel.cancelled:
                raise RunCancelledError("the run was cancelled before it started")
            try:
                sandbox = self._take(api, blueprint, request.execution_id)
                return self._drive(api, sandbox, (payload, nonce), request, spec, context)
            except _NeverStarted as exc:
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
        api = self._api()
        blueprint = self._configure(api, get_language(language).name, policy, spec)
        return self._pool.prewarm(blueprint.key, timeout)

    def _configure(
        self, api: docker.APIClient, language: str, policy: Policy, spec: RunSpec
    ) -> _Blueprint:
        """Return the container blueprint of (language, policy, mounts), built once."""
        cache_key = (language, policy, spec.mounts)
        blueprint = self._blueprints.get(cache_key)
        if blueprint is not None:
            return blueprint
        image = self._settings.image_ref(get_language(language).image)
        self._check_image(api, image)
        labels = {**owner_labels(), "athena.language": language, "athena.policy": policy.name}
        route = self._egress_route(api) if policy.network.mode == "allowlist" else None
        runtime = choose_runtime(policy, self._runtimes(api))
        if runtime is None:
            raise BackendUnavailableError(
                f"policy {policy.name!r} requires gVisor, and the Docker engine has no runsc "
                "runtime: run `make gvisor` (installs runsc and registers it with dockerd)"
            )
        if runtime.startswith(RUNSC) and spec.mounts:
            spec = dataclasses.replace(spec, mounts=self._staged(spec.mounts))
        config = compile_docker(
            policy,
            spec,
            image=image,
            labels=labels,
            route=route,
            container_runtime=runtime,
            language=language,
        )
        body = api.create_container_config(
            command=None,
            **config["create"],
            host_config=api.create_host_config(**config["host_config"]),
        )
        fingerprint = hashlib.sha256(
            json.dumps({**body, "Labels": None}, sort_keys=True).encode()
        ).hexdigest()[:16]
        blueprint = _Blueprint((language, fingerprint), image, body, route is not None, runtime)
        with self._lock:
            self._blueprints.setdefault(cache_key, blueprint)
            self._pool_blueprints.setdefault(blueprint.key, blueprint)
        return blueprint

    def _staged(self, mounts: tuple[ResolvedMount, ...]) -> tuple[ResolvedMount, ...]:
        """The mounts with sources gVisor's engine can bind safely (see ``mountstage``)."""
        return tuple(
            dataclasses.replace(m, source=self._stage.stage(m.source, m.device, m.inode))
            for m in mounts
        )

    def _take(self, api: docker.APIClient, blueprint: _Blueprint, execution_id: str) -> Sandbox:
        if self._settings.pool_size_for(blueprint.key[0]) > 0:
            sandbox = self._pool.take(blueprint.key, wait=self._settings.pool_wait_seconds)
            if sandbox is not None:
                return sandbox
        return self._launch(api, blueprint, "cold", {LABEL_RUN: execution_id})

    def _launch(
        self,
        api: docker.APIClient,
        blueprint: _Blueprint,
        path: Literal["cold", "warm"],
        labels: Mapping[str, str],
    ) -> Sandbox:
        """Create, attach and start a container; its runner then waits for a request."""
        self._ensure_watchdog()
        body = {**blueprint.body, "Labels": {**blueprint.body["Labels"], **labels}}
        image = blueprint.image
        fast = self._fast_engine(api)
        create = fast.create if fast else lambda b: api.create_container_from_config(b)["Id"]
        container_id: str = self._retry(lambda: create(body), "create the container", image)
        with self._lock:
            closing = self._closed
            self._live[container_id] = None
        try:
            if closing:
                raise SandboxFailedError("the backend was closed while the run was starting")
            with map_docker_errors("attach to the container"):
                sock, attached = _attach(api, fast, container_id)
            sandbox = Sandbox(container_id, sock, attached, image, path, runtime=blueprint.runtime)
            with self._lock:
                self._live[container_id] = sandbox
            start = fast.start if fast else api.start
            try:
                with map_docker_errors("start the container", image):
                    _RETRY_CONNECTION(start, container_id)
            except SandboxFailedError as exc:  # the engine refused: a fresh container may start
                raise _NeverStarted(str(exc)) from exc
            if blueprint.egress:
                sandbox.address = self._egress_address(api, container_id)
        except BaseException:
            self._release(api, container_id, finished=False)
            raise
        return sandbox

    def _runtimes(self, api: docker.APIClient) -> frozenset[str]:
        """The container runtimes the engine has registered (asked once)."""
        if self._registered is None:
            with map_docker_errors("ask the engine for its runtimes"):
                self._registered = frozenset((api.info().get("Runtimes") or {}).keys())
        return self._registered

    def _egress_route(self, api: docker.APIClient) -> EgressRoute:
        """The egress network and this process's proxy on its gateway, set up once."""
        with self._lock:
            if self._egress is not None:
                return self._egress[0]
        with map_docker_errors("set up the egress network"):
            gateway = egress.ensure_network(api)
        proxy = egress.EgressProxy(gateway, pinned=self._settings.egress_pinned_hosts)
        host, port = proxy.address
        shielded = os.geteuid() == 0 and egress.shield_host(gateway, port)
        route = EgressRoute(egress.NETWORK, f"http://{host}:{port}")
        with self._lock:
            if self._egress is None:
                self._egress = (route, proxy, shielded)
                return route
        proxy.close()  # another thread won the race
        if shielded:
            egress.unshield_host(gateway, port)
        with self._lock:
            assert self._egress is not None
            return self._egress[0]

    @staticmethod
    def _egress_address(api: docker.APIClient, container_id: str) -> str:
        with map_docker_errors("read the sandbox's address"):
            networks = api.inspect_container(container_id)["NetworkSettings"]["Networks"]
        return str(networks[egress.NETWORK]["IPAddress"])

    def _fast_engine(self, api: docker.APIClient) -> FastEngine | None:
        """The http.client path to a Unix-socket engine (None for TCP or TLS engines)."""
        with self._lock:
            if self._fast is None:
                path = unix_socket_path() if self._fast_allowed else None
                self._fast = (
                    FastEngine(path, api.api_version, self._settings.docker_api_timeout)
                    if path
                    else False
                )
            return self._fast or None

    def _ensure_watchdog(self) -> None:
        """Start the watchdog that removes our containers if this process dies (once)."""
        with self._lock:
            if self._watchdog is not None or self._closed:
                return
            labels = owner_labels()
            self._watchdog = watchdog.start(
                {k: labels[k] for k in (LABEL_OWNER_PID, LABEL_OWNER_STARTED, LABEL_OWNER_HOST)}
            )

    def _launch_pooled(self, key: PoolKey) -> Sandbox:
        """Start a container for the pool and wait until its runner says it is ready."""
        api = self._api()
        with self._lock:
            blueprint = self._pool_blueprints[key]
        sandbox = self._launch(api, blueprint, "warm", {LABEL_POOL: "1"})
        try:
            sandbox.pending = self._await_ready(sandbox)
        except BaseException:
            self._release(api, sandbox.container_id, finished=False)
            raise
        return sandbox

    def _await_ready(self, sandbox: Sandbox) -> bytes:
        """Read until the runner's ready frame; return what came with it."""
        demux, frames, seen = DockerDemuxer(), FrameDecoder(), b""
        deadline = time.monotonic() + self._settings.startup_timeout
        while time.monotonic() < deadline:
            if not select.select([sandbox.sock], [], [], deadline - time.monotonic())[0]:
                break
            data = sandbox.sock.recv(65536)
            if not data:
                raise SandboxFailedError("a pooled sandbox ended before it was ready")
            seen += data
            for stream, payload in demux.feed(data):
                if stream == DockerDemuxer.STDOUT and any(
                    f.kind == FRAME_READY for f in frames.feed(payload)
                ):
                    return seen
        raise SandboxFailedError(
            f"a pooled sandbox was not ready within {self._settings.startup_timeout:g} s"
        )

    def _discard(self, sandbox: Sandbox) -> None:
        """Let a pooled sandbox go (expired, surplus, dead, or the pool is closing)."""
        with self._lock:
            client = self._client
        sandbox.close()
        if client is not None:
            self._release(client.api, sandbox.container_id, finished=False)

    def _release(self, api: docker.APIClient, container_id: str, *, finished: bool) -> None:
        """Forget a container; unless its runner ended the run, remove it in the background."""
        with self._lock:
            sandbox = self._live.pop(container_id, None)
            closed = self._closed
        if sandbox is not None:
            sandbox.close()
        if finished:
            return  # the runner exits after its report and AutoRemove removes the container
        if not closed:
            try:
                self._reaper.submit(_remove_quietly, api, container_id)
                return
            except RuntimeError:  # the reaper shut down in between: remove it here
                pass
        _remove_quietly(api, container_id)

    def _drive(
        self,
        api: docker.APIClient,
        sandbox: Sandbox,
        message: tuple[bytes, str],
        request: ExecutionRequest,
        spec: RunSpec,
        context: ExecutionContext,
    ) -> RunOutcome:
        """Send the request (bytes and nonce) to a sandbox's runner; read its report."""
        payload, nonce = message
        reader = RunReader(context, sandbox.container_id[:12], nonce)
        forget = spec.cancel.on_cancel(sandbox.close)  # the reader sees EOF; the runner too
        proxy = self._egress[1] if self._egress and sandbox.address else None
        if proxy is not None and sandbox.address:
            proxy.admit(sandbox.address, request.policy.network.allowed_domains)
        refusals: list[egress.Refusal] = []
        try:
            reader.take(sandbox.pending)
            try:
                sandbox.sock.sendall(payload)
            except OSError as exc:
                raise _NeverStarted(f"could not send the request: {exc}") from exc

            def alive() -> bool:
                return bool(_final_state(api, sandbox.container_id).get("Running"))

            timed_out = self._pump(sandbox.sock, reader, spec, alive)
            if proxy is not None and sandbox.address:
                refusals = proxy.release(sandbox.address)
            if spec.cancel.cancelled and reader.exit_info is None:
                raise RunCancelledError("the run was cancelled; its sandbox was killed")
            if self._closed and reader.exit_info is None:
                raise RunCancelledError(_CLOSED_MID_RUN)
            if reader.begun_at is None and reader.exit_info is None:
                raise _NeverStarted("the runner ended before it took the request")
            outcome = self._outcome(api, sandbox, reader, timed_out, request)
            return dataclasses.replace(
                outcome,
                network_refusals=tuple((r.host, r.port, r.reason) for r in refusals),
                forged_reports=reader.forged_reports,
            )
        finally:
            if proxy is not None and sandbox.address:
                proxy.release(sandbox.address)
            forget()
            self._release(api, sandbox.container_id, finished=reader.exit_info is not None)

    def _pump(
        self,
        sock: socket.socket,
        reader: RunReader,
        spec: RunSpec,
        alive: Callable[[], bool],
    ) -> bool:
        """Read frames until the runner reports the exit. Returns True when we had to time out.

        After IDLE_CHECK_S without a byte, ``alive()`` asks the engine whether the container
        still runs: an attach stream is not always closed when a container is removed under it.
        """
        ready_by = time.monotonic() + self._settings.startup_timeout
        timeout = spec.timeout_seconds
        while reader.exit_info is None and not spec.cancel.cancelled:
            limit = (
                ready_by if reader.begun_at is None else reader.begun_at + timeout + KILL_GRACE_S
            )
            left = limit - time.monotonic()
            if left <= 0:
                if reader.begun_at is None:
                    raise SandboxFailedError(
                        "the sandbox did not become ready within "
                        f"{self._settings.startup_timeout:g} s"
                    )
                return True
            try:
                readable = select.select([sock], [], [], min(left, IDLE_CHECK_S))[0]
                data = sock.recv(262144) if readable else None
            except (OSError, ValueError) as exc:  # ValueError: closed under us by a cancel
                if spec.cancel.cancelled or self._closed:
                    return False
                raise unavailable(f"the attach stream broke: {exc}") from exc
            if data is None:
                if left > IDLE_CHECK_S and not alive():
                    return False
                continue
            if not data:
                return False
            try:
                reader.take(data)
            except (ProtocolError, ValueError) as exc:
                raise SandboxFailedError(f"the sandbox runner sent garbage: {exc}") from exc
        return False

    def _outcome(
        self,
        api: docker.APIClient,
        sandbox: Sandbox,
        reader: RunReader,
        timed_out: bool,
        request: ExecutionRequest,
    ) -> RunOutcome:
        container_id = sandbox.container_id
        sandbox_id = container_id[:12]
        isolation = Isolation(
            mode="docker", runtime=sandbox.runtime, path=sandbox.path, image=sandbox.image
        )
        started = reader.begun_at is not None
        if reader.exit_info is not None:
            targets = [m.target for m in request.policy.filesystem.mounts]
            fields = outcome_from_frames(
                reader.exit_info, reader.value, request.track_resources, targets
            )
            return RunOutcome(isolation=isolation, started=started, sandbox_id=sandbox_id, **fields)
        if timed_out:
            elapsed = (time.monotonic() - (reader.begun_at or time.monotonic())) * 1000
            return RunOutcome(
                isolation=isolation,
                started=True,
                signal=9,
                timed_out=True,
                run_ms=elapsed,
                sandbox_id=sandbox_id,
            )
        state = _final_state(api, container_id)
        if state.get("OOMKilled"):
            return RunOutcome(
                isolation=isolation,
                started=started,
                signal=9,
                oom_killed=True,
                sandbox_id=sandbox_id,
            )
        detail = reader.runner_stderr.decode(errors="replace").strip()
        raise SandboxFailedError(
            "the sandbox ended without reporting a result"
            + (f" (container exit status {state['ExitCode']})" if "ExitCode" in state else "")
            + (f": {detail}" if detail else "")
        )

    def _check_image(self, api: docker.APIClient, image: str) -> None:
        if image in self._images_ok:
            return
        with map_docker_errors("inspect the sandbox image", image):
            labels = (api.inspect_image(image).get("Config") or {}).get("Labels") or {}
        if labels.get(IMAGE_PROTOCOL_LABEL) != PROTOCOL:
            raise ImageNotFoundError(
                f"the sandbox image {image} speaks runner protocol "
                f"{labels.get(IMAGE_PROTOCOL_LABEL)!r}, this orchestrator needs {PROTOCOL!r}: "
                "run `make images` to rebuild it"
            )
        self._images_ok.add(image)

    def _retry(self, call: Callable[[], T], action: str, image: str) -> T:
        # Only Docker API calls made before the code starts are retried, never the code itself.
        with map_docker_errors(action, image):
            return _RETRY_TRANSIENT(call)


def _is_refusal(exc: BaseException) -> bool:
    """Whether the engine answered with an error of its own (not a dropped connection)."""
    return isinstance(exc, EngineError | docker.errors.APIError)


def _final_state(api: docker.APIClient, container_id: str) -> dict[str, Any]:
    # The container may be gone already (AutoRemove); then there is nothing more to learn.
    with suppress(docker.errors.DockerException, OSError):
        state: dict[str, Any] = api.inspect_container(container_id).get("State") or {}
        return state
    return {}


def _remove_quietly(api: docker.APIClient, container_id: str) -> None:
    # NotFound: already removed (AutoRemove); 409: the engine is removing it already.
    with suppress(docker.errors.NotFound):
        try:
            api.remove_container(container_id, force=True)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                log.warning(
                    "could not remove a sandbox container",
                    container=container_id[:12],
                    error=str(exc),
                )
        except OSError as exc:
            log.warning(
                "could not remove a sandbox container", container=container_id[:12], error=str(exc)
            )


def _close_at_exit(ref: weakref.ref[DockerBackend]) -> None:
    backend = ref()
    if backend is not None:
        with suppress(Exception):
            backend.close()
