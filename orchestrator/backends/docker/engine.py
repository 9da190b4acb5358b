"""One interface to the Docker engine, and its implementation over docker-py and the fast path.

:class:`Engine` is every engine call the backend makes; :class:`DockerEngine` implements it,
sending the three calls on a run's critical path (create, attach, start) over the standard
library's ``http.client`` when the engine listens on a Unix socket (see :mod:`.fastpath`) and
everything else through docker-py. A test engine implements the same interface, so the backend
runs the same code with it as in production.

Errors are not translated here: an engine's refusal raises :class:`EngineError` or a docker-py
error, a broken connection an ``OSError`` or a requests error; the backend maps them with
:func:`~orchestrator.backends.docker.errors.map_docker_errors`.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import suppress
from typing import Any, Protocol

import docker
import docker.errors
import structlog

from orchestrator.backends.docker.egress import ensure_network
from orchestrator.backends.docker.errors import unavailable, unix_socket_path
from orchestrator.backends.docker.fastpath import FastEngine
from orchestrator.errors import SandboxFailedError

log = structlog.get_logger(__name__)

KMSG = "/dev/kmsg"
_KMSG_MAX_RECORDS = 200_000  # far more than a ring buffer holds; a bound, not a budget


class Stream(Protocol):
    """What an attach call hands back besides the raw socket: closed with it."""

    def close(self) -> None:
        """Close the wrapper."""


class Engine(Protocol):
    """The engine calls the Docker backend makes, one method each."""

    def container_body(self, create: dict[str, Any], host_config: dict[str, Any]) -> dict[str, Any]:
        """Turn :func:`compile_docker`'s two halves into the Engine API's create body."""
        ...

    def create(self, body: dict[str, Any]) -> str:
        """Create a container from an Engine API body; return its id."""
        ...

    def attach(self, container_id: str) -> tuple[socket.socket, Stream]:
        """Attach to stdin, stdout and stderr before the start; return the raw stream."""
        ...

    def start(self, container_id: str) -> None:
        """Start a created container."""
        ...

    def state(self, container_id: str) -> dict[str, Any]:
        """A container's ``State`` (``Running``, ``OOMKilled``, ``ExitCode``); {} once gone."""
        ...

    def events(self, container_id: str, since: float, wait: float) -> list[dict[str, Any]]:
        """A container's events from ``since`` (Unix time) to its removal, or ``wait`` s from now.

        The engine keeps them after the container is gone; [] when they cannot be read. An
        OOM notice the engine got only after the removal is dropped by the engine, so an
        ``oom`` event from the host kernel's log (``"source": "kernel"``) may stand in for it.
        """
        ...

    def address(self, container_id: str, network: str) -> str:
        """A container's IP address on a network."""
        ...

    def remove(self, container_id: str) -> None:
        """Remove a container, quietly when it is gone or going already."""
        ...

    def containers(self, label: str) -> list[dict[str, Any]]:
        """Every container, running or not, carrying ``label``: ``Id`` and ``Labels`` each."""
        ...

    def runtimes(self) -> frozenset[str]:
        """The container runtimes the engine has registered."""
        ...

    def local(self) -> bool:
        """Whether the engine runs on this host: a path of ours is the same file to it."""
        ...

    def image_labels(self, image: str) -> dict[str, str]:
        """An image's labels."""
        ...

    def egress_gateway(self) -> str:
        """Create the internal egress network if it is missing; return its gateway address."""
        ...

    def close(self) -> None:
        """Close the connections."""
        ...


def _raw_socket(attached: Any) -> socket.socket:
    # docker-py returns a SocketIO over a Unix socket (or the socket itself for TLS).
    raw = getattr(attached, "_sock", attached)
    if not isinstance(raw, socket.socket):
        raise SandboxFailedError(f"cannot use the attach stream of type {type(raw).__name__}")
    return raw


