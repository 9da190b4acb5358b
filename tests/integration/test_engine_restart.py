"""A Docker engine that restarts under running and pooled sandboxes.

It stops the engine, so it runs last: the ``engine_restart`` marker puts it at the end of the
session (``pytest_collection_modifyitems`` in ``tests/conftest.py``), whatever its file's name.

Set ATHENA_TEST_NO_ENGINE_RESTART=1 to skip it on a machine whose engine must not be touched.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from athena.mcp.memory_api import MemoryAPI
from orchestrator.settings import Settings
from tests.integration.conftest import ROOT, wait_until

pytestmark = [
    pytest.mark.engine_restart,
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("ATHENA_TEST_NO_ENGINE_RESTART") == "1", reason="engine restart disabled"
    ),
]

PIDFILE = Path("/var/run/docker.pid")


def _restart_engine() -> None:
    pid = int(PIDFILE.read_text())
    os.kill(pid, 15)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=60)
    subprocess.run(["bash", str(ROOT / "scripts" / "ensure-docker.sh")], check=True, timeout=180)


def _zombie(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


@pytest.mark.skipif(not PIDFILE.exists(), reason="the engine was not started by ensure-docker.sh")
def test_runs_survive_an_engine_restart_with_clear_errors(
    tmp_path: Path, project_dir: Path
) -> None:
    """A run in flight fails clearly (no hang); pooled containers lost in the restart are replaced."""
    settings = Settings(project_dir=project_dir, pool_size=1)
    with MemoryAPI.create(tmp_path / "m.db", settings=settings) as api:
        assert api.prewarm("bash")
        started = threading.Event()
        results: list[dict[str, Any]] = []
        code = "import time\nprint('in', flush=True)\ntime.sleep(120)"
        worker = threading.Thread(
            target=lambda: results.append(
                api.execute_code(code, timeout_seconds=100, on_stdout=lambda _t: started.set())
            )
        )
        worker.start()
        assert started.wait(60)
        begun = time.monotonic()
        _restart_engine()
        worker.join(60)
        assert not worker.is_alive(), "the run hung across the engine restart"
        assert time.monotonic() - begun < 90
        (failed,) = results
        assert not failed["success"] and failed["error"]
        assert failed["error_type"] in {"SandboxFailedError", "BackendUnavailableError"}
        assert "in\n" in failed["stdout"]  # its own output, nothing else
        after = api.execute_code("echo after", "bash")
        assert after["success"], after["error"]
        assert after["stdout"] == "after\n"
