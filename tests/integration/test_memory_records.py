"""What real runs leave in the memory: recallable records, patterns, redaction, forgetting.

Each test runs with the store on each backend: a SQLite file, and a PostgreSQL schema (marked
``postgres``), on the cold and the warm path.
"""

from __future__ import annotations

import pytest

from athena.mcp.memory_api import MemoryAPI
from tests.memory_backends import Backend

pytestmark = pytest.mark.docker


@pytest.fixture
def memory_target(backend: Backend) -> str:
    """The ``api`` fixture's store: a fresh one on each backend."""
    return backend.target


REPORT = "rows = parameters['rows']\naverage = sum(rows) / len(rows)\nprint(average)"


def test_failed_reports_become_a_recallable_pattern(api: MemoryAPI) -> None:
    """Six real runs failing with ZeroDivisionError consolidate into one counted pattern."""
    for _ in range(6):
        assert not api.execute_code(REPORT, parameters={"rows": []})["success"]
    assert api.execute_code(REPORT, parameters={"rows": [1, 3]})["stdout"] == "2.0\n"

    first = api.consolidate("balanced", days_back=1)
    again = api.consolidate("balanced", days_back=1)

    assert first["patterns_created"] == 1 and first["executions_scanned"] == 7
    assert (again["patterns_created"], again["patterns_updated"]) == (0, 0)
    for query in ("division by zero", "ZeroDivisionError"):
        hit = api.recall(query, kinds=["memory"])[0]
        assert hit["content"].startswith("6 python runs failed with ZeroDivisionError"), hit
        assert hit["context"]["occurrences"] == 6


def test_runs_are_recallable_and_forgettable(api: MemoryAPI) -> None:
    """A run is found by words of its code or output; forgetting it removes it and its event."""
    run = api.execute_code("print('quarterly flamingo census')")
    (hit,) = api.recall("flamingo census", kinds=["execution"])
    assert hit["context"]["execution_id"] == run["execution_id"]
    assert api.forget(hit["id"]) is True
    assert api.recall("flamingo") == []
    assert api.store.get_execution(run["execution_id"]) is None


def test_a_policy_can_redact_parameters(api: MemoryAPI) -> None:
    """records.redact_parameters in a policy keeps parameters out of the record, output kept."""
    policy = {"extends": "strict", "name": "private", "records": {"redact_parameters": True}}
    run = api.execute_code(
        "print(len(parameters['token']))", parameters={"token": "s3cret"}, sandbox_policy=policy
    )
    assert run["success"] and run["stdout"] == "6\n"
    record = api.store.get_execution(run["execution_id"])
    assert record is not None and record.parameters == {} and record.parameters_redacted
    assert record.stdout == "6\n"