class DockerEngine:
    """The engine through docker-py, with the fast path for create, attach and start.

    Args:
        client: the docker-py client.
        fast: the http.client path to a Unix-socket engine; None sends everything via docker-py.
    """

    def __init__(self, client: docker.DockerClient, fast: FastEngine | None = None) -> None:
        self._client, self._api, self._fast = client, client.api, fast
        self._info: dict[str, Any] | None = None  # the engine's info, asked once

    @classmethod
    def from_env(cls, timeout: float) -> DockerEngine:
        """Connect to the engine docker-py finds (``DOCKER_HOST`` or the default socket).

        Raises:
            BackendUnavailableError: no engine answers.
        """
        try:
            client = docker.from_env(timeout=int(timeout), max_pool_size=64)
        except docker.errors.DockerException as exc:
            raise unavailable(exc) from exc
        # requests would read proxy variables and .netrc from the environment on every call,
        # a large share of a warm run's CPU; the engine is reached directly.
        client.api.trust_env = False
        path = unix_socket_path()
        return cls(client, FastEngine(path, client.api.api_version, timeout) if path else None)

    def container_body(self, create: dict[str, Any], host_config: dict[str, Any]) -> dict[str, Any]:
        """See :class:`Engine`."""
        host = self._api.create_host_config(**host_config)
        body: dict[str, Any] = self._api.create_container_config(
            command=None, **create, host_config=host
        )
        return body

    def create(self, body: dict[str, Any]) -> str:
        """See :class:`Engine`."""
        if self._fast is not None:
            return self._fast.create(body)
        return str(self._api.create_container_from_config(body)["Id"])

    def attach(self, container_id: str) -> tuple[socket.socket, Stream]:
        """See :class:`Engine`."""
        if self._fast is not None:
            sock = self._fast.attach(container_id)
            return sock, sock
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        attached = self._api.attach_socket(container_id, params=params)
        return _raw_socket(attached), attached

    def start(self, container_id: str) -> None:
        """See :class:`Engine`."""
        if self._fast is not None:
            self._fast.start(container_id)
        else:
            self._api.start(container_id)

    def state(self, container_id: str) -> dict[str, Any]:
        """See :class:`Engine`."""
        # The container may be gone already (AutoRemove); then there is nothing more to learn.
        with suppress(docker.errors.DockerException, OSError):
            state: dict[str, Any] = self._api.inspect_container(container_id).get("State") or {}
            return state
        return {}

    def events(self, container_id: str, since: float, wait: float) -> list[dict[str, Any]]:
        """See :class:`Engine`."""
        # The engine streams until ``until``; nothing of a container follows its "destroy".
        seen: list[dict[str, Any]] = []
        with suppress(docker.errors.DockerException, OSError, ValueError):
            stream = self._api.events(
                since=int(since),
                until=f"{time.time() + wait:.3f}",
                filters={"container": container_id},
                decode=True,
            )
            try:
                for event in stream:
                    seen.append(event)
                    if event.get("Action") == "destroy":
                        break
            finally:
                stream.close()
        local = unix_socket_path() is not None  # the kernel log is this host's, not the engine's
        if local and not any(e.get("Action") == "oom" for e in seen) and kernel_oom(container_id):
            seen.append({"Action": "oom", "source": "kernel"})
        return seen

    def address(self, container_id: str, network: str) -> str:
        """See :class:`Engine`."""
        networks = self._api.inspect_container(container_id)["NetworkSettings"]["Networks"]
        return str(networks[network]["IPAddress"])

    def remove(self, container_id: str) -> None:
        """See :class:`Engine`."""
        # NotFound: already removed (AutoRemove); 409: the engine is removing it already.
        try:
            self._api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                _removal_failed(container_id, exc)
        except OSError as exc:
            _removal_failed(container_id, exc)

    def containers(self, label: str) -> list[dict[str, Any]]:
        """See :class:`Engine`."""
        found: list[dict[str, Any]] = self._api.containers(all=True, filters={"label": label})
        return found

    def runtimes(self) -> frozenset[str]:
        """See :class:`Engine`."""
        return frozenset((self._engine_info().get("Runtimes") or {}).keys())

    def local(self) -> bool:
        """See :class:`Engine`.

        A Unix-socket engine that names this host as its own: not one in a VM (Docker Desktop
        names itself ``docker-desktop``) nor the host's engine seen from a container.
        """
        if self._fast is None:
            return False
        with suppress(docker.errors.DockerException, OSError):
            return self._engine_info().get("Name") == socket.gethostname()
        return False

    def _engine_info(self) -> dict[str, Any]:
        if self._info is None:  # two threads asking at once both ask: the same answer
            self._info = dict(self._api.info())
        return self._info

    def image_labels(self, image: str) -> dict[str, str]:
        """See :class:`Engine`."""
        labels: dict[str, str] = (self._api.inspect_image(image).get("Config") or {}).get(
            "Labels"
        ) or {}
        return labels

    def egress_gateway(self) -> str:
        """See :class:`Engine`."""
        return ensure_network(self._api)

    def close(self) -> None:
        """See :class:`Engine`."""
        self._client.close()


def kernel_oom(container_id: str, path: str = KMSG) -> bool:
    """Whether the kernel's log records an OOM kill in the memory cgroup of a container.

    Under gVisor the kernel may kill the sandbox itself; dockerd hears of it only after the
    container's exit and removal, and drops the notice. The kernel's own line
    (``oom-kill:...,oom_memcg=/docker/<id>,...``) outlives both. False when the log cannot be
    read (no CAP_SYSLOG) or the line has left the ring buffer.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        for _ in range(_KMSG_MAX_RECORDS):
            try:
                record = os.read(fd, 8192)
            except BrokenPipeError:  # a record was overwritten under us: read on
                continue
            except OSError:  # BlockingIOError: the end of the log
                return False
            if not record:  # a plain file standing in for the log, read to its end
                return False
            if b"oom-kill:" in record and b"oom_memcg=" in record:
                memcg = record.split(b"oom_memcg=", 1)[1].split(b",", 1)[0]
                if container_id.encode() in memcg:
                    return True
        return False
    finally:
        os.close(fd)


def _removal_failed(container_id: str, exc: Exception) -> None:
    log.warning("could not remove a sandbox container", container=container_id[:12], error=str(exc))
