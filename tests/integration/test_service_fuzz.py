"""The OpenAPI schema fuzzed against a real server and the real engine: no 5xx, nothing left over.

Schemathesis reads ``/openapi.json`` from a real ``athena-sandbox serve`` (a tokens file, one
tenant) and sends every operation the schema's examples, its coverage cases and a bounded,
derandomized number of generated requests, valid and invalid. Each answer must not be a 5xx and
must match what the schema says of it: a documented status code, a documented content type and
a body that validates against the documented schema. The execute operations run whatever code
the fuzzer writes, for real, under the tenant's policies (strict: no network); nothing is
excluded. Afterwards the server still answers and no container of its is left, running or not.
"""

from __future__ import annotations

import socket
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from orchestrator.backends.docker.owners import (
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_STARTED,
    LABEL_POOL,
    LABEL_SANDBOX,
    process_start_ticks,
)
from tests.integration.conftest import owned_by, wait_until
from tests.service_server import ServiceServer, running_server

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TENANT = "fuzz"
# Generated requests per operation in the fuzzing phase (the examples and coverage phases add
# their own fixed sets): about a minute in all on a 2-core machine, though every execute
# request may start a real sandbox.
MAX_EXAMPLES = 100
MAX_BATCH_FUZZED = 8  # calls per fuzzed batch
# Requests sent and the status codes answered, per operation (the last test reads them).
SENT: defaultdict[str, Counter[int]] = defaultdict(Counter)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Every operation of the HTTP API (the design contract); the fuzz must reach each one.
OPERATIONS = {
    "POST /v1/execute",
    "POST /v1/execute/stream",
    "POST /v1/execute/batch",
    "GET /v1/executions/{execution_id}",
    "POST /v1/prewarm",
    "POST /v1/memories",
    "POST /v1/recall",
    "DELETE /v1/records/{record_id}",
    "POST /v1/events",
    "POST /v1/events/search",
    "POST /v1/procedures",
    "POST /v1/procedures/{procedure_id}/code",
    "POST /v1/procedures/validate",
    "POST /v1/entities",
    "POST /v1/relations",
    "POST /v1/consolidate",
    "GET /v1/policies",
    "GET /v1/policies/{name}",
    "POST /v1/sessions",
    "GET /v1/sessions",
    "GET /v1/sessions/{session_id}",
    "DELETE /v1/sessions/{session_id}",
    "POST /v1/sessions/{session_id}/execute",
    "POST /v1/sessions/{session_id}/execute/stream",
    "POST /v1/sessions/{session_id}/replay",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceServer]:
    """A real server with one token (tenant ``fuzz``: strict and research, 8 runs in flight)."""
    directory = tmp_path_factory.mktemp("fuzz-server")
    home = directory / "home"
    home.mkdir()
    with running_server(directory, tenants={TENANT: {}}, env={"HOME": str(home)}) as server:
        yield server


