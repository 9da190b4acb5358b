"""The restricted backend: Python under RestrictedPython, in a child process with rlimits.

It isolates at the language level only: the child runs as this process's user, with no
filesystem, network or process isolation of its own; what stops the code is RestrictedPython's
compile-time checks and guards (see ``restricted_child``), the import allowlist of the policy
(``validation.allowed_imports``), rlimits on memory and CPU, and the wall-clock kill here.

Files: the call's files are written into the child's work directory (its cwd, /workspace in
docker) and ``out/`` is made there, as in every mode. The code has no ``os`` or ``pathlib``:
its ``open`` (``restricted_child.WorkFiles``) reads files under the work directory (``r``,
``rb``) and writes files directly in ``out/`` (``w``, ``a``, ``x`` and their ``b`` forms), never
through a link, within ``filesystem.tmpfs_mb``; it cannot make directories, links or FIFOs.
What is in ``out/`` after the run comes back in ``files``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.backends import restricted_child
from orchestrator.backends.base import ensure_available
from orchestrator.backends.process import run_supervised
from orchestrator.backends.workfiles import collect_outputs, write_inputs
from orchestrator.context import ExecutionContext
from orchestrator.errors import SandboxFailedError
from orchestrator.languages import get_language
from orchestrator.models import ExecutionRequest, Isolation
from orchestrator.run import RunOutcome, RunSpec, build_outcome, process_exit

_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONUNBUFFERED": "1"}


def child_request(request: ExecutionRequest, timeout: float) -> dict[str, Any]:
    """What the child reads on stdin (pure)."""
    limits = request.policy.limits
    return {
        "code": request.code,
        "parameters": request.parameters,
        "allowed_imports": list(request.policy.validation.allowed_imports),
        "limits": {
            "memory_mb": max(limits.memory_mb, 128),  # the interpreter itself needs some
            "cpu_seconds": math.ceil(timeout),
            "file_size_mb": limits.file_size_mb,
            # What the code may write in out/ in all (/workspace's tmpfs in docker).
            "workspace_bytes": request.policy.filesystem.tmpfs_mb * 1024 * 1024,
        },
    }


class RestrictedBackend:
    """Runs Python requests under RestrictedPython in a child process."""

    name = "restricted"

    def unavailable_reason(self, language: str) -> str | None:
        """Why this backend cannot run ``language`` here (None: it can)."""
        if not get_language(language).restricted:
            return f"the restricted mode runs Python only, not {language}"
        if importlib.util.find_spec("RestrictedPython") is None:
            return "RestrictedPython is not installed: `pip install RestrictedPython`"
        return None

    def close(self) -> None:
        """Nothing to release: every run's child is gone when the run returns."""

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        """Run one request under RestrictedPython; see :class:`Backend`."""
        ensure_available(self, request.language)
        workdir = tempfile.mkdtemp(prefix="athena-restricted-")
        try:
            write_inputs(Path(workdir), request.files)  # the child's cwd; out/ made here
            with tempfile.TemporaryFile() as stdin:
                stdin.write(json.dumps(child_request(request, spec.timeout_seconds)).encode())
                stdin.seek(0)
                argv = [sys.executable, "-I", restricted_child.__file__]
                try:
                    done = run_supervised(
                        argv,
                        _ENV,
                        workdir,
                        spec,
                        context,
                        stdin=stdin.fileno(),
                        extra=True,
                        extra_limit=2 * request.policy.limits.max_output_bytes,
                    )
                except OSError as exc:
                    raise SandboxFailedError(
                        f"could not start the restricted child: {exc}"
                    ) from exc
            files, left_out = collect_outputs(Path(workdir), request.policy.files.max_out_bytes)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        report = _report(done.extra)
        envelope = report.get("output")
        value = json.dumps(envelope).encode() if envelope is not None else None
        return build_outcome(
            process_exit(done, oom_killed=bool(report.get("memory_error"))),
            value,
            isolation=Isolation(mode="restricted", runtime="RestrictedPython", path="subprocess"),
            sandbox_id="restricted",
            files=files,
            left_out=left_out,
        )


def _report(data: bytes) -> dict[str, Any]:
    try:
        report = json.loads(data) if data else {}
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}
