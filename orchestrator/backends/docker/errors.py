"""Translation of engine errors into our error tree, in one place, and what is retried.

Only Engine API calls made before the code starts are retried, never the code itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import docker.errors
import requests.exceptions
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from orchestrator.backends.docker.fastpath import EngineError
from orchestrator.errors import (
    BackendUnavailableError,
    ImageNotFoundError,
    SandboxError,
    SandboxFailedError,
)

_CONNECTION_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
T = TypeVar("T")


def docker_host() -> str:
    """Return where docker-py looks for the engine, for messages."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def unavailable(detail: object) -> BackendUnavailableError:
    """Build the error for an engine that does not answer, saying how to get one."""
    return BackendUnavailableError(
        f"no Docker engine answers at {docker_host()} ({detail}). Start one with "
        "`make docker-up` (installs docker.io and starts dockerd), or set DOCKER_HOST."
    )


def unix_socket_path() -> str | None:
    """Return the engine's Unix socket path, or None when DOCKER_HOST points elsewhere."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return host.removeprefix("unix://") if host.startswith("unix://") else None


def is_transient(exc: BaseException) -> bool:
    """Whether a Docker API error is worth one more try (never for the user's code).

    Server errors (5xx) other than a missing image, and dropped connections, are transient: the
    engine was busy or restarting. Client errors (4xx) are not.
    """
    if isinstance(exc, docker.errors.ImageNotFound):
        return False
    if isinstance(exc, EngineError):
        return exc.status_code >= 500
    if isinstance(exc, docker.errors.APIError):
        return exc.status_code is not None and exc.status_code >= 500
    return isinstance(exc, _CONNECTION_ERRORS)


@contextmanager
def map_docker_errors(action: str, image: str | None = None) -> Iterator[None]:
    """Translate docker-py errors raised while doing ``action`` into our errors.

    Raises:
        ImageNotFoundError: the image is missing.
        BackendUnavailableError: the engine does not answer.
        SandboxFailedError: the engine refused or failed the action.
    """
    try:
        yield
    except SandboxError:
        raise
    except EngineError as exc:
        if exc.status_code == 404 and "image" in exc.explanation.lower():
            raise ImageNotFoundError(
                f"the sandbox image {image or ''} is missing: run `make images` "
                "(or `athena-sandbox images`) to build it"
            ) from exc
        raise SandboxFailedError(
            f"the Docker engine could not {action}: {exc.explanation}"
        ) from exc
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        raise unavailable(f"connection refused while trying to {action}") from exc
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFoundError(
            f"the sandbox image {image or ''} is missing: run `make images` "
            "(or `athena-sandbox images`) to build it"
        ) from exc
    except docker.errors.APIError as exc:
        raise SandboxFailedError(
            f"the Docker engine could not {action}: {exc.explanation or exc}"
        ) from exc
    except _CONNECTION_ERRORS as exc:
        raise unavailable(f"connection lost while trying to {action}") from exc
    except docker.errors.DockerException as exc:
        raise unavailable(exc) from exc
    except OSError as exc:  # the fast path's socket broke
        raise unavailable(f"the engine's socket failed while trying to {action}: {exc}") from exc


def is_refusal(exc: BaseException) -> bool:
    """Whether the engine answered with an error of its own (not a dropped connection)."""
    return isinstance(exc, EngineError | docker.errors.APIError)


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
    retry=retry_if_exception(lambda exc: is_transient(exc) and not is_refusal(exc)),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.1, max=1.0),
    reraise=True,
)


def retry_transient(call: Callable[[], T], action: str, image: str | None = None) -> T:
    """Call ``call``, again when the engine was busy or the connection dropped; map errors.

    Raises:
        SandboxError: what :func:`map_docker_errors` makes of the last failure.
    """
    with map_docker_errors(action, image):
        return _RETRY_TRANSIENT(call)


def retry_connection(call: Callable[[], T], action: str, image: str | None = None) -> T:
    """Call ``call``, again only when the connection broke (never after a refusal); map errors.

    Raises:
        SandboxError: what :func:`map_docker_errors` makes of the last failure.
    """
    with map_docker_errors(action, image):
        return _RETRY_CONNECTION(call)