@pytest.fixture(scope="module")
def server_owner(fuzz_server: ServiceServer) -> dict[str, str]:
    """The owner labels the server process puts on its containers (host, pid, start time)."""
    pid = fuzz_server.process.pid
    started = process_start_ticks(pid)
    assert started is not None, "the server process is gone"
    return {
        LABEL_OWNER_HOST: socket.gethostname(),
        LABEL_OWNER_PID: str(pid),
        LABEL_OWNER_STARTED: started,
    }


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ServiceServer) -> Any:
    """The server's own OpenAPI schema, set up to fuzz it reproducibly with the tenant's token."""
    config = schemathesis.Config.from_dict(
        {
            "base-url": fuzz_server.url,
            "headers": fuzz_server.headers(),
            "request-timeout": 60,
            "max-stream-events": 200,
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                "mode": "all",
            },
        }
    )
    return schemathesis.openapi.from_url(
        f"{fuzz_server.url}/openapi.json", config=config, headers=fuzz_server.headers(), timeout=30
    )


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Give the test item the ``_nodeid`` attribute schemathesis' lazy schemas read and write.

    Schemathesis 4.32 (``pytest/lazy.py``) renames the item per operation through
    ``node._nodeid``, which pytest 9.2 no longer has (it keeps the id in ``_id``); without it
    the lazy test fails with AttributeError before it sends a request.
    """
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def test_schema_names_every_operation(api_schema: Any) -> None:
    """The schema the fuzz reads lists every operation of the API, so none goes unfuzzed."""
    listed = {
        f"{result.ok().method.upper()} {result.ok().path}"
        for result in api_schema.get_all_operations()
    }
    assert listed >= OPERATIONS, f"operations the schema does not list: {OPERATIONS - listed}"


@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    # Real sandboxes are slow next to Hypothesis' expectations; headers are filtered to valid ones.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@schema.parametrize()
@pytest.mark.timeout(900)
def test_no_request_makes_the_server_fail(
    case: schemathesis.Case[Any], fuzz_server: ServiceServer, fuzz_session: str
) -> None:
    """No request gets a 5xx, and every answer has a documented status, content type and body."""
    body = case.body
    calls = body.get("calls") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(calls, list) and len(calls) > MAX_BATCH_FUZZED:
        # The coverage phase sends the boundary (1,000 real runs: minutes); the cap itself is
        # tested in test_service_hostile.py, and a few calls exercise the same code here.
        body["calls"] = calls[:MAX_BATCH_FUZZED]
    operation = f"{case.operation.method.upper()} {case.operation.path}"
    if operation in REAL_SESSION_OPERATIONS and SENT[operation].total() % 2 == 0:
        # Half of the calls go to a real open session (a random id only ever finds none).
        case.path_parameters = {**(case.path_parameters or {}), "session_id": fuzz_session}
    response = case.call_and_validate(checks=CHECKS)
    SENT[operation][response.status_code] += 1
    _close_opened(fuzz_server, operation, response)


REAL_SESSION_OPERATIONS = {
    "GET /v1/sessions/{session_id}",
    "POST /v1/sessions/{session_id}/execute",
    "POST /v1/sessions/{session_id}/execute/stream",
}  # not replay: each would run every call the fuzz made in the session again


def _close_opened(server: ServiceServer, operation: str, response: Any) -> None:
    """Close the session a request opened (open or replay), so the fuzz leaves none open."""
    if response.status_code != 201:
        return
    body = response.json()
    info = body.get("session", body) if operation.endswith("/replay") else body
    closed = httpx.delete(
        f"{server.url}/v1/sessions/{info['session_id']}", headers=server.headers(), timeout=60
    )
    assert closed.status_code in {200, 410}, closed.text  # 410: it expired already


@pytest.fixture(scope="module")
def fuzz_session(fuzz_server: ServiceServer) -> Iterator[str]:
    """A session of the fuzz tenant that fuzzed calls run in (closed at the end, if still open)."""
    with fuzz_server.client() as client:
        opened = client.post("/v1/sessions", json={"idle_timeout_seconds": 3600})
        assert opened.status_code == 201, opened.text
        session_id: str = opened.json()["session_id"]
        yield session_id
        if fuzz_server.process.poll() is None:  # the last test closes it and stops the server
            client.delete(f"/v1/sessions/{session_id}")


def _containers(
    server: ServiceServer, owner: dict[str, str], pooled: bool = True
) -> list[dict[str, Any]]:
    import docker

    client = docker.from_env()
    try:
        listed = client.api.containers(all=True, filters={"label": LABEL_SANDBOX})
    finally:
        client.close()
    mine = owned_by(listed, owner)
    if pooled:
        return mine
    return [c for c in mine if LABEL_POOL not in (c.get("Labels") or {})]


def test_after_the_fuzz_the_server_answers_and_leaves_nothing(
    fuzz_server: ServiceServer, server_owner: dict[str, str], fuzz_session: str
) -> None:
    """After the fuzz: /healthz answers, no run's container is left, and none at all once stopped."""
    print("requests sent by the fuzz, by operation and status:")
    for operation, statuses in sorted(SENT.items()):
        print(f"  {operation}: {dict(sorted(statuses.items()))}")
    unsent = OPERATIONS - set(SENT)
    assert not unsent, f"operations the fuzz sent nothing to: {unsent}"
    assert fuzz_server.process.poll() is None, f"the server died:\n{fuzz_server.log()[-4000:]}"
    health = httpx.get(f"{fuzz_server.url}/healthz", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok"}
    with fuzz_server.client() as client:
        leftover = {s["session_id"] for s in client.get("/v1/sessions").json()["sessions"]}
        assert leftover <= {fuzz_session}, "the fuzz left sessions open"
        client.delete(f"/v1/sessions/{fuzz_session}")  # its own (a fuzzed call may have ended it)
    runs_gone = wait_until(lambda: not _containers(fuzz_server, server_owner, False), timeout=15)
    assert runs_gone, [c["Names"] for c in _containers(fuzz_server, server_owner, False)]
    started = time.monotonic()
    code = fuzz_server.stop()
    assert code == 0, f"serve exited with {code} after {time.monotonic() - started:.1f} s"
    left = _containers(fuzz_server, server_owner)
    assert not left, f"containers of the stopped server: {[c['Names'] for c in left]}"
    assert "Traceback" not in fuzz_server.log(), fuzz_server.log()[-4000:]
