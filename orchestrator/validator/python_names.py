"""What the names of a Python module stand for, module-wide: the resolution the checker uses.

``import os as o``, ``from os import system as s``, ``o = os``, ``a, b = os, 1`` and
``(o := os)`` all make a name stand for a qualified name. Resolution is flow-insensitive: a name
bound several ways stands for all of them. Expressions resolve too: ``pathlib.os.system`` is
``pathlib.os.system`` (whose tail is ``os.system``), ``getattr(os, "system")`` is ``os.system``,
``vars(os)["system"]`` is ``os.system``, ``globals()["__builtins__"]["eval"]`` is
``__builtins__.eval``. Two pseudo-names stand for namespaces: ``__builtins__`` (the builtins
module or dict, however reached) and ``globals()`` (a module's globals: ``globals()``,
``locals()``, ``vars()``, ``f.__globals__``, ``frame.f_globals``); ``Q.__dict__`` is module
``Q``'s namespace.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterable, Iterator

from orchestrator.validator import python_known as known

Candidates = frozenset[str]
NONE: Candidates = frozenset()

BUILTINS = "__builtins__"
GLOBALS = "globals()"
IMPORT_FUNCTIONS = frozenset({"__import__", "importlib.import_module", "importlib.__import__"})
_BUILTIN_NAMES = frozenset(dir(builtins))
_NAMESPACE_ATTRIBUTES = {
    **dict.fromkeys(known.BUILTINS_ATTRIBUTES, BUILTINS),
    **dict.fromkeys(known.GLOBALS_ATTRIBUTES, GLOBALS),
}
# Long chains keep their root and their last parts: every rule matches a name's tail, and the
# root says whether the chain starts at an import. Collapsing also ends `a = a.b` loops.
_KEEP = 8
_ELIDED = "…"
# Alias resolution runs to a fixed point; a name that needs more passes or stands for more
# names than this cannot be followed, and the checker refuses its use.
_MAX_PASSES = 16
_MAX_CANDIDATES = 32


def literal_str(node: ast.expr | None) -> str | None:
    """Return a string constant's value, else None."""
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def strip_builtins(name: str) -> str:
    """Return ``eval`` for ``builtins.eval`` and ``__builtins__.eval``: they are the same."""
    for prefix in ("builtins.", "__builtins__."):
        name = name.removeprefix(prefix)
    return name


def _normalize(name: str) -> str:
    return BUILTINS + name[8:] if name == "builtins" or name.startswith("builtins.") else name


def extend(name: str, attr: str) -> str:
    """Return what ``name.attr`` stands for (``f.__globals__`` is ``globals()``)."""
    if attr in _NAMESPACE_ATTRIBUTES:
        return _NAMESPACE_ATTRIBUTES[attr]
    if attr == "__call__" or (attr == "__dict__" and name == BUILTINS):
        return name
    if attr == "__self__":  # a builtin function's __self__ is its module
        builtin = BUILTINS if name in _BUILTIN_NAMES else f"{name}.__self__"
        return name.rsplit(".", 1)[0] if "." in name else builtin
    joined = f"{name}.{attr}"
    if joined.count(".") <= 2 * _KEEP:
        return joined
    parts = joined.split(".")
    return ".".join([parts[0], _ELIDED, *parts[-_KEEP:]])


def public_names(segment: str) -> tuple[str, ...]:
    """Return a module name and the public modules it stands for (``_socket``: ``socket``)."""
    names = [segment]
    twin = known.PRIVATE_TWINS.get(segment)
    if twin:
        names.append(twin)
    if segment.startswith("_") and not segment.startswith("__") and len(segment) > 1:
        names.append(segment[1:])
    return tuple(dict.fromkeys(names))


def prefixes(name: str) -> Iterator[str]:
    """Yield ``a``, ``a.b`` and ``a.b.c`` for ``a.b.c``."""
    parts = name.split(".")
    for end in range(1, len(parts) + 1):
        yield ".".join(parts[:end])


# --------------------------------------------------------------------------- bindings


