"""The suite's own order: tests that stop the Docker engine run after every other test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESTART_TEST = "tests/integration/test_engine_restart.py::"
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]


def _run_order(pytester: pytest.Pytester) -> list[str]:
    reports = pytester.inline_run("-p", "no:cacheprovider").getreports("pytest_runtest_logreport")
    return [report.nodeid for report in reports if report.when == "call"]


def test_marked_tests_run_last_whatever_their_file_name(pytester: pytest.Pytester) -> None:
    """The hook moves ``engine_restart`` tests to the end and keeps every other test's order."""
    pytester.makeini(
        "[pytest]\naddopts = --strict-markers\nmarkers =\n    engine_restart: stops the engine\n"
    )
    pytester.makeconftest("from tests.conftest import pytest_collection_modifyitems\n")
    pytester.makepyfile(
        test_a=(
            "import pytest\n"
            "def test_first(): pass\n"
            "@pytest.mark.engine_restart\n"
            "def test_restart(): pass\n"
            "def test_after(): pass\n"
        ),
        test_b="def test_other(): pass\n",
    )
    assert _run_order(pytester) == [
        "test_a.py::test_first",
        "test_a.py::test_after",
        "test_b.py::test_other",
        "test_a.py::test_restart",
    ]


def test_the_engine_restart_test_is_the_last_of_the_whole_suite() -> None:
    """Collecting every test of the project puts the engine-restart test last."""
    collected = subprocess.run(
        [*PYTEST, "--collect-only", "-q", "--continue-on-collection-errors", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    nodeids = [line for line in collected.stdout.splitlines() if "::" in line]
    assert nodeids, collected.stdout[-2000:] + collected.stderr[-2000:]
    assert nodeids[-1].startswith(RESTART_TEST), nodeids[-3:]
    assert sum(n.startswith(RESTART_TEST) for n in nodeids) == 1
