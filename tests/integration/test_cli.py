"""The athena-sandbox command line, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

CLI = [sys.executable, "-m", "athena.cli"]


def test_run_from_stdin_passes_output_and_exit_code(tmp_path: Path) -> None:
    """`run -` executes stdin, prints the code's output and exits with its exit code."""
    done = subprocess.run(
        [*CLI, "run", "-l", "bash", "--db", str(tmp_path / "m.db"), "--param", "n=3", "-"],
        input="echo got $PARAM_N; exit 3",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == "got 3\n"
    assert done.returncode == 3


def test_run_json_prints_the_result_dict(tmp_path: Path) -> None:
    """`run --json` prints the whole result dict."""
    source = tmp_path / "x.py"
    source.write_text("output = parameters")
    done = subprocess.run(
        [*CLI, "run", "--json", "--no-record", "--params", '{"a": [1]}', str(source)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = json.loads(done.stdout)
    assert result["success"] and result["output"] == {"a": [1]} and done.returncode == 0


def test_policy_check_names_the_file_and_field(tmp_path: Path) -> None:
    """`policy check` exits non-zero and names the file and the bad field."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: strict\nlimits:\n  memory_mb: 1\n")
    done = subprocess.run(
        [*CLI, "policy", "check", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert str(bad) in done.stderr and "limits.memory_mb" in done.stderr


def test_policy_show_merges_extends() -> None:
    """`policy show development` prints the merged policy."""
    done = subprocess.run(
        [*CLI, "policy", "show", "development"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "mode: open" in done.stdout and "memory_mb: 2048" in done.stdout


def test_doctor_lists_the_modes_and_how_to_enable_them(tmp_path: Path) -> None:
    """`doctor` says which modes work; with no engine it says how to start one."""
    import os

    done = subprocess.run([*CLI, "doctor"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert lines["docker"].split()[1] == "yes"
    assert lines["fast"].split()[1:5] == ["yes"] * 4  # bubblewrap, cgroups, user namespaces here
    assert "opt in" in lines["inprocess"]
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    down = subprocess.run([*CLI, "doctor"], capture_output=True, text=True, timeout=60, env=env)
    docker_line = next(line for line in down.stdout.splitlines() if line.startswith("docker"))
    assert docker_line.split()[1] == "no" and "make docker-up" in docker_line
