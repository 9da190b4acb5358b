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
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import docker
import docker.errors
import structlog
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from orchestrator.backends.base import RunOutcome, RunSpec
from orchestrator.backends.errors import is_transient, map_docker_errors, unavailable
from orchestrator.backends.owners import LABEL_RUN, LABEL_SANDBOX, owner_is_dead, owner_labels
from orchestrator.backends.protocol import PROTOCOL, ProtocolError, encode_request
from orchestrator.backends.reader import RunReader, outcome_from_frames
from orchestrator.context import ExecutionContext
from orchestrator.errors import ImageNotFoundError, SandboxFailedError
from orchestrator.languages import get_language
from orchestrator.models import ExecutionRequest, Isolation
from orchestrator.policy import Policy
from orchestrator.settings import Settings

log = structlog.get_logger(__name__)

WORKDIR = "/workspace"
RUNTIME = "runc"
IMAGE_PROTOCOL_LABEL = "org.athena.protocol"
# How long past its timeout a run may go before we kill the container ourselves; the runner
# normally kills the code at the timeout and reports well within this.
KILL_GRACE_S = 0.5
IDLE_CHECK_S = 2.0
_MIB = 1024 * 1024
_ENVIRONMENT = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORKDIR,
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}
T = TypeVar("T")


# --------------------------------------------------------------------------- pure translation


