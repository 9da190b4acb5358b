"""Static checks of code against a policy's validation rules, before a run.

The validator is a tripwire, not the boundary: the sandbox must hold whatever it misses. It uses
real parsers (``ast`` for Python, tree-sitter for JavaScript and bash), so strings and comments are
never mistaken for code, and it looks for the usual bypasses: aliases, references without a call,
``getattr`` with a literal name, and module or command names computed at run time.

Rules of the findings: ``syntax`` (all languages), ``forbidden_import``, ``forbidden_call``,
``dynamic_import`` and ``introspection`` (Python), ``forbidden_module`` and ``dynamic_import``
(JavaScript), ``forbidden_command`` and ``dynamic_command`` (bash).
"""

from __future__ import annotations

import ast
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from typing import Literal

import tree_sitter
import tree_sitter_bash
import tree_sitter_javascript

from orchestrator.languages import get_language
from orchestrator.models import ValidationIssue
from orchestrator.policy import Validation

Severity = Literal["error", "warning"]


class CodeValidator:
    """Checks code against a policy's validation rules before a run."""

    def validate(self, code: str, language: str, rules: Validation) -> list[ValidationIssue]:
        """Return what ``code`` does that ``rules`` refuse, by line (errors first within one).

        Args:
            code: the source text.
            language: python, javascript or bash (aliases are accepted too).
            rules: the policy's ``validation`` section.

        Returns:
            The findings; severity ``error`` blocks a run when ``rules.enforce`` is set.

        Raises:
            UnknownLanguageError: ``language`` is not a language we run.

        """
        check = _CHECKS[get_language(language).name]
        return sorted(check(code, rules), key=lambda i: (i.line or 0, i.severity != "error"))


def _issue(severity: Severity, rule: str, line: int, message: str) -> ValidationIssue:
    return ValidationIssue(severity=severity, rule=rule, line=line, message=message)


def _match(name: str, entries: Iterable[str], separator: str) -> str | None:
    """Return the entry that covers ``name``: the name itself or one of its parents."""
    return next((e for e in entries if name == e or name.startswith(e + separator)), None)


def _covered(name: str, entry: str, field: str) -> str:
    return field if name == entry else f"{field} lists {entry!r}"


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- Python

_INTROSPECTION = frozenset(
    {"__builtins__", "__subclasses__", "__globals__", "__code__", "__mro__", "__bases__"}
)
# Objects whose items or attributes are the builtins: `__builtins__["eval"]` is `eval`.
_BUILTINS_OBJECTS = frozenset(
    {"builtins", "__builtins__", "builtins.__dict__", "__builtins__.__dict__"}
)
_IMPORT_FUNCTIONS = frozenset({"__import__", "importlib.import_module", "importlib.__import__"})


def _check_python(code: str, rules: Validation) -> list[ValidationIssue]:
    tree = _parse_python(code)
    if isinstance(tree, ValidationIssue):
        return [tree]
    return list(_PythonChecker(tree, rules).issues())


# CPython 3.11's ast.parse is not thread-safe: parses in parallel threads can fail with
# "SystemError: AST constructor recursion depth mismatch" (cpython gh-106905). Runs validate in
# the caller's threads (run_many, async), so parses take turns; one takes well under a millisecond.
_PARSE_LOCK = threading.Lock()


def _parse_python(code: str) -> ast.Module | ValidationIssue:
    try:
        with _PARSE_LOCK:
            return ast.parse(code)
    except SyntaxError as exc:
        return _issue("error", "syntax", exc.lineno or _nul_line(code), f"SyntaxError: {exc.msg}")
    except ValueError as exc:  # NUL characters before Python 3.12, lone surrogates
        return _issue("error", "syntax", _nul_line(code), f"SyntaxError: {exc}")
    except (RecursionError, MemoryError):
        return _issue("error", "syntax", 1, "SyntaxError: the code is nested too deeply to parse")


