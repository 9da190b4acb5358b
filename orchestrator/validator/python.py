"""Python: ``ast`` checks of imports, calls, and the routes around them.

Names are resolved module-wide (:mod:`.python_names`), so aliases, tuple unpacking, the walrus,
``getattr`` with a literal name, ``vars(m)[...]``, ``m.__dict__[...]`` and chains through other
modules (``shutil.os.system``) all reach the rules (:mod:`.python_rules`). Private twins
(``_socket``) and library wrappers (``pandas.read_pickle``, ``timeit.timeit("...")``) are known
(:mod:`.python_known`). What the resolution cannot follow is refused where it matters
(:mod:`.python_escape`): a guarded object handed on as a value, a name computed at run time on a
module or namespace. Nothing is refused that way when the policy forbids nothing.

Rules: ``forbidden_import``, ``forbidden_call``, ``forbidden_wrapper`` (a library function or
module wrapping something forbidden), ``module_alias`` (a module reached or handed on where the
checks cannot follow), ``builtins_access`` (the builtins namespace reached through a namespace or
handed on), ``dynamic_import``, ``dynamic_call`` (names computed at run time), ``syntax`` and
``introspection`` (a warning).
"""

from __future__ import annotations

import ast
import threading
from collections.abc import Callable, Iterator

from orchestrator.models import ValidationIssue
from orchestrator.policy import Validation
from orchestrator.validator import python_known as known
from orchestrator.validator.common import covered, error, issue, match
from orchestrator.validator.python_escape import Escapes, unparse
from orchestrator.validator.python_names import (
    IMPORT_FUNCTIONS,
    Names,
    assignments,
    import_aliases,
    literal_str,
    strip_builtins,
)
from orchestrator.validator.python_rules import NAMESPACES, Rules

_INTROSPECTION = frozenset(
    {"__builtins__", "__subclasses__", "__globals__", "__code__", "__mro__", "__bases__"}
)
_VALUES = (ast.Name, ast.Attribute, ast.Subscript, ast.Call, ast.NamedExpr, ast.IfExp, ast.BoolOp)
_ATTRIBUTE_GETTERS = frozenset({"operator.attrgetter", "operator.methodcaller"})
_CallCheck = Callable[[ast.Call, str], Iterator[ValidationIssue]]


def check_python(code: str, rules: Validation) -> list[ValidationIssue]:
    """Return the findings of the Python rules for ``code``."""
    tree = _parse_python(code)
    if isinstance(tree, ValidationIssue):
        return [tree]
    try:
        return list(_PythonChecker(tree, rules).issues())
    except RecursionError:  # expressions nested beyond the interpreter's recursion limit
        return [error("syntax", 1, "SyntaxError: the code is nested too deeply to check")]


# CPython 3.11's ast.parse is not thread-safe: parses in parallel threads can fail with
# "SystemError: AST constructor recursion depth mismatch" (cpython gh-106905). Runs validate in
# the caller's threads (run_many, async), so parses take turns; one takes well under a millisecond.
_PARSE_LOCK = threading.Lock()


def _parse_python(code: str) -> ast.Module | ValidationIssue:
    try:
        with _PARSE_LOCK:
            return ast.parse(code)
    except SyntaxError as exc:
        return error("syntax", exc.lineno or _nul_line(code), f"SyntaxError: {exc.msg}")
    except ValueError as exc:  # NUL characters before Python 3.12, lone surrogates
        return error("syntax", _nul_line(code), f"SyntaxError: {exc}")
    except (RecursionError, MemoryError):
        return error("syntax", 1, "SyntaxError: the code is nested too deeply to parse")


def _nul_line(code: str) -> int:
    index = code.find("\0")
    return 1 if index < 0 else code.count("\n", 0, index) + 1


