"""``athena-sandbox serve``: the HTTP API (and MCP at ``/mcp``) under uvicorn, with a drain.

On SIGTERM (or SIGINT) the server drains: at once ``/readyz`` answers 503 and new runs get 503
``Draining`` (connections are still accepted, so clients are told rather than refused); runs in
flight finish within the grace period, or are cancelled (killed, their containers removed, their
records saying so) when it is over; then uvicorn stops, the API closes (orchestrator and store),
and the process exits 0.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import re
import signal
import socket
import threading
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import structlog
import uvicorn

from athena.service.http import DEFAULT_GRACE_SECONDS, DEFAULT_MAX_BODY_BYTES, create_app
from athena.service.inflight import InFlight
from athena.service.nodes import NodeDirectory, NodeLock, Registration
from athena.service.proxy import Cluster
from athena.service.state import Service
from athena.settings import Settings as AppSettings
from athena.settings import store_options_from_env
from orchestrator.errors import RequestError
from orchestrator.settings import NODE_ID_PATTERN

if TYPE_CHECKING:
    from athena.api import MemoryAPI
    from athena.service.mcp import McpHttpMount

log = structlog.get_logger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str, tokens_file: str | os.PathLike[str] | None) -> None:
    """Refuse to listen beyond this machine without tokens.

    Raises:
        RequestError: ``host`` is not a loopback address and no tokens file is given.
    """
    if tokens_file is None and not is_loopback(host):
        raise RequestError(
            f"refusing to listen on {host!r} without tokens: anyone who can reach it could run "
            "code. Create a token (athena-sandbox tokens add TENANT --file FILE) and pass "
            "--tokens FILE (or ATHENA_TOKENS_FILE), or listen on 127.0.0.1"
        )


def check_project_dir(project_dir: Path, secrets: dict[str, Path]) -> None:
    """Refuse to serve when the project directory holds the store or the tokens file.

    ``research`` and ``development`` mount the project directory into sandboxes; a store there
    would let every tenant's runs read every tenant's records.

    Args:
        project_dir: the directory the policies mount.
        secrets: what must stay out of it, by what it is (``"the memory store"``: its path).

    Raises:
        RequestError: one of ``secrets`` is in or below ``project_dir``.
    """
    root = project_dir.resolve()
    for what, path in secrets.items():
        resolved = path.expanduser().resolve()
        if resolved == root or root in resolved.parents:
            raise RequestError(
                f"{what} ({resolved}) is inside the project directory {root}, which the research "
                "and development policies mount into sandboxes: every tenant's runs could read "
                "it. Set ATHENA_PROJECT_DIR to a directory of files meant for sandboxes, or keep "
                f"{what} elsewhere"
            )


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM drains the service before it stops."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self._service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain; a second SIGINT: stop at once (uvicorn's force exit)."""
        if self._service.is_draining():
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        log.info("draining", grace_seconds=self._service.grace_seconds)
        self._service.start_draining()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start, then freeze what start-up allocated out of the cyclic collector's way.

        The app, the MCP SDK and their pydantic models are some hundred thousand objects that
        live as long as the process; a full collection would walk them all in the middle of a
        request, so they are moved to the permanent generation once (``gc.freeze``).
        """
        await super().startup(sockets)
        gc.collect()
        gc.freeze()

    async def on_tick(self, counter: int) -> bool:
        """Stop once the drain is done (runs finished, or killed after the grace period)."""
        if self._service.drain_done() and not self.should_exit:
            log.info("drained")
            self.should_exit = True
        return await super().on_tick(counter)

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Install our handlers; unlike uvicorn's, do not re-raise the signal after the drain."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _mcp_mount(api: MemoryAPI, in_flight: InFlight, loopback: bool) -> McpHttpMount:
    """H4's MCP server over Streamable HTTP, counting runs against the same limits."""
    from athena.service.mcp import LOOPBACK_HOSTS, build_http_mount

    return build_http_mount(
        api, inflight=in_flight, allowed_hosts=LOOPBACK_HOSTS if loopback else None
    )


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    tokens_file: str | os.PathLike[str] | None = None,
    db: str | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    node_id: str | None = None,
    advertise_url: str | None = None,
) -> None:
    """Serve the HTTP API until SIGTERM, then drain, close everything and return.

    As a node of a cluster (``node_id``), it holds the id on this host for as long as it runs,
    labels its containers with it (removing those an earlier process of the id left), and
    registers ``advertise_url`` (default ``http://host:port``) in the store's node directory,
    so the other nodes can send it the requests of its sessions.

    Raises:
        RequestError: a non-loopback host without tokens, the project directory holds the
            store or the tokens file, or the node id is bad or held by another process.
        TokenFileError: the tokens file cannot be read.
        StoreError: the store cannot be opened.
    """
    from athena.api import MemoryAPI
    from athena.service.tokens import TokenFile

    check_listen(host, tokens_file)
    tokens = None
    if tokens_file is not None:
        tokens = TokenFile(Path(tokens_file))
        tokens.list()  # a missing or broken file fails now, not on the first request
    lock = None
    if node_id is not None:
        lock = NodeLock(check_node_id(node_id))
        lock.claim()  # before the sweep: a predecessor's containers are ours to remove
    try:
        api = MemoryAPI.create(db, settings=node_settings(node_id))
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    registration = None
    try:
        secrets = {} if tokens_file is None else {"the tokens file": Path(tokens_file)}
        store_path = getattr(api.store, "path", None)
        if isinstance(store_path, Path):
            secrets["the memory store"] = store_path
        check_project_dir(api.orchestrator.settings.resolved_project_dir(), secrets)
        in_flight = InFlight()
        if node_id is not None:
            url = advertise_url or default_url(host, port)
            registration = register_node(api, db, node_id, url)
        app = create_app(
            api,
            tokens=tokens,
            max_body_bytes=max_body_bytes,
            grace_seconds=grace_seconds,
            mcp=_mcp_mount(api, in_flight, is_loopback(host)),
            in_flight=in_flight,
            cluster=None
            if registration is None
            else Cluster(registration.node_id, registration.directory),
        )
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
            proxy_headers=False,  # nothing here trusts X-Forwarded-*; and one layer less per call
            lifespan="on",
        )
        server = DrainingServer(config, app.state.service)
        log.info("serving", url=f"http://{host}:{port}", tokens=tokens is not None, node=node_id)
        server.run()
    finally:
        if registration is not None:
            registration.stop()
        api.close()
        if lock is not None:
            lock.release()
        log.info("stopped")


