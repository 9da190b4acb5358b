"""Where a guarded Python object goes: used in place, or handed on where the checks lose it.

``os.getcwd()``, ``o = os``, ``print(os)``, ``vars(os)["x"]`` and ``globals().get("x")`` keep
what is reached visible to the checker. ``f(os)``, ``[os]``, ``return os``, ``class A: m = os``,
``globals().values()`` and ``sys.modules[...]`` do not: what the receiver reaches through the
object cannot be checked, so the object is refused there.
"""

from __future__ import annotations

import ast

from orchestrator.models import ValidationIssue
from orchestrator.validator import python_known as known
from orchestrator.validator.common import error, shorten
from orchestrator.validator.python_names import Names, strip_builtins
from orchestrator.validator.python_rules import NAMESPACES, Rules

_DISCARDED = (ast.Compare, ast.Expr, ast.FormattedValue, ast.UnaryOp)
_TESTED = (ast.If, ast.While, ast.Assert)
_CONTAINERS = (ast.Tuple, ast.List, ast.Set)
# The parent stands for its child and is checked itself: (o := os), os if c else x, os or x.
_TRANSPARENT = (ast.NamedExpr, ast.IfExp, ast.BoolOp)
_IN_PLACE = (*_TRANSPARENT, *_DISCARDED)

# (kind of guarded object, rule, message) in the order of precedence of the kinds.
_MESSAGES = (
    (
        "builtins",
        "builtins_access",
        "the builtins namespace{as_written} is handed on as a value{where}; eval, exec and "
        "__import__ live there and calls through it cannot be checked, so it is refused",
    ),
    (
        "globals",
        "builtins_access",
        "the module namespace {name!r}{as_written} is handed on as a value{where}; it holds "
        "__builtins__ and every import, and what is reached through it cannot be checked, so it "
        "is refused",
    ),
    (
        "modules",
        "module_alias",
        "{name!r}{as_written} hands out loaded modules, forbidden ones included, past the "
        "import checks, so it is refused; import the module you need by name",
    ),
    (
        "namespace",
        "module_alias",
        "the namespace {name!r}{as_written} is handed on as a value{where}; what is reached "
        "through it cannot be checked, so it is refused",
    ),
    (
        "module",
        "module_alias",
        "the module {name!r}{as_written} is handed on as a value{where}; what is reached "
        "through it cannot be checked, so it is refused: use its attributes directly",
    ),
    (
        "reflect",
        "dynamic_call",
        "{name!r}{as_written} is handed on as a value{where}; calls through it reach names "
        "computed at run time, which cannot be checked, so it is refused",
    ),
    (
        "wrapper",
        "forbidden_wrapper",
        "{name!r}{as_written} is handed on as a value{where}; it compiles string statements "
        "whose arguments then cannot be checked, so it is refused",
    ),
)


def unparse(node: ast.AST) -> str:
    """Return the source of a node, shortened for a message."""
    try:
        return shorten(ast.unparse(node))
    except RecursionError:  # ast.unparse recurses; the parser accepts deeper code
        return "<deeply nested expression>"


def formats(call: ast.Call) -> bool:
    """Tell whether a call is ``"...".format(...)``: it reads attributes, never calls."""
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr in {"format", "format_map"}
        and isinstance(func.value, ast.Constant | ast.JoinedStr)
        and not isinstance(getattr(func.value, "value", ""), bytes)
    )


class Escapes:
    """Finds guarded objects handed on as values."""

    def __init__(
        self,
        rules: Rules,
        names: Names,
        parents: dict[ast.AST, ast.AST],
        bound: set[ast.expr],
        shadowed: frozenset[str],
    ) -> None:
        self.rules = rules
        self.names = names
        self.parents = parents
        self.bound = bound  # values bound to plain names: the names are followed
        self.shadowed = shadowed

    def check(self, node: ast.expr) -> ValidationIssue | None:
        """Return a finding when ``node`` is a guarded object handed on as a value."""
        ctx = getattr(node, "ctx", None)
        if (ctx is not None and not isinstance(ctx, ast.Load)) or (
            isinstance(node, ast.Name) and node.id in self.shadowed
        ):
            return None
        kinds = {k: q for q in self.names.resolve(node) if (k := self.rules.kind(q))}
        if not kinds or self._consumed(node, frozenset(kinds)):
            return None
        parent = self.parents.get(node)
        where = f" in {unparse(parent)!r}" if isinstance(parent, ast.expr) else ""
        written = unparse(node)
        kind, rule, what = next(m for m in _MESSAGES if m[0] in kinds)
        as_written = "" if written == kinds[kind] else f" (as {written!r})"
        message = what.format(name=kinds[kind], as_written=as_written, where=where)
        return error(rule, node.lineno, message)

    def _consumed(self, node: ast.expr, kinds: frozenset[str]) -> bool:
        """Tell whether a guarded object is used where the checks still see what it reaches."""
        parent = self.parents.get(node)
        if node in self.bound or isinstance(parent, _IN_PLACE):
            return True
        if isinstance(parent, ast.Attribute | ast.Subscript):
            return self._used_in_place(parent, node, kinds)
        if isinstance(parent, ast.Call | ast.keyword):
            return self._given_to_call(parent, node)
        if isinstance(parent, _CONTAINERS):
            return isinstance(self.parents.get(parent), ast.Expr)  # built and dropped
        return isinstance(parent, _TESTED) and parent.test is node

    @staticmethod
    def _used_in_place(
        parent: ast.Attribute | ast.Subscript, node: ast.expr, kinds: frozenset[str]
    ) -> bool:
        """``os.x`` and ``vars(os)["x"]`` are checked as what they reach; sys.modules is not."""
        if "modules" in kinds or parent.value is not node:
            return False
        if isinstance(parent, ast.Attribute):
            return not (kinds & NAMESPACES and parent.attr in known.NAMESPACE_LEAKS)
        return True

    def _given_to_call(self, parent: ast.Call | ast.keyword, node: ast.expr) -> bool:
        if isinstance(parent, ast.keyword):
            call = self.parents.get(parent)
            return parent.arg is None and isinstance(call, ast.Call) and formats(call)
        return parent.func is node or self._looks_only(parent, node)

    def _looks_only(self, call: ast.Call, node: ast.expr) -> bool:
        """Tell whether a call only looks at its first argument (print, isinstance, getattr)."""
        if formats(call):
            return True
        funcs = {strip_builtins(f) for f in self.names.resolve(call.func)}
        first = bool(call.args) and call.args[0] is node
        return first and bool(funcs) and funcs <= known.LOOKERS
