"""Ruby: tree-sitter checks of libraries, process spawning and code built from strings.

Policies have no Ruby section: the Ruby rules follow from the language-neutral fields. A library
is forbidden when ``forbidden_imports`` names it or the Python module it stands in for
(``subprocess`` forbids ``open3`` and ``pty``, ``socket`` forbids ``socket``, ``net/*`` and
``open-uri``, ``ctypes`` forbids ``fiddle``); a call is forbidden when its Python counterpart is
(``os.system`` or ``subprocess`` forbid ``system``, backticks, ``%x``, ``exec``, ``spawn``,
``IO.popen`` and ``open("|...")``; ``os.fork`` forbids ``fork``; ``eval`` forbids ``eval`` and
``instance_eval`` of a string). Like the JavaScript checks, what cannot be read is refused once a
rule applies: a library name computed at run time, a method reached by a computed name (``send``,
``public_send``, ``method``, ``const_get``), a path computed at run time given to a method that
runs ``|command`` paths, and the guarded modules (``Kernel``, ``Process``, ``IO``...) handed on as
values (``Object::Kernel`` and ``::Kernel`` are ``Kernel``). The methods that start a process
(``system``, ``spawn``, ``exec``, ``fork``, ``popen``, ``syscall``...) are refused on any
receiver: ``Kernel`` reached as a value (``method(:puts).owner``, ``ObjectSpace``) or a
subclass of ``IO`` (``File.popen``) cannot be told apart by reading. Where ``eval`` is forbidden,
code that comes from somewhere the check never read is refused too: ``load`` and
``require_relative`` (the run's own directories hold only what it wrote itself), ``require`` of a
path, changes to where libraries are found (``$LOAD_PATH``), templates that run code (``erb``),
``RubyVM`` (compiles and runs strings and bytecode) and ``Gem`` (``Gem::Specification.load`` runs
a file, ``Gem.use_paths`` loads libraries the run wrote). The check is advice: the run-time
layer (the runner's kernel rules, and ``images/ruby/rbboot.rb``'s refusal of process creation)
enforces, the container is the boundary.

Rules: ``forbidden_library``, ``forbidden_call``, ``dynamic_import``, ``dynamic_call``,
``dynamic_code``, ``module_alias``, and ``syntax`` (a warning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tree_sitter

from orchestrator.models import ValidationIssue
from orchestrator.policy import Validation
from orchestrator.validator.common import (
    error,
    line,
    match,
    parse,
    refused,
    snippet,
    syntax_warning,
    text,
    walk,
)

Node = tree_sitter.Node

# Ruby libraries that do what a Python module of the policy names.
_LIBRARIES: dict[str, tuple[str, ...]] = {
    "subprocess": ("open3", "pty", "shell"),
    "pty": ("pty",),
    "socket": ("socket", "net", "open-uri", "resolv", "webrick", "drb"),
    "ssl": ("openssl",),
    "ctypes": ("fiddle", "ffi"),
    "cffi": ("fiddle", "ffi"),
    "shelve": ("pstore", "dbm", "gdbm"),
    "ftplib": ("net/ftp",),
    "smtplib": ("net/smtp",),
    "poplib": ("net/pop",),
    "imaplib": ("net/imap",),
    "telnetlib": ("net/telnet",),
}
_SPAWNING = (
    "subprocess", "os.system", "os.popen", "os.execv", "os.execve", "os.execvp", "os.execl",
    "os.posix_spawn", "os.posix_spawnp", "os.spawnv", "os.spawnl",
)  # fmt: skip
_FORKING = ("os.fork", "os.forkpty", "multiprocessing")
_CODE = ("eval", "exec", "compile")
# (module, method) -> the policy entries that forbid it; module "Kernel" is also a bare call.
_CALLS: dict[tuple[str, str], tuple[str, ...]] = {
    **{("Kernel", m): _SPAWNING for m in ("system", "exec", "spawn", "`")},
    **{("Process", m): _SPAWNING for m in ("spawn", "exec")},
    ("IO", "popen"): _SPAWNING,
    **{
        (k, m): _FORKING
        for k, m in (("Kernel", "fork"), ("Process", "fork"), ("Process", "daemon"))
    },
    ("Kernel", "eval"): _CODE,
    ("Kernel", "syscall"): ("ctypes", "cffi"),
    ("Process", "kill"): ("os.kill", "os.killpg"),
    ("Dir", "chroot"): ("os.chroot",),
    **{("Process", m): ("os.setuid", "os.setgid") for m in ("uid=", "gid=", "euid=", "egid=")},
    **{(k, m): ("pickle", "marshal") for k in ("Marshal",) for m in ("load", "restore")},
    **{
        (k, m): ("pickle", "marshal")
        for k in ("YAML", "Psych")
        for m in ("unsafe_load", "unsafe_load_file")
    },
}
# Methods that start a process on any receiver (Kernel as a value, File.popen): their owner.
_ANY_RECEIVER = {
    **dict.fromkeys(("system", "spawn", "exec", "`", "fork", "syscall"), "Kernel"),
    "popen": "IO",
    "daemon": "Process",
}
# Where eval is forbidden: libraries that run strings as code, and what moves library lookup.
_CODE_LIBRARIES = frozenset({"erb", "irb", "debug"})
_CODE_MODULES = {
    "RubyVM": "RubyVM compiles and runs strings and bytecode",
    "Gem": "rubygems runs gem specifications (Ruby files) and moves where libraries are found",
}
_LOAD_PATHS = frozenset({"$LOAD_PATH", "$:", "$-I"})
_FILE_LOADERS = frozenset({"load", "require_relative"})
# Methods whose result or block argument is their receiver (or a copy of it).
_IDENTITY = frozenset(
    {"itself", "dup", "clone", "then", "yield_self", "tap", "freeze", "singleton_class",
     "instance_exec", "module_exec", "class_exec", "ancestors", "to_proc"}
)  # fmt: skip
_IVARS = frozenset(
    {"instance_variable_set", "instance_variable_get", "class_variable_set", "class_variable_get"}
)
# Methods that run a command when their path starts with "|" (open, IO.read, URI.open ...).
_PIPE_PATHS = frozenset(
    {("Kernel", "open"), ("URI", "open")}
    | {("IO", m) for m in ("read", "readlines", "foreach", "write", "binread", "binwrite")}
)
_STRING_EVALS = frozenset({"instance_eval", "class_eval", "module_eval", "eval"})
_SENDS = frozenset({"send", "__send__", "public_send"})
_METHOD_LOOKUPS = frozenset(
    {"method", "public_method", "singleton_method", "instance_method", "public_instance_method"}
)
_LOADERS = frozenset({"require", "require_relative", "load", "autoload"})
_TYPE_TESTS = frozenset({"is_a?", "kind_of?", "instance_of?", "equal?", "==", "!=", "==="})
_ASSIGNMENTS = frozenset({"assignment", "operator_assignment"})
_GUARDED = frozenset({"Kernel", "Process", "IO", "Open3", "PTY", "Marshal", "ObjectSpace"})


@dataclass(frozen=True)
class _Rules:
    """The Ruby reading of a policy's validation fields."""

    libraries: dict[str, str]  # forbidden library -> the policy entry that forbids it
    imports: frozenset[str]
    calls: frozenset[str]

    @classmethod
    def of(cls, rules: Validation) -> _Rules:
        libraries: dict[str, str] = {}
        for entry in rules.forbidden_imports:
            for library in (entry, *_LIBRARIES.get(entry, ())):
                libraries.setdefault(library, entry)
        imports, calls = frozenset(rules.forbidden_imports), frozenset(rules.forbidden_calls)
        return cls(libraries, imports, calls)

    @property
    def code(self) -> bool:
        """Whether the policy forbids running strings as code (``eval`` and its kind)."""
        return any(self.field(e) for e in _CODE)

    @property
    def active(self) -> bool:
        """Whether anything is forbidden that code built or named at run time could reach."""
        return bool(self.libraries) or any(self.field(e) for e in _SPAWNING + _CODE)

    def field(self, entry: str) -> str | None:
        """The policy field that lists ``entry``, or None."""
        if entry in self.calls:
            return "forbidden_calls"
        return "forbidden_imports" if entry in self.imports else None

    def forbidding(self, module: str, method: str) -> str | None:
        """The policy entry that forbids ``module.method``, or None."""
        return next((e for e in _CALLS.get((module, method), ()) if self.field(e)), None)