def import_aliases(
    nodes: Iterable[ast.AST], dotted: Iterable[str]
) -> tuple[dict[str, set[str]], set[str], set[str]]:
    """Return the names imports bind (to what), the modules ``import`` binds, the roots."""
    aliases: dict[str, set[str]] = {}
    modules: set[str] = set()
    roots: set[str] = set()
    star = [name.rsplit(".", 1) for name in dotted if "." in name]
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.name if alias.asname else alias.name.split(".")[0]
                aliases.setdefault(alias.asname or bound, set()).add(_normalize(bound))
                modules.add(bound)
                roots.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
            for alias in node.names:
                if alias.name != "*":
                    qualified = _normalize(f"{node.module}.{alias.name}")
                    aliases.setdefault(alias.asname or alias.name, set()).add(qualified)
                    continue
                # `from os import *` binds `system` too: map the names we know it brings.
                for parent, name in star:
                    if parent == node.module:
                        aliases.setdefault(name, set()).add(f"{parent}.{name}")
        elif isinstance(node, ast.Call) and _dynamic_import(node):
            roots.add(_dynamic_import(node) or "")
    return aliases, modules, roots


def _dynamic_import(node: ast.Call) -> str | None:
    """Return the module of ``__import__("m")`` or ``import_module("m")``, written plainly."""
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if name not in {"__import__", "import_module"} or not node.args:
        return None
    module = literal_str(node.args[0])
    return module.split(".")[0] if module and not module.startswith(".") else None


def assignments(
    nodes: Iterable[ast.AST], parents: dict[ast.AST, ast.AST]
) -> tuple[list[tuple[str, ast.expr]], set[ast.expr]]:
    """Return (name, value) for each plain binding, and the values so bound.

    A binding is plain when every target is a name (tuples pairwise): ``a = b = os``,
    ``a, b = os, 1``, ``a: T = os``, ``(a := os)``. Class bodies are left out: there a
    name becomes a class attribute, reached in ways the checker does not follow.
    """
    pairs: list[tuple[str, ast.expr]] = []
    for node in nodes:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            if isinstance(parents.get(node), ast.ClassDef):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound = [_bind(target, node.value) for target in targets]
            if all(b is not None for b in bound):
                pairs.extend(pair for b in bound for pair in b or ())
        elif isinstance(node, ast.NamedExpr):
            pairs.append((node.target.id, node.value))
    return pairs, {value for _, value in pairs}


def _bind(target: ast.expr, value: ast.expr) -> list[tuple[str, ast.expr]] | None:
    if isinstance(target, ast.Name):
        return [(target.id, value)]
    plain = isinstance(target, ast.Tuple | ast.List) and isinstance(value, ast.Tuple | ast.List)
    if not plain or len(target.elts) != len(value.elts):  # type: ignore[attr-defined]
        return None
    pairs: list[tuple[str, ast.expr]] = []
    for t, v in zip(target.elts, value.elts, strict=True):  # type: ignore[attr-defined]
        bound = None if isinstance(t, ast.Starred) or isinstance(v, ast.Starred) else _bind(t, v)
        if bound is None:
            return None
        pairs.extend(bound)
    return pairs


# --------------------------------------------------------------------------- resolution


