"""Package boundaries: athena -> memory_store -> orchestrator (models and errors only).

Every module of the three packages is parsed and every import in it is checked, wherever it
is: at the top, under ``if TYPE_CHECKING:``, inside a function or a ``try``. Imports are
compared by exact module name, so ``orchestrator.models`` is allowed to the store and
``orchestrator.models_extra`` or ``orchestrator`` (the package, which imports everything) is
not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "memory_store", "athena")
STORE_MAY_IMPORT = frozenset({"orchestrator.models", "orchestrator.errors"})


def _package_of(module: str) -> str:
    return module.partition(".")[0]


def is_module(name: str) -> bool:
    """Whether a dotted name is a module or package of this checkout."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(module: str, source: str, *, is_package: bool = False) -> Iterator[str]:
    """Yield every module a module's source imports, by its absolute dotted name.

    ``from X import y`` counts as ``X.y`` when that is a module, else as ``X``; relative
    imports are resolved against the importing module.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if is_module(full) else base


def crossing(importer: str, imported: str) -> str | None:
    """Return why ``importer`` may not import ``imported``, or None when it may."""
    source, target = _package_of(importer), _package_of(imported)
    if source == "orchestrator" and target in {"memory_store", "athena"}:
        return "orchestrator imports nothing of memory_store or athena"
    if source == "memory_store" and target == "athena":
        return "memory_store imports nothing of athena"
    if source == "memory_store" and target == "orchestrator" and imported not in STORE_MAY_IMPORT:
        return "memory_store imports only orchestrator.models and orchestrator.errors"
    return None


def violations(module: str, source: str, *, is_package: bool = False) -> list[str]:
    """Return one line per import of ``module`` that crosses a boundary."""
    found = []
    for imported in imported_modules(module, source, is_package=is_package):
        reason = crossing(module, imported)
        if reason is not None:
            found.append(f"{module} imports {imported}: {reason}")
    return found


def package_modules() -> Iterator[tuple[str, Path]]:
    """Yield (dotted name, file) for every module of the three packages."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def test_no_import_crosses_a_package_boundary() -> None:
    """No module of orchestrator, memory_store or athena imports across the allowed direction."""
    modules = list(package_modules())
    assert len(modules) > 50  # the walk found the packages
    found = [
        line
        for name, path in modules
        for line in violations(name, path.read_text(), is_package=path.name == "__init__.py")
    ]
    assert found == []


SYNTHETIC = """
from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.errors import RequestError
from orchestrator import models

if TYPE_CHECKING:
    from orchestrator.settings import Settings

def late() -> None:
    import athena.api
    from orchestrator import policy, errors
    from ..checks import iso
"""


def test_the_check_catches_hidden_and_near_miss_imports() -> None:
    """Imports under TYPE_CHECKING, in functions and via `from X import module` are caught."""
    assert violations("memory_store.sql.fake", SYNTHETIC) == [
        "memory_store.sql.fake imports orchestrator.settings: "
        "memory_store imports only orchestrator.models and orchestrator.errors",
        "memory_store.sql.fake imports athena.api: memory_store imports nothing of athena",
        "memory_store.sql.fake imports orchestrator.policy: "
        "memory_store imports only orchestrator.models and orchestrator.errors",
    ]


@pytest.mark.parametrize(
    ("importer", "source", "expected"),
    [
        ("memory_store.x", "import orchestrator", ["orchestrator"]),
        ("memory_store.x", "import orchestrator.models_extra", ["orchestrator.models_extra"]),
        ("memory_store.x", "from orchestrator import Settings", ["orchestrator"]),
        ("orchestrator.x", "from memory_store import open_store", ["memory_store"]),
        ("memory_store.sql.x", "from ..checks import iso\nfrom . import db", []),
        ("athena.x", "import memory_store, orchestrator.settings", []),
    ],
)
def test_names_are_compared_exactly(importer: str, source: str, expected: list[str]) -> None:
    """A module is allowed by its exact name: not its package, not a name that starts alike."""
    assert [line.split()[2].rstrip(":") for line in violations(importer, source)] == expected
