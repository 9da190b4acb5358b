"""The run-time policy layer's configuration: what a run's bootstrap refuses (pure code).

Static validation reads the code; it cannot follow names computed at run time.
The in-process part reports readable refusals; where the policy forbids processes or sockets,
the Docker runner also refuses them in the kernel (:func:`kernel_denials`). So when a
policy enforces validation, the request also carries a *guard* that the language's bootstrap
installs inside the sandbox before the code runs: for Python an audit hook (PEP 578) and an
``__import__`` wrapper (``images/python/pyboot.py``), for JavaScript a module loader that checks
every ``require`` and ``import()`` and a closed ``process.binding`` (``images/javascript/
jsboot.js``). Each refusal raises in the code (``PermissionError`` / an ``Error`` with code
``ERR_ACCESS_DENIED``) and becomes a ``policy:`` violation of the run. Bash has no such layer:
command names can be computed at run time, so for bash the static check is advice and the
container is the boundary. Ruby's interpreter needs neither processes nor sockets, so its guard
carries what the Docker runner refuses in the kernel (``processes``, ``sockets``); where it
forbids processes, its bootstrap (``images/ruby/rbboot.rb``) also replaces every Ruby way to
start one (``system``, backticks, ``spawn``, ``fork``, ``IO.popen``, ``open("|cmd")``,
``PTY.spawn``...) by a refusal (``Errno::EPERM``, a ``policy:`` violation), the only run-time
layer in srt mode. Ruby's sockets and libraries have no in-process refusal.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from orchestrator.policy import Policy

# Private modules that do what a public one does: forbidding the public one forbids these.
_TWINS: dict[str, tuple[str, ...]] = {
    "subprocess": ("_posixsubprocess",),
    "multiprocessing": ("_multiprocessing", "_posixshmem"),
    "importlib": ("_imp", "_frozen_importlib", "_frozen_importlib_external"),
    "socket": ("_socket",),
    "ssl": ("_ssl",),
    "ctypes": ("_ctypes",),
    "pickle": ("_pickle",),
    "asyncio": ("_asyncio",),
}
# Python names whose presence in a policy's forbidden calls means "no new processes".
_PROCESS_CALLS = frozenset({"os.system", "os.fork", "os.execv", "os.posix_spawn", "os.popen"})
_JS_PROCESS_MODULES = frozenset({"child_process", "cluster"})
_JS_SOCKET_MODULES = frozenset({"net", "dgram", "tls", "http", "https", "http2", "dns"})
# Private modules that run code outside the guard's reach (a subinterpreter has no audit hook).
_ALWAYS_FORBIDDEN = ("_xxsubinterpreters", "_testcapi", "_testinternalcapi", "_xxtestfuzz")


def python_forbidden_modules(forbidden: tuple[str, ...]) -> list[str]:
    """The modules a Python run may not import: the policy's, plus each one's private twins."""
    return list(_forbidden_modules(forbidden))


@lru_cache(maxsize=64)  # every run asks, with one of a few policies' lists
def _forbidden_modules(forbidden: tuple[str, ...]) -> tuple[str, ...]:
    names = set(forbidden)
    for name in forbidden:
        if "." not in name:
            names.add(f"_{name.lstrip('_')}")
        names.update(_TWINS.get(name, ()))
    return tuple(sorted(names))


def runtime_guard(policy: Policy, language: str) -> dict[str, Any] | None:
    """The guard a run of ``language`` under ``policy`` carries, or None when none applies.

    None when the policy does not enforce validation, when it forbids nothing the layer checks
    (development), and for a language with no such layer (bash: see the module docstring).
    Each language's entry in :mod:`orchestrator.languages` names its builder below.
    """
    # Imported here: the registry imports this module's builders.
    from orchestrator.languages import get_language

    return get_language(language).runtime_guard(policy)


def python_guard(policy: Policy) -> dict[str, Any] | None:
    """The Python guard of ``policy`` (``images/python/pyboot.py``), or None: nothing to check."""
    rules = policy.validation
    imports = python_forbidden_modules(rules.forbidden_imports)
    processes = "subprocess" in imports or bool(_PROCESS_CALLS & set(rules.forbidden_calls))
    if not (imports or processes):
        return None
    return {
        "policy": policy.name,
        "imports": sorted({*imports, *_ALWAYS_FORBIDDEN}),
        "processes": processes,
        "ctypes": "ctypes" in imports,
        "sockets": "socket" in imports and _offline(policy),
    }


def javascript_guard(policy: Policy) -> dict[str, Any] | None:
    """The JavaScript guard of ``policy`` (``images/javascript/jsboot.js``), or None."""
    modules = sorted(
        {m.removeprefix("node:") for m in policy.validation.javascript.forbidden_modules}
    )
    if not modules:
        return None
    return {
        "policy": policy.name,
        "modules": modules,
        "processes": bool(_JS_PROCESS_MODULES & set(modules)),
        "sockets": bool(_JS_SOCKET_MODULES & set(modules)) and _offline(policy),
    }


def ruby_guard(policy: Policy) -> dict[str, Any] | None:
    """The Ruby guard of ``policy`` (``images/ruby/rbboot.rb`` and :func:`kernel_denials`)."""
    rules = policy.validation
    processes = "subprocess" in rules.forbidden_imports or bool(
        _PROCESS_CALLS & set(rules.forbidden_calls)
    )
    sockets = "socket" in rules.forbidden_imports and _offline(policy)
    if not (processes or sockets):
        return None
    return {"policy": policy.name, "processes": processes, "sockets": sockets}


def _offline(policy: Policy) -> bool:
    # Sockets are refused whoever asks only without a network: under an allowlist a library
    # (urllib, requests) must reach the allowed domains; the code's own `import socket` is
    # still refused as an import.
    return policy.network.mode == "none"


def kernel_denials(guard: dict[str, Any] | None) -> list[str]:
    """What the runner refuses in the kernel for a guarded interpreter: processes, sockets.

    Python, JavaScript and Ruby interpreters need neither to run (threads and socket pairs stay
    allowed), so where the policy forbids them the container's runner adds seccomp and Landlock
    rules before the interpreter starts: an in-process layer can be undone by the code it
    guards, the kernel's refusal cannot.
    """
    if guard is None:
        return []
    return [what for what in ("processes", "sockets") if guard.get(what)]