def check_ruby(code: str, rules: Validation) -> list[ValidationIssue]:
    """Return the findings of the Ruby rules for ``code``."""
    root = parse("ruby", code)
    found = syntax_warning(root, "Ruby", "Ruby")
    ruby = _Rules.of(rules)
    if not ruby.active:
        return found
    variables = _variables(root)
    for node in walk(root):
        if node.type == "identifier" and text(node) in variables:
            continue  # a local variable named like a method (`system = 3`), not a call
        found.extend(_check(node, ruby))
    return found


def _check(node: Node, rules: _Rules) -> list[ValidationIssue]:
    if node.type == "subshell":  # `cmd` and %x(cmd)
        return _forbidden(node, rules, "Kernel", "`", "running a command in backticks")
    if node.type == "call":
        return _call(node, rules)
    if node.type == "identifier" and _bare_call(node):
        return _forbidden(node, rules, "Kernel", text(node), f"calling {text(node)}")
    if node.type in {"constant", "scope_resolution"} and _handed_on(node):
        return [_alias(node, f"the module {_module(node)} is handed on as a value")]
    if node.type == "alias":
        return _aliased(node, [n for n in node.named_children if n.type != "comment"], rules)
    return _code_sources(node) if rules.code else []


def _code_sources(node: Node) -> list[ValidationIssue]:
    """Modules and globals that run or load code the checks never read (where eval is forbidden)."""
    if node.type == "constant" and text(node) in _CODE_MODULES:
        return [_code(node, _CODE_MODULES[text(node)])]
    if node.type == "global_variable" and text(node) in _LOAD_PATHS:
        return [_moved(node, f"changing {text(node)}")]
    return []


