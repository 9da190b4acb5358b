"""The three Engine API calls on a run's critical path, over the standard library's http.client.

Every run needs a container created, attached and started. Through docker-py (requests and
urllib3) each call costs about a millisecond of our CPU; through ``http.client`` on the Unix
socket it costs a fraction, and those calls are most of the orchestrator's CPU per warm run.
Everything else (inspect, remove, list, images) stays with docker-py. Only a Unix-socket
engine (``DOCKER_HOST`` unset or ``unix://``) takes this path; others use docker-py throughout.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from typing import Any
from urllib.parse import quote, urlencode


class EngineError(Exception):
    """The engine answered an API call with an error status.

    Attributes:
        status_code: the HTTP status.
        explanation: the engine's message.
    """

    def __init__(self, status_code: int, explanation: str) -> None:
        super().__init__(f"{status_code}: {explanation}")
        self.status_code = status_code
        self.explanation = explanation


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class FastEngine:
    """Create, attach and start containers over a Unix socket with little CPU.

    Args:
        socket_path: the engine's socket, e.g. ``/var/run/docker.sock``.
        api_version: the API version docker-py negotiated, e.g. ``1.41``.
        timeout: seconds a call may take.
    """

    def __init__(self, socket_path: str, api_version: str, timeout: float) -> None:
        self._path, self._prefix, self._timeout = socket_path, f"/v{api_version}", timeout
        self._local = threading.local()  # one keep-alive connection per thread

    def create(self, body: dict[str, Any]) -> str:
        """Create a container from an Engine API body; return its id.

        Raises:
            EngineError: the engine refused (404 for a missing image).
            OSError: the socket failed.
        """
        created = self._call("POST", "/containers/create", body)
        container_id: str = created["Id"]
        return container_id

    def start(self, container_id: str) -> None:
        """Start a created container.

        Raises:
            EngineError: the engine refused.
            OSError: the socket failed.
        """
        self._call("POST", f"/containers/{quote(container_id)}/start", None)

    def attach(self, container_id: str) -> socket.socket:
        """Attach to stdin, stdout and stderr; return the raw stream (multiplexed, no TTY).

        Call it before ``start``: nothing is sent before the container starts, so nothing
        can be left behind in http.client's buffer when the stream is taken over.

        Raises:
            EngineError: the engine refused.
            OSError: the socket failed.
        """
        query = urlencode({"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        connection = _UnixConnection(self._path, self._timeout)
        try:
            connection.request(
                "POST",
                f"{self._prefix}/containers/{quote(container_id)}/attach?{query}",
                headers={"Connection": "Upgrade", "Upgrade": "tcp"},
            )
            response = connection.getresponse()
            if response.status not in (101, 200):
                raise EngineError(response.status, _explanation(response.read()))
            sock = connection.sock
            connection.sock = None  # the stream is ours now, not the connection's
        except BaseException:
            connection.close()
            raise
        assert sock is not None
        sock.settimeout(None)
        return sock

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):  # a kept-alive connection the engine closed: reconnect once
            connection = self._connection()
            try:
                connection.request(method, self._prefix + path, body=payload, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop(connection)
                if attempt == 2:
                    raise
                continue
            except http.client.HTTPException as exc:  # a confused connection: never reuse it
                self._drop(connection)
                raise ConnectionError(f"bad answer from the engine: {exc!r}") from exc
            except BaseException:
                self._drop(connection)
                raise
            if response.status >= 400:
                raise EngineError(response.status, _explanation(data))
            return json.loads(data) if data else None
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop(self, connection: _UnixConnection) -> None:
        connection.close()
        self._local.connection = None

    def _connection(self) -> _UnixConnection:
        connection: _UnixConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = _UnixConnection(self._path, self._timeout)
            self._local.connection = connection
        return connection


def _explanation(data: bytes) -> str:
    try:
        message = json.loads(data).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or data.decode(errors="replace").strip())