def check_node_id(node_id: str) -> str:
    """Return ``node_id`` if it is one (letters, digits, ``-`` and ``_``, at most 63).

    Raises:
        RequestError: it is not.
    """
    if re.fullmatch(NODE_ID_PATTERN, node_id) is None:
        raise RequestError(
            f"node id {node_id!r} is not one: use 1 to 63 letters, digits, '-' or '_', "
            "starting with a letter or digit (a Kubernetes pod name fits)"
        )
    return node_id


def default_url(host: str, port: int) -> str:
    """``http://host:port``: where the other nodes reach this one unless told otherwise.

    Raises:
        RequestError: ``host`` is a wildcard address (0.0.0.0, ::): other nodes would connect
            to themselves (and send them the callers' tokens).
    """
    if host.strip("[]") in {"0.0.0.0", "::", ""}:
        raise RequestError(
            f"a node listening on {host!r} (every address) cannot say where the other nodes "
            "reach it: pass --advertise-url http://ADDRESS:PORT (or ATHENA_ADVERTISE_URL)"
        )
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def node_settings(node_id: str | None) -> AppSettings | None:
    """The environment's settings with this node's id (None: not a node)."""
    if node_id is None:
        return None
    base = AppSettings()
    orchestrator = base.orchestrator.model_copy(update={"node_id": node_id})
    return base.model_copy(update={"orchestrator": orchestrator})


def register_node(api: MemoryAPI, db: str | None, node_id: str, url: str) -> Registration:
    """Register this node in the directory of the store's database, and keep it alive there.

    Raises:
        RequestError: another host's live node holds the id.
    """
    # A SQLite store has a path; a PostgreSQL one only a masked URL, so its URL as given.
    store_path = getattr(api.store, "path", None)
    target = store_path if isinstance(store_path, Path) else db or store_options_from_env().target
    if target is None:
        raise RequestError("a node needs its store's database for the node directory: pass --db")
    # Connect the engine now, not at the first run: its start-up sweep removes what an earlier
    # life of this node left, and the sandboxes of dead nodes go at the first heartbeats.
    api.orchestrator.modes()
    sweep = api.orchestrator.sweep_nodes
    registration = Registration(NodeDirectory.open(target), node_id, url, sweep)
    registration.start()
    return registration
