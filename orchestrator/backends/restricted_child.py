"""The child side of the restricted mode: one request under RestrictedPython, in its own process.

Run as ``python -I <path of this file>`` (as a script: it imports nothing of ours, so the
child starts in a few milliseconds); the request (JSON: code,
parameters, allowed imports, limits) arrives on stdin. RestrictedPython has no timeout and a
thread cannot be killed, so this runs in a process of its own: the parent kills its process
group at the timeout, and the rlimits set here stop memory and CPU bombs on their own.

The code gets a copy of ``safe_builtins``, guarded attribute, item, iteration and write access,
``parameters`` and ``json`` as in Docker, an ``open`` limited to the work directory (see
:class:`WorkFiles`), and an import that hands out allowed modules only as
proxies of their public functions, classes and plain constants, never the module object (a
module reaches the host: ``statistics.sys.modules['os']``). The result goes to the fd named by
``ATHENA_VALUE_FD`` as one JSON object: ``{"output": envelope or null, "memory_error": bool}``.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import stat
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any, ClassVar

_MIB = 1024 * 1024
_SCALARS = (int, float, complex, str, bytes, bool, type(None))
# Modules whose public functions read attributes, evaluate strings or reach the interpreter
# without RestrictedPython's guards: never handed out, whatever a policy's allowlist says.
NEVER_IMPORTED = frozenset(
    [
        "operator",
        "typing",
        "string",
        "dataclasses",
        "inspect",
        "types",
        "importlib",
        "sys",
        "os",
        "builtins",
        "gc",
        "ctypes",
        "pickle",
        "marshal",
        "code",
        "codeop",
        "ast",
        "dis",
        "runpy",
        "pathlib",
        "io",
        "subprocess",
        "socket",
        "threading",
        "multiprocessing",
        "signal",
        "posix",
    ]
)


def _apply_limits(limits: dict[str, Any]) -> None:
    memory = limits["memory_mb"] * _MIB
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = int(limits["cpu_seconds"]) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    size = limits["file_size_mb"] * _MIB
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class ModuleProxy:
    """A read-only view of a module's public functions, classes and plain constants."""

    __slots__ = ("_name", "_names")

    def __init__(self, module: types.ModuleType) -> None:
        names = {}
        for name in dir(module):
            if name.startswith("_"):
                continue
            value = getattr(module, name)
            if isinstance(value, types.ModuleType):
                continue  # statistics.sys, json.codecs, datetime.sys: never handed out
            if callable(value) or isinstance(value, _SCALARS):
                names[name] = value
        object.__setattr__(self, "_name", module.__name__)
        object.__setattr__(self, "_names", names)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._names[name]
        except KeyError:
            raise AttributeError(f"module {self._name!r} offers no {name!r} here") from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("modules are read-only here")

    def __dir__(self) -> list[str]:
        return sorted(self._names)

    def __repr__(self) -> str:
        return f"<module {self._name!r} (restricted)>"


class WorkFiles:
    """The code's ``open``: reads under the work directory, writes in ``out/``, size-capped.

    The call's files are in the work directory (the child's cwd) and ``out/`` exists, as in
    ``/workspace`` in docker. Names are relative; each part is opened relative to its directory
    with ``O_NOFOLLOW`` and only a regular file is opened (``O_NONBLOCK``, then ``fstat``).
    Directories are not created (the code cannot make any here): what comes back sits directly
    in ``out/``. The code gets a :class:`_File`, never the file object itself.
    """

    READS = frozenset({"r", "rt", "rb"})
    WRITES: ClassVar[dict[str, int]] = {"w": os.O_TRUNC, "a": os.O_APPEND, "x": os.O_EXCL}
    MAX_CREATED = 2000  # files opened for writing per run (the runner's entries bound)

    def __init__(self, budget: int) -> None:
        self.root = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.budget = [budget]  # bytes the code may still write, shared by its files
        self.created = 0

    def open(self, name: Any, mode: str = "r", encoding: str | None = None) -> _File:
        """Open ``name``: ``r``/``rb`` in the work directory, ``w``/``a``/``x`` in ``out/``.

        Raises:
            PermissionError: an absolute name, ``..``, or a write outside ``out/``.
            ValueError: a mode other than those.
            OSError: as ``open`` (missing, a link in the way: ``ELOOP``, not a regular file).
        """
        parts = self._parts(name)
        if mode in self.READS:
            flags = os.O_RDONLY
        elif mode.rstrip("bt") in self.WRITES and len(mode) <= 2 and "+" not in mode:
            if parts[0] != "out" or len(parts) < 2:
                raise PermissionError(f"{name!r}: files are written under out/ only here")
            if self.created >= self.MAX_CREATED:
                raise OSError(errno.EMFILE, f"at most {self.MAX_CREATED} files are written here")
            self.created += 1
            flags = os.O_WRONLY | os.O_CREAT | self.WRITES[mode.rstrip("bt")]
        else:
            raise ValueError(f"mode {mode!r} is not allowed here: r, rb, w, wb, a, ab, x, xb")
        fd = self._open(parts, flags)
        binary = "b" in mode
        handle = os.fdopen(fd, mode, encoding=None if binary else encoding or "utf-8")
        return _File(handle, None if flags == os.O_RDONLY else self.budget)

    @staticmethod
    def _parts(name: Any) -> list[str]:
        if not isinstance(name, str) or not name or "\x00" in name or name.startswith("/"):
            raise PermissionError(f"{name!r}: give a path relative to the work directory")
        parts = name.split("/")
        if any(part in {"", ".", ".."} for part in parts):
            raise PermissionError(f"{name!r}: '..', '.' and empty parts are not allowed here")
        return parts

    def _open(self, parts: list[str], flags: int) -> int:
        directory = os.dup(self.root)
        try:
            for part in parts[:-1]:
                child = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory
                )
                os.close(directory)
                directory = child
            fd = os.open(
                parts[-1],
                flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                0o644,
                dir_fd=directory,
            )
        finally:
            os.close(directory)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise IsADirectoryError(errno.EISDIR, f"{'/'.join(parts)} is not a regular file")
        os.set_blocking(fd, True)
        return fd


