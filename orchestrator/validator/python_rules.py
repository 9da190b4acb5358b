"""A policy's Python rules as the checker asks them: is this name forbidden, and why."""

from __future__ import annotations

from orchestrator.policy import Validation
from orchestrator.validator import python_known as known
from orchestrator.validator.common import match
from orchestrator.validator.python_names import BUILTINS, GLOBALS, Names, prefixes, strip_builtins

# Kinds of guarded objects: handed on as values, what they reach cannot be checked.
NAMESPACES = frozenset({"builtins", "globals", "namespace"})


class Rules:
    """The forbidden imports and calls, matched through the names' variants and tails."""

    def __init__(self, rules: Validation, names: Names, modules: set[str]) -> None:
        self.imports = rules.forbidden_imports
        self.calls = frozenset(rules.forbidden_calls)
        self.names = names
        self.modules = frozenset(modules)  # what `import` statements bind
        self.guarded = bool(self.imports or self.calls)
        call_modules = {c.rsplit(".", 1)[0] for c in self.calls if "." in c}
        self.call_modules = frozenset(p for m in call_modules for p in prefixes(m))
        # Modules are guarded when something forbidden lives in one: a forbidden module or a
        # dotted call. Builtins alone (development forbids only breakpoint) guard the
        # namespaces and reflection, not every module handed on.
        self.guard_modules = bool(self.imports or self.call_modules)

    def forbidden_import(self, module: str) -> tuple[str, str] | None:
        """Return (the name matched, the entry) when ``module`` is a forbidden import."""
        for variant, _ in self.names.variants(module, rooted=True):
            entry = match(variant, self.imports, ".")
            if entry:
                return variant, entry
        return None

    def forbidden_call(self, name: str) -> str | None:
        """Return the forbidden callable ``name`` stands for, if any."""
        for variant, tail in self.names.variants(name):
            stripped = strip_builtins(variant)
            if stripped in self.calls and (not tail or "." in stripped):
                return stripped
        return None

    def wrapper(self, name: str) -> tuple[str, known.Wrapper] | None:
        """Return the wrapper callable ``name`` stands for (``pandas.read_pickle``), if any."""
        for variant, tail in self.names.variants(name):
            wrapper = known.WRAPPER_CALLS.get(variant)
            if wrapper and (not tail or "." in variant):
                return variant, wrapper
        return None

    def wrapper_module(self, module: str, exact: bool) -> tuple[str, str, str] | None:
        """Return (module, what it does, why forbidden) for a wrapper module reached.

        ``exact``: ``module`` itself must be the wrapper (an attribute reaching it); otherwise
        it may be a submodule or stand for one under another name (an import).
        """
        variants = [module] if exact else [v for v, _ in self.names.variants(module, True)]
        for variant in variants:
            entry = variant if exact else match(variant, known.WRAPPER_MODULES, ".")
            what, targets = known.WRAPPER_MODULES.get(entry or "", ("", ()))
            why = self.why(targets)
            if entry and why:
                return entry, what, why
        return None

    def why(self, targets: tuple[known.Target, ...]) -> str | None:
        """Return which policy entry forbids one of a wrapper's targets, if one does."""
        for kind, name in targets:
            if kind == "module" and (entry := match(name, self.imports, ".")):
                return f"forbidden_imports lists {entry!r}"
            listed = [c for c in known.EVALUATORS if c in self.calls] if kind == "code" else []
            if kind == "call" and name in self.calls:
                listed = [name]
            if listed:
                return f"forbidden_calls lists {listed[0]!r}"
            if kind == "import" and self.imports:
                return "forbidden_imports is set"
        return None

    def kind(self, name: str) -> str | None:
        """Return what kind of guarded object a name stands for, if any."""
        if name in {BUILTINS, GLOBALS}:
            return "builtins" if name == BUILTINS else "globals"
        if name.endswith(".__dict__"):
            return "namespace" if self.names.rooted(name) else None
        found = self._module_kind(name)
        if found or name in known.REFLECTIVE:
            return found or "reflect"
        wraps_code = name in known.STRING_STATEMENTS and self.why((known.CODE,))
        return "wrapper" if wraps_code else None

    def _module_kind(self, name: str) -> str | None:
        for variant, _ in self.names.variants(name):
            if variant in known.MODULE_TABLES and self.guard_modules:
                return "modules"
            if variant in self.call_modules:
                return "module"
        return "module" if name in self.modules and self.guard_modules else None

    def known_base(self, name: str) -> bool:
        """Tell whether a computed attribute of ``name`` could reach something guarded."""
        return bool(self.kind(name)) or (self.guard_modules and self.names.rooted(name))