def _nul_line(code: str) -> int:
    index = code.find("\0")
    return 1 if index < 0 else code.count("\n", 0, index) + 1


def _literal_str(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _unparse(node: ast.expr) -> str:
    try:
        return _shorten(ast.unparse(node))
    except RecursionError:  # ast.unparse recurses; the parser accepts deeper code
        return "<deeply nested expression>"


def _strip_builtins(name: str) -> str:
    """Return ``eval`` for ``builtins.eval`` and ``__builtins__.eval``: they are the same."""
    for prefix in ("builtins.", "__builtins__."):
        name = name.removeprefix(prefix)
    return name


def _import_aliases(tree: ast.Module, dotted_calls: frozenset[str]) -> dict[str, str]:
    """Map each name that an absolute import binds to the qualified name it stands for."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                aliases[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases.update(_from_alias(node.module, alias, dotted_calls))
    return aliases


def _from_alias(module: str, alias: ast.alias, dotted_calls: frozenset[str]) -> dict[str, str]:
    if alias.name != "*":
        return {alias.asname or alias.name: f"{module}.{alias.name}"}
    # `from os import *` binds `system` too: map the forbidden names we know it brings.
    pairs = (call.rsplit(".", 1) for call in dotted_calls)
    return {name: f"{parent}.{name}" for parent, name in pairs if parent == module}


def _bound_names(tree: ast.Module) -> frozenset[str]:
    """Return the names the code binds itself (def, class, assignment, argument, import...)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return frozenset(names)


class _PythonChecker:
    """The Python rules over one parsed module; aliases and shadowing are resolved module-wide."""

    def __init__(self, tree: ast.Module, rules: Validation) -> None:
        self.tree = tree
        self.imports = rules.forbidden_imports
        self.calls = frozenset(rules.forbidden_calls)
        self.last_parts = frozenset(c.rsplit(".", 1)[-1] for c in self.calls)
        self.call_modules = frozenset(c.rsplit(".", 1)[0] for c in self.calls if "." in c)
        self.aliases = _import_aliases(tree, frozenset(c for c in self.calls if "." in c))
        # A bare name the user binds (def compile, eval = 1) is theirs, not the builtin.
        self.shadowed = _bound_names(tree) - self.aliases.keys()

    def issues(self) -> Iterator[ValidationIssue]:
        for node in ast.walk(self.tree):
            match node:
                case ast.Import():
                    for alias in node.names:
                        yield from self._import(alias.name, node.lineno)
                case ast.ImportFrom():
                    yield from self._import_from(node)
                case ast.Name():
                    yield from self._name(node)
                case ast.Attribute():
                    yield from self._attribute(node)
                case ast.Subscript():
                    yield from self._subscript(node)
                case ast.Call():
                    yield from self._call(node)

    def _resolve(self, node: ast.expr) -> str | None:
        """Return the qualified name an expression stands for (``o.system`` -> ``os.system``)."""
        attrs: list[str] = []
        while isinstance(node, ast.Attribute):  # a loop: chains may be thousands long
            attrs.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        return ".".join([self.aliases.get(node.id, node.id), *reversed(attrs)])

    def _forbidden_call(self, name: str | None) -> str | None:
        stripped = _strip_builtins(name) if name else ""
        return stripped if stripped in self.calls else None

    def _import(self, module: str, line: int) -> Iterator[ValidationIssue]:
        entry = _match(module, self.imports, ".")
        if entry:
            why = _covered(module, entry, "forbidden_imports")
            message = f"import of {module!r} is forbidden by the policy ({why})"
            yield _issue("error", "forbidden_import", line, message)

    def _import_from(self, node: ast.ImportFrom) -> Iterator[ValidationIssue]:
        if node.level or node.module is None:
            return  # relative imports load the user's own files
        names = [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
        found = list(self._import(node.module, node.lineno))
        if not found:  # `from asyncio import subprocess` imports asyncio.subprocess
            found = [issue for name in names for issue in self._import(name, node.lineno)]
        yield from found
        for name in names:
            forbidden = self._forbidden_call(name)
            if forbidden:
                why = _covered(name, forbidden, "forbidden_calls")
                message = f"import of {name!r} is forbidden by the policy ({why})"
                yield _issue("error", "forbidden_call", node.lineno, message)

    def _name(self, node: ast.Name) -> Iterator[ValidationIssue]:
        if node.id == "__builtins__":
            yield _introspection("__builtins__", node.lineno)
        if isinstance(node.ctx, ast.Load) and node.id not in self.shadowed:
            yield from self._use(self._resolve(node), node)

    def _attribute(self, node: ast.Attribute) -> Iterator[ValidationIssue]:
        if node.attr in _INTROSPECTION:
            yield _introspection(node.attr, node.lineno)
        # Resolve only candidates: resolving every link of a long chain would be quadratic.
        if isinstance(node.ctx, ast.Load) and node.attr in self.last_parts:
            yield from self._use(self._resolve(node), node)

    def _subscript(self, node: ast.Subscript) -> Iterator[ValidationIssue]:
        if self._resolve(node.value) not in _BUILTINS_OBJECTS:
            return
        key = _literal_str(node.slice)
        if key:
            yield from self._use(key, node)
        elif self.calls:
            yield self._dynamic_call(node, node.slice)

    def _call(self, node: ast.Call) -> Iterator[ValidationIssue]:
        func = _strip_builtins(self._resolve(node.func) or "")
        if func in _IMPORT_FUNCTIONS:
            yield from self._import_call(node, func)
        elif func == "getattr" and len(node.args) >= 2:
            yield from self._getattr(node, node.args[0], _literal_str(node.args[1]))

    def _use(self, name: str | None, node: ast.expr) -> Iterator[ValidationIssue]:
        forbidden = self._forbidden_call(name)
        if forbidden:
            yield self._call_issue(forbidden, node)

    def _call_issue(self, name: str, node: ast.expr) -> ValidationIssue:
        written = _unparse(node)
        as_written = "" if written == name else f" (as {written!r})"
        # References count, not only calls: `f = os.system; f("...")` is the obvious bypass.
        message = f"use of {name!r}{as_written} is forbidden by the policy (forbidden_calls)"
        return _issue("error", "forbidden_call", node.lineno, message)

    def _import_call(self, node: ast.Call, func: str) -> Iterator[ValidationIssue]:
        keywords = (k.value for k in node.keywords if k.arg == "name")
        arg = node.args[0] if node.args else next(keywords, None)
        module = _literal_str(arg) if arg else None
        if module is not None and not module.startswith("."):
            yield from self._import(module, node.lineno)
        elif arg is not None and module is None and self.imports:
            message = (
                f"{func}() with a module name computed at run time ({_unparse(arg)})"
                " cannot be checked against the policy's forbidden_imports, so it is refused"
            )
            yield _issue("error", "dynamic_import", node.lineno, message)

    def _getattr(
        self, node: ast.Call, obj: ast.expr, attr: str | None
    ) -> Iterator[ValidationIssue]:
        if attr in _INTROSPECTION:
            yield _introspection(attr, node.lineno)
        if attr is None:
            # getattr(os, "sys" + "tem"): a computed name on a module with forbidden calls (or
            # on the builtins) cannot be checked, so it is refused. Elsewhere it is ordinary.
            base = self._resolve(obj)
            if base and (base in _BUILTINS_OBJECTS or base in self.call_modules):
                yield self._dynamic_call(node, node.args[1])
            return
        target = self._getattr_target(obj, attr)
        if target:
            yield self._call_issue(target, node)

    def _dynamic_call(self, node: ast.expr, name: ast.expr) -> ValidationIssue:
        message = (
            f"{_unparse(node)} reaches a callable by a name computed at run time "
            f"({_unparse(name)}), which cannot be checked against the policy's forbidden_calls, "
            "so it is refused"
        )
        return _issue("error", "dynamic_call", node.lineno, message)

    def _getattr_target(self, obj: ast.expr, attr: str) -> str | None:
        base = self._resolve(obj)
        dotted = self._forbidden_call(f"{base}.{attr}" if base else None)
        if dotted or self._imported(obj):
            return dotted
        # getattr(anything, "eval"): an unknown object may well be the builtins module.
        return attr if attr in self.calls and "." not in attr else None

    def _imported(self, node: ast.expr) -> bool:
        """Tell whether an expression starts at a name the code imported (``re``, ``os.path``)."""
        while isinstance(node, ast.Attribute):
            node = node.value
        return isinstance(node, ast.Name) and node.id in self.aliases


def _introspection(attr: str, line: int) -> ValidationIssue:
    message = (
        f"access to {attr!r} is a usual escape route from in-process sandboxes; "
        "inside a container it is only a hint"
    )
    return _issue("warning", "introspection", line, message)


# --------------------------------------------------------------------------- tree-sitter


@cache
def _language(name: str) -> tree_sitter.Language:
    module = tree_sitter_javascript if name == "javascript" else tree_sitter_bash
    return tree_sitter.Language(module.language())


def _parse(name: str, code: str) -> tree_sitter.Node:
    # A parser per call: parsers are cheap and not safe to share between threads.
    parser = tree_sitter.Parser(_language(name))
    return parser.parse(code.encode("utf-8", errors="surrogatepass")).root_node


def _walk(root: tree_sitter.Node) -> Iterator[tree_sitter.Node]:
    """Yield every node in source order, without recursion (deep code must not crash us)."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def _text(node: tree_sitter.Node) -> str:
    return (node.text or b"").decode("utf-8", errors="replace")


def _snippet(node: tree_sitter.Node) -> str:
    """Return the start of a node's text for a message, without decoding all of it."""
    return _shorten((node.text or b"")[:100].decode("utf-8", errors="replace"))


def _line(node: tree_sitter.Node) -> int:
    return node.start_point.row + 1


def _syntax_warning(root: tree_sitter.Node, language: str, runtime: str) -> list[ValidationIssue]:
    """Return one warning for the first parse error: the grammar may lag behind the runtime."""
    errors = (n for n in _walk(root) if n.is_error or n.is_missing)
    bad = next(errors, None) if root.has_error else None
    if bad is None:
        return []
    what = f"missing {bad.type!r}" if bad.is_missing else f"unexpected {_snippet(bad)!r}"
    message = (
        f"the {language} parser found a syntax error ({what}); {runtime} will report the exact "
        "error when the code runs"
    )
    return [_issue("warning", "syntax", _line(bad), message)]


# --------------------------------------------------------------------------- JavaScript

_NATIVE_MEMBERS = frozenset({"binding", "_linkedBinding", "dlopen"})
_PROCESS_OBJECTS = frozenset({"process", "globalThis.process", "global.process"})


def _check_javascript(code: str, rules: Validation) -> list[ValidationIssue]:
    root = _parse("javascript", code)
    found = _syntax_warning(root, "JavaScript", "Node.js")
    modules = rules.javascript.forbidden_modules
    for node in _walk(root) if modules else ():
        if node.type in {"import_statement", "export_statement"}:
            source = node.child_by_field_name("source")
            found.extend(_js_module(source, modules) if source else ())
        elif node.type == "call_expression":
            found.extend(_js_call(node, modules))
        elif node.type in {"member_expression", "subscript_expression"}:
            found.extend(_js_native(node))
    return found


def _js_call(node: tree_sitter.Node, modules: tuple[str, ...]) -> list[ValidationIssue]:
    func = node.child_by_field_name("function")
    args = node.child_by_field_name("arguments")
    if func is None or args is None or not _js_loader(func):
        return []
    first = next((a for a in args.named_children if a.type != "comment"), None)
    return _js_module(first, modules) if first else []


def _js_loader(func: tree_sitter.Node) -> bool:
    """Tell whether a callee loads a module: ``import()``, ``require``, ``module.require``."""
    if func.type == "member_expression":
        func = func.child_by_field_name("property") or func
    names = {"identifier", "property_identifier"}  # never decode the text of a whole function
    return func.type == "import" or (func.type in names and _text(func) == "require")


def _js_literal(node: tree_sitter.Node) -> str | None:
    """Return a string literal's value; None for expressions, escapes and substitutions."""
    parts = node.named_children
    if node.type not in {"string", "template_string"} or any(
        p.type != "string_fragment" for p in parts
    ):
        return None
    return "".join(_text(p) for p in parts)


def _js_module(node: tree_sitter.Node, modules: tuple[str, ...]) -> list[ValidationIssue]:
    value = _js_literal(node)
    if value is None:
        message = (
            f"a module name computed at run time ({_snippet(node)}) cannot be checked "
            "against the policy's javascript.forbidden_modules, so it is refused"
        )
        return [_issue("error", "dynamic_import", _line(node), message)]
    entry = _match(value.removeprefix("node:"), modules, "/")
    if entry is None:
        return []
    why = _covered(value.removeprefix("node:"), entry, "javascript.forbidden_modules")
    message = f"loading module {value!r} is forbidden by the policy ({why})"
    return [_issue("error", "forbidden_module", _line(node), message)]


def _js_native(node: tree_sitter.Node) -> list[ValidationIssue]:
    member = node.child_by_field_name("property") or node.child_by_field_name("index")
    obj = node.child_by_field_name("object")
    if member is None or obj is None:
        return []
    # Only identifiers and literals: the text of an arbitrary index could be the whole file.
    name = _text(member) if member.type == "property_identifier" else _js_literal(member)
    if name not in _NATIVE_MEMBERS or _snippet(obj) not in _PROCESS_OBJECTS:
        return []
    message = (
        f"process.{name} reaches Node's native internals around the module system, so the "
        "policy refuses it (javascript.forbidden_modules is set)"
    )
    return [_issue("error", "forbidden_module", _line(node), message)]


# --------------------------------------------------------------------------- bash


# Commands that run another command: the options of theirs that take a value, and how many
# operands come before the command (timeout's duration).
_WRAPPERS: dict[str, tuple[frozenset[str], int]] = {
    "env": (frozenset({"-u", "--unset", "-C", "--chdir", "-S", "--split-string"}), 0),
    "exec": (frozenset({"-a"}), 0),
    "command": (frozenset(), 0),
    "builtin": (frozenset(), 0),
    "nohup": (frozenset(), 0),
    "time": (frozenset({"-f", "--format", "-o", "--output"}), 0),
    "timeout": (frozenset({"-s", "--signal", "-k", "--kill-after"}), 1),
    "xargs": (frozenset({"-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s"}), 0),
    "sudo": (frozenset({"-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U"}), 0),
    "nice": (frozenset({"-n", "--adjustment"}), 0),
}
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh"})
_NETWORK_DEVICES = ("/dev/tcp/", "/dev/udp/")
_LEADING_BACKSLASH = re.compile(r"^\\(?=\S)", re.MULTILINE)
_Word = tuple[str | None, tree_sitter.Node]


def _check_bash(code: str, rules: Validation) -> list[ValidationIssue]:
    # tree-sitter-bash glues a line that starts with a backslash (`\curl`, which skips aliases)
    # to the previous line's last word; a space in its place parses right and keeps positions.
    root = _parse("bash", _LEADING_BACKSLASH.sub(" ", code))
    found = _syntax_warning(root, "bash", "bash")
    commands = rules.bash.forbidden_commands
    for node in _walk(root) if commands else ():
        if node.type == "command":
            found.extend(_bash_command(node, commands))
        elif node.type == "file_redirect":
            found.extend(_bash_redirect(node))
    return found


def _bash_literal(node: tree_sitter.Node) -> str | None:
    """Return the word bash would see, or None when it depends on expansions at run time."""
    if node.type in {"word", "number"}:
        return _text(node).replace("\\", "")
    if node.type == "raw_string":
        return _text(node)[1:-1]
    if node.type == "string_content":
        return _text(node)
    if node.type in {"string", "concatenation", "command_name"}:
        parts = [_bash_literal(child) for child in node.named_children]
        return None if None in parts else "".join(p or "" for p in parts)
    return None


def _bash_command(node: tree_sitter.Node, commands: tuple[str, ...]) -> list[ValidationIssue]:
    name = node.child_by_field_name("name")
    if name is None:
        return []
    arguments = node.children_by_field_name("argument")
    words: list[_Word] = [(_bash_literal(n), n) for n in (name, *arguments)]
    checks = (_bash_run(word, node, words, commands) for word in _bash_chain(words))
    return [issue for issue in checks if issue]


def _bash_chain(words: list[_Word]) -> Iterator[_Word]:
    """Yield the command name, then the command each wrapper (env, xargs, timeout...) runs."""
    index = 0
    while index < len(words):
        yield words[index]
        word = words[index][0]
        wrapper = _WRAPPERS.get(word.rsplit("/", 1)[-1]) if word is not None else None
        if wrapper is None or (word == "command" and _word(words, index + 1) in {"-v", "-V"}):
            return  # `command -v curl` only looks curl up
        index = _after_options(words, index + 1, wrapper)


def _word(words: list[_Word], index: int) -> str | None:
    return words[index][0] if index < len(words) else None


def _after_options(words: list[_Word], index: int, wrapper: tuple[frozenset[str], int]) -> int:
    valued, operands = wrapper
    while (word := _word(words, index)) and word != "--" and (word[0] == "-" or "=" in word):
        index += 2 if word in valued else 1  # env's NAME=value counts as an option
    return index + (_word(words, index) == "--") + operands


def _bash_run(
    word: _Word, command: tree_sitter.Node, words: list[_Word], commands: tuple[str, ...]
) -> ValidationIssue | None:
    literal, node = word
    if literal is None:
        return _dynamic_command(node, f"the command name {_snippet(node)!r} is computed")
    name = literal.rsplit("/", 1)[-1]
    as_written = "" if name == literal else f" (as {literal!r})"
    if name in commands:
        message = (
            f"running {name!r}{as_written} is forbidden by the policy (bash.forbidden_commands)"
        )
        return _issue("error", "forbidden_command", _line(node), message)
    if name == "eval" or (name in _SHELLS and any(w[0] == "-c" for w in words)):
        return _dynamic_command(command, f"{name!r} runs a string as code")
    return None


def _dynamic_command(node: tree_sitter.Node, what: str) -> ValidationIssue:
    message = f"{what} at run time, so it cannot be checked against bash.forbidden_commands"
    return _issue("warning", "dynamic_command", _line(node), message)


def _bash_redirect(node: tree_sitter.Node) -> list[ValidationIssue]:
    targets = (_text(n).strip("\"'") for n in node.named_children if n.type != "file_descriptor")
    device = next((t for t in targets if t.startswith(_NETWORK_DEVICES)), None)
    if device is None:
        return []
    message = (
        f"redirection to {_shorten(device)!r} opens a network connection, which the policy "
        "refuses (bash.forbidden_commands is set)"
    )
    return [_issue("error", "forbidden_command", _line(node), message)]


_CHECKS: dict[str, Callable[[str, Validation], list[ValidationIssue]]] = {
    "python": _check_python,
    "javascript": _check_javascript,
    "bash": _check_bash,
}
