"""When the remote client sends a run again: only when its code cannot have started.

Behind a load balancer, the node a run lands on can die or drain before the run's code
starts; the run then belongs on another node. Once the code started it must never be sent
again: code with effects (a payment, a message, a file written) would take effect twice.

The server makes the difference visible: a run's answer (``POST /v1/execute``, and the event
stream) starts, with ``200``, just before its code is handed to the sandbox, and the worker
that hands it over waits until the start is written
(:class:`~athena.service.http_runs.EarlyStart`). So, for a run:

- no connection (it could not be made), or a ``502``, ``503`` or ``504`` (the load balancer
  found no node or lost it, or the node refused: it drains, its store does not answer): the
  code never started, and the run is sent again,
  at most :data:`RUN_ATTEMPTS` times in all, a little apart (tenacity's random exponential
  wait), so the load balancer's health checks can take the node out;
- a ``200`` whose body then breaks off: the code may have run; the caller gets
  :class:`~athena.service.wire.ServiceUnavailableError` saying so, and nothing is sent again;
- a connection that broke before any status line: not sent again either, since it may have
  broken between the client and a load balancer after the node's 200; nor a read timeout,
  since the run may be waiting in the node's queue and start at any moment.

Opening a session runs no code of the caller's, and is retried the same way; a batch's runs
start one by one as the batch goes, so a batch is never sent again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from athena.service import remote
from athena.service.wire import ServiceUnavailableError
from orchestrator.errors import SandboxError

T = TypeVar("T")
RUN_ATTEMPTS = 4
"""How many times in all a run whose code never started is sent."""
RETRIED_STATUSES = frozenset({502, 503, 504})
_WAIT = wait_random_exponential(multiplier=0.25, max=2.0)


class NotStarted(Exception):
    """A run's request failed before its code could start; ``error`` is what to raise at last."""

    def __init__(self, error: SandboxError) -> None:
        super().__init__(str(error))
        self.error = error


def send_failed(exc: httpx.TransportError, url: str) -> Exception:
    """The error of a request that got no status line: sent again only if it never left.

    Only a connection that could not be made is certain not to have reached a server. One
    that broke later may have broken between the client and a load balancer, after the node
    behind it wrote its 200 and handed the code over; a read timeout may leave the run queued
    there, to start any moment.
    """
    error = remote.unreachable(exc, url)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return NotStarted(error)
    if isinstance(exc, httpx.TimeoutException):
        return error
    return ServiceUnavailableError(
        f"the connection to {url} broke before an answer ({type(exc).__name__}: {exc}): the "
        "run was not sent again, since it may have reached a server and run; check for its "
        "effects before you run it again"
    )


def refused_before_start(response: httpx.Response, url: str) -> NotStarted | None:
    """A :class:`NotStarted` when a (read) answer says the code never started, else None."""
    if response.status_code not in RETRIED_STATUSES:
        return None
    try:
        return NotStarted(remote.refusal(response, url))
    except SandboxError as exc:  # not our JSON: the load balancer's own page
        return NotStarted(exc)


def lost_after_start(exc: httpx.TransportError, url: str) -> ServiceUnavailableError:
    """The error of a run whose answer broke off after its code was handed over."""
    return ServiceUnavailableError(
        f"the connection to {url} broke after the run's code was handed to its sandbox "
        f"({type(exc).__name__}): the server running it may have died. It was not sent again, "
        "since its code may have run (and may have taken effect): check for its effects "
        "before you run it again"
    )


def run_retrying(attempt: Callable[[], T]) -> T:
    """Call ``attempt`` until it does not raise :class:`NotStarted`, at most RUN_ATTEMPTS times.

    Raises:
        SandboxError: the last attempt's error.
    """
    try:
        for trial in Retrying(
            stop=stop_after_attempt(RUN_ATTEMPTS),
            wait=_WAIT,
            retry=retry_if_exception_type(NotStarted),
            reraise=True,
        ):
            with trial:
                return attempt()
    except NotStarted as exc:
        raise exc.error from exc.__cause__
    raise AssertionError("unreachable")  # pragma: no cover - Retrying returns or raises


async def run_retrying_async(attempt: Callable[[], Awaitable[T]]) -> T:
    """:func:`run_retrying` for asyncio.

    Raises:
        SandboxError: the last attempt's error.
    """
    try:
        async for trial in AsyncRetrying(
            stop=stop_after_attempt(RUN_ATTEMPTS),
            wait=_WAIT,
            retry=retry_if_exception_type(NotStarted),
            reraise=True,
        ):
            with trial:
                return await attempt()
    except NotStarted as exc:
        raise exc.error from exc.__cause__
    raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying returns or raises