def compile_docker(
    policy: Policy, spec: RunSpec, *, image: str, labels: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Translate a policy into the arguments of Docker's create-container call.

    Returns ``{"create": kwargs of APIClient.create_container (without host_config),
    "host_config": kwargs of APIClient.create_host_config}``.
    """
    limits, fs, runtime = policy.limits, policy.filesystem, policy.runtime
    tmpfs = f"size={fs.tmpfs_mb}m"
    return {
        "create": {
            "image": image,
            "user": runtime.user,
            "working_dir": WORKDIR,
            "hostname": "sandbox",
            "environment": dict(_ENVIRONMENT),
            "labels": dict(labels),
            # stdin stays attached (StdinOnce): its EOF tells the runner that we are gone.
            "stdin_open": True,
            "tty": False,
        },
        "host_config": {
            "network_mode": "none" if policy.network.mode == "none" else "bridge",
            "read_only": fs.read_only_root,
            "tmpfs": {
                "/tmp": f"rw,noexec,nosuid,nodev,{tmpfs},mode=1777",
                WORKDIR: f"rw,nosuid,nodev,{tmpfs},uid={runtime.uid},gid={runtime.gid}",
            },
            "mounts": [
                {"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}
                for m in spec.mounts
            ],
            "mem_limit": limits.memory_mb * _MIB,
            "memswap_limit": limits.memory_mb * _MIB,  # swap equal to memory: no swap at all
            "nano_cpus": round(limits.cpus * 1e9),
            "pids_limit": limits.pids,
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
            "runtime": RUNTIME,
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


class DockerBackend:
    """Runs each request in a fresh container from its language's image.

    Args:
        settings: image names, timeouts, start-up sweep.
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
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()
        self._images_ok: set[str] = set()
        # container id -> its attach socket, for every run in flight (close() ends them all)
        self._live: dict[str, socket.socket | None] = {}
        self._closed = False
        self._swept = False
        atexit.register(_close_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> DockerBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill and remove the containers of runs still going, and drop the client."""
        with self._lock:
            self._closed = True
            live, self._live = dict(self._live), {}
            client, self._client = self._client, None
        for sock in live.values():
            if sock is not None:  # wakes the run's reader: it sees EOF at once
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if client is None:
            return
        for container_id in live:
            _remove_quietly(client.api, container_id)
        client.close()

    def _default_client(self) -> docker.DockerClient:
        return docker.from_env(timeout=int(self._settings.docker_api_timeout), max_pool_size=32)

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
        return removed

    # ------------------------------------------------------------------ runs

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        """Run one request in a fresh container; see :class:`Backend`."""
        language = get_language(request.language)
        image = self._settings.image_ref(language.image)
        api = self._api()
        self._check_image(api, image)
        labels = {
            **owner_labels(),
            LABEL_RUN: request.execution_id,
            "athena.language": language.name,
            "athena.policy": request.policy.name,
        }
        config = compile_docker(request.policy, spec, image=image, labels=labels)
        payload = encode_request(
            request.code.encode("utf-8", errors="surrogatepass"),
            language.parameters_blob(request.parameters),
            max(1, round(spec.timeout_seconds * 1000)),  # 0 would mean "no deadline"
            request.policy.limits.max_output_bytes,
        )
        isolation = Isolation(mode="docker", runtime=RUNTIME, path="cold", image=image)
        with self._container(api, config, image) as container_id:
            reader = RunReader(context)

            def alive() -> bool:
                return bool(_final_state(api, container_id).get("Running"))

            with self._attached(api, container_id) as sock:
                self._retry(lambda: api.start(container_id), "start the container", image)
                sock.sendall(payload)
                timed_out = self._pump(sock, reader, spec.timeout_seconds, alive)
            return self._outcome(api, container_id, reader, timed_out, isolation, request)

    @contextmanager
    def _container(
        self, api: docker.APIClient, config: dict[str, Any], image: str
    ) -> Iterator[str]:
        create = config["create"]
        host_config = api.create_host_config(**config["host_config"])
        created = self._retry(
            lambda: api.create_container(**create, host_config=host_config),
            "create the container",
            image,
        )
        container_id: str = created["Id"]
        with self._lock:
            closing = self._closed
            self._live[container_id] = None
        finished = False
        try:
            if closing:
                raise SandboxFailedError("the backend was closed while the run was starting")
            yield container_id
            finished = True
        finally:
            with self._lock:
                self._live.pop(container_id, None)
            if not finished:  # the runner did not end the run: make sure the container goes
                _remove_quietly(api, container_id)

    @contextmanager
    def _attached(self, api: docker.APIClient, container_id: str) -> Iterator[socket.socket]:
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        with map_docker_errors("attach to the container"):
            attached = api.attach_socket(container_id, params=params)
        sock = _raw_socket(attached)
        with self._lock:
            if container_id in self._live:
                self._live[container_id] = sock
        try:
            yield sock
        finally:
            with suppress(OSError):
                sock.close()
            with suppress(Exception):
                attached.close()

    def _pump(
        self,
        sock: socket.socket,
        reader: RunReader,
        timeout: float,
        alive: Callable[[], bool],
    ) -> bool:
        """Read frames until the runner reports the exit. Returns True when we had to time out.

        After IDLE_CHECK_S without a byte, ``alive()`` asks the engine whether the container
        still runs: an attach stream is not always closed when a container is removed under it.
        """
        ready_by = time.monotonic() + self._settings.startup_timeout
        while reader.exit_info is None:
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
            if not select.select([sock], [], [], min(left, IDLE_CHECK_S))[0]:
                if left > IDLE_CHECK_S and not alive():
                    return False
                continue
            try:
                data = sock.recv(262144)
            except OSError as exc:
                raise unavailable(f"the attach stream broke: {exc}") from exc
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
        container_id: str,
        reader: RunReader,
        timed_out: bool,
        isolation: Isolation,
        request: ExecutionRequest,
    ) -> RunOutcome:
        sandbox_id = container_id[:12]
        started = reader.begun_at is not None
        if reader.exit_info is not None:
            fields = outcome_from_frames(reader.exit_info, reader.value, request.track_resources)
            return RunOutcome(isolation=isolation, started=started, sandbox_id=sandbox_id, **fields)
        if timed_out:
            _remove_quietly(api, container_id)
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
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(3),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            reraise=True,
        )
        with map_docker_errors(action, image):
            return retrying(call)


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