# --------------------------------------------------------------------------- calls


def _call(node: Node, rules: _Rules) -> list[ValidationIssue]:
    module, method = _target(node)
    if method is None:
        return []
    handler = _HANDLERS.get(method, _plain)
    return handler(node, _arguments(node), rules, module, method)


def _plain(
    node: Node, args: list[Node], rules: _Rules, module: str | None, method: str
) -> list[ValidationIssue]:
    if module is not None and (module, method) in _PIPE_PATHS:
        return _pipe_path(node, args, rules, module, method)
    if module is None and method == "open" and args and _pipe(args[0]):
        return _forbidden(node, rules, "Kernel", "system", "open of a '|' path (a command)")
    if (module, method) == ("ObjectSpace", "each_object"):
        return [_alias(node, "ObjectSpace.each_object hands on every module, Kernel among them")]
    if method in _IVARS and module is not None and module != "Kernel":
        return [_alias(node, f"{method} reaches the inner state of {module}")]
    owner = module or ""
    if rules.forbidding(owner, method) is None and method in _ANY_RECEIVER:
        owner = _ANY_RECEIVER[method]  # a process starts whatever it is called on
    return _forbidden(node, rules, owner, method, f"calling {_name(module, method)}")


def _string_eval(
    node: Node, args: list[Node], rules: _Rules, module: str | None, method: str
) -> list[ValidationIssue]:
    """``instance_eval("...")`` and ``binding.eval("...")`` run a string; with a block, not."""
    if args and (module, method) != ("Kernel", "eval"):
        return [_code(node, f"{method} of a string runs it as code")]
    return _plain(node, args, rules, module, method)


def _target(node: Node) -> tuple[str | None, str | None]:
    """(module, method) of a call: module "Kernel" for a bare call, None for another receiver."""
    receiver = node.child_by_field_name("receiver")
    method = node.child_by_field_name("method")
    name = text(method) if method is not None else None
    if receiver is None or receiver.type == "self":
        return "Kernel", name
    if receiver.type in {"constant", "scope_resolution"}:
        return _module(receiver), name
    return None, name


def _module(node: Node) -> str:
    """A constant path's module: ``::Kernel`` and ``Object::Kernel`` are ``Kernel``."""
    name = text(node).lstrip(":")
    while name.startswith("Object::"):
        name = name.removeprefix("Object::").lstrip(":")
    return name


def _arguments(node: Node) -> list[Node]:
    args = node.child_by_field_name("arguments")
    return [a for a in args.named_children if a.type != "comment"] if args is not None else []


def _forbidden(
    node: Node, rules: _Rules, module: str, method: str, what: str
) -> list[ValidationIssue]:
    entry = rules.forbidding(module, method)
    if entry is None:
        return []
    message = f"{what} is forbidden by the policy ({rules.field(entry)} lists {entry!r})"
    return [error("forbidden_call", line(node), message)]