class Names:
    """Resolves expressions to the qualified names they may stand for."""

    def __init__(self, aliases: dict[str, set[str]], roots: set[str]) -> None:
        self.aliases: dict[str, Candidates] = {k: frozenset(v) for k, v in aliases.items()}
        self.roots = frozenset(roots)
        self.untracked: set[str] = set()
        self._memo: dict[ast.AST, Candidates] = {}
        self._variants: dict[tuple[str, bool | None], list[tuple[str, bool]]] = {}

    def follow(self, pairs: list[tuple[str, ast.expr]]) -> None:
        """Add the aliases that assignments make, to a fixed point."""
        for _ in range(_MAX_PASSES):
            self._memo = {}
            changed = {name for name, value in pairs if self._add(name, self.resolve(value))}
            if not changed:
                break
        else:
            self.untracked |= changed
        self._memo = {}

    def _add(self, name: str, found: Candidates) -> bool:
        if name in self.untracked:
            return False
        new = {q for q in found if self.followed(q)} - self.aliases.get(name, NONE)
        if not new:
            return False
        merged = self.aliases.get(name, NONE) | new
        if len(merged) > _MAX_CANDIDATES:
            self.untracked.add(name)
        self.aliases[name] = merged
        return True

    def followed(self, name: str) -> bool:
        """Tell whether an alias of ``name`` is worth following (it starts at an import...)."""
        return self.rooted(name) or name in known.REFLECTIVE or name.endswith("()")

    def rooted(self, name: str) -> bool:
        """Tell whether a name starts at an import or at a namespace."""
        root = name.split(".", 1)[0]
        return root in self.roots or root in {BUILTINS, GLOBALS}

    def variants(self, name: str, rooted: bool | None = None) -> list[tuple[str, bool]]:
        """Return the names ``name`` may be matched as, each with whether it is a tail.

        The whole name with its root's public names (``posix.system`` is ``os.system``), and,
        for a name that starts at an import, its tails (``pathlib.os.system`` is ``os.system``).
        """
        cached = self._variants.get((name, rooted))
        if cached is not None:
            return cached
        parts = name.split(".")
        found: list[tuple[str, bool]] = []
        self._variants[name, rooted] = found
        if _ELIDED not in parts:
            found += [(".".join([p, *parts[1:]]), False) for p in public_names(parts[0])]
        if self.rooted(name) if rooted is None else rooted:
            for size in range(1, min(_KEEP, len(parts) - 1) + 1):
                tail = parts[-size:]
                if _ELIDED in tail:
                    break
                found += [(".".join([p, *tail[1:]]), True) for p in public_names(tail[0])]
        return found

    def name(self, identifier: str) -> Candidates:
        """Return what a bare name stands for."""
        return self.aliases.get(identifier) or frozenset({_normalize(identifier)})

    def resolve(self, node: ast.expr) -> Candidates:
        """Return the qualified names an expression may stand for (empty: unknown)."""
        chain: list[ast.Attribute | ast.Subscript | ast.Call] = []
        while node not in self._memo:  # a loop: chains may be thousands long
            if isinstance(node, ast.Attribute | ast.Subscript):
                chain.append(node)
                node = node.value
            elif isinstance(node, ast.Call):
                chain.append(node)
                node = node.func
            else:
                self._memo[node] = self._base(node)
        found = self._memo[node]
        for step in reversed(chain):
            found = self._step(step, found)
            self._memo[step] = found
        return found

    def _base(self, node: ast.expr) -> Candidates:
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.NamedExpr):
            return self.resolve(node.value)
        if isinstance(node, ast.IfExp):
            return self.resolve(node.body) | self.resolve(node.orelse)
        if isinstance(node, ast.BoolOp):
            return frozenset().union(*(self.resolve(v) for v in node.values))
        return NONE

    def _step(
        self, node: ast.Attribute | ast.Subscript | ast.Call, found: Candidates
    ) -> Candidates:
        if isinstance(node, ast.Attribute):
            if node.attr in known.BUILTINS_ATTRIBUTES | known.GLOBALS_ATTRIBUTES:
                return frozenset({extend("", node.attr)})  # whatever the object: f.__globals__
            return frozenset(extend(q, node.attr) for q in found)
        if isinstance(node, ast.Subscript):
            key = literal_str(node.slice)
            return NONE if key is None else frozenset().union(*(self.index(q, key) for q in found))
        return frozenset().union(*(self._call(node, f) for f in found))

    def index(self, name: str, key: str) -> Candidates:
        """Return what ``name[key]`` stands for when ``name`` is a namespace."""
        if name == BUILTINS:
            return frozenset({f"{BUILTINS}.{key}"})
        if name == GLOBALS:
            return frozenset({BUILTINS}) if key == "__builtins__" else self.name(key)
        if name.endswith(".__dict__"):
            return frozenset({extend(name[: -len(".__dict__")], key)})
        return NONE

    def _call(self, node: ast.Call, func: str) -> Candidates:
        first = literal_str(node.args[0]) if node.args else None
        base, _, method = func.rpartition(".")
        if method in known.NAMESPACE_LOOKUPS and base and first is not None:
            return self.index(base, first)  # globals().get("x"), vars(os).get("system")
        if method in {"__getattribute__", "__getattr__"} and base and first is not None:
            return frozenset({extend(base, first)})
        return self._builtin_call(node, strip_builtins(func), first)

    def _builtin_call(self, node: ast.Call, func: str, first: str | None) -> Candidates:
        args = node.args
        if func in {"globals", "locals"} or (func == "vars" and not args):
            return frozenset({GLOBALS})
        if func == "vars" and args:
            return frozenset(extend(q, "__dict__") for q in self.resolve(args[0]))
        if func == "getattr" and len(args) >= 2 and (attr := literal_str(args[1])):
            return frozenset(extend(q, attr) for q in self.resolve(args[0]))
        if func in IMPORT_FUNCTIONS and first and not first.startswith("."):
            return frozenset({first})
        if func in known.INSTANCE_CLASSES:
            return frozenset({f"{func}()"})
        return NONE
