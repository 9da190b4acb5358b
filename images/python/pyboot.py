"""Bootstrap of the Python sandbox: runs the code with ``parameters`` and ``json`` at hand.

The runner starts this before a request arrives, so the interpreter is already loaded; it then
blocks on fd 3 until the parameters (JSON) arrive. The code sees a global dict ``parameters``
and the ``json`` module without importing it. The value of a top-level variable ``output`` is
sent to the runner on fd 4 as ``{"value": ...}``, or ``{"error": ...}`` when it is not
JSON-serialisable.
"""

import builtins
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


def _send_output(namespace):
    if "output" not in namespace:
        return
    try:
        text = json.dumps({"value": namespace["output"]}, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        text = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
    data = text.encode("utf-8", errors="replace")
    try:
        while data:
            data = data[os.write(4, data) :]
    except OSError:
        pass  # the code closed fd 4 itself; there is nothing to send then


def _main():
    path = sys.argv[1]
    raw = _read_all(3)
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
    sys.path.insert(0, os.path.dirname(path))  # modules the code writes beside itself
    ending = None
    try:
        exec(compile(source, path, "exec"), namespace)
    except SystemExit as exc:
        ending = exc
    except BaseException:
        kind, value, trace = sys.exc_info()
        # Show the code's traceback, not this bootstrap's frame.
        traceback.print_exception(kind, value, trace.tb_next if trace else None)
        ending = SystemExit(1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # the code may have closed or replaced them
        pass
    _send_output(namespace)
    if ending is not None:
        raise ending


_main()