def _library(
    node: Node, args: list[Node], rules: _Rules, module: str | None, loader: str
) -> list[ValidationIssue]:
    if module != "Kernel" or not args:
        return []
    name = _literal(args[-1] if loader == "autoload" else args[0])
    if rules.code and (name is None or loader in _FILE_LOADERS or not _library_name(name)):
        return [_unread_file(node, loader, name)]
    if not rules.libraries:
        return []
    if name is None:
        message = (
            f"a library name computed at run time ({snippet(node)}) cannot be checked against "
            "the policy's forbidden_imports, so it is refused"
        )
        return [error("dynamic_import", line(node), message)]
    entry = match(name.removesuffix(".rb"), rules.libraries, "/")
    if entry is None:
        return []
    source = rules.libraries[entry]
    why = "" if source == entry else f", which forbids the library {entry!r}"
    message = (
        f"loading {name!r} is forbidden by the policy (forbidden_imports lists {source!r}{why})"
    )
    return [error("forbidden_library", line(node), message)]


def _library_name(name: str) -> bool:
    """Whether ``require`` of ``name`` loads an installed library that runs no strings."""
    return not name.startswith(("/", ".", "~")) and name.removesuffix(".rb") not in _CODE_LIBRARIES


def _unread_file(node: Node, loader: str, name: str | None) -> ValidationIssue:
    """What a loader of code the checks never read is refused as (where eval is forbidden)."""
    if name is None:
        message = (
            f"a library name computed at run time ({snippet(node)}) may be a file the run "
            "wrote itself, which the checks never read, so it is refused"
        )
        return error("dynamic_import", line(node), message)
    if loader in _FILE_LOADERS:
        return _code(node, f"{loader} runs a file the checks never read as code")
    if name.startswith(("/", ".", "~")):
        return _code(node, f"{loader} of a path runs a file the checks never read as code")
    return _code(node, f"the library {name!r} runs strings as code")


def _by_name(
    node: Node, args: list[Node], rules: _Rules, module: str | None, how: str
) -> list[ValidationIssue]:
    """``send(:system, ...)`` is ``system(...)``; ``send(name)`` cannot be read."""
    name = _literal(args[0]) if args else None
    if name is None:
        if not args:
            return []
        message = (
            f"a method reached by a name computed at run time ({snippet(node)}) may be one the "
            "policy forbids, which cannot be checked, so it is refused"
        )
        return [error("dynamic_call", line(node), message)]
    if name in _STRING_EVALS and how in _SENDS and len(args) > 1:
        return [_code(node, f"{name} of a string runs it as code")]
    if name in _LOADERS:  # send(:require, "open3") is require "open3"
        return _loader(node, args[1:], rules, name, how)
    # send and method reach private methods too: every object's Kernel#system among them.
    owner = module if module and rules.forbidding(module, name) else "Kernel"
    return _forbidden(node, rules, owner, name, f"reaching {_name(module, name)} by {how}")


def _loader(
    node: Node, args: list[Node], rules: _Rules, loader: str, how: str
) -> list[ValidationIssue]:
    """A loader reached by name: sent, it loads its argument; looked up, what it will load."""
    if how in _SENDS:
        return _library(node, args, rules, "Kernel", loader)
    if not (rules.libraries or rules.code):
        return []
    message = (
        f"{loader} taken as a value ({snippet(node)}) loads libraries whose names cannot be "
        "checked against the policy, so it is refused"
    )
    return [error("dynamic_import", line(node), message)]


def _constant(
    node: Node, args: list[Node], rules: _Rules, module: str | None, method: str
) -> list[ValidationIssue]:
    del rules, module, method
    name = _literal(args[0]) if args else None
    if name is None and args:
        message = (
            f"a constant reached by a name computed at run time ({snippet(node)}) may be a "
            "module whose methods the policy forbids, so it is refused"
        )
        return [error("dynamic_call", line(node), message)]
    if name is not None and name.lstrip(":") in _GUARDED | {"RubyVM"}:
        return [_alias(node, f"const_get hands on the module {name}")]
    return []


def _pipe_path(
    node: Node, args: list[Node], rules: _Rules, module: str, method: str
) -> list[ValidationIssue]:
    """``open("|cmd")`` runs cmd: a literal path is read, a computed one refused."""
    if rules.forbidding("Kernel", "system") is None or not args:
        return []
    path = _literal(args[0])
    what = _name(module, method)
    if path is None:
        message = (
            f"{what} with a path computed at run time ({snippet(node)}) runs a command when the "
            "path starts with '|', so it is refused where processes are forbidden; use File."
            f"{'open' if method == 'open' else method}, which never does"
        )
        return [error("dynamic_call", line(node), message)]
    if path.startswith("|"):
        return _forbidden(node, rules, "Kernel", "system", f"{what} of a '|' path (a command)")
    return []


