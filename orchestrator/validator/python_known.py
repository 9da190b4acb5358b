"""What the Python checker knows about the standard library and the data-science libraries.

Policies list what they forbid (``subprocess``, ``pickle``, ``exec``); these tables say where
else those things live: the private twin of a module (``_socket`` is ``socket``), the functions
that wrap a forbidden module or call (``pandas.read_pickle`` unpickles, ``timeit.timeit("...")``
runs a string as code), and the objects that hand out modules or the builtins without an import.
A wrapper is refused only when what it wraps is forbidden by the policy.
"""

from __future__ import annotations

from typing import Literal

# What a wrapper stands for: a module (refused when forbidden_imports covers it), string
# evaluation (refused when forbidden_calls lists eval, exec or compile), a builtin call, or
# imports by names chosen at run time (refused when forbidden_imports lists anything).
TargetKind = Literal["module", "code", "call", "import"]
Target = tuple[TargetKind, str]
Wrapper = tuple[str, tuple[Target, ...]]  # (what it does, for the message; what it wraps)

CODE: Target = ("code", "")
IMPORT: Target = ("import", "")
EVALUATORS = ("exec", "eval", "compile")  # string evaluation, in the order messages name them
_SUBPROCESS: Target = ("module", "subprocess")
_PICKLE: Target = ("module", "pickle")

# Private modules that are the same thing as a public one. Besides these, forbidding M forbids
# _M (``_socket``, ``_ssl``, ``_pickle``, ``_ctypes``, ``_multiprocessing``, ``_os`` in
# ``random._os``). ``_asyncio`` is no twin: it holds only Future and Task, no processes.
PRIVATE_TWINS: dict[str, str] = {
    "_posixsubprocess": "subprocess",
    "_winapi": "subprocess",
    "_posixshmem": "multiprocessing",
    "_cffi_backend": "cffi",
    "_imp": "importlib",
    "_frozen_importlib": "importlib",
    "_frozen_importlib_external": "importlib",
    "_lsprof": "cProfile",
    "posix": "os",
    "nt": "os",
}

# Modules whose purpose is one of the forbidden things: importing them is the use.
WRAPPER_MODULES: dict[str, Wrapper] = {
    "pdb": ("runs strings as code", (CODE,)),
    "bdb": ("runs strings as code", (CODE,)),
    "trace": ("runs strings as code", (CODE,)),
    "doctest": ("runs strings as code", (CODE,)),
    "code": ("runs strings as code", (CODE,)),
    "codeop": ("compiles strings as code", (CODE,)),
    "_xxsubinterpreters": ("runs strings as code", (CODE,)),
    "_interpreters": ("runs strings as code", (CODE,)),
    "concurrent.interpreters": ("runs strings as code", (CODE,)),
    "logging.config": (
        "evaluates configuration strings, imports by name and serves a socket",
        (CODE, IMPORT, ("module", "socketserver")),
    ),
    "pydoc": ("pages through a shell command and imports by name", (_SUBPROCESS, IMPORT)),
    "pipes": ("runs shell pipelines", (_SUBPROCESS,)),
    "distutils.spawn": ("starts processes", (_SUBPROCESS,)),
    "numpy.distutils": ("starts processes", (_SUBPROCESS,)),
    "numpy.f2py": ("starts compilers", (_SUBPROCESS,)),
}

