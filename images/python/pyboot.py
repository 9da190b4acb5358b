"""Bootstrap of the Python sandbox: runs the code with ``parameters`` and ``json`` at hand.

The runner starts this before a request arrives, so the interpreter is already loaded; it then
blocks on fd 3 until the parameters (JSON) arrive. The code sees a global dict ``parameters``
and the ``json`` module without importing it. The value of a top-level variable ``output`` is
sent to the runner on fd 4 as ``{"value": ...}``, or ``{"error": ...}`` when it is not
JSON-serialisable.

Outside a container (the srt and inprocess modes) there is no runner to hold fds 3 and 4:
``ATHENA_PARAMS_FILE`` and ``ATHENA_OUTPUT_FILE`` name files to use instead.
"""

import atexit
import builtins
import gc
import json
import os
import sys
import traceback


def _read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _read_params():
    path = os.environ.pop("ATHENA_PARAMS_FILE", None)
    if path is None:
        return _read_all(3)
    with open(path, "rb") as handle:
        return handle.read()


def _output_fd():
    path = os.environ.pop("ATHENA_OUTPUT_FILE", None)
    if path is None:
        return 4
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def _send_output(namespace, fd):
    if "output" not in namespace:
        return
    try:
        text = json.dumps({"value": namespace["output"]}, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        text = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
    data = text.encode("utf-8", errors="replace")
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass  # the code closed the fd itself; there is nothing to send then


def _main():
    path = sys.argv[1]
    gc.freeze()  # what the bootstrap made so far: the collection at the end skips it (0.8 ms)
    raw = _read_params()
    output_fd = _output_fd()
    parameters = json.loads(raw) if raw else {}
    with open(path, "rb") as handle:
        source = handle.read()
    namespace = {
        "__name__": "__main__",
        "__file__": path,
        "__builtins__": builtins,
        "parameters": parameters,
        "json": json,
    }
    sys.argv = [path]
    code_dir = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, code_dir)  # modules the code writes beside itself
    status = 0
    try:
        exec(compile(source, path, "exec"), namespace)
    except SystemExit as exc:
        status = exit_status(exc.code)
    except BaseException:
        kind, value, trace = sys.exc_info()
        # Show the code's traceback, not this bootstrap's frame.
        traceback.print_exception(kind, value, trace.tb_next if trace else None)
        status = 1
    _flush()
    _send_output(namespace, output_fd)
    shut_down(namespace, code_dir, _flush)
    os._exit(status)


def _flush():
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # the code may have closed or replaced them
        pass


def exit_status(code):
    """The status ``SystemExit(code)`` ends Python with; a message is printed, as Python does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def shut_down(namespace, code_dir, flush):
    """Do what interpreter shutdown does that a run can observe, without its module teardown.

    Tearing down the modules costs 2 to 3 ms, a third of a warm run, so a run ends with
    ``os._exit`` after this. Still done, in shutdown's order: the code's non-daemon threads
    joined, its atexit handlers run (logging, multiprocessing and weakref.finalize among them),
    then its globals and the modules it wrote under ``code_dir`` released, so that ``__del__``
    methods run and files it left open are flushed and closed. ``flush`` writes out what the
    code's threads printed before the atexit handlers print. The inprocess backend loads this
    file as a module to end its runs the same way.
    """
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    flush()
    atexit._run_exitfuncs()
    namespace.clear()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and os.path.abspath(path).startswith(code_dir + os.sep):
            module.__dict__.clear()
            del sys.modules[name]
    gc.collect()
    flush()


if __name__ == "__main__":
    _main()