class _File:
    """What the code holds of an open file: reading, writing (counted), closing; nothing else."""

    __slots__ = ("_budget", "_handle")

    def __init__(self, handle: Any, budget: list[int] | None) -> None:
        self._handle, self._budget = handle, budget

    def read(self, size: int = -1) -> str | bytes:
        """Read up to ``size`` (all when negative)."""
        return self._handle.read(size)  # type: ignore[no-any-return]

    def readline(self, size: int = -1) -> str | bytes:
        """Read one line."""
        return self._handle.readline(size)  # type: ignore[no-any-return]

    def readlines(self) -> list[Any]:
        """Read every line."""
        return self._handle.readlines()  # type: ignore[no-any-return]

    def write(self, data: str | bytes) -> int:
        """Write ``data``; past the workspace's size, fail as a full disk does."""
        if self._budget is None:
            raise OSError(errno.EBADF, "not open for writing")
        size = len(data.encode() if isinstance(data, str) else data)
        if size > self._budget[0]:
            raise OSError(errno.ENOSPC, "No space left on device (filesystem.tmpfs_mb)")
        self._budget[0] -= size
        return self._handle.write(data)  # type: ignore[no-any-return]

    def writelines(self, lines: Any) -> None:
        """Write each of ``lines``."""
        for line in lines:
            self.write(line)

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    @property
    def closed(self) -> bool:
        """Whether it is closed."""
        return bool(self._handle.closed)

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def __iter__(self) -> _File:
        return self

    def __next__(self) -> str | bytes:
        return next(self._handle)  # type: ignore[no-any-return]


def _guarded_import(allowed: frozenset[str]) -> Any:
    cache: dict[str, ModuleProxy] = {}

    def guarded(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> ModuleProxy:
        if name.partition(".")[0] in NEVER_IMPORTED:
            raise ImportError(f"import of {name!r} is never allowed in the restricted mode")
        if level != 0 or name not in allowed:
            raise ImportError(
                f"import of {name!r} is not allowed here; allowed: {', '.join(sorted(allowed))}"
            )
        if name not in cache:
            cache[name] = ModuleProxy(__import__(name))
        return cache[name]

    return guarded


class _Printer:
    """RestrictedPython's print protocol, writing straight to the real stdout (streamed)."""

    def __init__(self, _getattr_: Any = None) -> None:
        pass

    def _call_print(self, *objects: Any, **kwargs: Any) -> None:
        kwargs.pop("file", None)  # no file object can reach the code anyway
        kwargs["flush"] = True  # streamed: the parent sees output as it happens
        print(*objects, file=sys.stdout, **kwargs)

    def __call__(self) -> str:
        return ""


def _guarded_getattr(safer_getattr: Any, forbidden: frozenset[str]) -> Any:
    missing = object()

    def guarded(obj: Any, name: str, *default: Any) -> Any:
        if not isinstance(name, str) or name.startswith("_") or name in forbidden:
            raise AttributeError(f"access to {name!r} is not allowed here")
        # safer_getattr answers None for a missing attribute; Python code expects an error.
        value = safer_getattr(obj, name, missing)
        if value is missing:
            if default:
                return default[0]
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}")
        return value

    return guarded


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    import operator

    ops: dict[str, Callable[[Any, Any], Any]] = {
        "+=": operator.iadd,
        "-=": operator.isub,
        "*=": operator.imul,
        "/=": operator.itruediv,
        "//=": operator.ifloordiv,
        "%=": operator.imod,
        "**=": operator.ipow,
        "<<=": operator.ilshift,
        ">>=": operator.irshift,
        "&=": operator.iand,
        "|=": operator.ior,
        "^=": operator.ixor,
    }
    if op not in ops:
        raise SyntaxError(f"{op} is not allowed here")
    return ops[op](x, y)


