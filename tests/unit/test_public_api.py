"""Guards on the public API: sorted and complete __all__, stable facades, docstrings."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import athena.api
import athena.mcp.memory_api
import athena.sandbox.execution_context
import memory_store
import memory_store.consolidation
import memory_store.errors
import memory_store.postgres
import memory_store.sqlite
import orchestrator
import orchestrator.context
import orchestrator.errors

PUBLIC_MODULES = {
    "orchestrator": orchestrator,
    "memory_store": memory_store,
    "memory_store.consolidation": memory_store.consolidation,
    "memory_store.postgres": memory_store.postgres,
    "memory_store.sqlite": memory_store.sqlite,
    "athena.mcp.memory_api": athena.mcp.memory_api,
    "athena.sandbox.execution_context": athena.sandbox.execution_context,
}
DOCUMENTED_PACKAGES = ("orchestrator", "memory_store", "athena")


def isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: SCREAMING_CASE constants, then CamelCase classes, then the rest."""
    if name.isupper():
        return (0, name)
    return (1, name) if name[0].isupper() else (2, name)


def public_names(module: ModuleType) -> set[str]:
    """Names a module binds that users may import: no modules, no __future__/typing helpers."""
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if isinstance(value, type(annotations)):  # a __future__ feature, as bound here
            continue
        if getattr(value, "__module__", None) in {"typing", "typing_extensions"}:
            continue
        names.add(name)
    return names


def submodules(package: str) -> list[str]:
    root = importlib.import_module(package)
    found = [package]
    found += [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
    return sorted(found)


ALL_MODULES = [name for package in DOCUMENTED_PACKAGES for name in submodules(package)]


# --------------------------------------------------------------------------- __all__


@pytest.mark.parametrize("name", sorted(PUBLIC_MODULES))
def test_all_names_exist(name: str) -> None:
    """Every name listed in __all__ is bound by the module."""
    module = PUBLIC_MODULES[name]
    assert [n for n in module.__all__ if not hasattr(module, n)] == []
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize("name", sorted(PUBLIC_MODULES))
def test_all_is_sorted(name: str) -> None:
    """__all__ is sorted the way ruff sorts it: constants, then classes, then functions."""
    names = list(PUBLIC_MODULES[name].__all__)
    assert names == sorted(names, key=isort_key)


@pytest.mark.parametrize("name", sorted(PUBLIC_MODULES))
def test_all_is_complete(name: str) -> None:
    """Every public name the module imports or defines is listed in __all__."""
    module = PUBLIC_MODULES[name]
    assert public_names(module) - set(module.__all__) == set()


@pytest.mark.parametrize(
    ("package", "errors"),
    [(orchestrator, orchestrator.errors), (memory_store, memory_store.errors)],
)
def test_every_error_of_the_tree_is_exported(package: ModuleType, errors: ModuleType) -> None:
    """Each SandboxError subclass defined in a package's errors module is in its __all__."""
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, orchestrator.SandboxError)
        and value.__module__ == errors.__name__
    }
    assert defined
    assert defined - set(package.__all__) == set()


def test_the_facades_are_the_same_objects() -> None:
    """The stable athena import paths give the very classes of athena.api and orchestrator."""
    from athena.mcp.memory_api import MemoryAPI
    from athena.sandbox.execution_context import ExecutionContext

    assert MemoryAPI is athena.api.MemoryAPI
    assert ExecutionContext is orchestrator.context.ExecutionContext
    assert ExecutionContext is orchestrator.ExecutionContext


# --------------------------------------------------------------------------- docstrings


def undocumented(module: ModuleType) -> list[str]:
    """Public classes, functions, methods and properties of a module without a docstring."""
    missing = [] if inspect.getdoc(module) else [module.__name__]
    for name, value in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        if value.__module__ != module.__name__:
            continue  # imported: checked where it is defined
        if not (value.__doc__ or "").strip():
            missing.append(f"{module.__name__}.{name}")
        if inspect.isclass(value):
            missing += undocumented_members(value, f"{module.__name__}.{name}")
    return missing


def undocumented_members(cls: type, prefix: str) -> list[str]:
    missing = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue  # private, dunder and pydantic's generated members
        function = member
        if isinstance(member, staticmethod | classmethod):
            function = member.__func__
        elif isinstance(member, property):
            function = member.fget
        if inspect.isfunction(function) and not (function.__doc__ or "").strip():
            missing.append(f"{prefix}.{name}")
    return missing


@pytest.mark.parametrize("name", ALL_MODULES)
def test_every_public_name_has_a_docstring(name: str) -> None:
    """Every module, public class, function, method and property has a docstring."""
    assert undocumented(importlib.import_module(name)) == []


def test_the_docstring_walk_covers_the_packages() -> None:
    """The walk reaches the submodules that hold the public classes (it is not vacuous)."""
    assert {
        "orchestrator.policy",
        "orchestrator.backends.docker",
        "memory_store.sqlite.store",
        "athena.api",
    } <= set(ALL_MODULES)
    assert undocumented_members(_Undocumented, "x") == ["x.method", "x.prop", "x.cm"]


class _Undocumented:
    def method(self) -> None:
        pass

    @property
    def prop(self) -> int:
        return 1

    @classmethod
    def cm(cls) -> None:
        pass

    def _private(self) -> None:
        pass