def _false(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value in (False, None)


def _bindings(nodes: list[ast.AST]) -> tuple[frozenset[str], frozenset[str]]:
    """Return the names the code binds itself, and those it binds only by ``def``."""
    functions: set[str] = set()
    other: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions.add(node.name)
        elif isinstance(node, ast.ClassDef):
            other.add(node.name)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            other.add(node.id)
        elif isinstance(node, ast.arg):
            other.add(node.arg)
        elif isinstance(node, ast.alias):
            other.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            other.add(node.name)
    return frozenset(functions | other), frozenset(functions - other)


class _PythonChecker:
    """The Python rules over one parsed module."""

    def __init__(self, tree: ast.Module, validation: Validation) -> None:
        self.nodes: list[ast.AST] = []
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):  # once: the module may be long
            self.nodes.append(node)
            parents.update(dict.fromkeys(ast.iter_child_nodes(node), node))
        calls = [*validation.forbidden_calls, *known.WRAPPER_CALLS, *known.STRING_STATEMENTS]
        aliases, modules, roots = import_aliases(self.nodes, [*calls, *known.ALLOW_PICKLE])
        self.names = Names(aliases, roots)
        pairs, bound = assignments(self.nodes, parents)
        self.names.follow(pairs)
        self.rules = Rules(validation, self.names, modules)
        bound_names, self.functions = _bindings(self.nodes)
        # A bare name the user binds (def compile, eval = 1) is theirs, not the builtin.
        self.shadowed = bound_names - self.names.aliases.keys()
        self.escapes = Escapes(self.rules, self.names, parents, bound, self.shadowed)
        self.reached: set[tuple[int, str]] = set()
        # Calls whose arguments decide (getattr, import_module, timeit, numpy.load...).
        self.function_checks: dict[str, _CallCheck] = {
            "getattr": self._getattr,
            **dict.fromkeys(IMPORT_FUNCTIONS, self._import_call),
            **dict.fromkeys(known.STRING_STATEMENTS, self._string_statements),
            **dict.fromkeys(known.ALLOW_PICKLE, self._numpy_load),
            **dict.fromkeys(_ATTRIBUTE_GETTERS, self._attribute_getter),
            **dict.fromkeys(known.OBJECT_FINDERS, self._object_finder),
        }

    def issues(self) -> Iterator[ValidationIssue]:
        """Yield the findings, node by node."""
        visitors = {
            ast.Import: self._import_statement,
            ast.ImportFrom: self._import_from,
            ast.Name: self._name,
            ast.Attribute: self._attribute,
            ast.Subscript: self._subscript,
            ast.Call: self._call,
            ast.keyword: self._keyword,
            ast.Dict: self._dict,
        }
        for node in self.nodes:
            visit = visitors.get(type(node))
            if visit is not None:
                yield from visit(node)  # type: ignore[operator]
            if self.rules.guarded and isinstance(node, _VALUES):
                escape = self.escapes.check(node)
                yield from [escape] if escape else []

    # ----------------------------------------------------------------------- imports

    def _import_statement(self, node: ast.Import) -> Iterator[ValidationIssue]:
        for alias in node.names:
            yield from self._import(alias.name, node.lineno)

    def _import(self, module: str, line: int) -> Iterator[ValidationIssue]:
        forbidden = self.rules.forbidden_import(module)
        if forbidden:
            variant, entry = forbidden
            why = covered(module, entry, "forbidden_imports")
            stands = f": it stands for {variant!r} (forbidden_imports lists {entry!r})"
            detail = f" ({why})" if variant == module else stands
            message = f"import of {module!r} is forbidden by the policy{detail}"
            yield error("forbidden_import", line, message)
            return
        wrapper = self.rules.wrapper_module(module, exact=False)
        if wrapper:
            _, what, why = wrapper
            message = f"import of {module!r} is forbidden by the policy: it {what} ({why})"
            yield error("forbidden_wrapper", line, message)

    def _import_from(self, node: ast.ImportFrom) -> Iterator[ValidationIssue]:
        if node.level or node.module is None:
            return  # relative imports load the user's own files
        names = [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
        found = list(self._import(node.module, node.lineno))
        if not found:  # `from asyncio import subprocess` imports asyncio.subprocess
            found = [issue for name in names for issue in self._import(name, node.lineno)]
        yield from found
        for name in names:
            forbidden = self.rules.forbidden_call(name)
            if forbidden:
                why = covered(name, forbidden, "forbidden_calls")
                message = f"import of {name!r} is forbidden by the policy ({why})"
                yield error("forbidden_call", node.lineno, message)
            yield from self._wrapper(name, node, f"import of {name!r}")

    # ----------------------------------------------------------------------- references

    def _name(self, node: ast.Name) -> Iterator[ValidationIssue]:
        if node.id == "__builtins__":
            yield _introspection("__builtins__", node.lineno)
        if node.id in known.IMPORTER_NAMES and self.rules.imports:
            yield _importer(node)
        if not isinstance(node.ctx, ast.Load) or node.id in self.shadowed:
            return
        if node.id in self.names.untracked and self.rules.guarded:
            message = (
                f"the validator cannot follow what {node.id!r} stands for (its assignments chain "
                "or branch further than it follows), so what is reached through it cannot be "
                "checked; it is refused"
            )
            yield error("module_alias", node.lineno, message)
        for name in self.names.resolve(node):
            yield from self._use(name, node)

    def _attribute(self, node: ast.Attribute) -> Iterator[ValidationIssue]:
        if node.attr in _INTROSPECTION:
            yield _introspection(node.attr, node.lineno)
        if node.attr in known.IMPORTER_NAMES | known.IMPORTER_METHODS and self.rules.imports:
            yield _importer(node)
        if not isinstance(node.ctx, ast.Load):
            return
        found = [i for name in self.names.resolve(node) for i in self._use(name, node)]
        method = known.WRAPPER_METHODS.get(node.attr)
        if method and not found and (why := self.rules.why(method[1])):
            message = f"{unparse(node)!r} is forbidden by the policy: it {method[0]} ({why})"
            found.append(error("forbidden_wrapper", node.lineno, message))
        yield from found
        for name in self.names.resolve(node):
            yield from self._reach(name, node)

    def _use(self, name: str, node: ast.expr) -> Iterator[ValidationIssue]:
        forbidden = self.rules.forbidden_call(name)
        if forbidden:
            yield self._call_issue(forbidden, node)
        yield from self._wrapper(name, node, None)

    def _wrapper(
        self, name: str, node: ast.stmt | ast.expr, how: str | None
    ) -> Iterator[ValidationIssue]:
        wrapper = self.rules.wrapper(name)
        why = self.rules.why(wrapper[1][1]) if wrapper else None
        if wrapper and why:
            qualified, (what, _) = wrapper
            how = how or f"use of {qualified!r}{_as_written(qualified, node)}"
            message = f"{how} is forbidden by the policy: it {what} ({why})"
            yield error("forbidden_wrapper", node.lineno, message)

    def _call_issue(self, name: str, node: ast.expr) -> ValidationIssue:
        # References count, not only calls: `f = os.system; f("...")` is the obvious bypass.
        written = _as_written(name, node)
        message = f"use of {name!r}{written} is forbidden by the policy (forbidden_calls)"
        return error("forbidden_call", node.lineno, message)

    def _reach(self, name: str, node: ast.Attribute) -> Iterator[ValidationIssue]:
        """Find a forbidden module reached as another module's attribute (http.client.socket)."""
        for variant, _ in self.names.variants(name):
            if (node.lineno, variant) in self.reached:
                continue  # `http.client.socket.socket`: once, for the outermost expression
            wrapper = self.rules.wrapper_module(variant, exact=True)
            if match(variant, self.rules.imports, ".") == variant:
                message = (
                    f"{unparse(node)!r} reaches the module {variant!r} through another module, "
                    f"which the policy forbids (forbidden_imports lists {variant!r})"
                )
                yield error("module_alias", node.lineno, message)
            elif wrapper:
                _, what, why = wrapper
                message = f"{unparse(node)!r} reaches the module {variant!r}, which {what} ({why})"
                yield error("forbidden_wrapper", node.lineno, message)
            else:
                continue
            self.reached.add((node.lineno, variant))
            return

    def _subscript(self, node: ast.Subscript) -> Iterator[ValidationIssue]:
        if not isinstance(node.ctx, ast.Load):
            return  # globals()["x"] = 1 writes the user's own name
        key = literal_str(node.slice)
        for base in self.names.resolve(node.value):
            yield from self._namespace_key(node, base, key, node.slice)
        for name in self.names.resolve(node):
            yield from self._use(name, node)

    def _namespace_key(
        self, node: ast.expr, base: str, key: str | None, written: ast.expr
    ) -> Iterator[ValidationIssue]:
        """Check ``ns[key]`` or ``ns.get(key)`` on a namespace: computed keys are refused."""
        kind = self.rules.kind(base)
        if kind in NAMESPACES and key is None and self.rules.guarded:
            yield self._dynamic_call(node, written)
        elif kind == "globals" and key == "__builtins__" and self.rules.calls:
            message = (
                f"{unparse(node)!r} reaches the builtins namespace, where eval, exec and "
                "__import__ live, by a route the policy refuses (forbidden_calls is set)"
            )
            yield error("builtins_access", node.lineno, message)

    def _keyword(self, node: ast.keyword) -> Iterator[ValidationIssue]:
        if node.arg == "allow_pickle" and not _false(node.value):
            yield from self._allow_pickle(node.value, node.value)

    def _dict(self, node: ast.Dict) -> Iterator[ValidationIssue]:
        for key, value in zip(node.keys, node.values, strict=True):
            if key is not None and literal_str(key) == "allow_pickle" and not _false(value):
                yield from self._allow_pickle(value, node)

    # ----------------------------------------------------------------------- calls

    def _call(self, node: ast.Call) -> Iterator[ValidationIssue]:
        for name in self.names.resolve(node):
            yield from self._use(name, node)
        for func in self.names.resolve(node.func):
            yield from self._call_to(node, func)

    def _call_to(self, node: ast.Call, func: str) -> Iterator[ValidationIssue]:
        base, _, method = func.rpartition(".")
        args = node.args
        if method in {"__getattribute__", "__getattr__"} and base and args:
            yield from self._computed_attribute(node, frozenset({base}), args[0])
        elif method in known.NAMESPACE_LOOKUPS and base and args:
            yield from self._namespace_key(node, base, literal_str(args[0]), args[0])
        else:
            yield from self._call_to_function(node, strip_builtins(func))

    def _call_to_function(self, node: ast.Call, func: str) -> Iterator[ValidationIssue]:
        check = self.function_checks.get(func)
        if check is not None:
            yield from check(node, func)

    def _import_call(self, node: ast.Call, func: str) -> Iterator[ValidationIssue]:
        keywords = (k.value for k in node.keywords if k.arg == "name")
        arg = node.args[0] if node.args else next(keywords, None)
        module = literal_str(arg)
        if module is not None and not module.startswith("."):
            yield from self._import(module, node.lineno)
        elif arg is not None and module is None and self.rules.imports:
            message = (
                f"{func}() with a module name computed at run time ({unparse(arg)})"
                " cannot be checked against the policy's forbidden_imports, so it is refused"
            )
            yield error("dynamic_import", node.lineno, message)

    def _getattr(self, node: ast.Call, func: str) -> Iterator[ValidationIssue]:
        del func
        if len(node.args) < 2:
            return
        obj, attr = node.args[0], literal_str(node.args[1])
        if attr in _INTROSPECTION:
            yield _introspection(attr, node.lineno)
        if attr is None:
            yield from self._computed_attribute(node, self.names.resolve(obj), node.args[1])
        elif attr in self.rules.calls and "." not in attr and not self._imported(obj):
            yield self._call_issue(attr, node)  # getattr(anything, "eval"): it may be builtins

    def _computed_attribute(
        self, node: ast.Call, bases: frozenset[str], name: ast.expr
    ) -> Iterator[ValidationIssue]:
        # getattr(os, "sys" + "tem"): a computed name on a module (or a namespace) cannot be
        # checked, so it is refused. On the user's own objects it is ordinary code.
        known_base = any(self.rules.known_base(b) for b in bases)
        if literal_str(name) is None and known_base and self.rules.guarded:
            yield self._dynamic_call(node, name)

    def _dynamic_call(self, node: ast.expr, name: ast.expr) -> ValidationIssue:
        message = (
            f"{unparse(node)} reaches a callable by a name computed at run time "
            f"({unparse(name)}), which cannot be checked against the policy's forbidden_calls, "
            "so it is refused"
        )
        return error("dynamic_call", node.lineno, message)

    def _imported(self, node: ast.expr) -> bool:
        """Tell whether an expression starts at a name the code imported (``re``, ``os.path``)."""
        while isinstance(node, ast.Attribute):
            node = node.value
        names = self.names.name(node.id) if isinstance(node, ast.Name) else frozenset()
        return any(self.names.rooted(q) for q in names)

    def _attribute_getter(self, node: ast.Call, func: str) -> Iterator[ValidationIssue]:
        """``operator.attrgetter("os.system")`` is getattr by a dotted path, on any object."""
        if not self.rules.guarded:
            return
        for arg in node.args[:1] if func.endswith("methodcaller") else node.args:
            path = literal_str(arg)
            if path is None:
                yield self._dynamic_call(node, arg)
                continue
            bare = path if path in self.rules.calls and "." not in path else None
            tails = self.names.variants(f"object.{path}", rooted=True)
            dotted = (v for v, _ in tails if "." in v and v in self.rules.calls)
            forbidden = bare or next(dotted, None)
            if forbidden:
                yield self._call_issue(forbidden, node)

    def _object_finder(self, node: ast.Call, func: str) -> Iterator[ValidationIssue]:
        if self.rules.guard_modules:
            message = (
                f"{func}() hands out modules or any live object past the import checks, "
                "so the policy refuses it"
            )
            yield error("module_alias", node.lineno, message)

    # ----------------------------------------------------------------------- wrappers

    def _string_statements(self, node: ast.Call, func: str) -> Iterator[ValidationIssue]:
        """Refuse string statements to timeit: it compiles them, as exec does."""
        why = self.rules.why((known.CODE,))
        positions, keywords = known.STRING_STATEMENTS[func]
        given = [node.args[i] for i in positions if i < len(node.args)]
        given += [k.value for k in node.keywords if k.arg in keywords]
        unpacked = any(isinstance(a, ast.Starred) for a in node.args[: max(positions) + 1])
        unpacked = unpacked or any(k.arg is None for k in node.keywords)
        bad = next((a for a in given if not self._code_free(a)), None)
        if why is None or (bad is None and not unpacked):
            return
        what = f"the statement {unparse(bad)}" if bad else "arguments unpacked at run time"
        message = (
            f"{func}() with {what} compiles it as code, as exec does ({why}); "
            "pass a function instead, such as lambda: ..."
        )
        yield error("forbidden_wrapper", node.lineno, message)

    def _code_free(self, node: ast.expr) -> bool:
        """Tell whether a timeit statement is a function, not a string of code."""
        if isinstance(node, ast.Lambda):
            return True
        if isinstance(node, ast.Name):
            return node.id in self.functions
        if isinstance(node, ast.Call):
            return "functools.partial" in self.names.resolve(node.func)
        return False

    def _numpy_load(self, node: ast.Call, func: str) -> Iterator[ValidationIssue]:
        position = known.ALLOW_PICKLE[func]
        unpacked = any(k.arg is None for k in node.keywords)
        if unpacked or any(isinstance(a, ast.Starred) for a in node.args):
            yield from self._allow_pickle(None, node)
        elif len(node.args) > position and not _false(node.args[position]):
            yield from self._allow_pickle(node.args[position], node)

    def _allow_pickle(self, value: ast.expr | None, node: ast.expr) -> Iterator[ValidationIssue]:
        why = self.rules.why((("module", "pickle"),))
        if why is None:
            return
        given = f"allow_pickle={unparse(value)}" if value else "arguments unpacked at run time"
        message = (
            f"{given} lets numpy unpickle object arrays, which the policy forbids ({why}); "
            "load with allow_pickle=False"
        )
        yield error("forbidden_wrapper", node.lineno, message)


def _as_written(name: str, node: ast.AST) -> str:
    written = unparse(node)
    return "" if written == name else f" (as {written!r})"


def _importer(node: ast.Name | ast.Attribute) -> ValidationIssue:
    message = (
        f"{unparse(node)!r} is the import machinery: it loads modules by names given at run "
        "time, past the policy's forbidden_imports, so it is refused"
    )
    return error("dynamic_import", node.lineno, message)


def _introspection(attr: str, line: int) -> ValidationIssue:
    message = (
        f"access to {attr!r} is a usual escape route from in-process sandboxes; "
        "inside a container it is only a hint"
    )
    return issue("warning", "introspection", line, message)