def _globals(parameters: Any, allowed: frozenset[str], files: WorkFiles) -> dict[str, Any]:
    from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
    from RestrictedPython.Guards import (
        full_write_guard,
        guarded_iter_unpack_sequence,
        guarded_unpack_sequence,
        safe_builtins,
        safer_getattr,
    )
    from RestrictedPython.transformer import INSPECT_ATTRIBUTES

    getattr_ = _guarded_getattr(
        safer_getattr, frozenset(INSPECT_ATTRIBUTES) | {"format", "format_map"}
    )
    builtins = dict(safe_builtins)  # a copy: nothing the code does reaches the shared one
    builtins.update(
        __import__=_guarded_import(allowed),
        getattr=getattr_,
        hasattr=lambda o, n: _has(getattr_, o, n),
        sum=sum,
        min=min,
        max=max,
        sorted=sorted,
        enumerate=enumerate,
        zip=zip,
        map=map,
        filter=filter,
        list=list,
        dict=dict,
        tuple=tuple,
        set=set,
        frozenset=frozenset,
        any=any,
        all=all,
        reversed=reversed,
        next=next,
        iter=iter,
        format=format,
        open=files.open,
    )
    for name in ("setattr", "delattr"):
        builtins.pop(name, None)  # attribute writes go through _write_ only
    return {
        "__builtins__": builtins,
        "__name__": "__main__",
        "__metaclass__": type,
        "_getattr_": getattr_,
        "_getitem_": default_guarded_getitem,
        "_getiter_": default_guarded_getiter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": full_write_guard,
        "_print_": _Printer,
        "_inplacevar_": _inplacevar,
        "_apply_": lambda f, *a, **kw: f(*a, **kw),
        "parameters": parameters,
        "json": ModuleProxy(json),
    }


def _has(getattr_: Any, obj: Any, name: str) -> bool:
    try:
        getattr_(obj, name)
    except (AttributeError, NotImplementedError):
        return False
    return True


def output_envelope(namespace: dict[str, Any]) -> dict[str, Any] | None:
    """``{"value": output}``, ``{"error": why}`` when it is not JSON, or None when unset."""
    if "output" not in namespace:
        return None
    try:
        json.dumps(namespace["output"], allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"value": namespace["output"]}


def _report(report: dict[str, Any]) -> None:
    fd = int(os.environ.get("ATHENA_VALUE_FD", "-1"))
    if fd < 0:
        return
    data = json.dumps(report).encode()
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass


def _print_code_traceback(exc: BaseException) -> None:
    """Print a traceback of the code's own frames only, never this module's."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<code>"]
    lines = (
        ["Traceback (most recent call last):\n", *traceback.format_list(frames)] if frames else []
    )
    lines += traceback.format_exception_only(type(exc), exc)
    sys.stderr.write("".join(lines))


def run(request: dict[str, Any]) -> int:
    """Compile and run the request's code; return the exit status."""
    from RestrictedPython.compile import compile_restricted_exec

    compiled = compile_restricted_exec(request["code"], filename="<code>")
    if compiled.errors or compiled.code is None:
        for error in compiled.errors:
            print(error, file=sys.stderr)
        _report({"output": None, "memory_error": False})
        return 1
    files = WorkFiles(request["limits"]["workspace_bytes"])
    namespace = _globals(request["parameters"], frozenset(request["allowed_imports"]), files)
    status, memory_error = 0, False
    try:
        exec(compiled.code, namespace)
    except SystemExit as exc:
        print(f"SystemExit({exc.code!r}) is not allowed in the restricted mode", file=sys.stderr)
        status = 1
    except MemoryError:
        print("MemoryError: the run went over its memory limit", file=sys.stderr)
        status, memory_error = 1, True
    except BaseException as exc:
        _print_code_traceback(exc)
        status = 1
    sys.stdout.flush()
    _report({"output": output_envelope(namespace), "memory_error": memory_error})
    return status


def main() -> int:
    """Read the request from stdin, set the limits, run."""
    request = json.loads(sys.stdin.buffer.read())
    _apply_limits(request["limits"])
    return run(request)


if __name__ == "__main__":
    sys.exit(main())