# Callables that wrap a forbidden module or call, by qualified name.
WRAPPER_CALLS: dict[str, Wrapper] = {
    "asyncio.create_subprocess_exec": ("starts processes", (_SUBPROCESS,)),
    "asyncio.create_subprocess_shell": ("starts processes", (_SUBPROCESS,)),
    "platform.popen": ("starts processes", (_SUBPROCESS,)),
    "pty.spawn": ("starts processes", (_SUBPROCESS, ("module", "pty"))),
    "help": ("pages through $PAGER, a shell command, via pydoc", (_SUBPROCESS,)),
    "concurrent.futures.ProcessPoolExecutor": (
        "starts processes",
        (("module", "concurrent.futures.process"), ("module", "multiprocessing")),
    ),
    "cProfile.run": ("runs a string as code", (CODE,)),
    "cProfile.runctx": ("runs a string as code", (CODE,)),
    "cProfile.main": ("runs a script by name", (CODE,)),
    "cProfile.Profile.run": ("runs a string as code", (CODE,)),
    "cProfile.Profile().run": ("runs a string as code", (CODE,)),
    "profile.run": ("runs a string as code", (CODE,)),
    "profile.runctx": ("runs a string as code", (CODE,)),
    "profile.main": ("runs a script by name", (CODE,)),
    "profile.Profile.run": ("runs a string as code", (CODE,)),
    "profile.Profile().run": ("runs a string as code", (CODE,)),
    "timeit.main": ("runs strings as code", (CODE,)),
    "sys.breakpointhook": (
        "calls the callable named by PYTHONBREAKPOINT",
        (("call", "breakpoint"), IMPORT),
    ),
    "sys.__breakpointhook__": (
        "calls the callable named by PYTHONBREAKPOINT",
        (("call", "breakpoint"), IMPORT),
    ),
    "pandas.read_pickle": ("unpickles data", (_PICKLE,)),
    "pandas.to_pickle": ("pickles data", (_PICKLE,)),
    "joblib.load": ("unpickles data", (_PICKLE,)),
    "joblib.dump": ("pickles data", (_PICKLE,)),
}

# Methods that wrap a forbidden module on whatever object has them (DataFrame.to_pickle,
# loop.subprocess_exec, Profile.runctx).
WRAPPER_METHODS: dict[str, Wrapper] = {
    "to_pickle": ("pickles data", (_PICKLE,)),
    "read_pickle": ("unpickles data", (_PICKLE,)),
    "subprocess_exec": ("starts processes", (_SUBPROCESS,)),
    "subprocess_shell": ("starts processes", (_SUBPROCESS,)),
    "runctx": ("runs a string as code", (CODE,)),
}

# Callables whose arguments decide: timeit compiles string statements (a function is fine);
# numpy.load unpickles with allow_pickle=True. Values: the positions of the arguments to check
# and their keyword names.
STRING_STATEMENTS: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "timeit.timeit": ((0, 1), ("stmt", "setup")),
    "timeit.repeat": ((0, 1), ("stmt", "setup")),
    "timeit.Timer": ((0, 1), ("stmt", "setup")),
}
ALLOW_PICKLE: dict[str, int] = {
    "numpy.load": 2,
    "numpy.lib.npyio.load": 2,
    "numpy.lib.format.read_array": 1,
}
# Instances the checker follows, for the wrappers above that are methods (Profile().run).
INSTANCE_CLASSES = frozenset({"cProfile.Profile", "profile.Profile"})

# Objects that hand out modules by name, past the import checks.
MODULE_TABLES = frozenset(
    {"sys.modules", "sys.meta_path", "sys.path_hooks", "sys.path_importer_cache"}
)
# Functions that hand out modules or any live object.
OBJECT_FINDERS = frozenset(
    {
        "inspect.getmodule",
        "inspect.getmembers",
        "inspect.getmembers_static",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
    }
)
# Importer protocol: these load modules by name (``__builtins__.__loader__.load_module("posix")``).
IMPORTER_NAMES = frozenset({"__loader__", "__spec__"})
IMPORTER_METHODS = frozenset(
    {"load_module", "exec_module", "create_module", "find_spec", "find_module", "find_loader"}
)

# Attributes that lead to a namespace whatever the object: a function's globals, a frame's.
BUILTINS_ATTRIBUTES = frozenset({"__builtins__", "f_builtins"})
GLOBALS_ATTRIBUTES = frozenset({"__globals__", "f_globals", "f_locals"})
# Builtins that reach attributes or namespaces by name; handed on as values they hide the name.
REFLECTIVE = frozenset({"getattr", "vars", "globals", "locals", "__import__"})
# Builtins a module or namespace may be given to without escaping: they only look at it.
LOOKERS = frozenset(
    {
        "print", "repr", "str", "len", "dir", "hasattr", "isinstance", "issubclass", "type",
        "id", "callable", "bool", "hash", "sorted", "list", "set", "tuple", "frozenset",
        "getattr", "setattr", "delattr", "vars",
    }
)  # fmt: skip
# dict methods of a namespace that hand out its values (get/pop/setdefault take a key: checked).
NAMESPACE_LEAKS = frozenset(
    {"values", "items", "copy", "popitem", "__getitem__", "__iter__", "__or__", "__ror__"}
)
NAMESPACE_LOOKUPS = frozenset({"get", "pop", "setdefault"})