def _aliased_method(
    node: Node, args: list[Node], rules: _Rules, module: str | None, method: str
) -> list[ValidationIssue]:
    del module, method
    return _aliased(node, args, rules)


def _aliased(node: Node, names: list[Node], rules: _Rules) -> list[ValidationIssue]:
    """``alias run system`` and ``alias_method :run, :system`` rename a forbidden method."""
    if len(names) < 2:
        return []
    target = _literal(names[1]) or text(names[1]).lstrip(":")
    if rules.forbidding("Kernel", target) is None and target not in _STRING_EVALS:
        return []
    return [_alias(node, f"an alias of {target} hides the calls the policy forbids")]


_Handler = Callable[[Node, list[Node], _Rules, str | None, str], list[ValidationIssue]]
_HANDLERS: dict[str, _Handler] = {
    **dict.fromkeys(_LOADERS, _library),
    **dict.fromkeys(_SENDS | _METHOD_LOOKUPS, _by_name),
    **dict.fromkeys(_STRING_EVALS, _string_eval),
    "const_get": _constant,
    "alias_method": _aliased_method,
}


# --------------------------------------------------------------------------- shapes


def _literal(node: Node) -> str | None:
    """The value of a plain string or symbol (no interpolation), else None."""
    if node.type in {"simple_symbol", "hash_key_symbol"}:
        return text(node).lstrip(":")
    if node.type in {"string", "delimited_symbol"}:
        parts = node.named_children
        if all(p.type == "string_content" for p in parts):
            return "".join(text(p) for p in parts)
    return None


def _pipe(node: Node) -> bool:
    """Whether ``node`` is a literal path that names a command (``"|id"``)."""
    path = _literal(node)
    return path is not None and path.startswith("|")


def _variables(root: Node) -> frozenset[str]:
    """The names the code assigns as local variables anywhere."""
    lefts = (n.child_by_field_name("left") for n in walk(root) if n.type in _ASSIGNMENTS)
    return frozenset(text(n) for n in lefts if n is not None and n.type == "identifier")


def _bare_call(node: Node) -> bool:
    """``fork`` or ``system`` with no arguments and no parentheses parses as an identifier."""
    parent = node.parent
    if parent is None or parent.type in {"call", "method", "parameters", "alias"}:
        return False
    return not (parent.type in _ASSIGNMENTS and parent.child_by_field_name("left") == node)


def _handed_on(node: Node) -> bool:
    """A guarded module used otherwise than as a call's receiver or a constant's scope."""
    name = _module(node)
    parent = node.parent
    if name not in _GUARDED or parent is None:
        return False
    if parent.type == "call" and parent.child_by_field_name("receiver") == node:
        _, method = _target(parent)
        return method in _IDENTITY  # Kernel.itself, Kernel.then { |k| ... } hand it on
    if parent.type == "scope_resolution" and parent.child_by_field_name("scope") == node:
        return False
    if parent.type == "argument_list" and parent.parent is not None:
        _, method = _target(parent.parent)
        return method not in _TYPE_TESTS  # x.is_a?(IO) compares, hands nothing on
    if parent.type == "binary":
        operator = parent.child_by_field_name("operator")
        return operator is None or text(operator) not in _TYPE_TESTS
    return parent.type not in {"scope_resolution", "class", "module", "superclass", "pattern"}


def _name(module: str | None, method: str) -> str:
    return method if module in {None, "Kernel"} else f"{module}.{method}"


# --------------------------------------------------------------------------- findings


def _alias(node: Node, what: str) -> ValidationIssue:
    why = ", so the calls made through it cannot be checked against the policy; it is refused"
    return refused("module_alias", node, what, why)


def _moved(node: Node, what: str) -> ValidationIssue:
    why = (
        " changes where libraries are loaded from, so a library the run wrote itself could be "
        "loaded past these checks; it is refused"
    )
    return refused("dynamic_import", node, what, why)


def _code(node: Node, what: str) -> ValidationIssue:
    why = (
        "; code built at run time can do anything the policy forbids, past these checks, so it "
        "is refused"
    )
    return refused("dynamic_code", node, what, why)
