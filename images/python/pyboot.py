"""Bootstrap of the Python sandbox: runs the code with ``parameters`` and ``json`` at hand.

The runner starts this before a request arrives, so the interpreter is already loaded; it then
blocks on fd 3 until the parameters (JSON) arrive. The code sees a global dict ``parameters``
and the ``json`` module without importing it. The value of a top-level variable ``output`` is
sent to the runner on fd 4 as ``{"value": ...}``, or ``{"error": ...}`` when it is not
JSON-serialisable.

What arrives on fd 3 is a dict in ``marshal`` form (read with no import; ``json`` and ``re`` cost
several milliseconds of every run's start): ``{"parameters": {...}, "guard": {...} or None}``. With
a guard (the policy enforces validation), the run-time policy layer is installed before the
code runs (see :func:`install_guard`): an audit hook (PEP 578, which cannot be removed) and an
``__import__`` wrapper refuse what the policy forbids, each refusal a ``PermissionError`` in the
code and a ``{"policy": ...}`` line on fd 4, before the ``output`` line.

Outside a container (the srt and inprocess modes) there is no runner to hold fds 3 and 4:
``ATHENA_PARAMS_FILE`` and ``ATHENA_OUTPUT_FILE`` name files to use instead.
"""

import atexit
import builtins
import gc
import marshal
import os
import sys

# Imported when first needed: most runs never format a traceback, and json is in the code's
# namespace only when the code names it (its import, with re's, is a third of a bare start).


def _json():
    import json

    return json


