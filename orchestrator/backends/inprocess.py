"""The inprocess backend: trusted code only, with no isolation but timeouts and output caps.

Python (a language whose registry entry says ``forks_host``) runs with plain ``exec`` in a
forked child of this process (so the timeout can kill it), its output captured by an
:class:`ExecutionContext` and passed up a pipe; the other languages run their image's bootstrap
as a plain subprocess of the host's interpreter, with the parameters in a file. Only policies
that accept ``inprocess`` get here, and only when the process opted in by naming it in
``ATHENA_SANDBOX_BACKENDS``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TextIO

from orchestrator.backends.base import ensure_available
from orchestrator.backends.process import Supervised, run_supervised, supervise
from orchestrator.backends.restricted_child import output_envelope
from orchestrator.backends.workfiles import collect_outputs, write_inputs
from orchestrator.context import ExecutionContext, install_capture
from orchestrator.errors import SandboxFailedError
from orchestrator.languages import get_language
from orchestrator.models import Event, ExecutionRequest, Isolation
from orchestrator.run import RunOutcome, RunSpec, build_outcome, process_exit

_PATH = "/usr/local/bin:/usr/bin:/bin"
_PARAMS_FILE = ".athena-params.json"  # in the work directory: a call's files may not take it


class InProcessBackend:
    """Runs trusted code on this host with timeouts and output caps, and nothing else."""

    name = "inprocess"

    def unavailable_reason(self, language: str) -> str | None:
        """Why this backend cannot run ``language`` here (None: it can)."""
        entry = get_language(language)
        if not entry.forks_host and not os.access(entry.interpreter, os.X_OK):
            return f"{entry.interpreter} ({entry.name}) is not installed on this host"
        return None

    def close(self) -> None:
        """Nothing to release."""

    def run(
        self, request: ExecutionRequest, spec: RunSpec, context: ExecutionContext
    ) -> RunOutcome:
        """Run one request on this host; see :class:`Backend`."""
        ensure_available(self, request.language)
        workdir = Path(tempfile.mkdtemp(prefix="athena-inprocess-"))
        try:
            # The work directory is the code's cwd (/workspace in docker), out/ included.
            write_inputs(workdir, request.files, reserved=(_PARAMS_FILE,))
            if get_language(request.language).forks_host:
                done, path = _fork_python(request, spec, context, workdir), "fork"
            else:
                done, path = _subprocess(request, spec, context, workdir), "subprocess"
            files, left_out = collect_outputs(workdir, request.policy.files.max_out_bytes)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return build_outcome(
            process_exit(done),
            done.extra or None,
            isolation=Isolation(mode="inprocess", runtime=None, path=path),
            sandbox_id="inprocess",
            files=files,
            left_out=left_out,
        )


def _subprocess(
    request: ExecutionRequest, spec: RunSpec, context: ExecutionContext, workdir: Path
) -> Supervised:
    language = get_language(request.language)
    code, params = workdir / language.code_file, workdir / _PARAMS_FILE
    # Trusted code: no run-time policy layer (guard None), as no sandbox either.
    params.write_bytes(language.request_blob(request.parameters, None))
    env = {"PATH": _PATH, "HOME": str(workdir), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    env["ATHENA_PARAMS_FILE"] = str(params)
    argv = language.argv(code, language.boot_path())
    code.write_text(request.code, encoding="utf-8", errors="surrogatepass")
    try:
        # The value channel (ATHENA_VALUE_FD): what a bootstrap sends of the code's `output`.
        limit = 2 * request.policy.limits.max_output_bytes
        return run_supervised(argv, env, str(workdir), spec, context, extra=True, extra_limit=limit)
    except OSError as exc:
        raise SandboxFailedError(f"could not start {argv[0]}: {exc}") from exc


def _fork_python(
    request: ExecutionRequest, spec: RunSpec, context: ExecutionContext, workdir: Path
) -> Supervised:
    install_capture()  # before the fork: the child must not need a lock another thread holds
    _pyboot()  # loaded once, here, where a failure to load is reported
    pipes = [os.pipe() for _ in range(3)]  # stdout, stderr, value
    context.dispatch()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _child(request, workdir, [w for _, w in pipes], [r for r, _ in pipes])
    for _, write_end in pipes:
        os.close(write_end)
    (out_r, _), (err_r, _), (value_r, _) = pipes
    context.emit(Event(kind="begin", elapsed_ms=context.elapsed_ms()))
    limit = 2 * request.policy.limits.max_output_bytes
    return supervise(
        pid,
        {out_r: "stdout", err_r: "stderr"},
        context,
        spec.timeout_seconds,
        spec.cancel,
        extra_fd=value_r,
        extra_limit=limit,
    )


def _child(request: ExecutionRequest, workdir: Path, writes: list[int], reads: list[int]) -> None:
    status = 1
    try:
        os.setsid()  # its own process group: the timeout kills it and whatever it started
        for fd in reads:
            os.close(fd)
        out, err, value = writes
        # What bypasses sys.stdout (C extensions, child processes) lands in the pipes too.
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        # What escapes the capture (threads the code starts) goes to the pipes as well.
        streams = sys.stdout, sys.stderr = _line_buffered(1), _line_buffered(2)
        install_capture()
        os.chdir(workdir)
        status = _exec_captured(request, out, err, value, streams)
    finally:
        os._exit(status)


def _exec_captured(
    request: ExecutionRequest, out: int, err: int, value: int, streams: tuple[TextIO, TextIO]
) -> int:
    import atexit
    import gc
    import traceback

    pyboot = _pyboot()
    atexit._clear()  # this process's own handlers belong to the parent, not to the code
    gc.freeze()  # the parent's objects: the collection at the end looks at the code's only
    capture = ExecutionContext(
        request.execution_id, request.language, capture_io=True, parameters=request.parameters
    )
    capture.subscribe(lambda e: _forward(e, out, err))

    def flush() -> None:  # what the code's threads printed past the capture
        for stream in streams:
            stream.flush()

    status = 0
    with capture:
        try:
            exec(compile(request.code, "<code>", "exec"), capture.exec_globals)
        except SystemExit as exc:
            status = pyboot.exit_status(exc.code)
        except BaseException as exc:
            traceback.print_exception(
                type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None
            )
            status = 1
        envelope = output_envelope(capture.exec_globals)
        if envelope is not None:
            _write_all(value, json.dumps(envelope).encode())
        pyboot.shut_down(capture.exec_globals, os.getcwd(), flush)  # the cwd is the run's dir
    return int(status)


@functools.cache
def _pyboot() -> ModuleType:
    """The docker and srt modes' Python bootstrap, as a module: runs end the same way here."""
    path = get_language("python").boot_path()
    spec = importlib.util.spec_from_file_location("athena_pyboot", path)
    if spec is None or spec.loader is None:
        raise SandboxFailedError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _line_buffered(fd: int) -> TextIO:
    return open(fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)


def _forward(event: Event, out: int, err: int) -> None:
    if event.kind in {"stdout", "stderr"}:
        _write_all(out if event.kind == "stdout" else err, event.text.encode("utf-8", "replace"))


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