def _decode(raw):
    """A request from the orchestrator (``marshal``: plain dicts, lists, text and numbers)."""
    return marshal.loads(raw) if raw else {}


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
        json = _json()
    except BaseException:  # the code broke the import system: say so, without json
        text = '{"error": "ImportError: json could not be imported to encode output"}'
    else:
        try:
            text = json.dumps({"value": namespace["output"]}, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            text = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
    data = text.encode("utf-8", errors="replace") + b"\n"
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass  # the code closed the fd itself; there is nothing to send then


def _main():
    path = sys.argv[1]
    figures = _figures_module()
    if os.environ.pop("ATHENA_SESSION", None) == "1":
        _serve_session(path, figures)
    gc.freeze()  # what the bootstrap made so far: the collection at the end skips it (0.8 ms)
    raw = _read_params()
    output_fd = _output_fd()
    request = _decode(raw)
    with open(path, "rb") as handle:
        source = handle.read()
    namespace = _namespace(path, request.get("parameters", {}), source)
    sys.argv = [path]
    code_dir = os.path.dirname(os.path.abspath(path))
    if not install_requirements(request.get("requirements"), output_fd):
        os._exit(1)
    guard = install_guard(request["guard"], code_dir, output_fd) if request.get("guard") else None
    sys.path.insert(0, code_dir)  # modules the code writes beside itself
    _configure_figures(figures, request)
    status = _run_cell(source, path, namespace)
    _flush()
    _capture_figures(figures, request)
    if guard is not None:
        guard.summarise()
    _send_output(namespace, output_fd)
    shut_down(namespace, code_dir, _flush)
    os._exit(status)


def _namespace(path, parameters, source=b""):
    namespace = {
        "__name__": "__main__",
        "__file__": path,
        "__builtins__": builtins,
        "parameters": parameters,
    }
    _offer_json(namespace, source)
    return namespace


def _offer_json(namespace, source):
    """Put ``json`` in the namespace when the code names it (and nothing else took the name)."""
    if b"json" in source and "json" not in namespace:
        namespace["json"] = _json()


def _run_cell(source, filename, namespace):
    """Run the code in ``namespace``; return its exit status (tracebacks go to stderr)."""
    try:
        exec(compile(source, filename, "exec"), namespace)
    except SystemExit as exc:
        return exit_status(exc.code)
    except BaseException as exc:  # KeyboardInterrupt too: a session call's interrupt
        _print_code_traceback(exc)
        return 1
    return 0


# --------------------------------------------------------------------------- sessions


def _serve_session(path, figures):
    """Serve a session's calls until the runner closes fd 3; globals and imports stay.

    Each call arrives on fd 3 as ``<length>\n<request>``; its code is in ``path``. When the
    code is done, ``<status>\n`` goes to fd 5. ``output`` is per call (removed before each),
    ``parameters`` is the call's. The runner's SIGINT at the timeout raises KeyboardInterrupt
    in the code, like a notebook's interrupt; the session goes on.
    """
    import linecache
    import signal

    requests = os.fdopen(3, "rb", buffering=0)
    code_dir = os.path.dirname(os.path.abspath(path))
    namespace = _namespace(path, {})
    sys.argv = [path]
    sys.path.insert(0, code_dir)
    guard, count = None, 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the code's own time is interruptible
    while True:
        request = _next_request(requests)
        if request is None:
            os._exit(0)
        if not install_requirements(request.get("requirements"), 4):
            _write_all(5, b"1\n")
            continue
        if guard is None and request.get("guard"):
            guard = install_guard(request["guard"], code_dir, 4)
        count += 1
        with open(path, "rb") as handle:
            source = handle.read()
        name = f"<cell {count}>"
        text = source.decode("utf-8", errors="replace")
        linecache.cache[name] = (len(text), None, text.splitlines(True), name)
        namespace["parameters"] = request.get("parameters", {})
        namespace.pop("output", None)
        _offer_json(namespace, source)
        _configure_figures(figures, request)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        status = _run_cell(source, name, namespace)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _flush()
        _capture_figures(figures, request)
        if guard is not None:
            guard.summarise()
        _send_output(namespace, 4)
        _write_all(5, f"{status}\n".encode())


def _next_request(requests):
    """The next call's request from the runner (``<length>\n<marshal>``), or None at EOF."""
    header = b""
    while not header.endswith(b"\n"):
        byte = requests.read(1)
        if not byte:
            return None
        header += byte
    size, data = int(header), b""
    while len(data) < size:
        chunk = requests.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return _decode(data)


def _write_all(fd, data):
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass  # the code closed it: the runner then ends the session


# --------------------------------------------------------------------------- requirements


def install_requirements(plan, report_fd):
    """Install a run's requirements with pip, in this process, before the code starts.

    In-process: where the policy forbids processes the kernel refuses them to this interpreter,
    so pip cannot run as a command (wheels install without one; an sdist's build cannot). pip's
    output is kept off the code's stdout and stderr; on failure its tail goes to stderr with an
    ``[athena-sandbox]`` note, and a ``requirements`` line on ``report_fd`` becomes the run's
    ``policy:`` violation. Returns whether the packages are installed (True: nothing to do).
    """
    if not plan or not plan.get("packages"):
        return True
    import site
    import tempfile

    args = ["install", "--user", "--no-input", "--disable-pip-version-check", "--no-cache-dir"]
    args += ["--no-warn-script-location", "--progress-bar", "off"]
    args += ["--index-url", plan["index_url"]]
    for host in plan.get("trusted") or ():
        args += ["--trusted-host", host]
    args += ["--", *plan["packages"]]  # entries are checked specs; "--" ends options anyway
    with tempfile.TemporaryFile() as log:
        status = _captured(lambda: _pip(args), log)
        log.seek(0)
        text = log.read().decode("utf-8", errors="replace")
    if status == 0:
        _add_user_site(site.getusersitepackages())
        _INSTALLED.snapshot(site.getusersitepackages())
        return True
    names = ", ".join(plan["packages"])
    _write_all(2, f"{text[-4000:]}".encode())
    note = f"requirements could not be installed (pip exited with {status}): {names}"
    _write_all(2, f"[athena-sandbox] {note}; the code did not run\n".encode())
    detail = {"installer": "pip", "exit_code": status, "packages": plan["packages"][:50]}
    _write_line(report_fd, {"policy": {"kind": "requirements", "message": note, "detail": detail}})
    return False


class _Installed:
    """The files ``requirements`` installed, as pip left them: library code, not the run's.

    They sit in the user site under HOME, where the code can write too; so a file is trusted
    only while it is exactly what pip wrote (same inode, size, mtime and ctime: the code can
    set an mtime back, never a ctime), and only while its cached bytecode is what pip compiled
    (or there is none): bytecode written by the code would run under the trusted name.
    """

    def __init__(self):
        self.files = {}

    def snapshot(self, directory):
        """Record every file under ``directory`` as it is now."""
        for root, _dirs, names in os.walk(directory):
            for name in names:
                path = os.path.join(root, name)
                identity = _identity(path)
                if identity is not None:
                    self.files[path] = identity

    def holds(self, filename):
        """Whether ``filename`` is an installed file, unchanged, with unchanged bytecode."""
        if not self.files or filename not in self.files:
            return False
        if _identity(filename) != self.files[filename]:
            return False
        import importlib.util

        try:
            cached = importlib.util.cache_from_source(filename)
        except (NotImplementedError, ValueError):
            return True
        return _identity(cached) == self.files.get(cached)


def _identity(path):
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


_INSTALLED = _Installed()


def _pip(args):
    import pip
    import pip._internal.network.session as pip_session
    from pip._internal.cli.main import main as pip_main

    # pip's user agent asks distro, which runs `uname -rs`: a process the policy may refuse.
    pip_session.user_agent = lambda: f"pip/{pip.__version__} (athena-sandbox)"
    try:
        return pip_main(args)
    except SystemExit as exc:
        return exit_status(exc.code)
    except BaseException as exc:  # the run must still say what happened
        import traceback

        traceback.print_exc()
        return 1 if not isinstance(exc, KeyboardInterrupt) else 130


def _captured(call, log):
    """Run ``call`` with fds 1 and 2 sent to ``log``; return its result."""
    _flush()
    saved = (os.dup(1), os.dup(2))
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        return call()
    finally:
        _flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _add_user_site(path):
    """Put the user site on the path (``-I`` leaves it off), before the system's packages."""
    import importlib

    if path in sys.path:
        importlib.invalidate_caches()
        return
    system = [i for i, p in enumerate(sys.path) if p.endswith(("dist-packages", "site-packages"))]
    sys.path.insert(system[0] if system else len(sys.path), path)
    importlib.invalidate_caches()


# --------------------------------------------------------------------------- figures


def _figures_module():
    """``athena_figures`` (in the python image), prepared; None where it is not installed."""
    try:
        import athena_figures
    except ImportError:
        return None
    try:
        athena_figures.prepare()
    except Exception as exc:  # a broken cache directory must not keep the code from running
        print(f"[athena-sandbox] figure capture is off: {exc}", file=sys.stderr)
        return None
    return athena_figures


def _configure_figures(figures, request):
    if figures is not None:
        figures.configure(request.get("figures"))


def _capture_figures(figures, request):
    """Save the figures the code left open, as a notebook displays them (never raises)."""
    directory = request.get("figures")
    if figures is None or not directory or "matplotlib.pyplot" not in sys.modules:
        return
    try:
        figures.capture(directory)
    except BaseException as exc:  # noqa: BLE001 - the code's result must still be reported
        print(f"[athena-sandbox] figures could not be saved: {exc}", file=sys.stderr)


def _print_code_traceback(exc):
    """Print a traceback of the code's frames only (not this bootstrap's, guard included)."""
    try:
        import traceback
    except BaseException:  # the code broke the import system: the exception itself, at least
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return
    report = traceback.TracebackException.from_exception(exc)
    pending, seen = [report], set()
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        kept = [f for f in item.stack if f.filename != __file__]
        item.stack = traceback.StackSummary.from_list(kept)
        pending.extend(e for e in (item.__cause__, item.__context__) if e is not None)
    print("".join(report.format()), end="", file=sys.stderr)


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


# --------------------------------------------------------------------------- run-time policy

_IMPORT_MACHINERY = ("<frozen importlib._bootstrap", "<frozen zipimport")
_PROCESS_EVENTS = frozenset(
    {
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "subprocess.Popen",
        "pty.spawn",
    }
)
_SOCKET_USE = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"})
_SOCKET_EVENTS = _SOCKET_USE | {"socket.__new__"}
_CTYPES_EVENTS = frozenset({"ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle"})
_AF_UNIX = 1
_MAX_REPORTED = 20  # refusals sent one by one; past this only counted


class _Guard:
    """The run-time policy layer of one run (see :func:`install_guard`)."""

    def __init__(self, config, code_dir, report_fd):
        self.imports = frozenset(config.get("imports") or ())
        self.processes = bool(config.get("processes"))
        self.ctypes = bool(config.get("ctypes"))
        self.sockets = bool(config.get("sockets"))
        self.policy = str(config.get("policy") or "the policy")
        self.report_fd = report_fd
        self.refused = 0
        self.code_dir = os.path.abspath(code_dir) + os.sep
        self._trusted = None  # library directories, computed when first needed (0.3 ms)
        self.startup_path = list(sys.path)  # before the code's directory is added
        importlib_dir = os.path.join(os.path.dirname(os.__file__), "importlib") + os.sep
        self.transparent = (os.path.abspath(__file__), importlib_dir)
        self.checks = {"compile": self.check_disguise, "code.__new__": self.check_disguise}
        if self.imports:
            self.checks["import"] = self.check_import_event
        if self.processes:
            self.checks.update(dict.fromkeys(_PROCESS_EVENTS, self.check_process))
        if self.ctypes:
            self.checks.update(dict.fromkeys(_CTYPES_EVENTS, self.check_ctypes))
        if self.sockets:
            self.checks.update(dict.fromkeys(_SOCKET_EVENTS, self.check_socket))

    def forbidden(self, name):
        """Whether module ``name`` or a package above it is forbidden."""
        parts = name.split(".")
        return any(".".join(parts[:i]) in self.imports for i in range(1, len(parts) + 1))

    def trusted_file(self, filename):
        """Whether code from ``filename`` is a library's (not the run's own code)."""
        if filename.startswith("<frozen "):
            return True
        if filename.startswith(self.code_dir):
            return False
        return filename.startswith(self.trusted()) or _INSTALLED.holds(filename)

    def trusted(self):
        """Library directories: where the interpreter looks for them at start-up (-I: no user
        site, no working directory), never where the run writes its own files."""
        if self._trusted is None:
            scratch = tuple(
                os.path.realpath(d) + os.sep
                for d in (self.code_dir, os.environ.get("HOME"), os.environ.get("TMPDIR"), "/tmp")
                if d
            )
            self._trusted = tuple(
                path
                for path in (os.path.realpath(p) + os.sep for p in self.startup_path if p)
                if not path.startswith(scratch)
            )
        return self._trusted

    def initiator(self, frame):
        """The file of the first frame outside the import machinery and this bootstrap."""
        while frame is not None:
            name = frame.f_code.co_filename
            if not (name.startswith(_IMPORT_MACHINERY) or name.startswith(self.transparent)):
                return name
            frame = frame.f_back
        return "<frozen bootstrap>"  # only this bootstrap on the stack: not the code

    def summarise(self):
        """After the code: say how many refusals were past the reported ones."""
        more = self.refused - _MAX_REPORTED
        if more > 0:
            line = {"kind": "summary", "message": f"{more} more refusal(s) not listed"}
            _write_line(self.report_fd, {"policy": {**line, "detail": {"count": more}}})

    def refuse(self, kind, message, detail):
        """Report a refusal on the output channel and raise it in the code."""
        self.refused += 1
        if self.refused <= _MAX_REPORTED:
            line = {"policy": {"kind": kind, "message": message, "detail": detail}}
            _write_line(self.report_fd, line)
        raise PermissionError(f"{message} (sandbox policy {self.policy})")

    def check_import(self, name, frame):
        if self.forbidden(name) and not self.trusted_file(self.initiator(frame)):
            self.refuse("import", f"import of {name!r} refused", {"module": name})

    def hook(self, event, args):
        """The audit hook: called for every audited event of the interpreter."""
        check = self.checks.get(event)
        if check is not None:
            check(event, args)

    def check_import_event(self, event, args):
        self.check_import(args[0], sys._getframe(2))

    def check_process(self, event, args):
        what = " ".join(str(a) for a in args[:2])[:200]
        self.refuse(
            "process", f"process creation ({event}) refused", {"event": event, "args": what}
        )

    def check_ctypes(self, event, args):
        # Importing ctypes opens the process itself (dlopen(None)): numpy does that, harmless.
        # Opening a library or looking a symbol up is native code: refused whoever asks.
        if (event == "ctypes.dlopen" and args and args[0] is not None) or event.startswith(
            "ctypes.dlsym"
        ):
            name = str(args[-1])[:200] if args else ""
            self.refuse(
                "ctypes", f"native code loading ({event}) refused", {"event": event, "name": name}
            )

    def check_socket(self, event, args):
        # socketpair() (AF_UNIX, unnamed) is how asyncio wakes itself up: allowed. Other
        # families, and naming or reaching a unix socket by path, are refused.
        if event == "socket.__new__" and len(args) > 1 and args[1] != _AF_UNIX:
            self.refuse(
                "socket",
                f"socket creation (family {args[1]}) refused",
                {"event": event, "family": int(args[1])},
            )
        elif event in _SOCKET_USE:
            address = str(args[1])[:200] if len(args) > 1 else ""
            self.refuse(
                "socket", f"{event} to {address!r} refused", {"event": event, "address": address}
            )

    def check_disguise(self, event, args):
        # Code that names itself after a library file would be trusted as one: refused.
        filename = args[1] if len(args) > 1 else None
        if not isinstance(filename, str) or not self.trusted_file(filename):
            return
        caller = sys._getframe(2).f_code.co_filename
        if not (caller.startswith(_IMPORT_MACHINERY) or self.trusted_file(caller)):
            self.refuse(
                "disguise",
                f"code compiled as library file {filename!r} refused",
                {"event": event, "filename": filename[:200]},
            )

    def wrap_import(self, original):
        """An ``__import__`` that checks modules already loaded (the audit hook sees new ones)."""

        def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
            full = _absolute_name(name, globals, level)
            names = [
                full,
                *(f"{full}.{f}" for f in fromlist or () if isinstance(f, str) and f != "*"),
            ]
            if any(self.forbidden(n) for n in names):
                for wanted in names:
                    self.check_import(wanted, sys._getframe(1))
            module = original(name, globals, locals, fromlist, level)
            if full == "platform" and self.processes:
                _quiet_platform(module)
            # What was actually obtained counts, whatever the name said (relative imports).
            for got in (module, *(getattr(module, f, None) for f in fromlist or () if f != "*")):
                got_name = getattr(got, "__name__", None) if type(got) is type(sys) else None
                if isinstance(got_name, str) and self.forbidden(got_name):
                    self.check_import(got_name, sys._getframe(1))
            return module

        return guarded_import


def _quiet_platform(module):
    """platform asks ``uname -p`` for the processor name, which Linux does not know (``unknown``,
    which platform reports as ''). Where processes are refused, answer '' without one, so that
    importing pandas (Debian's reads ``platform.uname()[4]``) is not a refused process."""
    processor = getattr(getattr(module, "_Processor", None), "from_subprocess", None)
    if processor is not None and getattr(processor, "__name__", "") != "_no_processor_name":

        def _no_processor_name():
            return ""

        module._Processor.from_subprocess = staticmethod(_no_processor_name)


def _absolute_name(name, globals, level):
    if level <= 0 or not isinstance(globals, dict):
        return name
    package = globals.get("__package__") or ""
    base = package.rsplit(".", level - 1)[0] if package else ""
    return f"{base}.{name}" if name and base else name or base


def _write_line(fd, value):
    # A fresh line first: bytes the code wrote on this channel cannot swallow the report.
    data = b"\n" + _json().dumps(value, ensure_ascii=True).encode() + b"\n"
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass  # the code closed the channel: the refusal still stands


def _refusing(guard, event):
    def refused(*args, **kwargs):
        guard.refuse("process", f"process creation ({event}) refused", {"event": event, "args": ""})

    return refused


def install_guard(config, code_dir, report_fd):
    """Install the run-time policy layer: it refuses what the policy forbids, whoever asks.

    - imports of forbidden modules (and their private twins, e.g. ``_socket``) that the run's own
      code makes, by any route; libraries may still import them inside themselves;
    - process creation, when the policy forbids subprocess (the audited calls, and
      ``_posixsubprocess.fork_exec``, which is not audited, replaced);
    - loading native libraries or symbols through ctypes, when it forbids ctypes;
    - sockets other than unnamed unix pairs, and unix sockets reached by path, when it forbids
      socket.
    The audit hook cannot be removed. Each refusal raises ``PermissionError`` in the code.
    """
    guard = _Guard(config, code_dir, report_fd)
    if guard.processes:
        import _posixsubprocess

        _posixsubprocess.fork_exec = _refusing(guard, "_posixsubprocess.fork_exec")
    sys.addaudithook(guard.hook)
    builtins.__import__ = guard.wrap_import(builtins.__import__)
    return guard


if __name__ == "__main__":
    _main()
